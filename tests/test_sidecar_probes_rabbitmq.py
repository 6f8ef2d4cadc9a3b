"""Probes speak the MQTT version the broker does: RabbitMQ 3.10 (real node) speaks only 3.1.1."""

from __future__ import annotations

import uuid

import pytest

from plugforge.contract import Probe
from sidecar.adapters.registry import probe_mqtt_version
from sidecar.probes import run_probe
from sidecar.settings import parse_args
from testbed.rabbitmq import RabbitMQ


def test_rabbitmq_probes_use_mqtt_311(rabbitmq: RabbitMQ) -> None:
    user, password = f"probe-{uuid.uuid4().hex[:6]}", "probe-password"
    rabbitmq.rabbitmqctl("add_user", user, password)
    rabbitmq.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    try:
        login = Probe("login", "connect", user, "accepted", password=password)
        wrong = Probe("wrong-password", "connect", user, "refused", password="nope")
        publish = Probe("publish", "publish", user, "accepted", password=password, topic="ok/x")

        version = probe_mqtt_version("rabbitmq")
        assert version == "3.1.1"
        for probe in (login, wrong, publish):
            result = run_probe(probe, "127.0.0.1", rabbitmq.mqtt_port, mqtt_version=version)
            assert result.passed, result
        # The reason for the per-broker version: MQTT 5 sees even a valid login refused.
        assert not run_probe(login, "127.0.0.1", rabbitmq.mqtt_port, mqtt_version="5").passed
    finally:
        rabbitmq.rabbitmqctl("delete_user", user)


def test_unknown_probe_version_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--broker", "mosquitto", "--config-dir", "/x", "--probe-mqtt-version", "4"])
    assert exit_.value.code == 2
    assert "invalid choice: '4'" in capsys.readouterr().err


def test_probe_version_defaults_to_the_brokers() -> None:
    common = ["--config-dir", "/x", "--allow-unsigned-images"]
    assert parse_args(["--broker", "rabbitmq", *common]).probe_mqtt_version == "3.1.1"
    assert parse_args(["--broker", "mosquitto", *common]).probe_mqtt_version == "5"
    assert parse_args(["--broker", "rabbitmq", *common,
                       "--probe-mqtt-version", "5"]).probe_mqtt_version == "5"
