"""Bearer-token authentication for plugforge's gRPC services (builder and sidecar), both ends.

Server side: ``TokenAuth`` refuses every call whose ``authorization`` metadata is not
``Bearer <a known token>`` with ``UNAUTHENTICATED``; tokens are compared in constant time and
never logged. Client side: ``secure_channel`` is TLS (a private CA) plus the token as call
credentials, which gRPC only sends over a secure channel.

Token files (mounted Secrets) hold one token per line, optionally named: ``alice:<token>``.
A bare token is named ``token-1``, ``token-2`` ... by line; the name is who the caller is
(e.g. the ``user`` of a manually triggered build).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

METADATA_KEY = "authorization"


class TokenFileError(ValueError):
    pass


def read_tokens(path: Path) -> dict[str, str]:
    """``{name: token}`` from a token file (see the module doc)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenFileError(f"token file {path}: cannot read it: {e.strerror}") from e
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = f"token-{number}", line
        if not token.strip() or not name.strip():
            raise TokenFileError(f"token file {path} line {number}: expected TOKEN or "
                                 "NAME:TOKEN, found an empty name or token")
        tokens[name.strip()] = token.strip()
    if not tokens:
        raise TokenFileError(f"token file {path}: no token in it; write one token per line")
    return tokens


def read_client_token(path: Path) -> str:
    """The token a client presents: the file's only token (a bare token or ``NAME:TOKEN``)."""
    tokens = read_tokens(path)
    if len(tokens) != 1:
        raise TokenFileError(f"token file {path}: a client token file holds exactly one token, "
                             f"found {len(tokens)}")
    return next(iter(tokens.values()))


class Authenticator:
    """Who presented ``metadata``'s bearer token, or None. Constant time over all tokens."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("an Authenticator needs at least one token")
        self._expected = [(name, f"Bearer {token}".encode()) for name, token in tokens.items()]

    def caller(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        given = b""
        for key, value in metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else bytes(value)
        found: str | None = None
        for name, expected in self._expected:  # no early exit: timing says nothing
            if hmac.compare_digest(given, expected):
                found = name
        return found


class TokenAuth(grpc.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses calls without a known bearer token (``UNAUTHENTICATED``)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

        def deny(_request: object, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong bearer token in 'authorization' metadata")

        def deny_stream(_request: object, context: grpc.ServicerContext) -> Any:
            deny(_request, context)
            yield from ()  # pragma: no cover - abort raises

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny_stream)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if self.authenticator.caller(handler_call_details.invocation_metadata) is not None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.response_streaming:
            return self._deny_stream
        return self._deny


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


def secure_channel(address: str, ca_file: Path | None, token: str | None,
                   server_name: str | None = None) -> grpc.Channel:
    """A TLS channel to ``address`` (``ca_file`` None: the system roots) sending ``token``."""
    tls = grpc.ssl_channel_credentials(ca_file.read_bytes() if ca_file else None)
    creds = (grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
             if token else tls)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, creds, options=options)
