"""The BrokerPlugins and webhook secrets the endpoint checks deliveries against (thin I/O).

Read through the apiserver as the builder identity: the plugin list is cached and re-listed on
demand when older than ``max_age`` (a push waits for at most one list call, and a burst shares
it); Secrets are read one by one by name (the builder may ``get`` but not list them) and cached
briefly so that a rotated secret takes effect within ``secret_ttl``. Secret values are never
logged; log lines name the Secret only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from builder.errors import BuilderError, SecretRefused
from builder.kube import Kube
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
        self._plugins: list[PluginSource] = []
        self._listed_at: float | None = None
        self._secrets: dict[SecretRef, tuple[bytes | None, float]] = {}
        self._list_lock = threading.Lock()
        self._secret_lock = threading.Lock()

    def plugins(self) -> Sequence[PluginSource]:
        with self._list_lock:
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
