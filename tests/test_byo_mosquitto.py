"""Bring your own plugin, with real third-party source: Eclipse Mosquitto's own example plugins at
v2.0.11 (tests/third_party/README.md), unmodified, in a Git repository that gains only
``.plugforge/recipe.yaml``. Built with ``plugforge build --local``, loaded by the real mosquitto
2.0, checked with real MQTT clients: message-timestamp adds a ``timestamp`` user property to
MQTT 5 messages, payload-modification prefixes payloads with ``hello ``. ``plugforge init``
infers a working recipe for the same tree.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_support import Client

from builder.build.repo_recipe import REPO_RECIPE
from plugforge.cli import main
from testbed.gitserver import run_git
from testbed.mosquitto import Mosquitto, MosquittoConfig, start_mosquitto

pytestmark = pytest.mark.timeout(180)

THIRD_PARTY = Path(__file__).parent / "third_party"
MOSQUITTO_TREE = THIRD_PARTY / "mosquitto-2.0.11"
PLUGINS = {"message-timestamp": "mosquitto_message_timestamp",
           "payload-modification": "mosquitto_payload_modification"}
ISO_SECOND = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def third_party_repo(dest: Path, plugin: str) -> Path:
    """Mosquitto's tree as a Git repository with one commit adding only the plugin's recipe."""
    shutil.copytree(MOSQUITTO_TREE, dest)
    run_git(dest, "init", "-q", "-b", "main")
    run_git(dest, "add", ".")
    run_git(dest, "commit", "-q", "-m", "Eclipse Mosquitto v2.0.11, unmodified")
    (dest / ".plugforge").mkdir()
    shutil.copy(THIRD_PARTY / "recipes" / f"mosquitto-{plugin}.yaml", dest / REPO_RECIPE)
    run_git(dest, "add", REPO_RECIPE)
    run_git(dest, "commit", "-q", "-m", f"plugforge recipe for {plugin}")
    return dest


@dataclass(frozen=True)
class Built:
    repo: Path
    work: Path
    so: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    root = tmp_path_factory.mktemp("byo-mosquitto")
    out = {}
    for plugin, name in PLUGINS.items():
        repo = third_party_repo(root / plugin, plugin)
        work = root / f"work-{plugin}"
        assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
        out[plugin] = Built(repo, work, work / "artifact" / f"{name}.so")
    return out


def _broker(tmp_path: Path, so: Path) -> Mosquitto:
    return start_mosquitto(tmp_path, MosquittoConfig(plugin=so, allow_anonymous=True))


class PropertiesClient(Client):
    """The shared test client, keeping each message's MQTT 5 user properties too."""

    def __init__(self, port: int, username: str, **kwargs: object) -> None:
        self.user_properties: dict[str, list[tuple[str, str]]] = {}
        super().__init__(port, username, **kwargs)  # type: ignore[arg-type]

    def _on_message(self, c: object, u: object, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        self.user_properties[msg.topic] = list(props or [])
        super()._on_message(c, u, msg)


def test_only_a_recipe_was_added_to_the_upstream_tree(built: dict[str, Built]) -> None:
    for b in built.values():
        changed = run_git(b.repo, "diff", "--name-status", "HEAD~1", "HEAD").splitlines()
        assert changed == [f"A\t{REPO_RECIPE}"]
        assert run_git(b.repo, "status", "--porcelain") == ""  # the build wrote nothing there
    files = sorted(p.name for p in (built["message-timestamp"].work / "artifact").iterdir())
    assert files == ["mosquitto_message_timestamp.so"]
    log = (built["message-timestamp"].work / "build.log").read_text()
    assert "plugins/message-timestamp/mosquitto_message_timestamp.c -I." in log


def test_message_timestamp_adds_a_user_property_on_mqtt5(built: dict[str, Built],
                                                         tmp_path: Path) -> None:
    broker = _broker(tmp_path, built["message-timestamp"].so)
    try:
        v5 = PropertiesClient(broker.port, "alice")
        v311 = PropertiesClient(broker.port, "bob", protocol=mqtt.MQTTv311)
        sender = Client(broker.port, "carol")
        for c in (v5, v311):
            c.subscribe("ts/#")
        assert sender.publish("ts/a", b"payload").value == 0
        for c in (v5, v311):
            c.wait_for_message("ts/a")
        ((key, value),) = v5.user_properties["ts/a"]
        assert key == "timestamp" and ISO_SECOND.match(value), value
        assert v5.messages == [("ts/a", b"payload")]  # the payload is untouched
        assert v311.user_properties["ts/a"] == []  # MQTT 3.1.1 has no properties
        for closing in (v5, v311, sender):
            closing.close()
    finally:
        broker.stop()
    assert "mosquitto_message_timestamp.so" in broker.log_tail(400)


def test_payload_modification_prefixes_hello(built: dict[str, Built], tmp_path: Path) -> None:
    broker = _broker(tmp_path, built["payload-modification"].so)
    try:
        sub, pub = Client(broker.port, "alice"), Client(broker.port, "bob")
        sub.subscribe("pm/#")
        pub.publish("pm/x", b"world")
        sub.wait_for_message("pm/x")
        # Upstream's example counts the terminating NUL of its snprintf in the new length.
        assert sub.messages == [("pm/x", b"hello world\x00")]
        sub.close()
        pub.close()
    finally:
        broker.stop()


def test_init_infers_a_recipe_that_builds_the_same_plugin(tmp_path: Path,
                                                          built: dict[str, Built]) -> None:
    # A repository holding just one of the plugins (and the config.h it includes).
    repo = tmp_path / "repo"
    shutil.copytree(MOSQUITTO_TREE, repo, ignore=shutil.ignore_patterns("payload-modification"))
    assert main(["init", str(repo)]) == 0
    text = (repo / REPO_RECIPE).read_text()
    assert "template: mosquitto-c" in text and "-I." in text
    assert "file: plugins/message-timestamp/Makefile" in text
    assert main(["init", str(repo)]) == 1  # never overwrites
    work = tmp_path / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    # Name from the plugin's Makefile, version from config.mk: what the written recipe says,
    # and the same compiler flags give the same bytes.
    assert "version: {file: config.mk" in text
    inferred = (work / "artifact" / "mosquitto_message_timestamp.so").read_bytes()
    assert inferred == built["message-timestamp"].so.read_bytes()


def test_init_on_the_whole_tree_is_ambiguous_and_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MOSQUITTO_TREE, repo)
    assert main(["init", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "matches more than one layout" in err
    assert "mosquitto_payload_modification.c" in err and "mosquitto_message_timestamp.c" in err
    assert f"add {REPO_RECIPE}, for example:" in err
    assert not (repo / REPO_RECIPE).exists()


@pytest.fixture
def no_recipe_tree(tmp_path: Path) -> Iterator[Path]:
    repo = tmp_path / "plain"
    repo.mkdir()
    (repo / "README.md").write_text("a plugin, someday\n")
    yield repo


def test_build_of_a_tree_without_recipe_or_layout_says_what_to_add(
        no_recipe_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--local", str(no_recipe_tree), "--broker", "mosquitto"]) == 2
    err = capsys.readouterr().err
    assert "no .plugforge/recipe.yaml and no layout a template recognises" in err
    assert "template: mosquitto-c" in err


def test_a_name_that_cannot_name_a_release_is_refused_with_a_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MOSQUITTO_TREE, repo)
    recipe = (THIRD_PARTY / "recipes" / "mosquitto-payload-modification.yaml").read_text()
    recipe = recipe.replace(
        "  name: {file: plugins/payload-modification/Makefile, pattern: '^PLUGIN_NAME=(\\S+)'}",
        "  name: {value: Payload.Modification}").replace(
        '"plugins/payload-modification/{name}.c"',
        "plugins/payload-modification/mosquitto_payload_modification.c")
    (repo / ".plugforge").mkdir()
    (repo / REPO_RECIPE).write_text(recipe)
    capsys.readouterr()
    assert main(["build", "--local", str(repo), "--work-dir", str(tmp_path / "w"),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "MetadataInvalid: plugin name 'Payload.Modification' (from .plugforge/recipe.yaml " \
           "over template mosquitto-c) cannot name a release" in err
    assert "{value: payload_modification}" in err
