"""PluginBuilds kept in memory from one list + watch, read by plugin (an informer's store).

A reconcile needs its plugin's builds. Listing them from the apiserver per reconcile (a field
selector over the namespace's builds) cost one scan of the apiserver's cache per plugin, and
right after any write a list is a consistent read that waits for that cache to catch up with
etcd: ~90 ms per reconcile after an event, which was most of an event's latency. Here the
builds are listed once (in pages) and followed by a watch; reads are dict look-ups.

Reads may be stale (an event not yet delivered). Why every decision stays correct on a stale
store, see ``Controller.reconcile``; the rules that make it so are kept here:
- an event is stored *before* its plugin's key is queued, so a reconcile caused by an event
  sees at least that event;
- writes go to the apiserver with the object's ``resourceVersion`` (optimistic concurrency): a
  write decided on a stale copy gets 409 and is decided again on a fresh read;
- objects the builder creates or writes are put into the store at once (``put``), so its own
  next reconcile does not decide on the state before its write.

Memory: objects lose ``metadata.managedFields`` and ``annotations`` (never read by the
controller; a status update leaves them as they are) and a finished build its ``logTail``
(finished builds are only read and deleted here, never written back).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from builder.errors import BuilderError, Gone
from builder.kube import BUILDS, Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]
FINISHED = ("Succeeded", "Failed")
MAX_TOMBSTONES = 10_000


def slim(build: Mapping[str, Any]) -> Obj:
    """What the store keeps of a PluginBuild (a new dict; ``build`` is not changed)."""
    meta = {k: v for k, v in (build.get("metadata") or {}).items()
            if k not in ("managedFields", "annotations")}
    out: Obj = {**build, "metadata": meta}
    status = build.get("status")
    if isinstance(status, dict) and status.get("phase") in FINISHED and "logTail" in status:
        out["status"] = {k: v for k, v in status.items() if k != "logTail"}
    return out


def _version(obj: Mapping[str, Any]) -> int:
    """The object's resourceVersion as a number (etcd revisions), for "is this newer"; -1 if
    it is not one (then the newest delivery wins)."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or -1)
    except ValueError:
        return -1


class BuildStore:
    """PluginBuilds by (namespace, plugin), from ``run``'s list + watch; ``synced`` once the
    first list is in."""

    def __init__(self, kube: Kube, on_change: Callable[[str], None],
                 watch_timeout_seconds: int) -> None:
        self._kube = kube
        self._on_change = on_change  # a plugin key: "namespace/plugin"
        self._timeout = watch_timeout_seconds
        self._lock = threading.Lock()
        self._by_plugin: dict[str, dict[str, Obj]] = {}
        self._plugin_of: dict[tuple[str, str], str] = {}  # (namespace, build) -> plugin key
        # Deleted builds' last versions: a write's result stored after its build's DELETED
        # event (a thread race) must not bring the build back.
        self._deleted: dict[tuple[str, str], int] = {}
        self.synced = threading.Event()

    # --- reads --------------------------------------------------------------------------------

    def builds(self, namespace: str, plugin: str) -> list[Obj]:
        """The plugin's builds (copies: callers change them before writing them back)."""
        with self._lock:
            kept = self._by_plugin.get(f"{namespace}/{plugin}") or {}
            return [{**b, "metadata": dict(b["metadata"]),
                     "status": dict(b.get("status") or {})} for b in kept.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._plugin_of)

    # --- writes (from the watch, and the builder's own API writes) ----------------------------

    def put(self, build: Mapping[str, Any]) -> None:
        """Store ``build`` unless a newer version of it is stored already."""
        key = _plugin_key(build)
        if key is None:
            return
        meta = build["metadata"]
        where = (str(meta["namespace"]), str(meta["name"]))
        kept = slim(build)
        with self._lock:
            gone = self._deleted.get(where)
            if gone is not None and gone >= _version(kept):
                return
            old_key = self._plugin_of.get(where)
            old = (self._by_plugin.get(old_key) or {}).get(where[1]) if old_key else None
            if old is not None and _version(old) > _version(kept) >= 0:
                return
            if old_key is not None and old_key != key:
                self._drop_locked(where)
            self._by_plugin.setdefault(key, {})[where[1]] = kept
            self._plugin_of[where] = key

    def drop(self, namespace: str, name: str, version: int = -1) -> None:
        """Forget a deleted build (``version``: of its deletion, -1 if unknown)."""
        with self._lock:
            self._drop_locked((namespace, name))
            self._deleted[(namespace, name)] = version
            while len(self._deleted) > MAX_TOMBSTONES:
                del self._deleted[next(iter(self._deleted))]

    def _drop_locked(self, where: tuple[str, str]) -> None:
        key = self._plugin_of.pop(where, None)
        if key is None:
            return
        builds = self._by_plugin.get(key)
        if builds is not None:
            builds.pop(where[1], None)
            if not builds:
                del self._by_plugin[key]

    def _replace_all(self, items: list[Obj]) -> set[str]:
        """A relist: the store becomes ``items``; the plugin keys that may have changed."""
        fresh = BuildStore(self._kube, self._on_change, self._timeout)
        for item in items:
            fresh.put(item)
        with self._lock:
            touched = set(self._by_plugin) ^ set(fresh._by_plugin) | {
                k for k, v in fresh._by_plugin.items() if self._by_plugin.get(k) != v}
            self._by_plugin, self._plugin_of = fresh._by_plugin, fresh._plugin_of
            self._deleted.clear()
        return touched

    # --- list + watch -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """List, then follow; relist when the watch is too old; until ``stop``."""
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    items: list[Obj] = []
                    for page, version in self._kube.pages(BUILDS):  # noqa: B007 - last page's
                        items.extend(slim(b) for b in page)
                    for key in self._replace_all(items):
                        self._on_change(key)
                    self.synced.set()
                for kind, obj in self._kube.watch(BUILDS, version or "", self._timeout):
                    if stop.is_set():
                        return
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._apply(kind, obj)
            except Gone:
                version = None  # too old: relist
            except BuilderError as e:
                if stop.is_set():
                    return  # the client was closed under us at shutdown
                log.warning("watch %s: %s; retrying", BUILDS, e)
                stop.wait(1.0)

    def _apply(self, kind: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        if kind == "DELETED":
            self.drop(str(meta.get("namespace")), str(meta.get("name")), _version(obj))
        else:
            self.put(obj)
        key = _plugin_key(obj)
        if key is not None:
            self._on_change(key)  # after storing: the reconcile it causes sees this event


def _plugin_key(build: Mapping[str, Any]) -> str | None:
    meta = build.get("metadata") or {}
    plugin = (build.get("spec") or {}).get("plugin")
    if not (plugin and meta.get("namespace") and meta.get("name")):
        return None
    return f"{meta['namespace']}/{plugin}"
