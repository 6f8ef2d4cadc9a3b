"""Run plugforge's benchmarks and print one table; ``--check`` fails when a goal is missed.

Each benchmark is a module in this package with ``measure(workdir, quick) -> list[Metric]``;
it measures plugforge and its baseline or peer in the same run on this machine.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from bench.report import Metric, table, write_json

# name -> module; run in this order (cheap first).
BENCHMARKS: dict[str, str] = {
    "sidecar": "bench.sidecar_latency",
    "signing": "bench.signing",
    "builds": "bench.builds",
    "propagation": "bench.propagation",
    "api-mode": "bench.api_mode",
    "memory": "bench.memory",
    "webhooks": "bench.webhooks",
    "hot-swap": "bench.hot_swap",
    "rollout-scale": "bench.rollout_scale",
    "sidecar-scale": "bench.sidecar_scale",
    "builder-scale": "bench.builder_scale",
}

Measure = Callable[[Path, bool], list[Metric]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of "
                        f"{', '.join(BENCHMARKS) or 'none yet'})")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when any figure misses its goal")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, for trying the harness out")
    parser.add_argument("--json", type=Path, default=Path("bench/results/latest.json"),
                        help="where to write the figures (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    metrics: list[Metric] = []
    for name in args.names or list(BENCHMARKS):
        measure = cast(Measure, importlib.import_module(BENCHMARKS[name]).measure)
        print(f"==> {name}", flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"plugforge-bench-{name}-") as workdir:
            rows = measure(Path(workdir), args.quick)
        print(f"    {len(rows)} figures in {time.monotonic() - started:.0f}s", flush=True)
        metrics.extend(rows)

    print()
    print(table(metrics))
    write_json(args.json, metrics)
    print(f"\nfigures written to {args.json}")
    missed = [m for m in metrics if m.meets_goal() is False]
    if args.check and missed:
        print(f"{len(missed)} figure(s) missed their goal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
