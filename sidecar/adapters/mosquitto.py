"""Mosquitto 2.0 adapter: include files + SIGHUP for config, dynsec for clients and ACLs,
plugins staged in an include file and picked up by a (graceful, opt-in) broker restart.

The broker's own mosquitto.conf ends with ``include_dir <conf_dir>``; the sidecar owns two
files there, each written to a temporary file and renamed into place:

* ``50-plugforge-config.conf``: the reloadable options of broker.yaml; SIGHUP applies them.
* ``60-plugforge-plugins.conf``: ``plugin`` + ``plugin_opt_*`` lines, one block per enabled
  plugin. Mosquitto loads plugins only at start, so these changes are BROKER_RESTART.

The running broker's plugins are observed from ``/proc/<pid>/maps``: each plugin version lives
in its own directory ``<plugin_dir>/<name>/<digest hex>/``, so the mapped path proves which
code runs (no stale module can hide behind a successful admin call).
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

from sidecar.adapters import mosquitto_dynsec as dynsec
from sidecar.adapters.base import (
    AdapterError,
    BrokerUnavailable,
    ChangeClass,
    ConfigProblem,
    Observed,
    ObservedPlugin,
)
from sidecar.adapters.files import DIGEST_DIR, digest_hex, install_version_dir, write_atomic
from sidecar.adapters.mosquitto_options import check_option, classify_option

CONFIG_FILE = "50-plugforge-config.conf"
PLUGINS_FILE = "60-plugforge-plugins.conf"
_HEADER = "# Written by the plugforge sidecar; edits are reverted on the next resync.\n"
MIN_ADMIN_MESSAGE = 4096
KEEP_VERSIONS = 3
DYNSEC_FRESH = 1.0  # s: an observed dynsec state older than this is read again to apply
_LIMITS_ADMIN = ("message_size_limit", "max_packet_size")


@dataclass(frozen=True)
class MosquittoSettings:
    host: str
    port: int
    pid_file: Path | None  # a pid file, or
    config_path: Path | None  # the -c argument that identifies the broker process in /proc
    conf_dir: Path
    plugin_dir: Path
    dynsec_username: str = ""
    dynsec_password: str = ""
    restart_timeout: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, str], plugin_dir: Path) -> MosquittoSettings:
        if not options.get("conf_dir") or not (options.get("pid_file")
                                                or options.get("config_path")):
            raise AdapterError(
                "mosquitto adapter: needs conf_dir (the include_dir of the broker's config) and "
                "pid_file or config_path (the broker's -c argument, found in the shared process "
                "namespace); e.g. --adapter-opt conf_dir=/mosquitto/plugforge.d "
                "--adapter-opt config_path=/mosquitto/config/mosquitto.conf")
        password = options.get("dynsec_password", "")
        if options.get("dynsec_password_file"):
            password = Path(options["dynsec_password_file"]).read_text().strip()
        return cls(options.get("host", "127.0.0.1"), int(options.get("port", "1883")),
                   _path(options.get("pid_file")), _path(options.get("config_path")),
                   Path(options["conf_dir"]), plugin_dir,
                   options.get("dynsec_username", ""), password,
                   float(options.get("restart_timeout", "30")))


class MosquittoAdapter:
    name = "mosquitto"

    def __init__(self, settings: MosquittoSettings,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self._cached_pid: int | None = None
        self._admin = (dynsec.DynsecAdmin(settings.host, settings.port,
                                          settings.dynsec_username, settings.dynsec_password)
                       if settings.dynsec_username else None)
        # The dynsec state observe() read and when; see _dynsec_state.
        self._dynsec_seen: tuple[float, dict[str, str]] | None = None
        self._prefetched: tuple[float, dynsec.Reply] | None = None  # see prefetch
        self._mapped: tuple[str, dict[str, str]] | None = None  # see _running_plugins

    # --- reading ---------------------------------------------------------------------------

    def prefetch(self) -> None:
        """Ask for the dynsec state now; the next observe() (within DYNSEC_FRESH) takes the
        answer. The loop calls this before it reads and parses the desired state, so the
        broker answers meanwhile instead of after (a round trip on every change)."""
        self._prefetched = None
        if self._admin is not None:
            with contextlib.suppress(BrokerUnavailable):  # observe() will say so
                self._prefetched = (time.monotonic(), dynsec.request_state(self._admin))

    def observe(self) -> Observed:
        pid = self._pid()
        if pid is None:
            return Observed(False, detail="no running mosquitto process ("
                        + (f"pid file {self.settings.pid_file}" if self.settings.pid_file
                           else f"-c {self.settings.config_path}") + ")")
        config = _read_config(self.settings.conf_dir / CONFIG_FILE)
        instance = f"{pid}:{_start_time(pid)}"
        answered = ""  # the instance, once it has answered (it has loaded its plugins then)
        if self._admin is not None:
            try:
                seen = dynsec.state_from(self._state_reply(self._admin).wait())
            except BrokerUnavailable as e:
                return Observed(False, instance=str(pid), detail=str(e))
            self._dynsec_seen = (time.monotonic(), seen)
            config.update(seen)
            answered = instance
        plugins = self._observe_plugins(pid, answered)
        return Observed(True, plugins, config, instance=instance)

    def health(self) -> bool:
        return self._pid() is not None

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        problems = []
        for key, value in sorted(config.items()):
            if key.startswith(dynsec.PREFIX):
                problem = dynsec.check(key, value)
                if problem is None and self._admin is None:
                    problem = ("dynsec keys need the dynamic-security plugin: start the sidecar "
                               "with --adapter-opt dynsec_username=... and its password")
            else:
                problem = check_option(key, value)
                if problem is None and self._admin is not None and key in _LIMITS_ADMIN \
                        and 0 < int(value) < MIN_ADMIN_MESSAGE:
                    problem = (f"expected 0 or at least {MIN_ADMIN_MESSAGE}, found {value}: a "
                               "smaller limit also drops the sidecar's own dynamic-security "
                               "admin commands, which would lock it out")
            if problem is not None:
                problems.append(ConfigProblem(key, problem))
        return problems

    def classify(self, key: str) -> ChangeClass:
        return ChangeClass.HOT if key.startswith(dynsec.PREFIX) else classify_option(key)

    def plugin_change_class(self) -> ChangeClass:
        return ChangeClass.BROKER_RESTART

    def normalize(self, key: str, value: str) -> str:
        parsed = dynsec.parse_key(key)
        if parsed is None:
            return value
        if parsed.kind == "role":
            return dynsec.format_acls(dynsec.parse_acls(value))
        if parsed.field == "roles":
            return ",".join(dynsec.split_roles(value))
        return value

    def write_only(self, key: str) -> bool:
        parsed = dynsec.parse_key(key)
        return parsed is not None and parsed.field == "password"

    # --- changing --------------------------------------------------------------------------

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        source = image_tree / "plugin" / name
        if not source.is_dir():
            root = image_tree / "plugin"
            found = sorted(p.name for p in root.iterdir()) if root.is_dir() else "no plugin/"
            raise AdapterError(
                f"image for plugin {name!r} has no plugin/{name}/ directory; found {found}")
        target = self._version_dir(name, digest)

        def fill(staging: Path) -> None:
            shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True)
            _library(staging, name)  # refuse images without exactly one shared object

        install_version_dir(target, digest, fill)
        self._prune(name, keep={digest})
        return target

    def _prune(self, name: str, keep: set[str]) -> None:
        """Keep the newest KEEP_VERSIONS versions of a plugin (enough to roll back), and
        always the ones the broker runs or has staged."""
        pid = self._pid()
        staged = self._staged_plugins().get(name)
        protected = set(keep) | {d for d in (
            staged[0] if staged else None,
            self._running_plugins(pid, {}).get(name) if pid else None) if d}
        versions = sorted((p for p in (self.settings.plugin_dir / name).iterdir()
                           if p.is_dir() and DIGEST_DIR.fullmatch(p.name)),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for old in versions[KEEP_VERSIONS:]:
            if "sha256:" + old.name not in protected:
                shutil.rmtree(old, ignore_errors=True)

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        version_dir = self._version_dir(name, digest)
        if not version_dir.is_dir():
            raise AdapterError(f"plugin {name!r} version {digest} is not installed in "
                               f"{version_dir}; install it first")
        for key, value in settings.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or "\n" in value or "\r" in value:
                raise AdapterError(f"plugin {name!r} setting {key!r}: keys must be "
                                   "[A-Za-z0-9_.-]+ and values one line")
        staged = self._staged_plugins()
        staged[name] = (digest, dict(settings))
        self._write_plugins(staged)

    def disable(self, name: str) -> None:
        staged = self._staged_plugins()
        if staged.pop(name, None) is not None:
            self._write_plugins(staged)

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        dyn = {k: v for k, v in changes.items() if k.startswith(dynsec.PREFIX)}
        plain = {k: v for k, v in changes.items() if not k.startswith(dynsec.PREFIX)}
        if plain:
            path = self.settings.conf_dir / CONFIG_FILE
            config = _read_config(path)
            for key, value in plain.items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = value
            write_atomic(path, _HEADER + "".join(f"{k} {v}\n" for k, v in
                                                  sorted(config.items())))
            self._reload()
        if dyn:
            if self._admin is None:
                raise AdapterError("dynsec keys need the dynamic-security admin credentials")
            self._admin.call(dynsec.commands_for(dyn, self._dynsec_state(self._admin)))

    def restart(self) -> None:
        """SIGTERM the broker and wait for its supervisor (the kubelet, in a pod) to start a
        new process that answers: mosquitto has no in-process plugin reload."""
        old = self._pid()
        if old is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.restart_timeout
        while time.monotonic() < deadline:
            pid = self._pid()
            if pid is not None and pid != old and _answers(self.settings.host, self.settings.port):
                return
            self._sleep(0.1)
        raise BrokerUnavailable(f"mosquitto did not come back within "
                                f"{self.settings.restart_timeout:.0f}s after SIGTERM")

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()

    @property
    def admin_calls(self) -> int:
        return self._admin.calls if self._admin is not None else 0

    # --- internals -------------------------------------------------------------------------

    def _state_reply(self, admin: dynsec.DynsecAdmin) -> dynsec.Reply:
        """The prefetched state request when it is fresh, else a new one."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and time.monotonic() - prefetched[0] < DYNSEC_FRESH:
            return prefetched[1]
        return dynsec.request_state(admin)

    def _dynsec_state(self, admin: dynsec.DynsecAdmin) -> dict[str, str]:
        """What the commands start from: the state observe() read when it is fresh and nothing
        was sent since (the loop observes, plans and applies within milliseconds; reading it
        again cost a round trip on every change), else read now. A change made by someone
        else in between makes a command fail or is found by the loop's verify step."""
        seen, self._dynsec_seen = self._dynsec_seen, None
        if seen is not None and time.monotonic() - seen[0] < DYNSEC_FRESH:
            return seen[1]
        return dynsec.observe(admin)

    def _pid(self) -> int | None:
        if self._cached_pid is not None and self._is_broker(self._cached_pid):
            return self._cached_pid
        self._cached_pid = None
        if self.settings.pid_file is not None:
            try:
                pid = int(self.settings.pid_file.read_text().strip())
            except (OSError, ValueError):
                return None
            candidates = [pid]
        else:
            candidates = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        for pid in candidates:
            if self._is_broker(pid):
                self._cached_pid = pid
                return pid
        return None

    def _is_broker(self, pid: int) -> bool:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith(("Z", "X")):
                return False  # exited, not yet reaped by its parent
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return False
        if self.settings.config_path is None:
            return True  # the pid file named it
        return (os.path.basename(argv[0]) == b"mosquitto"
                and os.fsencode(self.settings.config_path) in argv)

    def _reload(self) -> None:
        pid = self._pid()
        if pid is None:
            raise BrokerUnavailable("mosquitto is not running; the new config is in place and "
                                    "will be read when it starts")
        os.kill(pid, signal.SIGHUP)

    def _version_dir(self, name: str, digest: str) -> Path:
        return self.settings.plugin_dir / name / digest_hex(name, digest)

    def _staged_plugins(self) -> dict[str, tuple[str, dict[str, str]]]:
        staged: dict[str, tuple[str, dict[str, str]]] = {}
        current: str | None = None
        path = self.settings.conf_dir / PLUGINS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            if line.startswith("plugin "):
                located = self._locate(line[len("plugin "):].strip())
                current = None
                if located is not None:
                    current = located[0]
                    staged[current] = (located[1], {})
            elif line.startswith("plugin_opt_") and current is not None:
                key, _, value = line[len("plugin_opt_"):].partition(" ")
                staged[current][1][key] = value
        return staged

    def _write_plugins(self, staged: Mapping[str, tuple[str, Mapping[str, str]]]) -> None:
        blocks = []
        for name, (digest, settings) in sorted(staged.items()):
            library = _library(self._version_dir(name, digest), name)
            blocks.append(f"plugin {library}\n" + "".join(
                f"plugin_opt_{k} {v}\n" for k, v in sorted(settings.items())))
        write_atomic(self.settings.conf_dir / PLUGINS_FILE, _HEADER + "".join(blocks))

    def _locate(self, path: str) -> tuple[str, str] | None:
        """(name, digest) for a path inside our plugin directory, else None."""
        try:
            relative = Path(path).relative_to(self.settings.plugin_dir)
        except ValueError:
            return None
        parts = relative.parts
        if len(parts) >= 3 and DIGEST_DIR.fullmatch(parts[1]):
            return parts[0], "sha256:" + parts[1]
        return None

    def _observe_plugins(self, pid: int, answered: str = "") -> dict[str, ObservedPlugin]:
        staged = self._staged_plugins()
        running = self._running_plugins(pid, staged, answered)
        plugins = {}
        for name in sorted(set(staged) | set(running)):
            digest = running.get(name)
            staged_digest, settings = staged.get(name, (None, {}))
            plugins[name] = ObservedPlugin(
                name, digest, enabled=name in staged,
                path=str(self._version_dir(name, digest)) if digest else None,
                settings=settings if name in staged else None,
                staged_digest=staged_digest if staged_digest != digest else None)
        return plugins

    def _running_plugins(self, pid: int, staged: Mapping[str, tuple[str, Mapping[str, str]]],
                         answered: str = "") -> dict[str, str]:
        """The plugin versions mapped into the broker. ``answered`` names a broker instance
        (pid:start time) that has answered a request: mosquitto loads plugins only while
        starting, so what it maps then is remembered for that instance (the maps cost
        ~0.4 ms, twice per change)."""
        if answered and self._mapped is not None and self._mapped[0] == answered:
            return dict(self._mapped[1])
        try:
            maps = _read_maps(pid)
        except OSError:
            # No ptrace-read access to the broker: fall back to "started after the plugin
            # file was written means it loaded what the file says".
            return self._running_by_start_time(pid, staged)
        running = {}
        # A string test first: Path.relative_to on each of ~150 mappings took ~1 ms a reconcile.
        inside = os.path.join(self.settings.plugin_dir, "")
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(inside):
                located = self._locate(fields[5])
                if located is not None:
                    running[located[0]] = located[1]
        if answered:
            self._mapped = (answered, dict(running))
        return running

    def _running_by_start_time(self, pid: int, staged: Mapping[str, tuple[str, Mapping[str,
                               str]]]) -> dict[str, str]:
        path = self.settings.conf_dir / PLUGINS_FILE
        try:
            written = path.stat().st_mtime
        except OSError:
            return {}
        started = _process_started_at(pid)
        if started is None or started < written:
            return {}
        return {name: digest for name, (digest, _) in staged.items()}


def create(options: Mapping[str, str], plugin_dir: Path) -> MosquittoAdapter:
    return MosquittoAdapter(MosquittoSettings.from_options(options, plugin_dir))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _library(version_dir: Path, name: str) -> Path:
    libraries = sorted(p for p in version_dir.rglob("*.so") if p.is_file())
    if len(libraries) != 1:
        found = [str(p.relative_to(version_dir)) for p in libraries]
        raise AdapterError(
            f"plugin {name!r}: expected exactly one shared object (*.so) in the image's "
            f"plugin/{name}/ directory, found {found}")
    return libraries[0]


def _read_config(path: Path) -> dict[str, str]:
    config = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                config[key] = value
    return config


def _read_maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _process_started_at(pid: int) -> float | None:
    try:
        ticks = int(_start_time(pid))
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                    .splitlines() if line.startswith("btime "))
    except (ValueError, OSError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
