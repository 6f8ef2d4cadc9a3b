"""Following a plugin's rollout on its pods: advance a canary, keep per-pod status current.

Asks the sidecars (``sidecars``), decides with the pure ``canary`` and ``view``, writes through
``configmap`` and the controller's status patch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from builder.kube import Kube
from builder.resources import PluginSpec, get_condition, parse_time, rfc3339, set_condition
from builder.rollout import configmap as rollout
from builder.rollout.canary import Step, StepKind, plan_canary
from builder.rollout.sidecars import SidecarClient
from builder.rollout.view import build_view, pods_status

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class RolloutTracker:
    def __init__(self, kube: Kube, sidecars: SidecarClient, now: Callable[[], datetime],
                 patch_status: Callable[[PluginSpec, Mapping[str, Any]], None],
                 event: Callable[[Obj, str, str, str], None]) -> None:
        self.kube = kube
        self.sidecars = sidecars
        self.now = now
        self._patch_status = patch_status
        self._event = event

    def track(self, obj: Obj, spec: PluginSpec) -> float | None:
        """Ask the plugin's sidecars what they run: advance a canary (wait, promote, roll
        back), keep ``status.pods``/``podsReady``/``Ready`` current. Returns when to look again.
        """
        status = dict(obj.get("status") or {})
        canary = dict(status.get("rollout") or {})
        if not spec.sidecars and canary.get("phase") != "Canary":
            return None
        name = str(canary.get("pluginName") or status.get("currentPluginName") or spec.name)
        reports = self.sidecars.gather(spec.sidecars, name)
        now = self.now()
        stamp = rfc3339(now)
        conditions = list(status.get("conditions") or [])
        patch: Obj = {}
        again: float | None = None
        if canary.get("phase") == "Canary":
            pods = tuple(canary.get("canaryPods") or ())
            started = parse_time(canary.get("startedAt")) or now
            step = plan_canary(str(canary.get("digest")), pods, reports,
                               (now - started).total_seconds(),
                               spec.canary.probe_timeout_seconds,
                               rollout.expected_hashes(self.kube, spec, pods))
            if not spec.uses_canary:  # the strategy was turned off mid-canary: no gate left
                step = Step(StepKind.PROMOTE, "canary strategy turned off")
            again = 0.5
            if step.kind is StepKind.PROMOTE:
                image = str(canary["image"])
                release = rollout.current_release(spec, name, image,
                                                  str(canary.get("commit") or ""),
                                                  str(canary.get("build") or ""))
                rollout.promote(self.kube, spec, release)
                patch.update(currentImage=image, currentCommit=canary.get("commit"),
                             currentBuild=canary.get("build"), currentPluginName=name,
                             currentTarget=spec.configmap,
                             rollout={**canary, "phase": "Complete", "finishedAt": stamp,
                                      "message": step.reason})
                conditions = set_condition(
                    conditions, "Ready", "True", "RolledOut",
                    f"{image}: {step.reason}; fanned out to all {len(spec.sidecars)} pods",
                    stamp, spec.generation)
                self._event(obj, "Normal", "CanaryPromoted", f"{image}: {step.reason}")
                log.info("%s: %s; fanned out", spec.key, step.reason)
            elif step.kind is StepKind.ROLLBACK:
                rollout.abort_canary(self.kube, spec, name)
                stable = status.get("currentImage") or "no release"
                message = (f"{canary.get('image')} (build {canary.get('build')}, commit "
                           f"{str(canary.get('commit'))[:12]}) rolled back: {step.reason}; "
                           f"{stable} stays on every pod")
                patch["rollout"] = {**canary, "phase": "RolledBack", "finishedAt": stamp,
                                    "message": step.reason[:4000]}
                conditions = set_condition(conditions, "Ready", "False", "CanaryFailed",
                                           message, stamp, spec.generation)
                self._event(obj, "Warning", "CanaryFailed", message)
                log.warning("%s: %s", spec.key, message)
        merged = {**status, **patch, "conditions": conditions}
        view = build_view({"status": merged}, spec, reports)
        pod_status = pods_status(view, stamp)
        ready = get_condition(conditions, "Ready") or {}
        if (merged.get("rollout") or {}).get("phase") != "Canary" and \
                ready.get("reason") in ("RolledOut", "PodsNotReady") and view.desired_image:
            total = len(view.pods)
            if view.pods_ready == total:
                if ready.get("reason") == "PodsNotReady":
                    conditions = set_condition(
                        conditions, "Ready", "True", "RolledOut",
                        f"{view.desired_image} runs on all {total} pods", stamp,
                        spec.generation)
            else:
                behind = "; ".join(f"{p.pod}: {p.state.value}"
                                   + (f" ({p.report.last_error})" if p.report.last_error else "")
                                   for p in view.pods if p.state.value not in
                                   ("Current", "Disabled"))
                conditions = set_condition(
                    conditions, "Ready", "False", "PodsNotReady",
                    f"{view.pods_ready}/{total} pods run {view.desired_image}: {behind}"[:4000],
                    stamp, spec.generation)
                again = again or 2.0
        if patch or conditions != list(status.get("conditions") or []) or \
                _without_time(pod_status) != _without_time(status):
            patch.update(pod_status)
            patch["conditions"] = conditions
            self._patch_status(spec, patch)
        return again



def _without_time(status: Mapping[str, Any]) -> tuple[Any, ...]:
    pods = [{k: v for k, v in p.items() if k != "time"} for p in status.get("pods") or []]
    return status.get("podsReady"), status.get("podsTotal"), pods
