"""Target ConfigMaps read once per few seconds for the "is the release in place?" check.

Every reconcile of an idle plugin reads its target ConfigMap to see that its release is still
there; 50 plugins of one broker cluster share one ConfigMap, so a sweep over them read the same
ConfigMap 50 times (and deserialized its 50 releases each time). The builder may not list or
watch ConfigMaps (its tenant RBAC grants get, create, update), so there is no informer for
them: a read is kept ``ttl`` seconds instead, parsed once. Only a "nothing to write" answer is
taken from it; any other goes the normal way, which reads afresh and writes with optimistic
concurrency. Kept values are ConfigMap data: memory only, never logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.rollout import ownership

Obj = dict[str, Any]


@dataclass(frozen=True)
class Target:
    data: dict[str, str]
    owners: dict[str, str]
    written: dict[str, str]
    """``plugforge.dev/written``: key -> fingerprint of the builder's last write."""

    def holds(self, key: str, text: str, plugin: str) -> bool:
        """``text`` is at ``key``, owned by BrokerPlugin ``plugin``, recorded as the builder's
        own write: writing it again would change nothing."""
        return self.data.get(key) == text and self.owners.get(key) == plugin and \
            self.written.get(key) == ownership.fingerprint(text)


class TargetCache:
    def __init__(self, read: Callable[[str, str], Obj | None], ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._ttl = ttl
        self._clock = clock
        self._kept: dict[tuple[str, str], tuple[float, Target | None]] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str, name: str) -> Target | None:
        """The ConfigMap (None: it does not exist) as read at most ``ttl`` seconds ago;
        errors of the read propagate."""
        now = self._clock()
        with self._lock:
            kept = self._kept.get((namespace, name))
            if kept is not None and now - kept[0] < self._ttl:
                return kept[1]
            # Expired entries go now: at most one sweep's worth of ConfigMaps is kept.
            for key in [k for k, (at, _) in self._kept.items() if now - at >= self._ttl]:
                del self._kept[key]
        cm = self._read(namespace, name)
        target = None
        if cm is not None:
            annotations = (cm.get("metadata") or {}).get("annotations") or {}
            target = Target(dict(cm.get("data") or {}), ownership.owners(annotations),
                            ownership.written(annotations))
        with self._lock:
            self._kept[(namespace, name)] = (now, target)
        return target

    def forget(self, namespace: str, name: str) -> None:
        """Drop a ConfigMap about to be written."""
        with self._lock:
            self._kept.pop((namespace, name), None)
