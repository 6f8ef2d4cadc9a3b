"""The propagation benchmark's bookkeeping: which arrival belongs to which update, how misses,
duplicates and burst applies are counted, and that contenders are interleaved (not timed one
after the other). Contenders here answer in-process; the real ones are in bench/propagation.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed
from bench.propagation_support import (
    Arrivals,
    Contender,
    Schedule,
    attribute,
    drive,
)

FAST = Schedule(updates=6, period=0.04, burst=5, burst_gap=0.005, drain=0.1)


def test_attribute_first_arrival_sets_latency_later_ones_are_duplicates() -> None:
    latencies, duplicates = attribute([0.0, 1.0, 2.0], [0.1, 0.2, 2.5, 2.6, 2.7], end=3.0)
    assert [round(x, 6) for x in latencies] == [0.1, 0.5]  # update 1 owns nothing: missed
    assert duplicates == 1 + 2


def answering(every: int = 1, times: int = 1) -> tuple[Contender, list[int]]:
    """Answers update i (``times`` arrivals) when i is a multiple of ``every``."""
    arrivals = Arrivals()
    seen: list[int] = []

    def update(i: int) -> None:
        seen.append(i)
        if i % every == 0:
            for _ in range(times):
                arrivals.record()

    return Contender(update, arrivals), seen


def test_counts_received_missed_duplicates_and_burst() -> None:
    steady, seen = answering()
    flaky, _ = answering(every=2)
    chatty, _ = answering(times=2)
    outcomes = drive([steady, flaky, chatty], FAST)
    assert seen == [*range(FAST.updates), *range(FAST.updates, FAST.updates + FAST.burst)]
    assert [(o.received, o.missed, o.duplicates) for o in outcomes] == [
        (6, 0, 0), (3, 3, 0), (6, 0, 6)]
    assert [o.burst_applies for o in outcomes] == [5, 3, 10]  # flaky answers 6, 8, 10
    assert all(0 <= x < FAST.period for o in outcomes for x in o.latencies)


def test_contenders_share_each_period_half_a_period_apart() -> None:
    first, _ = answering()
    second, _ = answering()
    drive([first, second], FAST)
    a = first.arrivals.between(0.0, time.monotonic())[:FAST.updates]
    b = second.arrivals.between(0.0, time.monotonic())[:FAST.updates]
    # Interleaved, not one contender after the other: a0 < b0 < a1 < b1 < ... (the order, not
    # the gaps: on a loaded machine a late wake-up shrinks a gap but never reorders updates).
    merged = [t for pair in zip(a, b, strict=True) for t in pair]
    assert merged == sorted(merged), merged
