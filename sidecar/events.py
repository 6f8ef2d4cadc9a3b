"""Kubernetes Events on the sidecar's pod for applied / rejected / rolled back.

A retry loop repeats the same outcome; like kubelet's event correlation, an Event that repeats
one posted in the last ``SERIES_WINDOW`` seconds (same reason, type and message) bumps that
Event's ``count`` and ``lastTimestamp`` instead of creating another object.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.kube_errors import KubeApiError, KubeError
from sidecar.kube_http import JsonObject, KubeClient
from sidecar.settings import Settings, api_credentials_present
from sidecar.state import ApplyEvent, EventKind

log = logging.getLogger("plugforge.sidecar")

_WARNING = (EventKind.REJECTED, EventKind.ROLLED_BACK, EventKind.FAILED)
COMPONENT = "plugforge-sidecar"
SERIES_WINDOW = 600.0  # seconds; kubelet's correlator uses 10 minutes too
MAX_SERIES = 64


def kubernetes_event_sink(settings: Settings) -> Callable[[ApplyEvent], None] | None:
    """A sink posting Events on POD_NAMESPACE/POD_NAME; None without pod identity or creds."""
    if not settings.pod_name or not settings.pod_namespace or not api_credentials_present(
            settings):
        return None
    from sidecar.watch_api import api_client
    return EventRecorder(api_client(settings.kubeconfig), settings.pod_namespace,
                         settings.pod_name)


def _stamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(namespace: str, pod: str, event: ApplyEvent,
               now: datetime.datetime) -> JsonObject:
    """A core/v1 Event on the pod (what ``kubectl describe pod`` shows)."""
    stamp = _stamp(now)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{pod}.plugforge.{uuid.uuid4().hex[:10]}",
                     "namespace": namespace},
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace,
                           "apiVersion": "v1"},
        "reason": event.kind.value,
        "message": event.message[:1000],
        "type": "Warning" if event.kind in _WARNING else "Normal",
        "source": {"component": COMPONENT},
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        "reportingComponent": COMPONENT, "reportingInstance": pod,
    }


def post_event(api: KubeClient, namespace: str, pod: str, event: ApplyEvent) -> None:
    """Post one Event, without correlation (``EventRecorder`` is the sidecar's sink)."""
    EventRecorder(api, namespace, pod)(event)


@dataclass
class _Series:
    name: str
    count: int
    last_posted: float


class EventRecorder:
    """The sidecar's Event sink: create, or bump the count of a recent identical Event."""

    def __init__(self, api: KubeClient, namespace: str, pod: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api, self._namespace, self._pod, self._clock = api, namespace, pod, clock
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, event: ApplyEvent) -> None:
        key = (event.kind.value, event.message[:1000])
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:  # one sink call at a time keeps counts exact
            try:
                series = self._series.get(key)
                if series is not None and self._clock() - series.last_posted < SERIES_WINDOW \
                        and self._bump(series, now):
                    return  # counted on the Event already posted
                body = event_body(self._namespace, self._pod, event, now)
                self._api.create(f"/api/v1/namespaces/{self._namespace}/events", body)
                self._remember(key, _Series(body["metadata"]["name"], 1, self._clock()))
            except KubeError as e:
                # Events are best effort: never let them fail an apply.
                log.warning("event not posted: %s", e)

    def _bump(self, series: _Series, now: datetime.datetime) -> bool:
        """Count one more occurrence on the existing Event; False if it is gone (expired)."""
        try:
            self._api.merge_patch(
                f"/api/v1/namespaces/{self._namespace}/events/{series.name}",
                {"count": series.count + 1, "lastTimestamp": _stamp(now)})
        except KubeApiError as e:
            if e.status == 404:
                return False
            raise
        series.count += 1
        series.last_posted = self._clock()
        return True

    def _remember(self, key: tuple[str, str], series: _Series) -> None:
        self._series[key] = series
        self._series.move_to_end(key)
        while len(self._series) > MAX_SERIES:
            self._series.popitem(last=False)
