"""A real Docker-API engine: ``podman system service`` on a private unix socket.

Storage (vfs driver), run state and HOME live under the work directory, so the service
keeps its state out of system paths. Registry trust uses containers/image's per-user certs dir,
``$HOME/.config/containers/certs.d/<host:port>/ca.crt``; with HOME private this needs no
write to ``/etc/containers``. As root, pushes still record blob locations in
``/var/lib/containers/cache``; ``stop`` removes that directory if the service created it.
``podman run`` and ``RUN`` steps are refused by the sandbox; ``FROM scratch`` + ``COPY``
builds and pushes work.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from testbed.procs import ServerFailed, ServerProcess

# Running as root, containers/image keeps its blob-info cache here whatever HOME says.
SYSTEM_CACHE = Path("/var/lib/containers")


@dataclass
class PodmanService:
    server: ServerProcess
    socket_path: Path
    home: Path
    created_system_cache: bool = False

    @property
    def url(self) -> str:
        """``base_url`` for the docker SDK."""
        return f"unix://{self.socket_path}"

    def trust_registry(self, host: str, ca_cert: Path) -> None:
        """Make pushes to ``host`` (``127.0.0.1:PORT``) verify TLS against ``ca_cert``."""
        directory = self.home / ".config" / "containers" / "certs.d" / host
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_cert, directory / "ca.crt")

    def stop(self) -> None:
        self.server.stop()
        if self.created_system_cache:
            shutil.rmtree(SYSTEM_CACHE, ignore_errors=True)


def start_podman_service(workdir: Path) -> PodmanService:
    binary = shutil.which("podman")
    if binary is None:
        raise ServerFailed("podman is not installed (Debian package podman); scripts/test "
                           "installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    socket_path = workdir / "podman.sock"
    argv = [binary, "--root", str(workdir / "storage"), "--runroot", str(workdir / "run"),
            "--storage-driver", "vfs", "--events-backend", "file",
            "system", "service", "--time=0", f"unix://{socket_path}"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "XDG_RUNTIME_DIR": str(workdir / "run")}
    created_system_cache = os.geteuid() == 0 and not SYSTEM_CACHE.exists()
    server = ServerProcess("podman", argv, workdir / "podman.log", env=env)

    def probe() -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(socket_path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            status_line = s.recv(64).split(b"\r\n", 1)[0]
            return status_line.split()[1:2] == [b"200"]

    server.wait_ready(probe, timeout=60)
    return PodmanService(server, socket_path, home, created_system_cache)
