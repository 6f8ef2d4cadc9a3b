"""HiveMQ Community Edition adapter: plugins are HiveMQ extension folders.

HiveMQ CE reads its extensions folder only at start (a folder copied in later is ignored, and a
``DISABLED`` marker only matters at the next start: verified against CE 2025.5). Two modes:

* ``mode=loader`` (default): the plugforge loader extension
  (``plugin-templates/hivemq-java/loader``) is installed once, before HiveMQ starts, and
  hot-loads plugin versions from ``<plugin_dir>/<name>/<hex>/`` into their own class loaders
  when the sidecar writes its control file (``hivemq_loader``). Enable, disable and upgrade are
  PLUGIN_RELOAD: no broker restart, connected clients stay connected. One plugin is active at a
  time; with none active the loader refuses every CONNECT (fail closed).
* ``mode=restart``: no loader. Enabling copies the version into ``extensions/<name>/``
  (renamed into place), disabling writes ``DISABLED``; both take effect at the next broker start
  (BROKER_RESTART: ``restart()`` when the sidecar may restart the broker, else RestartRequired).

In both modes a plugin's settings are its ``conf/config.properties``, which the template's
extension re-reads when it changes (no restart). HiveMQ has no broker config the sidecar sets
live, so ``broker.yaml`` config keys are refused.

Adapter options (``--adapter-opt key=value``):

* ``mode``: ``loader`` (default) or ``restart``.
* ``host``/``port``: the MQTT listener, for health (default 127.0.0.1:1883).
* ``extensions_dir``: HiveMQ's extensions folder (restart mode).
* ``pid_file`` or ``process_match`` (a string in the broker's command line, e.g. ``hivemq.jar``,
  looked up in ``/proc``; a pod needs ``shareProcessNamespace``): how to find the broker for
  ``restart()``. Needed in restart mode; the loader mode never restarts the broker and judges
  liveness by the loader's status heartbeat.
* ``loader_timeout``: seconds to wait for the loader's answer (default 15).
* ``restart_timeout``: seconds to wait for a restarted broker (default 60).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.adapters import hivemq_files as files
from sidecar.adapters.base import (
    AdapterError,
    BrokerUnavailable,
    ChangeClass,
    ConfigProblem,
    Observed,
    ObservedPlugin,
    refuse_unknown_options,
)
from sidecar.adapters.files import DIGEST_DIR, install_version_dir
from sidecar.adapters.hivemq_loader import STATE_DIR, LoaderFiles

KEEP_VERSIONS = 3
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class HiveMQSettings:
    plugin_dir: Path
    mode: str = "loader"
    host: str = "127.0.0.1"
    port: int = 1883
    pid_file: Path | None = None
    process_match: str = ""
    extensions_dir: Path | None = None
    loader_timeout: float = 15.0
    restart_timeout: float = 60.0

    @classmethod
    def from_options(cls, options: Mapping[str, str], plugin_dir: Path) -> HiveMQSettings:
        known = {"mode", "host", "port", "pid_file", "process_match", "extensions_dir",
                 "loader_timeout", "restart_timeout"}
        refuse_unknown_options("hivemq", options, known)
        mode = options.get("mode", "loader")
        if mode not in ("loader", "restart"):
            raise AdapterError(f"hivemq adapter: mode must be 'loader' (hot loading through the "
                               f"plugforge loader extension) or 'restart', found {mode!r}")
        if mode == "restart" and not (options.get("extensions_dir") and (
                options.get("pid_file") or options.get("process_match"))):
            raise AdapterError(
                "hivemq adapter: mode=restart needs extensions_dir (HiveMQ's extensions folder) "
                "and pid_file or process_match (how to find the broker process), e.g. "
                "--adapter-opt extensions_dir=/opt/hivemq/extensions "
                "--adapter-opt process_match=com.hivemq")
        try:
            return cls(plugin_dir, mode, options.get("host", "127.0.0.1"),
                       int(options.get("port", "1883")), _path(options.get("pid_file")),
                       options.get("process_match", ""), _path(options.get("extensions_dir")),
                       float(options.get("loader_timeout", "15")),
                       float(options.get("restart_timeout", "60")))
        except ValueError as e:
            raise AdapterError(f"hivemq adapter: port and timeouts must be numbers: {e}") from e


class HiveMQAdapter:
    name = "hivemq"

    def __init__(self, settings: HiveMQSettings,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self.loader = LoaderFiles(settings.plugin_dir, settings.loader_timeout, sleep=sleep)

    @property
    def hot(self) -> bool:
        return self.settings.mode == "loader"

    # --- reading ---------------------------------------------------------------------------

    def observe(self) -> Observed:
        if self.hot:
            return self._observe_loader()
        return self._observe_restart()

    def _observe_loader(self) -> Observed:
        status = self.loader.status()
        if status is None:
            return Observed(False, detail=self.loader.not_running_detail())
        control = self.loader.control()
        plugins = {}
        for name in sorted({control.plugin, status.active_plugin} - {""}):
            running = status.active_version if name == status.active_plugin else ""
            enabled = name == control.plugin
            shown = control.version if enabled else running
            folder = self.settings.plugin_dir / name / shown
            plugins[name] = ObservedPlugin(
                name, f"sha256:{running}" if running else None, enabled,
                path=str(folder), settings=files.read_settings(folder) if enabled else None)
        return Observed(True, plugins, {}, instance=status.instance)

    def _observe_restart(self) -> Observed:
        pid = self._pid()
        if pid is None:
            how = (f"pid file {self.settings.pid_file}" if self.settings.pid_file
                   else f"no process with {self.settings.process_match!r} in its command line")
            return Observed(False, detail=f"no running HiveMQ ({how})")
        started = _started_at(pid)
        plugins = {}
        extensions = self._extensions_dir()
        for folder in sorted(p for p in extensions.iterdir()
                             if p.is_dir() and not p.name.startswith(".")):
            staged = files.read_staged(folder)
            if staged is None:
                continue  # not ours (the loader, extensions installed by other means)
            loaded_now = staged.written < started
            running: str | None = staged.digest if loaded_now else (staged.previous or None)
            if staged.disabled and (not staged.disabled_by_us or staged.disabled_at < started):
                running = None  # skipped at start, or HiveMQ disabled it (it failed to start)
            enabled = not staged.disabled
            plugins[folder.name] = ObservedPlugin(
                folder.name, running, enabled, path=str(folder),
                settings=files.read_settings(folder) if enabled else None,
                staged_digest=staged.digest if enabled and staged.digest != running else None)
        return Observed(True, plugins, {}, instance=f"{pid}:{started}")

    def health(self) -> bool:
        if self.hot and self.loader.status() is None:
            return False
        try:
            with socket.create_connection((self.settings.host, self.settings.port), timeout=1):
                return True
        except OSError:
            return False

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        return [ConfigProblem(key, "HiveMQ CE has no broker setting the sidecar can change (its "
                              "config.xml is read at start); put plugin settings under the "
                              "plugin's settings") for key in sorted(config)]

    def classify(self, key: str) -> ChangeClass:
        return ChangeClass.BROKER_RESTART

    def plugin_change_class(self) -> ChangeClass:
        return ChangeClass.PLUGIN_RELOAD if self.hot else ChangeClass.BROKER_RESTART

    def write_only(self, key: str) -> bool:
        return False

    def normalize(self, key: str, value: str) -> str:
        return value

    # --- changing --------------------------------------------------------------------------

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        source = image_tree / "plugin" / name
        if not source.is_dir():
            root = image_tree / "plugin"
            found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "no plugin/"
            raise AdapterError(
                f"image for plugin {name!r} has no plugin/{name}/ directory; found {found}")
        files.check_extension(source, name)

        def fill(staging: Path) -> None:
            shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True)
            files.keep_image_settings(staging)

        target = install_version_dir(self._version_dir(name, digest), digest, fill)
        self._prune(name, keep=target.name)
        return target

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        folder = self._version_dir(name, digest)
        if not folder.is_dir():
            raise AdapterError(f"plugin {name!r} version {digest} is not installed in {folder}; "
                               "install it first")
        files.check_settings(name, settings)
        if not self.hot:
            staged = files.read_staged(self._extensions_dir() / name)
            if staged is not None and staged.digest == digest and not staged.disabled:
                files.write_settings(self._extensions_dir() / name, settings)  # read live
                return
            observed = self._observe_restart().plugins.get(name)
            previous = (observed.digest or "") if observed else ""
            files.stage_extension(folder, self._extensions_dir(), name, digest, previous,
                                  settings)
            return
        control = self.loader.control()
        status = self.loader.status()
        active = status.active_plugin if status else ""
        if active and active != name and control.plugin == active:
            raise AdapterError(
                f"the plugforge loader runs one auth plugin at a time and {active!r} is active; "
                f"disable it (enabled: false) in the same change that enables {name!r}")
        files.write_settings(folder, settings)  # read live by the running version too
        answer = self.loader.request(name, folder.name)
        if answer.error:
            self.loader.keep(answer)
            kept = (f"{answer.active_plugin} {answer.active_version}" if answer.active_plugin
                    else "no plugin (every CONNECT is refused)")
            raise AdapterError(f"plugin {name!r} {digest} was not activated: {answer.error}; "
                               f"still active: {kept}")

    def disable(self, name: str) -> None:
        if not self.hot:
            files.disable_extension(self._extensions_dir() / name)
            return
        control = self.loader.control()
        status = self.loader.status()
        if control.plugin != name and (status is None or status.active_plugin != name):
            return
        answer = self.loader.request("", "")
        if answer.error:
            raise AdapterError(f"the plugforge loader could not deactivate {name!r}: "
                               f"{answer.error}")

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        if changes:
            raise AdapterError(f"HiveMQ CE has no live broker config; refusing {sorted(changes)}")

    def restart(self) -> None:
        """SIGTERM the broker and wait until its supervisor (the kubelet) started a new one that
        answers (and, with the loader, reported in). Needs the broker's process: ``pid_file``
        or ``process_match`` and, in a pod, ``shareProcessNamespace: true``."""
        before = self.observe().instance
        pid = self._pid()
        if pid is None:
            raise BrokerUnavailable(
                "cannot restart HiveMQ: its process is not visible to the sidecar (set "
                "--adapter-opt pid_file or process_match, and shareProcessNamespace in the pod)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.restart_timeout
        while time.monotonic() < deadline:
            observed = self.observe()
            if observed.reachable and observed.instance != before and self.health():
                return
            self._sleep(0.2)
        raise BrokerUnavailable(f"HiveMQ did not come back within "
                                f"{self.settings.restart_timeout:g}s after SIGTERM")

    # --- internals -------------------------------------------------------------------------

    def _pid(self) -> int | None:
        """The broker's pid as the sidecar sees it (the loader's own report only means something
        when both share a process namespace, as in the testbed)."""
        if self.settings.pid_file is not None:
            try:
                pid = int(self.settings.pid_file.read_text().strip())
            except (OSError, ValueError):
                return None
            return pid if _started_at(pid) else None
        if self.settings.process_match:
            return _find_process(self.settings.process_match.encode())
        status = self.loader.status()
        return status.pid if status else None

    def _extensions_dir(self) -> Path:
        if self.settings.extensions_dir is None:
            raise AdapterError("hivemq adapter: extensions_dir is not set")
        return self.settings.extensions_dir

    def _version_dir(self, name: str, digest: str) -> Path:
        if not _NAME.match(name) or name == STATE_DIR:
            raise AdapterError(f"plugin name {name!r}: expected [A-Za-z0-9][A-Za-z0-9._-]*")
        match = _DIGEST.match(digest)
        if match is None:
            raise AdapterError(f"plugin {name!r}: expected a sha256 digest, found {digest!r}")
        return self.settings.plugin_dir / name / match.group(1)

    def _prune(self, name: str, keep: str) -> None:
        """Keep the newest KEEP_VERSIONS versions (enough to roll back) and any the loader
        runs or is asked to run."""
        protected = {keep, self.loader.control().version}
        status = self.loader.status()
        if status is not None:
            protected.add(status.active_version)
        versions = sorted((p for p in (self.settings.plugin_dir / name).iterdir()
                           if p.is_dir() and DIGEST_DIR.fullmatch(p.name)),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for old in versions[KEEP_VERSIONS:]:
            if old.name not in protected:
                shutil.rmtree(old, ignore_errors=True)


def create(options: Mapping[str, str], plugin_dir: Path) -> HiveMQAdapter:
    return HiveMQAdapter(HiveMQSettings.from_options(options, plugin_dir))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _find_process(match: bytes) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if match in cmdline and _started_at(int(entry)):
                return int(entry)
    return None


def _started_at(pid: int) -> float:
    """The process's start time (seconds since the epoch), 0.0 when it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                    .splitlines() if line.startswith("btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return 0.0
    if stat[0] in ("Z", "X"):
        return 0.0
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
