"""Shared by the VerneMQ adapter and template tests and the contract suite: the vernemq-erlang
template built with the real CLI in the versions the tests load into a live node, and MQTT
checks with passwords on MQTT 3.1.1 and 5."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from mqtt_support import Client
from paho.mqtt.enums import MQTTProtocolVersion

from plugforge.cli import main as plugforge_main
from testbed.vernemq import USERS, VerneMQ

PLUGIN = "deny_test"
V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5


@dataclass(frozen=True)
class Version:
    label: str
    artifact_dir: Path   # ebin/ as the recipe's artifact: becomes /plugin/<name>/ in an image
    tree: Path           # an extracted image tree: plugin/<name>/ebin/...
    digest: str          # a stand-in image digest (sha256 of the ebin files)


@dataclass(frozen=True)
class Versions:
    v1: Version          # the starter: denies mallory, `next` for the rest
    v2: Version          # changed code: also denies eve
    missing_module: Version  # .app lists a module without a beam: the sidecar refuses it
    bad_hook: Version    # a hook module whose beam the node cannot load: the node refuses it


def build_versions(root: Path) -> Versions:
    repo = root / "deny-test"
    assert plugforge_main(["new", "--broker", "vernemq", "deny-test", "--dir", str(repo)]) == 0
    erl = repo / "src" / f"{PLUGIN}.erl"
    app_src = repo / "src" / f"{PLUGIN}.app.src"
    v1 = _build(repo, root, "v1")
    code = erl.read_text()
    marker = "lists:member(UserName, deny_users())"
    assert marker in code, "the template's policy changed; update this test's v2 edit"
    erl.write_text(code.replace(marker, 'lists:member(UserName, [<<"eve">> | deny_users()])'))
    app_src.write_text(app_src.read_text().replace('{vsn, "0.1.0"}', '{vsn, "0.2.0"}'))
    v2 = _build(repo, root, "v2")
    missing = _variant(v2, root, "missing-module", lambda ebin: _edit_app(
        ebin, r"\{modules,\s*\[", "{modules,[deny_test_gone,"))
    bad = _variant(v2, root, "bad-hook", lambda ebin: _add_unloadable_hook(ebin, root))
    return Versions(v1, v2, missing, bad)


def _build(repo: Path, root: Path, label: str) -> Version:
    work = root / f"work-{label}"
    assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(work),
                           "--quiet"]) == 0
    return _version(work / "artifact", root, label)


def _version(artifact_dir: Path, root: Path, label: str) -> Version:
    tree = root / f"tree-{label}"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(artifact_dir, tree / "plugin" / PLUGIN)
    digest = hashlib.sha256()
    for f in sorted((artifact_dir / "ebin").iterdir()):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return Version(label, artifact_dir, tree, "sha256:" + digest.hexdigest())


def _variant(base: Version, root: Path, label: str, change: object) -> Version:
    artifact = root / f"artifact-{label}"
    shutil.rmtree(artifact, ignore_errors=True)
    shutil.copytree(base.artifact_dir, artifact)
    change(artifact / "ebin")  # type: ignore[operator]
    return _version(artifact, root, label)


def _edit_app(ebin: Path, pattern: str, new: str) -> None:
    app = ebin / f"{PLUGIN}.app"
    text, count = re.subn(pattern, new, app.read_text(), count=1)
    assert count == 1, f"{pattern!r} not in {app}"
    app.write_text(text)


def _add_unloadable_hook(ebin: Path, root: Path) -> None:
    """deny_test_extra:auth_on_subscribe/3 as a hook, compiled, then its Code chunk dropped:
    the export table still names the function (the sidecar's check passes), the node's
    loader refuses the beam (``plugin enable`` answers unknown_module)."""
    src = root / "deny_test_extra.erl"
    src.write_text("-module(deny_test_extra).\n-export([auth_on_subscribe/3]).\n"
                   "auth_on_subscribe(_, _, _) -> next.\n")
    subprocess.run(["erlc", "-o", str(ebin), str(src)], check=True)
    beam = ebin / "deny_test_extra.beam"
    data = beam.read_bytes()
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        padded = (size + 3) // 4 * 4
        if data[pos:pos + 4] != b"Code":
            chunks.append(data[pos:pos + 8 + padded])
        pos += 8 + padded
    body = b"BEAM" + b"".join(chunks)
    beam.write_bytes(b"FOR1" + len(body).to_bytes(4, "big") + body)
    _edit_app(ebin, r"\{modules,\s*\[", "{modules,[deny_test_extra,")
    _edit_app(ebin, r"\{vmq_plugin_hooks,\s*\[",
              "{vmq_plugin_hooks,[{deny_test_extra,auth_on_subscribe,3,[]},")


def connect(node: VerneMQ, user: str, password: str | None = None, *,
            protocol: MQTTProtocolVersion = V5) -> Client:
    """A client with ``user``'s password from the node's password file unless given."""
    return Client(node.port, user, password=password if password is not None
                  else node.passwords.get(user, USERS.get(user, "no-password")),
                  protocol=protocol)


def accepted(node: VerneMQ, user: str, password: str | None = None, *,
             protocol: MQTTProtocolVersion = V5) -> bool:
    client = connect(node, user, password, protocol=protocol)
    client.close()
    return client.accepted


def publish_outcome(node: VerneMQ, user: str, topic: str, *,
                    protocol: MQTTProtocolVersion = V5) -> str:
    """What a QoS 1 publish got: ``puback <code>`` or ``closed`` (3.1.1 has no refusal code:
    the broker closes the connection)."""
    client = connect(node, user, protocol=protocol)
    try:
        assert client.accepted, f"{user} was refused: {client.connect_rc}"
        mid = client.c.publish(topic, b"x", qos=1).mid
        client._wait(lambda: mid in client.puback or client.disconnected,
                     f"PUBACK or close for {topic}")
        return f"puback {client.puback[mid].value}" if mid in client.puback else "closed"
    finally:
        client.close()


def app_plugins(node: VerneMQ) -> list[str]:
    """Application plugins in the node's order (the order each hook asks them)."""
    rows = [line.split("|") for line in node.admin("plugin", "show").splitlines()
            if "| application |" in line]
    return [r[1].strip() for r in rows]


def plugin_paths(node: VerneMQ) -> list[str]:
    """The test plugin's directories on the node's code path."""
    return [p for p in node.rpc("code", "get_path", "").replace("\n", " ").split('"')
            if f"/{PLUGIN}/" in p]


def reset(node: VerneMQ) -> None:
    """Back to the stock plugins (vmq_passwd, vmq_acl), whatever a test enabled, and no test
    plugin on the code path (each test has its own plugin dir)."""
    for name in app_plugins(node):
        if name not in ("vmq_passwd", "vmq_acl"):
            node.admin("plugin", "disable", f"--name={name}")
    for path in plugin_paths(node):
        node.rpc("code", "del_path", f'"{path}".')
    for name in ("vmq_passwd", "vmq_acl"):
        if name not in app_plugins(node):
            node.admin("plugin", "enable", f"--name={name}")
