"""Pure planning of a rollout in waves: the rollout so far + the pods now + their reports → step.

A new release reaches the selected pods wave by wave, each pod through its own per-pod key
(``canary.<pod>.plugin.<name>.yaml``): first the canary (``strategy.canary.count`` pods, when
enabled), then ``strategy.waves.maxUnavailable`` pods at a time, in ``pods.rollout_order``. A wave
passes when each of its pods runs the release with probes passing (``canary.plan_canary``);
the first failing or timed-out wave rolls everything back (the per-pod keys go). Once every
Ready pod holds it, the release becomes the plugin key (promote) and the per-pod keys go.

Pods are taken as they are at each step: a pod that appears mid-rollout reads the stable
release from the plugin key and joins a later wave; one that goes away leaves its wave; a pod
that is not Ready is not put in a wave (it gets the release from the plugin key at promotion),
while a wave pod that stops being Ready is waited for, up to the wave's timeout: a release that
crashes its broker must not pass.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from builder.resources import CanaryStrategy, WaveStrategy
from builder.rollout.canary import PodReport, PodState, StepKind, plan_canary, pod_state
from builder.rollout.pods import PodInfo


@dataclass(frozen=True)
class Progress:
    """How far a rollout got (``status.rollout``): wave number (0 before the first), the
    current wave's pods, every pod handed the release so far, and the wave's age."""

    wave: int
    wave_pods: tuple[str, ...]
    updated: tuple[str, ...]
    wave_seconds: float


class Action(enum.Enum):
    WAIT = "Wait"
    HOLD = "Hold"
    """A wave pod's sidecar refuses its state for another document: no verdict, no timeout."""
    NEXT_WAVE = "NextWave"
    PROMOTE = "Promote"
    ROLLBACK = "Rollback"


@dataclass(frozen=True)
class WavePlan:
    action: Action
    reason: str
    wave_pods: tuple[str, ...] = ()
    """NEXT_WAVE: the pods of the next wave."""
    updated: tuple[str, ...] = ()
    """NEXT_WAVE: every pod that holds the release once the next wave starts."""


def wave_timeout(wave: int, canary: CanaryStrategy, waves: WaveStrategy) -> int:
    return canary.probe_timeout_seconds if wave == 1 and canary.enabled \
        else waves.pod_timeout_seconds


def total_waves(pods: int, canary: CanaryStrategy, waves: WaveStrategy) -> int:
    """How many waves ``pods`` Ready pods take (shown as "wave 2/5")."""
    first = min(pods, canary.count) if canary.enabled else 0
    return (1 if first else 0) + math.ceil((pods - first) / waves.size(pods))


def plan_waves(digest: str, progress: Progress, pods: Sequence[PodInfo],
               reports: Mapping[str, PodReport], hashes: Mapping[str, str],
               canary: CanaryStrategy, waves: WaveStrategy) -> WavePlan:
    """The next step of rolling ``digest`` out to ``pods`` (the selected pods, now)."""
    present = {p.name for p in pods}
    current = tuple(p for p in progress.wave_pods if p in present)
    earlier = [p for p in progress.updated if p in present and p not in current]
    failed = [p for p in earlier if p in reports and
              pod_state(reports[p], digest, True, hashes.get(p, "")) is PodState.FAILED]
    if failed:  # an earlier wave's pod gave up on the release since it passed
        details = "; ".join(f"{p}: {reports[p].phase}: {reports[p].last_error or 'probe failed'}"
                            for p in failed)
        return WavePlan(Action.ROLLBACK, f"wave {progress.wave}: earlier pod failed: {details}")
    if current:
        step = plan_canary(digest, current, reports, progress.wave_seconds,
                           wave_timeout(progress.wave, canary, waves), hashes)
        if step.kind is StepKind.ROLLBACK:
            return WavePlan(Action.ROLLBACK, f"wave {progress.wave} "
                                             f"({_what(progress.wave, canary)}): {step.reason}")
        if step.kind is StepKind.WAIT:
            return WavePlan(Action.WAIT, f"wave {progress.wave}: {step.reason}")
        if step.kind is StepKind.HOLD:
            return WavePlan(Action.HOLD, f"wave {progress.wave}: {step.reason}")
    handed = set(progress.updated)
    ready = [p.name for p in pods if p.ready and p.name not in handed]
    skipped = [p for p in pods if not p.ready and p.name not in handed]
    if not ready:
        if progress.wave == 0 and skipped:
            return WavePlan(Action.WAIT, "waiting for a Ready pod to start with ("
                            + ", ".join(f"{p.name}: {p.why_not_ready}" for p in skipped) + ")")
        note = (f"; not Ready, so they get it from the plugin key: "
                f"{', '.join(p.name for p in skipped)}" if skipped else "")
        if progress.wave == 0:
            return WavePlan(Action.PROMOTE, "no pod matches the selector yet: the release is "
                                            "the plugin key for the pods to come" + note)
        return WavePlan(Action.PROMOTE, f"all {len(handed & present)} Ready pods run "
                                        f"{_short(digest)} with probes passing after "
                                        f"{progress.wave} wave(s){note}")
    size = canary.count if progress.wave == 0 and canary.enabled \
        else waves.size(len(pods))
    nxt = tuple(ready[:size])
    kept = tuple(p for p in progress.updated if p in present)
    return WavePlan(Action.NEXT_WAVE, f"wave {progress.wave + 1} "
                                      f"({_what(progress.wave + 1, canary)}): "
                                      f"{', '.join(nxt)}", nxt, kept + nxt)


def _what(wave: int, canary: CanaryStrategy) -> str:
    return "canary" if wave == 1 and canary.enabled else "pods"


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
