"""The HiveMQ adapter against a real HiveMQ CE 2025.5 and real MQTT clients (paho).

Plugin images are the hivemq-java template built with its recipe, packed, pushed to the real
registry fixture and pulled back by the sidecar's own ``ImagePuller``.

Hot path (``mode=loader``): the plugforge loader extension is installed before HiveMQ starts;
enable, upgrade, refusals, settings and disable then happen with the broker process unchanged
(same pid) and a client connected before each change still connected after it. v2's code also
refuses ``eve``: that proves the new classes run, not the old ones.

Restart path (``mode=restart``, no loader): changes are staged in the extensions folder and take
effect when the broker restarts; a supervisor thread plays the kubelet.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import _track
from hivemq_support import (
    PLUGIN,
    HiveMQImages,
    accepted,
    adapter_options,
    build_hivemq_images,
    make_adapter,
    start_loader_broker,
)
from mqtt_support import NOT_AUTHORIZED, Client

from plugforge.contract import Document, PluginRelease, Probe, render_plugin_release
from sidecar.adapters import hivemq_files as files
from sidecar.adapters.base import AdapterError, ChangeClass
from sidecar.adapters.hivemq import HiveMQAdapter
from sidecar.adapters.hivemq_loader import LoaderFiles
from sidecar.adapters.registry import create_adapter
from sidecar.app import Sidecar
from sidecar.images import ImagePuller
from sidecar.plan import ActionKind
from sidecar.probes import run_probe
from sidecar.reconcile import Reconciler
from sidecar.settings import Settings
from sidecar.state import Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.hivemq import HiveMQ, start_hivemq
from testbed.procs import Supervisor

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@dataclass
class Trees:
    images: HiveMQImages
    pull: ImagePuller

    def tree(self, image: str) -> Path:
        return self.pull(image)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory, registry: object) -> Trees:
    root = tmp_path_factory.mktemp("hivemq-images")
    host, ca = registry.host, registry.ca.cert  # type: ignore[attr-defined]
    images = build_hivemq_images(root, host, ca)
    return Trees(images, ImagePuller(root / "cache", ca_bundle=ca))


@dataclass
class LoaderBroker:
    broker: HiveMQ
    plugin_dir: Path
    adapter: HiveMQAdapter


@pytest.fixture(scope="module")
def loader_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoaderBroker]:
    root = tmp_path_factory.mktemp("hivemq-loader")
    plugin_dir = root / "plugins"
    broker = start_loader_broker(root / "hivemq", plugin_dir)
    _track(broker)
    yield LoaderBroker(broker, plugin_dir, make_adapter(broker, plugin_dir))
    broker.stop()


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.2)


def install(adapter: HiveMQAdapter, trees: Trees, image: str) -> str:
    digest = HiveMQImages.digest(image)
    adapter.install_plugin(PLUGIN, digest, trees.tree(image))
    return digest


def running(adapter: HiveMQAdapter) -> str | None:
    seen = adapter.observe().plugins.get(PLUGIN)
    return seen.digest if seen else None


def test_options_and_registry(tmp_path: Path) -> None:
    adapter = create_adapter("hivemq", {}, tmp_path)
    assert adapter.plugin_change_class() is ChangeClass.PLUGIN_RELOAD
    with pytest.raises(AdapterError, match="mode=restart needs extensions_dir"):
        create_adapter("hivemq", {"mode": "restart", "extensions_dir": "/x"}, tmp_path)
    with pytest.raises(AdapterError, match="unknown option"):
        create_adapter("hivemq", {"conf_dir": "/x"}, tmp_path)
    observed = adapter.observe()
    assert not observed.reachable
    assert "install the loader extension" in observed.detail
    assert [p.key for p in adapter.validate_config({"max_qos": "1"})] == ["max_qos"]


def test_loader_status_goes_stale(tmp_path: Path) -> None:
    now = [time.time()]
    loader = LoaderFiles(tmp_path, timeout=1, clock=lambda: now[0])
    loader.status_path.parent.mkdir(parents=True)
    loader.status_path.write_text("pid=1\nloader_started_ms=5\nactive_plugin=p\n"
                                  "active_version=v\nrequest=r\nerror=\n")
    status = loader.status()
    assert status is not None and (status.active_plugin, status.instance) == ("p", "1:5")
    now[0] += 11  # the loader rewrites it every 2 s while HiveMQ runs
    assert loader.status() is None
    assert "has not updated" in loader.not_running_detail()


def test_settings_files_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "v"
    (folder / "conf").mkdir(parents=True)
    (folder / "conf/config.properties").write_text("# shipped\ndeny_users=mallory\n")
    files.keep_image_settings(folder)
    assert files.read_settings(folder) == {}  # the image's own file: no settings of ours
    files.write_settings(folder, {"deny_users": "eve, trudy", "path": "C:\\x"})
    assert files.read_settings(folder) == {"deny_users": "eve, trudy", "path": "C:\\x"}
    assert "path=C:\\\\x" in (folder / "conf/config.properties").read_text()
    files.write_settings(folder, {})
    assert (folder / "conf/config.properties").read_text() == "# shipped\ndeny_users=mallory\n"
    with pytest.raises(AdapterError, match="values one line"):
        files.check_settings("p", {"deny_users": "a\nb"})


def test_hot_enable_upgrade_refuse_disable(loader_broker: LoaderBroker, trees: Trees) -> None:
    broker, adapter = loader_broker.broker, loader_broker.adapter
    pid = broker.pid
    # Nothing active yet: the loader fails closed.
    assert adapter.observe().reachable and adapter.observe().plugins == {}
    assert not accepted(broker, "alice")

    # --- enable v1 -------------------------------------------------------------------------
    v1 = install(adapter, trees, trees.images.v1)
    adapter.enable(PLUGIN, v1, {})
    assert running(adapter) == v1
    assert not accepted(broker, "mallory")
    assert accepted(broker, "eve")
    # In a pod the broker and the sidecar run as different users sharing an fsGroup.
    assert stat.S_IMODE(adapter.loader.status_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(adapter.loader.status_path.parent.stat().st_mode) & 0o070 == 0o070
    keeper = Client(broker.port, "bob")  # stays connected through every change below
    keeper.subscribe("#")
    veteran = Client(broker.port, "carol")  # connected under v1, publishes under v2
    alice = Client(broker.port, "alice")
    assert alice.accepted
    assert alice.publish("forbidden/x", b"secret").value == NOT_AUTHORIZED
    alice.wait_disconnected()
    assert veteran.publish("legacy/x", b"v1 allows").value == 0
    try:
        # --- upgrade to v2: new code (also refuses eve), same broker process -----------------
        v2 = install(adapter, trees, trees.images.v2)
        adapter.enable(PLUGIN, v2, {})
        assert running(adapter) == v2
        assert not accepted(broker, "eve"), "v1's code still runs after the upgrade"
        assert not accepted(broker, "mallory") and accepted(broker, "alice")
        assert keeper.connected and veteran.connected and broker.pid == pid
        assert keeper.publish("ok/after-upgrade", b"1").value == 0
        keeper.wait_for_message("ok/after-upgrade")
        # A client connected under v1 is now authorized by v2's code.
        assert veteran.publish("legacy/x", b"v2 refuses").value == NOT_AUTHORIZED
        veteran.wait_disconnected()

        # --- a broken jar: clear error, v2 stays active --------------------------------------
        broken = install(adapter, trees, trees.images.broken)
        with pytest.raises(AdapterError, match=r"was not activated: .*still active: deny-test"):
            adapter.enable(PLUGIN, broken, {})
        assert running(adapter) == v2
        assert adapter.loader.control().version == v2.removeprefix("sha256:")
        assert not accepted(broker, "eve")

        # --- settings the plugin refuses: clear error, v2 stays active ------------------------
        with pytest.raises(AdapterError, match="unknown setting 'deny_user'"):
            adapter.enable(PLUGIN, v1, {"deny_user": "typo"})
        assert running(adapter) == v2

        # --- a settings change is read live by the running version ---------------------------
        adapter.enable(PLUGIN, v2, {"deny_users": "trudy"})
        eventually(lambda: not accepted(broker, "trudy"), "trudy refused after the settings")
        assert accepted(broker, "mallory")  # the new list replaces the default
        assert adapter.observe().plugins[PLUGIN].settings == {"deny_users": "trudy"}

        # --- disable: fail closed; connected clients stay until they publish -----------------
        walker = Client(broker.port, "dave")
        adapter.disable(PLUGIN)
        assert adapter.observe().plugins == {}
        assert not accepted(broker, "alice")
        assert keeper.connected
        assert walker.publish("ok/x", b"no plugin").value == NOT_AUTHORIZED
        walker.wait_disconnected()

        # --- enable v1 again (a rollback): eve is let in again -------------------------------
        adapter.enable(PLUGIN, v1, {})
        assert running(adapter) == v1
        assert accepted(broker, "eve") and not accepted(broker, "mallory")
        assert keeper.connected and not keeper.disconnected
        assert keeper.publish("legacy/y", b"v1 again").value == 0
        assert broker.pid == pid
    finally:
        for client in (keeper, veteran, alice):
            client.close()
    log = broker.server.log_path.read_text()
    assert log.count("PLUGFORGE-HIVEMQ-STARTED") == 1


def test_active_plugin_comes_back_after_a_broker_restart(loader_broker: LoaderBroker,
                                                         trees: Trees) -> None:
    broker, adapter = loader_broker.broker, loader_broker.adapter
    v1 = install(adapter, trees, trees.images.v1)
    adapter.enable(PLUGIN, v1, {})
    before = adapter.observe().instance
    broker.restart()
    _track(broker)
    # The loader applies the control file inside extensionStart, before the listener opens.
    assert not accepted(broker, "mallory")
    observed = adapter.observe()
    assert observed.instance != before
    assert observed.plugins[PLUGIN].digest == v1
    # The heartbeat: rewritten with no control change, so the sidecar can tell it is alive.
    written = adapter.loader.status_path.stat().st_mtime
    eventually(lambda: adapter.loader.status_path.stat().st_mtime > written, "a heartbeat",
               timeout=5)


def test_reconciler_converges_and_then_does_nothing(loader_broker: LoaderBroker,
                                                    trees: Trees) -> None:
    broker, adapter = loader_broker.broker, loader_broker.adapter
    adapter.disable(PLUGIN)
    probes = (Probe("mallory-refused", "connect", "mallory", "refused"),
              Probe("eve-refused", "connect", "eve", "refused"),
              Probe("forbidden", "publish", "alice", "refused", topic="forbidden/x"))
    release = PluginRelease(PLUGIN, trees.images.v2, True, {}, probes)
    documents = [Document("test", f"plugin.{PLUGIN}.yaml", render_plugin_release(release))]
    reconciler = Reconciler(adapter, lambda: documents, trees.pull,
                            lambda probe: run_probe(probe, broker.host, broker.port))
    outcome = reconciler.reconcile("test")
    assert outcome.phase is Phase.APPLIED, reconciler.state.last_error
    assert {a.kind for a in outcome.actions} >= {ActionKind.ENABLE_PLUGIN}
    assert all(a.change is not ChangeClass.BROKER_RESTART for a in outcome.actions)
    assert reconciler.state.ready
    again = reconciler.reconcile("resync")
    assert again.actions == ()

    # A release the loader refuses: rolled back, the last good version keeps running.
    bad = PluginRelease(PLUGIN, trees.images.broken, True, {}, probes)
    documents[:] = [Document("test", f"plugin.{PLUGIN}.yaml", render_plugin_release(bad))]
    outcome = reconciler.reconcile("test")
    assert outcome.phase is Phase.ROLLED_BACK
    assert "is the jar a HiveMQ extension?" in reconciler.state.last_error
    assert running(adapter) == HiveMQImages.digest(trees.images.v2)
    assert not accepted(broker, "eve")


def test_sidecar_hot_loads_releases_from_a_configmap(loader_broker: LoaderBroker, trees: Trees,
                                                    registry: object, tmp_path: Path) -> None:
    """The whole sidecar (file watch, pull by digest, plan, apply, probes) with adapter hivemq."""
    broker = loader_broker.broker
    v1, v2 = trees.images.v1, trees.images.v2
    probes_v1 = (Probe("mallory-refused", "connect", "mallory", "refused"),
                 Probe("forbidden", "publish", "alice", "refused", topic="forbidden/x"))
    probes_v2 = (Probe("eve-refused", "connect", "eve", "refused"),)

    def release(image: str, probes: tuple[Probe, ...]) -> dict[str, str]:
        return {f"plugin.{PLUGIN}.yaml": render_plugin_release(
            PluginRelease(PLUGIN, image, True, {}, probes))}

    cm = ConfigMapDir(tmp_path / "cm")
    cm.update(release(v1, probes_v1))
    sidecar = Sidecar(Settings(
        broker="hivemq", config_dirs=(cm.path,), source="files",
        adapter_options=adapter_options(broker), plugin_dir=loader_broker.plugin_dir,
        cache_dir=tmp_path / "cache", debounce=0.05, resync_interval=3600,
        http_address="127.0.0.1:0", registry_ca=registry.ca.cert,  # type: ignore[attr-defined]
        probe_host=broker.host, probe_port=broker.port))
    pid = broker.pid
    sidecar.start()
    try:
        def applied(image: str) -> bool:
            state = sidecar.state
            return state.ready and state.phase is Phase.APPLIED and \
                state.last_applied.plugins.get(PLUGIN) == HiveMQImages.digest(image)

        eventually(lambda: applied(v1), "v1 applied and probed", timeout=30)
        keeper = Client(broker.port, "bob")
        cm.update(release(v2, probes_v2))
        eventually(lambda: applied(v2), "v2 applied and probed", timeout=30)
        assert not accepted(broker, "eve")
        assert keeper.connected and broker.pid == pid
        assert all(a.change is ChangeClass.PLUGIN_RELOAD for a in sidecar.state.last_plan
                   if a.kind is not ActionKind.INSTALL_PLUGIN)
        keeper.close()
    finally:
        sidecar.stop()


@pytest.fixture(scope="module")
def restart_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveMQ]:
    broker = start_hivemq(tmp_path_factory.mktemp("hivemq-restart"))
    _track(broker)
    yield broker
    broker.stop()


def test_restart_path_stages_and_applies_on_restart(restart_broker: HiveMQ, trees: Trees,
                                                    tmp_path: Path) -> None:
    broker = restart_broker
    adapter = make_adapter(broker, tmp_path / "plugins", mode="restart")
    assert adapter.plugin_change_class() is ChangeClass.BROKER_RESTART
    supervisor = Supervisor(broker)
    try:
        v1 = install(adapter, trees, trees.images.v1)
        adapter.enable(PLUGIN, v1, {})
        seen = adapter.observe().plugins[PLUGIN]
        assert (seen.digest, seen.staged_digest, seen.enabled) == (None, v1, True)
        assert accepted(broker, "mallory"), "CE loaded an extension at runtime"

        adapter.restart()
        _track(broker)
        assert not accepted(broker, "mallory")
        seen = adapter.observe().plugins[PLUGIN]
        assert (seen.digest, seen.staged_digest) == (v1, None)

        # Upgrade: staged while v1 keeps running, v2's code after the restart.
        v2 = install(adapter, trees, trees.images.v2)
        adapter.enable(PLUGIN, v2, {})
        seen = adapter.observe().plugins[PLUGIN]
        assert (seen.digest, seen.staged_digest) == (v1, v2)
        adapter.restart()
        _track(broker)
        assert not accepted(broker, "eve")
        assert running(adapter) == v2

        # Disable: DISABLED marker, still running until the restart, then gone.
        adapter.disable(PLUGIN)
        seen = adapter.observe().plugins[PLUGIN]
        assert (seen.digest, seen.enabled) == (v2, False)
        adapter.restart()
        _track(broker)
        assert accepted(broker, "mallory") and accepted(broker, "eve")
        assert running(adapter) is None

        # Settings the extension refuses at start: HiveMQ disables it itself (DISABLED marker
        # of its own), which observe reports as not running and not enabled.
        adapter.enable(PLUGIN, v1, {"deny_user": "typo"})
        adapter.restart()
        _track(broker)
        seen = adapter.observe().plugins[PLUGIN]
        assert (seen.digest, seen.enabled, seen.staged_digest) == (None, False, None)
        assert accepted(broker, "mallory")
        assert supervisor.restarts == 4
    finally:
        supervisor.stop()
