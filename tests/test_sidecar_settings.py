"""Flags and environment into Settings; the CLI's exit codes; pulling with registry credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import REGISTRY_CREDENTIALS

from plugforge.oci import PermanentRegistryError, RegistryClient, parse_reference
from sidecar.__main__ import main
from sidecar.images import ImagePuller
from sidecar.settings import SettingsError, parse_args
from testbed.registry import Registry


def test_flags_and_environment() -> None:
    s = parse_args(["--broker", "mosquitto", "--config-dir", "/a", "--config-dir", "/b",
                    "--adapter-opt", "port=1884", "--adapter-opt", "conf_dir=/c",
                    "--debounce", "0", "--allow-broker-restart", "--allow-unsigned-images"],
                   {"POD_NAME": "mq-0", "POD_NAMESPACE": "brokers"})
    assert s.config_dirs == (Path("/a"), Path("/b"))
    assert s.adapter_options == {"port": "1884", "conf_dir": "/c"}
    assert s.debounce == 0 and s.allow_broker_restart
    assert (s.pod_name, s.pod_namespace, s.namespace) == ("mq-0", "brokers", "brokers")
    assert s.probe_port == 1884 and s.resync_interval == 30.0


@pytest.mark.parametrize(("argv", "message"), [
    (["--adapter-opt", "novalue"], "expected KEY=VALUE"),
    (["--source", "api"], "needs at least one --configmap"),
    (["--source", "files"], "needs at least one --config-dir"),
    (["--config-dir", "/a", "--debounce", "-1"], "--debounce: expected >= 0"),
    (["--config-dir", "/a", "--grpc-address", "0.0.0.0:9443", "--grpc-token-file", "/t"],
     "--grpc-address needs --grpc-tls-cert, --grpc-tls-key: the API is only served over TLS"),
    (["--config-dir", "/a", "--grpc-address", "0.0.0.0:9443", "--grpc-tls-cert", "/c",
      "--grpc-tls-key", "/k"], "--grpc-address needs --grpc-token-file"),
])
def test_bad_flags_explain(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_args(["--broker", "mosquitto", *argv], {})


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--broker", "mosquitto", "--source", "api"]) == 2
    assert "--configmap" in capsys.readouterr().err
    assert main(["--broker", "mosquitto", "--config-dir", "/nonexistent",
                 "--allow-unsigned-images"]) == 2
    assert "conf_dir" in capsys.readouterr().err  # the adapter says which options it needs
    assert main(["--broker", "nosuchbroker", "--config-dir", "/x", "--allow-unsigned-images"]) == 2
    err = capsys.readouterr().err
    assert "no adapter for broker 'nosuchbroker'" in err and "mosquitto" in err
    (tmp_path / "m.conf").touch()
    assert main(["--broker", "mosquitto", "--config-dir", str(tmp_path / "not-mounted"),
                 "--plugin-dir", str(tmp_path / "p"), "--cache-dir", str(tmp_path / "c"),
                 "--adapter-opt", f"conf_dir={tmp_path}",
                 "--adapter-opt", f"config_path={tmp_path / 'm.conf'}",
                 "--http-address", "127.0.0.1:0", "--allow-unsigned-images"]) == 2
    assert "not-mounted: cannot watch it (No such file or directory); expected a mounted " \
        "ConfigMap directory" in capsys.readouterr().err
    (tmp_path / "cm").mkdir()
    (tmp_path / "empty-token").write_text("\n")
    assert main(["--broker", "mosquitto", "--config-dir", str(tmp_path / "cm"),
                 "--plugin-dir", str(tmp_path / "p"), "--cache-dir", str(tmp_path / "c"),
                 "--adapter-opt", f"conf_dir={tmp_path}",
                 "--adapter-opt", f"config_path={tmp_path / 'm.conf'}",
                 "--http-address", "127.0.0.1:0",
                 "--grpc-address", "127.0.0.1:0", "--grpc-tls-cert", str(tmp_path / "c.pem"),
                 "--grpc-tls-key", str(tmp_path / "k.pem"),
                 "--grpc-token-file", str(tmp_path / "empty-token"),
                 "--allow-unsigned-images"]) == 2
    assert "--grpc-token-file: token file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def auth_image(registry_auth: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    from plugforge.oci import ImageMetadata, pack_image
    artifact = tmp_path_factory.mktemp("artifact")
    (artifact / "p.so").write_bytes(b"not really a library")
    image = pack_image(artifact, ImageMetadata("https://git.test/p.git", "r1", "mosquitto",
                                               "p", "1.0"))
    from plugforge.oci import Credentials
    with RegistryClient(registry_auth.host, ca_bundle=registry_auth.ca.cert,
                        credentials=Credentials(*REGISTRY_CREDENTIALS)) as client:
        pinned = client.push_image(parse_reference(f"{registry_auth.host}/private/p:1"), image)
    return f"{registry_auth.host}/private/p@{pinned.digest}"


def test_pull_with_dockerconfigjson_credentials(registry_auth: Registry, auth_image: str,
                                                tmp_path: Path) -> None:
    user, password = REGISTRY_CREDENTIALS
    config = tmp_path / ".dockerconfigjson"
    config.write_text(json.dumps({"auths": {registry_auth.host: {
        "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    puller = ImagePuller(tmp_path / "cache", ca_bundle=registry_auth.ca.cert,
                         docker_config=config)
    tree = puller(auth_image)
    assert (tree / "plugin" / "p" / "p.so").read_bytes() == b"not really a library"
    assert puller(auth_image) == tree and puller.pulls == 1  # content-addressed cache

    anonymous = ImagePuller(tmp_path / "cache2", ca_bundle=registry_auth.ca.cert)
    with pytest.raises(PermanentRegistryError, match="credentials"):
        anonymous(auth_image)


