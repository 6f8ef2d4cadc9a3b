"""The BrokerPlugins and webhook secrets the endpoint checks deliveries against (thin I/O).

Read through the apiserver as the builder identity: the plugin list is listed once and then
followed with a watch (``follow``), so a delivery reads no plugin from the apiserver (re-listing
10,000 plugins every few seconds put seconds into a push's acknowledgement); until the watch has
listed, or while it is down, the list is re-read on demand when older than ``max_age``. Secrets
are read one by one by name (the builder may ``get`` but not list them) and cached
briefly so that a rotated secret takes effect within ``secret_ttl``. Secret values are never
logged; log lines name the Secret only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from builder.errors import BuilderError, Gone, SecretRefused
from builder.kube import PLUGINS, Kube
from builder.secrets import Use, check_use, webhook_secret_problem
from builder.webhooks.matching import PluginSource, SecretRef

log = logging.getLogger("plugforge.webhooks")

# The Secret key holding the webhook secret when spec.webhook.secretRef names no key.
DEFAULT_SECRET_KEY = "secret"  # noqa: S105 - a key name, not a secret


class PluginProvider(Protocol):
    """Where the endpoint gets plugins and secrets from (the apiserver, or a controller cache)."""

    def plugins(self) -> Sequence[PluginSource]: ...

    def secret(self, ref: SecretRef) -> bytes | None: ...


def plugin_source(obj: Mapping[str, Any]) -> PluginSource | None:
    """The webhook-relevant view of a BrokerPlugin object; None if it lacks a Git source.

    The apiserver validated the object against the CRD schema, so only presence is checked.
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    git = (spec.get("source") or {}).get("git") or {}
    namespace, name, url = meta.get("namespace"), meta.get("name"), git.get("url")
    if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(url, str)):
        return None
    ref = (spec.get("webhook") or {}).get("secretRef") or {}
    secret = None
    if isinstance(ref.get("name"), str):
        key = ref.get("key")
        secret = SecretRef(namespace, ref["name"],
                           key if isinstance(key, str) and key else DEFAULT_SECRET_KEY)
    revision = git.get("revision")
    return PluginSource(
        namespace=namespace, name=name, uid=str(meta.get("uid", "")), url=url,
        ref=str(git.get("ref") or "main"), path=str(git.get("path") or "."),
        revision=revision if isinstance(revision, str) and revision else None,
        enabled=spec.get("enabled", True) is not False, secret=secret,
        generation=meta["generation"] if isinstance(meta.get("generation"), int) else None)


class KubePlugins:
    """``PluginProvider`` over the apiserver."""

    def __init__(self, kube: Kube, clock: Callable[[], float], max_age: float = 2.0,
                 secret_ttl: float = 10.0) -> None:
        self._kube = kube
        self._clock = clock
        self._max_age = max_age
        self._secret_ttl = secret_ttl
        self._plugins: Sequence[PluginSource] = ()
        self._listed_at: float | None = None
        self._secrets: dict[SecretRef, tuple[bytes | None, float]] = {}
        self._list_lock = threading.Lock()
        self._secret_lock = threading.Lock()
        self._watched: dict[str, PluginSource] | None = None  # key -> plugin, while followed
        self._changed = False

    def plugins(self) -> Sequence[PluginSource]:
        with self._list_lock:
            if self._watched is not None:
                if self._changed:  # rebuilt on the first delivery after a change, not per event
                    self._plugins, self._changed = tuple(self._watched.values()), False
                return self._plugins
            now = self._clock()
            if self._listed_at is None or now - self._listed_at >= self._max_age:
                try:
                    items, _ = self._kube.list_plugins()
                except BuilderError as e:
                    if self._listed_at is None:
                        raise
                    # Keep the last good list rather than refusing every delivery.
                    log.warning("listing BrokerPlugins failed, using the list from %.0fs ago: %s",
                                now - self._listed_at, e)
                    return self._plugins
                self._plugins = [p for p in map(plugin_source, items) if p is not None]
                self._listed_at = now
            return self._plugins

    def plugin(self, key: str) -> PluginSource | None:
        """One plugin by ``namespace/name`` (a dict lookup while followed)."""
        with self._list_lock:
            if self._watched is not None:
                return self._watched.get(key)
        return next((p for p in self.plugins() if p.key == key), None)

    def follow(self, stop: threading.Event, timeout_seconds: int = 240) -> None:
        """List, then apply watch events until ``stop``; relist when the watch is too old.
        Meanwhile (and whenever the watch fails) ``plugins`` lists on demand."""
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    listed: dict[str, PluginSource] = {}
                    at = ""
                    for items, at in self._kube.pages(PLUGINS):  # noqa: B007 - the last page's
                        listed.update((p.key, p) for p in map(plugin_source, items) if p)
                    with self._list_lock:
                        self._watched, self._changed = listed, True
                    version = at
                for kind, obj in self._kube.watch(PLUGINS, version, timeout_seconds):
                    if stop.is_set():
                        return
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._apply(kind, obj)
            except Gone:
                version = None
            except BuilderError as e:
                if stop.is_set():
                    return
                log.warning("watching BrokerPlugins: %s; listing on demand meanwhile", e)
                with self._list_lock:
                    self._watched, self._listed_at = None, None
                version = None
                stop.wait(1.0)

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        source = plugin_source(obj) if kind != "DELETED" else None
        with self._list_lock:
            if self._watched is None:
                return
            if source is None:
                self._changed |= self._watched.pop(key, None) is not None
            elif self._watched.get(key) != source:
                self._watched[key] = source
                self._changed = True

    def secret(self, ref: SecretRef) -> bytes | None:
        now = self._clock()
        with self._secret_lock:
            cached = self._secrets.get(ref)
            if cached is not None and now - cached[1] < self._secret_ttl:
                return cached[0]
        value = self._read(ref)
        with self._secret_lock:
            self._secrets[ref] = (value, now)
        return value

    def _read(self, ref: SecretRef) -> bytes | None:
        where = f"webhook Secret {ref.namespace}/{ref.name}"
        try:
            secret = self._kube.read_secret(ref.namespace, ref.name)
        except BuilderError as e:
            log.warning("%s unreadable (%s); deliveries for plugins using it are refused",
                        where, e.reason)
            return None
        try:
            data = check_use(secret, Use.WEBHOOK)
        except SecretRefused as e:
            log.warning("%s refused: %s; deliveries for plugins using it are refused", where, e)
            return None
        value = data.get(ref.key)
        problem = webhook_secret_problem(value)
        if problem is not None:
            log.warning("%s key %r refused (%s): %s; deliveries for plugins using it are "
                        "refused", where, ref.key, problem[0], problem[1])
            return None
        return value
