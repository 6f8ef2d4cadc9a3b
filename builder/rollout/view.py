"""A plugin's rollout as one value: the stable release, the canary, and what every pod runs.

Pure: the BrokerPlugin object, its selected pods and the sidecars' reports in, a
``RolloutView`` out. Used by the gRPC ``GetRollout`` and by the controller to keep
``status.pods``/``podsReady`` current.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from builder.resources import PluginSpec, get_condition
from builder.rollout.canary import PodReport, PodState, pod_state
from builder.rollout.pods import PodInfo

IN_PROGRESS = ("Canary", "Rolling")


@dataclass(frozen=True)
class PodView:
    pod: str
    address: str
    desired_digest: str
    report: PodReport
    state: PodState
    canary: bool
    commit: str
    build: str


@dataclass(frozen=True)
class RolloutView:
    namespace: str
    plugin: str
    plugin_name: str
    desired_image: str
    desired_digest: str
    commit: str
    build: str
    phase: str
    canary_digest: str
    pods: tuple[PodView, ...]
    ready: bool
    reason: str
    message: str
    wave: int = 0
    waves: int = 0

    @property
    def pods_ready(self) -> int:
        wanted = PodState.CURRENT if self.pods_enabled else PodState.DISABLED
        return sum(1 for p in self.pods if p.state is wanted)

    @property
    def pods_enabled(self) -> bool:
        return not any(p.state is PodState.DISABLED for p in self.pods)


def digest_of(image: str) -> str:
    return image.rpartition("@")[2] if "@" in image else ""


def canary_of(status: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(digest, pods holding it) of a rollout in progress, else ("", ())."""
    rollout = status.get("rollout") or {}
    if rollout.get("phase") not in IN_PROGRESS:
        return "", ()
    return str(rollout.get("digest") or ""), tuple(rollout.get("updatedPods")
                                                   or rollout.get("canaryPods") or ())


def reports_for_unready(pods: Sequence[PodInfo]) -> dict[str, PodReport]:
    """Reports standing in for the pods whose sidecars are not asked (not Ready)."""
    return {p.name: PodReport(p.name, p.ip, False, last_error=p.why_not_ready, pod_ready=False)
            for p in pods if not p.ready}


def build_view(obj: Mapping[str, Any], spec: PluginSpec, reports: Mapping[str, PodReport],
               targets: Sequence[PodInfo]) -> RolloutView:
    status = obj.get("status") or {}
    image = str(status.get("currentImage") or "")
    stable = digest_of(image)
    canary_digest, canary_pods = canary_of(status)
    rollout = status.get("rollout") or {}
    pods = []
    for target in targets:
        address = target.address(spec.sidecar_port) if target.ip else ""
        report = reports.get(target.name) or PodReport(target.name, address, False,
                                                       last_error="not asked")
        canary = target.name in canary_pods
        desired = canary_digest if canary else stable
        source = rollout if canary else status
        pods.append(PodView(target.name, address, desired, report,
                            pod_state(report, desired, spec.enabled), canary,
                            str(source.get("commit" if canary else "currentCommit") or ""),
                            str(source.get("build" if canary else "currentBuild") or "")))
    ready = get_condition(status.get("conditions") or [], "Ready") or {}
    return RolloutView(
        namespace=spec.namespace, plugin=spec.name,
        plugin_name=str(status.get("currentPluginName") or spec.name),
        desired_image=image, desired_digest=stable, commit=str(status.get("currentCommit") or ""),
        build=str(status.get("currentBuild") or ""),
        phase=str((status.get("rollout") or {}).get("phase") or "Idle"),
        canary_digest=canary_digest, pods=tuple(pods), ready=ready.get("status") == "True",
        reason=str(ready.get("reason") or ""), message=str(ready.get("message") or ""),
        wave=int(rollout.get("wave") or 0), waves=int(rollout.get("waves") or 0))


def pods_status(view: RolloutView, now: str) -> dict[str, Any]:
    """``status.pods``/``podsReady``/``podsTotal`` for the BrokerPlugin."""
    return {
        "podsReady": view.pods_ready, "podsTotal": len(view.pods),
        "pods": [{"pod": p.pod, "digest": p.report.running_digest,
                  "desiredDigest": p.desired_digest, "configHash": p.report.applied_hash,
                  "commit": p.commit, "build": p.build, "state": p.state.value,
                  "canary": p.canary, "lastError": p.report.last_error[:2000], "time": now}
                 for p in view.pods],
    }
