"""VerneMQ's admin interface: its HTTP API (``/api/v1/...``) and the ``vmq-admin`` CLI.

Both front ends run the same clique commands. What a live VerneMQ 2.0.1 node shows
(``tests/test_adapter_vernemq.py``), and this module relies on:

* A command answers clique "status" items: text, table or alert. The HTTP API (and
  ``vmq-admin ... --format=json``) encodes them as JSON, e.g. ``{"type":"alert","alert":
  [{"type":"text","text":"Can't enable plugin: x due to plugin_not_found"}]}``; the CLI prints
  tables with ANSI bold escapes in the header cells even when stdout is a pipe.
* Failures are printed, not signalled: ``Can't enable plugin ...`` comes with exit code 0 from
  the CLI and HTTP 200 from the API. The text decides, never the exit code alone.
* The HTTP API takes GET only (POST: 405), flags in the query string (``?--name=x&--path=/p``),
  the API key as the basic-auth user name (401 otherwise), and answers 400 with an empty body
  for an unknown command or a flag value that fails its check (a ``--path`` that does not exist).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import urllib3

from sidecar.adapters.base import AdapterError, BrokerUnavailable

Flags = Mapping[str, str | None]  # "--name" -> "x"; "--internal" -> None; "app" -> "vmq_server"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# relx's start script prints these when the node does not answer its distribution ping.
_NODE_DOWN = ("not responding to pings", "Node is not running")


@dataclass(frozen=True)
class Reply:
    """One command's answer, whichever front end gave it."""

    texts: tuple[str, ...] = ()
    alerts: tuple[str, ...] = ()
    rows: tuple[Mapping[str, str], ...] = ()

    def message(self) -> str:
        return " ".join(self.alerts + self.texts).strip()


class VmqAdmin(Protocol):
    """Runs one clique command (``["plugin", "show"]`` + flags) against the node."""

    def run(self, command: Sequence[str], flags: Flags = {}) -> Reply: ...  # noqa: B006


def parse_json(text: str) -> Reply:
    """The clique JSON writer's output (HTTP API body, ``--format=json``)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise AdapterError(f"VerneMQ answered something that is not clique JSON: "
                           f"{text[:200]!r}") from e
    texts: list[str] = []
    alerts: list[str] = []
    rows: list[Mapping[str, str]] = []
    for item in data if isinstance(data, list) else [data]:
        _collect(item, texts, alerts, rows, in_alert=False)
    return Reply(tuple(texts), tuple(alerts), tuple(rows))


def _collect(item: Any, texts: list[str], alerts: list[str],
             rows: list[Mapping[str, str]], *, in_alert: bool) -> None:
    if not isinstance(item, dict):
        return
    kind = item.get("type")
    if kind == "text":
        (alerts if in_alert else texts).append(str(item.get("text", "")))
    elif kind == "table":
        for row in item.get("table", []):
            if isinstance(row, dict):
                rows.append({str(k): _cell(v) for k, v in row.items()})
    elif kind == "alert":
        for sub in item.get("alert", []):
            _collect(sub, texts, alerts, rows, in_alert=True)
    elif kind == "list":
        for sub in item.get("list", []):
            (alerts if in_alert else texts).append(str(sub))


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_table(text: str) -> tuple[Mapping[str, str], ...]:
    """Rows of a clique table as printed by ``vmq-admin`` (ANSI in headers, multi-line cells).

    A row whose first cell is empty continues the row above (one hook per line in
    ``plugin show``); a cell's lines are joined with newlines.
    """
    header: list[str] | None = None
    rows: list[dict[str, list[str]]] = []
    for line in _ANSI.sub("", text).splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if len(cells) != len(header):
            raise AdapterError(f"vmq-admin printed a table row with {len(cells)} cells under "
                               f"{len(header)} headers: {line!r}")
        if cells[0] == "" and rows:
            target = rows[-1]
        elif any(cells):
            target = {name: [] for name in header}
            rows.append(target)
        else:
            continue
        for name, cell in zip(header, cells, strict=True):
            if cell:
                target[name].append(cell)
    return tuple({name: "\n".join(lines) for name, lines in row.items()} for row in rows)


def parse_text(text: str) -> Reply:
    """Plain (non-table) CLI output: each line a text, lines of failures an alert."""
    clean = _ANSI.sub("", text)
    if "|" in clean and "+-" in clean:
        return Reply(rows=parse_table(clean))
    lines = tuple(line for line in (x.strip() for x in clean.splitlines()) if line)
    failed = tuple(line for line in lines if _is_failure(line))
    return Reply(tuple(line for line in lines if line not in failed), failed)


def _is_failure(line: str) -> bool:
    return line.startswith(("Can't ", "Invalid ", "Incomplete ", "Error ", "Unknown ",
                            "RPC to ", "Translation for ", "Usage:"))


class HttpAdmin:
    """The HTTP API on the node's HTTP listener (``http://127.0.0.1:8888``)."""

    def __init__(self, base_url: str, api_key: str, *, key_source: str,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()
        self._key_source = key_source  # named in errors; the key itself never is
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout), retries=False)
        self.calls = 0

    def run(self, command: Sequence[str], flags: Flags = {}) -> Reply:  # noqa: B006
        url = f"{self.base_url}/api/v1/{'/'.join(quote(c, safe='-') for c in command)}"
        query = "&".join(quote(k, safe="-") + ("" if v is None else "=" + quote(v, safe="/-_.:@"))
                         for k, v in flags.items())
        if query:
            url += "?" + query
        what = _describe(command, flags)
        self.calls += 1
        try:
            response = self._http.request("GET", url, headers={"Authorization": self._auth})
        except urllib3.exceptions.HTTPError as e:
            raise BrokerUnavailable(f"VerneMQ HTTP API at {self.base_url} did not answer "
                                    f"`{what}`: {_reason(e)}") from e
        body = response.data.decode("utf-8", "replace")
        if response.status == 200:
            return parse_json(body)
        if response.status == 401:
            raise AdapterError(
                f"VerneMQ refused the API key from {self._key_source} (HTTP 401 on `{what}`): "
                "expected a key listed by `vmq-admin api-key show` with scope mgmt; "
                "fix the Secret or create a key with `vmq-admin api-key create scope=mgmt`")
        if response.status == 400:
            raise AdapterError(
                f"VerneMQ refused `{what}` (HTTP 400, empty body): it answers so for an unknown "
                "command or a flag value it cannot use, such as a --path that does not exist "
                "on the broker's filesystem")
        if response.status in (502, 503, 504):
            raise BrokerUnavailable(f"VerneMQ HTTP API answered {response.status} to `{what}`")
        raise AdapterError(f"VerneMQ answered HTTP {response.status} to `{what}`"
                           + (f": {body[:300]}" if body else " with an empty body"))


class CliAdmin:
    """``vmq-admin`` run as a child process (the sidecar shares the node's tooling)."""

    def __init__(self, executable: str, *, timeout: float = 30.0) -> None:
        self.executable = executable
        self.timeout = timeout
        self.calls = 0

    def run(self, command: Sequence[str], flags: Flags = {}) -> Reply:  # noqa: B006
        return parse_text(self.run_raw(command, flags))

    def run_raw(self, command: Sequence[str], flags: Flags = {}) -> str:  # noqa: B006
        """stdout of a command that worked; AdapterError/BrokerUnavailable otherwise."""
        argv = [self.executable, *command, *(k if v is None else f"{k}={v}"
                                             for k, v in flags.items())]
        what = _describe(command, flags)
        self.calls += 1
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError as e:
            raise AdapterError(
                f"vmq-admin not found at {self.executable!r}: the CLI front end needs the "
                "node's tooling in the sidecar (--adapter-opt vmq_admin=/path/to/vmq-admin)"
            ) from e
        except subprocess.TimeoutExpired as e:
            raise BrokerUnavailable(f"`vmq-admin {what}` did not finish within "
                                    f"{self.timeout:.0f}s") from e
        output = (done.stdout + done.stderr).strip()
        if any(marker in output for marker in _NODE_DOWN):
            raise BrokerUnavailable(f"VerneMQ node is not running: {_first_line(output)}")
        if done.returncode != 0:
            raise AdapterError(f"`vmq-admin {what}` failed (exit {done.returncode}): "
                               f"{_summary(output)}")
        return done.stdout


def _describe(command: Sequence[str], flags: Flags) -> str:
    shown = []
    for key, value in flags.items():
        shown.append(key if value is None else f"{key}={value}")
    return " ".join([*command, *shown])


def _reason(error: urllib3.exceptions.HTTPError) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _summary(output: str) -> str:
    """The broker's words without Erlang log-report headers; long stack traces cut short."""
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and not line.startswith("=ERROR REPORT")]
    text = " ".join(lines)
    return text if len(text) <= 400 else text[:400] + " ..."


def read_secret(path: str, what: str) -> str:
    """The first line of a mounted Secret file; never echoed."""
    try:
        value = Path(path).read_text().strip()
    except OSError as e:
        raise AdapterError(f"cannot read {what} from {path}: {e.strerror}") from e
    if not value or "\n" in value:
        raise AdapterError(f"{what} file {path} must hold exactly one non-empty line")
    return value


class NodeTool:
    """Plain function calls on the node (``nodetool rpcterms``), for what no admin command
    does: unloading a half-loaded plugin app and pruning the code path.

    Uses the node's own tooling beside ``vmq-admin`` (``../lib/env.sh`` defines ``$NODETOOL``
    with the node's name and cookie, as ``vmq-admin`` itself does). Arguments are validated
    atoms and paths, passed as separate argv entries, never through a shell string.
    """

    _SCRIPT = '. "$(dirname "$0")/../lib/env.sh" && exec $NODETOOL rpcterms "$@"'

    def __init__(self, vmq_admin: Path, *, timeout: float = 30.0) -> None:
        self.vmq_admin = vmq_admin
        self.timeout = timeout
        self.calls = 0

    @classmethod
    def beside(cls, vmq_admin: str, *, timeout: float = 30.0) -> NodeTool | None:
        """The node tool of the release ``vmq_admin`` belongs to; None without one."""
        found = shutil.which(vmq_admin)
        if found is None:
            return None
        path = Path(found).resolve()
        return cls(path, timeout=timeout) if (path.parent.parent / "lib" / "env.sh").is_file() \
            else None

    def call(self, module: str, function: str, *args: str) -> str:
        """``module:function(args)``; each arg an Erlang term (``erl_atom``, ``erl_string``).
        Returns the result as the node prints it (``~p``)."""
        terms = "".join(f"{a}. " for a in args)  # a dot ends a term only before white space
        self.calls += 1
        try:
            done = subprocess.run(["sh", "-c", self._SCRIPT, str(self.vmq_admin), module,
                                   function, terms], capture_output=True, text=True,
                                  timeout=self.timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired as e:
            raise BrokerUnavailable(f"rpc {module}:{function} did not finish within "
                                    f"{self.timeout:.0f}s") from e
        output = (done.stdout + done.stderr).strip()
        if any(marker in output for marker in _NODE_DOWN):
            raise BrokerUnavailable(f"VerneMQ node is not running: {_first_line(output)}")
        if done.returncode != 0:
            raise AdapterError(f"rpc {module}:{function} failed (exit {done.returncode}): "
                               f"{_summary(output)}")
        return done.stdout.strip()


_ERL_ATOM = re.compile(r"^[a-z][a-z0-9_]*$")


def erl_atom(value: str) -> str:
    if not _ERL_ATOM.match(value):
        raise AdapterError(f"{value!r} is not a plain Erlang atom")
    return value


def erl_string(value: str) -> str:
    if any(c in value for c in '"\\\n\r\0'):
        raise AdapterError(f"{value!r} cannot be passed as an Erlang string")
    return f'"{value}"'
