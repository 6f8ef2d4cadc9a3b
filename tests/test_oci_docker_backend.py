"""The docker-SDK push backend against a real podman service and the real registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import REGISTRY_CREDENTIALS

from plugforge.oci import (
    PLUGIN_ROOT,
    Credentials,
    ImageMetadata,
    PermanentRegistryError,
    RegistryClient,
    parse_reference,
    pull_image,
)
from plugforge.oci.docker_backend import DockerEngineError, push_with_docker
from testbed.podman import PodmanService
from testbed.procs import free_port
from testbed.registry import Registry

META = ImageMetadata(source="https://git.example.com/team/hive.git", revision="f" * 40,
                     broker="hivemq", plugin_name="hive-auth", plugin_version="2.0.0")


def make_artifact(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "hive-auth.jar").write_bytes(b"PK\x03\x04" + os.urandom(4096))
    (root / "lib" / "dep.jar").write_bytes(b"PK\x03\x04dep")
    (root / "bin").mkdir()
    (root / "bin" / "check.sh").write_text("#!/bin/sh\nexit 0\n")
    (root / "bin" / "check.sh").chmod(0o755)
    return root


def files_of(tree: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(tree).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(tree.rglob("*")) if p.is_file()}


def test_docker_backend_pushes_files_that_pull_back_identically(
        podman_service: PodmanService, registry: Registry, tmp_path: Path) -> None:
    podman_service.trust_registry(registry.host, registry.ca.cert)
    artifact = make_artifact(tmp_path / "artifact")
    ref = parse_reference(f"{registry.host}/team/hive-auth:2.0.0")
    pinned = push_with_docker(artifact, META, ref, docker_url=podman_service.url)
    assert pinned.tag == "2.0.0" and pinned.digest is not None
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        tree = pull_image(client, pinned, tmp_path / "cache")
    pulled = files_of(tree / PLUGIN_ROOT / "hive-auth")
    assert pulled == files_of(artifact)
    assert pulled["bin/check.sh"][1] == 0o755 and pulled["lib/dep.jar"][1] == 0o644
    config = json.loads((tree.parent / "config.json").read_bytes())
    labels = config["config"]["Labels"]
    assert {k: labels[k] for k in META.annotations()} == META.annotations()  # + buildah's own


def test_docker_backend_with_basic_auth(podman_service: PodmanService,
                                        registry_auth: Registry, tmp_path: Path) -> None:
    podman_service.trust_registry(registry_auth.host, registry_auth.ca.cert)
    artifact = make_artifact(tmp_path / "artifact")
    ref = parse_reference(f"{registry_auth.host}/team/hive-private:1")
    credentials = Credentials(*REGISTRY_CREDENTIALS)
    pinned = push_with_docker(artifact, META, ref, docker_url=podman_service.url,
                              credentials=credentials)
    with RegistryClient(registry_auth.host, ca_bundle=registry_auth.ca.cert,
                        credentials=credentials) as client:
        _, manifest = client.pull_manifest(pinned)
    assert len(manifest.layers) == 1

    wrong = Credentials(REGISTRY_CREDENTIALS[0], "not-the-password")
    with pytest.raises(PermanentRegistryError) as info:
        push_with_docker(artifact, META, ref, docker_url=podman_service.url, credentials=wrong)
    assert "not-the-password" not in str(info.value)


def test_docker_backend_engine_down(tmp_path: Path) -> None:
    ref = parse_reference(f"127.0.0.1:{free_port()}/team/x:1")
    with pytest.raises(DockerEngineError, match="cannot reach the Docker-API engine"):
        push_with_docker(make_artifact(tmp_path / "a"), META, ref,
                         docker_url=f"unix://{tmp_path}/missing.sock")
