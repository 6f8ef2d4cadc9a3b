"""A real OCI registry: Debian's docker-registry (distribution v2) over TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from testbed.certs import CertificateAuthority
from testbed.procs import ServerFailed, ServerProcess, start_with_port

REGISTRY_BINARY = "docker-registry"


@dataclass
class Registry:
    server: ServerProcess
    port: int
    ca: CertificateAuthority
    storage: Path
    credentials: tuple[str, str] | None = None
    address: str = "127.0.0.1"

    @property
    def host(self) -> str:
        """``host:port`` as it appears in image references."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def stop(self) -> None:
        self.server.stop()


def start_registry(workdir: Path, ca: CertificateAuthority,
                   credentials: tuple[str, str] | None = None,
                   auth: Mapping[str, object] | None = None,
                   address: str = "127.0.0.1") -> Registry:
    """Start a registry over TLS.

    With ``credentials`` it demands HTTP basic auth (htpasswd, bcrypt); ``auth`` is any other
    ``auth:`` section of the registry's configuration (e.g. ``token`` for the bearer flow).
    """
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise ServerFailed("docker-registry is not installed (Debian package docker-registry); "
                           "scripts/test installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    tls = ca.issue(f"registry-{workdir.name}",
                   sans=tuple(dict.fromkeys((address, "127.0.0.1", "localhost"))))
    auth = dict(auth or {})
    if credentials is not None:
        htpasswd = workdir / "htpasswd"
        user, password = credentials
        line = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                              capture_output=True, text=True).stdout
        htpasswd.write_text(line.strip() + "\n")
        auth = {"htpasswd": {"realm": "plugforge-testbed", "path": str(htpasswd)}}

    def start(port: int) -> ServerProcess:
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": f"{address}:{port}",
                     "tls": {"certificate": str(tls.cert), "key": str(tls.key)}},
            **({"auth": auth} if auth else {}),
        }
        config_path = workdir / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        return ServerProcess("docker-registry", [binary, "serve", str(config_path)],
                             workdir / "registry.log")

    def ready(server: ServerProcess, port: int) -> None:
        ctx = ssl.create_default_context(cafile=str(ca.cert))

        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"https://{address}:{port}/v2/", context=ctx,
                                            timeout=2):
                    return True
            except urllib.error.HTTPError as e:
                return e.code == 401  # up, and asking for credentials

        server.wait_ready(probe, timeout=30)

    server, port = start_with_port(start, ready)
    return Registry(server, port, ca, storage, credentials, address)
