"""Pure canary planning (builder/rollout/canary.py): every pod state and every step, no I/O."""

from __future__ import annotations

import pytest

from builder.rollout.canary import (
    PodReport,
    PodState,
    StepKind,
    count_ready,
    plan_canary,
    pod_state,
)

OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64


def report(pod: str = "mq-0", *, reachable: bool = True, phase: str = "Applied",
           desired: str = NEW, running: str = NEW, status: str = "Running",
           error: str = "") -> PodReport:
    return PodReport(pod, f"{pod}:9090", reachable, phase=phase, last_error=error,
                     desired_digest=desired, running_digest=running, status=status)


@pytest.mark.parametrize(("rep", "state"), [
    (report(), PodState.CURRENT),
    (report(reachable=False), PodState.UNREACHABLE),
    # Asked for NEW, still running OLD: pulling, restarting or probing.
    (report(running=OLD, phase="Pending"), PodState.UPDATING),
    (report(running=OLD, phase="RestartRequired", status="Staged"), PodState.UPDATING),
    # Not asked for NEW yet (the ConfigMap has not reached it): a stale RolledBack is not ours.
    (report(desired=OLD, running=OLD, phase="RolledBack"), PodState.UPDATING),
    (report(running=OLD, phase="RolledBack", error="probe alice-accepted failed"),
     PodState.FAILED),
    # Failed: the sidecar retries it (nothing rolled back): a verdict only at the timeout.
    (report(running=OLD, phase="Failed"), PodState.UPDATING),
    (report(running=OLD, phase="Rejected"), PodState.FAILED),
    (report(status="ProbeFailed"), PodState.FAILED),
    # Runs NEW but the sidecar is mid-apply: not yet current.
    (report(phase="Pending"), PodState.UPDATING),
])
def test_pod_state(rep: PodReport, state: PodState) -> None:
    assert pod_state(rep, NEW) is state


def test_disabled_plugin_states() -> None:
    assert pod_state(report(running="", status="Disabled"), NEW, enabled=False) \
        is PodState.DISABLED
    assert pod_state(report(), NEW, enabled=False) is PodState.UPDATING  # still loaded


def test_choose_canaries_is_stable_and_bounded() -> None:
    from builder.rollout.pods import PodInfo, choose_canaries

    def pods(*names: str) -> list[PodInfo]:
        return [PodInfo(n, ready=True, ordinal=int(n[-1]), created=f"t{9 - int(n[-1])}")
                for n in names]

    assert choose_canaries(pods("mq-2", "mq-0", "mq-1"), 1) == ("mq-0",)
    assert choose_canaries(pods("mq-2", "mq-0", "mq-1"), 2) == ("mq-0", "mq-1")
    assert choose_canaries(pods("mq-0"), 5) == ("mq-0",)
    assert choose_canaries(pods("mq-1", "mq-0"), 0) == ("mq-0",)


def test_promote_when_every_canary_is_current() -> None:
    step = plan_canary(NEW, ("mq-0",), {"mq-0": report()}, 1.0, 60)
    assert step.kind is StepKind.PROMOTE and "mq-0" in step.reason


def test_wait_while_updating_then_timeout_rolls_back() -> None:
    reports = {"mq-0": report(running=OLD, phase="Pending")}
    assert plan_canary(NEW, ("mq-0",), reports, 59.9, 60).kind is StepKind.WAIT
    step = plan_canary(NEW, ("mq-0",), reports, 60.0, 60)
    assert step.kind is StepKind.ROLLBACK
    assert "within 60s" in step.reason and "mq-0 Updating" in step.reason


def test_failure_rolls_back_at_once_with_the_error() -> None:
    reports = {"mq-0": report(running=OLD, phase="RolledBack",
                              error="probe alice-accepted: expected accepted, got refused")}
    step = plan_canary(NEW, ("mq-0",), reports, 0.1, 60)
    assert step.kind is StepKind.ROLLBACK
    assert "mq-0: RolledBack: probe alice-accepted" in step.reason


def test_one_failed_canary_of_two_rolls_back_even_if_the_other_is_current() -> None:
    reports = {"mq-0": report(), "mq-1": report("mq-1", running=OLD, phase="RolledBack",
                                                error="boom")}
    step = plan_canary(NEW, ("mq-0", "mq-1"), reports, 0.1, 60)
    assert step.kind is StepKind.ROLLBACK and "mq-1" in step.reason and "mq-0:" not in step.reason


def test_unreachable_or_unreported_canary_waits_then_times_out() -> None:
    reports = {"mq-0": report(reachable=False, error="UNAVAILABLE")}
    assert plan_canary(NEW, ("mq-0",), reports, 1, 60).kind is StepKind.WAIT
    assert plan_canary(NEW, ("mq-0",), {}, 1, 60).kind is StepKind.WAIT
    step = plan_canary(NEW, ("mq-0",), {}, 61, 60)
    assert step.kind is StepKind.ROLLBACK and "Unreachable" in step.reason


def test_count_ready_uses_each_pods_own_desired_digest() -> None:
    reports = {"mq-0": report(), "mq-1": report("mq-1", desired=OLD, running=OLD),
               "mq-2": report("mq-2", reachable=False)}
    assert count_ready(reports, {"mq-0": NEW, "mq-1": OLD, "mq-2": OLD}) == 2
    assert count_ready(reports, {"mq-0": OLD, "mq-1": OLD, "mq-2": OLD}) == 1


def test_a_rolled_back_apply_of_our_desired_state_is_a_failure() -> None:
    # After a failed apply the sidecar reports plugins against its last good state (OLD); its
    # desired_hash still names the state with our release in it.
    rep = PodReport("mq-0", "a", True, phase="RolledBack", last_error="probe failed",
                    desired_digest=OLD, running_digest=OLD, status="Running",
                    desired_hash="sha256:ours", applied_hash="sha256:old",
                    failed_hash="sha256:ours")
    assert pod_state(rep, NEW, True, "sha256:ours") is PodState.FAILED
    assert pod_state(rep, NEW, True, "sha256:other") is PodState.UPDATING
    step = plan_canary(NEW, ("mq-0",), {"mq-0": rep}, 1, 60, {"mq-0": "sha256:ours"})
    assert step.kind is StepKind.ROLLBACK and "probe failed" in step.reason


def test_current_only_once_the_expected_state_is_applied() -> None:
    # Same digest, new settings: running the digest is not enough, the state must be applied.
    rep = PodReport("mq-0", "a", True, phase="Applied", desired_digest=NEW, running_digest=NEW,
                    status="Running", desired_hash="sha256:old", applied_hash="sha256:old")
    assert pod_state(rep, NEW, True, "sha256:new") is PodState.UPDATING
    assert plan_canary(NEW, ("mq-0",), {"mq-0": rep}, 1, 60,
                       {"mq-0": "sha256:new"}).kind is StepKind.WAIT
    done = PodReport("mq-0", "a", True, phase="Applied", desired_digest=NEW,
                     running_digest=NEW, status="Running", desired_hash="sha256:new",
                     applied_hash="sha256:new")
    assert plan_canary(NEW, ("mq-0",), {"mq-0": done}, 1, 60,
                       {"mq-0": "sha256:new"}).kind is StepKind.PROMOTE


def test_an_earlier_failure_with_the_same_digest_is_not_ours() -> None:
    # A settings-only canary after a failed one: same digest, the sidecar has not read the new
    # state yet and still reports the old failure.
    stale = PodReport("mq-0", "a", True, phase="RolledBack", last_error="old failure",
                      desired_digest=NEW, running_digest=NEW, status="Running",
                      desired_hash="sha256:bad-settings", applied_hash="sha256:good",
                      failed_hash="sha256:bad-settings")
    assert pod_state(stale, NEW, True, "sha256:undo") is PodState.UPDATING
    assert plan_canary(NEW, ("mq-0",), {"mq-0": stale}, 1, 60,
                       {"mq-0": "sha256:undo"}).kind is StepKind.WAIT


def test_a_new_desired_hash_with_an_old_failure_is_still_updating() -> None:
    # The sidecar names the new desired hash as it starts applying; phase and error are the
    # previous attempt's until it finishes.
    applying = PodReport("mq-0", "a", True, phase="RolledBack", last_error="old failure",
                         desired_digest=NEW, running_digest=NEW, status="Running",
                         desired_hash="sha256:undo", applied_hash="sha256:good",
                         failed_hash="sha256:bad-settings")
    assert pod_state(applying, NEW, True, "sha256:undo") is PodState.UPDATING


def test_rollout_view_gives_canary_pods_the_canarys_provenance() -> None:
    from builder.resources import parse_plugin
    from builder.rollout.view import build_view, pods_status

    obj = {"metadata": {"namespace": "ns", "name": "gate"},
           "spec": {"broker": "mosquitto", "source": {"git": {"url": "https://g/x.git"}},
                    "image": {"repository": "r/x"},
                    "target": {"configMap": "cm", "selector": {"matchLabels": {"app": "mq"}}}},
           "status": {"currentImage": f"r/x@{OLD}", "currentCommit": "c1", "currentBuild": "b1",
                      "rollout": {"phase": "Canary", "digest": NEW, "commit": "c2",
                                  "build": "b2", "canaryPods": ["mq-0"]}}}
    reports = {"mq-0": report("mq-0"), "mq-1": report("mq-1", desired=OLD, running=OLD)}
    from builder.rollout.pods import PodInfo

    targets = [PodInfo(n, {"app": "mq"}, ip, True) for n, ip in (("mq-0", "10.0.0.1"),
                                                              ("mq-1", "10.0.0.2"))]
    view = build_view(obj, parse_plugin(obj), reports, targets)
    assert view.phase == "Canary" and view.canary_digest == NEW and view.desired_digest == OLD
    pods = pods_status(view, "2026-01-01T00:00:00Z")
    assert pods["podsReady"] == 2 and pods["podsTotal"] == 2
    assert [(p["pod"], p["canary"], p["desiredDigest"], p["commit"], p["build"])
            for p in pods["pods"]] == [("mq-0", True, NEW, "c2", "b2"),
                                       ("mq-1", False, OLD, "c1", "b1")]


def test_a_canary_the_sidecar_is_retrying_waits_then_times_out() -> None:
    reports = {"mq-0": report(running=OLD, phase="Failed",
                              error="SignatureUnavailable: cannot reach registry; retry later")}
    assert plan_canary(NEW, ("mq-0",), reports, 1, 60).kind is StepKind.WAIT
    step = plan_canary(NEW, ("mq-0",), reports, 61, 60)
    assert step.kind is StepKind.ROLLBACK and "60s" in step.reason


def rejected(keys: tuple[str, ...], *, plugin: str = "gate", failed: str = "sha256:ours",
             phase: str = "Rejected") -> PodReport:
    """The sidecar refused the whole state with our release in it, for ``keys``."""
    return PodReport("mq-0", "a", True, phase=phase, last_error="broker.yaml: not valid YAML",
                     desired_digest=NEW, running_digest=OLD, status="Missing",
                     desired_hash="sha256:ours", applied_hash="sha256:old", failed_hash=failed,
                     failed_keys=keys, plugin=plugin)


def test_a_rejection_for_broker_yaml_holds_the_canary_without_a_timeout() -> None:
    rep = rejected(("broker.yaml",))
    assert rep.failed_elsewhere
    assert pod_state(rep, NEW, True, "sha256:ours") is PodState.UPDATING
    for elapsed in (1, 61, 10_000):  # no verdict: neither a failure nor a timeout
        step = plan_canary(NEW, ("mq-0",), {"mq-0": rep}, elapsed, 60, {"mq-0": "sha256:ours"})
        assert step.kind is StepKind.HOLD
    assert "mq-0: Rejected for broker.yaml: broker.yaml: not valid YAML" in step.reason
    # Without hashes (the ConfigMap unreadable) the same report holds too.
    assert plan_canary(NEW, ("mq-0",), {"mq-0": rep}, 61, 60).kind is StepKind.HOLD


def test_another_plugins_key_holds_but_our_own_key_fails() -> None:
    assert plan_canary(NEW, ("mq-0",), {"mq-0": rejected(("plugin.other.yaml",))}, 1, 60,
                       {"mq-0": "sha256:ours"}).kind is StepKind.HOLD
    for keys in (("plugin.gate.yaml",), ("broker.yaml", "plugin.gate.yaml"), ()):
        rep = rejected(keys, phase="RolledBack")
        assert pod_state(rep, NEW, True, "sha256:ours") is PodState.FAILED, keys
        assert plan_canary(NEW, ("mq-0",), {"mq-0": rep}, 1, 60,
                           {"mq-0": "sha256:ours"}).kind is StepKind.ROLLBACK
    # A sidecar that does not attribute (older, or a conflict between keys): as before.
    assert not rejected((), plugin="gate").failed_elsewhere


def test_a_hold_needs_the_rejection_to_be_of_our_state() -> None:
    # An older rejection (another hash) is no hold: the pod is only updating, and times out.
    old = rejected(("broker.yaml",), failed="sha256:older")
    assert plan_canary(NEW, ("mq-0",), {"mq-0": old}, 1, 60,
                       {"mq-0": "sha256:ours"}).kind is StepKind.WAIT
    # A genuine failure on one canary still rolls back while another is held.
    reports = {"mq-0": rejected(("broker.yaml",)),
               "mq-1": report("mq-1", running=OLD, phase="RolledBack", error="probe failed")}
    assert plan_canary(NEW, ("mq-0", "mq-1"), reports, 1, 60).kind is StepKind.ROLLBACK
