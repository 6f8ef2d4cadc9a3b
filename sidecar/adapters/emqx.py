"""EMQX 5 adapter: plugin packages placed in EMQX's plugins dir and started, stopped and
uninstalled through the REST API v5, and the reloadable config roots updated through
``/configs``; no broker restart. Proven on a live EMQX 5.8.9 node (tests/test_adapter_emqx.py).

Adapter options (``--adapter-opt key=value``):

* ``install_dir``: EMQX's ``plugins.install_dir`` as the sidecar sees it (a volume shared with
  the EMQX container, mounted at EMQX's ``plugins`` dir). Required.
* ``api_url``: the dashboard listener serving ``/api/v5`` (default ``http://127.0.0.1:18083``).
* ``api_key_file``, ``api_secret_file``: files holding an EMQX API key and its secret (a mounted
  Secret); sent as basic auth, never logged. Both required.
* ``ca_file``: CA bundle for an https ``api_url``.
* ``timeout``: seconds per API call (default 30).

Plugins: the image holds the package ``plugin/<name>/<name>-<vsn>.tar.gz`` (the emqx-erlang
template's artifact); ``install_plugin`` checks its ``release.json`` and keeps it in
``<plugin_dir>/<name>/<digest hex>/``. ``enable`` writes it into ``install_dir`` (tmp +
rename) and calls ``PUT /plugins/<name-vsn>/start``: EMQX 5.8.9 extracts a package it finds
there, loads and starts it, and records it as enabled (so it comes back after a node restart).
The upload endpoint (``POST /plugins/install``) is not used: EMQX 5.8.9 answers it 403 until
``emqx ctl plugins allow NAME-VSN`` ran on the node, an in-memory permission a sidecar cannot
grant and a node restart forgets. ``start`` answers 204 whatever happened, so the adapter checks
``GET /plugins`` reports it running. EMQX keeps one version per name, so an upgrade is stop old,
``DELETE /plugins/<name-vsn>`` (removes its package and files), place + start new; when any step
fails, the new one is removed and the old package (kept on the sidecar's volume) is placed and
started again. ``disable`` stops and deletes. ``GET /plugins`` names packages by name-vsn, not
content, so the adapter records the digest it installed (``<plugin_dir>/.plugforge-emqx.json``).

Plugin settings go to ``PUT /plugins/<name-vsn>/config`` (EMQX 5.7+). EMQX validates them
against the package's Avro schema (``priv/config_schema.avsc``) when it has one and stores them
as given when it has none; the plugin reads them with ``emqx_plugins:get_config/1``. Settings
belong to a name-vsn, so they are put again after every upgrade.

The REST API acts on the whole cluster: start, stop and delete run on every node, and a node
without the package copies it from one that has it. Run one sidecar per EMQX cluster (manifests/
brokers/emqx), next to one node, not one per pod: sidecars on several pods would each drive the
same cluster-wide plugin state.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.adapters import emqx_config as cfg
from sidecar.adapters.base import (
    AdapterError,
    BrokerUnavailable,
    ChangeClass,
    ConfigProblem,
    Observed,
    ObservedPlugin,
    refuse_unknown_options,
)
from sidecar.adapters.emqx_api import ApiError, EmqxApi
from sidecar.adapters.files import (
    DIGEST_DIR,
    digest_hex,
    install_version_dir,
    load_record,
    save_record,
)
from sidecar.adapters.vernemq_admin import read_secret

log = logging.getLogger("plugforge.sidecar.emqx")

STATE_FILE = ".plugforge-emqx.json"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # EMQX splits NAME-VSN at the first '-'
_VSN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
_MAX_RELEASE_JSON = 1 << 20


@dataclass(frozen=True)
class EmqxSettings:
    plugin_dir: Path
    install_dir: Path
    api_url: str
    api_key_file: str
    api_secret_file: str
    ca_file: str = ""
    timeout: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, str], plugin_dir: Path) -> EmqxSettings:
        known = {"install_dir", "api_url", "api_key_file", "api_secret_file", "ca_file",
                 "timeout"}
        refuse_unknown_options("emqx", options, known)
        if not options.get("api_key_file") or not options.get("api_secret_file"):
            raise AdapterError("emqx adapter: needs api_key_file and api_secret_file (a mounted "
                               "Secret with an EMQX API key and its secret)")
        if not options.get("install_dir"):
            raise AdapterError("emqx adapter: needs install_dir, EMQX's plugins.install_dir as "
                               "mounted in the sidecar (a volume shared with the EMQX container)")
        api_url = options.get("api_url", "http://127.0.0.1:18083")
        if not re.match(r"^https?://[^/\s]+/?$", api_url):
            raise AdapterError(f"emqx adapter: api_url must be http(s)://host:port, found "
                               f"{api_url!r}")
        try:
            timeout = float(options.get("timeout", "30"))
        except ValueError as e:
            raise AdapterError(f"emqx adapter: timeout must be seconds, found "
                               f"{options['timeout']!r}") from e
        return cls(plugin_dir, Path(options["install_dir"]), api_url, options["api_key_file"],
                   options["api_secret_file"],
                   options.get("ca_file", ""), timeout)


@dataclass(frozen=True)
class Package:
    name: str
    vsn: str
    path: Path

    @property
    def name_vsn(self) -> str:
        return f"{self.name}-{self.vsn}"


@dataclass(frozen=True)
class Installed:
    name: str
    vsn: str
    running: bool

    @property
    def name_vsn(self) -> str:
        return f"{self.name}-{self.vsn}"


class EmqxAdapter:
    name = "emqx"

    def __init__(self, settings: EmqxSettings) -> None:
        self.settings = settings
        self.api = EmqxApi(settings.api_url,
                           read_secret(settings.api_key_file, "the EMQX API key"),
                           read_secret(settings.api_secret_file, "the EMQX API secret"),
                           key_source=f"{settings.api_key_file} / {settings.api_secret_file}",
                           timeout=settings.timeout, ca_file=settings.ca_file or None)
        self._watched_roots: set[str] = set()

    # --- reading ---------------------------------------------------------------------------

    def observe(self) -> Observed:
        try:
            installed = self._list()
            state = self._adopted(self._state(), installed)
            plugins = self._observed_plugins(installed, state)
            config = self._read_config(self._watched_roots | cfg.roots(state["originals"]))
        except (BrokerUnavailable, AdapterError) as e:
            return Observed(False, detail=str(e))
        return Observed(True, plugins, config)

    def health(self) -> bool:
        try:
            self._list()
        except (BrokerUnavailable, AdapterError):
            return False
        return True

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        problems = []
        for key, value in sorted(config.items()):
            problem = cfg.check(key, value)
            if problem is not None:
                problems.append(ConfigProblem(key, problem))
        # observe reads the roots the desired state names (one GET per root).
        self._watched_roots = cfg.roots(k for k in config if cfg.check(k, config[k]) is None)
        return problems

    def classify(self, key: str) -> ChangeClass:
        return cfg.classify(key)

    def plugin_change_class(self) -> ChangeClass:
        return ChangeClass.PLUGIN_RELOAD

    def write_only(self, key: str) -> bool:
        return False

    def normalize(self, key: str, value: str) -> str:
        return cfg.normalize(value)

    # --- plugins ---------------------------------------------------------------------------

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        source = image_tree / "plugin" / name
        packages = sorted(source.glob(f"{name}-*.tar.gz")) if source.is_dir() else []
        if len(packages) != 1:
            found = sorted(p.name for p in source.iterdir()) if source.is_dir() else \
                "no such directory"
            raise AdapterError(f"image for EMQX plugin {name!r}: expected exactly one package "
                               f"plugin/{name}/{name}-<vsn>.tar.gz, found {found}")
        read_package(packages[0], name)
        package = packages[0]
        return install_version_dir(self._version_dir(name, digest), digest,
                                   lambda staging: shutil.copy2(package, staging / package.name))

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        package = self._package(name, digest)
        installed = self._list()
        state = self._adopted(self._state(), installed)
        record = state["plugins"].get(name) or {}
        current = [p for p in installed if p.name == name]
        same = (len(current) == 1 and current[0].name_vsn == package.name_vsn
                and record.get("digest") == digest)
        if same:
            if not current[0].running:
                self._start(package.name_vsn)
        else:
            previous = None
            if record.get("digest") and any(p.name_vsn == record.get("name_vsn")
                                            for p in current):
                previous = self._package(name, record["digest"])
            for old in current:
                self._remove(old)
            try:
                self._install(package)
                self._start(package.name_vsn)
            except (AdapterError, BrokerUnavailable) as e:
                self._recover(package, previous, e)
                raise
            state["plugins"][name] = {"digest": digest, "name_vsn": package.name_vsn,
                                      "settings": {}}
            self._save(state)
        if settings or record.get("settings"):  # {} clears what an earlier release set
            self.api.put(f"/plugins/{package.name_vsn}/config", dict(settings))
        state["plugins"][name] = {"digest": digest, "name_vsn": package.name_vsn,
                                  "settings": dict(settings)}
        self._save(state)

    def disable(self, name: str) -> None:
        for plugin in self._list():
            if plugin.name == name:
                self._remove(plugin)
        state = self._state()
        if state["plugins"].pop(name, None) is not None:
            self._save(state)

    # --- config ----------------------------------------------------------------------------

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        for key, value in changes.items():
            problem = cfg.check(key, value or "")
            if problem is not None:
                raise AdapterError(f"config.{key}: {problem}")
        state = self._state()
        current = self._read_tree(cfg.roots(changes))
        flat = cfg.flatten(current)
        for key in changes:
            state["originals"].setdefault(key, flat.get(key))
        self._save(state)
        new = cfg.updated(current, changes, state["originals"])
        zone = {r: new[r] for r in cfg.roots(changes) if r in cfg.ZONE_ROOTS}
        if zone:
            # EMQX 5.8.9 wants every zone root in the body (400 required_field otherwise).
            whole = self.api.get("/configs/global_zone")
            if not isinstance(whole, dict):
                raise AdapterError("EMQX GET /configs/global_zone: expected a JSON object")
            self.api.put("/configs/global_zone", {**whole, **zone})
        for root in sorted(cfg.roots(changes) - set(cfg.ZONE_ROOTS)):
            self.api.put(f"/configs/{root}", new[root])
        seen = cfg.flatten(self._read_tree(cfg.roots(changes)))
        expected = cfg.flatten(new)
        differ = {k: seen.get(k) for k in changes if seen.get(k) != expected.get(k)}
        if differ:
            raise AdapterError(f"EMQX accepted the update but reads back {differ}")
        for key, value in changes.items():
            if value is None:
                state["originals"].pop(key, None)
        self._save(state)
        self._watched_roots |= cfg.roots(changes)

    def restart(self) -> None:
        raise AdapterError(
            "the EMQX adapter does not restart the broker: plugins and the managed config "
            "roots change live; node/cluster/rpc settings belong in emqx.conf, changed by "
            "redeploying the pod")

    # --- internals -------------------------------------------------------------------------

    def _list(self) -> list[Installed]:
        """``GET /plugins``: [{name, rel_vsn, running_status: [{node, status}], ...}]."""
        data = self.api.get("/plugins")
        if not isinstance(data, list):
            raise AdapterError(f"EMQX GET /plugins: expected a JSON array, found "
                               f"{str(data)[:200]!r}")
        plugins = []
        for item in data:
            if not isinstance(item, dict) or "name" not in item or "rel_vsn" not in item:
                raise AdapterError(f"EMQX GET /plugins: entry without name/rel_vsn: "
                                   f"{str(item)[:200]!r}")
            statuses = [s.get("status") for s in item.get("running_status") or []
                        if isinstance(s, dict)]
            plugins.append(Installed(str(item["name"]), str(item["rel_vsn"]),
                                     bool(statuses) and all(s == "running" for s in statuses)))
        return plugins

    def _observed_plugins(self, installed: list[Installed], state: dict[str, Any]
                          ) -> dict[str, ObservedPlugin]:
        records: dict[str, dict[str, Any]] = state["plugins"]
        plugins = {}
        for name in sorted(set(records) | self._installed_names()):
            record = records.get(name) or {}
            ours = next((p for p in installed if p.name == name
                         and p.name_vsn == record.get("name_vsn")), None)
            running = ours is not None and ours.running
            digest = record.get("digest") if running else None
            settings = None
            if running and record.get("settings") and ours is not None:
                settings = self._read_settings(ours.name_vsn, record["settings"])
            plugins[name] = ObservedPlugin(
                name, digest, enabled=any(p.name == name and p.running for p in installed),
                path=str(self._version_dir(name, digest)) if digest else None,
                settings=settings if settings is not None else (
                    {} if running and not record.get("settings") else None))
        return plugins

    def _adopted(self, state: dict[str, Any], installed: list[Installed]) -> dict[str, Any]:
        """Recognise an installed plugin the record does not name (a new sidecar, its volume
        gone; or another writer) by content: EMQX keeps ``install_dir/NAME-VSN.tar.gz``, and
        when its bytes equal a package this sidecar holds, that digest is what runs. Without
        this a restarted sidecar would stop, delete and restart a plugin that is fine."""
        changed = False
        for plugin in installed:
            record = state["plugins"].get(plugin.name) or {}
            if record.get("name_vsn") == plugin.name_vsn:
                continue
            digest = self._digest_of(plugin)
            if digest is not None:
                log.info("decision=emqx-adopt plugin=%s name_vsn=%s digest=%s", plugin.name,
                         plugin.name_vsn, digest)
                state["plugins"][plugin.name] = {"digest": digest, "name_vsn": plugin.name_vsn,
                                                 "settings": {}}
                changed = True
        if changed:
            self._save(state)
        return state

    def _digest_of(self, plugin: Installed) -> str | None:
        try:
            theirs = (self.settings.install_dir / f"{plugin.name_vsn}.tar.gz").read_bytes()
        except OSError:
            return None
        root = self.settings.plugin_dir / plugin.name
        for package in sorted(root.glob(f"*/{plugin.name_vsn}.tar.gz")) if _NAME.match(
                plugin.name) else []:
            if DIGEST_DIR.fullmatch(package.parent.name) and package.read_bytes() == theirs:
                return "sha256:" + package.parent.name  # version dirs are named by digest hex
        return None

    def _read_settings(self, name_vsn: str, applied: Mapping[str, str]
                       ) -> Mapping[str, str] | None:
        try:
            data = self.api.get(f"/plugins/{name_vsn}/config")
        except AdapterError:
            return None
        if not isinstance(data, dict):
            return None
        return {k: cfg.to_text(data[k]) for k in applied if k in data}

    def _install(self, package: Package) -> None:
        """Place the package where EMQX's start finds it (``install_dir/NAME-VSN.tar.gz``)."""
        target = self.settings.install_dir / package.path.name
        staging = self.settings.install_dir / f".{package.path.name}.tmp"
        try:
            shutil.copyfile(package.path, staging)
            staging.replace(target)
        except OSError as e:
            raise AdapterError(f"cannot place {package.path.name} in EMQX's plugins dir "
                               f"{self.settings.install_dir}: {e}; expected the volume EMQX "
                               "mounts as plugins.install_dir, writable by the sidecar") from e

    def _start(self, name_vsn: str) -> None:
        self.api.put(f"/plugins/{name_vsn}/start")
        state = next((p for p in self._list() if p.name_vsn == name_vsn), None)
        if state is None or not state.running:
            raise AdapterError(
                f"EMQX answered 204 to PUT /plugins/{name_vsn}/start but GET /plugins reports "
                f"it {'not installed' if state is None else 'stopped'}: the plugin's "
                "application did not start (see the EMQX log for its crash reason)")

    def _remove(self, plugin: Installed) -> None:
        if plugin.running:
            self.api.put(f"/plugins/{plugin.name_vsn}/stop")
        try:
            self.api.delete(f"/plugins/{plugin.name_vsn}")
        except ApiError as e:
            if e.status != 404:
                raise

    def _recover(self, failed: Package, previous: Package | None, error: Exception) -> None:
        """Remove the half-installed new version; install and start the previous one."""
        try:
            leftover = [p for p in self._list() if p.name_vsn == failed.name_vsn]
            for plugin in leftover:
                self._remove(plugin)
            if previous is not None:
                self._install(previous)
                self._start(previous.name_vsn)
                log.warning("decision=emqx-rollback plugin=%s restored=%s error=%r",
                            failed.name, previous.name_vsn, str(error))
        except (AdapterError, BrokerUnavailable) as again:
            raise AdapterError(f"{error}; restoring "
                               f"{previous.name_vsn if previous else 'the broker'} also "
                               f"failed: {again}") from error

    def _read_tree(self, roots: set[str]) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        if roots & set(cfg.ZONE_ROOTS):
            zone = self.api.get("/configs/global_zone")
            if not isinstance(zone, dict):
                raise AdapterError("EMQX GET /configs/global_zone: expected a JSON object")
            tree.update({r: zone[r] for r in roots & set(cfg.ZONE_ROOTS) if r in zone})
        for root in sorted(roots - set(cfg.ZONE_ROOTS)):
            tree[root] = self.api.get(f"/configs/{root}")
        return tree

    def _read_config(self, roots: set[str]) -> dict[str, str]:
        return cfg.flatten(self._read_tree(roots)) if roots else {}

    def _package(self, name: str, digest: str) -> Package:
        version_dir = self._version_dir(name, digest)
        packages = sorted(version_dir.glob(f"{name}-*.tar.gz"))
        if len(packages) != 1:
            raise AdapterError(f"plugin {name!r} version {digest} is not installed in "
                               f"{version_dir}; install it first")
        return read_package(packages[0], name)

    def _installed_names(self) -> set[str]:
        root = self.settings.plugin_dir
        if not root.is_dir():
            return set()
        return {p.name for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)
                and any(DIGEST_DIR.fullmatch(v.name) for v in p.iterdir())}

    def _version_dir(self, name: str, digest: str) -> Path:
        return self.settings.plugin_dir / name / digest_hex(name, digest)

    def _state(self) -> dict[str, Any]:
        return load_record(self.settings.plugin_dir / STATE_FILE)

    def _save(self, state: Mapping[str, Any]) -> None:
        save_record(self.settings.plugin_dir / STATE_FILE, state)


def create(options: Mapping[str, str], plugin_dir: Path) -> EmqxAdapter:
    return EmqxAdapter(EmqxSettings.from_options(options, plugin_dir))


def read_package(path: Path, name: str) -> Package:
    """Check an EMQX plugin package the way EMQX's plugin manager does, without extracting:
    ``NAME-VSN/release.json`` with name, rel_vsn, rel_apps, description, and
    ``name-rel_vsn`` equal to the file name."""
    if not _NAME.match(name):
        raise AdapterError(f"EMQX plugin name {name!r}: expected snake_case (EMQX splits "
                           "NAME-VSN at the first '-')")
    name_vsn = path.name.removesuffix(".tar.gz")
    vsn = name_vsn.removeprefix(f"{name}-")
    if not _VSN.match(vsn):
        raise AdapterError(f"EMQX plugin package {path.name}: bad version {vsn!r}")
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.getmember(f"{name_vsn}/release.json")
            if not member.isfile() or member.size > _MAX_RELEASE_JSON:
                raise AdapterError(f"{path.name}: {name_vsn}/release.json is not a small file")
            handle = tar.extractfile(member)
            release = json.loads(handle.read() if handle else b"")
    except KeyError as e:
        raise AdapterError(f"EMQX plugin package {path.name}: no {name_vsn}/release.json "
                           "(EMQX needs it to install the package)") from e
    except (tarfile.TarError, OSError, ValueError) as e:
        raise AdapterError(f"EMQX plugin package {path.name} is unreadable: {e}") from e
    missing = [f for f in ("name", "rel_vsn", "rel_apps", "description")
               if not isinstance(release, dict) or f not in release]
    if missing:
        raise AdapterError(f"{path.name}: release.json lacks {', '.join(missing)} "
                           "(EMQX refuses such packages)")
    if f"{release['name']}-{release['rel_vsn']}" != name_vsn:
        raise AdapterError(f"{path.name}: release.json says {release['name']}-"
                           f"{release['rel_vsn']}, expected {name_vsn} (EMQX refuses it)")
    return Package(name, vsn, path)
