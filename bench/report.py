"""Figures, goals and the one table every benchmark prints.

A benchmark returns ``Metric`` rows: plugforge's figure, the baseline or peer figure measured in
the same run, and a goal. Goals are checked only by ``bench/run --check``; benchmarks never fail
a test run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p99: float
    mean: float
    max: float


def summarize(samples: Sequence[float]) -> Stats:
    """Nearest-rank percentiles: a p99 over 200 samples is the 198th value, not interpolated."""
    if not samples:
        return Stats(0, math.nan, math.nan, math.nan, math.nan)
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return Stats(len(ordered), rank(50), rank(99), sum(ordered) / len(ordered), ordered[-1])


@dataclass(frozen=True)
class Metric:
    benchmark: str
    name: str
    unit: str
    value: float
    baseline: float | None = None
    baseline_name: str = ""
    max_ratio: float | None = None   # goal: value / baseline <= max_ratio
    max_value: float | None = None   # goal: value <= max_value
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0 or math.isnan(self.value):
            return None
        return self.value / self.baseline

    @property
    def goal(self) -> str:
        parts = []
        if self.max_ratio is not None:
            parts.append(f"ratio ≤ {self.max_ratio:g}")
        if self.max_value is not None:
            parts.append(f"≤ {self.max_value:g} {self.unit}".rstrip())
        return ", ".join(parts)

    def meets_goal(self) -> bool | None:
        """None when the row has no goal; False when the figure is missing."""
        if self.max_ratio is None and self.max_value is None:
            return None
        if math.isnan(self.value):
            return False
        if self.max_value is not None and self.value > self.max_value:
            return False
        ratio = self.ratio
        return not (self.max_ratio is not None and (ratio is None or ratio > self.max_ratio))


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(metrics: Iterable[Metric]) -> str:
    header = ("benchmark", "metric", "plugforge", "baseline", "ratio", "goal", "ok")
    rows = [header]
    for m in metrics:
        ok = m.meets_goal()
        baseline = f"{_fmt(m.baseline)} ({m.baseline_name})" if m.baseline is not None else "—"
        rows.append((m.benchmark, m.name, f"{_fmt(m.value)} {m.unit}".strip(), baseline,
                     _fmt(m.ratio), m.goal or "—",
                     {True: "yes", False: "NO", None: ""}[ok]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Path, metrics: Iterable[Metric]) -> None:
    rows = [{**asdict(m), "ratio": m.ratio, "goal": m.goal, "meets_goal": m.meets_goal()}
            for m in metrics]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2, allow_nan=True) + "\n")
