"""RabbitMQ 3.10 adapter: plugins hot-loaded with ``rabbitmq-plugins --online``, the auth backend
chain switched at runtime, users and permissions changed live, all through RabbitMQ's own CLI.

Adapter options (``--adapter-opt key=value``):

* ``node`` (required): the node name, e.g. ``rabbit@my-pod``.
* ``home``: a directory holding the node's ``.erlang.cookie`` (a mounted Secret, mode 0400);
  default: the sidecar's ``$HOME``. ``epmd_port``: epmd's port if not 4369.
* ``cli_dir``: where ``rabbitmqctl`` and ``rabbitmq-plugins`` live (default
  ``/usr/lib/rabbitmq/bin``). ``timeout``: seconds per CLI or HTTP call (default 30).
* ``vhost`` (default ``/``) and ``exchange`` (default ``amq.topic``): where ``permission.*`` and
  ``topic_permission.*`` apply (the MQTT plugin's vhost and exchange).

Layout on the shared volume (``--plugin-dir``, which the node lists in ``RABBITMQ_PLUGINS_DIR``,
colon-separated after its own plugins): every installed version is kept in
``.versions/<name>/<digest hex>/<name>-<vsn>.ez``, where RabbitMQ does not look; exactly one
version of each plugin, the one enabled, is at the top level as ``<name>-<vsn>.ez``, put there
with a rename. Two versions of one application in the plugins dir would leave the choice to
RabbitMQ, so the old file is removed before the node is asked to load the new one. A record
(``.plugforge-rabbitmq.json``) keeps the digest, archive file, settings and auth role of each
plugin the adapter enabled, the ``auth_backends`` it replaced, and the values of live keys
before the sidecar first changed them.

Enable: put the archive in place, ``rabbitmq-plugins enable --online`` (after ``disable
--online`` when another version runs), settle the code (every module of the archive loaded from
its bytes, other versions' ``ebin`` off the code path: under load, calls between the disable
and the enable reload the old module, which the enable alone would leave running; see
``rabbitmq_erl``), check that every loaded module's MD5 equals the archive's (fresh code),
set the plugin's settings as application env (read by the plugin on every login), and, when
the plugin is an auth backend (exports ``user_login_authentication/2``), make the managed auth
plugins the whole ``auth_backends`` list. A failure at any step restores the previous archive,
version, settings and backends, then raises. Disable: ``auth_backends`` back first (a disabled
backend module would be reloaded by the next login), then ``disable --online``.

The plugin must be the only auth backend: RabbitMQ lets the next backend in the chain try after
a refusal, so a user denied by the plugin but known to the internal database would get in.
Runtime changes (``auth_backends``, settings, live keys) are lost when the node restarts; the
observed state then differs from the desired one and the next resync applies it again, while
``enabled_plugins`` (written by ``rabbitmq-plugins``) loads the archive at boot.

Users and permissions (``user.*``, ``permission.*``, ``topic_permission.*``; see
``rabbitmq_config``) are changed with the functions ``rabbitmqctl`` and the management API both
call (``rabbit_auth_backend_internal``), over Erlang distribution, not through the management
HTTP API: the HTTP API authenticates its caller through ``auth_backends``, so once the plugin is
the only backend the sidecar would be locked out unless the plugin admitted it as
administrator (seen on 3.10.8: 401 right after the switch). Expressions travel on the CLI's
standard input, so passwords never appear in a process's argv.

The sidecar container needs the RabbitMQ CLI (same version as the node), the node's cookie, and
the node's plugins dirs and ``enabled_plugins`` file at the same paths as the node sees them:
``rabbitmq-plugins`` resolves plugins and rewrites that file itself.

Every change the adapter accepts is live, so it never restarts the node (``restart`` refuses).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.adapters import rabbitmq_config as cfg
from sidecar.adapters import rabbitmq_erl as erl
from sidecar.adapters.base import (
    WRITE_ONLY,
    AdapterError,
    BrokerUnavailable,
    ChangeClass,
    ConfigProblem,
    Observed,
    ObservedPlugin,
    refuse_unknown_options,
)
from sidecar.adapters.files import DIGEST_DIR, digest_hex
from sidecar.adapters.rabbitmq_cli import ATOM, Cli, erl_binary

RECORD = ".plugforge-rabbitmq.json"
# RabbitMQ 3.10's MQTT plugin speaks 3.1.1 only; MQTT 5 probes would see every login refused.
PROBE_MQTT_VERSION = "3.1.1"
VERSIONS = ".versions"
KEEP_VERSIONS = 3
_BACKENDS_TERM = re.compile(r"^\[[A-Za-z0-9_,{}' ]*\]$")
_OPTIONS = {"node", "home", "epmd_port", "cli_dir", "timeout", "vhost", "exchange"}


@dataclass(frozen=True)
class RabbitMQSettings:
    cli: Cli
    plugin_dir: Path
    vhost: str = "/"
    exchange: str = "amq.topic"

    @classmethod
    def from_options(cls, options: Mapping[str, str], plugin_dir: Path) -> RabbitMQSettings:
        refuse_unknown_options("rabbitmq", options, _OPTIONS)
        if not options.get("node"):
            raise AdapterError("rabbitmq adapter: needs node (e.g. --adapter-opt "
                               "node=rabbit@$(POD_NAME)) and the node's cookie in home")
        try:
            timeout = float(options.get("timeout", "30"))
        except ValueError as e:
            raise AdapterError(f"rabbitmq adapter: timeout must be seconds, found "
                               f"{options['timeout']!r}") from e
        home = options.get("home")
        cli = Cli(options["node"], Path(options.get("cli_dir", "/usr/lib/rabbitmq/bin")),
                  Path(home) if home else None, options.get("epmd_port", ""), timeout)
        return cls(cli, plugin_dir, options.get("vhost", "/"),
                   options.get("exchange", "amq.topic"))


class RabbitMQAdapter:
    name = "rabbitmq"

    def __init__(self, settings: RabbitMQSettings) -> None:
        self.settings = settings
        self.cli = settings.cli
        self.admin_calls = 0  # calls that change the node (CLI enable/disable, set_env, users)

    # --- reading ---------------------------------------------------------------------------

    def observe(self) -> Observed:
        record = self._record()
        try:
            node = self._node_state(record)
        except (BrokerUnavailable, AdapterError) as e:
            return Observed(False, detail=str(e))
        instance = f"{node['pid']}:{_start_ticks(node['stat'])}"
        if not node["running"]:
            return Observed(False, instance=instance, detail="the node answers but the rabbit "
                            "application is not running (booting or stopped)")
        config = {key: value for key, value in node["env"].items() if value is not None}
        config.update(self._observe_users(node))
        plugins = self._observe_plugins(record, node)
        return Observed(True, plugins, config, instance=instance)

    def health(self) -> bool:
        try:
            return self.cli.eval("rabbit:is_running().").strip() == "true"
        except (BrokerUnavailable, AdapterError):
            return False

    def validate_config(self, config: Mapping[str, str]) -> list[ConfigProblem]:
        problems = []
        for key, value in sorted(config.items()):
            problem = cfg.check(key, value)
            if problem is not None:
                problems.append(ConfigProblem(key, problem))
        return problems

    def classify(self, key: str) -> ChangeClass:
        return cfg.classify(key)

    def plugin_change_class(self) -> ChangeClass:
        return ChangeClass.PLUGIN_RELOAD

    def write_only(self, key: str) -> bool:
        return cfg.is_write_only(key)

    def normalize(self, key: str, value: str) -> str:
        return cfg.normalize(key, value)

    # --- plugins ---------------------------------------------------------------------------

    def install_plugin(self, name: str, digest: str, image_tree: Path) -> Path:
        source = image_tree / "plugin" / name
        archives = sorted(source.glob("*.ez")) if source.is_dir() else []
        if len(archives) != 1 or _vsn(name, archives[0].name) is None:
            found = sorted(p.name for p in source.iterdir()) if source.is_dir() else \
                "no such directory"
            raise AdapterError(f"image for plugin {name!r}: expected exactly one "
                               f"plugin/{name}/{name}-<version>.ez, found {found}")
        _check_archive(name, archives[0])
        target = self._version_dir(name, digest)
        if (target / archives[0].name).is_file():
            return target / archives[0].name  # content-addressed: already in place
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{digest_hex(name, digest)[:12]}.",
                                        dir=target.parent))
        try:
            shutil.copyfile(archives[0], staging / archives[0].name)
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._prune(name, keep=digest)
        return target / archives[0].name

    def enable(self, name: str, digest: str, settings: Mapping[str, str]) -> None:
        bad = [k for k in settings if not ATOM.match(k)]
        if bad:
            raise AdapterError(f"plugin {name!r}: setting keys become application env keys "
                               f"and must be [a-z][a-z0-9_]*, found {bad}")
        archive = self._archive(name, digest)
        record = self._record()
        previous = record["plugins"].get(name)
        node = self._node_state(record)
        state = node["plugins"].get(name, {})
        if previous and previous["digest"] == digest and self._runs(previous, state):
            self._eval(erl.set_settings(name, settings, _removed(previous, settings)))
            record["plugins"][name] = {**previous, "settings": dict(settings)}
            self._set_backends(record, node)
            return
        try:
            auth = self._switch(node, name, archive, settings, previous,
                                bool(state.get("active")))
            record["plugins"][name] = {"digest": digest, "file": archive.name,
                                       "settings": dict(settings), "auth": auth}
            self._set_backends(record, node)
        except (AdapterError, BrokerUnavailable) as e:
            note = self._restore(node, name, previous, bool(state.get("active")))
            raise AdapterError(f"enabling plugin {name!r} {digest} failed: {e}; {note}") from e

    def disable(self, name: str) -> None:
        record = self._record()
        node = self._node_state(record)
        previous = record["plugins"].pop(name, None)
        # The backend list first: a disabled backend's module would be reloaded on next login.
        self._set_backends(record, node)
        if node["plugins"].get(name, {}).get("active"):
            self._plugins(node, "disable", name)
        if previous and previous.get("settings"):
            self._eval(erl.set_settings(name, {}, list(previous["settings"])))
        for stale in self.settings.plugin_dir.glob(f"{name}-*.ez"):
            if _vsn(name, stale.name) is not None:
                stale.unlink(missing_ok=True)

    def restart(self) -> None:
        raise AdapterError("the rabbitmq adapter never restarts the node: plugins load online "
                           "and it only accepts config keys that are live")

    # --- config ----------------------------------------------------------------------------

    def apply_config(self, changes: Mapping[str, str | None]) -> None:
        managed = {k: v for k, v in changes.items() if cfg.parse_key(k) is not None}
        env = {k: v for k, v in changes.items() if k in cfg.LIVE_APP_ENV}
        other = sorted(set(changes) - set(managed) - set(env))
        if other:
            raise AdapterError(f"not live on RabbitMQ: {', '.join(other)}; set them in "
                               "rabbitmq.conf")
        if managed:
            self._apply_users(managed)
        if env:
            self._apply_env(env)

    def _apply_env(self, changes: Mapping[str, str | None]) -> None:
        record = self._record()
        before: dict[str, str | None] = record.setdefault("config_before", {})
        current = self._node_state(record)["env"]
        values: dict[tuple[str, str], tuple[str, str] | None] = {}
        for key, value in changes.items():
            app, env_key, kind = cfg.LIVE_APP_ENV[key]
            if value is None:
                # Back to what the node had before the sidecar first changed it.
                if key not in before:
                    continue
                original = before.pop(key)
                values[(app, env_key)] = None if original is None else (kind, original)
            else:
                before.setdefault(key, current.get(key))
                values[(app, env_key)] = (kind, value)
        if values:
            self._eval(erl.set_env(values))
        self._save(record)

    def _apply_users(self, changes: Mapping[str, str | None]) -> None:
        node = self._node_state(self._record())
        users = {u["name"]: u for u in node["users"]}
        vhost, exchange = erl_binary(self.settings.vhost), erl_binary(self.settings.exchange)
        grouped: dict[tuple[str, str], dict[str, str | None]] = {}
        for key, value in changes.items():
            parsed = cfg.parse_key(key)
            if parsed is None:
                raise AdapterError(f"not a user or permission key: {key!r}")
            grouped.setdefault((parsed.kind, parsed.user), {})[parsed.field] = value
        calls: list[tuple[str, str]] = []
        deletes: list[tuple[str, str]] = []
        # Users before their permissions; deletions last.
        order = {"user": 0, "permission": 1, "topic_permission": 2}
        for (kind, user), fields in sorted(grouped.items(), key=lambda i: (order[i[0][0]], i[0])):
            name = erl_binary(user)
            if kind == "user":
                if "password" in fields and fields["password"] is None:
                    deletes.append((f"delete user {user}", erl.internal("delete_user", name)))
                    continue
                password = fields.get("password")
                if user not in users:
                    # A user created without a password cannot log in with one.
                    calls.append((f"add user {user}", erl.internal(
                        "add_user", name, erl_binary(password or ""))))
                    if not password:
                        calls.append((f"clear password of {user}",
                                      erl.internal("clear_password", name)))
                elif password is not None:
                    calls.append((f"change password of {user}",
                                  erl.internal("change_password", name, erl_binary(password))))
                if "tags" in fields or user not in users:
                    calls.append((f"set tags of {user}", erl.internal(
                        "set_tags", name, erl.tags(cfg.split_tags(fields.get("tags") or "")))))
                continue
            current = self._permission_row(node, kind, user)
            names = cfg.FIELDS[kind]
            if all(fields.get(f, "missing") is None for f in names):
                clear = ("clear_permissions", name, vhost) if kind == "permission" else (
                    "clear_topic_permissions", name, vhost, exchange)
                calls.append((f"clear {kind} of {user}", erl.internal(*clear)))
                continue
            regex = {f: (fields[f] or "") if f in fields else current.get(f, "") for f in names}
            args = [erl_binary(regex[f]) for f in names]
            call = erl.internal("set_permissions", name, vhost, *args) if kind == "permission" \
                else erl.internal("set_topic_permissions", name, vhost, exchange, *args)
            calls.append((f"set {kind} of {user}", call))
        self._manage(calls + deletes)

    def _permission_row(self, node: Mapping[str, Any], kind: str, user: str) -> dict[str, str]:
        rows = node["permissions"] if kind == "permission" else [
            r for r in node["topic_permissions"] if r.get("exchange") == self.settings.exchange]
        return next((dict(r) for r in rows if r.get("user") == user), {})

    def _manage(self, calls: list[tuple[str, str]]) -> None:
        if not calls:
            return
        answer = self._eval(erl.manage(calls))
        if not answer.get("ok"):
            raise AdapterError("RabbitMQ refused: " + "; ".join(answer.get("errors", [])))

    def close(self) -> None:
        """Nothing to release: every call is its own CLI process."""

    # --- internals -------------------------------------------------------------------------

    def _node_state(self, record: Mapping[str, Any]) -> dict[str, Any]:
        plugins = {}
        for name in self._managed_names(record):
            entry = record["plugins"].get(name)
            file = entry["file"] if entry else self._active_file(name)
            keys = sorted(entry["settings"]) if entry else []
            plugins[name] = (file.name if isinstance(file, Path) else file or "", keys)
        env = {key: (app, env_key) for key, (app, env_key, _) in cfg.LIVE_APP_ENV.items()}
        answer = self.cli.eval_json(erl.observe(plugins, env, self.settings.vhost))
        if not isinstance(answer, dict) or "pid" not in answer:
            raise AdapterError(f"rabbitmqctl eval: unexpected answer {answer!r}")
        return answer

    def _observe_plugins(self, record: Mapping[str, Any],
                         node: Mapping[str, Any]) -> dict[str, ObservedPlugin]:
        plugins = {}
        for name, state in sorted(node["plugins"].items()):
            entry = record["plugins"].get(name)
            running = entry is not None and self._runs(entry, state)
            in_charge = running and (not entry.get("auth") or name in node["auth_backends"])
            digest = entry["digest"] if entry and in_charge else None
            plugins[name] = ObservedPlugin(
                name, digest, enabled=bool(state["active"]),
                path=str(self.settings.plugin_dir / entry["file"]) if digest and entry else None,
                settings=dict(state["settings"]) if digest else None)
        return plugins

    def _runs(self, entry: Mapping[str, Any], state: Mapping[str, Any]) -> bool:
        """The node runs exactly the recorded archive: active, same version, no stale module,
        and the file in the plugins dir is the recorded digest's archive."""
        if not state.get("active") or state.get("stale"):
            return False
        if state.get("vsn") != _vsn_of_file(entry["file"]):
            return False
        active = self.settings.plugin_dir / entry["file"]
        stored = self._version_dir_or_none(entry["file"], entry["digest"])
        return stored is not None and _sha256(active) == _sha256(stored)

    def _switch(self, node: Mapping[str, Any], name: str, archive: Path,
                settings: Mapping[str, str], previous: Mapping[str, Any] | None,
                active: bool) -> bool:
        """Load ``archive`` in place of whatever version runs; True if it is an auth backend.

        Disable + enable rather than only a hot load of the new modules: it is RabbitMQ's own
        way to replace the application (its spec: vsn, module list, env defaults of the new
        ``.app``; the expanded plugin; ``enabled_plugins``), which a bare ``code:load_binary``
        would leave describing the old version. What it does not guarantee under load, the
        code that runs, ``after_enable`` settles with a hot load of the archive's modules. The
        backend stays the only one in ``auth_backends`` throughout: between the two steps the
        node reloads the old module from its ebin for each call, so logins and publishes keep
        being decided by the old version, never by a fallback backend."""
        self._place(name, archive)
        if active:
            self._plugins(node, "disable", name)
        self._plugins(node, "enable", name)
        answer = self._eval(erl.after_enable(name, archive.name, settings,
                                             _removed(previous, settings)))
        if not answer.get("ok"):
            raise AdapterError(str(answer.get("error")))
        return bool(answer.get("auth"))

    def _restore(self, node: Mapping[str, Any], name: str,
                 previous: Mapping[str, Any] | None, was_active: bool) -> str:
        """Put the version that ran before back; a sentence for the error message."""
        try:
            if previous is not None and was_active:
                archive = self._archive(name, previous["digest"])
                self._place(name, archive)
                self._plugins(node, "disable", name)
                self._plugins(node, "enable", name)
                answer = self._eval(erl.after_enable(name, archive.name,
                                                     previous["settings"], []))
                if not answer.get("ok"):
                    raise AdapterError(str(answer.get("error")))
                return f"restored the previous version {previous['digest']}"
            self._plugins(node, "disable", name)
            for stale in self.settings.plugin_dir.glob(f"{name}-*.ez"):
                stale.unlink(missing_ok=True)
            record = self._record()
            record["plugins"].pop(name, None)
            self._set_backends(record, self._node_state(record))
            return "the plugin is disabled again (no earlier version ran)"
        except (AdapterError, BrokerUnavailable, OSError) as e:
            return f"restoring the previous state failed too: {e}"

    def _plugins(self, node: Mapping[str, Any], action: str, name: str) -> None:
        if action == "disable":
            settled = self._eval(erl.before_disable(name))
            if not settled.get("ok"):
                raise AdapterError(f"cannot disable {name!r} yet: calls still run older code of "
                                   f"{settled.get('busy')} after 5 s; the next retry tries again")
        self.admin_calls += 1
        self.cli.plugins(action, name, node["plugins_dir"], node["enabled_plugins_file"])

    def _place(self, name: str, archive: Path) -> None:
        """Make ``archive`` the only version of ``name`` in the plugins dir (rename, atomic)."""
        target = self.settings.plugin_dir / archive.name
        staging = self.settings.plugin_dir / f".{archive.name}.tmp"
        shutil.copyfile(archive, staging)
        os.rename(staging, target)
        for other in self.settings.plugin_dir.glob(f"{name}-*.ez"):
            if other.name != archive.name and _vsn(name, other.name) is not None:
                other.unlink(missing_ok=True)

    def _set_backends(self, record: dict[str, Any], node: Mapping[str, Any]) -> None:
        """auth_backends = the managed auth plugins, or what it was before the first one."""
        ours = sorted(n for n, e in record["plugins"].items() if e.get("auth"))
        if ours:
            if "auth_backends_before" not in record:
                record["auth_backends_before"] = node["auth_backends_term"]
            term = "[" + ",".join(ours) + "]"
        else:
            term = record.pop("auth_backends_before", None) or node["auth_backends_term"]
            if not _BACKENDS_TERM.match(term):
                raise AdapterError(f"{RECORD}: auth_backends_before {term!r} is not a list of "
                                   "backend names; fix or delete the record")
        if term != node["auth_backends_term"]:
            self._eval(erl.set_auth_backends(term))
        self._save(record)

    def _observe_users(self, node: Mapping[str, Any]) -> dict[str, str]:
        config = {}
        for user in node["users"]:
            config[f"user.{user['name']}.tags"] = ",".join(sorted(user["tags"]))
            if user["has_password"]:
                config[f"user.{user['name']}.password"] = WRITE_ONLY
        for row in node["permissions"]:
            for field in cfg.FIELDS["permission"]:
                config[f"permission.{row['user']}.{field}"] = row[field]
        for row in node["topic_permissions"]:
            if row.get("exchange") == self.settings.exchange:
                for field in cfg.FIELDS["topic_permission"]:
                    config[f"topic_permission.{row['user']}.{field}"] = row[field]
        return config

    def _eval(self, body: str) -> dict[str, Any]:
        """Evaluate an expression that changes the node (observing uses ``_node_state``)."""
        self.admin_calls += 1
        answer = self.cli.eval_json(body)
        if not isinstance(answer, dict):
            raise AdapterError(f"rabbitmqctl eval: unexpected answer {answer!r}")
        return answer

    def _managed_names(self, record: Mapping[str, Any]) -> list[str]:
        names = set(record["plugins"])
        store = self.settings.plugin_dir / VERSIONS
        if store.is_dir():
            names |= {p.name for p in store.iterdir() if p.is_dir() and ATOM.match(p.name)}
        return sorted(names)

    def _active_file(self, name: str) -> str:
        files = sorted(p.name for p in self.settings.plugin_dir.glob(f"{name}-*.ez")
                       if _vsn(name, p.name) is not None)
        return files[0] if files else ""

    def _version_dir(self, name: str, digest: str) -> Path:
        return self.settings.plugin_dir / VERSIONS / name / digest_hex(name, digest)

    def _version_dir_or_none(self, file: str, digest: str) -> Path | None:
        name = file.rsplit("-", 1)[0]
        path = self._version_dir(name, digest) / file
        return path if path.is_file() else None

    def _archive(self, name: str, digest: str) -> Path:
        version_dir = self._version_dir(name, digest)
        archives = sorted(version_dir.glob(f"{name}-*.ez")) if version_dir.is_dir() else []
        if len(archives) != 1:
            raise AdapterError(f"plugin {name!r} version {digest} is not installed in "
                               f"{version_dir}; install it first")
        return archives[0]

    def _prune(self, name: str, keep: str) -> None:
        """Keep the newest KEEP_VERSIONS versions (enough to roll back) and the enabled one."""
        entry = self._record()["plugins"].get(name)
        protected = {digest_hex(name, keep)}
        if entry:
            protected.add(digest_hex(name, entry["digest"]))
        versions = sorted((p for p in (self.settings.plugin_dir / VERSIONS / name).iterdir()
                           if p.is_dir() and DIGEST_DIR.fullmatch(p.name)),
                          key=lambda p: p.stat().st_mtime, reverse=True)
        for old in versions[KEEP_VERSIONS:]:
            if old.name not in protected:
                shutil.rmtree(old, ignore_errors=True)

    def _record(self) -> dict[str, Any]:
        path = self.settings.plugin_dir / RECORD
        if not path.exists():
            return {"plugins": {}}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AdapterError(f"cannot read the adapter's record {path}: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("plugins"), dict):
            raise AdapterError(f"{path}: expected {{\"plugins\": {{...}}}}; fix or delete it")
        return data

    def _save(self, record: Mapping[str, Any]) -> None:
        path = self.settings.plugin_dir / RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{RECORD}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.rename(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def create(options: Mapping[str, str], plugin_dir: Path) -> RabbitMQAdapter:
    return RabbitMQAdapter(RabbitMQSettings.from_options(options, plugin_dir))


def _vsn(name: str, file: str) -> str | None:
    match = re.fullmatch(rf"{re.escape(name)}-([0-9][A-Za-z0-9.+_-]*)\.ez", file)
    return match.group(1) if match else None


def _vsn_of_file(file: str) -> str | None:
    match = re.fullmatch(r"[a-z][a-z0-9_]*-([0-9][A-Za-z0-9.+_-]*)\.ez", file)
    return match.group(1) if match else None


def _check_archive(name: str, archive: Path) -> None:
    """The archive is a zip holding ``<name>-<vsn>/ebin/<name>.app`` for application ``name``
    (RabbitMQ keys plugins by application name; another name would load something else)."""
    vsn = _vsn(name, archive.name)
    app_path = f"{name}-{vsn}/ebin/{name}.app"
    try:
        with zipfile.ZipFile(archive) as ez:
            app = ez.read(app_path).decode(errors="replace")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise AdapterError(f"plugin {name!r}: {archive.name} is not a RabbitMQ plugin archive "
                           f"with {app_path} ({e})") from e
    if not re.match(rf"\s*\{{\s*application\s*,\s*'?{re.escape(name)}'?\s*,", app):
        raise AdapterError(f"plugin {name!r}: {app_path} does not define application {name}")


def _removed(previous: Mapping[str, Any] | None, settings: Mapping[str, str]) -> list[str]:
    old = previous.get("settings", {}) if previous else {}
    return sorted(set(old) - set(settings))


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _start_ticks(stat: str) -> str:
    try:
        return stat.rsplit(") ", 1)[1].split()[19]
    except IndexError:
        return "?"

