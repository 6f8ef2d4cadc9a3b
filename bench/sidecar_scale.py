"""The sidecar with 1, 100 and 1,000 plugin releases and config keys in its ConfigMap, as curves.

Per N, a real mosquitto 2.0 with dynamic security and the real sidecar (``sidecar.app.Sidecar``,
files source over a kubelet-style ConfigMap directory, the real mosquitto adapter behind the
counting wrapper of ``tests/sidecar_support.py``). The ConfigMap holds ``broker.yaml`` with N
dynsec role keys (``dynsec.role.r<i>.acls``, real broker state: N roles in dynsec) and N
``plugin.p<i>.yaml`` releases with ``enabled: false`` (mosquitto loads plugins only at start,
so N enabled plugins is no real pod; a disabled release is parsed, validated, hashed, planned
and reported like any other, and needs no image pull).

Figures: creating the N roles through dynsec, 100 more per apply (one apply of 1,000 new
roles outlasts the adapter's 5 s dynsec call timeout: mosquitto rewrites its dynsec file after
each command, so a batch costs O(roles²) in the broker); a no-op resync (``reconcile`` with
nothing changed, as the resync timer runs it: read, parse, validate, observe, plan) p50 and p99
of 20 after 3 warm-ups, with the adapter's admin (mutating) calls counted; and its parts — read,
parse + validate, observe (one dynsec round trip), plan — medians of 20. The growth exponent k
fits time ∝ N^k between N = 100 and 1,000. Goal: a no-op resync at 1,000 keys < 20 ms and 0
admin calls. ``BENCH_PROFILE=1`` prints a cProfile of no-op resyncs at the largest N.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from sidecar_support import broker_yaml, make_sidecar, start_dynsec_broker  # noqa: E402

from bench.report import Metric, summarize  # noqa: E402
from plugforge.contract import PluginRelease, render_plugin_release  # noqa: E402
from sidecar.plan import plan  # noqa: E402
from sidecar.reconcile import classifier_for  # noqa: E402
from testbed.configmap_dir import ConfigMapDir  # noqa: E402

SIZES = (1, 100, 1000)
GOAL_NOOP_MS = 20.0
STEP = 100
IMAGE = "registry.invalid/plugins/p@sha256:" + "ab" * 32


def configmap(n: int) -> dict[str, str]:
    data = {"broker.yaml": broker_yaml({f"dynsec.role.r{i:04d}.acls":
                                        f"publishClientSend bench/{i} allow" for i in range(n)})}
    for i in range(n):
        data[f"plugin.p{i:04d}.yaml"] = render_plugin_release(PluginRelease(
            f"p{i:04d}", IMAGE, False, {"deny_users": "mallory"}, ()))
    return data


def _timed(fn: Callable[[], object], reps: int = 20) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure_n(workdir: Path, n: int) -> dict[str, float]:
    work = workdir / f"n{n}"
    broker = start_dynsec_broker(work / "broker")
    try:
        source = ConfigMapDir(work / "configmap")
        source.update(configmap(min(n, STEP)))
        sidecar, counting = make_sidecar(broker, [source.path], work / "sidecar", None,
                                         allow_unsigned_images=True)
        try:
            # Grown STEP keys per apply: one apply creating 1,000 roles outlasts the dynsec
            # call timeout (5 s), as mosquitto rewrites its whole dynsec file per command.
            t = time.perf_counter()
            for size in range(min(n, STEP), n + 1, STEP):
                source.update(configmap(size))
                outcome = sidecar.reconcile_now("start")
                if outcome.phase.value != "Applied":
                    raise RuntimeError(f"apply at N={size}: {outcome.phase} "
                                       f"{sidecar.state.last_error}")
            first = time.perf_counter() - t
            for _ in range(3):
                sidecar.reconcile_now("resync")
            before = counting.mutating_calls()
            noop = _timed(lambda: sidecar.reconcile_now("resync"))
            admin_calls = counting.mutating_calls() - before
            if os.environ.get("BENCH_PROFILE") and n == max(SIZES):
                _profile(lambda: sidecar.reconcile_now("resync"))
            rec = sidecar.reconciler
            docs = sidecar.read_documents()
            desired = rec._validated(docs)
            observed = counting.observe()
            classifier = classifier_for(counting)
            applied = rec.state.last_applied
            return {
                "first": first,
                "noop_p50": summarize(noop).p50, "noop_p99": summarize(noop).p99,
                "admin_calls": float(admin_calls),
                "read": statistics.median(_timed(sidecar.read_documents)),
                "validate": statistics.median(_timed(lambda: rec._validated(docs))),
                "observe": statistics.median(_timed(counting.observe)),
                "plan": statistics.median(_timed(
                    lambda: plan(desired, observed, applied, classifier))),
            }
        finally:
            counting.close()
    finally:
        broker.stop()


def _profile(fn: Callable[[], object]) -> None:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    for _ in range(10):
        prof.runcall(fn)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


def growth(n0: int, v0: float, n1: int, v1: float) -> float:
    if not (v0 > 0 and v1 > 0):
        return math.nan
    return math.log(v1 / v0) / math.log(n1 / n0)


ROWS: tuple[tuple[str, str, float | None], ...] = (
    ("first", f"apply N roles, {STEP} per apply", None),
    ("noop_p50", "no-op resync p50", None),
    ("noop_p99", "no-op resync p99", GOAL_NOOP_MS),
    ("read", "  read the ConfigMap dir", None),
    ("validate", "  parse + validate", None),
    ("observe", "  observe (dynsec round trip)", None),
    ("plan", "  plan (pure)", None),
)


def curve_table(results: dict[int, dict[str, float]]) -> str:
    sizes = sorted(results)
    rows = [["metric (ms)", *[f"N={n:,}" for n in sizes], f"growth k {sizes[-2]:,}→{sizes[-1]:,}",
             "goal at 1,000"]]
    for key, label, goal in ROWS:
        ms = [results[n][key] * 1e3 for n in sizes]
        rows.append([label, *[f"{v:.3g}" if v < 1000 else f"{v:,.0f}" for v in ms],
                     f"{growth(sizes[-2], ms[-2], sizes[-1], ms[-1]):.2f}",
                     f"< {goal:g} ms" if goal is not None else "—"])
    rows.append(["admin calls in 20 no-op resyncs",
                 *[f"{results[n]['admin_calls']:.0f}" for n in sizes], "", "0"])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def measure(workdir: Path, quick: bool) -> list[Metric]:
    results = {n: measure_n(workdir, n) for n in SIZES}
    print(curve_table(results), flush=True)
    metrics = []
    for key, label, goal in ROWS:
        for n in SIZES:
            metrics.append(Metric("sidecar-scale", f"{label.strip()}, N={n}", "ms",
                                  results[n][key] * 1e3,
                                  max_value=goal if n == max(SIZES) else None))
        metrics.append(Metric("sidecar-scale", f"{label.strip()}: growth k (N^k, 100→1000)", "",
                              growth(100, results[100][key], 1000, results[1000][key])))
    metrics.append(Metric("sidecar-scale", "admin calls in 20 no-op resyncs, N=1000", "",
                          results[1000]["admin_calls"], max_value=0))
    return metrics


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="plugforge-sidecar-scale-") as tmp:
        measure(Path(tmp), False)
