"""Following a plugin's rollout on its pods: advance its waves, keep per-pod status current.

Finds the pods (``podwatch``), asks their sidecars (``sidecars``), decides with the pure
``waves`` and ``view``, writes through ``configmap`` and the controller's status patch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from builder.kube import Kube
from builder.resources import PluginSpec, get_condition, parse_time, rfc3339, set_condition
from builder.rollout import configmap as rollout
from builder.rollout.canary import PodReport
from builder.rollout.pods import PodInfo
from builder.rollout.podwatch import PodCache
from builder.rollout.sidecars import SidecarClient
from builder.rollout.view import IN_PROGRESS, build_view, pods_status, reports_for_unready
from builder.rollout.waves import Action, Progress, WavePlan, plan_waves, total_waves
from plugforge.contract import PluginRelease

log = logging.getLogger(__name__)
Obj = dict[str, Any]
POLL_SECONDS = 0.25
"""How often a rollout in progress asks its wave's sidecars (pod events also wake it)."""


def report_reverted(event: Callable[[Obj, str, str, str], None], obj: Obj | None,
                    spec: PluginSpec, keys: Sequence[str]) -> None:
    """Say (a log line and a Warning Event, once: the next write finds its own value) that a
    write put back keys someone had edited directly in the ConfigMap."""
    if not keys:
        return
    note = rollout.reverted_note(spec, keys)
    log.warning("%s: %s", spec.key, note)
    if obj is not None:
        event(obj, "Warning", "ConfigMapEditReverted", note)


def ask(sidecars: SidecarClient, spec: PluginSpec, pods: Sequence[PodInfo],
        plugin: str) -> dict[str, PodReport]:
    """The Ready pods' sidecars' reports, and stand-ins saying why the others were not asked."""
    reports = sidecars.gather([(p.name, p.address(spec.sidecar_port)) for p in pods if p.ready],
                              spec.namespace, plugin)
    return {**reports, **reports_for_unready(pods)}


class RolloutTracker:
    def __init__(self, kube: Kube, sidecars: SidecarClient, pods: PodCache,
                 now: Callable[[], datetime],
                 patch_status: Callable[[PluginSpec, Mapping[str, Any]], None],
                 event: Callable[[Obj, str, str, str], None]) -> None:
        self.kube = kube
        self.sidecars = sidecars
        self.pods = pods
        self.now = now
        self._patch_status = patch_status
        self._event = event

    def begin(self, spec: PluginSpec, release: PluginRelease, build: str,
              digest: str) -> Obj | None:
        """Start rolling ``release`` out in waves; the ``status.rollout`` to record, or None
        when no pod matches the selector (the caller writes the plugin key directly)."""
        pods = self.pods.pods_for(spec)
        if not pods:
            return None
        # Claims the key, drops leftovers.
        reverted = rollout.start_canary(self.kube, spec, (), release)
        if reverted:
            report_reverted(self._event, self.kube.get_plugin(spec.namespace, spec.name), spec,
                            reverted)
        stamp = rfc3339(self.now())
        return {"phase": "Canary" if spec.canary.enabled else "Rolling",
                "image": release.image, "digest": digest, "commit": release.source.commit,
                "build": build, "pluginName": release.name, "wave": 0,
                "waves": total_waves(sum(p.ready for p in pods), spec.canary, spec.waves),
                "wavePods": [], "updatedPods": [], "canaryPods": [], "startedAt": stamp,
                "waveStartedAt": stamp, "finishedAt": None,
                "message": f"rolling out to {len(pods)} pod(s) in waves"}

    def track(self, obj: Obj, spec: PluginSpec) -> float | None:
        """Ask the plugin's sidecars what they run: advance the rollout (next wave, promote,
        roll back), keep ``status.pods``/``podsReady``/``Ready`` current. Returns when to look
        again (None: on pod and plugin events only)."""
        status = dict(obj.get("status") or {})
        current = dict(status.get("rollout") or {})
        in_progress = current.get("phase") in IN_PROGRESS
        if spec.selector is None and not in_progress:
            self.pods.forget(spec.key)
            return None
        name = str(current.get("pluginName") or status.get("currentPluginName") or spec.name)
        pods = self.pods.pods_for(spec)
        reports = ask(self.sidecars, spec, pods, name)
        now = self.now()
        stamp = rfc3339(now)
        conditions = list(status.get("conditions") or [])
        patch: Obj = {}
        again: float | None = None
        if in_progress:
            again = POLL_SECONDS
            plan = self._plan(spec, current, pods, reports, now)
            if current.get("heldSince") and plan.action is not Action.HOLD:
                # The hold is over: the wave's timeout starts again from now.
                current = {**current, "heldSince": None, "waveStartedAt": stamp}
                patch["rollout"] = current
                log.info("%s: hold over: %s", spec.key, plan.reason)
            if plan.action is Action.HOLD:
                if not current.get("heldSince") or current.get("message") != plan.reason[:4000]:
                    patch["rollout"] = {**current, "message": plan.reason[:4000],
                                        "heldSince": current.get("heldSince") or stamp}
                    conditions = set_condition(
                        conditions, "Ready", "Unknown", "RolloutHeld",
                        f"wave {current.get('wave')}/{current.get('waves')} of "
                        f"{current.get('image')}: {plan.reason}"[:4000], stamp, spec.generation)
                if not current.get("heldSince"):
                    self._event(obj, "Warning", "RolloutHeld", plan.reason[:1000])
                    log.warning("%s: %s", spec.key, plan.reason)
            elif plan.action is Action.NEXT_WAVE:
                report_reverted(self._event, obj, spec, rollout.start_canary(
                    self.kube, spec, plan.updated, self._release(spec, current)))
                wave = int(current.get("wave") or 0) + 1
                patch["rollout"] = {
                    **current, "wave": wave, "wavePods": list(plan.wave_pods),
                    "updatedPods": list(plan.updated), "waveStartedAt": stamp,
                    "waves": max(wave, total_waves(sum(p.ready for p in pods), spec.canary,
                                                   spec.waves)),
                    "phase": "Canary" if wave == 1 and spec.canary.enabled else "Rolling",
                    "message": plan.reason,
                    **({"canaryPods": list(plan.wave_pods)} if wave == 1 else {})}
                log.info("%s: %s", spec.key, plan.reason)
                again = 0.0
            elif plan.action is Action.PROMOTE:
                release = self._release(spec, current)
                report_reverted(self._event, obj, spec, rollout.promote(self.kube, spec, release))
                patch.update(currentImage=release.image, currentCommit=release.source.commit,
                             currentBuild=release.source.build, currentPluginName=name,
                             currentTarget=spec.configmap,
                             rollout={**current, "phase": "Complete", "finishedAt": stamp,
                                      "wavePods": [], "message": plan.reason[:4000]})
                conditions = set_condition(conditions, "Ready", "True", "RolledOut",
                                           f"{release.image}: {plan.reason}", stamp,
                                           spec.generation)
                self._event(obj, "Normal", "RolloutComplete", f"{release.image}: {plan.reason}")
                log.info("%s: %s; promoted", spec.key, plan.reason)
            elif plan.action is Action.ROLLBACK:
                report_reverted(self._event, obj, spec,
                                rollout.abort_canary(self.kube, spec, name))
                stable = status.get("currentImage") or "no release"
                message = (f"{current.get('image')} (build {current.get('build')}, commit "
                           f"{str(current.get('commit'))[:12]}) rolled back: {plan.reason}; "
                           f"{stable} stays on every pod")
                patch["rollout"] = {**current, "phase": "RolledBack", "finishedAt": stamp,
                                    "message": plan.reason[:4000]}
                conditions = set_condition(conditions, "Ready", "False", "CanaryFailed",
                                           message, stamp, spec.generation)
                self._event(obj, "Warning", "CanaryFailed", message)
                log.warning("%s: %s", spec.key, message)
            elif current.get("message") != plan.reason[:4000]:
                patch["rollout"] = {**current, "message": plan.reason[:4000]}
                conditions = set_condition(
                    conditions, "Ready", "Unknown", "RolloutInProgress",
                    f"wave {current.get('wave')}/{current.get('waves')}: {plan.reason}"[:4000],
                    stamp, spec.generation)
        merged = {**status, **patch, "conditions": conditions}
        view = build_view({"status": merged}, spec, reports, pods)
        pod_status = pods_status(view, stamp)
        ready = get_condition(conditions, "Ready") or {}
        if (merged.get("rollout") or {}).get("phase") not in IN_PROGRESS and \
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

    def _plan(self, spec: PluginSpec, current: Mapping[str, Any], pods: Sequence[PodInfo],
              reports: Mapping[str, PodReport], now: datetime) -> WavePlan:
        if not spec.uses_canary:  # selector or Automatic turned off mid-rollout: no gate left
            return WavePlan(Action.PROMOTE, "staged rollout turned off")
        wave_pods = tuple(current.get("wavePods") or ())
        # While held, no time counts against the wave; it starts afresh when the hold ends.
        started = now if current.get("heldSince") else \
            parse_time(current.get("waveStartedAt")) or now
        progress = Progress(int(current.get("wave") or 0), wave_pods,
                            tuple(current.get("updatedPods") or ()),
                            (now - started).total_seconds())
        hashes = rollout.expected_hashes(self.kube, spec, progress.updated) \
            if progress.updated else {}
        return plan_waves(str(current.get("digest")), progress, pods, reports, hashes,
                          spec.canary, spec.waves)

    @staticmethod
    def _release(spec: PluginSpec, current: Mapping[str, Any]) -> PluginRelease:
        return rollout.current_release(spec, str(current.get("pluginName") or spec.name),
                                       str(current["image"]), str(current.get("commit") or ""),
                                       str(current.get("build") or ""))


def _without_time(status: Mapping[str, Any]) -> tuple[Any, ...]:
    pods = [{k: v for k, v in p.items() if k != "time"} for p in status.get("pods") or []]
    return status.get("podsReady"), status.get("podsTotal"), pods
