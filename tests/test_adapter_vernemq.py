"""VerneMQ adapter against a live VerneMQ 2.0.1 node (``testbed.vernemq``, the ``vernemq``
fixture), set up as a user would: ``allow_anonymous = off``, the stock vmq_passwd with alice,
mallory and eve in its password file, vmq_acl with ``topic #``.

The plugin is the vernemq-erlang template built with the real CLI (``vernemq_support``). Its
policy holds on MQTT 3.1.1 and 5 with real passwords because the adapter puts it first in the
hook chain (see ``VerneMQAdapter._first_in_chain``). The adapter is wired as the manifest
(``manifests/brokers/vernemq``) wires it, through the HTTP API with an API key, plus the node's
``vmq-admin`` for config keys and clean-up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from vernemq_support import (
    PLUGIN,
    V5,
    V311,
    Versions,
    accepted,
    app_plugins,
    build_versions,
    connect,
    plugin_paths,
    publish_outcome,
    reset,
)

from plugforge.contract import Document, PluginRelease, render_plugin_release
from sidecar.adapters.base import AdapterError, ChangeClass
from sidecar.adapters.registry import create_adapter
from sidecar.adapters.vernemq import VerneMQAdapter, create
from sidecar.adapters.vernemq_admin import CliAdmin, parse_json, parse_table
from sidecar.adapters.vernemq_config import LIVE
from sidecar.app import Sidecar
from sidecar.probes import ProbeResult
from sidecar.reconcile import Reconciler
from sidecar.settings import Settings
from sidecar.state import Phase
from testbed.configmap_dir import ConfigMapDir
from testbed.procs import free_port
from testbed.vernemq import VerneMQ

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Versions:
    return build_versions(tmp_path_factory.mktemp("vernemq-versions"))


@pytest.fixture
def node(vernemq: VerneMQ) -> Iterator[VerneMQ]:
    reset(vernemq)
    yield vernemq
    reset(vernemq)


def options(node: VerneMQ, tmp_path: Path, **extra: str) -> dict[str, str]:
    key = tmp_path / "api-key"
    key.write_text(node.api_key + "\n")
    return {"api_url": node.api_url, "api_key_file": str(key),
            "vmq_admin": str(node.vmq_admin), **extra}


@pytest.fixture
def adapter(node: VerneMQ, tmp_path: Path) -> VerneMQAdapter:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    return create(options(node, tmp_path), plugins)


# --- the two front ends on the live node -------------------------------------------------------

def test_cli_table_and_http_json_read_the_same_plugins(node: VerneMQ) -> None:
    table = parse_table(node.admin("plugin", "show"))
    import urllib3
    body = urllib3.request("GET", f"{node.api_url}/api/v1/plugin/show",
                           headers=urllib3.make_headers(basic_auth=f"{node.api_key}:")).data
    assert [r["Plugin"] for r in table] == ["vmq_passwd", "vmq_acl"] or \
        [r["Plugin"] for r in table] == ["vmq_acl", "vmq_passwd"]
    as_json = parse_json(body.decode()).rows
    assert [{k: v.strip() for k, v in r.items()} for r in as_json] == [dict(r) for r in table]


def test_failures_come_with_exit_code_zero_and_are_errors(node: VerneMQ) -> None:
    reply = CliAdmin(str(node.vmq_admin)).run(["plugin", "enable"],
                                              {"--name": "no_such_plugin", "--path": "/"})
    assert reply.alerts and "plugin_not_found" in reply.message()


def test_registry_and_options(node: VerneMQ, tmp_path: Path) -> None:
    adapter = create_adapter("vernemq", options(node, tmp_path), tmp_path)
    assert adapter.name == "vernemq"
    assert adapter.plugin_change_class() is ChangeClass.PLUGIN_RELOAD
    with pytest.raises(AdapterError, match="api_key_file"):
        create({"api_url": node.api_url}, tmp_path)
    with pytest.raises(AdapterError, match="unknown option"):
        create({"vmq_admin": "vmq-admin", "api_secret": "x"}, tmp_path)


def test_observe_fresh_node(adapter: VerneMQAdapter, node: VerneMQ) -> None:
    seen = adapter.observe()
    assert seen.reachable, seen.detail
    assert seen.plugins == {}  # vmq_acl / vmq_passwd are the broker's, not ours
    assert seen.instance == node.nodename
    assert adapter.health()


def test_bad_api_key_gives_a_clear_error_without_the_key(node: VerneMQ, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("wrongkey-7f3a9c\n")
    adapter = create({"api_url": node.api_url, "api_key_file": str(wrong), "vmq_admin": "none"},
                     tmp_path)
    seen = adapter.observe()
    assert not seen.reachable and "HTTP 401" in seen.detail and str(wrong) in seen.detail
    assert "wrongkey-7f3a9c" not in seen.detail


def test_connection_refused_is_broker_unavailable(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("k\n")
    adapter = create({"api_url": f"http://127.0.0.1:{free_port()}", "api_key_file": str(key),
                      "vmq_admin": "none"}, tmp_path)
    seen = adapter.observe()
    assert not seen.reachable and "did not answer" in seen.detail
    assert not adapter.health()


# --- the policy: the plugin is asked first ------------------------------------------------------

def test_without_a_plugin_the_stock_plugins_decide(node: VerneMQ) -> None:
    assert accepted(node, "alice") and accepted(node, "mallory")
    assert not accepted(node, "alice", "wrong") and not accepted(node, "nosuchuser", "x")


@pytest.mark.parametrize("protocol", [V311, V5], ids=["mqtt3.1.1", "mqtt5"])
def test_policy_holds_with_passwords(adapter: VerneMQAdapter, node: VerneMQ,
                                     versions: Versions,
                                     protocol: MQTTProtocolVersion) -> None:
    v1 = versions.v1
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    assert app_plugins(node)[0] == PLUGIN  # asked before vmq_passwd and vmq_acl
    assert adapter.observe().plugins[PLUGIN].enabled
    mallory = connect(node, "mallory", protocol=protocol)  # her right password
    mallory.close()
    assert not mallory.accepted
    # 3.1.1: CONNACK return code 4, bad user name or password (paho reports it as the MQTT 5
    # code 134); 5: CONNACK 135, not authorized.
    assert mallory.connect_rc is not None
    assert mallory.connect_rc.value == (134 if protocol == V311 else 135)
    assert not accepted(node, "nosuchuser", "x", protocol=protocol)
    assert not accepted(node, "alice", "", protocol=protocol)  # no password: nobody admits
    assert not accepted(node, "alice", "wrong", protocol=protocol)
    assert accepted(node, "alice", protocol=protocol)
    # A refused QoS 1 publish: 3.1.1 has no code for it, the broker closes the connection;
    # 5 answers PUBACK 135.
    refused = publish_outcome(node, "alice", "forbidden/x", protocol=protocol)
    assert refused == ("closed" if protocol == V311 else "puback 135")
    assert publish_outcome(node, "alice", "ok/x", protocol=protocol) == "puback 0"


def test_http_only_wiring_of_the_manifest_gives_the_same_result(
        node: VerneMQ, versions: Versions, tmp_path: Path) -> None:
    # manifests/brokers/vernemq: HTTP API + key, vmq_admin=none.
    plugins = tmp_path / "plugins"
    adapter = create(options(node, tmp_path, vmq_admin="none"), plugins)
    adapter.install_plugin(PLUGIN, versions.v1.digest, versions.v1.tree)
    adapter.enable(PLUGIN, versions.v1.digest, {})
    assert app_plugins(node)[0] == PLUGIN
    assert not accepted(node, "mallory") and accepted(node, "alice")
    assert not accepted(node, "nosuchuser", "x")
    assert publish_outcome(node, "alice", "forbidden/x") == "puback 135"


def test_a_stock_plugin_re_enabled_by_hand_is_put_behind_again(
        adapter: VerneMQAdapter, node: VerneMQ, versions: Versions) -> None:
    v1 = versions.v1
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    node.admin("plugin", "disable", "--name=vmq_passwd")
    node.admin("plugin", "enable", "--name=vmq_passwd")
    node.admin("plugin", "disable", "--name=vmq_passwd")
    node.admin("plugin", "enable", "--name=vmq_passwd")
    assert app_plugins(node)[0] == PLUGIN  # vmq_passwd now last, behind us: still in effect
    node.admin("plugin", "disable", f"--name={PLUGIN}")
    node.admin("plugin", "enable", f"--name={PLUGIN}",
               f"--path={adapter.settings.broker_plugin_dir / PLUGIN / v1.digest[7:]}")
    assert app_plugins(node)[-1] == PLUGIN and accepted(node, "mallory")  # behind: open
    assert adapter.observe().plugins[PLUGIN].enabled is False  # reported as not in effect
    adapter.enable(PLUGIN, v1.digest, {})
    assert app_plugins(node)[0] == PLUGIN and not accepted(node, "mallory")


# --- upgrade, failures, the code path ---------------------------------------------------------

def test_upgrade_keeps_the_node_and_clients_and_one_version_on_the_code_path(
        adapter: VerneMQAdapter, node: VerneMQ, versions: Versions) -> None:
    v1, v2 = versions.v1, versions.v2
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.install_plugin(PLUGIN, v2.digest, v2.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    pid = node.pid
    keeper = connect(node, "alice")
    keeper.subscribe("ok/#")
    try:
        assert accepted(node, "eve")
        adapter.enable(PLUGIN, v2.digest, {})  # changed code: denies eve too
        assert not accepted(node, "eve") and accepted(node, "alice")
        assert adapter.observe().plugins[PLUGIN].digest == v2.digest
        assert node.pid == pid
        assert keeper.connected and not keeper.disconnected
        assert plugin_paths(node) == [f"{adapter.settings.plugin_dir}/{PLUGIN}/"
                                      f"{v2.digest[7:]}/ebin"]
    finally:
        keeper.close()
    adapter.disable(PLUGIN)
    assert plugin_paths(node) == [] and accepted(node, "mallory")


def test_app_listing_a_missing_module_is_refused_before_any_call(
        adapter: VerneMQAdapter, versions: Versions) -> None:
    bad = versions.missing_module
    before = adapter.admin_calls
    with pytest.raises(AdapterError, match=r"deny_test_gone without a \.beam"):
        adapter.install_plugin(PLUGIN, bad.digest, bad.tree)
    assert adapter.admin_calls == before


def test_failed_enable_leaves_no_half_loaded_app(adapter: VerneMQAdapter, node: VerneMQ,
                                                 versions: Versions) -> None:
    v1, bad = versions.v1, versions.bad_hook
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.install_plugin(PLUGIN, bad.digest, bad.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    with pytest.raises(AdapterError, match="unknown_module"):
        adapter.enable(PLUGIN, bad.digest, {})
    # Restored and in effect (by behaviour), first in the chain, one version on the path.
    assert adapter.observe().plugins[PLUGIN].digest == v1.digest
    assert app_plugins(node)[0] == PLUGIN
    assert not accepted(node, "mallory") and accepted(node, "alice") and accepted(node, "eve")
    assert plugin_paths(node) == [f"{adapter.settings.plugin_dir}/{PLUGIN}/{v1.digest[7:]}/ebin"]
    # And the failure repeats as itself (no "already loaded" leftovers), then v2 loads.
    with pytest.raises(AdapterError, match="unknown_module"):
        adapter.enable(PLUGIN, bad.digest, {})
    adapter.install_plugin(PLUGIN, versions.v2.digest, versions.v2.tree)
    adapter.enable(PLUGIN, versions.v2.digest, {})
    assert not accepted(node, "eve")


def test_mismatched_app_name_is_refused_before_any_call(
        adapter: VerneMQAdapter, versions: Versions, tmp_path: Path) -> None:
    ebin = adapter.settings.plugin_dir / "other_name" / versions.v1.digest[7:] / "ebin"
    ebin.mkdir(parents=True)
    for f in (versions.v1.artifact_dir / "ebin").iterdir():
        (ebin / f.name).write_bytes(f.read_bytes())
    before = adapter.admin_calls
    with pytest.raises(AdapterError, match="crashes its plugin manager"):
        adapter.enable("other_name", versions.v1.digest, {})
    assert adapter.admin_calls == before


def test_settings_are_application_env_set_live(adapter: VerneMQAdapter, node: VerneMQ,
                                               versions: Versions, tmp_path: Path) -> None:
    v1 = versions.v1
    adapter.install_plugin(PLUGIN, v1.digest, v1.tree)
    adapter.enable(PLUGIN, v1.digest, {})
    pid = node.pid
    assert accepted(node, "eve")
    adapter.enable(PLUGIN, v1.digest, {"deny_users": "mallory,eve"})
    assert not accepted(node, "eve") and not accepted(node, "mallory") and accepted(node, "alice")
    assert adapter.observe().plugins[PLUGIN].settings == {"deny_users": "mallory,eve"}
    assert node.pid == pid
    # Refused before any call: a key the .app does not declare, a value with a quote, and
    # settings without the node's tooling (the manifest's HTTP-only wiring).
    before = adapter.admin_calls
    with pytest.raises(AdapterError, match="not application env the plugin declares"):
        adapter.enable(PLUGIN, v1.digest, {"allow_users": "x"})
    with pytest.raises(AdapterError, match="without quotes"):
        adapter.enable(PLUGIN, v1.digest, {"deny_users": 'a"b'})
    assert adapter.admin_calls == before
    http_only = create(options(node, tmp_path, vmq_admin="none"), adapter.settings.plugin_dir)
    with pytest.raises(AdapterError, match="vmq_admin"):
        http_only.enable(PLUGIN, v1.digest, {"deny_users": "eve"})


# --- config -------------------------------------------------------------------------------------

def test_every_live_key_is_one_the_node_takes(node: VerneMQ) -> None:
    cli = CliAdmin(str(node.vmq_admin))
    shown = cli.run(["show", *LIVE]).rows[0]  # one key unknown: "Invalid config keys"
    for key in LIVE:  # one per call: several in one `set` crash 2.0.1's output formatting
        value = shown[key].strip()
        out = cli.run_raw(["set"], {key: value})
        assert f'{key} set to "{value}"' in out, f"{key}={value}: {out}"


def test_config_set_live_read_back_and_restore(adapter: VerneMQAdapter, node: VerneMQ) -> None:
    assert adapter.validate_config({"max_inflight_messages": "40",
                                    "max_message_size": "4096"}) == []
    for gone in ("allow_multiple_sessions", "message_size_limit"):
        problems = adapter.validate_config({gone: "1"})
        assert problems and "restart the pod" in problems[0].message
    pid = node.pid
    adapter.apply_config({"max_inflight_messages": "40", "max_message_size": "4096"})
    assert adapter.observe().config == {"max_inflight_messages": "40",
                                        "max_message_size": "4096"}
    client = connect(node, "alice")
    try:
        client.c.publish("ok/big", b"x" * 5000, qos=1)
        client.wait_disconnected()  # over max_message_size: the node closes the connection
    finally:
        client.close()
    adapter.apply_config({"max_inflight_messages": None, "max_message_size": None})
    shown = CliAdmin(str(node.vmq_admin)).run(["show", "max_inflight_messages",
                                               "max_message_size"]).rows[0]
    assert (shown["max_inflight_messages"].strip(), shown["max_message_size"].strip()) == \
        ("20", "0")  # the node's own values again
    assert node.pid == pid


def test_config_bad_value_carries_the_brokers_message(adapter: VerneMQAdapter) -> None:
    with pytest.raises(AdapterError) as refused:
        adapter.apply_config({"allow_anonymous": "maybe"})
    assert "acceptable values are: on, off" in str(refused.value)


# --- through the reconciler and the sidecar -----------------------------------------------------

def release_doc(image_digest: str) -> Document:
    return Document("test", f"plugin.{PLUGIN}.yaml", render_plugin_release(
        PluginRelease(PLUGIN, f"registry.test:5000/plugins/deny@{image_digest}", True)))


def test_reconciler_converges_and_recovers_after_node_restart(
        adapter: VerneMQAdapter, node: VerneMQ, versions: Versions) -> None:
    v1 = versions.v1
    documents = [release_doc(v1.digest)]
    reconciler = Reconciler(adapter, lambda: documents, lambda _image: v1.tree,
                            lambda p: ProbeResult(p.name, True, "accepted", "not run"))
    assert reconciler.reconcile("start").phase is Phase.APPLIED, reconciler.state.last_error
    before = adapter.admin_calls
    assert reconciler.reconcile("resync").phase is Phase.APPLIED
    assert adapter.admin_calls - before <= 3  # observe only: plugin show, cluster show
    node.stop_node()
    try:
        assert reconciler.reconcile("retry").phase is Phase.UNAVAILABLE
    finally:
        node.start_node()
    assert PLUGIN not in app_plugins(node)  # runtime-enabled plugins are not persisted
    assert reconciler.reconcile("resync").phase is Phase.APPLIED, reconciler.state.last_error
    assert app_plugins(node)[0] == PLUGIN and not accepted(node, "mallory")


def test_settings_the_plugin_cannot_take_are_rejected_not_retried(
        adapter: VerneMQAdapter, node: VerneMQ, versions: Versions) -> None:
    v1 = versions.v1
    release = PluginRelease(PLUGIN, f"registry.test:5000/plugins/deny@{v1.digest}", True)
    documents = [release_doc(v1.digest)]
    reconciler = Reconciler(adapter, lambda: documents, lambda _image: v1.tree,
                            lambda p: ProbeResult(p.name, True, "accepted", "not run"))
    assert reconciler.reconcile("start").phase is Phase.APPLIED, reconciler.state.last_error
    documents[0] = Document("test", f"plugin.{PLUGIN}.yaml", render_plugin_release(
        PluginRelease(release.name, release.image, True, {"allow_users": "alice"})))
    outcome = reconciler.reconcile("edit")
    assert outcome.phase is Phase.REJECTED and outcome.retry_after is None
    assert "allow_users are not application env" in reconciler.state.last_error
    assert adapter.observe().plugins[PLUGIN].digest == v1.digest  # the last good state
    assert not accepted(node, "mallory") and accepted(node, "eve")


def applied(sidecar: Sidecar) -> bool:
    return sidecar.state.phase is Phase.APPLIED and sidecar.state.ready


def test_retry_timers_of_a_failed_state_stop_when_a_good_one_applies(
        node: VerneMQ, versions: Versions, tmp_path: Path) -> None:
    trees = {versions.missing_module.digest: versions.missing_module.tree,
             versions.v1.digest: versions.v1.tree}
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({f"plugin.{PLUGIN}.yaml": render_plugin_release(PluginRelease(
        PLUGIN, f"registry.test:5000/p@{versions.missing_module.digest}", True))})
    sidecar = Sidecar(Settings(
        broker="vernemq", config_dirs=(cm.path,), source="files",
        adapter_options=options(node, tmp_path), plugin_dir=tmp_path / "plugins",
        cache_dir=tmp_path / "cache", debounce=0.05, resync_interval=3600, http_address=""),
        pull_image=lambda image: trees[image.rpartition("@")[2]])
    sidecar.start()
    try:
        deadline = time.monotonic() + 30
        while sidecar.loops < 3:  # the failing state, retried after 1 s and 2 s
            assert time.monotonic() < deadline, sidecar.state.last_error
            time.sleep(0.1)
        assert sidecar.state.phase is Phase.FAILED, sidecar.state.phase
        good = PluginRelease(PLUGIN, f"registry.test:5000/p@{versions.v1.digest}", True)
        cm.update({f"plugin.{PLUGIN}.yaml": render_plugin_release(good)})
        while not applied(sidecar):
            assert time.monotonic() < deadline, sidecar.state.last_error
            time.sleep(0.1)
        loops = sidecar.loops
        threading.Event().wait(5.0)  # the failing state's next retry was due 4 s after its last
        assert sidecar.loops == loops, "a retry of the failed state ran after the good one"
        assert not accepted(node, "mallory")
    finally:
        sidecar.stop()
