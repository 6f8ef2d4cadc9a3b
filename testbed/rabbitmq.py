"""A real RabbitMQ node (Debian rabbitmq-server 3.10) as a child process, not the system service.

Everything that could clash with another node on the machine is private: node name
(``pf-<random>@localhost``), Erlang cookie (in the node's own ``HOME``), data and log dirs, and
every port — AMQP, MQTT, management HTTP, Erlang distribution and even epmd, which runs on a
free port as its own child process so parallel test sessions never share one.

The Debian wrapper ``/usr/sbin/rabbitmq-server`` switches to the ``rabbitmq`` user (``su``) when
run as root; the scripts in ``/usr/lib/rabbitmq/bin`` do not, so those are used directly.

Plugins come from the system plugins dir plus ``shared_plugins_dir`` (``RABBITMQ_PLUGINS_DIR`` is
colon-separated): a plugin copied there can be enabled on the running node with
``rabbitmq_plugins("enable", "--online", name)`` — RabbitMQ rescans the dirs on every enable.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from testbed.procs import ServerFailed, ServerProcess, free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
SYSTEM_PLUGINS_GLOB = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins"
READY_LINE = b"Server startup complete"
CLI_TIMEOUT = 120.0
# Two schedulers and no busy-waiting: the node shares two cores with other brokers in tests.
ERL_ARGS = "+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none"


class RabbitMQError(RuntimeError):
    """A rabbitmqctl / rabbitmq-plugins command failed; the message carries its output."""


def system_plugins_dir() -> Path:
    found = sorted(glob.glob(SYSTEM_PLUGINS_GLOB))
    if not found or not (RABBITMQ_BIN / "rabbitmq-server").is_file():
        raise ServerFailed("RabbitMQ is not installed (Debian package rabbitmq-server, expected "
                           f"{RABBITMQ_BIN}/rabbitmq-server and {SYSTEM_PLUGINS_GLOB}); "
                           "scripts/test installs it")
    return Path(found[-1])


@dataclass(frozen=True)
class Ports:
    amqp: int
    mqtt: int
    management: int
    dist: int
    epmd: int

    @staticmethod
    def pick() -> Ports:
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        return Ports(*sorted(ports))


@dataclass
class RabbitMQ:
    server: ServerProcess
    epmd: ServerProcess
    ports: Ports
    nodename: str
    workdir: Path
    shared_plugins_dir: Path
    env: dict[str, str]
    """What rabbitmqctl/rabbitmq-plugins need to reach this node (and only this node)."""

    @property
    def mqtt_port(self) -> int:
        return self.ports.mqtt

    @property
    def amqp_port(self) -> int:
        return self.ports.amqp

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    def rabbitmqctl(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        return self._cli("rabbitmqctl", args, timeout)

    def rabbitmq_plugins(self, *args: str, timeout: float = CLI_TIMEOUT) -> str:
        return self._cli("rabbitmq-plugins", args, timeout)

    def install_plugin(self, archive: Path) -> Path:
        """Copy a plugin (``.ez``) into the shared plugins dir, atomically (tmp + rename)."""
        dest = self.shared_plugins_dir / archive.name
        staging = self.shared_plugins_dir / f".{archive.name}.tmp"
        shutil.copyfile(archive, staging)
        staging.rename(dest)
        return dest

    def eval(self, expression: str) -> str:
        """Evaluate an Erlang expression on the node (``rabbitmqctl eval``); returns its output."""
        return self.rabbitmqctl("eval", expression).strip()

    def os_pid(self) -> int:
        """The OS process id of the node's Erlang VM, as the node itself reports it."""
        return int(self.eval("os:getpid().").strip('"'))

    def _cli(self, tool: str, args: Sequence[str], timeout: float) -> str:
        argv = [str(RABBITMQ_BIN / tool), "-n", self.nodename, *args]
        try:
            result = subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True,
                                    text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise RabbitMQError(f"{' '.join(argv)} did not finish within {timeout:g}s") from e
        if result.returncode != 0:
            raise RabbitMQError(f"{' '.join(argv)} exited with {result.returncode}:\n"
                                f"{result.stdout}{result.stderr}")
        return result.stdout

    def stop(self) -> None:
        self.server.stop(grace=30)
        self.epmd.stop()

    def stop_node(self) -> None:
        """Stop the node's process only; name, ports, cookie, data and epmd stay, so
        ``start_node`` brings the same node back (as a container restart in a pod does)."""
        self.server.stop(grace=30)

    def restart(self) -> None:
        """The node's process again, as the kubelet restarts a container (epmd stays)."""
        self.stop_node()
        self.start_node()

    def start_node(self, timeout: float = 120.0) -> None:
        log = self.server.log_path
        offset = log.stat().st_size if log.exists() else 0
        self.server = ServerProcess("rabbitmq", [str(RABBITMQ_BIN / "rabbitmq-server")], log,
                                    env=self.env, cwd=self.workdir)

        def probe() -> bool:
            with open(log, "rb") as f:
                f.seek(offset)
                return READY_LINE in f.read()

        self.server.wait_ready(probe, timeout=timeout)


def _write_config(workdir: Path, ports: Ports, management: bool,
                  extra: Sequence[str]) -> None:
    lines = [
        f"listeners.tcp.1 = 127.0.0.1:{ports.amqp}",
        f"mqtt.listeners.tcp.1 = 127.0.0.1:{ports.mqtt}",
        # MQTT clients must present a username; none falls back to a default user.
        "mqtt.allow_anonymous = false",
        "mqtt.vhost = /",
        "mqtt.exchange = amq.topic",
        "loopback_users = none",
        "log.console = true",
        "log.console.level = info",
        "log.file = false",
    ]
    if management:
        lines += [f"management.tcp.port = {ports.management}", "management.tcp.ip = 127.0.0.1"]
    lines += extra
    (workdir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")


def _node_env(workdir: Path, ports: Ports, nodename: str, plugins_path: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # Erlang reads the cookie from $HOME/.erlang.cookie, node and CLI alike.
        "HOME": str(workdir),
        "ERL_EPMD_PORT": str(ports.epmd),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(ports.amqp),
        "RABBITMQ_DIST_PORT": str(ports.dist),
        # Keeps /etc/rabbitmq/rabbitmq-env.conf (the system service's settings) out.
        "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_LOGS": "-",
        "RABBITMQ_PLUGINS_DIR": plugins_path,
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
    }


def _accepts(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def start_rabbitmq(workdir: Path, shared_plugins_dir: Path | None = None, *,
                   plugins: Sequence[str] = ("rabbitmq_mqtt",),
                   management: bool = False, config: Sequence[str] = (),
                   timeout: float = 120.0) -> RabbitMQ:
    """Start a node; ``plugins`` are enabled at boot (``rabbitmq_management`` if ``management``).

    ``shared_plugins_dir`` (default ``workdir/plugins``) is searched after the system plugins;
    ``config`` lines are appended to the generated rabbitmq.conf.
    """
    system_dir = system_plugins_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    shared = shared_plugins_dir or workdir / "plugins"
    shared.mkdir(parents=True, exist_ok=True)
    enabled = [*plugins, *(["rabbitmq_management"] if management else [])]
    (workdir / "enabled_plugins").write_text(f"[{','.join(enabled)}].\n")
    (workdir / "rabbitmq-env.conf").write_text("# intentionally empty: see testbed/rabbitmq.py\n")
    (workdir / "advanced.config").write_text("[].\n")
    cookie = workdir / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
    epmd_bin = shutil.which("epmd")
    if epmd_bin is None:
        raise ServerFailed("epmd is not on PATH (Debian package erlang-base)")

    attempts = 3
    for attempt in range(1, attempts + 1):
        ports = Ports.pick()
        nodename = f"pf-{secrets.token_hex(4)}@localhost"
        _write_config(workdir, ports, management, config)
        env = _node_env(workdir, ports, nodename, f"{system_dir}:{shared}")
        epmd = ServerProcess("epmd", [epmd_bin, "-port", str(ports.epmd)], workdir / "epmd.log",
                             env=env)
        # Up before the node: a node that finds no epmd starts its own daemon, which outlives us.
        epmd.wait_ready(partial(_accepts, ports.epmd), timeout=10)
        log = workdir / "rabbitmq.log"
        offset = log.stat().st_size if log.exists() else 0
        server = ServerProcess("rabbitmq", [str(RABBITMQ_BIN / "rabbitmq-server")], log,
                               env=env, cwd=workdir)
        node = RabbitMQ(server, epmd, ports, nodename, workdir, shared, env)

        def probe(log: Path = log, offset: int = offset) -> bool:
            with open(log, "rb") as f:
                f.seek(offset)
                return READY_LINE in f.read()

        try:
            server.wait_ready(probe, timeout=timeout)
            return node
        except ServerFailed as e:
            node.stop()
            clash = "eaddrinuse" in str(e).lower() or "address already in use" in str(e)
            if attempt == attempts or not clash:
                raise
    raise ServerFailed(f"RabbitMQ did not start in {attempts} attempts")
