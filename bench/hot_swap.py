"""Hot swap under load: 1000 MQTT clients (``--quick``: 200) connected to a real broker, each
subscribed to its own topic and publishing to it at QoS 1 every 10 s (100 messages/s in all),
while the broker's plugin is upgraded and its config changed. Counted: clients the broker
disconnected, QoS 1 messages sent and never delivered back, duplicates. Goal: 0 and 0.

- RabbitMQ 3.10 (Debian), which loads plugins at runtime, driven by the sidecar
  (``python -m sidecar --broker rabbitmq``, file mode, plugin images pulled by digest from a real
  registry). The auth plugin ``deny_test`` from the rabbitmq-erlang template, built as 0.1.0 and
  0.2.0 (changed code: also refuses "eve"; ``tests/rabbitmq_adapter_support.py``), is the node's
  only auth backend, so every load client logged in through it and every publish is authorized
  by it. The ConfigMap is changed twice: the plugin upgraded to 0.2.0, then its ``deny_users``
  setting. Each change counts as in effect when the sidecar logs a new ``decision=Applied`` and
  logins show the new behaviour (eve refused; then trudy refused, mallory admitted) within
  90 s; the sidecar's rollbacks meanwhile are counted. A change not in effect by then is
  reported (goal: none) and the sidecar's log is kept in ``bench/results/``.
- mosquitto 2.0 with dynamic security, driven by the sidecar (``python -m sidecar``, file mode):
  one ConfigMap update changes a SIGHUP-reloaded option (``max_queued_messages``) and a dynsec
  role ACL; proven by mosquitto logging the reload. (A mosquitto plugin change needs a broker
  restart, which disconnects everyone by design; it is not a hot swap and not measured here.)
Phases: connect all, 10 s of load, the changes, 10 s more, stop publishing, 5 s drain.
HiveMQ CE is not used: it does not load extensions at runtime.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from bench.hot_swap_support import (
    PLUGIN,
    build_versions,
    count_in_file,
    mqtt_accepts,
    push_version,
    start_rabbitmq_sidecar,
)
from bench.mqtt_load_support import LoadStats, MqttLoad
from bench.propagation_support import broker_yaml, plugin_yaml, start_dynsec_broker
from bench.report import Metric
from bench.sidecar_latency import start_sidecar
from plugforge.contract import plugin_key
from testbed.certs import make_ca
from testbed.configmap_dir import ConfigMapDir
from testbed.rabbitmq import start_rabbitmq
from testbed.registry import start_registry

INTERVAL = 10.0
PHASE = 10.0
DRAIN = 5.0
CHANGE_TIMEOUT = 90.0
KEPT_LOG = Path("bench/results/hot-swap-rabbitmq-sidecar.log")
LOAD_USER = ("load", "load-password-1")


def measure(workdir: Path, quick: bool) -> list[Metric]:
    clients = 200 if quick else 1000
    out = rabbitmq(workdir / "rabbitmq", clients)
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


def _rabbitmq_config(image: str, deny_users: str) -> dict[str, str]:
    return {plugin_key(PLUGIN): plugin_yaml(image, settings={"deny_users": deny_users})}


def rabbitmq(work: Path, clients: int) -> list[Metric]:
    versions = build_versions(work / "build")
    ca = make_ca(work / "ca")
    registry = start_registry(work / "registry", ca)
    node = None
    sidecar = None
    log = work / "sidecar" / "sidecar.log"
    failed: list[str] = []
    try:
        v1, v2 = (push_version(registry, versions.v1, "v1"),
                  push_version(registry, versions.v2, "v2"))
        node = start_rabbitmq(work / "node")
        host, port = "127.0.0.1", node.mqtt_port
        cm = ConfigMapDir(work / "cm")
        cm.update(_rabbitmq_config(v1, "mallory"))
        sidecar = start_rabbitmq_sidecar(node, cm.path, work / "sidecar", ca.cert)

        def logins(*expected: tuple[str, bool]) -> bool:
            return all(mqtt_accepts(host, port, user) == ok for user, ok in expected)

        _wait(lambda: logins(("mallory", False), ("eve", True), ("alice", True)), 180,
              f"the sidecar to enable {PLUGIN} 0.1.0 (see {work}/sidecar/sidecar.log)")
        pid = node.os_pid()

        def change(config: dict[str, str], what: str,
                   *expected: tuple[str, bool]) -> str:
            """Apply ``config``; wait for the sidecar's verdict (a new ``decision=Applied``)
            and for the logins to show the change. A change that is not in effect within
            ``CHANGE_TIMEOUT`` counts as not applied (the sidecar keeps retrying)."""
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
            # 0.2.0's changed code also refuses eve, whatever deny_users says.
            upgrade = change(_rabbitmq_config(v2, "mallory"), f"upgrade to {PLUGIN} 0.2.0",
                             ("eve", False), ("mallory", False), ("alice", True))
            setting = change(_rabbitmq_config(v2, "trudy"), "deny_users=trudy",
                             ("trudy", False), ("mallory", True), ("alice", True))
            return f"{upgrade}; {setting}"

        stats, extra = _under_load(host, port, clients, lambda i: (f"load-{i}", "any"),
                                   upgrade_and_configure)
        same_node = node.os_pid() == pid
    finally:
        if failed and log.exists():
            KEPT_LOG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, KEPT_LOG)
        if sidecar is not None:
            sidecar.terminate()
            sidecar.wait(10)
        if node is not None:
            node.stop()
        registry.stop()
    extra += (f"; same node OS process: {'yes' if same_node else 'NO'}; driven by the sidecar "
              f"(python -m sidecar --broker rabbitmq, file mode, images pulled by digest)")
    rows = _rows("RabbitMQ 3.10 + sidecar", "plugin upgrade + config change", stats, extra)
    rows.append(Metric("hot swap (RabbitMQ 3.10 + sidecar)", "changes not in effect under load",
                       "", len(failed), max_value=0,
                       note=f"of 2 (upgrade, setting){': ' + ', '.join(failed) if failed else ''}"
                       f"{'; sidecar log kept in ' + str(KEPT_LOG) if failed else ''}"))
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

