"""mosquitto-c end to end: `plugforge new` → `plugforge build --local` → real mosquitto 2.0 loads
the .so → real MQTT clients (paho) see the policy: deny_users refused at CONNECT, PUBLISH under
forbidden/ refused and never delivered, everything else allowed.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from plugforge.cli import main
from testbed.mosquitto import Mosquitto, MosquittoConfig, start_mosquitto

pytestmark = pytest.mark.timeout(120)


@dataclass
class Built:
    repo: Path
    plugin: Path
    artifact_dir: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("mosquitto-c")
    repo = root / "deny-test"
    assert main(["new", "--broker", "mosquitto", "deny-test", "--dir", str(repo)]) == 0
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    artifact_dir = work / "artifact"
    return Built(repo=repo, plugin=artifact_dir / "deny_test.so", artifact_dir=artifact_dir)


@pytest.fixture(scope="module")
def broker(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    m = start_mosquitto(tmp_path_factory.mktemp("mosquitto-broker"),
                        MosquittoConfig(plugin=built.plugin,
                                        plugin_options={"deny_users": "mallory"}))
    yield m
    m.stop()


class Client:
    """A paho client whose CONNACK/PUBACK outcomes and received messages can be awaited."""

    def __init__(self, port: int, username: str | None,
                 protocol: MQTTProtocolVersion = mqtt.MQTTv5) -> None:
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.connect_rc: ReasonCode | None = None
        self.puback: dict[int, ReasonCode] = {}
        self.acked = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.got_message = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol,
                             client_id=f"{username or 'anon'}-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.c.username_pw_set(username, "any-password")
        self.c.on_connect = self._on_connect
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), "no CONNACK within 10s"

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connect_rc = rc
        self.connected.set()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self.acked:
            self.puback[mid] = rc
            self.acked.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.got_message:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.got_message.notify_all()

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        mid = self.c.publish(topic, payload, qos=1).mid
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.puback, timeout=10), "no PUBACK"
            return self.puback[mid]

    def wait_for_message(self, topic: str) -> None:
        with self.got_message:
            assert self.got_message.wait_for(
                lambda: any(t == topic for t, _ in self.messages), timeout=10), \
                f"{topic} not delivered; got {self.messages}"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_build_produces_one_shared_object_with_the_v5_entry_points(built: Built) -> None:
    files = sorted(p.relative_to(built.artifact_dir).as_posix()
                   for p in built.artifact_dir.rglob("*"))
    assert files == ["deny_test.so"]
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built.plugin)], check=True,
                             capture_output=True, text=True).stdout
    for entry in ("mosquitto_plugin_version", "mosquitto_plugin_init", "mosquitto_plugin_cleanup"):
        assert f" T {entry}\n" in symbols
    # The scaffolded repo is a real Git repo with the placeholders replaced.
    log = subprocess.run(["git", "-C", str(built.repo), "log", "--format=%s"], check=True,
                         capture_output=True, text=True).stdout
    assert log.strip() == "Scaffold deny-test from mosquitto-c"
    assert (built.repo / "src" / "deny_test.c").is_file()
    assert '#define PLUGIN_NAME "deny_test"' in (built.repo / "src/plugin_info.h").read_text()


def test_same_commit_builds_the_same_bytes(built: Built, tmp_path: Path) -> None:
    assert main(["build", "--local", str(built.repo), "--work-dir", str(tmp_path),
                 "--quiet"]) == 0
    assert (tmp_path / "artifact" / "deny_test.so").read_bytes() == built.plugin.read_bytes()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_denied_user_is_refused_at_connect(broker: Mosquitto,
                                           protocol: MQTTProtocolVersion) -> None:
    client = Client(broker.port, "mallory", protocol)
    try:
        assert client.connect_rc is not None and client.connect_rc.is_failure
        assert "not authorized" in str(client.connect_rc).lower()
    finally:
        client.close()
    assert "deny_test: refusing CONNECT of user mallory" in broker.log_tail(200)


def test_other_user_connects(broker: Mosquitto) -> None:
    client = Client(broker.port, "alice")
    try:
        assert client.connect_rc is not None and not client.connect_rc.is_failure
    finally:
        client.close()


def test_anonymous_is_left_to_allow_anonymous(broker: Mosquitto) -> None:
    # The plugin defers clients without a username; the fixture runs allow_anonymous false.
    client = Client(broker.port, None)
    try:
        assert client.connect_rc is not None and client.connect_rc.is_failure
    finally:
        client.close()


def test_publish_under_forbidden_is_refused_and_not_delivered(broker: Mosquitto) -> None:
    watcher = Client(broker.port, "bob")
    publisher = Client(broker.port, "alice")
    try:
        watcher.c.subscribe("#", qos=1)
        assert watcher.subscribed.wait(10)
        refused = publisher.publish("forbidden/x", b"secret")
        allowed = publisher.publish("ok/x", b"hello")
        # MQTT 5 PUBACK carries the refusal: 0x87 Not authorized.
        assert refused.value == 0x87, str(refused)
        assert allowed.value == 0, str(allowed)
        # Same publisher, same session: ok/x arriving means forbidden/x would have arrived first.
        watcher.wait_for_message("ok/x")
        assert watcher.messages == [("ok/x", b"hello")]
    finally:
        watcher.close()
        publisher.close()
    assert "deny_test: refusing PUBLISH to forbidden/x" in broker.log_tail(200)


def test_deny_users_option_reaches_the_plugin(built: Built, tmp_path: Path) -> None:
    other = start_mosquitto(tmp_path, MosquittoConfig(
        plugin=built.plugin, plugin_options={"deny_users": " eve , trudy "}))
    try:
        eve, trudy, mallory = (Client(other.port, u) for u in ("eve", "trudy", "mallory"))
        for c in (eve, trudy, mallory):
            c.close()
        assert eve.connect_rc is not None and eve.connect_rc.is_failure
        assert trudy.connect_rc is not None and trudy.connect_rc.is_failure
        # The default (mallory) no longer applies once the option is set.
        assert mallory.connect_rc is not None and not mallory.connect_rc.is_failure
    finally:
        other.stop()
