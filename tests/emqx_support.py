"""Shared by the EMQX tests and the contract suite: the live node's password database, the
emqx-erlang template built in three versions, the adapter wired to the node, MQTT checks."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from mqtt_support import ANY_PASSWORD, NOT_AUTHORIZED, Client
from paho.mqtt.enums import MQTTProtocolVersion

from plugforge.cli import main as plugforge_main
from sidecar.adapters.emqx import STATE_FILE, EmqxAdapter, create
from testbed import emqx as testbed_emqx
from testbed.emqx import Emqx

PLUGIN = "deny_test"
# EMQX's built-in password database on the shared node. mallory and eve have valid passwords:
# only the plugin refuses them. The contract suite's clients use ANY_PASSWORD.
USERS = {"alice": ANY_PASSWORD, "mallory": ANY_PASSWORD, "eve": ANY_PASSWORD,
         "early": "early-password", "watcher": "watcher-password"}


@dataclass(frozen=True)
class Version:
    vsn: str
    package: Path        # <name>-<vsn>.tar.gz, the artifact
    artifact_dir: Path   # becomes /plugin/<name>/ in an image
    tree: Path           # an extracted image tree: plugin/<name>/<name>-<vsn>.tar.gz
    digest: str          # a stand-in image digest (sha256 of the package) for adapter tests


@dataclass(frozen=True)
class Versions:
    v1: Version      # the template as scaffolded: refuses mallory
    v2: Version      # changed code: also refuses eve, whatever deny_users says
    broken: Version  # a valid package whose application cannot start


def build_versions(root: Path) -> Versions:
    repo = root / "deny-test"
    assert plugforge_main(["new", "--broker", "emqx", "deny-test", "--dir", str(repo)]) == 0
    app_src = repo / "src" / f"{PLUGIN}.app.src"
    erl = repo / "src" / f"{PLUGIN}.erl"
    v1 = _build(repo, root, "0.1.0")
    app_src.write_text(app_src.read_text().replace('{vsn, "0.1.0"}', '{vsn, "0.2.0"}'))
    code = erl.read_text()
    marker = "lists:member(Username, deny_users())"
    assert marker in code, "the template's policy changed; update this test's v2 edit"
    erl.write_text(code.replace(marker, 'lists:member(Username, [<<"eve">> | deny_users()])'))
    v2 = _build(repo, root, "0.2.0")
    text = app_src.read_text().replace('{vsn, "0.2.0"}', '{vsn, "0.3.0"}')
    marker = f"{{mod, {{{PLUGIN}_app, []}}}}"
    assert marker in text, "the template's .app.src changed; update this test's broken edit"
    app_src.write_text(text.replace(marker, "{mod, {no_such_module_app, []}}"))
    broken = _build(repo, root, "0.3.0")
    return Versions(v1, v2, broken)


def _build(repo: Path, root: Path, vsn: str) -> Version:
    work = root / f"work-{vsn}"
    assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(work),
                           "--quiet"]) == 0
    artifact_dir = work / "artifact"
    package = artifact_dir / f"{PLUGIN}-{vsn}.tar.gz"
    tree = root / f"tree-{vsn}"
    (tree / "plugin" / PLUGIN).mkdir(parents=True)
    shutil.copyfile(package, tree / "plugin" / PLUGIN / package.name)
    return Version(vsn, package, artifact_dir, tree,
                   "sha256:" + hashlib.sha256(package.read_bytes()).hexdigest())


def enable_password_database(node: Emqx) -> None:
    """EMQX's built-in authentication holding ``USERS``. Idempotent."""
    testbed_emqx.enable_password_database(node, USERS)


def adapter_options(node: Emqx, tmp: Path) -> dict[str, str]:
    secret = tmp / "emqx-api"
    secret.mkdir(parents=True, exist_ok=True)
    (secret / "key").write_text(node.api_key + "\n")
    (secret / "secret").write_text(node.api_secret + "\n")
    return {"install_dir": str(node.plugins_dir), "api_url": node.api_url,
            "api_key_file": str(secret / "key"), "api_secret_file": str(secret / "secret")}


def make_adapter(node: Emqx, tmp: Path, plugin_dir: Path) -> EmqxAdapter:
    return create(adapter_options(node, tmp), plugin_dir)


def remove_plugins(node: Emqx, plugin_dir: Path | None = None) -> None:
    """No plugin installed on the node (and no sidecar record): how every test starts."""
    for plugin in node.api("GET", "/plugins"):
        name_vsn = f"{plugin['name']}-{plugin['rel_vsn']}"
        node.api("PUT", f"/plugins/{name_vsn}/stop")
        node.api("DELETE", f"/plugins/{name_vsn}")
    if plugin_dir is not None:
        (plugin_dir / STATE_FILE).unlink(missing_ok=True)


def connect(node: Emqx, user: str, password: str | None = None, *,
            protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> Client:
    return Client(node.mqtt_port, user, protocol=protocol,
                  password=password if password is not None else USERS.get(user, ANY_PASSWORD))


def accepted(node: Emqx, user: str, password: str | None = None, *,
             protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> bool:
    client = connect(node, user, password, protocol=protocol)
    client.close()
    return client.accepted


def publish_refused(node: Emqx, user: str, password: str | None, topic: str, *,
                    protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> bool:
    """True when EMQX did not route ``user``'s QoS 1 PUBLISH to ``topic``.

    MQTT 5: the PUBACK says 0x87. MQTT 3.1.1 has no code for it (EMQX acknowledges and drops
    it, ``authorization.deny_action = ignore``), so a watcher subscribed to the topic must not
    receive it, while a marker published after it arrives."""
    watcher = connect(node, "watcher")
    client = connect(node, user, password, protocol=protocol)
    try:
        assert watcher.accepted and client.accepted
        watcher.subscribe(topic)
        watcher.subscribe("marker/#")
        code = client.publish(topic, b"x")
        client.publish(f"marker/{id(client)}", b"m")
        watcher.wait_for_message(f"marker/{id(client)}")
        routed = any(t == topic for t, _ in watcher.messages)
        if protocol == mqtt.MQTTv5:
            assert (code.value == NOT_AUTHORIZED) is not routed, (code, watcher.messages)
        return not routed
    finally:
        client.close()
        watcher.close()
