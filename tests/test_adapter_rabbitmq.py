"""The RabbitMQ adapter on a real RabbitMQ 3.10 node (the session ``rabbitmq`` fixture) with the
rabbitmq-erlang template built in three versions, checked with real MQTT 3.1.1 clients (paho).

A client that logged in before the changes (through the internal backend) stays connected
through every transition, and the node's OS process is the same from the first step to the last.
The last test drives the real sidecar (``sidecar.app``) from a kubelet-style ConfigMap directory
with the plugin images pulled from the real registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mqtt_support import Client
from rabbitmq_adapter_support import (
    PLUGIN,
    Versions,
    accepted,
    adapter_options,
    build_versions,
    cleanup,
    connect,
    make_adapter,
    publish_refused,
)
from sidecar_support import wait_for

from plugforge.contract import API_VERSION, PluginRelease, render_plugin_release
from plugforge.oci import ImageMetadata, RegistryClient, pack_image, parse_reference
from sidecar.adapters.base import WRITE_ONLY, AdapterError, BrokerUnavailable, ChangeClass
from sidecar.adapters.rabbitmq import VERSIONS, RabbitMQAdapter, create
from sidecar.adapters.registry import create_adapter
from sidecar.app import Sidecar
from sidecar.settings import Settings
from sidecar.state import Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.rabbitmq import RabbitMQ
from testbed.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

EARLY = ("early", "early-password")
MALLORY = ("mallory", "mallory-password")  # exists in the internal database too


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    return build_versions(tmp_path_factory.mktemp("rabbitmq-versions"))


@dataclass
class Node:
    node: RabbitMQ
    adapter: RabbitMQAdapter
    early: Client
    pid: int


@pytest.fixture(scope="module")
def rmq(rabbitmq: RabbitMQ) -> Iterator[Node]:
    original = rabbitmq.eval("application:get_env(rabbit, auth_backends).")[4:-1]
    adapter = make_adapter(rabbitmq)
    adapter.apply_config({
        "user.early.password": EARLY[1], "user.mallory.password": MALLORY[1],
        **{f"permission.{u}.{f}": ".*" for u in ("early", "mallory")
           for f in ("configure", "write", "read")}})
    early = connect(rabbitmq, *EARLY)
    assert early.accepted
    try:
        yield Node(rabbitmq, adapter, early, rabbitmq.os_pid())
    finally:
        early.close()
        cleanup(rabbitmq, original, users=("early", "mallory", "carol"))


def still_the_same(rmq: Node) -> None:
    assert rmq.early.connected and not rmq.early.disconnected, "the early client was dropped"
    assert rmq.node.os_pid() == rmq.pid, "the node's OS process changed"


def running(adapter: RabbitMQAdapter) -> str | None:
    observed = adapter.observe()
    assert observed.reachable, observed.detail
    plugin = observed.plugins.get(PLUGIN)
    return plugin.digest if plugin else None


# --- options and validation (no node needed) -------------------------------------------------


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="needs node"):
        create({}, tmp_path)
    with pytest.raises(AdapterError, match=r"unknown option.*management_url"):
        create({"node": "rabbit@x", "management_url": "http://x"}, tmp_path)
    with pytest.raises(AdapterError, match="timeout must be seconds"):
        create({"node": "rabbit@x", "timeout": "soon"}, tmp_path)
    adapter = create_adapter("rabbitmq", {"node": "rabbit@x"}, tmp_path)
    assert adapter.name == "rabbitmq"
    assert adapter.plugin_change_class() is ChangeClass.PLUGIN_RELOAD


def test_config_is_validated_with_the_brokers_rules(tmp_path: Path) -> None:
    adapter = create({"node": "rabbit@x"}, tmp_path)
    problems = {p.key: p.message for p in adapter.validate_config({
        "mqtt.vhost": "/", "mqtt.allow_anonymous": "yes", "mqtt.listeners.tcp.1": "1884",
        "no.such.key": "1", "user.carol.tags": "management, monitoring",
        "user.bad name.password": "x", "permission.carol.write": "(",
        "permission.carol.delete": ".*", "topic_permission.carol.read": "^a\\.",
        "user.carol.password": "", "auth_backends.1": "internal"})}
    assert set(problems) == {"mqtt.allow_anonymous", "mqtt.listeners.tcp.1", "no.such.key",
                             "user.bad name.password", "permission.carol.write",
                             "permission.carol.delete", "user.carol.password",
                             "auth_backends.1"}
    assert "expected true or false" in problems["mqtt.allow_anonymous"]
    assert "only when the node starts" in problems["mqtt.listeners.tcp.1"]
    assert "rabbitmq.conf" in problems["mqtt.listeners.tcp.1"]
    assert "unknown key" in problems["no.such.key"]
    assert "the adapter sets auth_backends itself" in problems["auth_backends.1"]
    assert "regular expression" in problems["permission.carol.write"]
    assert "configure, write, read" in problems["permission.carol.delete"]
    assert adapter.classify("mqtt.vhost") is ChangeClass.HOT
    assert adapter.classify("user.carol.tags") is ChangeClass.HOT
    assert adapter.classify("mqtt.listeners.tcp.1") is ChangeClass.BROKER_RESTART
    assert adapter.normalize("user.carol.tags", "monitoring, management") == \
        "management,monitoring"
    assert adapter.write_only("user.carol.password")
    assert not adapter.write_only("user.carol.tags")
    with pytest.raises(AdapterError, match="never restarts"):
        adapter.restart()


def test_install_refuses_what_is_not_a_plugin_archive(versions: Versions, tmp_path: Path) -> None:
    adapter = create({"node": "rabbit@x"}, tmp_path / "plugins")
    empty = tmp_path / "empty"
    (empty / "plugin" / PLUGIN).mkdir(parents=True)
    (empty / "plugin" / PLUGIN / "README").write_text("no archive")
    with pytest.raises(AdapterError, match=r"exactly one plugin/deny_test/deny_test-<version>\.ez"):
        adapter.install_plugin(PLUGIN, versions.v1.digest, empty)
    not_zip = tmp_path / "not-zip"
    (not_zip / "plugin" / PLUGIN).mkdir(parents=True)
    (not_zip / "plugin" / PLUGIN / f"{PLUGIN}-0.1.0.ez").write_bytes(b"not a zip")
    with pytest.raises(AdapterError, match="not a RabbitMQ plugin archive"):
        adapter.install_plugin(PLUGIN, versions.v1.digest, not_zip)
    with pytest.raises(AdapterError, match="expected exactly one"):
        adapter.install_plugin("other_name", versions.v1.digest, versions.v1.tree)
    with pytest.raises(AdapterError, match="sha256 digest"):
        adapter.install_plugin(PLUGIN, "latest", versions.v1.tree)
    assert not (tmp_path / "plugins" / VERSIONS / PLUGIN).exists() or not any(
        (tmp_path / "plugins" / VERSIONS / PLUGIN).iterdir())


def test_unreachable_node_and_cli_timeouts(rabbitmq: RabbitMQ, tmp_path: Path) -> None:
    options = adapter_options(rabbitmq)
    gone = create({**options, "node": "pf-nobody@localhost"}, tmp_path)
    observed = gone.observe()
    assert not observed.reachable and "not reachable" in observed.detail
    assert not gone.health()
    with pytest.raises(BrokerUnavailable, match="not reachable"):
        gone.apply_config({"mqtt.vhost": "/"})
    slow = create({**options, "timeout": "0.01"}, tmp_path)
    observed = slow.observe()
    assert not observed.reachable and "within 0.01s" in observed.detail


# --- the plugin lifecycle on the real node ---------------------------------------------------


def test_enable_refuses_mallory_admits_alice_and_forbidden_publishes(
        rmq: Node, versions: Versions) -> None:
    node, adapter = rmq.node, rmq.adapter
    assert accepted(node, *MALLORY)  # the internal backend knows her
    adapter.install_plugin(PLUGIN, versions.v1.digest, versions.v1.tree)
    adapter.enable(PLUGIN, versions.v1.digest, {})
    assert running(adapter) == versions.v1.digest
    assert node.eval("application:get_env(rabbit, auth_backends).") == f"{{ok,[{PLUGIN}]}}"
    assert not accepted(node, *MALLORY)
    assert accepted(node, "alice")  # no internal user needed: the plugin decides
    assert publish_refused(node, "alice", "forbidden/x")
    assert not publish_refused(node, "alice", "ok/x")
    still_the_same(rmq)
    # Only one version of the app in the plugins dir: the one enabled.
    assert sorted(p.name for p in node.shared_plugins_dir.glob(f"{PLUGIN}-*.ez")) == [
        f"{PLUGIN}-0.1.0.ez"]


def test_settings_apply_live_and_are_observed(rmq: Node, versions: Versions) -> None:
    node, adapter = rmq.node, rmq.adapter
    adapter.enable(PLUGIN, versions.v1.digest, {"deny_users": "bob, trudy"})
    plugin = adapter.observe().plugins[PLUGIN]
    assert plugin.settings == {"deny_users": "bob, trudy"}
    assert not accepted(node, "bob") and not accepted(node, "trudy")
    assert accepted(node, *MALLORY)
    adapter.enable(PLUGIN, versions.v1.digest, {})  # back to the .app default (mallory)
    assert not accepted(node, *MALLORY) and accepted(node, "bob")
    still_the_same(rmq)


def test_upgrade_runs_the_new_code(rmq: Node, versions: Versions) -> None:
    node, adapter = rmq.node, rmq.adapter
    assert accepted(node, "eve")
    # New code under the same version string (same archive name): still reloaded.
    adapter.install_plugin(PLUGIN, versions.recoded.digest, versions.recoded.tree)
    adapter.enable(PLUGIN, versions.recoded.digest, {})
    assert running(adapter) == versions.recoded.digest
    assert not accepted(node, "eve")
    still_the_same(rmq)

    adapter.install_plugin(PLUGIN, versions.v2.digest, versions.v2.tree)
    adapter.enable(PLUGIN, versions.v2.digest, {})
    assert running(adapter) == versions.v2.digest
    assert not accepted(node, "eve")  # only the changed code refuses eve
    assert not accepted(node, *MALLORY) and accepted(node, "alice")
    assert sorted(p.name for p in node.shared_plugins_dir.glob(f"{PLUGIN}-*.ez")) == [
        f"{PLUGIN}-0.2.0.ez"]
    still_the_same(rmq)


def test_failed_enable_restores_the_previous_version(rmq: Node, versions: Versions) -> None:
    node, adapter = rmq.node, rmq.adapter
    adapter.install_plugin(PLUGIN, versions.broken.digest, versions.broken.tree)
    with pytest.raises(AdapterError) as failure:
        adapter.enable(PLUGIN, versions.broken.digest, {})
    message = str(failure.value)
    assert f"enabling plugin '{PLUGIN}' {versions.broken.digest} failed" in message
    assert f"restored the previous version {versions.v2.digest}" in message
    assert running(adapter) == versions.v2.digest
    assert not accepted(node, "eve") and not accepted(node, *MALLORY)
    assert accepted(node, "alice")
    still_the_same(rmq)


def test_stale_code_is_not_reported_as_running(rmq: Node, versions: Versions) -> None:
    """The archive in the plugins dir swapped behind the node's back (no reload): the loaded
    modules' MD5 no longer match the archive's, so observe reports no running version."""
    node, adapter = rmq.node, rmq.adapter
    active = node.shared_plugins_dir / f"{PLUGIN}-0.2.0.ez"
    original = active.read_bytes()
    try:
        v1 = versions.v1.tree / "plugin" / PLUGIN / f"{PLUGIN}-0.1.0.ez"
        # Same file name, v1's bytes: a plugin whose vsn did not change but whose code did.
        active.write_bytes(v1.read_bytes())
        assert running(adapter) is None
    finally:
        active.write_bytes(original)
    assert running(adapter) == versions.v2.digest


def test_disable_hands_logins_back_to_the_internal_backend(rmq: Node) -> None:
    node, adapter = rmq.node, rmq.adapter
    adapter.disable(PLUGIN)
    observed = adapter.observe()
    assert observed.plugins[PLUGIN].enabled is False
    assert observed.plugins[PLUGIN].digest is None
    assert node.eval("application:get_env(rabbit, auth_backends).") == \
        "{ok,[rabbit_auth_backend_internal]}"
    assert accepted(node, *MALLORY)
    assert not accepted(node, "alice")  # unknown to the internal backend
    assert not list(node.shared_plugins_dir.glob(f"{PLUGIN}-*.ez"))
    still_the_same(rmq)


def test_users_and_permissions_change_live(rmq: Node) -> None:
    node, adapter = rmq.node, rmq.adapter
    carol = {"user.carol.password": "pw-1", "user.carol.tags": "monitoring",
             "permission.carol.configure": ".*", "permission.carol.write": ".*",
             "permission.carol.read": ".*", "topic_permission.carol.write": "^ok\\.",
             "topic_permission.carol.read": ".*"}
    adapter.apply_config(carol)
    config = adapter.observe().config
    assert config["user.carol.password"] == WRITE_ONLY
    assert {k: config[k] for k in carol if k != "user.carol.password"} == {
        k: v for k, v in carol.items() if k != "user.carol.password"}
    assert accepted(node, "carol", "pw-1")
    assert publish_refused(node, "carol", "forbidden/x", "pw-1")  # topic permission
    assert not publish_refused(node, "carol", "ok/x", "pw-1")

    # Tags alone keep the password; a new password replaces it.
    adapter.apply_config({"user.carol.tags": "management,monitoring"})
    assert accepted(node, "carol", "pw-1")
    adapter.apply_config({"user.carol.password": "pw-2"})
    assert not accepted(node, "carol", "pw-1") and accepted(node, "carol", "pw-2")

    # RabbitMQ's own validation: a regex it cannot compile is refused with its reason.
    with pytest.raises(AdapterError, match="invalid_regexp"):
        adapter.apply_config({"permission.carol.write": "("})

    adapter.apply_config({"user.carol.password": None, "user.carol.tags": None,
                          "topic_permission.carol.write": None,
                          "topic_permission.carol.read": None})
    assert not any("carol" in k for k in adapter.observe().config)
    assert not accepted(node, "carol", "pw-2")
    still_the_same(rmq)


def test_mqtt_keys_are_live_and_restored(rmq: Node) -> None:
    node, adapter = rmq.node, rmq.adapter
    adapter.apply_config({"mqtt.vhost": "no-such-vhost"})
    assert adapter.observe().config["mqtt.vhost"] == "no-such-vhost"
    assert not accepted(node, *MALLORY)  # the next connection goes to the new vhost
    adapter.apply_config({"mqtt.vhost": None})
    assert adapter.observe().config["mqtt.vhost"] == "/"  # what the node had before
    assert accepted(node, *MALLORY)
    still_the_same(rmq)


# --- upgrades while clients publish ----------------------------------------------------------


class Load:
    """MQTT 3.1.1 clients publishing QoS 1 in a tight loop (each waits for its PUBACK) from a
    few threads, and logins in a loop: every call into the auth backend a busy node makes
    (login, publish authorization) keeps arriving during the disable + enable of an upgrade."""

    def __init__(self, node: RabbitMQ, clients: int = 30, threads: int = 3) -> None:
        self.node = node
        self.clients = [connect(node, f"load-{i}") for i in range(clients)]
        assert all(c.accepted for c in self.clients), "a load client was refused"
        self.published = 0
        self.logins = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._publish, args=(self.clients[i::threads],),
                                          daemon=True) for i in range(threads)]
        self._threads.append(threading.Thread(target=self._login, daemon=True))
        for thread in self._threads:
            thread.start()

    def _publish(self, clients: list[Client]) -> None:
        while not self._stop.is_set():
            for client in clients:
                try:
                    client.publish(f"ok/load/{client.username}", b"x")
                    self.published += 1
                except AssertionError as e:
                    self.failures.append(f"publish: {e}")
                    return

    def _login(self) -> None:
        while not self._stop.is_set():
            client = connect(self.node, "alice")
            client.close()
            if not client.accepted:
                self.failures.append(f"alice's login refused: {client.connect_rc}, "
                                     f"disconnected: {client.disconnected}")
            self.logins += 1

    def stop(self) -> list[str]:
        """Stop the load; what went wrong (nothing, if every client stayed connected)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        dropped = [c.username for c in self.clients if c.disconnected or not c.connected]
        for client in self.clients:
            client.close()
        return self.failures + ([f"clients disconnected: {dropped}"] if dropped else [])


def test_upgrade_and_rollback_while_clients_publish(rmq: Node, versions: Versions) -> None:
    """Regression (hot-swap benchmark): with clients publishing, calls into the backend between
    the disable and the enable used to reload the old module from the old version's ebin, and
    every upgrade (and its rollback) failed with "modules still running old code"."""
    node, adapter = rmq.node, rmq.adapter
    adapter.install_plugin(PLUGIN, versions.v1.digest, versions.v1.tree)
    adapter.install_plugin(PLUGIN, versions.v2.digest, versions.v2.tree)
    adapter.install_plugin(PLUGIN, versions.broken.digest, versions.broken.tree)
    adapter.enable(PLUGIN, versions.v1.digest, {})
    assert accepted(node, "eve")
    load = Load(node)
    try:
        wait_for(lambda: load.published >= 100 and load.logins >= 3, "the load to run",
                 timeout=30)
        adapter.enable(PLUGIN, versions.v2.digest, {})
        assert running(adapter) == versions.v2.digest
        assert not accepted(node, "eve")  # v2's code is live
        # A failed upgrade under load: the previous version (v2) comes back, fresh.
        with pytest.raises(AdapterError, match=f"restored the previous version "
                           f"{versions.v2.digest}"):
            adapter.enable(PLUGIN, versions.broken.digest, {})
        assert running(adapter) == versions.v2.digest
        assert not accepted(node, "eve")
        # The sidecar's rollback to the last good state: v1 again, its code live.
        published = load.published
        adapter.enable(PLUGIN, versions.v1.digest, {})
        assert running(adapter) == versions.v1.digest
        assert accepted(node, "eve") and not accepted(node, *MALLORY)
        wait_for(lambda: load.published > published + 50, "publishes after the rollback",
                 timeout=30)
    finally:
        problems = load.stop()
    assert problems == []
    assert load.published > 200, load.published
    paths = node.eval(f"[P || P <- code:get_path(), string:find(P, \"{PLUGIN}-\") =/= nomatch].")
    assert "0.2.0" not in paths and "0.1.0" in paths, paths
    adapter.disable(PLUGIN)
    assert accepted(node, *MALLORY)
    still_the_same(rmq)


# --- the real sidecar, a ConfigMap directory and the real registry ---------------------------


def _push(registry: Registry, versions: Versions) -> tuple[str, str]:
    refs = []
    for version in (versions.v1, versions.v2):
        image = pack_image(version.artifact_dir, ImageMetadata(
            "https://git.test/deny-test.git", f"rev-{version.vsn}", "rabbitmq", PLUGIN,
            version.vsn))
        ref = parse_reference(f"{registry.host}/plugins/rabbitmq-deny-test:{version.vsn}")
        with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
            pinned = client.push_image(ref, image)
        refs.append(f"{registry.host}/plugins/rabbitmq-deny-test@{pinned.digest}")
    return refs[0], refs[1]


def _documents(image: str, config: dict[str, str]) -> dict[str, str]:
    broker = yaml.safe_dump({"apiVersion": API_VERSION, "kind": "BrokerConfig",
                             "broker": "rabbitmq", "config": config})
    return {"broker.yaml": broker,
            f"plugin.{PLUGIN}.yaml": render_plugin_release(PluginRelease(PLUGIN, image))}


def test_sidecar_loads_the_plugin_from_a_configmap(rmq: Node, versions: Versions,
                                                   registry: Registry, tmp_path: Path) -> None:
    """The sidecar, given a ConfigMap, pulls the template plugin by digest, loads it online and
    applies config through RabbitMQ's own admin interface; an upgrade runs the new code."""
    node = rmq.node
    v1, v2 = _push(registry, versions)
    config = {"user.carol.password": "carol-pw", "permission.carol.configure": ".*",
              "permission.carol.write": ".*", "permission.carol.read": ".*"}
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update(_documents(v1, config))
    settings = Settings(
        broker="rabbitmq", config_dirs=(cm.path,), source="files",
        adapter_options=adapter_options(node), plugin_dir=node.shared_plugins_dir,
        cache_dir=tmp_path / "cache", debounce=0.05, resync_interval=3600.0,
        http_address="127.0.0.1:0", registry_ca=registry.ca.cert)
    sidecar = Sidecar(settings)
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and sidecar.state.ready,
                 "v1 applied", timeout=90)
        assert sidecar.state.plugins[0].running_digest == v1.split("@")[1]
        assert not accepted(node, *MALLORY) and accepted(node, "alice")
        assert "user.carol.password" in sidecar.state.observed.config  # type: ignore[union-attr]

        cm.update(_documents(v2, config))
        wait_for(lambda: sidecar.state.last_applied.plugins.get(PLUGIN) == v2.split("@")[1],
                 "v2 applied", timeout=90)
        assert not accepted(node, "eve")  # v2's code runs
        assert sidecar.reconcile_now("converged?").actions == ()

        # Removed from the ConfigMap: disabled, internal backend back in charge.
        cm.update({"broker.yaml": _documents(v2, {})["broker.yaml"],
                   f"plugin.{PLUGIN}.yaml": render_plugin_release(
                       PluginRelease(PLUGIN, v2, enabled=False))})
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED and
                 PLUGIN not in sidecar.state.last_applied.plugins, "plugin disabled",
                 timeout=90)
        assert accepted(node, *MALLORY)
        assert not accepted(node, "carol", "carol-pw")  # removed from broker.yaml: deleted
        still_the_same(rmq)
    finally:
        sidecar.stop()
