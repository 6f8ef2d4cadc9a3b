"""A real Git host over SSH: Debian's OpenSSH ``sshd`` on a loopback port, one client key.

The key may only run ``git-shell`` (no terminal, no forwarding), so clones and fetches go
through the same ssh + git-upload-pack exchange as on any forge. Repositories live under the
git server's root, so ``GitServer.create_repo`` and pushes over HTTP feed both transports.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.procs import ServerFailed, ServerProcess, start_with_port

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshGitServer:
    server: ServerProcess
    port: int
    user: str
    client_key: bytes
    """The private key the server accepts (an ed25519 key in OpenSSH format)."""
    known_hosts: bytes
    """A ``known_hosts`` line for this server's host key."""

    def url(self, repo_path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{repo_path}"

    def stop(self) -> None:
        self.server.stop()


def start_ssh_git_server(workdir: Path) -> SshGitServer:
    if not SSHD.exists() or shutil.which("git-shell") is None:
        raise ServerFailed("sshd or git-shell missing: install openssh-server and git "
                           "(scripts/apt-packages.txt)")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_key", workdir / "client_key"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name,
                            "-f", str(key)], check=True)
    git_shell = shutil.which("git-shell")
    (workdir / "authorized_keys").write_text(
        f'restrict,command="{git_shell} -c \\"$SSH_ORIGINAL_COMMAND\\"" '
        f"{(workdir / 'client_key.pub').read_text().strip()}\n")
    # sshd refuses to start without its privilege separation directory (root can make it;
    # otherwise sshd's own message in its log says what is missing).
    with contextlib.suppress(PermissionError):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    user = getpass.getuser()

    def start(port: int) -> ServerProcess:
        config = workdir / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"AuthorizedKeysFile {workdir / 'authorized_keys'}", f"AllowUsers {user}",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            "UsePAM no", "StrictModes no", f"PidFile {workdir / 'sshd.pid'}",
            "LogLevel VERBOSE", ""]))
        return ServerProcess("sshd", [str(SSHD), "-D", "-e", "-f", str(config)],
                             workdir / "sshd.log")

    def ready(server: ServerProcess, port: int) -> None:
        def banner() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                return s.recv(4).startswith(b"SSH-")
        server.wait_ready(banner, timeout=20)

    server, port = start_with_port(start, ready)
    public = (workdir / "host_key.pub").read_text().split()
    known = f"[127.0.0.1]:{port} {public[0]} {public[1]}\n".encode()
    return SshGitServer(server, port, user, client_key.read_bytes(), known)
