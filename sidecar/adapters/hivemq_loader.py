"""The sidecar's side of the plugforge loader's file protocol (HiveMQ hot loading).

The loader (``plugin-templates/hivemq-java/loader``) runs inside HiveMQ and polls
``<plugin_dir>/.plugforge-loader/control.properties``; it answers in ``status.properties`` next
to it. Both are ``key=value`` lines written to a temporary file and renamed:

* control (sidecar → loader): ``plugin``, ``version`` (the digest's hex: the directory
  ``<plugin_dir>/<plugin>/<version>/``), ``request`` (new for every write). No plugin:
  deactivate.
* status (loader → sidecar): ``pid`` and ``loader_started_ms`` (the broker process and when the
  loader started in it), ``active_plugin``, ``active_version``, ``request`` (the last control
  request it acted on), ``result`` (``ok``/``failed``), ``error``, ``written_ms``. The loader
  rewrites it at least every 2 s; a status older than ``stale_after`` means HiveMQ is not
  running. (Not the pid: in a pod without a shared process namespace the broker's pid means
  nothing to the sidecar.)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.adapters.base import BrokerUnavailable
from sidecar.adapters.files import write_atomic

STATE_DIR = ".plugforge-loader"


@dataclass(frozen=True)
class Control:
    plugin: str = ""
    version: str = ""
    request: str = ""

    def render(self) -> str:
        return (f"# written by the plugforge sidecar\nplugin={self.plugin}\n"
                f"version={self.version}\nrequest={self.request}\n")


@dataclass(frozen=True)
class Status:
    pid: int
    loader_started_ms: str
    active_plugin: str
    active_version: str
    request: str
    error: str

    @property
    def instance(self) -> str:
        return f"{self.pid}:{self.loader_started_ms}"


def parse_lines(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
    return fields


class LoaderFiles:
    """Reads the loader's status, writes its control file and waits for the answer."""

    def __init__(self, plugin_dir: Path, timeout: float, stale_after: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.control_path = plugin_dir / STATE_DIR / "control.properties"
        self.status_path = plugin_dir / STATE_DIR / "status.properties"
        self.timeout = timeout
        self.stale_after = stale_after
        self._sleep = sleep
        self._clock = clock

    def control(self) -> Control:
        try:
            fields = parse_lines(self.control_path.read_text())
        except FileNotFoundError:
            return Control()
        return Control(fields.get("plugin", ""), fields.get("version", ""),
                       fields.get("request", ""))

    def status(self) -> Status | None:
        """The loader's last report, None when it has none or stopped reporting."""
        try:
            age = self._clock() - self.status_path.stat().st_mtime
            fields = parse_lines(self.status_path.read_text())
            pid = int(fields.get("pid", ""))
        except (FileNotFoundError, ValueError):
            return None
        if age > self.stale_after:
            return None
        return Status(pid, fields.get("loader_started_ms", ""), fields.get("active_plugin", ""),
                      fields.get("active_version", ""), fields.get("request", ""),
                      fields.get("error", ""))

    def not_running_detail(self) -> str:
        if not self.status_path.exists():
            return (f"the plugforge loader has not reported ({self.status_path} is missing): "
                    "install the loader extension into HiveMQ's extensions folder before the "
                    "broker starts, with plugin_dir pointing at the sidecar's plugin directory")
        return (f"the plugforge loader has not updated {self.status_path} for more than "
                f"{self.stale_after:g}s (HiveMQ stopped or restarting)")

    def request(self, plugin: str, version: str) -> Status:
        """Write the control file and wait until the loader acted on it; returns its answer.

        A version the loader could not start comes back with ``error`` set (the loader keeps
        the previous one active). ``BrokerUnavailable`` when the loader does not answer in time:
        the control file stays, and a starting broker applies it.
        """
        control = Control(plugin, version, uuid.uuid4().hex)
        self._ensure_state_dir()
        write_atomic(self.control_path, control.render())
        deadline = time.monotonic() + self.timeout
        while True:
            status = self.status()
            if status is not None and status.request == control.request:
                return status
            if time.monotonic() > deadline:
                why = self.not_running_detail() if status is None else "busy"
                raise BrokerUnavailable(
                    f"the plugforge loader did not act on {self.control_path} within "
                    f"{self.timeout:g}s ({why}); the request stays in place and applies when "
                    "HiveMQ (re)starts")
            self._sleep(0.05)

    def _ensure_state_dir(self) -> None:
        """Group-writable and set-group-id: with a shared fsGroup the broker's user (another
        uid than the sidecar's, in a pod) can write its status next to the control file."""
        state_dir = self.control_path.parent
        if not state_dir.is_dir():
            state_dir.mkdir(parents=True)
            os.chmod(state_dir, 0o2775)  # noqa: S103

    def keep(self, status: Status) -> None:
        """Point the control file back at the version still active after a refusal, so a broker
        restart brings back the last good version rather than retrying the refused one."""
        write_atomic(self.control_path, Control(status.active_plugin, status.active_version,
                                                uuid.uuid4().hex).render())
