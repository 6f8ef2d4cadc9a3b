"""Wiring: settings → kube adapter, source cache, pipeline, controller, leader election."""

from __future__ import annotations

import logging
import threading

from builder.controller import Controller
from builder.kube import Kube
from builder.leader import LeaderElector
from builder.pipeline import Pipeline
from builder.settings import Settings
from builder.source import SourceCache
from builder.webhooks.server import ServerSettings
from builder.webhooks.service import WebhookSettings
from builder.webhooks.service import start_with_kube as start_webhooks

log = logging.getLogger(__name__)


class Builder:
    """One builder instance: builds only while it holds the Lease."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kube = Kube.from_kubeconfig(settings.kubeconfig)
        sources = SourceCache(settings.git_dir)
        self.pipeline = Pipeline(sources, self.kube.read_secret, settings.work_dir,
                                 settings.max_build_seconds, settings.registry_ca,
                                 settings.docker_url)
        self.controller = Controller(self.kube, self.pipeline, settings)
        self.elector = LeaderElector(
            self.kube, settings.namespace, settings.lease_name, settings.identity,
            settings.lease_duration_seconds, settings.lease_renew_seconds,
            on_started=self.controller.start, on_stopped=self._lost)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_leadership = threading.Event()
        self.webhook_url: str | None = None

    @property
    def leading(self) -> bool:
        return self.elector.leading

    def _lost(self) -> None:
        self.controller.stop()
        self.lost_leadership.set()

    def run(self) -> None:
        """Block until ``stop``; builds only while holding the Lease, rejoins if it loses it.

        The webhook endpoint (if configured) serves on every replica for as long as this runs.
        """
        webhooks = None
        if self.settings.webhook_address is not None:
            host, port = self.settings.webhook_address
            webhooks = start_webhooks(self.kube, WebhookSettings(
                server=ServerSettings(host=host, port=port)))
            self.webhook_url = webhooks.url
            log.info("serving push webhooks on %s", webhooks.url)
        try:
            self.elector.run(self._stop)
        finally:
            if webhooks is not None:
                webhooks.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"{self.settings.identity}-leader",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.controller.stop()
        self.kube.close()
