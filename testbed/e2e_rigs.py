"""Broker "pods" for the e2e flows: a real broker process, its sidecar (with its gRPC service
for the builder's per-pod status), and what the flows need to know about each broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import yaml

from plugforge.contract import API_VERSION
from sidecar.app import Sidecar
from sidecar.events import kubernetes_event_sink
from sidecar.grpc_service import serve as serve_grpc
from sidecar.settings import Settings as SidecarSettings
from sidecar.state import Phase
from testbed.e2e_cluster import NAMESPACE, Projection, Stage, check
from testbed.e2e_mqtt import outcome
from testbed.emqx import Emqx, enable_password_database, start_emqx
from testbed.hivemq import HiveMQ, install_loader, start_hivemq
from testbed.mosquitto import Mosquitto, MosquittoConfig, start_mosquitto
from testbed.procs import Supervisor
from testbed.rabbitmq import RabbitMQ, start_rabbitmq
from testbed.vernemq import VerneMQ, start_vernemq

PROBE_SECRET = "probe-credentials"  # noqa: S105 (a Secret name, mounted for the sidecar)


class BrokerRig:
    """One broker "pod": the broker process, its sidecar and (file mode) the projection."""

    broker = ""
    template = ""
    hot_plugins = False
    mode = "files"
    live_config: tuple[str, str] | None = None     # (key, value) changeable live
    bad_config: ClassVar[dict[str, str]] = {}  # a broker.yaml config the sidecar refuses
    mqtt_version = "5"
    no_live_config = ""  # why flow 3 shows no live broker config change, when it does not

    def __init__(self, stage: Stage, workdir: Path) -> None:
        self.stage = stage
        self.workdir = workdir
        self.configmap = f"flows-{self.broker}"
        self.pod = f"{self.broker}-0"
        self.plugin_dir = workdir / "plugins"
        self._supervisor: Supervisor | None = None
        self._projection: Projection | None = None
        self.sidecar: Sidecar

    # broker-specific
    def start_broker(self) -> None:
        raise NotImplementedError

    def adapter_options(self) -> dict[str, str]:
        raise NotImplementedError

    # The running broker, as start_broker() left it: port, pid, server, restart(), stop().
    handle: Any

    @property
    def port(self) -> int:
        return int(self.handle.port)

    def pid(self) -> int:
        return int(self.handle.pid)

    def stop_broker(self) -> None:
        self.handle.stop()

    def change_policy(self, repo: Path) -> list[str]:
        """Edit the scaffolded source so the plugin also refuses ``eve``; the changed files."""
        raise NotImplementedError

    def break_build(self, repo: Path) -> list[str]:
        raise NotImplementedError

    # common
    def broker_yaml(self, config: dict[str, str] | None = None) -> str:
        doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "BrokerConfig",
                               "broker": self.broker}
        if config:
            doc["config"] = config
        return yaml.safe_dump(doc, sort_keys=False)

    def start(self) -> BrokerRig:
        api = self.stage.api
        code, out = api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", {
            "metadata": {"name": self.configmap}, "data": {"broker.yaml": self.broker_yaml()}})
        if code == 409:
            cm = api.configmap(self.configmap)
            cm["data"] = {"broker.yaml": self.broker_yaml()}
            api.put_configmap(cm)
        elif code != 201:
            raise AssertionError(f"creating ConfigMap {self.configmap}: {code} {out}")
        self.start_broker()
        self._supervisor = Supervisor(self.handle)  # the kubelet's restart policy
        cp = self.stage.cp
        dirs: tuple[Path, ...] = ()
        if self.mode == "files":
            self._projection = Projection(api, self.configmap, self.workdir / "target")
            dirs = (self._projection.dir.path,)
        settings = SidecarSettings(
            broker=self.broker, config_dirs=dirs, source=self.mode,
            configmaps=(self.configmap,) if self.mode == "api" else (), namespace=NAMESPACE,
            # Credentials in both modes, as in a pod: file mode still posts Events.
            kubeconfig=cp.kubeconfig("sidecar"),
            adapter_options=self.adapter_options(), plugin_dir=self.plugin_dir,
            cache_dir=self.workdir / "cache", allow_broker_restart=not self.hot_plugins,
            debounce=0.05, resync_interval=10.0, http_address="127.0.0.1:0",
            registry_ca=self.stage.registry.ca.cert, trust_policy=self.stage.trust_policy,
            probe_port=self.port,
            probe_mqtt_version=self.mqtt_version,
            probe_secrets_dir=self._mount_probe_secret(),
            pod_name=self.pod, pod_namespace=NAMESPACE)
        sink = kubernetes_event_sink(settings)
        self.sidecar = Sidecar(settings, event_sinks=[sink] if sink else [])
        self.sidecar.start()
        # The builder asks each pod's sidecar what it runs (per-pod status, canary). Plain text
        # on loopback here; the manifests' pods use TLS and a token.
        self.grpc = serve_grpc(self.sidecar, "127.0.0.1:0")
        self.grpc_address = f"127.0.0.1:{self.grpc.bound_port}"
        self._register_pod()
        return self

    def _register_pod(self) -> None:
        """The rig's Pod object, Ready at 127.0.0.1 (as a kubelet would report it), labelled
        ``app: <broker>``: the BrokerPlugins select it and dial its sidecar at that IP."""
        from testbed.broker_pods import PodObjects

        pods = PodObjects(self.stage.cp, NAMESPACE)
        pods.delete(self.pod)
        pods.create(self.pod, {"app": self.broker})
        pods.set_status(self.pod, "127.0.0.1", True)

    def _mount_probe_secret(self) -> Path:
        """The probe Secret as the kubelet mounts it (a directory per Secret, a file per key):
        the flows' probes name ``PROBE_SECRET``'s ``alice`` key, never a password."""
        mounted = self.workdir / "probe-secrets"
        (mounted / PROBE_SECRET).mkdir(parents=True, exist_ok=True)
        (mounted / PROBE_SECRET / "alice").write_text("any-password")
        return mounted

    def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.stop()
        self.grpc.stop(grace=1)
        self.sidecar.stop()
        if self._projection is not None:
            self._projection.stop()
        self.stop_broker()

    def outcome(self, action: str, username: str, topic: str = "") -> str:
        return outcome(self.port, action, username, topic, self.mqtt_version)

    def running_digest(self, plugin: str) -> str | None:
        for p in self.sidecar.state.plugins:
            # Refused: the desired image was refused; what runs is still the last good one.
            if p.name == plugin and p.status in ("Running", "Refused"):
                return p.running_digest
        return None

    def applied(self) -> bool:
        state = self.sidecar.state
        return state.phase is Phase.APPLIED and state.ready


class MosquittoRig(BrokerRig):
    """Debian's mosquitto 2.0: config hot (include file + SIGHUP), plugins at broker start only,
    so the sidecar restarts the broker for a plugin change (``--allow-broker-restart``) and a
    supervisor plays the kubelet. File mode: the sidecar reads the projected directory."""

    broker = "mosquitto"
    template = "mosquitto-c"
    hot_plugins = False
    mode = "files"
    live_config = ("message_size_limit", "5000")
    bad_config: ClassVar[dict[str, str]] = {"message_size_limit": "banana"}

    def start_broker(self) -> None:
        self.mosquitto: Mosquitto = start_mosquitto(self.workdir / "broker",
                                                    MosquittoConfig(allow_anonymous=False))
        self.handle = self.mosquitto

    def adapter_options(self) -> dict[str, str]:
        m = self.mosquitto
        return {"host": m.host, "port": str(m.port), "conf_dir": str(m.include_dir),
                "config_path": str(m.conf_path), "restart_timeout": "30"}

    def change_policy(self, repo: Path) -> list[str]:
        source = next((repo / "src").glob("*.c"))
        text = source.read_text()
        check('#define DEFAULT_DENY_USERS "mallory"' in text, f"{source}: no default deny list")
        source.write_text(text.replace('#define DEFAULT_DENY_USERS "mallory"',
                                       '#define DEFAULT_DENY_USERS "mallory,eve"'))
        return [str(source.relative_to(repo))]

    def break_build(self, repo: Path) -> list[str]:
        source = next((repo / "src").glob("*.c"))
        source.write_text(source.read_text() + "\nthis line is not C;\n")
        return [str(source.relative_to(repo))]


class HiveMQRig(BrokerRig):
    """HiveMQ CE with the plugforge loader installed before start (the init container's job):
    plugins and their settings are hot; HiveMQ CE has no live broker config, so broker.yaml
    config keys are refused. API mode: the sidecar watches the ConfigMap itself."""

    broker = "hivemq"
    template = "hivemq-java"
    hot_plugins = True
    mode = "api"
    live_config = None
    no_live_config = ("HiveMQ CE has none that can change live (config.xml is read at start); "
                      "broker.yaml keys are refused, see the broken edit below")
    bad_config: ClassVar[dict[str, str]] = {"max_qos": "1"}

    def start_broker(self) -> None:
        home = self.workdir / "broker"
        install_loader(home / "extensions", self.plugin_dir)
        self.hivemq: HiveMQ = start_hivemq(home)
        self.handle = self.hivemq

    def adapter_options(self) -> dict[str, str]:
        return {"mode": "loader", "host": self.hivemq.host, "port": str(self.hivemq.port),
                "loader_timeout": "30", "restart_timeout": "90"}

    def change_policy(self, repo: Path) -> list[str]:
        changed = []
        for path, old, new in (
                (next(repo.rglob("PolicySettings.java")), 'DEFAULT_DENY_USERS = "mallory"',
                 'DEFAULT_DENY_USERS = "mallory,eve"'),
                (repo / "src/main/extension/conf/config.properties", "deny_users=mallory",
                 "deny_users=mallory,eve")):
            text = path.read_text()
            check(old in text, (path, old))
            path.write_text(text.replace(old, new))
            changed.append(str(path.relative_to(repo)))
        return changed

    def break_build(self, repo: Path) -> list[str]:
        path = next(repo.rglob("PolicySettings.java"))
        path.write_text(path.read_text() + "\nthis is not Java\n")
        return [str(path.relative_to(repo))]


class RabbitMQRig(BrokerRig):
    """Debian's RabbitMQ 3.10 with rabbitmq_mqtt (MQTT 3.1.1): the sidecar enables plugin
    versions online (``rabbitmq-plugins --online``) and sets their settings as application env,
    all hot. Its live broker keys (users, permissions) act on the internal database, which the
    plugin replaces as the auth backend, so no behaviour shows them here. File mode."""

    broker = "rabbitmq"
    template = "rabbitmq-erlang"
    hot_plugins = True
    mode = "files"
    live_config = None
    no_live_config = ("RabbitMQ's live keys (users, permissions) act on its internal database, "
                      "which the plugin replaces as the auth backend: nothing to observe here "
                      "(tests/test_adapter_rabbitmq.py proves them without a plugin)")
    bad_config: ClassVar[dict[str, str]] = {"mqtt.no_such_key": "1"}
    mqtt_version = "3.1.1"

    def start_broker(self) -> None:
        self.node: RabbitMQ = start_rabbitmq(self.workdir / "broker", self.plugin_dir)
        self.handle = self.node

    def adapter_options(self) -> dict[str, str]:
        return {"node": self.node.nodename, "home": str(self.node.workdir),
                "epmd_port": str(self.node.ports.epmd), "timeout": "60"}

    @property
    def port(self) -> int:
        return self.node.mqtt_port

    def pid(self) -> int:
        return self.node.os_pid()

    def change_policy(self, repo: Path) -> list[str]:
        return _erlang_deny_eve_too(repo, next((repo / "src").glob("*.erl")))

    def break_build(self, repo: Path) -> list[str]:
        return _erlang_break(repo, next((repo / "src").glob("*.erl")))


class EmqxRig(BrokerRig):
    """EMQX 5.8.9 (built from shared/brokers/emqx) with its password database on, holding the
    flows' users: the sidecar places plugin packages in EMQX's plugins dir and starts them
    through the REST API, and sets plugin settings and broker config through it, all hot. The
    plugin only refuses; EMQX's database admits (and refuses strangers). API mode."""

    broker = "emqx"
    template = "emqx-erlang"
    hot_plugins = True
    mode = "api"
    live_config = ("mqtt.max_packet_size", "5000")
    bad_config: ClassVar[dict[str, str]] = {"node.cookie": "changed-live"}
    USERS = ("alice", "alice-0", "alice-1", "alice-2", "mallory", "eve", "trent")

    def start_broker(self) -> None:
        self.node: Emqx = start_emqx(self.workdir / "broker")
        enable_password_database(self.node, {u: "any-password" for u in self.USERS})
        self.handle = self.node

    def adapter_options(self) -> dict[str, str]:
        secret = self.workdir / "emqx-api"
        secret.mkdir(exist_ok=True)
        (secret / "key").write_text(self.node.api_key + "\n")
        (secret / "secret").write_text(self.node.api_secret + "\n")
        return {"install_dir": str(self.node.plugins_dir), "api_url": self.node.api_url,
                "api_key_file": str(secret / "key"), "api_secret_file": str(secret / "secret")}

    @property
    def port(self) -> int:
        return self.node.mqtt_port

    def pid(self) -> int:
        return self.node.server.pid  # bin/emqx foreground execs the VM

    def change_policy(self, repo: Path) -> list[str]:
        policy = next(p for p in (repo / "src").glob("*.erl")
                      if not p.stem.endswith(("_app", "_sup")))
        return _erlang_deny_eve_too(repo, policy)

    def break_build(self, repo: Path) -> list[str]:
        return _erlang_break(repo, next((repo / "src").glob("*_app.erl")))


class VerneMQRig(BrokerRig):
    """VerneMQ 2.0.1 (built from shared/brokers/vernemq, testbed/vernemq.py) as a user sets it
    up: allow_anonymous off, the stock vmq_passwd (the flows' users, password "any-password")
    and vmq_acl. The sidecar enables plugins over the HTTP API ahead of vmq_passwd/vmq_acl, sets
    ``max_message_size`` live (vmq-admin) and plugin settings as application env. API mode."""

    broker = "vernemq"
    template = "vernemq-erlang"
    hot_plugins = True
    mode = "api"
    live_config = ("max_message_size", "5000")
    bad_config: ClassVar[dict[str, str]] = {"message_size_limit": "5000"}  # not a 2.0.1 key
    USERS = ("alice", "alice-0", "alice-1", "alice-2", "mallory", "eve", "trent")

    def start_broker(self) -> None:
        self.node: VerneMQ = start_vernemq(self.workdir / "broker",
                                           users=dict.fromkeys(self.USERS, "any-password"))
        self.handle = self.node

    def adapter_options(self) -> dict[str, str]:
        key = self.workdir / "vernemq-api-key"
        key.write_text(self.node.api_key + "\n")
        return {"api_url": self.node.api_url, "api_key_file": str(key),
                "vmq_admin": str(self.node.vmq_admin)}

    def change_policy(self, repo: Path) -> list[str]:
        return _erlang_deny_eve_too(repo, next((repo / "src").glob("*.erl")))

    def break_build(self, repo: Path) -> list[str]:
        return _erlang_break(repo, next((repo / "src").glob("*.erl")))



def _erlang_deny_eve_too(repo: Path, policy: Path) -> list[str]:
    """The Erlang templates keep the deny list in two places: the .app.src's env and the
    policy module's default."""
    changed = []
    for path, old, new in (
            (next((repo / "src").glob("*.app.src")), '{deny_users, "mallory"}',
             '{deny_users, "mallory,eve"}'),
            (policy, 'deny_users, "mallory")', 'deny_users, "mallory,eve")')):
        text = path.read_text()
        check(old in text, (path, old))
        path.write_text(text.replace(old, new))
        changed.append(str(path.relative_to(repo)))
    return changed


def _erlang_break(repo: Path, source: Path) -> list[str]:
    source.write_text(source.read_text() + "\nthis is not erlang\n")
    return [str(source.relative_to(repo))]

RIGS: dict[str, type[BrokerRig]] = {"mosquitto": MosquittoRig, "hivemq": HiveMQRig,
                                    "rabbitmq": RabbitMQRig, "emqx": EmqxRig,
                                    "vernemq": VerneMQRig}
