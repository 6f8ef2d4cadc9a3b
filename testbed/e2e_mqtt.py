"""Real MQTT clients for the e2e flows: one-shot outcomes (the sidecar's own probe code), clients
that stay connected and count drops, and a message-size check."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from plugforge.contract import Probe, ProbeAction
from sidecar.probes import run_probe
from testbed.e2e_cluster import check


def outcome(port: int, action: str, username: str, topic: str = "",
            mqtt_version: str = "5") -> str:
    """accepted | refused | error, from a real MQTT client (the sidecar's own probe code)."""
    kind: ProbeAction = "publish" if action == "publish" else "connect"
    return run_probe(Probe(f"{action}-{username}", kind, username, "accepted", topic=topic),
                     "127.0.0.1", port, mqtt_version=mqtt_version,
                     password="any-password").outcome  # noqa: S106 (the rigs' users)


class Watcher:
    """A client connected before a change; counts how often the broker dropped it."""

    def __init__(self, port: int, username: str, mqtt_version: str = "5") -> None:
        self.disconnects = 0
        self.connected = threading.Event()
        protocol = mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol,
                             client_id=f"{username}-{uuid.uuid4().hex[:6]}",
                             reconnect_on_failure=False)
        self.c.username_pw_set(username, "any-password")
        self.c.on_connect = lambda _c, _u, _f, rc, _p: (
            self.connected.set() if not rc.is_failure else None)
        self.c.on_disconnect = self._on_disconnect
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        if not self.connected.wait(10):
            raise AssertionError(f"{username} could not connect")

    def _on_disconnect(self, *_args: object) -> None:
        self.disconnects += 1

    def still_connected(self) -> bool:
        return self.c.is_connected()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def big_message_delivered(port: int, username: str, size: int = 6000) -> bool:
    """Publish ``size`` bytes then a small marker to ourselves: did the big one arrive?
    A broker that closes the connection over it (EMQX's ``mqtt.max_packet_size``) did not
    deliver it either."""
    got: list[str] = []
    ready, marker, dropped = threading.Event(), threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                    client_id=f"big-{uuid.uuid4().hex[:6]}", reconnect_on_failure=False)
    c.username_pw_set(username, "any-password")
    topic = f"sizes/{uuid.uuid4().hex[:6]}"

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.topic)
        if msg.topic.endswith("/marker"):
            marker.set()

    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    c.on_subscribe = lambda *_a: ready.set()
    c.on_message = on_message
    c.on_disconnect = lambda *_a: dropped.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        # After the CONNACK: VerneMQ 2.0.1 at times drops a SUBSCRIBE that arrives with the
        # CONNECT, before it has authenticated the client (no SUBACK ever comes).
        check(connected.wait(10), "no CONNACK within 10s")
        c.subscribe(f"{topic}/#", qos=1)
        check(ready.wait(10), "no SUBACK within 10s")
        c.publish(f"{topic}/big", b"x" * size, qos=0)
        c.publish(f"{topic}/marker", b"m", qos=1)
        deadline = time.monotonic() + 10
        while not (marker.wait(0.05) or dropped.is_set()):
            check(time.monotonic() < deadline, "the marker message did not come back within 10s")
        return f"{topic}/big" in got
    finally:
        c.disconnect()
        c.loop_stop()
