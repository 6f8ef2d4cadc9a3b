"""A real VerneMQ 2.0.1 node as a child process, built once per machine from ``../shared``.

``../shared/brokers/vernemq/`` holds the source tarball and ``build.sh``; ``ensure_release``
builds it (about 4 minutes on 2 cores) into ``$PLUGFORGE_CACHE/vernemq/<key>/vernemq``, the key
being a hash of the tarball and the script, so a changed input builds again and an unchanged
one never does. ``python -m testbed.vernemq`` does that from ``scripts/ensure.d/10-vernemq.sh``.

Each node gets its own root beside the shared release: ``bin/``, ``etc/``, ``releases/`` copied
(the scripts find ``etc/``, ``data/`` and ``log/`` relative to themselves), ``lib/*`` and
``erts-*`` linked. Name, cookie, every port and epmd are private: epmd runs on a free port as our
child, and the node's copy of ``lib/env.sh`` (which ``bin/vernemq`` and ``bin/vmq-admin`` both
source) exports ``ERL_EPMD_PORT``, so ``vmq-admin`` in that root reaches this node and no other.
The node runs in the foreground (``bin/vernemq console`` with ``-noinput``) so it is our child.

Auth as a user would set it up: ``allow_anonymous = off``, the stock ``vmq_passwd`` with the
users in ``passwords`` and ``vmq_acl`` with ``topic #`` (everything allowed).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from testbed.procs import ServerFailed, ServerProcess, free_port
from testbed.shared import SHARED

SOURCE = SHARED / "brokers" / "vernemq"
TARBALL = SOURCE / "vernemq-2.0.1-src.tar.xz"
BUILD_SCRIPT = SOURCE / "build.sh"
# Two schedulers, no busy waiting (the node shares 2 cores); no shell on stdin.
ERL_FLAGS = "-noinput +S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none"
USERS = {"alice": "alice-pw", "mallory": "mallory-pw", "eve": "eve-pw"}
CLI_TIMEOUT = 60.0


def cache_dir() -> Path:
    explicit = os.environ.get("PLUGFORGE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "plugforge"


def release_key() -> str:
    """sha256 over the tarball's and build.sh's sha256 (as ``sha256sum`` prints them)."""
    parts = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (TARBALL, BUILD_SCRIPT)]
    return hashlib.sha256("".join(h + "\n" for h in parts).encode()).hexdigest()[:16]


def ensure_release(log: Path | None = None) -> Path:
    """The built release (``.../vernemq``); builds it first when the cache lacks it."""
    if not TARBALL.is_file():
        raise ServerFailed(f"{TARBALL} is missing: shared/ must sit beside the project root")
    root = cache_dir() / "vernemq"
    key = release_key()
    release = root / key / "vernemq"
    if (release / "bin" / "vernemq").is_file():
        return release
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per machine, others wait for it
        if (release / "bin" / "vernemq").is_file():
            return release
        partial_dir = root / f"{key}.partial"
        shutil.rmtree(partial_dir, ignore_errors=True)
        started = time.monotonic()
        out = open(log, "ab") if log else None  # noqa: SIM115 - closed below
        try:
            done = subprocess.run(["bash", str(BUILD_SCRIPT), str(partial_dir)],
                                  stdout=out or sys.stderr, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        finally:
            if out:
                out.close()
        if done.returncode != 0:
            raise ServerFailed(f"building VerneMQ with {BUILD_SCRIPT} failed (exit "
                               f"{done.returncode}); needs the Debian packages in "
                               "scripts/apt-packages.txt (erlang-dev, rebar3, g++, libsnappy-dev)")
        (partial_dir / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
        partial_dir.rename(root / key)
    return release


def password_line(user: str, password: str) -> str:
    """A vmq_passwd entry: ``user:$6$<salt b64>$<b64 sha512(password ++ salt)>``."""
    salt = secrets.token_bytes(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True)
class Ports:
    mqtt: int
    http: int
    cluster: int
    epmd: int

    @staticmethod
    def pick() -> Ports:
        ports: list[int] = []
        while len(ports) < 4:
            port = free_port()
            if port not in ports:
                ports.append(port)
        return Ports(*ports)


@dataclass
class VerneMQ:
    server: ServerProcess
    epmd: ServerProcess
    root: Path
    ports: Ports
    nodename: str
    api_key: str
    start_seconds: float = 0.0
    passwords: dict[str, str] = field(default_factory=lambda: dict(USERS))

    @property
    def port(self) -> int:
        return self.ports.mqtt

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def vmq_admin(self) -> Path:
        return self.root / "bin" / "vmq-admin"

    @property
    def pid(self) -> int:
        return int(self.rpc("os", "getpid", "").strip().strip('"'))

    def admin(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """``vmq-admin ARGS`` against this node; its stdout (failures: ServerFailed)."""
        done = subprocess.run([str(self.vmq_admin), *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise ServerFailed(f"vmq-admin {' '.join(args)} exited {done.returncode}: "
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def rpc(self, module: str, function: str, args: str) -> str:
        """``Module:Function(Args...)`` on the node (``args``: Erlang terms, each ending in
        a dot), printed with ``~p``; the same path the adapter's clean-up takes."""
        script = '. "$(dirname "$0")/../lib/env.sh" && exec $NODETOOL rpcterms "$@"'
        done = subprocess.run(["sh", "-c", script, str(self.vmq_admin), module, function, args],
                              capture_output=True, text=True, timeout=CLI_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False, cwd=self.root)
        if done.returncode != 0:
            raise ServerFailed(f"rpc {module}:{function}({args}) exited {done.returncode}: "
                               f"{done.stdout}{done.stderr}")
        return done.stdout.strip()

    def set_password(self, user: str, password: str) -> None:
        """Change the password file; vmq_passwd reloads it (``vmq-admin`` command, at once)."""
        self.passwords[user] = password
        _write_passwords(self.root, self.passwords)
        self.rpc("vmq_passwd", "load_from_file", f'"{self.root / "etc" / "vmq.passwd"}".')

    def stop(self) -> None:
        self.stop_node()
        self.epmd.stop()

    def stop_node(self) -> None:
        """The node's process only (name, ports, cookie, data, epmd stay), as a container
        restart in a pod; ``start_node`` brings the same node back."""
        self.server.stop(grace=30)

    def restart(self) -> None:
        """The node's process again, as the kubelet restarts a container (epmd stays)."""
        self.stop_node()
        self.start_node()

    def start_node(self, timeout: float = 180.0) -> None:
        started = time.monotonic()
        self.server = _start_process(self.root)
        self.server.wait_ready(partial(_mqtt_listens, self.ports.mqtt), timeout=timeout)
        _register_api_key(self, timeout)
        self.start_seconds = time.monotonic() - started


def _write_passwords(root: Path, users: Mapping[str, str]) -> None:
    text = "".join(password_line(u, p) + "\n" for u, p in sorted(users.items()))
    tmp = root / "etc" / "vmq.passwd.tmp"
    tmp.write_text(text)
    tmp.rename(root / "etc" / "vmq.passwd")


def _make_root(release: Path, root: Path, ports: Ports, nodename: str, cookie: str,
               extra_config: Sequence[str], users: Mapping[str, str]) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name in ("bin", "etc", "releases"):
        shutil.copytree(release / name, root / name, symlinks=True)
    for entry in release.iterdir():
        if entry.name.startswith("erts-") or entry.name == "share":
            (root / entry.name).symlink_to(entry)
    (root / "lib").mkdir()
    for entry in (release / "lib").iterdir():
        if entry.name != "env.sh":
            (root / "lib" / entry.name).symlink_to(entry)
    env_sh = (release / "lib" / "env.sh").read_text()
    shebang, _, rest = env_sh.partition("\n")
    (root / "lib" / "env.sh").write_text(
        f"{shebang}\n# testbed: this node's own epmd\nERL_EPMD_PORT={ports.epmd}\n"
        "ERL_EPMD_ADDRESS=127.0.0.1\nexport ERL_EPMD_PORT ERL_EPMD_ADDRESS\n" + rest)
    (root / "data").mkdir()
    (root / "log").mkdir()
    _write_passwords(root, users)
    (root / "etc" / "vmq.acl").write_text("topic #\n")
    ours = {
        "nodename": nodename,
        "distributed_cookie": cookie,
        "allow_anonymous": "off",
        "listener.tcp.default": f"127.0.0.1:{ports.mqtt}",
        "listener.http.default": f"127.0.0.1:{ports.http}",
        "listener.vmq.clustering": f"127.0.0.1:{ports.cluster}",
        "plugins.vmq_passwd": "on",
        "plugins.vmq_acl": "on",
        "vmq_passwd.password_file": str(root / "etc" / "vmq.passwd"),
        "vmq_acl.acl_file": str(root / "etc" / "vmq.acl"),
        "leveldb.maximum_memory.percent": "2",  # of 24 GiB otherwise; a shared machine
    }
    for line in extra_config:
        key, _, value = line.partition("=")
        ours[key.strip()] = value.strip()
    kept = [line for line in (release / "etc" / "vernemq.conf").read_text().splitlines()
            if line.partition("=")[0].strip() not in ours
            and not line.startswith("listener.tcp.name")]
    (root / "etc" / "vernemq.conf").write_text(
        "\n".join(kept + [f"{k} = {v}" for k, v in ours.items()]) + "\n")


def _start_process(root: Path) -> ServerProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root),
           "LANG": "C.UTF-8", "ERL_FLAGS": ERL_FLAGS}
    return ServerProcess("vernemq", [str(root / "bin" / "vernemq"), "console"],
                         root / "log" / "console.out", env=env, cwd=root)


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _mqtt_listens(port: int) -> bool:
    # The listener opens last in the boot (after the plugins and the HTTP API).
    return _accepts(port)


def _register_api_key(node: VerneMQ, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.admin("api-key", "add", f"key={node.api_key}", "scope=mgmt")
            return
        except ServerFailed as e:
            if "already" in str(e).lower():
                return
            if time.monotonic() > deadline:
                raise


def start_vernemq(workdir: Path, *, extra_config: Sequence[str] = (),
                  users: Mapping[str, str] = USERS, timeout: float = 180.0) -> VerneMQ:
    """A node in ``workdir`` (recreated), MQTT on ``.port``, HTTP API on ``.api_url`` with
    ``.api_key`` (scope mgmt), ``vmq-admin`` at ``.vmq_admin``; ``users`` (name: password) in
    vmq_passwd's file."""
    release = ensure_release()
    epmd_bin = shutil.which("epmd")
    if epmd_bin is None:
        raise ServerFailed("epmd is not on PATH (Debian package erlang-base)")
    for attempt in range(3):
        ports = Ports.pick()
        root = workdir / "node"
        nodename = f"pf{secrets.token_hex(4)}@127.0.0.1"
        _make_root(release, root, ports, nodename, secrets.token_hex(16), extra_config, users)
        epmd = ServerProcess("epmd", [epmd_bin, "-port", str(ports.epmd), "-address",
                                      "127.0.0.1"], workdir / "epmd.log")
        epmd.wait_ready(partial(_accepts, ports.epmd), timeout=10)
        node = VerneMQ(_start_process(root), epmd, root, ports, nodename,
                       secrets.token_hex(16), passwords=dict(users))
        started = time.monotonic()
        try:
            node.server.wait_ready(partial(_mqtt_listens, ports.mqtt), timeout=timeout)
            _register_api_key(node, timeout)
        except ServerFailed as e:
            node.stop()
            if attempt == 2 or "eaddrinuse" not in (str(e) + _logs(root)).lower():
                raise ServerFailed(f"{e}\n--- node logs ---\n{_logs(root)}") from e
            continue
        node.start_seconds = time.monotonic() - started
        return node
    raise ServerFailed("VerneMQ did not start in 3 attempts")


def _logs(root: Path) -> str:
    out = []
    for name in ("console.log", "error.log"):
        path = root / "log" / name
        if path.is_file():
            out.append("\n".join(path.read_text(errors="replace").splitlines()[-30:]))
    return "\n".join(out)


def main() -> int:
    """Build the release into the cache unless it is there (scripts/ensure.d/10-vernemq.sh)."""
    release = cache_dir() / "vernemq" / release_key() / "vernemq"
    if (release / "bin" / "vernemq").is_file():
        seconds = (release.parent / "build-seconds")
        took = f", built in {seconds.read_text().strip()} s" if seconds.is_file() else ""
        print(f"    VerneMQ 2.0.1 cached: {release}{took}")
        return 0
    print("    building VerneMQ 2.0.1 from ../shared/brokers/vernemq (first run only; about "
          "4 minutes on 2 cores)", flush=True)
    try:
        built = ensure_release()
    except ServerFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"    built in {(built.parent / 'build-seconds').read_text().strip()} s: {built}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
