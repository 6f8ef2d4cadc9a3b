"""Shared by the RabbitMQ adapter tests and the contract suite: a RabbitMQ node with the
management API, the rabbitmq-erlang template built in three versions, the adapter wired to it."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from mqtt_support import ANY_PASSWORD, Client

from plugforge.cli import main as plugforge_main
from sidecar.adapters.rabbitmq import RECORD, VERSIONS, RabbitMQAdapter, create
from testbed.rabbitmq import RabbitMQ

PLUGIN = "deny_test"


@dataclass(frozen=True)
class Version:
    vsn: str
    artifact_dir: Path   # holds <name>-<vsn>.ez: becomes /plugin/<name>/ in an image
    tree: Path           # an extracted image tree: plugin/<name>/<name>-<vsn>.ez
    digest: str          # a stand-in image digest (sha256 of the archive) for adapter tests


@dataclass(frozen=True)
class Versions:
    v1: Version      # denies mallory (its .app default)
    v2: Version      # changed code: also denies eve, whatever deny_users says
    broken: Version  # a valid archive whose beam does not load
    recoded: Version  # v2's code under v1's version string (same archive file name)


def build_versions(root: Path) -> Versions:
    repo = root / "deny-test"
    assert plugforge_main(["new", "--broker", "rabbitmq", "deny-test", "--dir", str(repo)]) == 0
    app_src = repo / "src" / f"{PLUGIN}.app.src"
    erl = repo / "src" / f"{PLUGIN}.erl"
    v1 = _build(repo, root, "0.1.0")
    app_src.write_text(app_src.read_text().replace('{vsn, "0.1.0"}', '{vsn, "0.2.0"}'))
    code = erl.read_text()
    marker = "case lists:member(Username, Denied) of"
    assert marker in code, "the template's policy changed; update this test's v2 edit"
    erl.write_text(code.replace(marker, 'case lists:member(Username, [<<"eve">> | Denied]) of'))
    v2 = _build(repo, root, "0.2.0")
    app_src.write_text(app_src.read_text().replace('{vsn, "0.2.0"}', '{vsn, "0.3.0"}'))
    v3 = _build(repo, root, "0.3.0")
    _corrupt_beams(v3.artifact_dir / f"{PLUGIN}-0.3.0.ez")
    app_src.write_text(app_src.read_text().replace('{vsn, "0.3.0"}', '{vsn, "0.1.0"}'))
    recoded = _build(repo, root, "0.1.0", "recoded")
    return Versions(v1, v2, _version(v3.artifact_dir, root / "tree-0.3.0", "0.3.0"), recoded)


def _build(repo: Path, root: Path, vsn: str, label: str = "") -> Version:
    suffix = f"{vsn}-{label}" if label else vsn
    work = root / f"work-{suffix}"
    assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(work),
                           "--quiet"]) == 0
    return _version(work / "artifact", root / f"tree-{suffix}", vsn)


def _version(artifact_dir: Path, tree: Path, vsn: str) -> Version:
    archive = artifact_dir / f"{PLUGIN}-{vsn}.ez"
    target = tree / "plugin" / PLUGIN
    shutil.rmtree(tree, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copyfile(archive, target / archive.name)
    return Version(vsn, artifact_dir, tree,
                   "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest())


def _corrupt_beams(archive: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".beam"):
                data = b"FOR1\x00\x00\x00\x10BEAMnot-a-module"
            dst.writestr(info, data)
    archive.write_bytes(buf.getvalue())


def cleanup(node: RabbitMQ, original_backends: str, users: tuple[str, ...]) -> None:
    """Put the shared node back as the other RabbitMQ tests expect it."""
    node.eval(f"application:set_env(rabbit, auth_backends, {original_backends}).")
    if PLUGIN in node.rabbitmq_plugins("list", "-e", "-m", PLUGIN):
        node.rabbitmq_plugins("disable", "--online", PLUGIN)
    listed = node.rabbitmqctl("list_users", "-q").split()
    for user in users:
        if user in listed:
            node.rabbitmqctl("delete_user", user)
    shutil.rmtree(node.shared_plugins_dir / VERSIONS, ignore_errors=True)
    (node.shared_plugins_dir / RECORD).unlink(missing_ok=True)
    for archive in node.shared_plugins_dir.glob(f"{PLUGIN}-*.ez"):
        archive.unlink()


def adapter_options(node: RabbitMQ) -> dict[str, str]:
    return {"node": node.nodename, "home": str(node.workdir), "epmd_port": str(node.ports.epmd),
            "timeout": "60"}


def make_adapter(node: RabbitMQ) -> RabbitMQAdapter:
    return create(adapter_options(node), node.shared_plugins_dir)


def connect(node: RabbitMQ, user: str, password: str = ANY_PASSWORD) -> Client:
    return Client(node.mqtt_port, user, password=password, protocol=mqtt.MQTTv311)


def accepted(node: RabbitMQ, user: str, password: str = ANY_PASSWORD) -> bool:
    client = connect(node, user, password)
    client.close()
    return client.accepted


def publish_refused(node: RabbitMQ, user: str, topic: str,
                    password: str = ANY_PASSWORD) -> bool:
    """RabbitMQ 3.10 answers a refused MQTT 3.1.1 publish by closing the connection."""
    client = connect(node, user, password)
    try:
        assert client.accepted, f"{user} could not connect: {client.connect_rc}"
        client.c.publish(topic, b"x", qos=1)
        try:
            client.wait_disconnected(timeout=3)
        except AssertionError:
            return False
        return True
    finally:
        client.close()
