"""Post-load smoke tests: real MQTT CONNECT / PUBLISH against the broker, expected outcome.

Probes speak MQTT 5 unless the broker only speaks 3.1.1 (RabbitMQ 3.10). With MQTT 5 a publish
is judged by the PUBACK reason code (mosquitto answers a denied publish with "Not authorized"
instead of dropping it silently as it does for 3.1.1); with 3.1.1 a refused publish is seen only
when the broker closes the connection, as RabbitMQ does.

A probe's password comes from a Secret mounted into the sidecar (``passwordFrom``): read from
``<secrets_dir>/<secret>/<key>`` at each run, so a rotated Secret is used at the next probe, and
never put in a result, log or metric. A missing or unreadable file fails the probe with the path.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from plugforge.contract import Probe, SecretKeyRef

DEFAULT_SECRETS_DIR = Path("/etc/plugforge/probe-secrets")


class ProbeSecretError(Exception):
    """The Secret key a probe names is not there (not mounted, no such key, unreadable)."""


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    passed: bool
    outcome: str   # accepted | refused | error
    detail: str

    def __str__(self) -> str:
        return f"probe {self.probe}: {'passed' if self.passed else 'FAILED'} ({self.detail})"


MQTT_VERSIONS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def read_password(ref: SecretKeyRef, secrets_dir: Path) -> str:
    """The value of ``ref`` in the mounted Secrets (one trailing newline dropped)."""
    path = secrets_dir / ref.secret / ref.key  # both one safe segment (contract-checked)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProbeSecretError(
            f"passwordFrom {ref.secret}/{ref.key}: no file {path} (is Secret {ref.secret!r} "
            f"with key {ref.key!r} mounted at {secrets_dir / ref.secret}?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProbeSecretError(f"passwordFrom {ref.secret}/{ref.key}: cannot read {path}: "
                               f"{type(e).__name__}") from None
    return text[:-1] if text.endswith("\n") else text


def run_probe(probe: Probe, host: str, port: int, timeout: float = 5.0,
              mqtt_version: str = "5", secrets_dir: Path = DEFAULT_SECRETS_DIR,
              password: str | None = None) -> ProbeResult:
    """Run ``probe``; its password is ``password`` when given (test clients), else read from
    its ``passwordFrom`` key under ``secrets_dir``."""
    if password is None and probe.password_from is not None:
        try:
            password = read_password(probe.password_from, secrets_dir)
        except ProbeSecretError as e:
            return ProbeResult(probe.name, False, "error",
                               f"{probe.action} as {probe.username!r}: not run: {e}")
    outcome, detail = _attempt(probe, password or "", host, port, timeout,
                               MQTT_VERSIONS[mqtt_version])
    passed = outcome == probe.expect
    return ProbeResult(probe.name, passed, outcome,
                       f"{probe.action} as {probe.username!r}: expected {probe.expect}, "
                       f"got {outcome}" + (f" ({detail})" if detail else ""))


def _attempt(probe: Probe, password: str, host: str, port: int, timeout: float,
             protocol: MQTTProtocolVersion) -> tuple[str, str]:
    connected = threading.Event()
    acked = threading.Event()
    result: dict[str, str] = {}
    # No paho reconnects: after a refused CONNECT its loop thread would sleep up to 1 s in
    # its reconnect wait, and loop_stop below waits for it (1 s added to a refusal probe).
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plugforge-probe-"
                         f"{uuid.uuid4().hex[:8]}", protocol=protocol, reconnect_on_failure=False)
    if probe.username:
        client.username_pw_set(probe.username, password or None)

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
