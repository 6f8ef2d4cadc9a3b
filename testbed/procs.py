"""Run a real server as a child process: start it, wait until it answers, keep its log, stop it
(and, like a kubelet, start it again when it exits: ``Supervisor``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol


class ServerFailed(RuntimeError):
    """A server did not start or died; the message carries the tail of its log."""


def free_port() -> int:
    """A loopback port that was free a moment ago.

    For servers that cannot report the port they bound to themselves (kube-apiserver, the
    registry); callers retry on a lost race via ``start_with_port``.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One child process with its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # our signals reach its children, the terminal's do not
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll ``probe`` until it returns True; fail with the log tail if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready.\n"
                    f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                if probe():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ServerFailed(
            f"{self.name} did not answer within {timeout:.0f}s.\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()


def start_with_port(
    start: Callable[[int], ServerProcess], ready: Callable[[ServerProcess, int], None]
) -> tuple[ServerProcess, int]:
    """Start a server on a free port, retrying when another process grabbed the port first."""
    last: ServerFailed | None = None
    for _ in range(3):
        port = free_port()
        server = start(port)
        try:
            ready(server, port)
            return server, port
        except ServerFailed as e:
            server.stop()
            if not _lost_port_race(str(e)):
                raise
            last = e
    raise last or ServerFailed("could not start on a free port")


def _lost_port_race(message: str) -> bool:
    # How our servers say it: "Address already in use" (Go, C), "Is it already in use?"
    # (HiveMQ), eaddrinuse (Erlang).
    text = message.lower()
    return "already in use" in text or "eaddrinuse" in text


class Restartable(Protocol):
    server: ServerProcess

    def restart(self) -> None: ...


class Supervisor:
    """Plays the kubelet for one broker: when its process exits, start it again (unless
    ``paused`` is set: a test that stops the broker on purpose)."""

    def __init__(self, broker: Restartable, poll: float = 0.1) -> None:
        self.broker = broker
        self.restarts = 0
        self.paused = threading.Event()
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            if not self.paused.is_set() and self.broker.server.proc.poll() is not None:
                # Counted before the (slow) start: whoever waits for the new process may see
                # it up before restart() returns.
                self.restarts += 1
                self.broker.restart()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
