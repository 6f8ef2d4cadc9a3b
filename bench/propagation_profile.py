"""Where one file-mode apply's milliseconds go: ``python -m bench.propagation_profile [N]``.

The sidecar runs as in ``bench/propagation.py`` (its own process, ``--source files``, debounce
0, a real mosquitto 2.0 with dynamic security), started through ``--child``, which wraps the
steps of one apply in spans (``time.monotonic_ns``: CLOCK_MONOTONIC, the same clock in every
process on the machine) before calling the sidecar's ``main``, and writes them to a file at
exit. This process makes N updates (default 100) 300 ms apart and records, per update, the
moment before the atomic writer starts, the ``..data`` rename done, and the broker's dynsec
response arriving here (the benchmark's "applied"). Each span is attributed to the update it
follows; the table gives each step's start and duration relative to the update, p50 and p99.
A diagnostic, not a benchmark: the wrappers cost a few µs each.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPANS_ENV = "PLUGFORGE_PROFILE_SPANS"


# --- the child: the sidecar with spans -------------------------------------------------------

def _install_spans(record: Callable[[str, int, int], None]) -> None:
    from sidecar import app, last_good, reconcile, trigger, watch_files
    from sidecar.adapters import mosquitto, mosquitto_dynsec

    def span(owner: Any, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                record(name, t0, time.monotonic_ns())

        setattr(owner, attr, wrapped)

    dispatch = watch_files.DirectoryWatcher.dispatch

    def event_span(self: Any, events: Any) -> None:
        t0 = time.monotonic_ns()
        dispatch(self, events)
        t1 = time.monotonic_ns()
        for event in events:
            name = event.name or "."
            if name.startswith("..") and name not in ("..data", "..data_tmp"):
                name = "..<version>"
            record(f"inotify {name} {_mask_name(event.mask)}", t0, t1)

    watch_files.DirectoryWatcher.dispatch = event_span  # type: ignore[method-assign]
    span(trigger.Trigger, "notify", "trigger.notify")
    span(trigger.Trigger, "wait", "trigger.wait (returns)")
    span(reconcile.Reconciler, "_reconcile", "reconcile")
    span(app.Sidecar, "read_documents", "read files")
    span(reconcile, "parse_desired_state", "parse + hash")
    span(mosquitto.MosquittoAdapter, "validate_config", "validate")
    span(mosquitto.MosquittoAdapter, "observe", "observe (all)")
    span(mosquitto.MosquittoAdapter, "_pid", "observe: find broker pid")
    span(mosquitto.MosquittoAdapter, "_observe_plugins", "observe: plugins (/proc maps)")
    span(mosquitto.MosquittoAdapter, "prefetch", "prefetch (dynsec state asked)")
    span(mosquitto_dynsec.DynsecAdmin, "send", "dynsec send")
    span(mosquitto_dynsec.Reply, "wait", "dynsec reply wait")
    span(reconcile, "plan", "plan")
    span(mosquitto.MosquittoAdapter, "apply_config", "apply_config")
    span(mosquitto_dynsec.DynsecAdmin, "_on_message", "dynsec response (paho thread)")
    span(reconcile.Reconciler, "_verify", "verify (observe again + plan)")
    span(reconcile.Reconciler, "_event", "event (log + metrics)")
    span(last_good, "save", "last-good save")

    import gc
    started: dict[str, int] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started["t"] = time.monotonic_ns()
        elif "t" in started:
            record(f"gc generation {info['generation']}", started.pop("t"), time.monotonic_ns())

    gc.callbacks.append(on_gc)


def _mask_name(mask: int) -> str:
    from sidecar import inotify

    names = ("IN_CREATE", "IN_DELETE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_CLOSE_WRITE")
    return "|".join(n[3:] for n in names if mask & getattr(inotify, n)) or hex(mask)


def child(argv: list[str]) -> int:
    import atexit

    spans: list[tuple[str, int, int]] = []
    _install_spans(lambda name, t0, t1: spans.append((name, t0, t1)))
    out = Path(os.environ[SPANS_ENV])
    atexit.register(lambda: out.write_text(json.dumps(spans)))
    from sidecar.__main__ import main
    return main(argv)


# --- the parent: updates, arrivals, the table -------------------------------------------------

def measure(workdir: Path, updates: int) -> tuple[list[tuple[int, int, int]],
                                                    list[tuple[str, int, int]]]:
    """(update started, ``..data`` swapped, response arrived) per update, and the spans."""
    from bench.propagation_support import ADMIN, DynsecResponses, start_dynsec_broker
    from bench.sidecar_latency import config_for, start_sidecar
    from testbed.configmap_dir import ConfigMapDir

    broker = start_dynsec_broker(workdir / "broker", ("set_tcp_nodelay true",))
    cm = ConfigMapDir(workdir / "cm")
    cm.update(config_for(-1))
    spans_file = workdir / "spans.json"
    responses = DynsecResponses(broker.host, broker.port, *ADMIN)
    proc = start_sidecar(broker, workdir / "sidecar", 0.0,
                         ["--source", "files", "--config-dir", str(cm.path)],
                         env={SPANS_ENV: str(spans_file)},
                         launcher=("-m", "bench.propagation_profile", "--child"))
    times = []
    try:
        if not responses.arrivals.wait_after(0.0, 60):
            raise RuntimeError(f"no initial apply; see {workdir}/sidecar/sidecar.log")
        for i in range(-5, updates):  # 5 warm-ups, dropped below
            time.sleep(0.3)
            t0 = time.monotonic_ns()
            cm.update(config_for(i))
            t1 = time.monotonic_ns()
            if not responses.arrivals.wait_after(t0 / 1e9, 30):
                raise RuntimeError(f"update {i}: no apply within 30 s")
            arrived = responses.arrivals.between(t0 / 1e9, t0 / 1e9 + 30)[0]
            if i >= 0:
                times.append((t0, t1, int(arrived * 1e9)))
    finally:
        proc.terminate()
        proc.wait(10)
        responses.close()
        broker.stop()
    return times, [(str(n), int(a), int(b)) for n, a, b in json.loads(spans_file.read_text())]


def breakdown(times: list[tuple[int, int, int]], spans: list[tuple[str, int, int]]
              ) -> list[tuple[str, list[float], list[float], int]]:
    """Per span name: its start (ms after the update began) and duration (ms), over the
    updates it occurred in (the first occurrence per update), and how often it ran per
    update on average."""
    rows: dict[str, tuple[list[float], list[float], int]] = {}
    order: list[str] = []
    bounds = [(t0, nxt) for (t0, _, _), nxt in
              zip(times, [t[0] for t in times[1:]] + [2**63], strict=True)]
    for t0, nxt in bounds:
        seen: set[str] = set()
        for name, s0, s1 in sorted(spans, key=lambda s: s[1]):
            if not t0 <= s0 < nxt:
                continue
            starts, durations, count = rows.setdefault(name, ([], [], 0))
            rows[name] = (starts, durations, count + 1)
            if name not in order:
                order.append(name)
            if name in seen:
                continue
            seen.add(name)
            starts.append((s0 - t0) / 1e6)
            durations.append((s1 - s0) / 1e6)
    out = [(name, rows[name][0], rows[name][1], rows[name][2]) for name in order]
    out.append(("..data swapped (writer done)", [(t1 - t0) / 1e6 for t0, t1, _ in times], [], 0))
    out.append(("response at the bench (applied)", [(a - t0) / 1e6 for t0, _, a in times],
                [], 0))
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main(argv: list[str]) -> int:
    import tempfile

    updates = int(argv[0]) if argv else 100
    with tempfile.TemporaryDirectory(prefix="plugforge-profile-") as workdir:
        times, spans = measure(Path(workdir), updates)
    print(f"{updates} updates 300 ms apart, debounce 0; ms after the update started "
          f"(load {os.getloadavg()[0]:.2f})")
    print(f"{'step':40} {'start p50':>9} {'p99':>7} {'took p50':>9} {'p99':>7} {'per upd':>7}")
    for name, starts, durations, count in breakdown(times, spans):
        took = (f"{_pct(durations, 50):9.3f} {_pct(durations, 99):7.3f}" if durations
                else f"{'':9} {'':7}")
        per = f"{count / len(times):7.2f}" if count else ""
        print(f"{name:40} {_pct(starts, 50):9.3f} {_pct(starts, 99):7.3f} {took} {per}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
