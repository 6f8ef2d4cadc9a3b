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

from builder.recipe_errors import BuildFailed, BuildTimeout

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_TAIL_LINES = 40


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


def run_steps(steps: Sequence[tuple[Sequence[str], Mapping[str, str]]], *, cwd: Path,
              log_path: Path, deadline: float, timeout: float, echo: TextIO | None) -> None:
    """Run each ``(argv, env)`` in ``cwd`` in order until one fails or ``deadline`` passes.

    ``deadline`` is on the ``time.monotonic`` clock; ``timeout`` is only used in messages.
    Output (stdout and stderr merged) goes to ``log_path`` and, line by line, to ``echo``.
    """
    with open(log_path, "ab") as log:
        for index, (argv, env) in enumerate(steps):
            _write(log, echo, f"$ {' '.join(argv)}\n")
            code = _run_one(argv, env, cwd, log, echo, deadline)
            if code is None:
                _write(log, echo, f"!! killed: build exceeded its {timeout:g}s limit\n")
                log.flush()
                raise BuildTimeout(
                    f"build exceeded its time limit of {timeout:g}s during step {index + 1} "
                    f"({argv[0]}); every process it started was killed. Make the build faster "
                    f"or raise timeoutSeconds in the recipe.\n"
                    f"--- last lines of the build log ---\n{log_tail(log_path)}",
                    timeout=timeout, log_tail=log_tail(log_path))
            if code != 0:
                log.flush()
                tail = log_tail(log_path)
                raise BuildFailed(
                    f"build step {index + 1} ({' '.join(argv)}) exited with code {code}.\n"
                    f"--- last lines of the build log ---\n{tail}",
                    step=index + 1, exit_code=code, log_tail=tail)


def _run_one(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: BinaryIO,
             echo: TextIO | None, deadline: float) -> int | None:
    """Exit code of one step, or None if it was killed at the deadline."""
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as e:
        _write(log, echo, f"!! cannot start {argv[0]}: {e}\n")
        return 127
    stdout = proc.stdout
    if stdout is None:  # impossible with stdout=PIPE; keeps the type checker honest
        raise RuntimeError("subprocess pipe missing")
    pump = threading.Thread(target=_pump, args=(stdout, log, echo), daemon=True)
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


def _pump(stream: BinaryIO, log: BinaryIO, echo: TextIO | None) -> None:
    for line in iter(stream.readline, b""):
        log.write(line)
        log.flush()
        if echo is not None:
            echo.write(line.decode("utf-8", errors="replace"))
            echo.flush()
    stream.close()


def _write(log: BinaryIO, echo: TextIO | None, text: str) -> None:
    log.write(text.encode())
    log.flush()
    if echo is not None:
        echo.write(text)
        echo.flush()
