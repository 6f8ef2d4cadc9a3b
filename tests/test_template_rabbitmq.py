"""rabbitmq-erlang end to end: `plugforge new` → `plugforge build --local` (escript, against the
installed RabbitMQ 3.10 headers) → the .ez copied into a running node's plugins dir →
`rabbitmq-plugins enable --online` and `auth_backends` switched at runtime → real MQTT 3.1.1
clients (paho; RabbitMQ 3.10 has no MQTT 5) see the policy.

It also pins down the hot-loading facts the RabbitMQ sidecar adapter builds on: enabling and
disabling the plugin online keeps the node's OS process and its existing connections, and a
changed application env applies to the next login without a restart.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_support import ANY_PASSWORD, Client

from builder.build.recipe import load_recipe, run_recipe, template_dir
from plugforge.cli import main
from testbed.rabbitmq import RabbitMQ, start_rabbitmq

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PLUGIN = "deny_test"
EARLY = ("early", "early-password")


@dataclass
class Built:
    repo: Path
    ez: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("rabbitmq-erlang")
    repo = root / "deny-test"
    assert main(["new", "--broker", "rabbitmq", "deny-test", "--dir", str(repo)]) == 0
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    return Built(repo=repo, ez=work / "artifact" / f"{PLUGIN}-0.1.0.ez")


def connect(node: RabbitMQ, user: str, password: str = ANY_PASSWORD) -> Client:
    return Client(node.mqtt_port, user, password=password, protocol=mqtt.MQTTv311)


def accepted(node: RabbitMQ, user: str) -> bool:
    client = connect(node, user)
    client.close()
    return client.accepted


@dataclass
class Enabled:
    node: RabbitMQ
    early: Client
    """Connected through the internal backend before the plugin was enabled."""
    pid_before: int


@pytest.fixture(scope="module")
def enabled(rabbitmq: RabbitMQ, built: Built) -> Iterator[Enabled]:
    """The plugin hot-enabled and selected as the only auth backend; undone afterwards."""
    original = rabbitmq.eval("application:get_env(rabbit, auth_backends).")
    assert original.startswith("{ok,") and original.endswith("}"), original
    rabbitmq.rabbitmqctl("add_user", *EARLY)
    rabbitmq.rabbitmqctl("set_permissions", EARLY[0], ".*", ".*", ".*")
    early = connect(rabbitmq, *EARLY)
    assert early.accepted
    pid_before = rabbitmq.os_pid()

    rabbitmq.install_plugin(built.ez)
    out = rabbitmq.rabbitmq_plugins("enable", "--online", PLUGIN)
    assert "started 1 plugins" in out, out
    rabbitmq.eval(f"application:set_env(rabbit, auth_backends, [{PLUGIN}]).")
    try:
        yield Enabled(rabbitmq, early, pid_before)
    finally:
        rabbitmq.eval(f"application:set_env(rabbit, auth_backends, {original[4:-1]}).")
        rabbitmq.rabbitmq_plugins("disable", "--online", PLUGIN)
        rabbitmq.rabbitmqctl("delete_user", EARLY[0])
        (rabbitmq.shared_plugins_dir / built.ez.name).unlink(missing_ok=True)
        early.close()


def test_build_produces_one_reproducible_ez(built: Built, tmp_path: Path) -> None:
    assert sorted(p.name for p in built.ez.parent.iterdir()) == [f"{PLUGIN}-0.1.0.ez"]
    with zipfile.ZipFile(built.ez) as ez:
        assert sorted(ez.namelist()) == [
            f"{PLUGIN}-0.1.0/ebin/{PLUGIN}.app",
            f"{PLUGIN}-0.1.0/ebin/{PLUGIN}.beam",
            f"{PLUGIN}-0.1.0/priv/schema/{PLUGIN}.schema",
        ]
        app = ez.read(f"{PLUGIN}-0.1.0/ebin/{PLUGIN}.app").decode()
    assert "{modules,[deny_test]}" in app.replace(" ", "")
    assert '{vsn,"0.1.0"}' in app.replace(" ", "")

    again = run_recipe(load_recipe(template_dir("rabbitmq-erlang")), built.repo,
                       tmp_path / "work")
    assert (again.name, again.version) == (PLUGIN, "0.1.0")
    digests = {hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (built.ez, again.artifact_dir / built.ez.name)}
    assert len(digests) == 1, "two builds of the same tree gave different .ez files"


def test_policy_functions_in_the_built_beam(built: Built) -> None:
    """The pure policy, run straight from the archive (Erlang loads code from .ez files)."""
    ebin = built.ez / f"{PLUGIN}-0.1.0" / "ebin"
    expr = (f"io:format(\"~p~n\", [{{[{PLUGIN}:may_publish(K) || K <- [<<\"forbidden.x\">>, "
            f"<<\"forbidden.a.b\">>, <<\"forbidden\">>, <<\"forbiddenx.y\">>, "
            f"<<\"a.forbidden.x\">>, <<\"ok.x\">>]], "
            f"[{PLUGIN}:parse_users(V) || V <- [\" eve , trudy \", <<\"a,b\">>, \"\"]], "
            f"element(1, {PLUGIN}:parse_users(42))}}]), halt().")
    out = subprocess.run(["erl", "-noshell", "-pa", str(ebin), "-eval", expr], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert "".join(out.split()) == (
        '{[false,false,true,true,true,true],'
        '[{ok,[<<"eve">>,<<"trudy">>]},{ok,[<<"a">>,<<"b">>]},{ok,[]}],error}')


def test_enable_online_keeps_the_node_and_its_connections(enabled: Enabled) -> None:
    assert enabled.node.os_pid() == enabled.pid_before
    assert enabled.early.connected and not enabled.early.disconnected
    listed = enabled.node.rabbitmq_plugins("list", "-e", PLUGIN)
    assert f"[E*] {PLUGIN}" in listed, listed


def test_denied_user_is_refused_and_others_connect(enabled: Enabled) -> None:
    mallory = connect(enabled.node, "mallory")
    mallory.close()
    assert not mallory.accepted
    # MQTT 3.1.1 has one code for any refused login.
    assert "bad user name or password" in str(mallory.connect_rc).lower()
    # No password check in the sample, and no internal user needed: the plugin decides.
    assert accepted(enabled.node, "alice")


def test_publish_under_forbidden_is_refused_and_not_delivered(enabled: Enabled) -> None:
    node = enabled.node
    watcher, alice, dave = connect(node, "bob"), connect(node, "alice"), connect(node, "dave")
    try:
        watcher.subscribe("#")
        # MQTT forbidden/x is routing key forbidden.x on amq.topic; RabbitMQ 3.10 answers a
        # refused publish by closing the connection.
        alice.publish_qos0("forbidden/x", b"secret")
        alice.wait_disconnected()
        dave.publish("ok/x", b"hello")
        watcher.wait_for_message("ok/x")
        assert watcher.messages == [("ok/x", b"hello")]
    finally:
        for c in (watcher, alice, dave):
            c.close()
    assert "access to topic 'forbidden.x' in exchange 'amq.topic'" in node.server.log_tail(200)


def test_deny_users_setting_applies_without_restart(enabled: Enabled) -> None:
    node = enabled.node
    try:
        node.eval(f'application:set_env({PLUGIN}, deny_users, " eve , trudy ").')
        assert not accepted(node, "eve")
        assert not accepted(node, "trudy")
        assert accepted(node, "mallory")  # the default no longer applies

        # A setting the plugin cannot read refuses everybody and says why in the log.
        node.eval(f"application:set_env({PLUGIN}, deny_users, 42).")
        assert not accepted(node, "alice")
        assert "setting deny_users must be a comma-separated string" in node.server.log_tail(200)
    finally:
        node.eval(f"application:unset_env({PLUGIN}, deny_users).")
    assert not accepted(node, "mallory")
    assert enabled.node.os_pid() == enabled.pid_before


def test_disable_online_keeps_the_node_and_its_connections(enabled: Enabled) -> None:
    """Runs last in this module: the uninstall path (backend switched back first, then disable)."""
    node = enabled.node
    node.eval("application:set_env(rabbit, auth_backends, [rabbit_auth_backend_internal]).")
    node.rabbitmq_plugins("disable", "--online", PLUGIN)
    assert f"[E*] {PLUGIN}" not in node.rabbitmq_plugins("list", "-e")
    assert not accepted(node, "alice")  # the internal backend knows no alice
    assert enabled.early.connected and not enabled.early.disconnected
    assert node.os_pid() == enabled.pid_before


def test_enabled_at_boot_with_settings_from_rabbitmq_conf(built: Built, tmp_path: Path) -> None:
    """The static way: plugin enabled at boot, backend and deny list in rabbitmq.conf (schema)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copyfile(built.ez, plugins / built.ez.name)
    node = start_rabbitmq(tmp_path / "node", plugins, plugins=("rabbitmq_mqtt", PLUGIN),
                          config=[f"auth_backends.1 = {PLUGIN}", f"{PLUGIN}.deny_users = eve"])
    try:
        assert not accepted(node, "eve")
        assert accepted(node, "mallory")
    finally:
        node.stop()
