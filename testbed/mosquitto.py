"""A real Mosquitto broker (Debian's ``/usr/sbin/mosquitto``) on 127.0.0.1 and a free port.

The generated ``mosquitto.conf`` has one listener, optional auth plugin with ``plugin_opt_*``
options, an ``include_dir`` (``conf.d/``, for files other components drop in) and any extra
lines. The broker logs to ``mosquitto.log`` (its ``log_dest file``; stderr goes there too).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed.procs import ServerFailed, ServerProcess, start_with_port

MOSQUITTO_BINARY = "/usr/sbin/mosquitto"


@dataclass
class MosquittoConfig:
    """What goes into ``mosquitto.conf`` besides the listener."""

    plugin: Path | None = None
    plugin_options: Mapping[str, str] = field(default_factory=dict)
    allow_anonymous: bool | None = None
    """Default: False when a plugin is configured (it must decide), True otherwise."""
    extra_lines: Sequence[str] = ()

    def render(self, port: int, include_dir: Path, log_path: Path) -> str:
        anonymous = self.allow_anonymous if self.allow_anonymous is not None \
            else self.plugin is None
        lines = [
            "per_listener_settings false",
            # Running as root, mosquitto would switch to the 'mosquitto' user and lose access to
            # the test's private tmp dirs (plugin .so, include dir).
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {port} 127.0.0.1",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            "persistence false",
            # Not stdout: mosquitto block-buffers it when it is a file. Shares the file with
            # ServerProcess's capture of stderr (both append).
            f"log_dest file {log_path}",
            "log_type all",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.plugin is not None:
            lines.append(f"plugin {self.plugin}")
            lines += [f"plugin_opt_{key} {value}" for key, value in self.plugin_options.items()]
        lines += list(self.extra_lines)
        # Last, so the included files can add to everything above.
        lines.append(f"include_dir {include_dir}")
        return "\n".join(lines) + "\n"


class Mosquitto:
    """Handle on a running broker; ``reload()`` sends SIGHUP, ``restart()`` keeps the port."""

    def __init__(self, workdir: Path, config: MosquittoConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.conf_path = workdir / "mosquitto.conf"
        self.include_dir = workdir / "conf.d"
        self.log_path = workdir / "mosquitto.log"
        self.include_dir.mkdir(parents=True, exist_ok=True)
        self.server, self.port = start_with_port(self._start, self._ready)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.server.pid

    def write_config(self) -> None:
        """Rewrite ``mosquitto.conf`` from ``self.config`` (takes effect on reload/restart)."""
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(self.config.render(self.port, self.include_dir, self.log_path))
        tmp.replace(self.conf_path)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its config (not plugins: those load only at start)."""
        os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> None:
        self.server.stop()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same port with the current config file."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            self.server = self._start(self.port)
            try:
                self._ready(self.server, self.port)
                return
            except ServerFailed as e:
                self.server.stop()
                if "address already in use" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        return self.server.log_tail(lines)

    def _start(self, port: int) -> ServerProcess:
        self.port = port
        self.write_config()
        return ServerProcess("mosquitto", [MOSQUITTO_BINARY, "-c", str(self.conf_path)],
                             self.log_path, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                 "LANG": "C.UTF-8"})

    @staticmethod
    def _ready(server: ServerProcess, port: int) -> None:
        def probe() -> bool:
            # The log line proves it is our broker that owns the port, not a stranger.
            if f"listen socket on port {port}" not in server.log_tail(200):
                return False
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        server.wait_ready(probe, timeout=20)


def start_mosquitto(workdir: Path, config: MosquittoConfig | None = None) -> Mosquitto:
    """Start a broker with ``config`` (default: anonymous access, no plugin)."""
    if not Path(MOSQUITTO_BINARY).exists() and shutil.which("mosquitto") is None:
        raise ServerFailed("mosquitto is not installed (Debian package mosquitto); "
                           "scripts/test installs it")
    workdir.mkdir(parents=True, exist_ok=True)
    return Mosquitto(workdir, config or MosquittoConfig())
