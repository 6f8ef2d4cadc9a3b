"""Shared by the gRPC, rollout and CLI tests: a real builder serving its gRPC API over TLS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from builder_support import fast_settings, templates_in_use, wait_for

from builder.app import Builder
from plugforge.grpc_auth import secure_channel
from plugforge.v1 import build_pb2_grpc
from testbed.certs import CertificateAuthority
from testbed.kube import ControlPlane

TOKENS = {"alice": "alice-token-0123456789", "ci": "ci-token-9876543210"}
SIDECAR_TOKEN = "sidecar-token-abcdef"


@dataclass(frozen=True)
class Api:
    builder: Builder
    address: str
    ca: Path
    token_files: dict[str, Path]

    def stub(self, token: str | None = TOKENS["alice"]) -> build_pb2_grpc.BuildServiceStub:
        return build_pb2_grpc.BuildServiceStub(secure_channel(self.address, self.ca, token))

    def cli_flags(self, user: str = "alice") -> list[str]:
        return ["--builder", self.address, "--ca-file", str(self.ca),
                "--token-file", str(self.token_files[user])]


def start_builder_api(cp: ControlPlane, ca: CertificateAuthority, state: Path, name: str,
                      registry_ca: Path, *, watch_namespace: str, **overrides: object) -> Api:
    """The builder as the ``builder`` identity, its BuildService on 127.0.0.1:<free> (TLS)."""
    state.mkdir(parents=True, exist_ok=True)
    tokens = state / "api-tokens"
    tokens.write_text("".join(f"{user}@*:{token}\n" for user, token in TOKENS.items()))
    token_files = {}
    for user, token in TOKENS.items():
        token_files[user] = state / f"{user}.token"
        token_files[user].write_text(token + "\n")
    (state / "wrong.token").write_text("not-a-valid-token\n")
    token_files["wrong"] = state / "wrong.token"
    (state / "sidecar.token").write_text(SIDECAR_TOKEN + "\n")
    pair = ca.issue(f"{name}-grpc")
    settings = fast_settings(
        cp, registry_ca, name, f"{name}-1", state, watch_namespace=watch_namespace,
        grpc_address=("127.0.0.1", 0),
        grpc_token_file=tokens, grpc_tls_cert=pair.cert, grpc_tls_key=pair.key,
        sidecar_token_file=state / "sidecar.token", sidecar_ca=ca.cert, **overrides)
    b = Builder(settings)
    b.start()
    wait_for(lambda: b.serving.is_set() and b.leading, "the builder to serve and lead")
    return Api(b, f"127.0.0.1:{b.grpc_port}", ca.cert, token_files)


@contextmanager
def rollout_builder_api(cp: ControlPlane, ca: CertificateAuthority, registry_ca: Path,
                        tmp_path_factory: pytest.TempPathFactory, name: str,
                        namespace: str) -> Iterator[Api]:
    """``start_builder_api`` for the rollout tests: templates whose slow step takes 1 s, the
    builder stopped on leaving."""
    with templates_in_use(tmp_path_factory.mktemp("templates"), slow_seconds=1):
        api = start_builder_api(cp, ca, tmp_path_factory.mktemp("builder"), name, registry_ca,
                                watch_namespace=namespace)
        try:
            yield api
        finally:
            api.builder.stop()
