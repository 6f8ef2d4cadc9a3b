"""Kubernetes Events on the sidecar's pod for applied / rejected / rolled back."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable

from sidecar.kube_errors import KubeError
from sidecar.kube_http import JsonObject, KubeClient
from sidecar.settings import Settings, api_credentials_present
from sidecar.state import ApplyEvent, EventKind

log = logging.getLogger("plugforge.sidecar")

_WARNING = (EventKind.REJECTED, EventKind.ROLLED_BACK, EventKind.FAILED)
COMPONENT = "plugforge-sidecar"


def kubernetes_event_sink(settings: Settings) -> Callable[[ApplyEvent], None] | None:
    """A sink posting Events on POD_NAMESPACE/POD_NAME; None without pod identity or creds."""
    if not settings.pod_name or not settings.pod_namespace or not api_credentials_present(
            settings):
        return None
    from sidecar.watch_api import api_client
    api = api_client(settings.kubeconfig)
    return lambda event: post_event(api, settings.pod_namespace, settings.pod_name, event)


def event_body(namespace: str, pod: str, event: ApplyEvent,
               now: datetime.datetime) -> JsonObject:
    """A core/v1 Event on the pod (what ``kubectl describe pod`` shows)."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
    body = event_body(namespace, pod, event, datetime.datetime.now(datetime.UTC))
    try:
        api.create(f"/api/v1/namespaces/{namespace}/events", body)
    except KubeError as e:
        # Events are best effort: never let them fail an apply.
        log.warning("event not posted: %s", e)
