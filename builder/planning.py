"""Pure decisions of the controller: what to request, which build runs, what to prune.

Data in (views of the plugin and its builds, the time), decisions out; ``controller.py``
performs them through the adapter and observes again on the next reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from builder.resources import BuildView, parse_time

ACTIVE = ("Pending", "Running")


def needs_request(generation: int, commit: str | None, builds: Sequence[BuildView],
                  last_request: Mapping[str, Any]) -> bool:
    """Should a ResourceChange build be requested for (``generation``, ``commit``)?

    ``commit`` None means the ref could not be resolved: one request per generation records
    why (its build fails with the source error); afterwards nothing until something changes.
    Builds already queued or running mean "not now": the pair is reconsidered after them.
    """
    if any(b.phase in ACTIVE for b in builds):
        return False
    if (last_request.get("generation"), last_request.get("commit") or None) == \
            (generation, commit):
        return False
    if any(b.generation == generation and b.commit == commit for b in builds):
        return False
    return not (commit is None and any(b.generation == generation for b in builds))


@dataclass(frozen=True)
class QueuePlan:
    supersede: tuple[str, ...] = ()
    """Pending builds replaced by a newer request."""
    run: str | None = None
    """The build to claim now."""
    wait_seconds: float | None = None
    """The chosen build is backing off: reconcile again after this long."""


def plan_queue(builds: Sequence[BuildView], now: datetime, enabled: bool) -> QueuePlan:
    """``builds`` in creation order: the newest Pending one runs, older Pending ones are
    superseded; nothing runs while one is Running (one build per plugin at a time)."""
    pending = [b for b in builds if b.phase == "Pending"]
    if not pending:
        return QueuePlan()
    newest = pending[-1]
    supersede = tuple(b.name for b in pending[:-1])
    if any(b.phase == "Running" for b in builds) or not enabled:
        return QueuePlan(supersede=supersede)
    due = parse_time(newest.next_attempt_at)
    if due is not None and due > now:
        return QueuePlan(supersede=supersede, wait_seconds=(due - now).total_seconds())
    return QueuePlan(supersede=supersede, run=newest.name)


def plan_prune(builds: Sequence[BuildView], history_limit: int) -> tuple[str, ...]:
    """Finished builds beyond ``history_limit``, oldest first (requests are never pruned)."""
    finished = [b for b in builds if b.finished]
    return tuple(b.name for b in finished[:max(0, len(finished) - history_limit)])
