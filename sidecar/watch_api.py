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
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from plugforge.contract import Document
from sidecar.desired import SourceError
from sidecar.trigger import Trigger

log = logging.getLogger("plugforge.sidecar")

SERVER_TIMEOUT = 300  # seconds the apiserver keeps one watch open before ending it cleanly


def api_client(kubeconfig: Path | None) -> client.ApiClient:
    if kubeconfig is not None:
        made: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
        return made
    config.load_incluster_config()
    return client.ApiClient()


class ConfigMapWatcher:
    def __init__(self, namespace: str, names: Sequence[str], trigger: Trigger, *,
                 kubeconfig: Path | None = None, idle_timeout: float = 90.0,
                 initial_resource_version: str | None = None) -> None:
        self.namespace = namespace
        self.names = tuple(names)
        self._trigger = trigger
        self._api = client.CoreV1Api(api_client(kubeconfig))
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
            except ApiException as e:
                if e.status == 410:
                    self.relists += 1
                    log.info("decision=relist configmap=%s reason=%r", name,
                             f"410 Gone: {e.reason}")
                    rv = None
                    continue
                log.warning("decision=watch-retry configmap=%s status=%s reason=%r", name,
                            e.status, e.reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except (Urllib3Error, OSError) as e:
                # Includes the read timeout: nothing, not even a bookmark, for idle_timeout.
                self.restarts += 1
                log.warning("decision=watch-restart configmap=%s reason=%r", name,
                            f"{type(e).__name__}: {e}")
                self._stop.wait(min(backoff, 1.0))
                backoff = min(backoff * 2, 30.0)

    def _list(self, name: str) -> str:
        result = self._api.list_namespaced_config_map(
            self.namespace, field_selector=f"metadata.name={name}")
        items = result.items or []
        self._store(name, dict(items[0].data or {}) if items else None)
        if result.metadata is None or not result.metadata.resource_version:
            raise ApiException(status=500, reason="list returned no resourceVersion")
        return str(result.metadata.resource_version)

    def _watch(self, name: str, rv: str) -> str:
        w = watch.Watch()
        stream = w.stream(self._api.list_namespaced_config_map, self.namespace,
                          field_selector=f"metadata.name={name}", resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=SERVER_TIMEOUT,
                          _request_timeout=(10, self._idle))
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                self.events += 1
                kind = event["type"]
                obj: Any = event["object"]
                if kind == "BOOKMARK":
                    rv = str(event["raw_object"]["metadata"]["resourceVersion"])
                    continue
                rv = str(obj.metadata.resource_version)
                self._store(name, None if kind == "DELETED" else dict(obj.data or {}))
        finally:
            w.stop()
        return rv

    def _store(self, name: str, data: dict[str, str] | None) -> None:
        with self._lock:
            changed = self._data.get(name, ...) != data
            self._data[name] = data
        if changed:
            self._trigger.notify(f"configmap {self.namespace}/{name} changed")
