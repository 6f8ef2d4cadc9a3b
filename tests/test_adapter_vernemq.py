"""VerneMQ adapter against a replayed VerneMQ 2.0.1 node.

VerneMQ cannot run on these machines (no package reachable from the allowed registries). These
tests run the adapter against responses RECORDED from a real VerneMQ 2.0.1 node
(``../shared/fixtures/vernemq/``, see its README and COMMANDS.log), served by our own test
infrastructure: a real HTTP server on 127.0.0.1 (``testbed.replay_http`` +
``testbed.vernemq_replay``) and a real executable ``vmq-admin`` on disk that prints the recorded
stdout/stderr and exits with the recorded code. A small model of the node picks which recording
applies (plugin loaded or not, ``allow_anonymous`` on or off, plugin manager crashed).

Proven here: parsing of both front ends (JSON from the HTTP API, ANSI tables from the CLI),
error handling (failures with exit code 0 / HTTP 200, HTTP 400/401, refused values, unknown
keys, a crashed plugin manager, connection refused), and the call sequences (enable, upgrade =
disable + enable, rollback to the previous path, nothing sent for a mismatched app name).
NOT proven: live hot-loading in a running VerneMQ, that an upgrade really runs the new beams
(see the adapter's docstring for why it should), and MQTT behaviour after a change.

Not recorded, so these tests rely on an inferred answer (``testbed.vernemq_replay.INFERRED``):
the HTTP API's answer to a *successful* ``plugin enable``/``plugin disable`` (assumed to be the
recorded text-JSON shape with "Done", as the CLI printed) and the CLI's text when the node does
not answer (relx's "not responding to pings"); tests that depend on them say so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugforge.contract import Document
from sidecar.adapters.base import AdapterError, BrokerUnavailable, ChangeClass
from sidecar.adapters.registry import create_adapter
from sidecar.adapters.vernemq import STATE_FILE, VerneMQAdapter, create
from sidecar.adapters.vernemq_admin import CliAdmin, parse_json, parse_table
from sidecar.probes import ProbeResult
from sidecar.reconcile import Reconciler
from sidecar.state import Phase
from testbed.procs import free_port
from testbed.replay_http import ReplayServer
from testbed.vernemq_replay import FIXTURES, RECORDED_KEY, VerneMQReplay, install_vmq_admin

NAME = "deny_mallory"  # the plugin the recordings loaded: its `plugin show` rows are recorded


def digest(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


A, B = digest("version A"), digest("version B")


def image_tree(root: Path, label: str, app: str = NAME) -> Path:
    """An extracted plugin image as the vernemq-erlang template produces it."""
    ebin = root / label / "plugin" / NAME / "ebin"
    ebin.mkdir(parents=True)
    (ebin / f"{app}.app").write_text(
        f'%% built by a test\n{{application, {app}, [{{vsn, "{label}"}}, {{modules, '
        f"[{NAME}]}}, {{env, [{{vmq_plugin_hooks, []}}]}}]}}.\n")
    (ebin / f"{NAME}.beam").write_bytes(f"beam of {label}".encode())
    return root / label


@pytest.fixture
def node(tmp_path: Path) -> VerneMQReplay:
    return VerneMQReplay(tmp_path / "node")


@pytest.fixture
def api(node: VerneMQReplay) -> Iterator[ReplayServer]:
    with ReplayServer(node.http) as server:
        yield server


@pytest.fixture
def vmq_admin(tmp_path: Path, node: VerneMQReplay) -> Path:
    return install_vmq_admin(tmp_path / "bin", node.state_dir)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret" / "api-key"
    path.parent.mkdir()
    path.write_text(RECORDED_KEY + "\n")
    return path


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "plugins"
    path.mkdir()
    return path


@pytest.fixture
def http_adapter(api: ReplayServer, key_file: Path, vmq_admin: Path,
                 plugin_dir: Path) -> VerneMQAdapter:
    return create({"api_url": api.url, "api_key_file": str(key_file),
                   "vmq_admin": str(vmq_admin)}, plugin_dir)


@pytest.fixture
def cli_adapter(vmq_admin: Path, plugin_dir: Path) -> VerneMQAdapter:
    return create({"vmq_admin": str(vmq_admin)}, plugin_dir)


def commands(api: ReplayServer) -> list[str]:
    return [t.removeprefix("GET /api/v1/") for t in api.targets()]


# --- parsing -------------------------------------------------------------------------------

def test_ansi_table_and_json_parse_to_the_same_plugins() -> None:
    table = parse_table((FIXTURES / "plugin_show_after_enable.stdout").read_text())
    as_json = parse_json((FIXTURES / "http_plugin_show_with_deny_mallory.body").read_text()).rows
    assert "\x1b" in (FIXTURES / "plugin_show_after_enable.stdout").read_text()
    assert [r["Plugin"] for r in table] == ["vmq_acl", "vmq_passwd", NAME]
    assert [{k: v.strip() for k, v in r.items()} for r in as_json] == [dict(r) for r in table]
    assert table[2]["Hook(s)"].splitlines() == ["auth_on_register", "auth_on_publish",
                                                "auth_on_subscribe"]


def test_recorded_alert_json_and_exit_zero_failure_text_are_errors() -> None:
    reply = parse_json((FIXTURES / "plugin_enable_nonexistent_json.stdout").read_text())
    assert reply.alerts == ("Can't enable plugin: no_such_plugin due to plugin_not_found",)
    assert reply.texts == ()


def test_registry_creates_the_vernemq_adapter(vmq_admin: Path, plugin_dir: Path) -> None:
    adapter = create_adapter("vernemq", {"vmq_admin": str(vmq_admin)}, plugin_dir)
    assert adapter.name == "vernemq"
    assert adapter.plugin_change_class() is ChangeClass.PLUGIN_RELOAD


def test_options_are_checked(plugin_dir: Path, key_file: Path) -> None:
    with pytest.raises(AdapterError, match="api_key_file"):
        create({"api_url": "http://127.0.0.1:8888"}, plugin_dir)
    with pytest.raises(AdapterError, match="unknown option"):
        create({"vmq_admin": "vmq-admin", "api_secret": "x"}, plugin_dir)
    with pytest.raises(AdapterError, match="api_url"):
        create({"api_url": "127.0.0.1:8888", "api_key_file": str(key_file)}, plugin_dir)


# --- observe -------------------------------------------------------------------------------

def test_observe_fresh_node_over_http(http_adapter: VerneMQAdapter, api: ReplayServer) -> None:
    seen = http_adapter.observe()
    assert seen.reachable, seen.detail
    assert seen.plugins == {}  # vmq_acl / vmq_passwd are the broker's, not ours
    assert seen.instance == "VerneMQ@127.0.0.1"
    assert commands(api) == ["plugin/show", "cluster/show"]
    assert http_adapter.health()


def test_observe_reports_config_read_back_through_the_cli(
        cli_adapter: VerneMQAdapter) -> None:
    assert cli_adapter.validate_config({"allow_anonymous": "off"}) == []
    seen = cli_adapter.observe()
    assert seen.reachable, seen.detail
    assert seen.config == {"allow_anonymous": "off"}  # recorded `show allow_anonymous` table


def test_crashed_plugin_manager_is_reported_unreachable(cli_adapter: VerneMQAdapter,
                                                        node: VerneMQReplay) -> None:
    with node.state() as state:
        state["crashed"] = True  # recorded: `plugin show` and `--internal` print nothing
    seen = cli_adapter.observe()
    assert not seen.reachable
    assert "crashed" in seen.detail and "restart the VerneMQ pod" in seen.detail


# --- plugins -------------------------------------------------------------------------------

def test_install_enable_observe_over_http(http_adapter: VerneMQAdapter, api: ReplayServer,
                                          node: VerneMQReplay, plugin_dir: Path,
                                          tmp_path: Path) -> None:
    # Relies on the inferred HTTP answer to a successful enable (see module docstring).
    path = http_adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    assert path == plugin_dir / NAME / A[7:]
    assert (path / "ebin" / f"{NAME}.app").is_file()
    api.clear()
    http_adapter.enable(NAME, A, {})
    assert commands(api) == ["plugin/show", f"plugin/enable?--name={NAME}&--path={path}"]
    assert node.snapshot()["loaded"] == {NAME: str(path)}
    seen = http_adapter.observe()
    assert seen.plugins[NAME].digest == A and seen.plugins[NAME].enabled
    assert seen.plugins[NAME].path == str(path)


def test_upgrade_disables_old_then_enables_new(http_adapter: VerneMQAdapter, api: ReplayServer,
                                               node: VerneMQReplay, tmp_path: Path) -> None:
    http_adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    new = http_adapter.install_plugin(NAME, B, image_tree(tmp_path / "img", "B"))
    http_adapter.enable(NAME, A, {})
    api.clear()
    http_adapter.enable(NAME, B, {})
    assert commands(api) == ["plugin/show", f"plugin/disable?--name={NAME}",
                             f"plugin/enable?--name={NAME}&--path={new}"]
    assert node.snapshot()["loaded"] == {NAME: str(new)}
    assert http_adapter.observe().plugins[NAME].digest == B


def test_failed_enable_rolls_back_to_the_previous_path(
        api: ReplayServer, key_file: Path, vmq_admin: Path, plugin_dir: Path,
        node: VerneMQReplay, tmp_path: Path) -> None:
    # The broker sees the volume at another path, where only version A exists: enabling B is
    # refused with the recorded HTTP 400 for a --path that does not exist.
    broker_view = tmp_path / "broker-view"
    adapter = create({"api_url": api.url, "api_key_file": str(key_file),
                      "vmq_admin": str(vmq_admin), "broker_plugin_dir": str(broker_view)},
                     plugin_dir)
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    adapter.install_plugin(NAME, B, image_tree(tmp_path / "img", "B"))
    (broker_view / NAME).mkdir(parents=True)
    (broker_view / NAME / A[7:]).symlink_to(plugin_dir / NAME / A[7:])
    adapter.enable(NAME, A, {})
    api.clear()
    with pytest.raises(AdapterError, match="HTTP 400") as refused:
        adapter.enable(NAME, B, {})
    assert "--path that does not exist" in str(refused.value)
    old, new = broker_view / NAME / A[7:], broker_view / NAME / B[7:]
    assert commands(api) == ["plugin/show", f"plugin/disable?--name={NAME}",
                             f"plugin/enable?--name={NAME}&--path={new}",
                             f"plugin/enable?--name={NAME}&--path={old}"]
    assert node.snapshot()["loaded"] == {NAME: str(old)}
    assert adapter.observe().plugins[NAME].digest == A


def test_exit_code_zero_failure_is_an_error(tmp_path: Path, vmq_admin: Path, plugin_dir: Path,
                                            node: VerneMQReplay) -> None:
    # Recorded: a --path without ebin/ gives "Can't enable plugin: ... plugin_not_found", rc 0.
    broker_view = tmp_path / "broker-view"
    (broker_view / NAME / A[7:]).mkdir(parents=True)
    adapter = create({"vmq_admin": str(vmq_admin), "broker_plugin_dir": str(broker_view)},
                     plugin_dir)
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    with pytest.raises(AdapterError, match="due to plugin_not_found"):
        adapter.enable(NAME, A, {})
    assert node.snapshot()["loaded"] == {}
    assert adapter.observe().plugins[NAME].enabled is False


def test_cli_enable_disable_and_disable_of_an_unloaded_plugin(
        cli_adapter: VerneMQAdapter, node: VerneMQReplay, vmq_admin: Path,
        tmp_path: Path) -> None:
    path = cli_adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    cli_adapter.enable(NAME, A, {})
    assert node.snapshot()["loaded"] == {NAME: str(path)}
    seen = cli_adapter.observe()  # parsed from the recorded ANSI table with deny_mallory
    assert seen.plugins[NAME].digest == A
    cli_adapter.disable(NAME)
    assert node.snapshot()["loaded"] == {}
    cli_adapter.disable(NAME)  # idempotent: nothing loaded, nothing sent but `plugin show`
    reply = CliAdmin(str(vmq_admin)).run(["plugin", "disable"], {"--name": NAME})
    assert reply.alerts == (f"Can't disable plugin: {NAME} due to plugin_not_found",)
    seen = cli_adapter.observe()
    assert seen.plugins[NAME].enabled is False and seen.plugins[NAME].digest is None


def test_node_restart_loses_plugins_and_observe_says_so(
        http_adapter: VerneMQAdapter, node: VerneMQReplay, tmp_path: Path) -> None:
    http_adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    http_adapter.enable(NAME, A, {})
    with node.state() as state:
        state["loaded"] = {}  # recorded: plugin_show_after_restart has no deny_mallory
    seen = http_adapter.observe().plugins[NAME]
    assert (seen.enabled, seen.digest) == (False, None)


def test_mismatched_app_name_is_refused_before_any_call(
        http_adapter: VerneMQAdapter, api: ReplayServer, node: VerneMQReplay,
        plugin_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="'other_name'"):
        http_adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A", app="other_name"))
    # Also for a version directory that was put in place by other means.
    ebin = plugin_dir / NAME / A[7:] / "ebin"
    ebin.mkdir(parents=True)
    (ebin / "other_name.app").write_text("{application, other_name, []}.\n")
    api.clear()
    with pytest.raises(AdapterError, match="crashes its plugin manager"):
        http_adapter.enable(NAME, A, {})
    assert api.targets() == []
    assert http_adapter.cli is not None and http_adapter.cli.calls == 0
    assert node.snapshot()["crashed"] is False


def test_settings_without_a_schema_are_refused_before_any_call(
        http_adapter: VerneMQAdapter, api: ReplayServer, tmp_path: Path) -> None:
    http_adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    api.clear()
    with pytest.raises(AdapterError, match=r"priv/\*\.schema"):
        http_adapter.enable(NAME, A, {"deny_users": "mallory,eve"})
    assert api.targets() == []


def test_bad_api_key_gives_a_clear_error_without_the_key(
        api: ReplayServer, vmq_admin: Path, plugin_dir: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("wrongkey-7f3a9c\n")
    adapter = create({"api_url": api.url, "api_key_file": str(wrong),
                      "vmq_admin": str(vmq_admin)}, plugin_dir)
    seen = adapter.observe()
    assert not seen.reachable
    assert "HTTP 401" in seen.detail and str(wrong) in seen.detail
    assert "wrongkey-7f3a9c" not in seen.detail
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    with pytest.raises(AdapterError, match="api-key") as refused:
        adapter.enable(NAME, A, {})
    assert "wrongkey-7f3a9c" not in str(refused.value)
    assert not adapter.health()


def test_connection_refused_is_broker_unavailable(key_file: Path, plugin_dir: Path,
                                                  tmp_path: Path) -> None:
    adapter = create({"api_url": f"http://127.0.0.1:{free_port()}",
                      "api_key_file": str(key_file), "vmq_admin": "none"}, plugin_dir)
    seen = adapter.observe()
    assert not seen.reachable and "did not answer" in seen.detail
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "A"))
    with pytest.raises(BrokerUnavailable):
        adapter.enable(NAME, A, {})
    assert not adapter.health()


def test_cli_node_down_is_broker_unavailable(cli_adapter: VerneMQAdapter,
                                             node: VerneMQReplay) -> None:
    # Relies on relx's documented "not responding to pings" text (not recorded).
    with node.state() as state:
        state["down"] = True
    seen = cli_adapter.observe()
    assert not seen.reachable and "not running" in seen.detail


# --- config --------------------------------------------------------------------------------

def test_config_validation_and_classes(cli_adapter: VerneMQAdapter) -> None:
    problems = cli_adapter.validate_config({"allow_anonymous": "maybe",
                                            "listener.max_connections": "5",
                                            "max_inflight_messages": "20"})
    assert [p.key for p in problems] == ["allow_anonymous", "listener.max_connections"]
    assert "expected on or off" in problems[0].message
    assert "restart the pod" in problems[1].message
    assert cli_adapter.classify("allow_anonymous") is ChangeClass.HOT
    assert cli_adapter.classify("listener.max_connections") is ChangeClass.BROKER_RESTART


def test_config_set_read_back_and_restore(cli_adapter: VerneMQAdapter, node: VerneMQReplay,
                                          plugin_dir: Path) -> None:
    cli_adapter.validate_config({"allow_anonymous": "on"})
    cli_adapter.apply_config({"allow_anonymous": "on"})
    assert node.snapshot()["allow_anonymous"] == "on"
    assert cli_adapter.observe().config == {"allow_anonymous": "on"}
    assert '"allow_anonymous": "off"' in (plugin_dir / STATE_FILE).read_text()  # the original
    cli_adapter.apply_config({"allow_anonymous": None})  # back to the node's own value
    assert node.snapshot()["allow_anonymous"] == "off"


def test_config_bad_value_carries_the_brokers_message(cli_adapter: VerneMQAdapter,
                                                      node: VerneMQReplay) -> None:
    with pytest.raises(AdapterError) as refused:
        cli_adapter.apply_config({"allow_anonymous": "maybe"})
    message = str(refused.value)
    assert "Error transforming datatype for: allow_anonymous" in message
    assert "acceptable values are: on, off" in message
    assert node.snapshot()["allow_anonymous"] == "off"


def test_config_unknown_key_is_refused(vmq_admin: Path, plugin_dir: Path) -> None:
    # An operator-declared live key the broker does not know: `show` refuses it first.
    adapter = create({"vmq_admin": str(vmq_admin), "extra_live_keys": "no_such_key"},
                     plugin_dir)
    with pytest.raises(AdapterError, match="Invalid config keys: no_such_key"):
        adapter.apply_config({"no_such_key": "1"})
    with pytest.raises(AdapterError) as unknown:
        CliAdmin(str(vmq_admin)).run_raw(["set"], {"no_such_key": "1"})
    assert "Unknown variable: no_such_key" in str(unknown.value)
    assert "=ERROR REPORT" not in str(unknown.value)
    with pytest.raises(AdapterError, match="restart the pod"):
        adapter.apply_config({"listener.max_connections": "5"})


# --- through the reconciler ----------------------------------------------------------------

def test_reconciler_converges_and_recovers_after_node_restart(
        http_adapter: VerneMQAdapter, api: ReplayServer, node: VerneMQReplay,
        tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "img", "A")
    documents = [
        Document("test", "broker.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                 "kind: BrokerConfig\nbroker: vernemq\nconfig:\n  allow_anonymous: 'off'\n"),
        Document("test", f"plugin.{NAME}.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                 f"kind: PluginRelease\nname: {NAME}\n"
                 f"image: registry.test:5000/plugins/deny@{A}\n"),
    ]
    reconciler = Reconciler(http_adapter, lambda: documents, lambda _image: tree,
                            lambda p: ProbeResult(p.name, True, "accepted", "not run"))
    assert reconciler.reconcile("start").phase is Phase.APPLIED, reconciler.state.last_error
    assert NAME in node.snapshot()["loaded"]
    api.clear()
    assert reconciler.reconcile("resync").phase is Phase.APPLIED
    assert not [c for c in commands(api) if "enable" in c or "disable" in c]
    with node.state() as state:
        state["loaded"] = {}  # the node restarted: runtime-enabled plugins are gone
    assert reconciler.reconcile("resync").phase is Phase.APPLIED, reconciler.state.last_error
    assert NAME in node.snapshot()["loaded"]


def test_settings_with_a_schema_go_through_vmq_admin_set(
        http_adapter: VerneMQAdapter, node: VerneMQReplay, tmp_path: Path) -> None:
    # No recording has a plugin schema key, so the replay answers "no recording for <argv>":
    # this proves the argv the adapter sends (documented `vmq-admin set <app>.<key>=<value>`),
    # not VerneMQ's answer to it.
    tree = image_tree(tmp_path / "img", "A")
    priv = tree / "plugin" / NAME / "priv"
    priv.mkdir()
    (priv / f"{NAME}.schema").write_text(
        f'{{mapping, "{NAME}.deny_users", "{NAME}.deny_users", [{{datatype, string}}]}}.\n')
    http_adapter.install_plugin(NAME, A, tree)
    with pytest.raises(AdapterError, match=f"no recording for vmq-admin set "
                                           f"{NAME}.deny_users=mallory,eve"):
        http_adapter.enable(NAME, A, {"deny_users": "mallory,eve"})
    with pytest.raises(AdapterError, match="not in its schema"):
        http_adapter.enable(NAME, A, {"allow_users": "x"})
