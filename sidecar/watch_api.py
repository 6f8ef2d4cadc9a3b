"""API mode: watch the named ConfigMaps through the Kubernetes API (no kubelet delay).

Per ConfigMap: list once (remember its resourceVersion), then watch from there with bookmarks.
A watch that ends is resumed from the last resourceVersion; ``410 Gone`` (the version is too old
for the apiserver's cache) means relist. A watch that delivers nothing at all, not even a
bookmark, for ``idle_timeout`` seconds is presumed dead (a known failure of long-lived watches
behind proxies and load balancers) and restarted: the socket read timeout is the watchdog.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from plugforge.contract import Document
from sidecar.desired import SourceError
from sidecar.kube_config import load_config
from sidecar.kube_errors import (
    KubeApiError,
    KubeConnectionError,
    KubeError,
    KubeGone,
    KubeWatchIdle,
)
from sidecar.kube_http import KubeClient
from sidecar.trigger import Trigger

log = logging.getLogger("plugforge.sidecar")

SERVER_TIMEOUT = 300  # seconds the apiserver keeps one watch open before ending it cleanly


def api_client(kubeconfig: Path | None) -> KubeClient:
    """The kubeconfig file when given, else the pod's service account (in-cluster)."""
    return KubeClient(load_config(kubeconfig))


class ConfigMapWatcher:
    def __init__(self, namespace: str, names: Sequence[str], trigger: Trigger, *,
                 kubeconfig: Path | None = None, idle_timeout: float = 90.0,
                 initial_resource_version: str | None = None) -> None:
        self.namespace = namespace
        self.names = tuple(names)
        self._trigger = trigger
        self._api = api_client(kubeconfig)
        self._path = f"/api/v1/namespaces/{namespace}/configmaps"
        self._idle = idle_timeout
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, str] | None] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True,
                                          name=f"watch-{name}") for name in self.names]
        self._initial_rv = initial_resource_version
        self.relists = 0
        self.restarts = 0
        self.events = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def documents(self) -> list[Document] | None:
        """The latest data of every named ConfigMap; None until each has been listed once.

        A named ConfigMap that does not exist is an error, not an empty desired state: deleting
        it by mistake must not unload every auth plugin.
        """
        with self._lock:
            if any(name not in self._data for name in self.names):
                return None
            missing = [name for name in self.names if self._data[name] is None]
            if missing:
                raise SourceError(
                    f"ConfigMap(s) {', '.join(missing)} not found in namespace "
                    f"{self.namespace}; keeping the last good state until they exist")
            return [Document(f"configmap/{self.namespace}/{name}", key, text)
                    for name in self.names for key, text in sorted(
                        (self._data[name] or {}).items())]

    # --- one ConfigMap ----------------------------------------------------------------------

    def _run(self, name: str) -> None:
        rv = self._initial_rv
        backoff = 1.0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list(name)
                rv = self._watch(name, rv)
                backoff = 1.0
            except KubeGone as e:
                self.relists += 1
                log.info("decision=relist configmap=%s reason=%r", name, str(e))
                rv = None
            except KubeWatchIdle as e:
                # A quiet ConfigMap on an apiserver that sends no bookmarks while nothing
                # changes looks the same as a dead watch: resume at once, without a warning.
                self.restarts += 1
                log.info("decision=watch-resume configmap=%s reason=%r", name, str(e))
            except KubeConnectionError as e:
                self.restarts += 1
                log.warning("decision=watch-restart configmap=%s reason=%r", name, str(e))
                self._stop.wait(min(backoff, 1.0))
                backoff = min(backoff * 2, 30.0)
            except KubeError as e:
                status = e.status if isinstance(e, KubeApiError) else "-"
                log.warning("decision=watch-retry configmap=%s status=%s reason=%r", name,
                            status, str(e))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _list(self, name: str) -> str:
        result = self._api.get(self._path, {"fieldSelector": f"metadata.name={name}"})
        items = result.get("items") or []
        self._store(name, _data(items[0]) if items else None)
        rv = (result.get("metadata") or {}).get("resourceVersion")
        if not rv:
            raise KubeApiError(f"list configmaps {name}: the answer has no resourceVersion",
                               status=500)
        return str(rv)

    def _watch(self, name: str, rv: str) -> str:
        events = self._api.watch(self._path, {
            "fieldSelector": f"metadata.name={name}", "resourceVersion": rv,
            "allowWatchBookmarks": "true", "timeoutSeconds": str(SERVER_TIMEOUT)},
            idle_timeout=self._idle)
        try:
            for event in events:
                if self._stop.is_set():
                    break
                self.events += 1
                rv = event.resource_version or rv
                if event.type != "BOOKMARK":
                    self._store(name, None if event.type == "DELETED" else _data(event.object))
        finally:
            events.close()
        return rv

    def _store(self, name: str, data: dict[str, str] | None) -> None:
        with self._lock:
            changed = self._data.get(name, ...) != data
            self._data[name] = data
        if changed:
            self._trigger.notify(f"configmap {self.namespace}/{name} changed")


def _data(configmap: dict[str, object]) -> dict[str, str]:
    data = configmap.get("data") or {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
