"""Leader election on a ``coordination.k8s.io/v1`` Lease: one builder replica builds at a time.

``plan_lease`` is pure (what to write given the lease, who we are and the time); ``LeaderElector``
performs it with optimistic concurrency, so two replicas racing for an expired lease cannot both
win (the loser gets 409 Conflict).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from builder.errors import BuilderError, Conflict
from builder.kube import Kube

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def micro_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def plan_lease(lease: Obj | None, identity: str, now: datetime, duration: float,
               namespace: str, name: str, observed_for: float = 0.0) -> Obj | None:
    """The Lease to write to hold leadership, or None if someone else validly holds it.

    Another holder's lease expires when *we* have seen its record unchanged for its duration
    (``observed_for``, measured on our monotonic clock), as client-go's leaderelection does:
    its ``renewTime`` was written with the holder's clock, and comparing it with ours would
    let a clock skew of a few seconds steal a live lease. ``now`` only stamps what we write.
    """
    stamp = micro_time(now)
    if lease is None:
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"holderIdentity": identity, "leaseDurationSeconds": int(duration),
                         "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}
    spec = dict(lease.get("spec") or {})
    holder = spec.get("holderIdentity")
    held_for = float(spec.get("leaseDurationSeconds") or duration)
    expired = not spec.get("renewTime") or observed_for > held_for
    if holder and holder != identity and not expired:
        return None
    new_spec = {**spec, "holderIdentity": identity, "leaseDurationSeconds": int(duration),
                "renewTime": stamp}
    if holder != identity:
        new_spec["acquireTime"] = stamp
        new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    return {**lease, "spec": new_spec}


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: float,
                 renew: float, on_started: Callable[[], None], on_stopped: Callable[[], None],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew = renew
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.now = now
        self.monotonic = monotonic
        self.leading = False
        self._record: tuple[object, ...] | None = None
        self._record_seen_at = 0.0

    def try_acquire_or_renew(self) -> bool:
        lease = self.kube.get_lease(self.namespace, self.name)
        spec = (lease or {}).get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"),
                  spec.get("leaseTransitions")) if lease else None
        if record != self._record:  # the holder renewed (or changed): observed just now
            self._record, self._record_seen_at = record, self.monotonic()
        wanted = plan_lease(lease, self.identity, self.now(), self.duration, self.namespace,
                            self.name, self.monotonic() - self._record_seen_at)
        if wanted is None:
            return False
        try:
            if lease is None:
                self.kube.create_lease(self.namespace, wanted)
            else:
                self.kube.replace_lease(wanted)
        except Conflict:
            return False
        return True

    def run(self, stop: threading.Event) -> None:
        """Acquire, renew, and call back on changes of leadership until ``stop`` is set."""
        last_renewal = 0.0
        clock = 0.0
        while not stop.is_set():
            try:
                ok = self.try_acquire_or_renew()
            except BuilderError as e:
                log.warning("leader election: %s", e)
                ok = False
            clock += self.renew
            if ok:
                last_renewal = clock
                if not self.leading:
                    self.leading = True
                    log.info("%s became leader of %s/%s", self.identity, self.namespace,
                             self.name)
                    self.on_started()
            elif self.leading and clock - last_renewal >= self.duration - self.renew:
                # Could not renew in time: someone else may take over; stop building now.
                self.leading = False
                log.warning("%s lost leadership", self.identity)
                self.on_stopped()
            stop.wait(self.renew)
        if self.leading:
            self.leading = False
            self.release()
            self.on_stopped()

    def release(self) -> None:
        """Give the lease up (on clean shutdown) so another replica takes over at once."""
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["renewTime"] = micro_time(datetime(1970, 1, 1, tzinfo=UTC))
                lease["spec"]["holderIdentity"] = ""
                self.kube.replace_lease(lease)
        except BuilderError as e:
            log.warning("releasing the lease failed: %s", e)
