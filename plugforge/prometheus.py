"""Prometheus text exposition for a handful of series, kept by hand (no client library needed)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def metric(name: str, kind: str, help_text: str,
           samples: Mapping[tuple[tuple[str, str], ...], float]) -> list[str]:
    """``# HELP``/``# TYPE`` and one line per label set (``()`` for no labels)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples.items():
        lines.append(f"{name}{_labels(labels)} {value:g}")
    return lines


class Histogram:
    """A cumulative histogram; ``observe`` is safe from any thread."""

    def __init__(self, name: str, help_text: str,
                 buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.name = name
        self.help_text = help_text
        self.buckets = buckets
        self._counts = [0] * len(buckets)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
            self._sum += value
            self._count += 1

    def render(self) -> list[str]:
        with self._lock:
            lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
            lines += [f'{self.name}_bucket{{le="{bound}"}} {count}'
                      for bound, count in zip(self.buckets, self._counts, strict=True)]
            lines += [f'{self.name}_bucket{{le="+Inf"}} {self._count}',
                      f"{self.name}_sum {self._sum:.6f}",
                      f"{self.name}_count {self._count}"]
        return lines


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}"
