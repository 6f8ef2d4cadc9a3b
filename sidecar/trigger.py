"""Wake-ups for the reconcile loop: debounced change notifications plus a periodic resync.

Watchers only *notify*; the loop re-reads the whole desired state and converges, so it never
depends on which event woke it. A notification that arrives while a reconcile runs makes the
loop run once more afterwards (nothing is lost); a burst of notifications runs it once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class Debouncer:
    """Trailing-edge debounce with a cap: due ``quiet`` s after the last event of a burst, but
    never later than ``max_delay`` s after its first (a steady drizzle still gets applied)."""

    quiet: float
    max_delay: float
    first: float | None = None
    last: float | None = None

    def note(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def due_at(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_delay)

    def take(self, now: float) -> bool:
        """True (and reset) when the pending burst is due at ``now``."""
        due = self.due_at()
        if due is None or now < due:
            return False
        self.first = self.last = None
        return True


class Trigger:
    def __init__(self, debounce: float, resync_interval: float, max_delay: float | None = None,
                 clock: Clock = time.monotonic) -> None:
        self._debouncer = Debouncer(debounce, max_delay if max_delay is not None
                                    else max(debounce * 10, 1.0))
        self._resync = resync_interval
        self._clock = clock
        self._cond = threading.Condition()
        self._reasons: list[str] = []
        self._urgent = False
        self._closed = False
        self._next_resync = clock() + resync_interval

    def notify(self, reason: str, urgent: bool = False) -> None:
        """Something may have changed; ``urgent`` skips the debounce (explicit requests)."""
        with self._cond:
            self._debouncer.note(self._clock())
            self._reasons.append(reason)
            self._urgent = self._urgent or urgent
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> bool:
        """A notification arrived that the loop has not taken yet (or the trigger closed)."""
        return bool(self._reasons) or self._closed

    def wait(self) -> str | None:
        """Block until a debounced change or the resync is due; the reason, or None if closed."""
        with self._cond:
            while not self._closed:
                now = self._clock()
                if self._urgent or self._debouncer.take(now):
                    self._debouncer.first = self._debouncer.last = None
                    self._urgent = False
                    reasons, self._reasons = self._reasons, []
                    self._next_resync = now + self._resync
                    return _summarize(reasons)
                if now >= self._next_resync:
                    self._next_resync = now + self._resync
                    return "periodic resync"
                due = self._debouncer.due_at()
                deadline = self._next_resync if due is None else min(due, self._next_resync)
                self._cond.wait(timeout=max(deadline - now, 0.001))
            return None


def _summarize(reasons: list[str]) -> str:
    unique = list(dict.fromkeys(reasons))
    more = f" (+{len(reasons) - 1} more notifications)" if len(reasons) > 1 else ""
    return unique[0] + more
