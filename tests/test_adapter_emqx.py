"""EMQX 5 adapter against a live EMQX 5.8.9 node (the session's ``emqx`` fixture, built from
shared/brokers/emqx), with the emqx-erlang template built in three versions and real MQTT
clients (paho) checking what the node does.

EMQX's built-in authentication is on (a password database: tests/emqx_support.USERS), so the
plugin only refuses (mallory, forbidden/ publishes) and EMQX admits who has a password.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from emqx_support import (
    PLUGIN,
    Versions,
    accepted,
    adapter_options,
    build_versions,
    connect,
    enable_password_database,
    make_adapter,
    remove_plugins,
)

from plugforge.contract import Document
from sidecar.adapters.base import AdapterError, BrokerUnavailable, ChangeClass
from sidecar.adapters.emqx import EmqxAdapter, create, read_package
from sidecar.adapters.registry import create_adapter
from sidecar.probes import ProbeResult
from sidecar.reconcile import Reconciler
from sidecar.state import Phase
from testbed.emqx import Emqx
from testbed.procs import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    return build_versions(tmp_path_factory.mktemp("emqx-versions"))


@pytest.fixture(scope="module")
def node(emqx: Emqx) -> Emqx:
    enable_password_database(emqx)
    return emqx


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "plugins"
    path.mkdir()
    return path


@pytest.fixture
def adapter(node: Emqx, tmp_path: Path, plugin_dir: Path) -> Iterator[EmqxAdapter]:
    remove_plugins(node)
    yield make_adapter(node, tmp_path, plugin_dir)
    remove_plugins(node)


def running(node: Emqx) -> list[str]:
    return [f"{p['name']}-{p['rel_vsn']}" for p in node.api("GET", "/plugins")
            if all(s["status"] == "running" for s in p["running_status"])]


def test_options(node: Emqx, tmp_path: Path, plugin_dir: Path) -> None:
    options = adapter_options(node, tmp_path)
    made = create_adapter("emqx", options, plugin_dir)
    assert made.name == "emqx" and made.plugin_change_class() is ChangeClass.PLUGIN_RELOAD
    with pytest.raises(AdapterError, match="install_dir"):
        create({k: v for k, v in options.items() if k != "install_dir"}, plugin_dir)
    with pytest.raises(AdapterError, match="api_secret_file"):
        create({"api_key_file": "/x", "install_dir": "/x"}, plugin_dir)
    with pytest.raises(AdapterError, match="unknown option"):
        create({**options, "api_secret": "inline"}, plugin_dir)


def test_package_is_checked_before_emqx_sees_it(tmp_path: Path, versions: Versions) -> None:
    package = tmp_path / f"{PLUGIN}-0.1.0.tar.gz"
    with tarfile.open(package, "w:gz") as tar:
        data = json.dumps({"name": "other", "rel_vsn": "0.1.0", "rel_apps": [],
                           "description": "x"}).encode()
        info = tarfile.TarInfo(f"{PLUGIN}-0.1.0/release.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(AdapterError, match=r"expected deny_test-0\.1\.0"):
        read_package(package, PLUGIN)
    with pytest.raises(AdapterError, match="snake_case"):
        read_package(tmp_path / "deny-test-0.1.0.tar.gz", "deny-test")
    assert read_package(versions.v1.package, PLUGIN).name_vsn == f"{PLUGIN}-0.1.0"


def test_install_start_observe_and_converged(adapter: EmqxAdapter, node: Emqx,
                                             versions: Versions, plugin_dir: Path) -> None:
    v1 = versions.v1
    path = adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    assert (path / v1.package.name).is_file() and path.parent == plugin_dir / PLUGIN
    assert accepted(node, "mallory")  # before the plugin, the password database decides
    adapter.enable(PLUGIN, v1.digest, {})
    assert running(node) == [f"{PLUGIN}-0.1.0"]
    seen = adapter.observe().plugins[PLUGIN]
    assert (seen.digest, seen.enabled, seen.settings) == (v1.digest, True, {})
    assert not accepted(node, "mallory") and accepted(node, "alice")
    assert not accepted(node, "nobody")  # unknown: EMQX's password database refuses
    calls = adapter.api.calls
    adapter.enable(PLUGIN, v1.digest, {})  # converged: nothing but a look
    assert adapter.api.calls == calls + 1


def test_a_new_sidecar_adopts_the_running_plugin(adapter: EmqxAdapter, node: Emqx,
                                                 versions: Versions, tmp_path: Path) -> None:
    """A sidecar whose volume is gone (pod recreated) finds the plugin by content and leaves
    it running: no stop/delete/start, so no moment without the plugin."""
    v1 = versions.v1
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    fresh = make_adapter(node, tmp_path / "fresh-secret", fresh_dir)
    fresh.install_plugin(PLUGIN, v1.digest, v1.tree)
    assert fresh.observe().plugins[PLUGIN].digest == v1.digest
    fresh.enable(PLUGIN, v1.digest, {})
    assert [c for c in fresh.api.log if not c.startswith("GET")] == []
    assert running(node) == [f"{PLUGIN}-0.1.0"]


def test_upgrade_keeps_clients_and_the_node_process(adapter: EmqxAdapter, node: Emqx,
                                                    versions: Versions) -> None:
    v1, v2 = versions.v1, versions.v2
    for v in (v1, v2):
        adapter.install_plugin(PLUGIN, v.digest, v.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    pid = node.os_pid()
    clients = [connect(node, user) for user in ("alice", "early", "eve")]
    try:
        assert all(c.accepted for c in clients)
        adapter.enable(PLUGIN, v2.digest, {})
        assert running(node) == [f"{PLUGIN}-0.2.0"]
        assert adapter.observe().plugins[PLUGIN].digest == v2.digest
        # v2's changed code runs: eve is refused now (the old code did not refuse her).
        assert not accepted(node, "eve") and not accepted(node, "mallory")
        assert accepted(node, "alice")
        assert node.os_pid() == pid
        for c in clients:  # eve stays: a plugin refuses at CONNECT, not later
            assert c.connected and not c.disconnected, c.username
    finally:
        for c in clients:
            c.close()


def test_a_version_that_cannot_start_is_rolled_back(adapter: EmqxAdapter, node: Emqx,
                                                    versions: Versions) -> None:
    v2, broken = versions.v2, versions.broken
    for v in (v2, broken):
        adapter.install_plugin(PLUGIN, v.digest, v.tree)
    adapter.enable(PLUGIN, v2.digest, {})
    with pytest.raises(AdapterError, match="did not start"):
        adapter.enable(PLUGIN, broken.digest, {})
    assert running(node) == [f"{PLUGIN}-0.2.0"]
    assert [p["rel_vsn"] for p in node.api("GET", "/plugins")] == ["0.2.0"]
    assert adapter.observe().plugins[PLUGIN].digest == v2.digest
    assert not accepted(node, "eve") and accepted(node, "alice")


def test_uninstall(adapter: EmqxAdapter, node: Emqx, versions: Versions) -> None:
    v1 = versions.v1
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    adapter.disable(PLUGIN)
    assert node.api("GET", "/plugins") == []
    assert sorted(p.name for p in node.plugins_dir.iterdir()) == []  # EMQX deleted its files
    seen = adapter.observe().plugins[PLUGIN]
    assert (seen.enabled, seen.digest) == (False, None)
    assert accepted(node, "mallory")  # only the plugin refused her


def test_plugin_settings_without_a_schema(adapter: EmqxAdapter, node: Emqx,
                                          versions: Versions) -> None:
    """EMQX 5.8.9 stores a schema-less plugin's config as given; the template reads it."""
    v1 = versions.v1
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.enable(PLUGIN, v1.digest, {"deny_users": "eve"})
    assert adapter.observe().plugins[PLUGIN].settings == {"deny_users": "eve"}
    assert node.api("GET", f"/plugins/{PLUGIN}-0.1.0/config") == {"deny_users": "eve"}
    assert not accepted(node, "eve") and accepted(node, "mallory")
    adapter.enable(PLUGIN, v1.digest, {})  # back to the plugin's own default
    assert not accepted(node, "mallory") and accepted(node, "eve")


def test_upload_needs_emqx_ctl_plugins_allow(node: Emqx, versions: Versions) -> None:
    """Why the adapter places packages in the plugins dir instead of uploading them: EMQX
    5.8.9 refuses an upload until `emqx ctl plugins allow NAME-VSN` ran on the node."""
    remove_plugins(node)
    package = versions.v1.package
    body, content_type = urllib3.encode_multipart_formdata(
        {"plugin": (package.name, package.read_bytes(), "application/gzip")})
    auth = urllib3.make_headers(basic_auth=f"{node.api_key}:{node.api_secret}")

    def upload() -> urllib3.BaseHTTPResponse:
        return urllib3.request("POST", f"{node.api_url}/api/v5/plugins/install", body=body,
                               headers={**auth, "Content-Type": content_type}, retries=False)

    refused = upload()
    assert refused.status == 403, refused.data
    assert f"emqx ctl plugins allow {PLUGIN}-0.1.0" in refused.data.decode()
    node.ctl("plugins", "allow", f"{PLUGIN}-0.1.0")
    assert upload().status == 204
    remove_plugins(node)


def test_live_config_update_and_read_back(adapter: EmqxAdapter, node: Emqx) -> None:
    before = node.api("GET", "/configs/global_zone")["mqtt"]["max_inflight"]
    pid = node.os_pid()
    desired = {"mqtt.max_inflight": "64", "sysmon.vm.long_schedule": "500ms"}
    assert adapter.validate_config(desired) == []
    try:
        adapter.apply_config(desired)
        assert node.api("GET", "/configs/global_zone")["mqtt"]["max_inflight"] == 64
        assert node.api("GET", "/configs/sysmon")["vm"]["long_schedule"] == "500ms"
        seen = adapter.observe().config
        assert seen["mqtt.max_inflight"] == "64" and seen["sysmon.vm.long_schedule"] == "500ms"
        assert node.os_pid() == pid
    finally:
        adapter.apply_config({"mqtt.max_inflight": None, "sysmon.vm.long_schedule": None})
    assert node.api("GET", "/configs/global_zone")["mqtt"]["max_inflight"] == before


def test_unknown_key_and_bad_value_carry_emqx_message(adapter: EmqxAdapter, node: Emqx) -> None:
    zone = node.api("GET", "/configs/global_zone")
    with pytest.raises(AdapterError) as unknown:
        adapter.apply_config({"mqtt.no_such_key": "1"})
    assert "HTTP 400" in str(unknown.value) and "no_such_key" in str(unknown.value)
    with pytest.raises(AdapterError) as bad:
        adapter.apply_config({"mqtt.max_inflight": "lots"})
    assert "HTTP 400" in str(bad.value) and "max_inflight" in str(bad.value)
    assert node.api("GET", "/configs/global_zone") == zone


def test_config_validation(adapter: EmqxAdapter) -> None:
    problems = adapter.validate_config({"node.cookie": "x", "listeners.tcp.default.bind": "1",
                                        "mqtt.max_inflight": "8"})
    assert [p.key for p in problems] == ["listeners.tcp.default.bind", "node.cookie"]
    assert "not managed" in problems[0].message
    assert "restart the pod" in problems[1].message
    assert adapter.classify("node.cookie") is ChangeClass.BROKER_RESTART


def test_bad_credentials_give_a_clear_error_without_secrets(
        node: Emqx, tmp_path: Path, plugin_dir: Path, versions: Versions) -> None:
    options = adapter_options(node, tmp_path)
    Path(options["api_secret_file"]).write_text("wrong-secret-93af\n")
    adapter = create(options, plugin_dir)
    seen = adapter.observe()
    assert not seen.reachable and "HTTP 401" in seen.detail, seen.detail
    assert "wrong-secret-93af" not in seen.detail and node.api_key not in seen.detail
    adapter.install_plugin(PLUGIN, versions.v1.digest, versions.v1.tree)
    with pytest.raises(AdapterError) as refused:
        adapter.enable(PLUGIN, versions.v1.digest, {})
    assert "wrong-secret-93af" not in str(refused.value)
    assert not adapter.health()


def test_connection_refused_is_broker_unavailable(tmp_path: Path, plugin_dir: Path,
                                                  versions: Versions) -> None:
    (tmp_path / "k").write_text("k\n")
    adapter = create({"api_url": f"http://127.0.0.1:{free_port()}", "install_dir": str(tmp_path),
                      "api_key_file": str(tmp_path / "k"), "api_secret_file": str(tmp_path / "k")},
                     plugin_dir)
    seen = adapter.observe()
    assert not seen.reachable and "did not answer" in seen.detail
    adapter.install_plugin(PLUGIN, versions.v1.digest, versions.v1.tree)
    with pytest.raises(BrokerUnavailable):
        adapter.enable(PLUGIN, versions.v1.digest, {})


def test_reconciler_converges_then_resync_changes_nothing(
        adapter: EmqxAdapter, node: Emqx, versions: Versions) -> None:
    v1 = versions.v1
    documents = [
        Document("test", "broker.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                 "kind: BrokerConfig\nbroker: emqx\nconfig:\n  mqtt.max_inflight: '48'\n"),
        Document("test", f"plugin.{PLUGIN}.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                 f"kind: PluginRelease\nname: {PLUGIN}\n"
                 f"image: registry.test:5000/plugins/deny@{v1.digest}\n"),
    ]
    reconciler = Reconciler(adapter, lambda: documents, lambda _image: v1.tree,
                            lambda p: ProbeResult(p.name, True, "accepted", "not run"))
    try:
        assert reconciler.reconcile("start").phase is Phase.APPLIED, reconciler.state.last_error
        assert running(node) == [f"{PLUGIN}-0.1.0"]
        assert node.api("GET", "/configs/global_zone")["mqtt"]["max_inflight"] == 48
        calls = list(adapter.api.log)
        assert reconciler.reconcile("resync").phase is Phase.APPLIED
        assert [c for c in adapter.api.log[len(calls):] if not c.startswith("GET")] == []
    finally:
        adapter.apply_config({"mqtt.max_inflight": None})
