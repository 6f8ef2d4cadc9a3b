"""Probes speak the MQTT version the broker does: RabbitMQ 3.10 (real node) speaks only 3.1.1."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from plugforge.contract import Probe, SecretKeyRef
from sidecar.adapters.registry import probe_mqtt_version
from sidecar.probes import run_probe
from sidecar.settings import parse_args
from testbed.rabbitmq import RabbitMQ


def test_rabbitmq_probes_use_mqtt_311(rabbitmq: RabbitMQ, tmp_path: Path) -> None:
    """Also: the password a probe sends is the mounted Secret key's (a wrong one is refused)."""
    user, password = f"probe-{uuid.uuid4().hex[:6]}", "probe-password"
    rabbitmq.rabbitmqctl("add_user", user, password)
    rabbitmq.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    mounted = tmp_path / "probe-creds"  # the Secret as the kubelet mounts it
    mounted.mkdir()
    (mounted / "good").write_text(password + "\n")  # `kubectl create secret --from-file`
    (mounted / "wrong").write_text("nope")
    good, bad = SecretKeyRef("probe-creds", "good"), SecretKeyRef("probe-creds", "wrong")
    try:
        login = Probe("login", "connect", user, "accepted", good)
        wrong = Probe("wrong-password", "connect", user, "refused", bad)
        publish = Probe("publish", "publish", user, "accepted", good, topic="ok/x")

        version = probe_mqtt_version("rabbitmq")
        assert version == "3.1.1"
        for probe in (login, wrong, publish):
            result = run_probe(probe, "127.0.0.1", rabbitmq.mqtt_port, mqtt_version=version,
                               secrets_dir=tmp_path)
            assert result.passed, result
        # The reason for the per-broker version: MQTT 5 sees even a valid login refused.
        assert not run_probe(login, "127.0.0.1", rabbitmq.mqtt_port, mqtt_version="5",
                             secrets_dir=tmp_path).passed
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


def test_probe_secrets_dir_is_a_flag_with_a_default() -> None:
    common = ["--broker", "mosquitto", "--config-dir", "/x", "--allow-unsigned-images"]
    assert parse_args(common).probe_secrets_dir == Path("/etc/plugforge/probe-secrets")
    assert parse_args([*common, "--probe-secrets-dir", "/s"]).probe_secrets_dir == Path("/s")


def test_an_unmounted_probe_secret_is_a_probe_error_naming_the_path(tmp_path: Path) -> None:
    """Nothing is sent to the broker (the port is closed): the probe fails on the file."""
    probe = Probe("login", "connect", "alice", "accepted", SecretKeyRef("creds", "alice"))
    result = run_probe(probe, "127.0.0.1", 9, secrets_dir=tmp_path)
    assert (result.passed, result.outcome) == (False, "error")
    assert f"no file {tmp_path / 'creds' / 'alice'}" in result.detail
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "alice").write_bytes(b"\xff\xfe")
    assert "cannot read" in run_probe(probe, "127.0.0.1", 9, secrets_dir=tmp_path).detail
