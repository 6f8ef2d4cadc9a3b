"""Pure judgement of one wave of a rollout: desired digest + what each pod reports → next step.

The tracker writes the new release under ``canary.<pod>.plugin.<name>.yaml`` for a wave's pods
(``waves``), asks their sidecars (GetState) on every reconcile, and performs what
``plan_canary`` decides for the wave: wait, pass (promote, or on to the next wave), or roll back
(remove the per-pod keys; those pods return to the stable release, the others never saw it).

A release is judged on what is its own: a sidecar that refuses the whole desired state for
another document (an operator's broken broker.yaml, another plugin's key; ``failed_keys``)
has not tried this release, so the wave holds, saying why, and resumes with a fresh timeout
once that is fixed. Rolling back would blame the plugin; promoting would skip the test.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from plugforge.contract import plugin_key

# Sidecar phases that mean "applying the desired state failed" (sidecar.state.Phase values).
# Verdicts on a release. "Failed" is not one: the sidecar retries a failed apply with backoff
# (e.g. the registry briefly unreachable while pulling, nothing changed), so the canary waits
# for it, up to the canary's timeout.
FAILED_PHASES = ("RolledBack", "Rejected")


@dataclass(frozen=True)
class PodReport:
    """One sidecar's GetState, reduced to one plugin."""

    pod: str
    address: str
    reachable: bool
    phase: str = ""
    """The sidecar's phase: Pending, Applied, RestartRequired, Rejected, RolledBack, ..."""
    last_error: str = ""
    desired_digest: str = ""
    """The digest the sidecar has been asked to run ("" if the plugin is not in its state)."""
    running_digest: str = ""
    status: str = ""
    """The plugin's status on the broker: Running, Staged, Disabled, Missing, ProbeFailed."""
    probe_results: tuple[str, ...] = ()
    applied_hash: str = ""
    desired_hash: str = ""
    """Content hash of the desired state the sidecar currently works on."""
    failed_hash: str = ""
    """Content hash of the desired state whose last apply failed ("" after a success)."""
    pod_ready: bool = True
    """False: the kubelet does not call the pod Ready, so its sidecar was not asked."""
    failed_keys: tuple[str, ...] = ()
    """The documents the sidecar attributes its failure to (() when it cannot say)."""
    plugin: str = ""
    """The plugin name this report is reduced to."""

    @property
    def failed_elsewhere(self) -> bool:
        """The sidecar's failure is attributed to documents, none of them this plugin's."""
        return bool(self.failed_keys and self.plugin) and \
            plugin_key(self.plugin) not in self.failed_keys


class PodState(enum.Enum):
    CURRENT = "Current"
    UPDATING = "Updating"
    FAILED = "Failed"
    UNREACHABLE = "Unreachable"
    DISABLED = "Disabled"
    NOT_READY = "NotReady"


def pod_state(report: PodReport, expected_digest: str, enabled: bool = True,
              expected_hash: str = "") -> PodState:
    """Where ``report``'s pod stands with respect to running ``expected_digest``.

    ``expected_hash`` is the content hash of the desired state the pod should see (its view of
    the ConfigMap): after a failed apply a sidecar reports its plugins against the last good
    state, so "it tried our release and rolled back" shows as a failed phase while working on
    exactly that hash; and it is current only once it applied exactly that hash (a release that
    changes settings but not the digest looks "running" before the sidecar even read it).
    """
    if not report.pod_ready:
        return PodState.NOT_READY
    if not report.reachable:
        return PodState.UNREACHABLE
    if not enabled:
        return PodState.DISABLED if report.status in ("Disabled", "") and \
            not report.running_digest else PodState.UPDATING
    if expected_hash:
        # The hash alone says the failure is of our state: the digest may equal an earlier
        # release's (a settings change), and the sidecar names its new desired hash before it
        # has applied it, while phase and error still tell of the previous attempt.
        if report.failed_hash == expected_hash and report.phase in FAILED_PHASES and \
                not report.failed_elsewhere:
            return PodState.FAILED
        asked = report.desired_hash == expected_hash
    else:
        asked = report.desired_digest == expected_digest
        if asked and (report.status == "ProbeFailed" or (
                report.phase in FAILED_PHASES and not report.failed_elsewhere)):
            return PodState.FAILED
    applied = not expected_hash or report.applied_hash == expected_hash
    if asked and applied and report.running_digest == expected_digest and \
            report.status == "Running" and report.phase == "Applied":
        return PodState.CURRENT
    return PodState.UPDATING


def held_by(report: PodReport, expected_hash: str = "") -> str:
    """Why ``report``'s pod cannot try the release: its sidecar refused the state it should
    apply for other documents ("" when it is not held)."""
    if report.phase not in FAILED_PHASES or not report.failed_elsewhere:
        return ""
    if expected_hash and report.failed_hash != expected_hash:
        return ""
    return (f"{report.pod}: {report.phase} for {', '.join(report.failed_keys)}: "
            f"{report.last_error or 'no detail'}")


class StepKind(enum.Enum):
    WAIT = "Wait"
    HOLD = "Hold"
    PROMOTE = "Promote"
    ROLLBACK = "Rollback"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    reason: str


def plan_canary(digest: str, canaries: Sequence[str], reports: Mapping[str, PodReport],
                elapsed_seconds: float, timeout_seconds: float,
                expected_hashes: Mapping[str, str] | None = None) -> Step:
    """The next step of a canary of ``digest`` on ``canaries`` after ``elapsed_seconds``.

    A failure reported by any canary rolls back at once; a canary whose sidecar refuses the
    state for another document holds the wave (no timeout); promotion needs every canary running
    the digest with probes passing; anything else waits until ``timeout_seconds``.
    """
    hashes = expected_hashes or {}
    states = {pod: (pod_state(reports[pod], digest, True, hashes.get(pod, ""))
                    if pod in reports else PodState.UNREACHABLE) for pod in canaries}
    failed = [pod for pod in canaries if states[pod] is PodState.FAILED]
    if failed:
        details = "; ".join(f"{pod}: {reports[pod].phase}: "
                            f"{reports[pod].last_error or 'probe failed'}" for pod in failed)
        return Step(StepKind.ROLLBACK, f"canary failed on {details}")
    held = [why for pod in canaries if states[pod] is PodState.UPDATING and pod in reports
            for why in [held_by(reports[pod], hashes.get(pod, ""))] if why]
    if held:  # not this release's failure, nor a chance to test it: no timeout either
        return Step(StepKind.HOLD, "held, the release untried: " + "; ".join(held)
                    + "; the canary goes on once that is fixed")
    if all(state is PodState.CURRENT for state in states.values()):
        return Step(StepKind.PROMOTE, f"canary {', '.join(canaries)} runs {_short(digest)} "
                                      "with probes passing")
    waiting = ", ".join(f"{pod} {states[pod].value}" for pod in canaries
                        if states[pod] is not PodState.CURRENT)
    if elapsed_seconds >= timeout_seconds:
        return Step(StepKind.ROLLBACK, f"canary did not run {_short(digest)} with probes "
                                       f"passing within {timeout_seconds:g}s ({waiting})")
    return Step(StepKind.WAIT, f"waiting for canary ({waiting})")


def count_ready(reports: Mapping[str, PodReport], desired: Mapping[str, str],
                enabled: bool = True) -> int:
    """Pods whose state is Current (Disabled when disabled) for the digest asked of them."""
    target = PodState.CURRENT if enabled else PodState.DISABLED
    return sum(1 for pod, report in reports.items()
               if pod_state(report, desired.get(pod, ""), enabled) is target)


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
