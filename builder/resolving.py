"""Which commit does a plugin's ref point at now? One fetch per source, shared by its plugins.

Every reconcile needs the tip of its plugin's ref (to notice new commits without a webhook).
Fetching it per plugin costs one git round trip per plugin per resync period: many plugins of
one repository (a monorepo's paths, one tenant's forks of nothing) paid it again and again.
Results are kept per source (namespace — the tenant's mirror and credentials — URL, ref,
pinned revision, credential Secret) and per plugin:
- a plugin whose generation is unchanged reuses its own result within ``max_age``;
- otherwise a result for its source newer than the plugin's own last one is reused: within
  ``max_age`` for a *settled* plugin (its build for this generation was requested already:
  a resync or a restart, where the old per-plugin rule allowed a tip a period old too), within
  ``share_seconds`` for a new one (created right after a push, it sees a tip at most that
  old). A sweep over the plugins of one source costs one fetch, not one per plugin;
- a spec change (new generation) always fetches, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Result:
    commit: str | None
    at: float
    generation: int = 0


class ResolveCache:
    def __init__(self, max_age: float, share_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.share_seconds = min(share_seconds, max_age)
        self._clock = clock
        self._plugins: dict[str, _Result] = {}
        self._sources: dict[Hashable, _Result] = {}
        self._lock = threading.Lock()

    def resolve(self, plugin: str, generation: int, source: Hashable,
                fetch: Callable[[], str | None], settled: bool = False) -> str | None:
        """The commit for ``plugin`` (at ``generation``) whose source is ``source``; ``fetch``
        runs only when no fresh result can be reused (it returns None when the ref cannot be
        resolved, which is remembered like a commit)."""
        now = self._clock()
        with self._lock:
            own = self._plugins.get(plugin)
            if own is not None and own.generation == generation and \
                    now - own.at < self.max_age:
                return own.commit
            shared = self._sources.get(source)
            window = self.max_age if settled else self.share_seconds
            if shared is not None and now - shared.at < window and \
                    (own is None or (own.generation == generation and shared.at > own.at)):
                self._plugins[plugin] = _Result(shared.commit, shared.at, generation)
                return shared.commit
        commit = fetch()
        at = self._clock()
        with self._lock:
            self._plugins[plugin] = _Result(commit, at, generation)
            self._sources[source] = _Result(commit, at)
        return commit

    def forget(self, plugin: str) -> None:
        with self._lock:
            self._plugins.pop(plugin, None)

    def clear(self) -> None:
        """Everything expires (as at the end of a period)."""
        with self._lock:
            self._plugins.clear()
            self._sources.clear()
