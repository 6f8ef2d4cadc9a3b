"""Broker pods as the rollout sees them: Pod objects in, ``PodInfo`` out; who is the canary.

Pure. A pod counts once the kubelet says so: phase Running, a pod IP, condition Ready=True and
no deletion under way. Its sidecar is dialled at ``<pod IP>:<spec.target.sidecarPort>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.resources import PodSelector

_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class PodInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    ready: bool = False
    created: str = ""
    ordinal: int | None = None
    """The StatefulSet ordinal (``<set>-<n>``), None for other owners."""
    why_not_ready: str = ""

    def address(self, port: int) -> str:
        return f"[{self.ip}]:{port}" if ":" in self.ip else f"{self.ip}:{port}"


def pod_info(obj: Mapping[str, Any]) -> PodInfo:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    name = str(meta.get("name", ""))
    owners = meta.get("ownerReferences") or []
    ordinal = None
    if any(o.get("kind") == "StatefulSet" for o in owners):
        found = _ORDINAL.search(name)
        ordinal = int(found.group(1)) if found else None
    ready_cond: Mapping[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    ip = str(status.get("podIP") or "")
    phase = str(status.get("phase") or "Pending")
    why = ""
    if meta.get("deletionTimestamp"):
        why = "pod is terminating"
    elif phase != "Running":
        why = f"pod phase {phase}"
    elif not ip:
        why = "pod has no IP yet"
    elif ready_cond.get("status") != "True":
        why = "pod not Ready" + (f" ({ready_cond['reason']})" if ready_cond.get("reason")
                                 else "")
    return PodInfo(name=name, labels=dict(meta.get("labels") or {}), ip=ip, ready=not why,
                   created=str(meta.get("creationTimestamp") or ""), ordinal=ordinal,
                   why_not_ready=why)


def select(pods: Iterable[PodInfo], selector: PodSelector) -> list[PodInfo]:
    """The pods ``selector`` matches, in rollout order (``rollout_order``)."""
    return rollout_order([p for p in pods if selector.matches(p.labels)])


def rollout_order(pods: Iterable[PodInfo]) -> list[PodInfo]:
    """Stable order: StatefulSet pods by ordinal, then the others oldest first, then by name.
    The canary is the first Ready pod: ``<set>-0`` of a StatefulSet, the oldest pod of a
    Deployment (whose names are random, so a name order would pick at random)."""
    return sorted(pods, key=lambda p: (p.ordinal is None, p.ordinal or 0, p.created, p.name))


def choose_canaries(pods: Sequence[PodInfo], count: int) -> tuple[str, ...]:
    """The first ``count`` Ready pods in rollout order."""
    return tuple(p.name for p in rollout_order(pods) if p.ready)[:max(1, count)]
