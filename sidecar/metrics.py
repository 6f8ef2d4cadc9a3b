"""Prometheus text-format metrics, kept by hand (a handful of series, no client library)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from sidecar.state import ApplyEvent, EventKind, PluginStatus

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.applies = 0
        self.failures = 0
        self.rejections = 0
        self.rollbacks = 0
        self._bucket_counts = [0] * len(BUCKETS)
        self._sum = 0.0
        self._count = 0

    def record(self, event: ApplyEvent) -> None:
        with self._lock:
            if event.kind in (EventKind.APPLIED, EventKind.RESTART_REQUIRED):
                self.applies += 1
                self._observe(event.duration)
            elif event.kind is EventKind.REJECTED:
                self.rejections += 1
            else:
                self.failures += 1
                if event.kind is EventKind.ROLLED_BACK:
                    self.rollbacks += 1

    def _observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self._bucket_counts[i] += 1
        self._sum += seconds
        self._count += 1

    def render(self, ready: bool, plugins: Sequence[PluginStatus]) -> str:
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
                "# HELP plugforge_sidecar_apply_duration_seconds Time to apply a desired state.",
                "# TYPE plugforge_sidecar_apply_duration_seconds histogram",
            ]
            for bound, count in zip(BUCKETS, self._bucket_counts, strict=True):
                lines.append(
                    f'plugforge_sidecar_apply_duration_seconds_bucket{{le="{bound}"}} {count}')
            lines += [
                f'plugforge_sidecar_apply_duration_seconds_bucket{{le="+Inf"}} {self._count}',
                f"plugforge_sidecar_apply_duration_seconds_sum {self._sum:.6f}",
                f"plugforge_sidecar_apply_duration_seconds_count {self._count}",
            ]
        lines += [
            "# HELP plugforge_sidecar_ready 1 when the pod should receive traffic.",
            "# TYPE plugforge_sidecar_ready gauge",
            f"plugforge_sidecar_ready {int(ready)}",
            "# HELP plugforge_sidecar_plugin_info Desired and running digest of each plugin.",
            "# TYPE plugforge_sidecar_plugin_info gauge",
        ]
        for p in plugins:
            lines.append(
                f'plugforge_sidecar_plugin_info{{plugin="{_esc(p.name)}",'
                f'desired_digest="{p.desired_digest}",running_digest="{p.running_digest or ""}",'
                f'status="{p.status}"}} 1')
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
