"""Kubernetes Events on the sidecar's pod for applied / rejected / rolled back."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sidecar.settings import Settings, api_credentials_present
from sidecar.state import ApplyEvent, EventKind

log = logging.getLogger("plugforge.sidecar")

_WARNING = (EventKind.REJECTED, EventKind.ROLLED_BACK, EventKind.FAILED)


def kubernetes_event_sink(settings: Settings) -> Callable[[ApplyEvent], None] | None:
    """A sink posting Events on POD_NAMESPACE/POD_NAME; None without pod identity or creds."""
    if not settings.pod_name or not settings.pod_namespace or not api_credentials_present(
            settings):
        return None
    from sidecar.watch_api import api_client
    api = client.CoreV1Api(api_client(settings.kubeconfig))
    return lambda event: post_event(api, settings.pod_namespace, settings.pod_name, event)


def post_event(api: client.CoreV1Api, namespace: str, pod: str, event: ApplyEvent) -> None:
    now = datetime.datetime.now(datetime.UTC)
    body = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"{pod}.plugforge.{uuid.uuid4().hex[:10]}",
                                     namespace=namespace),
        involved_object=client.V1ObjectReference(kind="Pod", name=pod, namespace=namespace,
                                                 api_version="v1"),
        reason=event.kind.value,
        message=event.message[:1000],
        type="Warning" if event.kind in _WARNING else "Normal",
        source=client.V1EventSource(component="plugforge-sidecar"),
        first_timestamp=now, last_timestamp=now, count=1,
        reporting_component="plugforge-sidecar", reporting_instance=pod)
    try:
        api.create_namespaced_event(namespace, body)
    except ApiException as e:
        # Events are best effort: never let them fail an apply.
        log.warning("event not posted: %s %s", e.status, e.reason)
