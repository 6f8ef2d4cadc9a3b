"""Hot swap under load: 1000 MQTT clients (``--quick``: 200) connected to a real broker, each
subscribed to its own topic and publishing to it at QoS 1 every 10 s (100 messages/s in all),
while the broker's plugin is upgraded and its config changed. Counted: clients the broker
disconnected, QoS 1 messages sent and never delivered back, duplicates. Goal: 0 and 0.

- RabbitMQ 3.10 (Debian), which loads plugins at runtime. The auth plugin ``deny_test`` from
  the rabbitmq-erlang template, built here as 0.1.0 and 0.2.0 (changed code: a different
  default deny list), is the node's only auth backend, so every load client logged in through
  it. Upgrade as the template README documents (new ``.ez`` in place of the old,
  ``rabbitmq-plugins disable --online`` then ``enable --online``), driven with the CLI directly:
  the sidecar's RabbitMQ adapter had not landed when this was written. Proven by behaviour: after
  the upgrade "eve" is refused and "mallory" accepted. Config change: the plugin's ``deny_users``
  application env set on the running node, proven by a login refused.
- mosquitto 2.0 with dynamic security, driven by the sidecar (``python -m sidecar``, file mode):
  one ConfigMap update changes a SIGHUP-reloaded option (``max_queued_messages``) and a dynsec
  role ACL; proven by mosquitto logging the reload. (A mosquitto plugin change needs a broker
  restart, which disconnects everyone by design; it is not a hot swap and not measured here.)
Phases: connect all, 10 s of load, the changes, 10 s more, stop publishing, 5 s drain.
HiveMQ CE is not used: it does not load extensions at runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.hot_swap_support import PLUGIN, build_rabbitmq_plugins, count_in_file, mqtt_accepts
from bench.mqtt_load_support import LoadStats, MqttLoad
from bench.propagation_support import broker_yaml, start_dynsec_broker
from bench.report import Metric
from bench.sidecar_latency import start_sidecar
from testbed.configmap_dir import ConfigMapDir
from testbed.rabbitmq import start_rabbitmq

INTERVAL = 10.0
PHASE = 10.0
DRAIN = 5.0
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


def rabbitmq(work: Path, clients: int) -> list[Metric]:
    v1, v2 = build_rabbitmq_plugins(work / "build")
    node = start_rabbitmq(work / "node")
    try:
        node.install_plugin(v1)
        node.rabbitmq_plugins("enable", "--online", PLUGIN)
        node.eval(f"application:set_env(rabbit, auth_backends, [{PLUGIN}]).")
        host, port = "127.0.0.1", node.mqtt_port
        if mqtt_accepts(host, port, "mallory") or not mqtt_accepts(host, port, "eve"):
            raise RuntimeError(f"{PLUGIN} 0.1.0 is not the one deciding logins")
        pid = node.os_pid()

        def upgrade_and_configure() -> str:
            started = time.monotonic()
            (node.shared_plugins_dir / v1.name).unlink()
            node.install_plugin(v2)
            node.rabbitmq_plugins("disable", "--online", PLUGIN)
            node.rabbitmq_plugins("enable", "--online", PLUGIN)
            upgraded = time.monotonic() - started
            fresh = not mqtt_accepts(host, port, "eve") and mqtt_accepts(host, port, "mallory")
            node.eval(f'application:set_env({PLUGIN}, deny_users, "trudy").')
            configured = not mqtt_accepts(host, port, "trudy") and mqtt_accepts(host, port, "eve")
            return (f"upgrade 0.1.0 -> 0.2.0 took {upgraded:.1f}s (new code runs: "
                    f"{'yes' if fresh else 'NO'}); deny_users change applied: "
                    f"{'yes' if configured else 'NO'}")

        stats, extra = _under_load(host, port, clients, lambda i: (f"load-{i}", "any"),
                                   upgrade_and_configure)
        same_node = node.os_pid() == pid
    finally:
        node.stop()
    extra += (f"; same node OS process: {'yes' if same_node else 'NO'}; driven by "
              f"rabbitmq-plugins --online (the RabbitMQ adapter had not landed)")
    return _rows("RabbitMQ 3.10", "plugin upgrade + config change", stats, extra)


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


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")

