"""The bearer token flow against docker-registry in token-auth mode and a real token service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plugforge.oci import (
    PLUGIN_ROOT,
    Credentials,
    ImageMetadata,
    PermanentRegistryError,
    RegistryClient,
    pack_image,
    parse_reference,
    pull_image,
)
from testbed.certs import CertificateAuthority
from testbed.tokenauth import SERVICE, TokenRegistry, start_token_registry

USERS = {"robot": "t0ken-pass"}


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory,
                   testbed_ca: CertificateAuthority) -> Iterator[TokenRegistry]:
    reg = start_token_registry(tmp_path_factory.mktemp("token-registry"), testbed_ca, USERS)
    yield reg
    reg.stop()


def client(reg: TokenRegistry, ca: CertificateAuthority,
           credentials: Credentials | None) -> RegistryClient:
    return RegistryClient(reg.host, ca_bundle=ca.cert, credentials=credentials)


def test_push_and_pull_with_bearer_tokens(token_registry: TokenRegistry,
                                          testbed_ca: CertificateAuthority,
                                          tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "plugin.so").write_bytes(b"\x7fELF-token")
    image = pack_image(artifact, ImageMetadata("https://git.example.com/t.git", "1" * 40,
                                               "mosquitto", "tok", "1.0"))
    with client(token_registry, testbed_ca, Credentials("robot", USERS["robot"])) as c:
        pinned = c.push_image(parse_reference(f"{token_registry.host}/team/tok:1"), image)
        tree = pull_image(c, pinned, tmp_path / "cache")
    assert (tree / PLUGIN_ROOT / "tok" / "plugin.so").read_bytes() == b"\x7fELF-token"
    asked = {(_actions(r.get("scope", "")), r["user"], r.get("service"))
             for r in token_registry.tokens.requests}
    assert (frozenset({"pull"}), "robot", SERVICE) in asked
    assert (frozenset({"pull", "push"}), "robot", SERVICE) in asked


def _actions(scope: str) -> frozenset[str]:
    assert scope.startswith("repository:team/tok:")
    return frozenset(scope.rpartition(":")[2].split(","))


def test_token_service_refusing_credentials(token_registry: TokenRegistry,
                                            testbed_ca: CertificateAuthority) -> None:
    ref = parse_reference(f"{token_registry.host}/team/tok@sha256:{'1' * 64}")
    with client(token_registry, testbed_ca, Credentials("robot", "wrong-pass")) as c, \
            pytest.raises(PermanentRegistryError) as info:
        c.pull_manifest(ref)
    assert "refused a token for scope 'repository:team/tok:pull' (HTTP 401)" in str(info.value)
    assert "wrong-pass" not in str(info.value)


def test_anonymous_token_without_access(token_registry: TokenRegistry,
                                        testbed_ca: CertificateAuthority) -> None:
    ref = parse_reference(f"{token_registry.host}/team/tok@sha256:{'1' * 64}")
    with client(token_registry, testbed_ca, None) as c, \
            pytest.raises(PermanentRegistryError, match="refused the credentials of anonymous"):
        c.pull_manifest(ref)
