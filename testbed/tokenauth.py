"""A registry behind the bearer token flow: a tiny real token service plus docker-registry.

The token service (HTTPS, in a thread) checks HTTP basic credentials and issues RS256 JWTs
signed with a self-signed certificate that the registry trusts (``rootcertbundle``); the
JWT carries the certificate in ``x5c``. Signing uses the openssl CLI. Granted access is
whatever the request's ``scope`` asks for, for a known user; anonymous and unknown users
get a token without access, as real token services do.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from testbed.certs import CertificateAuthority
from testbed.procs import ServerProcess
from testbed.registry import start_registry

SERVICE = "plugforge-registry"
ISSUER = "plugforge-testbed-token-issuer"


@dataclass
class TokenService:
    httpd: ThreadingHTTPServer
    signer_key: Path
    signer_cert: Path
    users: dict[str, str]
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}/token"

    def issue(self, subject: str, scopes: list[str]) -> str:
        der = subprocess.run(["openssl", "x509", "-in", str(self.signer_cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 30,
                  "exp": now + 300, "jti": secrets.token_hex(8), "access": _access(scopes)}
        signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.signer_key)],
            input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class TokenRegistry:
    server: ServerProcess
    port: int
    tokens: TokenService
    storage: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()
        self.tokens.stop()


def start_token_service(workdir: Path, ca: CertificateAuthority,
                        users: dict[str, str]) -> TokenService:
    workdir.mkdir(parents=True, exist_ok=True)
    key, cert = workdir / "signer.key", workdir / "signer.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=token-signer"],
                   check=True, capture_output=True)
    tls = ca.issue("token-service")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert), str(tls.key))
    service: TokenService

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            user = _basic_user(self.headers.get("Authorization"), service.users)
            service.requests.append({**query, "user": user or ""})
            if url.path != "/token" or user is None:
                self.send_response(401 if url.path == "/token" else 404)
                self.end_headers()
                return
            scopes = [query["scope"]] if "scope" in query else []
            body = json.dumps({"token": service.issue(user, scopes if user else []),
                               "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # requests are recorded in ``service.requests`` instead

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    service = TokenService(httpd, key, cert, users)
    threading.Thread(target=httpd.serve_forever, name="token-service", daemon=True).start()
    return service


def start_token_registry(workdir: Path, ca: CertificateAuthority,
                         users: dict[str, str]) -> TokenRegistry:
    """docker-registry with ``auth.token`` pointing at a fresh token service."""
    tokens = start_token_service(workdir / "tokens", ca, users)
    try:
        registry = start_registry(workdir, ca, auth={"token": {
            "realm": tokens.realm, "service": SERVICE, "issuer": ISSUER,
            "rootcertbundle": str(tokens.signer_cert)}})
    except BaseException:
        tokens.stop()
        raise
    return TokenRegistry(registry.server, registry.port, tokens, registry.storage)


def _access(scopes: list[str]) -> list[dict[str, object]]:
    granted: list[dict[str, object]] = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        granted.append({"type": kind, "name": name, "actions": actions.split(",")})
    return granted


def _basic_user(header: str | None, users: dict[str, str]) -> str | None:
    """The authenticated user, "" for anonymous, None for wrong credentials."""
    if not header:
        return ""
    scheme, _, encoded = header.partition(" ")
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except ValueError:
        return None
    if scheme.lower() != "basic" or users.get(user) != password:
        return None
    return user


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
