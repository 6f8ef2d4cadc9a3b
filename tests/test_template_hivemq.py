"""hivemq-java end to end: `plugforge new` → `plugforge build --local` (Maven, cached repo) →
the extension folder installed into a real HiveMQ CE 2025.5 → real MQTT clients (paho) see the
policy: deny_users refused at CONNECT, PUBLISH under forbidden/ refused and never delivered.

It also pins down how HiveMQ CE loads extensions, which the HiveMQ sidecar adapter builds on:
CE reads its extensions folder only at start (a folder copied in at runtime is ignored until the
next start), and a ``DISABLED`` marker makes the next start skip the extension.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import _track
from mqtt_support import NOT_AUTHORIZED, Client

from builder.build.recipe import load_recipe, run_recipe, template_dir
from plugforge.cli import main
from testbed.hivemq import HiveMQ, start_hivemq

# A cold Maven cache downloads the SDK and Maven plugins (~1 min); warm runs take seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

EXTENSION_ID = "deny-test"
STARTED = 'Extension "deny-test" version 0.1.0 started successfully'


@dataclass
class Built:
    repo: Path
    extension: Path
    """The artifact dir: what becomes /plugin/deny-test/ and extensions/deny-test/."""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("hivemq-java")
    repo = root / "deny-test"
    assert main(["new", "--broker", "hivemq", "deny-test", "--dir", str(repo)]) == 0
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    return Built(repo=repo, extension=work / "artifact")


@pytest.fixture(scope="module")
def hivemq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HiveMQ]:
    """This module's own broker: the tests restart it, so it is not shared with others."""
    broker = start_hivemq(tmp_path_factory.mktemp("hivemq"))
    _track(broker)
    yield broker
    broker.stop()


def _restart(broker: HiveMQ) -> None:
    broker.restart()
    _track(broker)  # a new process: its log goes into failure reports too


def _log_since(broker: HiveMQ, mark: int) -> str:
    return broker.server.log_path.read_bytes()[mark:].decode(errors="replace")


def _log_mark(broker: HiveMQ) -> int:
    return broker.server.log_path.stat().st_size


def test_build_produces_the_extension_folder(built: Built) -> None:
    files = sorted(p.relative_to(built.extension).as_posix()
                   for p in built.extension.rglob("*") if p.is_file())
    assert files == ["conf/config.properties", "deny-test-0.1.0.jar", "hivemq-extension.xml"]
    descriptor = (built.extension / "hivemq-extension.xml").read_text()
    assert "<id>deny-test</id>" in descriptor
    assert "<version>0.1.0</version>" in descriptor  # filled in by Maven from pom.xml
    assert "deny_users=mallory" in (built.extension / "conf/config.properties").read_text()
    java = built.repo / "src/main/java/deny_test/DenyTestMain.java"
    assert "public final class DenyTestMain" in java.read_text()


def test_jar_is_reproducible(built: Built, tmp_path: Path) -> None:
    recipe = load_recipe(template_dir("hivemq-java"))
    again = run_recipe(recipe, built.repo, tmp_path / "work")
    assert (again.name, again.version) == ("deny-test", "0.1.0")
    jar = "deny-test-0.1.0.jar"
    digests = {hashlib.sha256((d / jar).read_bytes()).hexdigest()
               for d in (built.extension, again.artifact_dir)}
    assert len(digests) == 1, "two builds of the same tree gave different jars"


def test_extension_enforces_the_policy(built: Built, hivemq: HiveMQ) -> None:
    # An open broker first: without the extension everybody may connect.
    before = Client(hivemq.port, "mallory")
    assert before.accepted
    before.close()

    # Copied in while HiveMQ runs: CE does not notice (no folder watch in CE).
    mark = _log_mark(hivemq)
    hivemq.install_extension(built.extension, EXTENSION_ID)
    time.sleep(3)
    still_open = Client(hivemq.port, "mallory")
    assert still_open.accepted, "HiveMQ CE hot-loaded the extension; update the adapter docs"
    still_open.close()
    assert "deny-test" not in _log_since(hivemq, mark)

    # The next start loads it.
    old_pid = hivemq.pid
    mark = _log_mark(hivemq)
    _restart(hivemq)
    assert hivemq.pid != old_pid
    started = _log_since(hivemq, mark)
    assert STARTED in started
    assert "deny-test started; refusing users [mallory]" in started

    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        refused = Client(hivemq.port, "mallory", protocol=protocol)
        assert not refused.accepted
        assert refused.connect_rc is not None
        assert "not authorized" in str(refused.connect_rc).lower()
        refused.close()

    watcher = Client(hivemq.port, "bob")
    alice = Client(hivemq.port, "alice")
    dave = Client(hivemq.port, "dave")
    try:
        assert alice.accepted
        watcher.subscribe("#")
        # HiveMQ CE answers a refused PUBLISH with the PUBACK reason code (MQTT 5) and then
        # always closes the connection, whatever the QoS or protocol version.
        assert alice.publish("forbidden/x", b"secret").value == NOT_AUTHORIZED
        alice.wait_disconnected()
        assert dave.publish("ok/x", b"hello").value == 0
        # forbidden/x was settled (PUBACK) before ok/x was sent: had it been routed, it would
        # have reached the watcher first.
        watcher.wait_for_message("ok/x")
        assert watcher.messages == [("ok/x", b"hello")]
    finally:
        for c in (watcher, alice, dave):
            c.close()

    carol = Client(hivemq.port, "carol", protocol=mqtt.MQTTv311)
    try:
        carol.publish_qos0("forbidden/x", b"secret")
        carol.wait_disconnected()
    finally:
        carol.close()
    assert watcher.messages == [("ok/x", b"hello")]


def accepted(broker: HiveMQ, user: str) -> bool:
    client = Client(broker.port, user)
    client.close()
    return client.accepted


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.2)


def test_settings_file_changes_apply_without_restart(built: Built, hivemq: HiveMQ) -> None:
    folder = hivemq.install_extension(built.extension, EXTENSION_ID)
    _restart(hivemq)
    settings = folder / "conf/config.properties"
    assert not accepted(hivemq, "mallory")

    settings.write_text("deny_users = eve, trudy\n")
    eventually(lambda: not accepted(hivemq, "eve"), "eve refused after the settings change")
    assert not accepted(hivemq, "trudy")
    assert accepted(hivemq, "mallory")  # the default no longer applies once the setting is given

    # A broken file while running: logged, and the last good settings stay in force.
    mark = _log_mark(hivemq)
    settings.write_text("deny_user=typo\n")

    def reported() -> bool:
        accepted(hivemq, "zoe")  # the extension looks at its settings when a client connects
        return "is invalid, keeping the previous settings" in _log_since(hivemq, mark)

    eventually(reported, "the invalid settings reported in the log")
    assert not accepted(hivemq, "eve")


def test_bad_settings_and_disabled_marker_at_start(built: Built, hivemq: HiveMQ) -> None:
    folder = hivemq.install_extension(built.extension, EXTENSION_ID)
    (folder / "conf/config.properties").write_text("deny_user=typo\n")
    mark = _log_mark(hivemq)
    _restart(hivemq)
    # A bad settings file stops the extension from starting, not the broker.
    log = _log_since(hivemq, mark)
    assert re.search(r"unknown setting 'deny_user' in .*config\.properties", log), log
    assert accepted(hivemq, "mallory")
    # HiveMQ marks an extension that refused to start with DISABLED ...
    assert (folder / "DISABLED").exists()

    # ... and skips a DISABLED extension at the next start even with good settings.
    (folder / "conf/config.properties").write_text("deny_users=mallory\n")
    mark = _log_mark(hivemq)
    _restart(hivemq)
    assert STARTED not in _log_since(hivemq, mark)
    assert accepted(hivemq, "mallory")
