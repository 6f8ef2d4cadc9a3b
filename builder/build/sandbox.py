"""Run untrusted build commands: clean environment, own process group, wall-clock deadline.

Nothing from the runner's own environment reaches a build except ``PATH`` — in particular no
credentials (registry, Git, Kubernetes tokens) — and every process the build starts is killed
when the deadline passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

from builder.build.recipe_errors import BuildFailed, BuildTimeout

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_TAIL_LINES = 40
LOG_LIMIT_BYTES = 64 * 1024 * 1024


def clean_env(home: Path, tmp: Path, extra: Mapping[str, str] | None = None,
              path: str | None = None) -> dict[str, str]:
    """The whole environment a build sees: nothing inherited but ``PATH``."""
    env = {
        "PATH": path if path is not None else os.environ.get("PATH", DEFAULT_PATH),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
    }
    env.update(extra or {})
    return env


def cache_env(caches: Sequence[str], cache_root: Path, home: Path) -> dict[str, str]:
    """Environment that points each named cache at a persistent dir under ``cache_root``.

    maven: ``~/.m2/settings.xml`` in the fresh HOME names the local repository (mvn reads it
    without any flag) and ``MAVEN_OPTS`` repeats it for tools that bypass settings.
    rebar3: ``REBAR_CACHE_DIR`` (hex packages, plugins).
    """
    env: dict[str, str] = {}
    for name in caches:
        directory = cache_root / "build-caches" / name
        directory.mkdir(parents=True, exist_ok=True)
        if name == "maven":
            m2 = home / ".m2"
            m2.mkdir(parents=True, exist_ok=True)
            (m2 / "settings.xml").write_text(
                "<settings>\n"
                f"  <localRepository>{_xml_escape(str(directory))}</localRepository>\n"
                "</settings>\n")
            env["MAVEN_OPTS"] = f"-Dmaven.repo.local={directory}"
        elif name == "rebar3":
            env["REBAR_CACHE_DIR"] = str(directory)
    return env


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _LogSink:
    """The build log file plus the optional live echo, shared by the pump thread and the runner.

    Output past ``limit`` bytes is counted but not stored, so a build that floods its output
    cannot fill the runner's disk; the pipe is still drained so the build does not block.
    """

    def __init__(self, path: Path, echo: TextIO | None, limit: int) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._echo = echo
        self._limit = limit
        self._written = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            room = self._limit - self._written
            if room > 0:
                kept = data[:room]
                self._file.write(kept)
                self._file.flush()
                self._written += len(kept)
                if self._echo is not None:
                    self._echo.write(kept.decode("utf-8", errors="replace"))
                    self._echo.flush()
            self._dropped += max(0, len(data) - max(room, 0))

    def close(self) -> None:
        with self._lock:
            if self._dropped:
                note = f"\n!! log truncated: {self._dropped} more bytes of output not kept\n"
                self._file.write(note.encode())
            self._file.close()


def run_steps(steps: Sequence[tuple[Sequence[str], Mapping[str, str]]], *, cwd: Path,
              log_path: Path, deadline: float, timeout: float, echo: TextIO | None,
              log_limit: int = LOG_LIMIT_BYTES,
              shown: Sequence[Sequence[str]] | None = None) -> None:
    """Run each ``(argv, env)`` in ``cwd`` in order until one fails or ``deadline`` passes.

    ``deadline`` is on the ``time.monotonic`` clock; ``timeout`` is only used in messages.
    Output (stdout and stderr merged) goes to ``log_path`` (at most ``log_limit`` bytes) and,
    as it arrives, to ``echo``. ``shown``: the steps as logs and errors name them (a runner
    that wraps each step, e.g. in ``podman exec``, shows the recipe's argv), default ``argv``.
    """
    sink = _LogSink(log_path, echo, log_limit)
    try:
        for index, (argv, env) in enumerate(steps):
            display = list(shown[index]) if shown is not None else list(argv)
            sink.write(f"$ {' '.join(display)}\n".encode())
            code = _run_one(argv, env, cwd, sink, deadline)
            if code is None:
                sink.write(f"!! killed: build exceeded its {timeout:g}s limit\n".encode())
                tail = log_tail(log_path)
                raise BuildTimeout(
                    f"build exceeded its time limit of {timeout:g}s during step {index + 1} "
                    f"({display[0]}); every process it started was killed. Make the build faster "
                    f"or raise timeoutSeconds in the recipe.\n"
                    f"--- last lines of the build log ---\n{tail}",
                    timeout=timeout, log_tail=tail)
            if code != 0:
                tail = log_tail(log_path)
                raise BuildFailed(
                    f"build step {index + 1} ({' '.join(display)}) exited with code {code}.\n"
                    f"--- last lines of the build log ---\n{tail}",
                    step=index + 1, exit_code=code, log_tail=tail)
    finally:
        sink.close()


def _run_one(argv: Sequence[str], env: Mapping[str, str], cwd: Path, sink: _LogSink,
             deadline: float) -> int | None:
    """Exit code of one step, or None if it was killed at the deadline."""
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        sink.write(f"!! cannot start {argv[0]}: {e}\n".encode())
        return 127
    stdout = proc.stdout
    if stdout is None:  # impossible with stdout=PIPE; keeps the type checker honest
        raise RuntimeError("subprocess pipe missing")
    pump = threading.Thread(target=_pump, args=(stdout, sink), daemon=True)
    pump.start()
    timed_out = False
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # Leftover children (daemons, background jobs) die with the step either way.
        _kill_group(proc.pid)
        proc.wait()
        # A grandchild that escaped the group may still hold the pipe: do not wait for it.
        pump.join(timeout=5)
    return None if timed_out else proc.returncode


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _pump(stream: BinaryIO, sink: _LogSink) -> None:
    # Bounded reads: a line without a newline must not grow without limit in memory.
    for chunk in iter(lambda: stream.readline(65536), b""):
        sink.write(chunk)
    stream.close()
