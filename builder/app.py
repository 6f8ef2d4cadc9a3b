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

    @property
    def leading(self) -> bool:
        return self.elector.leading

    def _lost(self) -> None:
        self.controller.stop()
        self.lost_leadership.set()

    def run(self) -> None:
        """Block until ``stop``; builds only while holding the Lease, rejoins if it loses it."""
        self.elector.run(self._stop)

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
