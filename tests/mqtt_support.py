"""A real MQTT client (paho) whose outcomes tests can await: CONNACK, PUBACK, messages, drops."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code in CONNACK and PUBACK
TIMEOUT = 10.0
ANY_PASSWORD = "any-password"  # the sample plugins check no passwords


class Client:
    """Connects on construction and waits for the CONNACK (``connect_rc``).

    Never reconnects: a broker closing the connection is an outcome tests want to see.
    """

    def __init__(self, port: int, username: str, *, password: str = ANY_PASSWORD,
                 protocol: MQTTProtocolVersion = mqtt.MQTTv5, host: str = "127.0.0.1") -> None:
        self._state = threading.Condition()
        self.connect_rc: ReasonCode | None = None
        self.disconnected = False
        self.subscribed = False
        self.puback: dict[int, ReasonCode] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.username = username
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol,
                             client_id=f"{username}-{uuid.uuid4().hex[:8]}",
                             reconnect_on_failure=False)
        self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.connect(host, port)
        self.c.loop_start()
        self._wait(lambda: self.connect_rc is not None or self.disconnected, "a CONNACK")

    @property
    def accepted(self) -> bool:
        return self.connect_rc is not None and not self.connect_rc.is_failure

    @property
    def connected(self) -> bool:
        return self.c.is_connected()

    def _wait(self, done: object, what: str, timeout: float = TIMEOUT) -> None:
        with self._state:
            assert self._state.wait_for(done, timeout=timeout), (  # type: ignore[arg-type]
                f"{self.username}: no {what} within {timeout:g}s")

    def _notify(self) -> None:
        with self._state:
            self._state.notify_all()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connect_rc = rc
        self._notify()

    def _on_disconnect(self, _c: object, _u: object, _f: object, _rc: object, _p: object) -> None:
        self.disconnected = True
        self._notify()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        self.puback[mid] = rc
        self._notify()

    def _on_subscribe(self, *_args: object) -> None:
        self.subscribed = True
        self._notify()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.append((msg.topic, bytes(msg.payload)))
        self._notify()

    def subscribe(self, topic: str) -> None:
        self.subscribed = False
        self.c.subscribe(topic, qos=1)
        self._wait(lambda: self.subscribed, f"SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code (MQTT 5)."""
        mid = self.c.publish(topic, payload, qos=1).mid
        self._wait(lambda: mid in self.puback, f"PUBACK for {topic}")
        return self.puback[mid]

    def publish_qos0(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=0).wait_for_publish(TIMEOUT)

    def wait_for_message(self, topic: str, timeout: float = TIMEOUT) -> None:
        self._wait(lambda: any(t == topic for t, _ in self.messages),
                   f"message on {topic} (got {self.messages})", timeout)

    def wait_disconnected(self, timeout: float = TIMEOUT) -> None:
        self._wait(lambda: self.disconnected, "disconnect", timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
