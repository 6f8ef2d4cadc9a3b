"""The three user flows end to end on real components, shared by tests/test_e2e_flows.py and
the demo (``python -m testbed.demo``).

One ``Stage`` holds what a cluster would: the apiserver with plugforge's manifests applied, the
builder and its webhook endpoint (in-process, as the ``builder`` ServiceAccount with exactly
the RBAC in manifests/), the registry and the git server. A ``BrokerRig`` is one broker "pod":
a real broker process and a real sidecar (as the ``sidecar`` ServiceAccount), fed either by a
kubelet-style projection of the ConfigMap into an atomic-writer directory (file mode) or by its
own watch on the apiserver (API mode). Flows act only through the product's interfaces: Git
pushes, signed webhooks, BrokerPlugin and ConfigMap writes through the apiserver, MQTT clients.
"""

from __future__ import annotations

import json
import shutil
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from builder.app import Builder
from builder.kube import Kube, apply_documents
from builder.recipe import template_dir
from builder.scaffold import scaffold
from builder.settings import Settings as BuilderSettings
from builder.webhooks import service as webhooks
from builder.webhooks.signatures import github_header
from plugforge.contract import API_VERSION, Probe, ProbeAction
from sidecar.app import Sidecar
from sidecar.events import kubernetes_event_sink
from sidecar.grpc_service import serve as serve_grpc
from sidecar.probes import run_probe
from sidecar.settings import Settings as SidecarSettings
from sidecar.state import Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.gitserver import GitServer, run_git
from testbed.hivemq import HiveMQ, install_loader, start_hivemq
from testbed.kube import ControlPlane
from testbed.manifests import MANIFESTS, render
from testbed.mosquitto import Mosquitto, MosquittoConfig, start_mosquitto
from testbed.rabbitmq import RabbitMQ, start_rabbitmq
from testbed.registry import Registry

T = TypeVar("T")
NAMESPACE = "default"  # where manifests/ bind the builder's tenant role and the sidecar's role
WEBHOOK_SECRET_NAME = "flows-webhook"  # noqa: S105 - a Secret's name, not its value
Say = Callable[[str], None]


def quiet(_message: str) -> None:
    pass


def check(condition: object, what: object) -> None:
    """Like ``assert`` (tests see an AssertionError), but never optimized away."""
    if not condition:
        raise AssertionError(what)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0,
             say: Say = quiet, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; tells ``say`` every 5 s while waiting."""
    started = time.monotonic()
    next_note = started + 5
    while True:
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        if now >= next_note:
            say(f"    ... still waiting for {what} ({now - started:.0f}s)")
            next_note = now + 5
        time.sleep(interval)


# --- the cluster side -------------------------------------------------------------------------


class Api:
    """Admin-side apiserver calls the flows make (what an operator does with kubectl)."""

    def __init__(self, cp: ControlPlane, identity: str = "admin") -> None:
        self.cp = cp
        self.identity = identity

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, Any]:
        req = urllib.request.Request(
            self.cp.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.cp.identities[self.identity].token}",
                     "Content-Type": content_type, "Accept": "application/json"})
        ctx = ssl.create_default_context(cafile=str(self.cp.ca.cert))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"message": raw.decode(errors="replace")}

    def ok(self, method: str, path: str, body: Any = None,
           content_type: str = "application/json") -> Any:
        code, out = self.call(method, path, body, content_type)
        if code not in (200, 201):
            raise AssertionError(f"{method} {path}: {code} {out}")
        return out

    def plugin(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.ok(
            "GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/brokerplugins/{name}")
        return out

    def builds(self, plugin: str) -> list[dict[str, Any]]:
        out = self.ok("GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/pluginbuilds")
        items = [b for b in out["items"] if b["spec"]["plugin"] == plugin]
        return sorted(items, key=lambda b: (b["metadata"]["creationTimestamp"],
                                            b["metadata"]["name"]))

    def configmap(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
        return out

    def put_configmap(self, cm: dict[str, Any]) -> None:
        """Write back a ConfigMap read before (optimistic concurrency on resourceVersion)."""
        self.ok("PUT", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{cm['metadata']['name']}",
                cm)

    def events(self, involved: str) -> list[dict[str, Any]]:
        out = self.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/events")
        return [e for e in out["items"] if e["involvedObject"].get("name") == involved]


def install_manifests(cp: ControlPlane) -> None:
    """Apply manifests/base (the same objects ``kubectl apply -k manifests/`` creates) as admin."""
    docs = render(MANIFESTS / "base")
    admin = Kube.from_kubeconfig(cp.kubeconfig("admin"))
    try:
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        apply_documents(admin.api, crds)
        for plural in ("brokerplugins", "pluginbuilds"):
            wait_for(lambda p=plural: cp.request(  # type: ignore[misc]
                "GET", f"/apis/plugforge.dev/v1alpha1/{p}")[0] == 200, f"CRD {plural}")
        apply_documents(admin.api, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
    finally:
        admin.close()


@dataclass
class Stage:
    """The cluster side: apiserver (manifests applied), builder, webhooks, registry, git."""

    cp: ControlPlane
    registry: Registry
    git: GitServer
    workdir: Path
    say: Say = quiet
    api: Api = field(init=False)
    builder: Builder = field(init=False)
    hooks: webhooks.Webhooks = field(init=False)
    webhook_secret: str = field(init=False)
    _kube: Kube = field(init=False)

    def start(self) -> Stage:
        self.api = Api(self.cp)
        install_manifests(self.cp)
        self.webhook_secret = uuid.uuid4().hex
        code, out = self.api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "metadata": {"name": WEBHOOK_SECRET_NAME},
            "stringData": {"secret": self.webhook_secret}})
        if code == 409:
            secret = self.api.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/"
                                 f"{WEBHOOK_SECRET_NAME}")
            secret["stringData"] = {"secret": self.webhook_secret}
            self.api.ok("PUT", f"/api/v1/namespaces/{NAMESPACE}/secrets/{WEBHOOK_SECRET_NAME}",
                        secret)
        elif code != 201:
            raise AssertionError(f"creating the webhook Secret: {code} {out}")
        # A long resync: new commits are built because a webhook asked, not because of polling.
        self.builder = Builder(BuilderSettings(
            kubeconfig=self.cp.kubeconfig("builder"), lease_name=f"flows-{uuid.uuid4().hex[:6]}",
            identity="builder-flows-0", state_dir=self.workdir / "builder", workers=2,
            resync_seconds=600.0, lease_duration_seconds=4, lease_renew_seconds=1,
            backoff_base_seconds=0.5, backoff_max_seconds=2, max_attempts=2,
            registry_ca=self.registry.ca.cert))
        self.builder.start()
        wait_for(lambda: self.builder.leading, "the builder to take its Lease", say=self.say)
        self._kube = Kube.from_kubeconfig(self.cp.kubeconfig("builder"))
        self.hooks = webhooks.start_with_kube(self._kube)
        return self

    def stop(self) -> None:
        self.hooks.stop()
        self._kube.close()
        self.builder.stop()

    def send_push(self, repo: str, before: str, after: str, changed: list[str]) -> int:
        """A GitHub ``push`` delivery for ``repo`` (owner/name), signed with the Secret."""
        owner, name = repo.split("/")
        base = f"http://127.0.0.1:{self.git.port}/{owner}/{name}"
        commit = {"id": after, "message": "change the policy", "timestamp":
                  "2026-11-21T21:00:00+00:00", "url": f"{base}/commit/{after}", "distinct": True,
                  "author": {"name": "Alice", "email": "alice@example", "username": "alice"},
                  "committer": {"name": "Alice", "email": "alice@example", "username": "alice"},
                  "added": [], "removed": [], "modified": changed}
        payload = {
            "ref": "refs/heads/main", "before": before, "after": after, "created": False,
            "deleted": False, "forced": False, "base_ref": None,
            "compare": f"{base}/compare/{before[:12]}...{after[:12]}",
            "commits": [commit], "head_commit": commit,
            "repository": {"id": 1, "name": name, "full_name": repo, "private": False,
                           "owner": {"login": owner, "name": owner, "id": 2},
                           "html_url": base, "clone_url": f"{base}.git",
                           "ssh_url": f"git@127.0.0.1:{repo}.git", "default_branch": "main"},
            "pusher": {"name": "alice", "email": "alice@example"},
            "sender": {"login": "alice", "id": 3},
        }
        body = json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.hooks.url}/webhooks/github", data=body,
                                     method="POST", headers={
                                         "Content-Type": "application/json",
                                         "X-GitHub-Event": "push",
                                         "X-GitHub-Delivery": str(uuid.uuid4()),
                                         "X-Hub-Signature-256": github_header(
                                             self.webhook_secret.encode(), body)})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)


class Projection:
    """Plays the kubelet for a ConfigMap volume: copies the ConfigMap from the apiserver into an
    atomic-writer directory whenever its resourceVersion changes (polled every 50 ms; the real
    kubelet takes up to a minute or more)."""

    def __init__(self, api: Api, name: str, directory: Path) -> None:
        self.api = api
        self.name = name
        self.dir = ConfigMapDir(directory)
        self._version = ""
        self._stop = threading.Event()
        self.sync()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{name}", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        code, cm = self.api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{self.name}")
        if code == 200 and cm["metadata"]["resourceVersion"] != self._version:
            self.dir.update(cm.get("data") or {})
            self._version = cm["metadata"]["resourceVersion"]

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sync()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# --- MQTT clients ------------------------------------------------------------------------------


def outcome(port: int, action: str, username: str, topic: str = "",
            mqtt_version: str = "5") -> str:
    """accepted | refused | error, from a real MQTT client (the sidecar's own probe code)."""
    kind: ProbeAction = "publish" if action == "publish" else "connect"
    return run_probe(Probe(f"{action}-{username}", kind, username, "accepted", "any-password",
                           topic), "127.0.0.1", port, mqtt_version=mqtt_version).outcome


class Watcher:
    """A client connected before a change; counts how often the broker dropped it."""

    def __init__(self, port: int, username: str, mqtt_version: str = "5") -> None:
        self.disconnects = 0
        self.connected = threading.Event()
        protocol = mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol,
                             client_id=f"{username}-{uuid.uuid4().hex[:6]}",
                             reconnect_on_failure=False)
        self.c.username_pw_set(username, "any-password")
        self.c.on_connect = lambda _c, _u, _f, rc, _p: (
            self.connected.set() if not rc.is_failure else None)
        self.c.on_disconnect = self._on_disconnect
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        if not self.connected.wait(10):
            raise AssertionError(f"{username} could not connect")

    def _on_disconnect(self, *_args: object) -> None:
        self.disconnects += 1

    def still_connected(self) -> bool:
        return self.c.is_connected()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def big_message_delivered(port: int, username: str, size: int = 6000) -> bool:
    """Publish ``size`` bytes then a small marker to ourselves: did the big one arrive?"""
    got: list[str] = []
    ready, marker = threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                    client_id=f"big-{uuid.uuid4().hex[:6]}", reconnect_on_failure=False)
    c.username_pw_set(username, "any-password")
    topic = f"sizes/{uuid.uuid4().hex[:6]}"

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.topic)
        if msg.topic.endswith("/marker"):
            marker.set()

    c.on_subscribe = lambda *_a: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.subscribe(f"{topic}/#", qos=1)
        check(ready.wait(10), "no SUBACK within 10s")
        c.publish(f"{topic}/big", b"x" * size, qos=0)
        c.publish(f"{topic}/marker", b"m", qos=1)
        check(marker.wait(10), "the marker message did not come back within 10s")
        return f"{topic}/big" in got
    finally:
        c.disconnect()
        c.loop_stop()


# --- brokers ------------------------------------------------------------------------------------


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
        self.restarts = 0
        self._supervising = threading.Event()
        self._projection: Projection | None = None
        self.sidecar: Sidecar

    # broker-specific
    def start_broker(self) -> None:
        raise NotImplementedError

    def adapter_options(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        raise NotImplementedError

    def pid(self) -> int:
        raise NotImplementedError

    def _broker_exited(self) -> bool:
        raise NotImplementedError

    def _restart_broker(self) -> None:
        raise NotImplementedError

    def stop_broker(self) -> None:
        raise NotImplementedError

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
        threading.Thread(target=self._supervise, name=f"kubelet-{self.pod}", daemon=True).start()
        cp = self.stage.cp
        dirs: tuple[Path, ...] = ()
        if self.mode == "files":
            self._projection = Projection(api, self.configmap, self.workdir / "target")
            dirs = (self._projection.dir.path,)
        settings = SidecarSettings(
            broker=self.broker, config_dirs=dirs, source=self.mode,
            configmaps=(self.configmap,) if self.mode == "api" else (), namespace=NAMESPACE,
            kubeconfig=cp.kubeconfig("sidecar") if self.mode == "api" else None,
            adapter_options=self.adapter_options(), plugin_dir=self.plugin_dir,
            cache_dir=self.workdir / "cache", allow_broker_restart=not self.hot_plugins,
            debounce=0.05, resync_interval=10.0, http_address="127.0.0.1:0",
            registry_ca=self.stage.registry.ca.cert, probe_port=self.port,
            probe_mqtt_version=self.mqtt_version,
            pod_name=self.pod, pod_namespace=NAMESPACE)
        sink = kubernetes_event_sink(settings)
        self.sidecar = Sidecar(settings, event_sinks=[sink] if sink else [])
        self.sidecar.start()
        # The builder asks each pod's sidecar what it runs (per-pod status, canary). Plain text
        # on loopback here; the manifests' pods use TLS and a token.
        self.grpc = serve_grpc(self.sidecar, "127.0.0.1:0")
        self.grpc_address = f"127.0.0.1:{self.grpc.bound_port}"
        return self

    def _supervise(self) -> None:
        """Plays the kubelet's restart policy: a broker that exits is started again."""
        self._supervising.set()
        while self._supervising.is_set():
            time.sleep(0.1)
            if self._supervising.is_set() and self._broker_exited():
                self._restart_broker()
                self.restarts += 1

    def stop(self) -> None:
        self._supervising.clear()
        self.grpc.stop(grace=1)
        self.sidecar.stop()
        if self._projection is not None:
            self._projection.stop()
        self.stop_broker()

    def outcome(self, action: str, username: str, topic: str = "") -> str:
        return outcome(self.port, action, username, topic, self.mqtt_version)

    def running_digest(self, plugin: str) -> str | None:
        for p in self.sidecar.state.plugins:
            if p.name == plugin and p.status == "Running":
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

    def adapter_options(self) -> dict[str, str]:
        m = self.mosquitto
        return {"host": m.host, "port": str(m.port), "conf_dir": str(m.include_dir),
                "config_path": str(m.conf_path), "restart_timeout": "30"}

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def pid(self) -> int:
        return self.mosquitto.pid

    def _broker_exited(self) -> bool:
        return self.mosquitto.server.proc.poll() is not None

    def _restart_broker(self) -> None:
        self.mosquitto.restart()

    def stop_broker(self) -> None:
        self.mosquitto.stop()

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

    def adapter_options(self) -> dict[str, str]:
        return {"mode": "loader", "host": self.hivemq.host, "port": str(self.hivemq.port),
                "loader_timeout": "30", "restart_timeout": "90"}

    @property
    def port(self) -> int:
        return self.hivemq.port

    def pid(self) -> int:
        return self.hivemq.pid

    def _broker_exited(self) -> bool:
        return self.hivemq.server.proc.poll() is not None

    def _restart_broker(self) -> None:
        self.hivemq.restart()

    def stop_broker(self) -> None:
        self.hivemq.stop()

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

    def adapter_options(self) -> dict[str, str]:
        return {"node": self.node.nodename, "home": str(self.node.workdir),
                "epmd_port": str(self.node.ports.epmd), "timeout": "60"}

    @property
    def port(self) -> int:
        return self.node.mqtt_port

    def pid(self) -> int:
        return self.node.os_pid()

    def _broker_exited(self) -> bool:
        return self.node.server.proc.poll() is not None

    def _restart_broker(self) -> None:
        self.node.start_node()

    def stop_broker(self) -> None:
        self.node.stop()

    def change_policy(self, repo: Path) -> list[str]:
        changed = []
        for path, old, new in (
                (next((repo / "src").glob("*.app.src")), '{deny_users, "mallory"}',
                 '{deny_users, "mallory,eve"}'),
                (next((repo / "src").glob("*.erl")), 'deny_users, "mallory")',
                 'deny_users, "mallory,eve")')):
            text = path.read_text()
            check(old in text, (path, old))
            path.write_text(text.replace(old, new))
            changed.append(str(path.relative_to(repo)))
        return changed

    def break_build(self, repo: Path) -> list[str]:
        path = next((repo / "src").glob("*.erl"))
        path.write_text(path.read_text() + "\nthis is not erlang\n")
        return [str(path.relative_to(repo))]


RIGS: dict[str, type[BrokerRig]] = {"mosquitto": MosquittoRig, "hivemq": HiveMQRig,
                                    "rabbitmq": RabbitMQRig}


# --- the flows ---------------------------------------------------------------------------------


@dataclass
class Results:
    """What the demo's summary table and the tests' assertions read."""

    broker: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)   # flow, measurement, value
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, flow: str, what: str, value: str) -> None:
        self.rows.append((flow, what, value))


@dataclass
class Plugin:
    """The BrokerPlugin the flows drive, and the Git repository behind it."""

    name: str
    repo_path: Path
    repo: str          # owner/name on the git server
    url: str
    key_name: str = ""  # the plugin's name in the ConfigMap (plugin.<key_name>.yaml)
    digest: str = ""


def _commit_and_push(plugin: Plugin, message: str) -> tuple[str, str]:
    before = run_git(plugin.repo_path, "rev-parse", "HEAD")
    run_git(plugin.repo_path, "commit", "-qam", message)
    run_git(plugin.repo_path, "push", "-q", plugin.url, "HEAD:main")
    return before, run_git(plugin.repo_path, "rev-parse", "HEAD")


def _wait_build(api: Api, plugin: str, commit: str, say: Say) -> dict[str, Any]:
    try:
        return wait_for(lambda: _build_for(api, plugin, commit), f"the build of {commit[:8]}",
                        timeout=300, say=say)
    except AssertionError as e:
        seen = [(b["metadata"]["name"], b["spec"].get("commit"), b.get("status"))
                for b in api.builds(plugin)]
        raise AssertionError(f"{e}; builds of {plugin}: {seen}") from None


def _build_for(api: Api, plugin: str, commit: str) -> dict[str, Any] | None:
    for b in api.builds(plugin):
        st = b.get("status") or {}
        built = st.get("commit") or b["spec"].get("commit")
        if built == commit and st.get("phase") in ("Succeeded", "Failed"):
            return b
    return None


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_), {})


def flow1_point_a_cr_at_git(stage: Stage, rig: BrokerRig, results: Results,
                            say: Say = quiet) -> Plugin:
    """A BrokerPlugin pointing at a repo scaffolded from the broker's template becomes a running,
    enforced plugin in the broker."""
    api = stage.api
    name = f"{rig.broker}-acl"
    repo = f"flows/{name}-{uuid.uuid4().hex[:6]}"
    url = stage.git.create_repo(f"{repo}.git")
    path = rig.workdir / "src" / name
    shutil.rmtree(path, ignore_errors=True)
    scaffold(template_dir(rig.template), rig.template, rig.broker, name, path)
    run_git(path, "push", "-q", url, "HEAD:main")
    plugin = Plugin(name, path, repo, url)
    commit = run_git(path, "rev-parse", "HEAD")
    say(f"  scaffolded {rig.template} into {url} (commit {commit[:8]})")

    started = time.monotonic()
    api.ok("POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/brokerplugins", {
        "apiVersion": API_VERSION, "kind": "BrokerPlugin", "metadata": {"name": name},
        "spec": {"broker": rig.broker, "source": {"git": {"url": url, "ref": "main"}},
                 "image": {"repository": f"{stage.registry.host}/plugins/{name}"},
                 "target": {"configMap": rig.configmap, "rollout": "Automatic",
                            "sidecars": [{"pod": rig.pod, "address": rig.grpc_address}]},
                 "probes": [{"name": "mallory-refused", "action": "connect",
                             "username": "mallory", "expect": "refused"}],
                 "webhook": {"secretRef": {"name": WEBHOOK_SECRET_NAME}}}})
    say(f"  applied BrokerPlugin {NAMESPACE}/{name}; the builder is building it")
    build = _wait_build(api, name, commit, say)
    built = time.monotonic()
    check(build["status"]["phase"] == "Succeeded", build["status"])
    plugin.digest = build["status"]["digest"]
    say(f"  built and pushed {stage.registry.host}/plugins/{name}@{plugin.digest[:19]}... "
        f"in {built - started:.1f}s")
    bp = wait_for(lambda: (p := api.plugin(name))["status"].get("currentImage") and p,
                  "the BrokerPlugin's currentImage", say=say)
    plugin.key_name = bp["status"].get("currentPluginName") or name
    key = f"plugin.{plugin.key_name}.yaml"
    check(plugin.digest in api.configmap(rig.configmap)["data"][key], f"{key} lacks the digest")
    say(f"  ConfigMap {rig.configmap}: {key} -> image@digest")
    wait_for(lambda: rig.running_digest(plugin.key_name) == plugin.digest,
             "the sidecar to run the new digest", timeout=180, say=say)
    wait_for(rig.applied, "the sidecar to report Applied and ready", timeout=60, say=say)
    rolled = time.monotonic()
    say(f"  sidecar ({rig.mode} mode) pulled, verified and loaded it in {rolled - built:.1f}s"
        + ("" if rig.hot_plugins else " (plugins load at start: the broker was restarted)"))

    checks = {"mallory connect": rig.outcome("connect", "mallory"),
              "alice connect": rig.outcome("connect", "alice"),
              "alice publish forbidden/x": rig.outcome("publish", "alice", "forbidden/x"),
              "alice publish sensors/x": rig.outcome("publish", "alice", "sensors/x")}
    for what, got in checks.items():
        say(f"  MQTT: {what:<28} {got}")
    results.facts["flow1_checks"] = checks
    bp = wait_for(lambda: (p := api.plugin(name))["status"].get("podsReady") == 1 and p,
                  "the BrokerPlugin to count the pod running it", timeout=30, say=say)
    ready = _condition(bp, "Ready")
    st = bp["status"]
    results.facts.update(flow1_ready=ready, flow1_pods=(st.get("podsReady"), st.get("podsTotal")))
    say(f"  BrokerPlugin Ready={ready.get('status')} ({ready.get('reason')}), "
        f"digest {plugin.digest[:19]}..., pods running it: {st.get('podsReady')}/"
        f"{st.get('podsTotal')}")
    results.add("1 CR -> broker", "build (CR applied -> image pushed)", f"{built - started:.1f} s")
    results.add("1 CR -> broker", "rollout (pushed -> loaded, probes pass)",
                f"{rolled - built:.1f} s")
    return plugin


def flow2_push_triggers_rebuild(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                                say: Say = quiet, watchers: int = 3) -> None:
    """A signed GitHub push webhook rebuilds the plugin with a changed policy and rolls it out
    while clients stay connected (on brokers that hot-load)."""
    api = stage.api
    clients = [Watcher(rig.port, f"alice-{i}", rig.mqtt_version) for i in range(watchers)]
    pid_before = rig.pid()
    say(f"  {watchers} clients connected (broker pid {pid_before})")
    changed = rig.change_policy(plugin.repo_path)
    before, after = _commit_and_push(plugin, "also deny eve")
    say(f"  pushed {after[:8]} (also deny eve) to main")
    started = time.monotonic()
    status = stage.send_push(plugin.repo, before, after, changed)
    say(f"  signed GitHub push webhook -> HTTP {status}")
    build = _wait_build(api, plugin.name, after, say)
    built = time.monotonic()
    check(build["status"]["phase"] == "Succeeded", build["status"])
    old, plugin.digest = plugin.digest, build["status"]["digest"]
    check(plugin.digest != old, "the policy change gave the same digest")
    say(f"  new digest {plugin.digest[:19]}... built in {built - started:.1f}s "
        f"(trigger {build['spec']['trigger'].get('type')})")
    wait_for(lambda: rig.running_digest(plugin.key_name) == plugin.digest,
             "the sidecar to run the new digest", timeout=180, say=say)
    wait_for(rig.applied, "the sidecar to report Applied", timeout=60, say=say)
    rolled = time.monotonic()
    say(f"  rolled out in {rolled - built:.1f}s")
    checks = {"eve connect": rig.outcome("connect", "eve"),
              "mallory connect": rig.outcome("connect", "mallory"),
              "alice connect": rig.outcome("connect", "alice")}
    for what, got in checks.items():
        say(f"  MQTT: {what:<28} {got}")
    disconnects = sum(c.disconnects for c in clients)
    still = sum(c.still_connected() for c in clients)
    for c in clients:
        c.close()
    pid_after = rig.pid()
    say(f"  clients connected before the change: {still}/{watchers} still connected, "
        f"{disconnects} disconnects; broker pid {pid_before} -> {pid_after}")
    results.facts.update(flow2_checks=checks, flow2_disconnects=disconnects,
                         flow2_still_connected=still, flow2_pids=(pid_before, pid_after),
                         flow2_trigger=build["spec"]["trigger"])
    results.add("2 push -> rebuild", "build (webhook -> image pushed)", f"{built - started:.1f} s")
    results.add("2 push -> rebuild", "rollout (pushed -> loaded, probes pass)",
                f"{rolled - built:.1f} s")
    results.add("2 push -> rebuild", "disconnects of connected clients",
                f"{disconnects} of {watchers}" + ("" if rig.hot_plugins else
                                                   " (restart-only broker)"))


def unhappy_broken_push(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                        say: Say = quiet) -> None:
    """A push that does not compile: the build fails with the reason on the CR, and the old
    plugin keeps running."""
    api = stage.api
    changed = rig.break_build(plugin.repo_path)
    before, after = _commit_and_push(plugin, "oops: does not compile")
    say(f"  pushed {after[:8]}, which does not compile; webhook sent")
    stage.send_push(plugin.repo, before, after, changed)
    build = _wait_build(api, plugin.name, after, say)
    def built_false() -> dict[str, Any] | None:
        cond = _condition(api.plugin(plugin.name), "Built")
        return cond if cond.get("status") == "False" else None

    built = wait_for(built_false, "Built=False on the BrokerPlugin", say=say)
    bp = api.plugin(plugin.name)
    say(f"  PluginBuild {build['metadata']['name']}: {build['status']['phase']} "
        f"({build['status'].get('reason')})")
    say(f"  BrokerPlugin Built=False {built.get('reason')}: {built.get('message', '')[:90]}")
    running = rig.running_digest(plugin.key_name)
    still_refused = rig.outcome("connect", "eve")
    say(f"  broker still runs {str(running)[:19]}... (the last good digest); eve {still_refused}")
    results.facts.update(broken_build=build, broken_condition=built,
                         broken_current_image=bp["status"].get("currentImage"),
                         broken_running=running, broken_eve=still_refused)
    results.add("unhappy", "broken push", f"{build['status'].get('reason')}; old plugin kept")
    # Put the source back so later flows start from a building tree.
    run_git(plugin.repo_path, "revert", "--no-edit", "HEAD")
    run_git(plugin.repo_path, "push", "-q", plugin.url, "HEAD:main")


def _edit_configmap(api: Api, name: str, edit: Callable[[dict[str, str]], None]) -> float:
    cm = api.configmap(name)
    edit(cm.setdefault("data", {}))
    started = time.monotonic()
    api.put_configmap(cm)
    return started


def flow3_configmap_edits(stage: Stage, rig: BrokerRig, plugin: Plugin, results: Results,
                          say: Say = quiet) -> None:
    """Broker config and plugin settings edited in the ConfigMap reach the running broker; a
    broken edit is refused with the reason in the sidecar's state (and Events in API mode)."""
    api = stage.api
    pid0 = rig.pid()
    key = f"plugin.{plugin.key_name}.yaml"
    if rig.live_config is not None:
        option, value = rig.live_config
        say(f"  broker config: a 6000-byte message is delivered: "
            f"{big_message_delivered(rig.port, 'alice')}")
        started = _edit_configmap(api, rig.configmap, lambda d: d.__setitem__(
            "broker.yaml", rig.broker_yaml({option: value})))
        wait_for(lambda: not big_message_delivered(rig.port, "alice"),
                 f"{option}={value} to take effect", timeout=30, say=say)
        latency = time.monotonic() - started
        same = rig.pid() == pid0
        say(f"  set {option}={value} in broker.yaml -> 6000-byte messages dropped after "
            f"{latency * 1000:.0f} ms ({rig.mode} mode); broker pid unchanged: {same}")
        results.facts.update(flow3_config_latency=latency, flow3_config_same_pid=same)
        results.add("3 ConfigMap edits", "apply latency: broker config",
                    f"{latency * 1000:.0f} ms ({option}), same pid")
    else:
        say(f"  broker config: {rig.no_live_config}")
        results.add("3 ConfigMap edits", "apply latency: broker config", "not shown (see log)")

    def set_settings(data: dict[str, str]) -> None:
        release = yaml.safe_load(data[key])
        release["settings"] = {"deny_users": "mallory,eve,trent"}
        data[key] = yaml.safe_dump(release, sort_keys=False)

    pid1 = rig.pid()
    say(f"  plugin setting: trent {rig.outcome('connect', 'trent')} before")
    started = _edit_configmap(api, rig.configmap, set_settings)
    wait_for(lambda: rig.outcome("connect", "trent") == "refused",
             "deny_users=mallory,eve,trent to take effect", timeout=120, say=say)
    latency = time.monotonic() - started
    wait_for(rig.applied, "the sidecar to report Applied", timeout=60, say=say)
    same = rig.pid() == pid1
    say(f"  set deny_users=mallory,eve,trent -> trent refused after {latency * 1000:.0f} ms; "
        f"broker pid unchanged: {same}"
        + ("" if rig.hot_plugins else " (plugin options load at broker start: restarted)"))
    results.facts.update(flow3_settings_latency=latency, flow3_settings_same_pid=same,
                         flow3_alice=rig.outcome("connect", "alice"))
    results.add("3 ConfigMap edits", "apply latency: plugin setting deny_users",
                f"{latency * 1000:.0f} ms" + (", same pid" if same else ", broker restarted"))

    # The broken edit: refused whole, the last good state kept, the reason visible.
    good = api.configmap(rig.configmap)["data"]["broker.yaml"]
    rejections = _count_rejections(rig)
    _edit_configmap(api, rig.configmap, lambda d: d.__setitem__(
        "broker.yaml", rig.broker_yaml(rig.bad_config)))
    wait_for(lambda: rig.sidecar.state.phase is Phase.REJECTED, "the edit to be rejected",
             timeout=30, say=say)
    state = rig.sidecar.state
    say(f"  broken edit {rig.bad_config} -> {state.phase.value}: {state.last_error[:110]}")
    events: list[dict[str, Any]] = []
    if rig.mode == "api":
        events = wait_for(lambda: [e for e in api.events(rig.pod) if e["reason"] == "Rejected"],
                          "a Rejected Event on the pod", timeout=30, say=say)
        say(f"  Event on pod {rig.pod}: {events[-1]['type']} {events[-1]['reason']}")
    results.facts.update(broken_edit_error=state.last_error, broken_edit_events=events,
                         broken_edit_rejections=_count_rejections(rig) - rejections,
                         broken_edit_trent=rig.outcome("connect", "trent"))
    results.add("unhappy", "broken ConfigMap edit",
                "Rejected, last good state kept" + (", Event posted" if events else ""))
    _edit_configmap(api, rig.configmap, lambda d: d.__setitem__("broker.yaml", good))
    wait_for(rig.applied, "the sidecar to be Applied again", timeout=60, say=say)


def _count_rejections(rig: BrokerRig) -> int:
    return rig.sidecar.metrics.rejections


def run_all(stage: Stage, rig: BrokerRig, say: Say = quiet) -> Results:
    """Flows 1, 2, 3 and the unhappy paths on one broker, in order."""
    results = Results(rig.broker)
    say(f"Flow 1 on {rig.broker}: point a BrokerPlugin at a Git repo")
    plugin = flow1_point_a_cr_at_git(stage, rig, results, say)
    say(f"Flow 2 on {rig.broker}: a GitHub push triggers a rebuild")
    flow2_push_triggers_rebuild(stage, rig, plugin, results, say)
    say(f"Unhappy path on {rig.broker}: a push that breaks the build")
    unhappy_broken_push(stage, rig, plugin, results, say)
    say(f"Flow 3 on {rig.broker}: ConfigMap edits applied live")
    flow3_configmap_edits(stage, rig, plugin, results, say)
    results.facts["plugin"] = plugin
    return results
