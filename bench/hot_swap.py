"""Hot swap under load: 1000 MQTT clients (``--quick``: 200) connected to a real broker, each
subscribed to its own topic and publishing to it at QoS 1 every 10 s (100 messages/s in all),
while the broker's plugin is upgraded and its config changed. Counted: clients the broker
disconnected, QoS 1 messages sent and never delivered back, duplicates. Goal: 0 and 0.

- Plugin upgrade and setting change, driven by the sidecar (``python -m sidecar``, file mode,
  plugin images pulled by digest from a real registry), on the two brokers that load plugins
  at runtime: RabbitMQ 3.10 (``rabbitmq-plugins --online``; the auth plugin from the
  rabbitmq-erlang template is the node's only auth backend, so every login and every publish
  goes through it) and HiveMQ CE with plugforge's loader extension (HiveMQ CE itself reads
  extensions only at start). Each plugin is built as 0.1.0 and 0.2.0 (changed code: also
  refuses "eve"; ``tests/rabbitmq_adapter_support.py``, ``tests/hivemq_support.py``). The
  ConfigMap is changed twice: the plugin upgraded to 0.2.0, then its ``deny_users`` setting.
  Each change counts as in effect when the sidecar logs a new ``decision=Applied`` and logins
  show the new behaviour (eve refused; then trudy refused, mallory admitted) within 60 s; the
  sidecar's rollbacks meanwhile are counted; goal: no change left out. The sidecar's log is
  kept in ``bench/results/``.
- mosquitto 2.0 with dynamic security, driven by the sidecar (``python -m sidecar``, file mode):
  one ConfigMap update changes a SIGHUP-reloaded option (``max_queued_messages``) and the ACLs
  of another dynsec role; proven by mosquitto logging the reload. (A mosquitto plugin change
  needs a broker restart, which disconnects everyone by design; it is not a hot swap and not
  measured here.)
  Then, with a fresh load, an ACL change of the load clients' own dynsec role (reported, no
  goal: mosquitto's dynamic-security plugin disconnects the clients of a changed role).
Phases per load: connect all, 5 s of load, the change(s), 5 s more, stop publishing, 5 s
drain. Repetitions: one per broker (a hot swap is an event, not a sample).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from bench.hot_swap_support import (
    HIVEMQ_PLUGIN,
    PLUGIN,
    build_hivemq_images,
    build_versions,
    count_in_file,
    hivemq_adapter_options,
    mqtt_accepts,
    push_version,
    rabbitmq_adapter_options,
    start_loader_broker,
    start_plugin_sidecar,
)
from bench.mqtt_load_support import LoadStats, MqttLoad
from bench.propagation_support import broker_yaml, start_dynsec_broker
from bench.report import Metric
from bench.sidecar_latency import start_sidecar
from plugforge.contract import PluginRelease, plugin_key, render_plugin_release
from testbed.certs import make_ca
from testbed.configmap_dir import ConfigMapDir
from testbed.rabbitmq import start_rabbitmq
from testbed.registry import start_registry

INTERVAL = 10.0
PHASE = 5.0
DRAIN = 5.0
CHANGE_TIMEOUT = 60.0
KEPT_LOGS = Path("bench/results")
LOAD_USER = ("load", "load-password-1")


def measure(workdir: Path, quick: bool) -> list[Metric]:
    clients = 200 if quick else 1000
    out = rabbitmq(workdir / "rabbitmq", clients)
    out += hivemq(workdir / "hivemq", clients)
    out += mosquitto(workdir / "mosquitto", clients)
    return out


def _rows(broker: str, what: str, stats: LoadStats, extra: str) -> list[Metric]:
    bench = f"hot swap ({broker})"
    note = (f"{stats.connected}/{stats.clients} clients connected, {stats.sent:,} QoS 1 sent, "
            f"{stats.acked:,} acked, {stats.delivered:,} delivered, {stats.duplicates} "
            f"duplicates; {extra}")
    if stats.refused:
        note += f"; refused: {stats.refused[:3]}"
    if stats.disconnects:
        note += f"; first disconnects: {stats.disconnects[:3]}"
    return [
        Metric(bench, f"{what}: clients disconnected", "", len(stats.disconnects),
               max_value=0, note=note),
        Metric(bench, f"{what}: QoS 1 messages lost", "", stats.lost, max_value=0),
        Metric(bench, "clients connected under load", "", stats.connected,
               note=f"of {stats.clients}"),
    ]


def _release(plugin: str, image: str, deny_users: str) -> dict[str, str]:
    return {plugin_key(plugin): render_plugin_release(
        PluginRelease(plugin, image, True, {"deny_users": deny_users}, ()))}


def rabbitmq(work: Path, clients: int) -> list[Metric]:
    versions = build_versions(work / "build")
    ca = make_ca(work / "ca")
    registry = start_registry(work / "registry", ca)
    node = None
    sidecar = None
    try:
        v1, v2 = (push_version(registry, versions.v1, "v1"),
                  push_version(registry, versions.v2, "v2"))
        node = start_rabbitmq(work / "node")
        cm = ConfigMapDir(work / "cm")
        cm.update(_release(PLUGIN, v1, "mallory"))
        sidecar = start_plugin_sidecar("rabbitmq", rabbitmq_adapter_options(node), cm.path,
                                       node.shared_plugins_dir, work / "sidecar", ca.cert)
        return _swap_under_load("RabbitMQ 3.10", PLUGIN, "127.0.0.1", node.mqtt_port,
                                node.os_pid, cm, work / "sidecar" / "sidecar.log", v2, clients)
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(10)
        if node is not None:
            node.stop()
        registry.stop()


def hivemq(work: Path, clients: int) -> list[Metric]:
    ca = make_ca(work / "ca")
    registry = start_registry(work / "registry", ca)
    broker = None
    sidecar = None
    try:
        images = build_hivemq_images(work / "build", registry.host, ca.cert)
        plugin_dir = work / "plugins"
        broker = hive = start_loader_broker(work / "hivemq", plugin_dir)
        cm = ConfigMapDir(work / "cm")
        cm.update(_release(HIVEMQ_PLUGIN, images.v1, "mallory"))
        sidecar = start_plugin_sidecar("hivemq", hivemq_adapter_options(broker), cm.path,
                                       plugin_dir, work / "sidecar", ca.cert)
        return _swap_under_load("HiveMQ CE + loader", HIVEMQ_PLUGIN, hive.host, hive.port,
                                lambda: hive.pid, cm, work / "sidecar" / "sidecar.log",
                                images.v2, clients)
    finally:
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(10)
        if broker is not None:
            broker.stop()
        registry.stop()


def _swap_under_load(label: str, plugin: str, host: str, port: int, pid: Callable[[], int],
                     cm: ConfigMapDir, log: Path, v2: str, clients: int) -> list[Metric]:
    """The sidecar (already started on ``cm``, which names v1) enables v1; then, under load,
    the ConfigMap upgrades the plugin to ``v2`` and changes its ``deny_users`` setting."""
    failed: list[str] = []

    def logins(*expected: tuple[str, bool]) -> bool:
        return all(mqtt_accepts(host, port, user) == ok for user, ok in expected)

    def change(config: dict[str, str], what: str, *expected: tuple[str, bool]) -> str:
        """Apply ``config``; wait for the sidecar's verdict (a new ``decision=Applied``) and
        for the logins to show the change. A change not in effect within ``CHANGE_TIMEOUT``
        counts as not applied (the sidecar keeps retrying)."""
        applied = count_in_file(log, b"decision=Applied ")
        rolled_back = count_in_file(log, b"decision=RolledBack ")
        started = time.monotonic()
        cm.update(config)
        ok = _poll(lambda: count_in_file(log, b"decision=Applied ") > applied
                   and logins(*expected), CHANGE_TIMEOUT)
        rollbacks = count_in_file(log, b"decision=RolledBack ") - rolled_back
        if not ok:
            failed.append(what)
        took = f"{time.monotonic() - started:.1f}s" if ok else \
            f"NOT in effect after {CHANGE_TIMEOUT:g}s"
        return f"{what}: {took}, {rollbacks} rollback(s) by the sidecar"

    def upgrade_and_configure() -> str:
        # v2's changed code also refuses eve, whatever deny_users says.
        upgrade = change(_release(plugin, v2, "mallory"), f"upgrade to {plugin} 0.2.0",
                         ("eve", False), ("mallory", False), ("alice", True))
        setting = change(_release(plugin, v2, "trudy"), "deny_users=trudy",
                         ("trudy", False), ("mallory", True), ("alice", True))
        return f"{upgrade}; {setting}"

    kept = KEPT_LOGS / f"hot-swap-{plugin}-{label.split()[0].lower()}-sidecar.log"
    try:
        _wait(lambda: logins(("mallory", False), ("eve", True), ("alice", True)), 180,
              f"the sidecar to enable {plugin} 0.1.0 (see {log})")
        before = pid()
        stats, extra = _under_load(host, port, clients, lambda i: (f"load-{i}", "any"),
                                   upgrade_and_configure)
        same = pid() == before
    finally:
        if log.exists():
            KEPT_LOGS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, kept)
    extra += (f"; same broker process: {'yes' if same else 'NO'}; driven by the sidecar "
              f"(file mode, images pulled by digest from a registry); its log: {kept}")
    bench = f"{label} + sidecar"
    rows = _rows(bench, "plugin upgrade + setting change", stats, extra)
    rows.append(Metric(f"hot swap ({bench})", "changes not in effect under load", "",
                       len(failed), max_value=0,
                       note=f"of 2 (upgrade, setting){': ' + ', '.join(failed) if failed else ''}"))
    return rows


def _mosquitto_config(max_queued: int, load_acls: str = "",
                      other_acls: str = "publishClientSend other/a allow") -> dict[str, str]:
    acls = "publishClientSend bench/# allow; subscribePattern bench/# allow"
    return {"broker.yaml": broker_yaml({
        "max_queued_messages": str(max_queued),
        "dynsec.role.load.acls": acls + load_acls,
        "dynsec.role.other.acls": other_acls,
        "dynsec.client.load.roles": "load",
        "dynsec.client.load.password": LOAD_USER[1],
    })}


def _under_load(host: str, port: int, clients: int,
                credentials: Callable[[int], tuple[str, str]], change: Callable[[], str]
                ) -> tuple[LoadStats, str]:
    """Connect the load, let it run a phase, make the change, run another phase, drain."""
    load = MqttLoad(host, port, clients, credentials, interval=INTERVAL)
    load.start()
    try:
        time.sleep(PHASE)
        outcome = change()
        time.sleep(PHASE)
    finally:
        stats = load.stop(DRAIN)
    return stats, outcome


def mosquitto(work: Path, clients: int) -> list[Metric]:
    broker = start_dynsec_broker(work / "broker")
    cm = ConfigMapDir(work / "cm")
    cm.update(_mosquitto_config(1000))
    sidecar = start_sidecar(broker, work / "sidecar", 0.2,
                            ["--source", "files", "--config-dir", str(cm.path)])
    include = broker.include_dir / "50-plugforge-config.conf"

    def reload_and_other_role() -> str:
        reloads = count_in_file(broker.log_path, b"Reloading config.")
        started = time.monotonic()
        cm.update(_mosquitto_config(2000, other_acls="publishClientSend other/b allow"))
        _wait(lambda: count_in_file(broker.log_path, b"Reloading config.") > reloads, 30,
              "mosquitto to reload its config (SIGHUP from the sidecar)")
        applied = time.monotonic() - started
        in_file = include.exists() and "max_queued_messages 2000" in include.read_text()
        return (f"ConfigMap update -> SIGHUP reload in {applied:.2f}s; new value in the "
                f"include file: {'yes' if in_file else 'NO'}")

    def own_role() -> str:
        cm.update(_mosquitto_config(2000, "; publishClientSend extra/# allow",
                                    "publishClientSend other/b allow"))
        return "the load clients' own role changed"

    try:
        _wait(lambda: mqtt_accepts(broker.host, broker.port, *LOAD_USER), 60,
              "the sidecar's first apply (load client created)")
        hot, hot_note = _under_load(broker.host, broker.port, clients,
                                        lambda i: LOAD_USER, reload_and_other_role)
        kicked, kicked_note = _under_load(broker.host, broker.port, clients,
                                          lambda i: LOAD_USER, own_role)
    finally:
        sidecar.terminate()
        sidecar.wait(10)
        broker.stop()
    rows = _rows("mosquitto 2.0 + sidecar",
                 "SIGHUP option change + another role's ACLs", hot, hot_note)
    bench = "hot swap (mosquitto 2.0 + sidecar)"
    rows += [Metric(bench, "ACL change of the clients' own role: clients disconnected", "",
                    len(kicked.disconnects),
                    note=f"{kicked_note}; observed: mosquitto 2.0's dynamic-security plugin "
                    f"disconnects every client of a changed role; "
                    f"{kicked.sent:,} sent, {kicked.delivered:,} delivered")]
    return rows


def _poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")

