"""A real EMQX 5.8.9 node (open source) as a child process, built once per machine.

The release is built from ``shared/brokers/emqx`` (source tarball + ``build.sh``, offline, with
Debian's OTP 25) into the plugforge cache under a key made of the tarball's and the build
script's sha256, so a machine builds it once (about 4-5 minutes on 2 cores) and every later
session starts nodes from the cache. ``python -m testbed.emqx`` builds it (scripts/ensure.d/).

Everything that could clash with another node is private to each node: node name and cookie,
data/log/plugin dirs (the release dir in the cache is only read), MQTT and REST API ports. EMQX
runs no epmd: its ``ekka_epmd`` derives the distribution port from the node name (4370 + the
number before ``@``), so a node named ``pf<N>@127.0.0.1`` listens on 4370+N, and N is chosen
from a free port. The REST API key comes from a bootstrap file (``KEY:SECRET:administrator``);
readiness is ``GET /api/v5/status`` answering that the node is running *and* the node's
boot-complete line in its log: the status endpoint answers 200 as soon as the dashboard listener
and the ``emqx`` application run, while later applications are still starting (a ``POST
/api/v5/authentication`` for the password database fails then with
``no_available_provider_for``).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from testbed.procs import ServerFailed, ServerProcess, free_port
from testbed.shared import SHARED

EMQX_VERSION = "5.8.9"
SOURCE_DIR = SHARED / "brokers" / "emqx"
TARBALL = SOURCE_DIR / f"emqx-{EMQX_VERSION}-src.tar.xz"
DIST_BASE_PORT = 4370  # ekka_dist's default inet_dist_base_port
BOOTED = f"EMQX {EMQX_VERSION} is running now!".encode()  # emqx_machine_boot, all apps up
CLI_TIMEOUT = 60.0
# Two cores shared with other brokers in tests: no busy-waiting schedulers.
ERL_ZFLAGS = "+sbwt none +sbwtdcpu none +sbwtdio none"


class EmqxError(RuntimeError):
    """An ``emqx ctl`` command or a REST call of the testbed failed; the message says which."""


def cache_root() -> Path:
    env = os.environ.get("PLUGFORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "plugforge"


def release_key() -> str:
    digest = hashlib.sha256()
    for path in (TARBALL, SOURCE_DIR / "build.sh"):
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def ensure_release(cache: Path | None = None, *, verbose: bool = False) -> Path:
    """The built release (``.../emqx`` with ``bin/emqx``), building it first if the cache has
    none for this tarball. Concurrent callers wait for one build (a lock file)."""
    if not TARBALL.is_file():
        raise ServerFailed(f"{TARBALL} is missing: shared/ must sit beside the project root")
    home = (cache or cache_root()) / "emqx" / f"{EMQX_VERSION}-{release_key()}"
    release = home / "emqx"
    if (release / "bin" / "emqx").is_file():
        return release
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (release / "bin" / "emqx").is_file():
            return release
        staging = home.parent / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        log = home.parent / f"build-{EMQX_VERSION}.log"
        if verbose:
            print(f"    building EMQX {EMQX_VERSION} into {home} (4-5 minutes on 2 cores; "
                  f"log: {log})", flush=True)
        started = time.monotonic()
        with open(log, "wb") as out:
            result = subprocess.run(["bash", str(SOURCE_DIR / "build.sh"), str(staging)],
                                    stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise ServerFailed(f"building EMQX failed (exit {result.returncode}); packages "
                               f"it needs are listed in {SOURCE_DIR / 'README.md'}.\n"
                               f"--- last lines of {log} ---\n{tail}")
        seconds = time.monotonic() - started
        (staging / "build-seconds").write_text(f"{seconds:.0f}\n")
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        if verbose:
            print(f"    built in {seconds:.0f} s", flush=True)
    return release


@dataclass
class Emqx:
    server: ServerProcess
    release: Path
    workdir: Path
    nodename: str
    mqtt_port: int
    api_port: int
    api_key: str
    api_secret: str
    env: dict[str, str]
    started_seconds: float = 0.0
    """Wall time of the last start: process spawned -> REST API says running."""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def plugins_dir(self) -> Path:
        """EMQX's ``plugins.install_dir``: a ``NAME-VSN.tar.gz`` here can be started by name."""
        return self.workdir / "plugins"

    def ctl(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        """``emqx ctl ARGS`` against this node (its name and cookie come from ``env``)."""
        argv = [str(self.release / "bin" / "emqx"), "ctl", *args]
        try:
            result = subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True,
                                    text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise EmqxError(f"emqx ctl {' '.join(args)} did not finish in {timeout:g}s") from e
        if result.returncode != 0:
            raise EmqxError(f"emqx ctl {' '.join(args)} exited with {result.returncode}:\n"
                            f"{result.stdout}{result.stderr}")
        return result.stdout

    def eval(self, expression: str) -> str:
        """An Erlang expression evaluated on the node (``emqx eval``)."""
        argv = [str(self.release / "bin" / "emqx"), "eval", expression]
        result = subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True,
                                text=True, timeout=CLI_TIMEOUT, check=False)
        if result.returncode != 0:
            raise EmqxError(f"emqx eval exited with {result.returncode}:\n"
                            f"{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call (``/api/v5`` + path) with the bootstrap API key; JSON in and out."""
        auth = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        headers = {"Authorization": f"Basic {auth}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        response = urllib3.request(method, f"{self.api_url}/api/v5{path}", body=payload,
                                   headers=headers, timeout=30, retries=False)
        text = response.data.decode("utf-8", "replace")
        if not 200 <= response.status < 300:
            raise EmqxError(f"{method} /api/v5{path}: HTTP {response.status} {text[:500]}")
        return json.loads(text) if text.strip() else None

    def os_pid(self) -> int:
        """The OS pid of the node's Erlang VM, as the node reports it."""
        return int(self.eval("list_to_integer(os:getpid()).").strip())

    def running(self) -> bool:
        try:
            response = urllib3.request("GET", f"{self.api_url}/api/v5/status?format=json",
                                       timeout=2, retries=False)
        except urllib3.exceptions.HTTPError:
            return False
        if response.status != 200:
            return False
        try:
            return bool(json.loads(response.data).get("app_status") == "running")
        except ValueError:
            return False

    def join(self, seed: Emqx, timeout: float = 120.0) -> None:
        """Join ``seed``'s cluster (the nodes need the same cookie: ``start_emqx(cookie=...)``).

        EMQX stops and restarts this node's applications after the join and logs no line when
        they are all back; the dashboard answers before the authentication providers do, and a
        config change replicated in that window fails on this node (``cluster_rpc_apply_failed``)
        while the API call that made it blocks. So: wait until every application EMQX reboots
        runs again."""
        self.ctl("cluster", "join", seed.nodename)
        expression = ("R = [A || {A, _, _} <- application:which_applications()], "
                      "lists:all(fun(A) -> lists:member(A, R) end, "
                      "emqx_machine_boot:sorted_reboot_apps()).")

        def restarted() -> bool:
            try:
                return self.running() and self.eval(expression) == "true"
            except EmqxError:
                return False

        self.server.wait_ready(restarted, timeout=timeout)

    def stop_node(self) -> None:
        """Stop the node's process; name, ports, cookie and data stay for ``start_node``."""
        self.server.stop(grace=30)

    def start_node(self, timeout: float = 120.0) -> None:
        started, offset = time.monotonic(), _log_size(self.workdir)
        self.server = _spawn(self.release, self.workdir, self.env)
        self._wait_booted(offset, timeout)
        self.started_seconds = time.monotonic() - started

    def _wait_booted(self, offset: int, timeout: float) -> None:
        """Ready: the boot line after ``offset`` in the log, and the REST API says running."""
        log = self.server.log_path

        def booted() -> bool:
            with open(log, "rb") as f:
                f.seek(offset)
                return BOOTED in f.read() and self.running()

        self.server.wait_ready(booted, timeout=timeout)

    def restart(self) -> None:
        """The node's process again, as the kubelet restarts a container."""
        self.stop_node()
        self.start_node()

    def stop(self) -> None:
        self.stop_node()


def enable_password_database(node: Emqx, users: Mapping[str, str]) -> None:
    """EMQX's built-in authentication, a password database (set up through the REST API as an
    operator would), holding ``users`` (name -> password). Idempotent; cluster-wide."""
    authn = "password_based:built_in_database"
    if authn not in {a.get("id") for a in node.api("GET", "/authentication")}:
        node.api("POST", "/authentication", {
            "mechanism": "password_based", "backend": "built_in_database",
            "user_id_type": "username",
            "password_hash_algorithm": {"name": "sha256", "salt_position": "suffix"}})
    for user, password in users.items():
        try:
            node.api("PUT", f"/authentication/{authn}/users/{user}", {"password": password})
        except EmqxError:  # not there yet: create it
            node.api("POST", f"/authentication/{authn}/users",
                     {"user_id": user, "password": password})


def _log_size(workdir: Path) -> int:
    log = workdir / "emqx.log"
    return log.stat().st_size if log.exists() else 0


def _spawn(release: Path, workdir: Path, env: dict[str, str]) -> ServerProcess:
    return ServerProcess("emqx", [str(release / "bin" / "emqx"), "foreground"],
                         workdir / "emqx.log", env=env, cwd=workdir)


def _node_env(workdir: Path, nodename: str, cookie: str, mqtt: int, api: int,
              extra: dict[str, str]) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(workdir),
        "ERL_ZFLAGS": ERL_ZFLAGS,
        "EMQX_NODE__NAME": nodename,
        "EMQX_NODE__COOKIE": cookie,
        "EMQX_NODE__DATA_DIR": str(workdir / "data"),
        "EMQX_LOG_DIR": str(workdir / "log"),
        "EMQX_LOG__FILE__DEFAULT__ENABLE": "false",
        "EMQX_LOG__CONSOLE__ENABLE": "true",
        "EMQX_LOG__CONSOLE__LEVEL": "notice",
        "EMQX_PLUGINS__INSTALL_DIR": str(workdir / "plugins"),
        "EMQX_LISTENERS__TCP__DEFAULT__BIND": f"127.0.0.1:{mqtt}",
        "EMQX_LISTENERS__SSL__DEFAULT__ENABLE": "false",
        "EMQX_LISTENERS__WS__DEFAULT__ENABLE": "false",
        "EMQX_LISTENERS__WSS__DEFAULT__ENABLE": "false",
        "EMQX_DASHBOARD__LISTENERS__HTTP__BIND": f"127.0.0.1:{api}",
        "EMQX_API_KEY__BOOTSTRAP_FILE": str(workdir / "api-keys"),
        # Single node: the cluster.discovery default is manual; nothing to find.
        **extra,
    }


def start_emqx(workdir: Path, *, release: Path | None = None, cookie: str | None = None,
               env: dict[str, str] | None = None, timeout: float = 120.0) -> Emqx:
    """Start a node on free loopback ports; ``env`` adds ``EMQX_*`` settings (HOCON paths);
    nodes that are to join one cluster share a ``cookie``."""
    release = release or ensure_release()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "plugins").mkdir(exist_ok=True)
    key, secret = f"pf-{secrets.token_hex(4)}", secrets.token_hex(16)
    keys = workdir / "api-keys"
    keys.write_text(f"{key}:{secret}:administrator\n")
    keys.chmod(0o600)
    cookie = cookie or secrets.token_hex(16)
    last: ServerFailed | None = None
    for _ in range(3):
        ports: set[int] = set()
        while len(ports) < 3:
            port = free_port()
            if port > DIST_BASE_PORT:
                ports.add(port)
        dist, mqtt, api = sorted(ports)
        nodename = f"pf{dist - DIST_BASE_PORT}@127.0.0.1"
        node_env = _node_env(workdir, nodename, cookie, mqtt, api, env or {})
        started, offset = time.monotonic(), _log_size(workdir)
        node = Emqx(_spawn(release, workdir, node_env), release, workdir, nodename, mqtt, api,
                    key, secret, node_env)
        try:
            node._wait_booted(offset, timeout)
        except ServerFailed as e:
            node.stop()
            if "eaddrinuse" not in str(e).lower():
                raise
            last = e
            continue
        node.started_seconds = time.monotonic() - started
        return node
    raise last or ServerFailed("EMQX did not start")


def main(argv: Sequence[str]) -> int:
    started = time.monotonic()
    release = ensure_release(verbose=True)
    recorded = release.parent / "build-seconds"
    built = recorded.read_text().strip() if recorded.exists() else "?"
    print(f"    EMQX {EMQX_VERSION} release: {release} (built in {built} s; "
          f"this check {time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
