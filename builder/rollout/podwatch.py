"""The broker pods of every plugin with ``spec.target.selector``: one list+watch per namespace.

Namespaced on purpose (the builder's Pod rights are granted per tenant namespace, list and watch
only). A namespace is watched from the first time a plugin there asks for its pods; every Pod
event re-queues the plugins whose selector matches the pod before or after the change, so a pod
that appears, goes Ready or goes away mid-rollout is seen at once, not at the next resync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from builder.errors import BuilderError, Gone
from builder.kube import Kube
from builder.resources import PluginSpec, PodSelector
from builder.rollout.pods import PodInfo, pod_info, select

log = logging.getLogger(__name__)


class PodCache:
    def __init__(self, kube: Kube, on_change: Callable[[str], None],
                 watch_timeout_seconds: int = 300) -> None:
        self._kube = kube
        self._on_change = on_change
        self._timeout = watch_timeout_seconds
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, PodInfo]] = {}
        self._synced: dict[str, threading.Event] = {}
        self._interest: dict[str, tuple[str, PodSelector]] = {}
        self._stop = threading.Event()

    def pods_for(self, spec: PluginSpec) -> list[PodInfo]:
        """``spec``'s selected pods, in rollout order; starts watching its namespace (the first
        call waits up to 10 s for the initial list) and notes the plugin for re-queueing."""
        if spec.selector is None:
            return []
        with self._lock:
            self._interest[spec.key] = (spec.namespace, spec.selector)
            synced = self._synced.get(spec.namespace)
            if synced is None:
                synced = self._synced[spec.namespace] = threading.Event()
                threading.Thread(target=self._watch, args=(spec.namespace, synced, self._stop),
                                 name=f"watch-pods-{spec.namespace}", daemon=True).start()
        if not synced.wait(10.0):
            raise BuilderError(f"listing the pods of namespace {spec.namespace} took over 10 s; "
                               "will retry")
        with self._lock:
            pods = list(self._pods.get(spec.namespace, {}).values())
        return select(pods, spec.selector)

    def forget(self, key: str) -> None:
        with self._lock:
            self._interest.pop(key, None)

    def stop(self) -> None:
        """End every watch (e.g. leadership lost); the next ``pods_for`` starts afresh."""
        with self._lock:
            self._stop.set()
            self._stop = threading.Event()
            self._synced.clear()
            self._pods.clear()

    def _changed(self, namespace: str, *pods: PodInfo | None) -> None:
        with self._lock:
            keys = [key for key, (ns, selector) in self._interest.items() if ns == namespace
                    and any(p is not None and selector.matches(p.labels) for p in pods)]
        for key in keys:
            self._on_change(key)

    def _watch(self, namespace: str, synced: threading.Event, stop: threading.Event) -> None:
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    items, version = self._kube.list_pods_rv(namespace)
                    fresh = {p.name: p for p in map(pod_info, items)}
                    with self._lock:
                        if stop.is_set():
                            return
                        old = self._pods.get(namespace, {})
                        self._pods[namespace] = fresh
                    synced.set()
                    for name in set(old) | set(fresh):
                        if old.get(name) != fresh.get(name):
                            self._changed(namespace, old.get(name), fresh.get(name))
                for kind, obj in self._kube.watch_pods(namespace, version, self._timeout):
                    if stop.is_set():
                        return
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind in ("BOOKMARK", "ERROR"):
                        continue
                    pod = pod_info(obj)
                    with self._lock:
                        if stop.is_set():
                            return
                        pods = self._pods.setdefault(namespace, {})
                        before = pods.pop(pod.name, None)
                        if kind != "DELETED":
                            pods[pod.name] = pod
                    if before != pod or kind == "DELETED":
                        self._changed(namespace, before, pod)
            except Gone:
                version = None
            except BuilderError as e:
                if stop.is_set():
                    return
                log.warning("watch pods in %s: %s; retrying", namespace, e)
                stop.wait(1.0)
