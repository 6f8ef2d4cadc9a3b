"""Prometheus text-format metrics, kept by hand (a handful of series, no client library)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from plugforge.prometheus import Histogram, escape
from sidecar.state import ApplyEvent, EventKind, PluginStatus


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.applies = 0
        self.failures = 0
        self.rejections = 0
        self.rollbacks = 0
        self.apply_duration = Histogram("plugforge_sidecar_apply_duration_seconds",
                                        "Time to apply a desired state.")

    def record(self, event: ApplyEvent) -> None:
        with self._lock:
            if event.kind in (EventKind.APPLIED, EventKind.RESTART_REQUIRED):
                self.applies += 1
                self.apply_duration.observe(event.duration)
            elif event.kind is EventKind.REJECTED:
                self.rejections += 1
            else:
                self.failures += 1
                if event.kind is EventKind.ROLLED_BACK:
                    self.rollbacks += 1

    def render(self, ready: bool, plugins: Sequence[PluginStatus], refused_image: str = "",
               refused_reason: str = "") -> str:
        with self._lock:
            lines = [
                "# HELP plugforge_sidecar_applies_total Successful applies.",
                "# TYPE plugforge_sidecar_applies_total counter",
                f"plugforge_sidecar_applies_total {self.applies}",
                "# HELP plugforge_sidecar_failures_total Failed applies (rolled back or not).",
                "# TYPE plugforge_sidecar_failures_total counter",
                f"plugforge_sidecar_failures_total {self.failures}",
                "# HELP plugforge_sidecar_rollbacks_total Applies rolled back.",
                "# TYPE plugforge_sidecar_rollbacks_total counter",
                f"plugforge_sidecar_rollbacks_total {self.rollbacks}",
                "# HELP plugforge_sidecar_rejections_total Desired states rejected as invalid.",
                "# TYPE plugforge_sidecar_rejections_total counter",
                f"plugforge_sidecar_rejections_total {self.rejections}",
            ]
        lines += self.apply_duration.render()
        lines += [
            "# HELP plugforge_sidecar_ready 1 when the pod should receive traffic.",
            "# TYPE plugforge_sidecar_ready gauge",
            f"plugforge_sidecar_ready {int(ready)}",
            "# HELP plugforge_sidecar_plugin_info Desired and running digest of each plugin.",
            "# TYPE plugforge_sidecar_plugin_info gauge",
        ]
        for p in plugins:
            lines.append(
                f'plugforge_sidecar_plugin_info{{plugin="{escape(p.name)}",'
                f'desired_digest="{p.desired_digest}",running_digest="{p.running_digest or ""}",'
                f'status="{p.status}"}} 1')
        lines += [
            "# HELP plugforge_sidecar_image_refused The desired state's refused image (1 while "
            "refused).",
            "# TYPE plugforge_sidecar_image_refused gauge",
        ]
        if refused_image:
            repository, _, digest = refused_image.rpartition("@")
            lines.append(f'plugforge_sidecar_image_refused{{repository="{escape(repository)}",'
                         f'digest="{escape(digest)}",reason="{escape(refused_reason)}"}} 1')
        return "\n".join(lines) + "\n"


