"""RabbitMQ's own CLI tools (``rabbitmqctl``, ``rabbitmq-plugins``) with a timeout on every call.

The tools reach the node over Erlang distribution: they need the node name, the node's Erlang
cookie (``$HOME/.erlang.cookie``) and epmd's port. Their failures are mapped at this boundary:
a node that cannot be contacted is ``BrokerUnavailable`` (retry later); a command the node
refuses is ``AdapterError`` carrying the tool's own message.

Expressions for ``rabbitmqctl eval`` are built only from validated atoms and from byte lists
(``erl_binary``), never by pasting user text into Erlang source.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.adapters.base import AdapterError, BrokerUnavailable

_UNREACHABLE = ("unable to perform an operation on node", "nodedown", "node down")
ATOM = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_JSON_MARK = "PLUGFORGE-JSON:"


@dataclass(frozen=True)
class Cli:
    node: str
    cli_dir: Path = Path("/usr/lib/rabbitmq/bin")
    home: Path | None = None       # holds .erlang.cookie; None: the sidecar's own $HOME
    epmd_port: str = ""            # ERL_EPMD_PORT; empty: epmd's default 4369
    timeout: float = 30.0

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8",
               "HOME": str(self.home) if self.home else os.environ.get("HOME", "/")}
        if self.epmd_port:
            env["ERL_EPMD_PORT"] = self.epmd_port
        return env

    def run(self, tool: str, *args: str, stdin: str | None = None) -> str:
        argv = [str(self.cli_dir / tool), "-n", self.node, "-q", *args]
        what = " ".join([tool, *(a for a in args if not a.startswith(("/", "-")))])
        try:
            result = subprocess.run(argv, env=self.env(), cwd=self.home or "/",
                                    input=stdin, capture_output=True, text=True,
                                    timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise BrokerUnavailable(f"{what}: no answer from node {self.node} within "
                                    f"{self.timeout:g}s") from e
        except OSError as e:
            raise AdapterError(f"cannot run {argv[0]}: {e}; the sidecar image needs the "
                               "RabbitMQ CLI tools (or set --adapter-opt cli_dir=...)") from e
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            if any(marker in output.lower() for marker in _UNREACHABLE):
                raise BrokerUnavailable(f"{what}: node {self.node} not reachable: "
                                        f"{_first_lines(output)}")
            raise AdapterError(f"{what} failed (exit {result.returncode}): "
                               f"{_error_lines(output)}")
        return result.stdout

    def eval(self, expression: str) -> str:
        """On standard input, not argv: expressions may hold passwords, and argv is visible
        to every process in the pod."""
        return self.run("rabbitmqctl", "eval", stdin=expression)

    def eval_json(self, body: str) -> Any:
        """Evaluate ``body`` (Erlang expressions ending in a map) and decode the map as JSON."""
        out = self.eval(f'io:format("~s~s~n", ["{_JSON_MARK}", rabbit_json:encode(begin '
                        f'{body} end)]), ok.')
        for line in out.splitlines():
            if line.startswith(_JSON_MARK):
                try:
                    return json.loads(line[len(_JSON_MARK):])
                except ValueError as e:
                    raise AdapterError(f"rabbitmqctl eval: unreadable answer {line!r}") from e
        raise AdapterError(f"rabbitmqctl eval: no answer in {_first_lines(out)!r}")

    def plugins(self, action: str, name: str, plugins_dir: str, enabled_file: str) -> str:
        """``rabbitmq-plugins enable|disable --online <name>`` on the running node. The tool
        resolves plugins in ``plugins_dir`` and rewrites ``enabled_file`` itself, so both are
        the node's own (and must be visible to the sidecar at the same paths)."""
        return self.run("rabbitmq-plugins", "--plugins-dir", plugins_dir,
                        "--enabled-plugins-file", enabled_file, action, "--online", atom(name))


def atom(name: str) -> str:
    if not ATOM.match(name):
        raise AdapterError(f"expected an Erlang application name ([a-z][a-z0-9_]*), found "
                           f"{name!r}")
    return name


def erl_binary(text: str) -> str:
    """An Erlang binary literal holding ``text`` as UTF-8: bytes as integers, no quoting."""
    data = text.encode()
    return "<<" + ",".join(str(b) for b in data) + ">>"


def erl_list(items: Sequence[str]) -> str:
    return "[" + ",".join(items) + "]"


def _error_lines(text: str) -> str:
    """The lines that say what went wrong (the tools print progress before the error)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lower().startswith("error")),
                 max(len(lines) - 4, 0))
    return " | ".join(lines[start:start + 6]) if lines else "(no output)"


def _first_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[:count]) if lines else "(no output)"
