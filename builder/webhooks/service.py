"""Assemble the webhook endpoint: apiserver-backed plugins, dedupe, coalescing, PluginBuilds."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from builder.kube import Kube
from builder.webhooks.dedupe import Coalescer, DeliveryCache
from builder.webhooks.enqueue import BuildSink, Enqueuer, PluginBuildSink
from builder.webhooks.handler import WebhookHandler
from builder.webhooks.plugins import KubePlugins, PluginProvider
from builder.webhooks.server import ServerSettings, WebhookServer


@dataclass(frozen=True)
class WebhookSettings:
    server: ServerSettings = field(default_factory=ServerSettings)
    # Seconds without a newer push before a plugin's build is requested (burst coalescing).
    # At least 1: the controller orders requests by creation time, which has 1 s resolution.
    quiet_seconds: float = 1.0
    # How long a delivery id is remembered to drop redeliveries.
    delivery_ttl_seconds: float = 24 * 3600.0
    # Maximum age of the cached BrokerPlugin list when a delivery arrives.
    plugin_list_max_age: float = 2.0


@dataclass
class Webhooks:
    """A running endpoint; ``stop()`` ends the server and the enqueuer."""

    server: WebhookServer
    enqueuer: Enqueuer
    coalescer: Coalescer
    handler: WebhookHandler
    stopping: threading.Event = field(default_factory=threading.Event)
    """Ends the plugin watch (``KubePlugins.follow``) of an endpoint over the apiserver."""

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.stopping.set()
        self.server.stop()
        self.enqueuer.stop()


def start(provider: PluginProvider, sink: BuildSink,
          settings: WebhookSettings | None = None) -> Webhooks:
    """Start the endpoint over any plugin provider and build sink."""
    settings = settings or WebhookSettings()
    coalescer = Coalescer(time.monotonic, quiet=settings.quiet_seconds)
    handler = WebhookHandler(provider, DeliveryCache(time.monotonic,
                                                     ttl=settings.delivery_ttl_seconds),
                             coalescer.offer)
    enqueuer = Enqueuer(coalescer, sink)

    def extra() -> dict[str, Any]:
        return {"builds_requested": enqueuer.handed_off, "build_requests_failed": enqueuer.failed,
                "pending": len(coalescer.pending())}

    server = WebhookServer(handler, settings.server, extra)
    enqueuer.start()
    server.start()
    return Webhooks(server, enqueuer, coalescer, handler)


def start_with_kube(kube: Kube, settings: WebhookSettings | None = None) -> Webhooks:
    """The endpoint as the builder runs it: plugins from the apiserver, PluginBuild requests."""
    settings = settings or WebhookSettings()
    provider = KubePlugins(kube, time.monotonic, max_age=settings.plugin_list_max_age)

    webhooks = start(provider, PluginBuildSink(kube, provider.plugin), settings)
    threading.Thread(target=provider.follow, args=(webhooks.stopping,), name="webhook-plugins",
                     daemon=True).start()  # blocked in a watch read at stop: not joined
    return webhooks
