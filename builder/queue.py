"""A keyed work queue (client-go's workqueue semantics) and per-key exponential backoff.

- A key is queued at most once; adding a queued key again is a no-op (newer requests coalesce).
- A key being processed is never handed to a second worker; re-added meanwhile, it runs again
  after ``done``.
- ``add_after`` delays a key (backoff, resync); the clock is injected so tests need no sleeps.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]


class WorkQueue:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._queue: list[str] = []
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._shutdown = False

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            self._seq += 1
            heapq.heappush(self._delayed, (self._clock() + delay, self._seq, key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> str | None:
        """The next ready key (marked processing), or None on timeout/shutdown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._promote_due_locked()
                if self._queue:
                    key = self._queue.pop(0)
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                if self._shutdown:
                    return None
                wait = self._next_due_locked()
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def pending_delayed(self) -> list[tuple[float, str]]:
        with self._cond:
            return sorted((at, key) for at, _, key in self._delayed)

    def _promote_due_locked(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._add_locked(key)

    def _next_due_locked(self) -> float | None:
        if not self._delayed:
            return None
        # Re-check at least every second: an injected clock may jump without notifying.
        return max(0.0, min(1.0, self._delayed[0][0] - self._clock()))


class Backoff:
    """Per-key exponential delays: base, 2·base, 4·base … capped at ``maximum``."""

    def __init__(self, base: float, maximum: float) -> None:
        self.base = base
        self.maximum = maximum
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def next_delay(self, key: str) -> float:
        with self._lock:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        return float(min(self.maximum, self.base * (2 ** n)))

    def delay_for(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1-based), without state."""
        return float(min(self.maximum, self.base * (2 ** max(0, attempt - 1))))

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)
