"""Secrets read by name and kept briefly, for checks that run once per plugin per reconcile.

The ``Webhook`` condition of every plugin reads its webhook Secret; a tenant's plugins usually
share one, so a resync over 1,000 plugins read the same Secret 1,000 times. Here each Secret
is read at most once per ``ttl`` seconds; a missing one (``NotFound``) is remembered as well,
so a deleted or rotated Secret shows within ``ttl``. Other errors (a transient apiserver
problem) are not remembered. Values stay in memory only, as the reads did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from builder.errors import NotFound
from builder.secrets import Secret


class SecretCache:
    def __init__(self, read: Callable[[str, str], Secret], ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._ttl = ttl
        self._clock = clock
        self._kept: dict[tuple[str, str], tuple[float, Secret | NotFound]] = {}
        self._lock = threading.Lock()

    def read(self, namespace: str, name: str) -> Secret:
        """The Secret (``NotFound`` if it does not exist), at most ``ttl`` seconds old."""
        key = (namespace, name)
        with self._lock:
            kept = self._kept.get(key)
        if kept is None or self._clock() - kept[0] >= self._ttl:
            try:
                value: Secret | NotFound = self._read(namespace, name)
            except NotFound as e:
                value = e
            kept = (self._clock(), value)
            with self._lock:
                self._kept[key] = kept
        if isinstance(kept[1], NotFound):
            raise kept[1]
        return kept[1]
