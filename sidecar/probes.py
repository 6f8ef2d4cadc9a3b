"""Post-load smoke tests: real MQTT CONNECT / PUBLISH against the broker, expected outcome.

Probes speak MQTT 5 unless the broker only speaks 3.1.1 (RabbitMQ 3.10). With MQTT 5 a publish
is judged by the PUBACK reason code (mosquitto answers a denied publish with "Not authorized"
instead of dropping it silently as it does for 3.1.1); with 3.1.1 a refused publish is seen only
when the broker closes the connection, as RabbitMQ does.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from plugforge.contract import Probe


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    passed: bool
    outcome: str   # accepted | refused | error
    detail: str

    def __str__(self) -> str:
        return f"probe {self.probe}: {'passed' if self.passed else 'FAILED'} ({self.detail})"


MQTT_VERSIONS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def run_probe(probe: Probe, host: str, port: int, timeout: float = 5.0,
              mqtt_version: str = "5") -> ProbeResult:
    outcome, detail = _attempt(probe, host, port, timeout, MQTT_VERSIONS[mqtt_version])
    passed = outcome == probe.expect
    return ProbeResult(probe.name, passed, outcome,
                       f"{probe.action} as {probe.username!r}: expected {probe.expect}, "
                       f"got {outcome}" + (f" ({detail})" if detail else ""))


def _attempt(probe: Probe, host: str, port: int, timeout: float,
             protocol: MQTTProtocolVersion) -> tuple[str, str]:
    connected = threading.Event()
    acked = threading.Event()
    result: dict[str, str] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plugforge-probe-"
                         f"{uuid.uuid4().hex[:8]}", protocol=protocol)
    if probe.username:
        client.username_pw_set(probe.username, probe.password or None)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode,
                   _p: Properties | None) -> None:
        result["connect"] = "accepted" if not rc.is_failure else "refused"
        result["connect_detail"] = str(rc)
        connected.set()

    def on_publish(_c: mqtt.Client, _u: object, _mid: int, rc: ReasonCode,
                   _p: Properties | None) -> None:
        result["publish"] = "refused" if rc.is_failure else "accepted"
        result["publish_detail"] = str(rc)
        acked.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode,
                      _p: Properties | None) -> None:
        if "connect" not in result:
            result["connect"], result["connect_detail"] = "refused", str(rc)
        connected.set()
        acked.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, port, keepalive=10)
    except OSError as e:
        return "error", f"cannot connect to {host}:{port}: {e}"
    client.loop_start()
    try:
        if not connected.wait(timeout):
            return "error", "no CONNACK"
        if probe.action == "connect" or result["connect"] == "refused":
            outcome = result["connect"]
            if probe.action == "publish" and outcome == "refused":
                return "refused", f"connect refused: {result['connect_detail']}"
            return outcome, result["connect_detail"]
        client.publish(probe.topic, b"plugforge-probe", qos=1)
        if not acked.wait(timeout):
            return "error", "no PUBACK"
        return result.get("publish", "refused"), result.get("publish_detail", "disconnected")
    finally:
        client.disconnect()
        client.loop_stop()
