"""File-mode propagation: plugforge's sidecar against configmap-reload, driven by one harness.

One schedule, written with the kubelet's atomic-writer layout (``testbed/configmap_dir.py``:
new timestamped directory, ``..data`` swapped by rename): 200 updates 300 ms apart, then a
burst of 20 updates 5 ms apart (``--quick``: 40 and 10). Each update changes one dynsec role ACL.
- Peer: the real configmap-reload, built from its unmodified source in
  ``shared/peers/configmap-reload`` (commit 0ec4d67, after v0.15.0), watching the directory;
  latency = update -> its webhook received by an HTTP receiver here.
- plugforge: ``python -m sidecar --source files`` against a real mosquitto 2.0 with dynamic
  security; latency = update -> the broker's answer to the sidecar's admin call (observed on
  ``$CONTROL/dynamic-security/v1/response``): read, hash, validate, observe, plan, apply.
  Debounce off (0) and on (0.2 s, the default).
The peer and the sidecar with debounce off run at the same time, interleaved (each its own
directory, updates half a period apart; both see the same background load on this shared
machine); the debounced sidecar runs after them. Clock: ``time.monotonic`` in this process for
both ends. Timing starts just before the atomic writer's update (write the version dir, swap
``..data``); a contender's arrivals between one of its updates and its next belong to the first
(the first arrival sets the latency, more are duplicates; none is a miss; with debounce on, an
update caught by the next one within the quiet period is applied with it, so it is counted but
has no goal). Warm-up: 5 updates per contender, untimed. Burst applies = admin calls
(webhooks) from the burst's start to 3 s after its end.
Goals: p99 ratio <= 2.5 with debounce off; the burst coalesced to <= 2 applies with debounce on;
0 missed with debounce off. The peer's webhook carries no content; plugforge's last apply is
checked to hold the burst's last update.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.propagation_support import (
    ADMIN,
    Contender,
    DynsecResponses,
    Outcome,
    Peer,
    Schedule,
    WebhookReceiver,
    drive,
    peer,
    start_dynsec_broker,
)
from bench.report import Metric, summarize
from bench.sidecar_latency import config_for, start_sidecar
from sidecar.adapters import mosquitto_dynsec as dynsec
from testbed.configmap_dir import ConfigMapDir
from testbed.mosquitto import Mosquitto
from testbed.procs import free_port

BENCH = "propagation (file mode)"
WARMUP = 5
DEBOUNCE_ON = 0.2


def measure(workdir: Path, quick: bool) -> list[Metric]:
    schedule = Schedule(updates=40, burst=10) if quick else Schedule()
    the_peer = peer()
    broker = start_dynsec_broker(workdir / "broker", ("set_tcp_nodelay true",))
    try:
        # The peer and the sidecar without debounce share one run (the p99 ratio's two sides);
        # the debounced sidecar (~200 ms per update) gets its own.
        with running_peer(the_peer, workdir / "peer") as peer_c, \
                running_sidecar(broker, workdir / "off", 0.0) as off_c:
            peer_out, off = drive([peer_c, off_c], schedule)
        with running_sidecar(broker, workdir / "on", DEBOUNCE_ON) as on_c:
            (on,) = drive([on_c], schedule)
            final_ok = holds_update(broker, schedule.updates + schedule.burst - 1)
    finally:
        broker.stop()
    return rows(the_peer, schedule, peer_out, off, on, final_ok)


def warm_up(contender: Contender) -> None:
    for i in range(WARMUP):
        started = time.monotonic()
        contender.update(1_000_000 + i)
        if not contender.arrivals.wait_after(started, 30):
            raise RuntimeError("no reaction to a warm-up update within 30 s")
        time.sleep(0.1)


@contextmanager
def running_peer(the_peer: Peer, work: Path) -> Iterator[Contender]:
    work.mkdir(parents=True)
    cm = ConfigMapDir(work / "cm")
    cm.update(config_for(-1))
    receiver = WebhookReceiver()
    log = open(work / "peer.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([str(the_peer.binary), f"--volume-dir={cm.path}",
                             f"--webhook-url={receiver.url}",
                             f"--web.listen-address=127.0.0.1:{free_port()}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)  # its watch is set up right after start; the warm-up proves it
        contender = Contender(lambda i: cm.update(config_for(i)), receiver.arrivals)
        warm_up(contender)
        yield contender
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        receiver.stop()


@contextmanager
def running_sidecar(broker: Mosquitto, work: Path, debounce: float) -> Iterator[Contender]:
    """``python -m sidecar --source files`` as deployed (only --debounce differs), warmed up."""
    cm = ConfigMapDir(work / "cm")
    cm.update(config_for(-1))
    responses = DynsecResponses(broker.host, broker.port, *ADMIN)
    proc = start_sidecar(broker, work, debounce, ["--source", "files",
                                                  "--config-dir", str(cm.path)])
    try:
        if not responses.arrivals.wait_after(0.0, 60):
            raise RuntimeError(f"the sidecar made no initial apply; see {work}/sidecar.log")
        contender = Contender(lambda i: cm.update(config_for(i)), responses.arrivals)
        warm_up(contender)
        yield contender
    finally:
        proc.terminate()
        proc.wait(10)
        responses.close()


def holds_update(broker: Mosquitto, i: int) -> bool:
    """Whether the broker's bench role holds update ``i``'s ACL (the burst's last one)."""
    admin = dynsec.DynsecAdmin(broker.host, broker.port, *ADMIN)
    try:
        acls = dynsec.observe(admin).get("dynsec.role.bench.acls", "")
    finally:
        admin.close()
    return f"bench/{i} " in acls + " "


def rows(the_peer: Peer, schedule: Schedule, peer_out: Outcome, off: Outcome, on: Outcome,
         final_ok: bool) -> list[Metric]:
    base = summarize(peer_out.latencies)
    name = the_peer.label

    def counts(o: Outcome) -> str:
        return f"received {o.received}/{schedule.updates}, duplicates {o.duplicates}"

    out: list[Metric] = []
    for label, o, goal in (("debounce off", off, 2.5), (f"debounce {DEBOUNCE_ON:g}s", on, None)):
        s = summarize(o.latencies)
        out += [
            Metric(BENCH, f"{label}: p50 swap -> applied", "ms", s.p50 * 1e3, base.p50 * 1e3,
                   name, note=f"{schedule.updates} updates {schedule.period * 1e3:.0f} ms apart; "
                   f"{counts(o)}; peer {counts(peer_out)}"),
            Metric(BENCH, f"{label}: p99 swap -> applied", "ms", s.p99 * 1e3, base.p99 * 1e3,
                   name, max_ratio=goal),
        ]
        if goal is not None:
            out.append(Metric(BENCH, f"{label}: missed updates", "", o.missed, peer_out.missed,
                              name, max_value=0))
        else:
            # A debounced update that a later one catches within the quiet period is applied
            # as part of it (the sidecar applies the whole current state), so no goal here.
            out.append(Metric(BENCH, f"{label}: updates without their own apply", "", o.missed,
                              peer_out.missed, name, note="coalesced into the next update "
                              "(events delayed past the debounce window) or missed: the "
                              "harness cannot tell which; the burst's last update is checked"))
    out += [
        Metric(BENCH, "debounce off: burst applies", "", off.burst_applies,
               peer_out.burst_applies, name,
               note=f"{schedule.burst} updates {schedule.burst_gap * 1e3:g} ms apart"),
        Metric(BENCH, f"debounce {DEBOUNCE_ON:g}s: burst applies", "", on.burst_applies,
               peer_out.burst_applies, name, max_value=2,
               note=f"last update applied: {'yes' if final_ok else 'NO'}"),
    ]
    return out
