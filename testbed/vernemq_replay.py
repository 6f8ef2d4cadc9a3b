"""A VerneMQ 2.0.1 node replayed from recordings: its HTTP API and a ``vmq-admin`` executable.

VerneMQ cannot run on these machines. ``../shared/fixtures/vernemq/`` holds what a real node
answered (``COMMANDS.log`` maps each recorded argv / URL to its files). This module answers with
those recorded bytes. A small model of the node (which plugins are loaded, ``allow_anonymous``,
whether the plugin manager crashed) picks *which* recording applies, so sequences like
enable -> show -> disable replay as the node played them. The model lives in a JSON file shared
by the HTTP server (a thread of the test) and the ``vmq-admin`` script (a child process), so both
front ends see one node.

Where the model answers something that was not recorded, it says so in ``INFERRED`` (and tests
relying on it say so too); anything else unrecorded gets HTTP 400 (as VerneMQ does for unknown
commands) or, from the CLI, exit 127 with "no recording for ..." so a test fails loudly.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from testbed.replay_http import Request, Response
from testbed.shared import shared_fixture

FIXTURES = shared_fixture("vernemq")
RECORDED_KEY = "YNpBjrkqRXj6MmheZGYOQAmrELrY2zLt"  # apikey_create.stdout of the recording
RECORDED_PLUGIN = "deny_mallory"

# Answers with no recording behind them, built from recorded pieces (documented here once).
INFERRED = {
    "http plugin enable ok": 'HTTP 200 {"text":"Done","type":"text"}: the CLI printed "Done"; '
                             "the HTTP API's text JSON shape is recorded (config/show)",
    "http plugin disable": "same shapes as enable: Done text, or the CLI's recorded "
                           "plugin_not_found message in the recorded alert shape",
    "cli node down": "relx's start script text when the node does not answer pings",
}

_APP_TERM = re.compile(r"^\s*\{\s*application\s*,\s*'?([A-Za-z0-9_@]+)'?", re.MULTILINE)


@dataclass(frozen=True)
class Recorded:
    stdout: str
    stderr: str
    rc: int


class VerneMQReplay:
    """The modelled node; ``state_dir`` holds its state file (create one per test)."""

    def __init__(self, state_dir: Path, fixtures: Path = FIXTURES,
                 api_key: str = RECORDED_KEY) -> None:
        self.fixtures = fixtures
        self.state_dir = state_dir
        self.api_key = api_key
        state_dir.mkdir(parents=True, exist_ok=True)
        if not self._state_path.exists():
            self._write({"loaded": {}, "allow_anonymous": "off", "crashed": False,
                         "down": False})

    # --- model state -----------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.state_dir / "node.json"

    @contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        """The node's state, locked against the other front end; changes are saved."""
        with open(self.state_dir / "node.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self._state_path.read_text())
            yield data
            self._write(data)

    def _write(self, data: Mapping[str, Any]) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._state_path)

    def snapshot(self) -> dict[str, Any]:
        return dict(json.loads(self._state_path.read_text()))

    # --- recordings ------------------------------------------------------------------------

    def cli_recording(self, name: str) -> Recorded:
        base = self.fixtures / name
        return Recorded(Path(f"{base}.stdout").read_text(), Path(f"{base}.stderr").read_text(),
                        int(Path(f"{base}.rc").read_text().strip()))

    def http_recording(self, name: str, body: bytes | None = None) -> Response:
        base = self.fixtures / f"http_{name}"
        status = int(Path(f"{base}.code").read_text().strip())
        headers = {}
        for line in Path(f"{base}.headers").read_text().splitlines()[1:]:
            key, sep, value = line.partition(":")
            if sep and key.lower() in ("content-type", "www-authenticate", "allow"):
                headers[key] = value.strip()
        return Response(status, Path(f"{base}.body").read_bytes() if body is None else body,
                        headers)

    # --- plugin manager model --------------------------------------------------------------

    def _enable(self, name: str | None, path: str | None) -> str:
        """What the plugin manager did: done, badpath, already, not_found, crash, incomplete."""
        if not name:
            return "incomplete"
        if path is not None and not Path(path).is_dir():
            return "badpath"
        with self.state() as node:
            if name in node["loaded"]:
                return "already"
            if path is None or not _ebin_dirs(Path(path)):
                return "not_found"
            apps = [_app_in(e) for e in _ebin_dirs(Path(path))]
            if name not in apps:
                node["crashed"] = True
                node["loaded"] = {}
                return "crash"
            node["loaded"][name] = path
            return "done"

    def _disable(self, name: str) -> bool:
        with self.state() as node:
            return node["loaded"].pop(name, None) is not None

    # --- HTTP API --------------------------------------------------------------------------

    def http(self, request: Request) -> Response:
        node = self.snapshot()
        if node["crashed"]:
            return Response(599, b"replay: a crashed plugin manager was not recorded over HTTP")
        if request.method != "GET":
            return self.http_recording("post_plugin_show")
        if not self._authorized(request.headers):
            return self.http_recording("noauth_plugin_show" if "authorization" not in
                                       request.headers else "badkey_plugin_show")
        flags = _query_flags(request.query)
        path = request.path
        loaded = node["loaded"]
        if path == "/api/v1/plugin/show":
            if not flags:
                return self.http_recording("plugin_show_with_deny_mallory"
                                           if RECORDED_PLUGIN in loaded else "plugin_show")
            if flags == {"--internal": None} and not loaded:
                return self.http_recording("plugin_show_internal")
            if flags == {"--plugin": "vmq_acl"}:
                return self.http_recording("plugin_show_filter")
            if "--hook" in flags:
                return self.http_recording("plugin_show_hook")
        elif path == "/api/v1/plugins" and not flags and not loaded:
            return self.http_recording("plugins_alias")
        elif path == "/api/v1/cluster/show" and not flags:
            return self.http_recording("cluster_show")
        elif path == "/api/v1/listener/show" and not flags:
            return self.http_recording("listener_show")
        elif path == "/api/v1/api-key/show" and not flags:
            return self.http_recording("apikey_show")
        elif path == "/api/v1/set":
            return self.http_recording("set_allow_anonymous_on")
        elif path == "/api/v1/show":
            return self.http_recording("show_allow_anonymous")
        elif path == "/api/v1/config/show" and flags == {"app": "vmq_server",
                                                         "--key": "allow_anonymous"} \
                and node["allow_anonymous"] == "on":
            return self.http_recording("config_show_key")
        elif path == "/api/v1/plugin/enable":
            return self._http_enable(flags)
        elif path == "/api/v1/plugin/disable" and set(flags) == {"--name"}:
            name = flags["--name"] or ""
            if self._disable(name):
                return _text_json("Done")
            return _alert_json(f"Can't disable plugin: {name} due to plugin_not_found")
        return self.http_recording("unknown_cmd")

    def _http_enable(self, flags: Mapping[str, str | None]) -> Response:
        name = flags.get("--name")
        outcome = self._enable(name, flags.get("--path"))
        if outcome == "badpath":
            return self.http_recording("plugin_enable_badpath_http")
        if outcome == "already":
            return self.http_recording("plugin_enable_again_http",
                                       _named(self.fixtures / "http_plugin_enable_again_http.body",
                                              name or ""))
        if outcome == "not_found":
            return self.http_recording(
                "plugin_enable_nonexistent_http",
                (self.fixtures / "http_plugin_enable_nonexistent_http.body").read_bytes()
                .replace(b"no_such_plugin", (name or "").encode()))
        if outcome == "done":
            return _text_json("Done")
        return Response(500)  # crash / incomplete: not recorded over HTTP

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if headers.get("x-api-key") == self.api_key:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user = base64.b64decode(value).decode().partition(":")[0]
        except ValueError:
            return False
        return user == self.api_key

    # --- vmq-admin -------------------------------------------------------------------------

    def cli(self, argv: list[str]) -> Recorded:
        node = self.snapshot()
        if node["down"]:
            return Recorded("Node 'VerneMQ@127.0.0.1' not responding to pings.\n", "", 1)
        flags = _argv_flags(argv)
        words = [a for a in argv if not a.startswith("-")]
        if words == ["plugin", "show"] and not flags:
            if node["crashed"]:
                return self.cli_recording("plugin_show_after_mgr_crash")
            return self.cli_recording("plugin_show_after_enable" if RECORDED_PLUGIN in
                                      node["loaded"] else "plugin_show")
        if words == ["plugin", "show"] and flags == {"--internal": None}:
            if node["crashed"]:
                return self.cli_recording("plugin_show_internal_after_mgr_crash")
            if not node["loaded"]:
                return self.cli_recording("plugin_show_internal")
        if words == ["plugin", "show"] and flags == {"--format": "json"} and not node["crashed"]:
            if RECORDED_PLUGIN in node["loaded"]:  # README: --format=json == the HTTP body
                body = (self.fixtures / "http_plugin_show_with_deny_mallory.body").read_text()
                return Recorded(body, "", 0)
            return self.cli_recording("plugin_show_json")
        if words == ["plugin", "enable"] and set(flags) <= {"--name", "--path"}:
            return self._cli_enable(flags)
        if words == ["plugin", "disable"] and set(flags) == {"--name"}:
            name = flags["--name"] or ""
            if self._disable(name):
                return self.cli_recording("plugin_disable")
            return _renamed(self.cli_recording("plugin_disable_notenabled"), name)
        if words == ["cluster", "show"] and not flags:
            return self.cli_recording("cluster_show")
        if words[:1] == ["set"] and len(argv) == 2:
            return self._cli_set(argv[1])
        if words[:1] == ["show"] and not flags:
            return self._cli_show(words[1:], node)
        return Recorded("", f"replay: no recording for vmq-admin {' '.join(argv)}\n", 127)

    def _cli_enable(self, flags: Mapping[str, str | None]) -> Recorded:
        name, path = flags.get("--name"), flags.get("--path")
        outcome = self._enable(name, path)
        if outcome == "incomplete":
            return self.cli_recording("plugin_enable_noname")
        if outcome == "badpath":
            recorded = self.cli_recording("plugin_enable_badpath")
            return Recorded(recorded.stdout.replace("/srv/vmq/does/not/exist", path or ""),
                            recorded.stderr, recorded.rc)
        if outcome == "already":
            return _renamed(self.cli_recording("plugin_enable_again"), name or "")
        if outcome == "not_found":
            return _renamed(self.cli_recording("plugin_enable_dir_without_ebin"), name or "")
        if outcome == "crash":
            return self.cli_recording("plugin_enable_name_mismatch")
        return self.cli_recording("plugin_enable")

    def _cli_set(self, assignment: str) -> Recorded:
        recorded = {"allow_anonymous=on": "set_allow_anonymous_on",
                    "allow_anonymous=off": "set_allow_anonymous_off",
                    "allow_anonymous=maybe": "set_bad_value",
                    "no_such_key=1": "set_unknown_key",
                    "listener.max_connections=5": "set_not_whitelisted"}.get(assignment)
        if recorded is None:
            return Recorded("", f"replay: no recording for vmq-admin set {assignment}\n", 127)
        result = self.cli_recording(recorded)
        if result.rc == 0:
            with self.state() as node:
                node["allow_anonymous"] = assignment.partition("=")[2]
        return result

    def _cli_show(self, keys: list[str], node: Mapping[str, Any]) -> Recorded:
        value = node["allow_anonymous"]
        if keys == ["allow_anonymous"]:
            return self.cli_recording("show_allow_anonymous_after" if value == "on"
                                      else "show_allow_anonymous_before")
        if keys == ["allow_anonymous", "max_inflight_messages"] and value == "on":
            return self.cli_recording("show_multi")
        if keys == ["no_such_key"]:
            return self.cli_recording("show_unknown_key")
        return Recorded("", f"replay: no recording for vmq-admin show {' '.join(keys)}\n", 127)


def install_vmq_admin(bin_dir: Path, state_dir: Path, fixtures: Path = FIXTURES) -> Path:
    """An executable ``bin_dir/vmq-admin`` that replays the node in ``state_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "vmq-admin"
    root = Path(__file__).resolve().parents[1]
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from testbed.vernemq_replay import cli_main\n"
        f"sys.exit(cli_main(sys.argv[1:], {str(state_dir)!r}, {str(fixtures)!r}))\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def cli_main(argv: list[str], state_dir: str, fixtures: str) -> int:
    result = VerneMQReplay(Path(state_dir), Path(fixtures)).cli(argv)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc


def _ebin_dirs(path: Path) -> list[Path]:
    # vmq_plugin_mgr:create_paths/1: <path>/ebin, <path>/deps/*/ebin, <path>/lib/*/ebin
    return sorted(p for pattern in ("ebin", "deps/*/ebin", "lib/*/ebin")
                  for p in path.glob(pattern) if p.is_dir())


def _app_in(ebin: Path) -> str:
    for app in ebin.glob("*.app"):
        match = _APP_TERM.search(app.read_text(errors="replace"))
        if match:
            return match.group(1)
    return ""


def _query_flags(query: str) -> dict[str, str | None]:
    flags: dict[str, str | None] = {}
    for part in query.split("&") if query else []:
        key, sep, value = part.partition("=")
        flags[unquote(key)] = unquote(value) if sep else None
    return flags


def _argv_flags(argv: list[str]) -> dict[str, str | None]:
    flags: dict[str, str | None] = {}
    for arg in argv:
        if arg.startswith("-"):
            key, sep, value = arg.partition("=")
            flags[key] = value if sep else None
    return flags


def _named(path: Path, name: str) -> bytes:
    return path.read_bytes().replace(RECORDED_PLUGIN.encode(), name.encode())


def _renamed(recorded: Recorded, name: str) -> Recorded:
    return Recorded(recorded.stdout.replace(RECORDED_PLUGIN, name), recorded.stderr,
                    recorded.rc)


def _text_json(text: str) -> Response:
    return Response(200, json.dumps({"text": text, "type": "text"},
                                    separators=(",", ":")).encode(),
                    {"content-type": "application/json"})


def _alert_json(text: str) -> Response:
    return Response(200, json.dumps({"alert": [{"text": text, "type": "text"}],
                                     "type": "alert"}, separators=(",", ":")).encode(),
                    {"content-type": "application/json"})
