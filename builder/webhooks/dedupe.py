"""Redeliveries and bursts: remember delivery ids for a while; keep one pending request a plugin.

Both are bounded and take an injected clock, so tests drive time instead of sleeping.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

Clock = Callable[[], float]


class DeliveryCache:
    """Delivery ids seen recently (TTL), at most ``capacity`` of them (oldest forgotten first).

    ``reserve`` is check-and-set, so two concurrent copies of a delivery cannot both pass;
    ``release`` gives an id back when its processing failed and a redelivery should work.
    """

    def __init__(self, clock: Clock, ttl: float = 24 * 3600.0, capacity: int = 100_000) -> None:
        self._clock = clock
        self._ttl = ttl
        self._capacity = capacity
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def reserve(self, key: str) -> bool:
        """True the first time ``key`` is seen within the TTL, False for a redelivery."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            if key in self._expiry:
                return False
            self._expiry[key] = now + self._ttl
            while len(self._expiry) > self._capacity:
                self._expiry.popitem(last=False)
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._expiry.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._expiry)

    def _expire(self, now: float) -> None:
        # Insertion order is expiry order because the TTL is constant.
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[key]


@dataclass(frozen=True)
class Trigger:
    """Why a build was requested; recorded on the PluginBuild."""

    event: str
    delivery: str
    user: str
    commit: str
    compare_url: str
    forge: str


@dataclass(frozen=True)
class BuildRequest:
    plugin_key: str  # namespace/name
    commit: str
    before: str
    trigger: Trigger


class Offer(Enum):
    QUEUED = "queued"  # new pending request
    COALESCED = "coalesced"  # replaced an older pending request for the same plugin
    STALE = "stale"  # an already-seen push moved the branch past this commit


_ZERO = "0" * 40


@dataclass
class _PluginState:
    # Requests since the last hand-off, oldest first (one per commit).
    candidates: OrderedDict[str, BuildRequest] = field(default_factory=OrderedDict)
    due: float = 0.0
    # Commits some push moved the ref away from (each push's "before"), newest last. A request
    # for one of them is stale: deliveries can arrive out of order, and the chain of
    # before -> after says which commit is newer.
    left: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    touched: float = 0.0

    def current(self) -> BuildRequest | None:
        """The newest-arrived request whose commit no known push has moved past."""
        for request in reversed(self.candidates.values()):
            if request.commit not in self.left:
                return request
        return None


class Coalescer:
    """At most one pending request per plugin: the newest commit of a burst wins.

    A request becomes due after ``quiet`` seconds without a newer one for the same plugin
    (a debounce), so a burst of pushes turns into one build request. What happens after the
    hand-off is the build queue's business (it also lets a newer request supersede a pending
    one). Commits that arrive out of order after the hand-off cannot be ordered without the
    repository's history; such a late, older push gets a build of its own.
    """

    def __init__(self, clock: Clock, quiet: float = 1.0, memory: float = 3600.0,
                 max_plugins: int = 10_000, max_candidates: int = 64) -> None:
        self._clock = clock
        self._quiet = quiet
        self._memory = memory
        self._max_plugins = max_plugins
        self._max_candidates = max_candidates
        self._plugins: OrderedDict[str, _PluginState] = OrderedDict()
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)

    def offer(self, request: BuildRequest) -> Offer:
        now = self._clock()
        with self._lock:
            state = self._plugins.get(request.plugin_key)
            if state is None:
                state = self._plugins[request.plugin_key] = _PluginState()
            self._plugins.move_to_end(request.plugin_key)
            state.touched = now
            had = state.current()
            if request.before != _ZERO and request.before not in state.left:
                state.left.append(request.before)
            state.candidates.pop(request.commit, None)
            state.candidates[request.commit] = request
            while len(state.candidates) > self._max_candidates:
                state.candidates.popitem(last=False)
            current = state.current()
            self._forget_old(now)
            if current is None or current.commit != request.commit:
                return Offer.STALE
            state.due = now + self._quiet
            self.changed.notify_all()
            return Offer.QUEUED if had is None else Offer.COALESCED

    def take_due(self) -> tuple[list[BuildRequest], float | None]:
        """Requests whose quiet period is over, and seconds until the next one (None: none)."""
        now = self._clock()
        due: list[BuildRequest] = []
        next_in: float | None = None
        with self._lock:
            for state in self._plugins.values():
                current = state.current()
                if current is None:
                    state.candidates.clear()
                elif state.due <= now:
                    due.append(current)
                    state.candidates.clear()
                else:
                    wait = state.due - now
                    next_in = wait if next_in is None else min(next_in, wait)
        return due, next_in

    def pending(self) -> dict[str, str]:
        """plugin key -> pending commit (for tests and the stats endpoint)."""
        with self._lock:
            return {k: c.commit for k, s in self._plugins.items() if (c := s.current())}

    def _forget_old(self, now: float) -> None:
        while len(self._plugins) > 1:
            key, state = next(iter(self._plugins.items()))
            too_many = len(self._plugins) > self._max_plugins
            if state.current() is None and (too_many or state.touched + self._memory <= now):
                del self._plugins[key]
                continue
            break
