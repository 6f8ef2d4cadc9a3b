"""VerneMQ 2.x adapter: plugins hot-loaded with ``plugin enable/disable``, live config with
``vmq-admin set``, all through the broker's own admin interface.

Adapter options (``--adapter-opt key=value``):

* ``api_url``: the node's HTTP API, e.g. ``http://127.0.0.1:8888``. Plugin commands and
  ``plugin show`` go through it. Without it every command goes through ``vmq-admin``.
* ``api_key_file``: file holding the API key (a mounted Secret; scope ``mgmt``); required with
  ``api_url``. The key is sent as the basic-auth user name and never logged.
* ``vmq_admin``: the ``vmq-admin`` executable (default ``vmq-admin``; ``none`` to go without).
  Needed for config keys and plugin settings: ``/api/v1/set`` answers 500 in VerneMQ 2.0.1 (its
  JSON writer fails on the result) and ``/api/v1/show`` answers 400, so both use the CLI.
* ``broker_plugin_dir``: the plugin directory as the broker container mounts it (default: the
  sidecar's ``--plugin-dir``); sent as ``--path``.
* ``extra_live_keys``: comma-separated config keys ``vmq-admin set`` accepts besides vmq_server's
  own (plugins that ship a cuttlefish schema and whitelist their keys).
* ``timeout``: seconds per admin call (default 30).

Layout on the shared volume: each plugin version lives in ``<plugin_dir>/<name>/<digest hex>/``
(holding ``ebin/<name>.app`` and the beams); ``plugin enable --path`` points at that directory.
``plugin show`` names the loaded applications but not their paths, so the adapter keeps a record
(``<plugin_dir>/.plugforge-vernemq.json``) of the digest it enabled for each name; a name the
broker lists is reported at that digest, a name it does not list is not loaded. Runtime-enabled
plugins are not persisted by VerneMQ: after a node restart the record still names a digest but
``plugin show`` lacks the plugin, so the next resync enables it again.

Hook order. VerneMQ 2.0.1 asks a hook's plugins in the order they were enabled: plugins from
vernemq.conf first (``plugins.<name>.priority`` orders those only), runtime enables appended,
with no priority for them (seen on a live node). So a plugin enabled through the admin interface
comes after the stock ``vmq_passwd`` and ``vmq_acl``, whose ``ok`` ends the chain: it is never
asked for a user in the password file, nor for a publish the ACL allows. The adapter therefore
keeps plugforge plugins first: every (re-)enable disables the broker's other auth plugins
(application plugins with ``auth_on_*`` hooks, in ``plugin show`` order, which is the chain's
order), enables ours and enables theirs again. In between (milliseconds over the HTTP API), only
ours answers and a client nobody admits is refused: fail closed, never open. A plugforge plugin
found behind another auth plugin (someone re-enabled ``vmq_passwd`` by hand) is reported as not
in effect, so the next pass puts it first again. The template's plugin answers ``next`` for what
it does not decide, so the stock plugins still check passwords and ACLs after it.

Upgrade. VerneMQ keys application plugins by name and refuses a second enable of the same name
(``already_enabled``), and the OTP app name cannot change between versions, so an upgrade is
*disable old, enable new* (inside the sequence above). ``enable --path`` prepends the new
``ebin`` to the code path, loads the ``.app`` from there and ``code:load_file``s every module of
the app, so the new beams run (the tests prove it by behaviour: v2 refuses eve).

A refused enable. VerneMQ 2.0.1 checks the hooks after loading the new ``.app`` and, when a hook
module is missing, answers ``Can't enable plugin`` but keeps the new spec loaded: re-enabling
the old version then fails the same way. So the sidecar (1) refuses before any call what it can
see in the files (``vernemq_app.check_plugin``: every listed module has a beam, every hook is
exported), and (2) after a refused enable unloads the app and removes the new ``ebin`` from the
code path (``NodeTool``: ``nodetool rpcterms`` with the node's own name and cookie from
``lib/env.sh`` beside ``vmq-admin``), then enables the old version again. After every change the
plugin's other versions leave the code path (each enable adds one; VerneMQ removes none). Both
need ``vmq_admin``; without it (HTTP only) a refused enable of a beam that cannot load can leave
the app half-loaded until the node restarts (logged).

Safety: ``plugin enable`` with a ``--name`` that is not the OTP app in ``--path`` crashed
VerneMQ 2.0.1's plugin manager in a recording (the live test node answered the call with an RPC
error instead), so the adapter reads ``ebin/*.app`` first and refuses a mismatch before any
call. A plugin manager that lists no plugin at all, not even its internal ones, is reported as
unreachable.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.adapters.base import (
    AdapterError,
    BrokerUnavailable,
    ChangeClass,
    ConfigProblem,
    Observed,
    ObservedPlugin,
    SettingsRejected,
    refuse_unknown_options,
)
from sidecar.adapters.files import (
    DIGEST_DIR,
    digest_hex,
    install_version_dir,
    load_record,
    save_record,
)
from sidecar.adapters.vernemq_admin import (
    CliAdmin,
    HttpAdmin,
    NodeTool,
    Reply,
    VmqAdmin,
    erl_atom,
    erl_string,
    read_secret,
)
from sidecar.adapters.vernemq_app import check_plugin
from sidecar.adapters.vernemq_config import LiveKeys

log = logging.getLogger("plugforge.sidecar.vernemq")

STATE_FILE = ".plugforge-vernemq.json"
_APP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PRINTED_OK_STRING = re.compile(r'\{ok,\s*"((?:[^"\\]|\\.)*)"\}')
_PRINTED_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_MAPPING = re.compile(r"\{\s*mapping\s*,\s*\"([^\"]+)\"")
_SET_OK = re.compile(r"^(\S+) set to \"(.*)\"$")


@dataclass(frozen=True)
class VerneMQSettings:
    plugin_dir: Path
    broker_plugin_dir: Path
    api_url: str = ""
    api_key_file: str = ""
    vmq_admin: str = "vmq-admin"
    extra_live_keys: tuple[str, ...] = ()
    timeout: float = 30.0

    @classmethod
    def from_options(cls, options: Mapping[str, str], plugin_dir: Path) -> VerneMQSettings:
        known = {"api_url", "api_key_file", "vmq_admin", "broker_plugin_dir", "extra_live_keys",
                 "timeout"}
        refuse_unknown_options("vernemq", options, known)
        api_url = options.get("api_url", "")
        if api_url and not re.match(r"^https?://[^/\s]+/?$", api_url):
            raise AdapterError(f"vernemq adapter: api_url must be http(s)://host:port, found "
                               f"{api_url!r}")
        if api_url and not options.get("api_key_file"):
            raise AdapterError("vernemq adapter: api_url needs api_key_file (the mounted Secret "
                               "holding a key from `vmq-admin api-key create scope=mgmt`)")
        vmq_admin = options.get("vmq_admin", "vmq-admin")
        if not api_url and vmq_admin in ("", "none"):
            raise AdapterError("vernemq adapter: needs api_url (+ api_key_file) or vmq_admin")
        try:
            timeout = float(options.get("timeout", "30"))
        except ValueError as e:
            raise AdapterError(f"vernemq adapter: timeout must be seconds, found "
                               f"{options['timeout']!r}") from e
        extra = tuple(k.strip() for k in options.get("extra_live_keys", "").split(",")
                      if k.strip())
        return cls(plugin_dir, Path(options.get("broker_plugin_dir") or plugin_dir), api_url,
                   options.get("api_key_file", ""), "" if vmq_admin == "none" else vmq_admin,
                   extra, timeout)


class VerneMQAdapter:
    name = "vernemq"

    def __init__(self, settings: VerneMQSettings) -> None:
        self.settings = settings
        self.cli = CliAdmin(settings.vmq_admin, timeout=settings.timeout) \
            if settings.vmq_admin else None
        self.http = HttpAdmin(settings.api_url,
                              read_secret(settings.api_key_file, "the VerneMQ API key"),
                              key_source=settings.api_key_file, timeout=settings.timeout) \
            if settings.api_url else None
        self.admin: VmqAdmin = self.http if self.http is not None else _require(self.cli)
        self.nodetool = NodeTool.beside(settings.vmq_admin, timeout=settings.timeout) \
            if settings.vmq_admin else None
        self.live = LiveKeys(settings.extra_live_keys)
        self._watched: set[str] = set()

    @property
    def admin_calls(self) -> int:
        return ((self.http.calls if self.http else 0) + (self.cli.calls if self.cli else 0)
                + (self.nodetool.calls if self.nodetool else 0))

    # --- reading ---------------------------------------------------------------------------

    def observe(self) -> Observed:
        try:
            chain = self._chain()
            state = self._state()
            config = self._show(sorted((self._watched | set(state["originals"])) & set(
                self.live.checks)))
            plugins = self._observed_plugins(chain, state)
        except (BrokerUnavailable, AdapterError) as e:
            return Observed(False, detail=str(e))
        return Observed(True, plugins, config, instance=self._node())

    def health(self) -> bool:
        try:
            rows = self.admin.run(["cluster", "show"]).rows
        except (BrokerUnavailable, AdapterError):
            return False
        return any(r.get("Running") == "true" for r in rows)

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        # ``show`` answers only for named keys: remember which ones the desired state names.
        self._watched = {k for k in config if k in self.live}
        problems = []
        for key, value in sorted(config.items()):
            problem = self.live.check(key, value)
            if problem is None and self.cli is None:
                problem = ("setting config needs the vmq-admin CLI (the HTTP API's /set answers "
                           "500 in VerneMQ 2.0.1); start the sidecar with "
                           "--adapter-opt vmq_admin=/path/to/vmq-admin")
            if problem is not None:
                problems.append(ConfigProblem(key, problem))
        return problems

    def classify(self, key: str) -> ChangeClass:
        return self.live.classify(key)

    def plugin_change_class(self) -> ChangeClass:
        return ChangeClass.PLUGIN_RELOAD

    def write_only(self, key: str) -> bool:
        return False

    def normalize(self, key: str, value: str) -> str:
        return value.strip()

    # --- plugins ---------------------------------------------------------------------------

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        source = image_tree / "plugin" / name
        if not (source / "ebin").is_dir():
            root = image_tree / "plugin"
            found = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                           if p.is_dir())[:10] if root.is_dir() else "no plugin/"
            raise AdapterError(f"image for VerneMQ plugin {name!r} has no plugin/{name}/ebin/ "
                               f"directory (the OTP app `plugin enable --path` loads); "
                               f"found {found}")
        check_plugin(source, name)
        return install_version_dir(
            self._version_dir(name, digest), digest,
            lambda staging: shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True))

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        version_dir = self._version_dir(name, digest)
        if not version_dir.is_dir():
            raise AdapterError(f"plugin {name!r} version {digest} is not installed in "
                               f"{version_dir}; install it first")
        check_plugin(version_dir, name)  # before any call: see vernemq_app
        variables = self._setting_variables(name, version_dir, settings)
        env = self._setting_env(name, version_dir, settings) if not variables else {}
        self._wait_booted()
        state = self._state()
        record = state["plugins"].get(name)
        chain = self._chain()
        loaded = any(p.name == name for p in chain)
        current = loaded and bool(record) and record.get("digest") == digest
        ours = set(state["plugins"]) | {name}
        if not current or _ahead(chain, name, ours):
            previous = record.get("digest") if (loaded and record) else None
            self._first_in_chain(name, None if current else digest, previous, loaded,
                                 [p.name for p in chain if p.auth and p.name not in ours])
            state["plugins"][name] = {"digest": digest, "settings": {}}
            self._save(state)
        if variables:
            self._set_all(variables)
        if env:
            self._set_env(name, env)
        state["plugins"][name] = {"digest": digest, "settings": dict(settings)}
        self._save(state)

    def disable(self, name: str) -> None:
        if any(p.name == name for p in self._chain()):
            self._disable_call(name)
        self._prune_code_path(name, None)
        state = self._state()
        if state["plugins"].pop(name, None) is not None:
            self._save(state)

    def _first_in_chain(self, name: str, digest: str | None, previous: str | None,
                        loaded: bool, others: list[str]) -> None:
        """Enable ``name`` at ``digest`` (None: keep the loaded version) so it is asked before
        the broker's other auth plugins (``others``, e.g. vmq_passwd, vmq_acl).

        VerneMQ calls a hook's plugins in the order they were enabled, runtime enables last,
        and has no priority for them; so the others are disabled first and enabled again after
        ours. In between, no other auth plugin answers: a client that connects or publishes
        then is refused (fail closed), never admitted by a plugin that should come second.
        """
        moved: list[str] = []
        try:
            for other in others:
                self._disable_call(other)
                moved.append(other)
            if digest is not None:
                if loaded:
                    self._disable_call(name)
                try:
                    self._enable_call(name, self._broker_path(name, digest))
                except (AdapterError, BrokerUnavailable) as e:
                    self._clean_failed(name, digest)
                    self._restore(name, previous, e)
                    raise
        finally:
            failed = []
            for other in moved:
                try:
                    self._enable_call(other, None)
                except (AdapterError, BrokerUnavailable) as e:
                    failed.append(f"{other}: {e}")
            if failed:
                raise AdapterError("re-enabling the broker's own auth plugins after "
                                   f"{name} failed: {'; '.join(failed)}; until they are back "
                                   "only plugforge plugins decide (fail closed)")
        self._prune_code_path(name, digest or previous)

    # --- config ----------------------------------------------------------------------------

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        for key in changes:
            if key not in self.live:
                raise AdapterError(f"config.{key}: "
                                   + (self.live.check(key, "x") or "not settable live"))
        state = self._state()
        missing = [k for k in changes if k not in state["originals"]]
        if missing:
            # Remember the node's own values first: VerneMQ has no "back to default" command.
            state["originals"].update(self._show(missing))
            self._save(state)
        targets: dict[str, str] = {}
        for key, value in changes.items():
            if value is None:
                original = state["originals"].get(key)
                if original is None:
                    raise AdapterError(f"config.{key}: cannot go back to the broker's value: "
                                       "it was not recorded before the sidecar changed it")
                targets[key] = original
            else:
                targets[key] = value
        self._set_all(targets)
        self._watched |= set(targets)
        for key, value in changes.items():
            if value is None:
                state["originals"].pop(key, None)
                self._watched.discard(key)
        self._save(state)

    def restart(self) -> None:
        raise AdapterError(
            "the VerneMQ adapter does not restart the broker: its plugins and live config are "
            "applied without one; keys VerneMQ reads only at start belong in vernemq.conf, "
            "changed by redeploying the pod")

    # --- internals -------------------------------------------------------------------------

    def _chain(self) -> list[ChainEntry]:
        """Application plugins in the order the node asks them; raises when its plugin
        manager is gone."""
        rows = self.admin.run(["plugin", "show"]).rows
        # Empty without --internal is also a node without vmq_acl/vmq_passwd; the internal
        # plugins (vmq_swc, vmq_generic_msg_store, ...) are always there unless it crashed.
        if not rows and not self.admin.run(["plugin", "show"], {"--internal": None}).rows:
            raise BrokerUnavailable(
                "VerneMQ's plugin manager lists no plugins at all, not even its internal "
                "ones: it has crashed (2.0.1 does after `plugin enable` with a --name that "
                "does not match the app) and refuses every client until the node restarts; "
                "restart the VerneMQ pod")
        # `plugin show` lists them in the plugin manager's order, which is each hook's order.
        return [ChainEntry(r.get("Plugin", ""), any(
                    h.strip().startswith("auth_on_") for h in r.get("Hook(s)", "").splitlines()))
                for r in rows if r.get("Type") == "application"]

    def _wait_booted(self) -> None:
        """Wait (bounded by ``timeout``) until the node has finished starting its plugins.

        A node that has just (re)started answers the HTTP API and ``vmq-admin`` before
        ``vmq_server_app:start/2`` has enabled the plugins from vernemq.conf (seen live:
        ``plugin show`` reads ``[]``, then ``[vmq_acl]``, then ``[vmq_acl, vmq_passwd]``, about
        0.6 s after the listeners open). Reordering the chain in that window is undone by the
        boot: it enables ``vmq_passwd`` while ours is briefly disabled, or after the others
        were read, so ours ends up behind it (not in effect). ``vmq_server`` is listed as a
        running application only once that ``start/2`` has returned, i.e. after the
        config-file plugins; until then the node is treated as unavailable.
        """
        if self.nodetool is None:
            return  # HTTP only: nothing tells; a plugin left behind is put first next pass
        deadline = time.monotonic() + self.settings.timeout
        while "{vmq_server," not in self.nodetool.call("application", "which_applications"):
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(
                    f"VerneMQ is still starting: vmq_server (which enables the plugins from "
                    f"vernemq.conf) has not finished starting after {self.settings.timeout:.0f}s")
            time.sleep(0.2)

    def _observed_plugins(self, chain: list[ChainEntry], state: dict[str, Any]
                          ) -> dict[str, ObservedPlugin]:
        records: dict[str, dict[str, Any]] = state["plugins"]
        managed = set(records) | self._installed_names()
        loaded = {p.name for p in chain}
        plugins = {}
        for name in sorted(managed):
            record = records.get(name) or {}
            running = name in loaded
            digest = record.get("digest") if running else None
            # Loaded behind another auth plugin (one re-enabled by hand) is not in effect:
            # reported as disabled, so the next pass puts it first again.
            in_effect = running and not _ahead(chain, name, set(records))
            plugins[name] = ObservedPlugin(
                name, digest, enabled=in_effect,
                path=str(self._version_dir(name, digest)) if digest else None,
                settings=self._read_settings(name, record) if running and digest else None)
        return plugins

    def _read_settings(self, name: str, record: Mapping[str, Any]) -> Mapping[str, str] | None:
        applied: Mapping[str, str] = record.get("settings") or {}
        if not applied:
            return {}
        try:
            version_dir = self._version_dir(name, record["digest"])
            variables = self._setting_variables(name, version_dir, applied)
            if not variables:
                return self._get_env(name, sorted(self._setting_env(name, version_dir, applied)))
            shown = self._show(sorted(variables))
        except AdapterError:
            return None  # cannot tell: the planner then trusts its own record
        # _setting_variables keeps the order of ``applied``: variable i is setting i.
        by_variable = dict(zip(variables, applied, strict=True))
        return {by_variable[v]: value for v, value in shown.items()}

    def _installed_names(self) -> set[str]:
        root = self.settings.plugin_dir
        if not root.is_dir():
            return set()
        return {p.name for p in root.iterdir() if p.is_dir() and _APP_NAME.match(p.name)
                and any(DIGEST_DIR.fullmatch(v.name) for v in p.iterdir())}

    def _enable_call(self, name: str, path: str | None) -> None:
        """``plugin enable``; without a path the node finds the app on its code path (the
        broker's own plugins)."""
        flags = {"--name": name} if path is None else {"--name": name, "--path": path}
        reply = self.admin.run(["plugin", "enable"], flags)
        if reply.alerts and "already_enabled" in reply.message():
            # Loaded behind our back since we looked: replace it with the version we want.
            self._disable_call(name)
            reply = self.admin.run(["plugin", "enable"], flags)
        _expect_done(reply, f"plugin enable --name={name}" + (f" --path={path}" if path else ""))

    def _disable_call(self, name: str) -> None:
        reply = self.admin.run(["plugin", "disable"], {"--name": name})
        if "plugin_not_found" in reply.message():
            return  # already gone: the goal of a disable
        _expect_done(reply, f"plugin disable --name={name}")

    def _restore(self, name: str, previous: str | None, error: Exception) -> None:
        if previous is None:
            return
        try:
            self._enable_call(name, self._broker_path(name, previous))
            self._prune_code_path(name, previous)
            log.warning("decision=vernemq-rollback plugin=%s restored=%s error=%r", name,
                        previous, str(error))
        except (AdapterError, BrokerUnavailable) as again:
            raise AdapterError(f"{error}; re-enabling the previous version {previous} also "
                               f"failed: {again}") from error

    def _clean_failed(self, name: str, digest: str) -> None:
        """Undo what a refused ``plugin enable`` left: VerneMQ 2.0.1 keeps the new app spec
        loaded and its ebin first on the code path, so any later enable of the app (the old
        version too) reads the refused spec and fails the same way."""
        if self.nodetool is None:
            log.warning("decision=vernemq-no-cleanup plugin=%s: without vmq_admin (and the "
                        "node's lib/env.sh beside it) the refused app spec stays loaded; "
                        "restart the node if enabling it again fails the same way", name)
            return
        self.nodetool.call("application", "unload", erl_atom(name))
        ebin = f"{self._broker_path(name, digest)}/ebin"
        self.nodetool.call("code", "del_path", erl_string(ebin))

    def _prune_code_path(self, name: str, keep: str | None) -> None:
        """Every ``plugin enable --path`` prepends that version's ebin and nothing removes
        it: drop the plugin's other versions so the code path holds one (or none)."""
        if self.nodetool is None:
            return
        prefix = f"{self.settings.broker_plugin_dir}/{name}/"
        wanted = f"{self._broker_path(name, keep)}/ebin" if keep else None
        printed = self.nodetool.call("code", "get_path")
        for path in _PRINTED_STRING.findall(printed):
            if path.startswith(prefix) and path != wanted:
                self.nodetool.call("code", "del_path", erl_string(path))

    def _setting_variables(self, name: str, version_dir: Path,
                           settings: Mapping[str, str]) -> dict[str, str]:
        """Plugin settings as ``vmq-admin set`` variables (the plugin's cuttlefish schema)."""
        if not settings:
            return {}
        mappings = set()
        for schema in sorted((version_dir / "priv").glob("*.schema")):
            mappings.update(_MAPPING.findall(schema.read_text(errors="replace")))
        if not mappings:
            return {}  # no schema: application env (_setting_env)
        if self.cli is None:
            raise SettingsRejected(f"plugin {name!r}: settings need the vmq-admin CLI "
                               "(--adapter-opt vmq_admin=...)")
        variables = {}
        for key, value in settings.items():
            variable = next((v for v in (f"{name}.{key}", key) if v in mappings), None)
            if variable is None:
                raise SettingsRejected(f"plugin {name!r}: setting {key!r} is not in its schema; "
                                   f"expected one of {', '.join(sorted(mappings))}")
            if not value or any(c in value for c in "\r\n\0"):
                raise SettingsRejected(f"plugin {name!r}: setting {key!r} must be one line")
            variables[variable] = value
        return variables

    def _setting_env(self, name: str, version_dir: Path,
                     settings: Mapping[str, str]) -> dict[str, str]:
        """Settings of a plugin without a schema, as its application env: only keys its .app
        declares in ``env`` (its defaults), set with ``application:set_env`` on the node."""
        if not settings:
            return {}
        declared = check_plugin(version_dir, name).env_keys
        unknown = sorted(set(settings) - set(declared))
        if unknown:
            raise SettingsRejected(
                f"plugin {name!r}: setting(s) {', '.join(unknown)} are not application env the "
                f"plugin declares (its .app env has: {', '.join(declared) or 'nothing'}); "
                "declare a default there, or ship a cuttlefish schema in priv/*.schema")
        if self.nodetool is None:
            raise SettingsRejected(
                f"plugin {name!r}: settings {sorted(settings)} cannot be applied: without a "
                "cuttlefish schema in priv/*.schema they are set as application env through "
                "the node's tooling, which needs --adapter-opt vmq_admin=/path/to/vmq-admin "
                "(with lib/env.sh of the release beside it)")
        for key, value in settings.items():
            erl_atom(key)
            if not value or any(c in value for c in '"\\\r\n\0'):
                raise SettingsRejected(f"plugin {name!r}: setting {key!r} must be one line "
                                       "without quotes or backslashes")
        return dict(settings)

    def _set_env(self, name: str, values: Mapping[str, str]) -> None:
        tool = _require_tool(self.nodetool)
        for key, value in values.items():
            tool.call("application", "set_env", erl_atom(name), erl_atom(key), erl_string(value))
        shown = self._get_env(name, sorted(values))
        differ = {k: shown.get(k) for k, v in values.items() if shown.get(k) != v}
        if differ:
            raise AdapterError(f"plugin {name!r}: set its env but the node reads {differ}")

    def _get_env(self, name: str, keys: list[str]) -> dict[str, str]:
        tool = _require_tool(self.nodetool)
        values = {}
        for key in keys:
            printed = tool.call("application", "get_env", erl_atom(name), erl_atom(key))
            match = _PRINTED_OK_STRING.fullmatch(printed.strip())
            if match:
                values[key] = match.group(1)
        return values

    def _set_all(self, values: Mapping[str, str]) -> None:
        cli = _require(self.cli)
        for key, value in values.items():
            out = cli.run_raw(["set"], {key: value}).strip()
            lines = [line for line in out.splitlines() if line.strip()]
            match = _SET_OK.match(lines[-1]) if lines else None
            if match is None or match.group(1) != key:
                raise AdapterError(f"config.{key}: VerneMQ refused {key}={value!r}: "
                                   f"{' '.join(lines) or 'no answer'}")
        shown = self._show(sorted(values))
        differ = {k: shown.get(k) for k, v in values.items() if shown.get(k) != v}
        if differ:
            raise AdapterError(f"VerneMQ reported the values set but `show` reads {differ}")

    def _show(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        cli = _require(self.cli)
        rows = cli.run(["show", *keys]).rows
        if not rows:
            raise AdapterError(f"`vmq-admin show {' '.join(keys)}` printed no table")
        row = rows[0]
        return {k: row[k].strip() for k in keys if k in row}

    def _node(self) -> str:
        try:
            rows = self.admin.run(["cluster", "show"]).rows
        except (BrokerUnavailable, AdapterError):
            return ""
        return ",".join(sorted(r.get("Node", "") for r in rows))

    def _version_dir(self, name: str, digest: str) -> Path:
        return self.settings.plugin_dir / name / digest_hex(name, digest)

    def _broker_path(self, name: str, digest: str) -> str:
        return str(self.settings.broker_plugin_dir / name / digest_hex(name, digest))

    def _state(self) -> dict[str, Any]:
        return load_record(self.settings.plugin_dir / STATE_FILE)

    def _save(self, state: Mapping[str, Any]) -> None:
        save_record(self.settings.plugin_dir / STATE_FILE, state)


def create(options: Mapping[str, str], plugin_dir: Path) -> VerneMQAdapter:
    return VerneMQAdapter(VerneMQSettings.from_options(options, plugin_dir))


@dataclass(frozen=True)
class ChainEntry:
    name: str
    auth: bool  # has an auth_on_* hook


def _ahead(chain: list[ChainEntry], name: str, ours: set[str]) -> list[str]:
    """Auth plugins that are not ours and are asked before ``name``."""
    ahead: list[str] = []
    for entry in chain:
        if entry.name == name:
            return ahead
        if entry.auth and entry.name not in ours:
            ahead.append(entry.name)
    return ahead


def _expect_done(reply: Reply, what: str) -> None:
    if reply.alerts or "Done" not in reply.texts:
        raise AdapterError(f"VerneMQ refused `{what}`: {reply.message() or 'no answer'}")


def _require_tool(tool: NodeTool | None) -> NodeTool:
    if tool is None:
        raise AdapterError("this needs the node's tooling: start the sidecar with "
                           "--adapter-opt vmq_admin=/path/to/vmq-admin")
    return tool


def _require(cli: CliAdmin | None) -> CliAdmin:
    if cli is None:
        raise AdapterError("this needs the vmq-admin CLI: start the sidecar with "
                           "--adapter-opt vmq_admin=/path/to/vmq-admin")
    return cli
