"""Broker pods found by label selector, rolled out to in waves (issue 20).

The pure part first (``builder.rollout.pods`` and ``waves``: every decision, no I/O). Then the
real thing: Pods created through the real apiserver with the status a kubelet would write
(phase, podIP, Ready, via the status subresource; there is no kubelet here), behind each pod IP
(127.0.10.N on loopback) a real mosquitto with a real sidecar (API mode, gRPC over TLS with a
token), and the real builder watching the pods. The pods are Deployment-style (random names,
a ReplicaSet owner): the canary is the oldest Ready pod.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builder_support import (
    Cluster,
    broker_plugin,
    install,
    scaffold_repo,
    tenant_namespace,
    wait_for,
)
from grpc_support import SIDECAR_TOKEN, Api, rollout_builder_api

from builder.resources import CanaryStrategy, WaveStrategy
from builder.rollout.canary import PodReport
from builder.rollout.pods import PodInfo, choose_canaries, pod_info, rollout_order
from builder.rollout.waves import Action, Progress, plan_waves, total_waves
from plugforge.cli import main as plugforge
from testbed.broker_pods import BrokerPod, PodObjects, free_port_on, pod_ip, start_broker_pod
from testbed.certs import CertificateAuthority
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.registry import Registry

NEW = "sha256:" + "2" * 64

# --- pure: pods and waves ----------------------------------------------------------------------


def pod(name: str, ready: bool = True, created: str = "t1") -> PodInfo:
    return PodInfo(name, {"app": "mq"}, "10.0.0.1", ready, created,
                   why_not_ready="" if ready else "pod not Ready")


def current(name: str) -> PodReport:
    return PodReport(name, "a", True, phase="Applied", desired_digest=NEW, running_digest=NEW,
                     status="Running", applied_hash="h", desired_hash="h")


def updating(name: str) -> PodReport:
    return PodReport(name, "a", True, phase="Pending", desired_digest=NEW, status="Running",
                     desired_hash="h")


def failed(name: str) -> PodReport:
    return PodReport(name, "a", True, phase="RolledBack", last_error="probe alice: FAILED",
                     desired_digest=NEW, status="Running", desired_hash="h", failed_hash="h")


CANARY = CanaryStrategy(count=1, probe_timeout_seconds=60)
WAVES = WaveStrategy(max_unavailable=2, pod_timeout_seconds=30)


def plan(progress: Progress, pods: list[PodInfo], reports: dict[str, PodReport]) -> Any:
    return plan_waves(NEW, progress, pods, reports, {p: "h" for p in progress.updated},
                      CANARY, WAVES)


def test_pod_info_reads_what_the_kubelet_writes() -> None:
    obj = {"metadata": {"name": "vernemq-3", "labels": {"app": "v"},
                        "creationTimestamp": "2026-01-01T00:00:00Z",
                        "ownerReferences": [{"kind": "StatefulSet", "name": "vernemq"}]},
           "status": {"phase": "Running", "podIP": "10.1.2.3",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    info = pod_info(obj)
    assert (info.ready, info.ip, info.ordinal, info.address(9443)) == \
        (True, "10.1.2.3", 3, "10.1.2.3:9443")
    obj["status"]["conditions"] = [{"type": "Ready", "status": "False",  # type: ignore[index]
                                    "reason": "ContainersNotReady"}]
    assert pod_info(obj).why_not_ready == "pod not Ready (ContainersNotReady)"
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"  # type: ignore[index]
    assert pod_info(obj).why_not_ready == "pod is terminating"
    assert pod_info({"metadata": {"name": "x"}}).why_not_ready == "pod phase Pending"


def test_canary_is_ordinal_zero_for_statefulsets_and_the_oldest_for_deployments() -> None:
    sts = [PodInfo(f"mq-{i}", ready=True, ordinal=i, created=f"t{9 - i}") for i in (2, 10, 0, 1)]
    assert [p.name for p in rollout_order(sts)] == ["mq-0", "mq-1", "mq-2", "mq-10"]
    deploy = [pod("mq-7d9-zz", created="2026-01-01T00:00:05Z"),
              pod("mq-7d9-aa", created="2026-01-01T00:00:09Z"),
              pod("mq-7d9-mm", ready=False, created="2026-01-01T00:00:01Z")]
    assert choose_canaries(deploy, 1) == ("mq-7d9-zz",)  # oldest Ready, not first by name


def test_waves_canary_first_then_max_unavailable_at_a_time() -> None:
    pods = [pod(f"p{i}") for i in range(5)]
    first = plan(Progress(0, (), (), 0), pods, {})
    assert (first.action, first.wave_pods) == (Action.NEXT_WAVE, ("p0",))
    second = plan(Progress(1, ("p0",), ("p0",), 1), pods, {"p0": current("p0")})
    assert (second.action, second.wave_pods, second.updated) == \
        (Action.NEXT_WAVE, ("p1", "p2"), ("p0", "p1", "p2"))
    waiting = plan(Progress(2, ("p1", "p2"), ("p0", "p1", "p2"), 1), pods,
                   {"p0": current("p0"), "p1": current("p1"), "p2": updating("p2")})
    assert waiting.action is Action.WAIT and "p2 Updating" in waiting.reason
    assert total_waves(5, CANARY, WAVES) == 3
    done = plan(Progress(3, ("p3", "p4"), tuple(f"p{i}" for i in range(5)), 1), pods,
                {p.name: current(p.name) for p in pods})
    assert done.action is Action.PROMOTE and "all 5 Ready pods" in done.reason


def test_a_failing_wave_rolls_back_and_says_which() -> None:
    pods = [pod(f"p{i}") for i in range(4)]
    step = plan(Progress(2, ("p1", "p2"), ("p0", "p1", "p2"), 1), pods,
                {"p0": current("p0"), "p1": current("p1"), "p2": failed("p2")})
    assert step.action is Action.ROLLBACK
    assert "wave 2 (pods)" in step.reason and "p2: RolledBack: probe alice" in step.reason
    late = plan(Progress(2, ("p1", "p2"), ("p0", "p1", "p2"), 31), pods,
                {"p0": current("p0"), "p1": current("p1"), "p2": updating("p2")})
    assert late.action is Action.ROLLBACK and "within 30s" in late.reason
    # An earlier wave's pod that gives up later also stops the rollout.
    step = plan(Progress(2, ("p1",), ("p0", "p1"), 1), pods,
                {"p0": failed("p0"), "p1": updating("p1")})
    assert step.action is Action.ROLLBACK and "earlier pod failed: p0" in step.reason


def test_a_wave_held_by_a_broken_broker_yaml_neither_fails_nor_times_out() -> None:
    def blocked(name: str) -> PodReport:
        return PodReport(name, "a", True, phase="Rejected", last_error="broker.yaml: bad",
                         desired_digest=NEW, desired_hash="h", failed_hash="h",
                         failed_keys=("broker.yaml",), plugin="gate")

    pods = [pod(f"p{i}") for i in range(4)]
    step = plan(Progress(2, ("p1", "p2"), ("p0", "p1", "p2"), 31), pods,
                {"p0": blocked("p0"), "p1": current("p1"), "p2": blocked("p2")})
    assert step.action is Action.HOLD
    assert "wave 2: held" in step.reason and "p2: Rejected for broker.yaml" in step.reason
    # Its own key named: the wave fails as before.
    own = PodReport("p2", "a", True, phase="Rejected", last_error="bad release",
                    desired_digest=NEW, desired_hash="h", failed_hash="h",
                    failed_keys=("plugin.gate.yaml",), plugin="gate")
    assert plan(Progress(2, ("p1", "p2"), ("p0", "p1", "p2"), 1), pods,
                {"p0": current("p0"), "p1": current("p1"), "p2": own}).action \
        is Action.ROLLBACK


def test_pods_not_ready_are_skipped_added_join_removed_leave() -> None:
    pods = [pod("p0"), pod("p1", ready=False), pod("p2")]
    step = plan(Progress(1, ("p0",), ("p0",), 1), pods, {"p0": current("p0")})
    assert step.wave_pods == ("p2",)  # p1 is not Ready: not put in a wave
    done = plan(Progress(2, ("p2",), ("p0", "p2"), 1), pods,
                {"p0": current("p0"), "p2": current("p2")})
    assert done.action is Action.PROMOTE and "plugin key: p1" in done.reason
    # p2 went away mid-wave, p3 appeared: the wave passes without p2, p3 gets the next one.
    moved = [pod("p0"), pod("p3")]
    step = plan(Progress(2, ("p2",), ("p0", "p2"), 1), moved, {"p0": current("p0")})
    assert (step.action, step.wave_pods, step.updated) == \
        (Action.NEXT_WAVE, ("p3",), ("p0", "p3"))
    # A wave pod that stops being Ready is waited for (a crashing release must not pass).
    down = [pod("p0"), pod("p2", ready=False)]
    step = plan(Progress(2, ("p2",), ("p0", "p2"), 1), down,
                {"p0": current("p0"), "p2": PodReport("p2", "", False, pod_ready=False)})
    assert step.action is Action.WAIT and "p2 NotReady" in step.reason
    # Nothing Ready to start with: wait; nothing selected at all: the plugin key at once.
    assert plan(Progress(0, (), (), 5), [pod("p0", ready=False)], {}).action is Action.WAIT
    assert plan(Progress(0, (), (), 5), [], {}).action is Action.PROMOTE


# --- real: pods through the apiserver, real sidecars and brokers behind their IPs --------------

CONFIGMAP = "mq-plugins"
PLUGIN = "gate"
LABELS = {"app": "mq", "pod-template-hash": "7d9f8"}
PROBES = [{"name": "mallory-refused", "action": "connect", "username": "mallory",
           "expect": "refused"},
          {"name": "alice-accepted", "action": "connect", "username": "alice",
           "passwordFrom": {"secret": "probe-creds", "key": "alice"}, "expect": "accepted"}]
SIDECAR_RBAC = Path(__file__).resolve().parent.parent / "manifests" / "sidecar" / "rbac.yaml"


class Pods:
    """The module's broker pods: the Pod objects, and the rigs behind their IPs."""

    def __init__(self, cp: ControlPlane, ns: str, ca: CertificateAuthority, registry: Registry,
                 work: Path) -> None:
        self.objects = PodObjects(cp, ns)
        self.cp, self.ns, self.registry, self.work = cp, ns, registry, work
        pair = ca.issue(f"sidecar-{ns}", sans=(f"*.{ns}.svc",))
        self.tls = (pair.cert, pair.key)
        self.port = free_port_on([pod_ip(i) for i in range(8)])
        self.rigs: dict[str, BrokerPod] = {}
        self.count = 0

    def add(self, *, ready: bool = True, probe_secret: bool = True) -> str:
        """A Deployment-style pod (random name) with its broker and sidecar at a new IP."""
        name = f"mq-7d9f8-{uuid.uuid4().hex[:5]}"
        ip = pod_ip(self.count)
        self.count += 1
        self.objects.create(name, LABELS)
        self.rigs[name] = start_broker_pod(
            name, ip, self.port, self.work / name, cp=self.cp, namespace=self.ns,
            configmap=CONFIGMAP, registry_ca=self.registry.ca.cert, token=SIDECAR_TOKEN,
            tls=self.tls,
            probe_secrets={"probe-creds": {"alice": "pw"}} if probe_secret else {})
        self.objects.set_status(name, ip, ready)
        time.sleep(1.1)  # creationTimestamp has seconds: keep the age order unambiguous
        return name

    def remove(self, name: str) -> None:
        self.objects.delete(name)
        self.rigs.pop(name).stop()

    def stop(self) -> None:
        for rig in self.rigs.values():
            rig.stop()


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    c = Cluster(control_plane, tenant_namespace(control_plane, "sel"))
    c.grant_sidecar_rights()
    c.create_configmap(CONFIGMAP, {})
    return c


@pytest.fixture(scope="module")
def pods(cluster: Cluster, control_plane: ControlPlane, testbed_ca: CertificateAuthority,
         registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    made = Pods(control_plane, cluster.ns, testbed_ca, registry,
                tmp_path_factory.mktemp("pods"))
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, testbed_ca: CertificateAuthority, registry: Registry,
        cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with rollout_builder_api(control_plane, testbed_ca, registry.ca.cert, tmp_path_factory,
                             "builder-selector", cluster.ns) as a:
        yield a


@pytest.fixture(scope="module")
def source(cluster: Cluster, git_server: GitServer,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = git_server.create_repo(f"{cluster.ns}/{PLUGIN}.git")
    repo = scaffold_repo(tmp_path_factory.mktemp("src") / PLUGIN, "mosquitto-c", "mosquitto",
                         PLUGIN, url)
    return {"url": url, "repo": repo}


def push_deny(source: dict[str, Any], users: str) -> str:
    """A commit whose plugin denies ``users`` by default (new code, new digest)."""
    repo = source["repo"]
    path = next((repo / "src").glob("*.c"))
    text = path.read_text()
    start = text.index("#define DEFAULT_DENY_USERS")
    end = text.index("\n", start)
    path.write_text(text[:start] + f'#define DEFAULT_DENY_USERS "{users}"' + text[end:])
    run_git(repo, "commit", "-qam", f"deny {users} by default")
    run_git(repo, "push", "-q", source["url"], "HEAD:main")
    return run_git(repo, "rev-parse", "HEAD")


def status(cluster: Cluster) -> dict[str, Any]:
    result: dict[str, Any] = cluster.plugin(PLUGIN).get("status") or {}
    return result


def ready(cluster: Cluster) -> dict[str, Any]:
    return cluster.condition(PLUGIN, "Ready")


def pod_states(cluster: Cluster) -> dict[str, str]:
    return {p["pod"]: p["state"] for p in status(cluster).get("pods") or []}


@pytest.mark.timeout(600)
def test_selected_pods_get_the_release_in_waves_and_a_late_ready_pod_from_the_configmap(
        api: Api, cluster: Cluster, pods: Pods, source: dict[str, Any], registry: Registry,
        capsys: pytest.CaptureFixture[str]) -> None:
    oldest, second = pods.add(), pods.add()
    late = pods.add(ready=False)  # created, not Ready: skipped, then waited for
    cluster.create("brokerplugins", broker_plugin(
        PLUGIN, url=source["url"], repository=f"{registry.host}/plugins/{PLUGIN}",
        configmap=None, probes=PROBES,
        target={"configMap": CONFIGMAP, "selector": {"matchLabels": {"app": "mq"}},
                "sidecarPort": pods.port,
                "strategy": {"canary": {"count": 1, "probeTimeoutSeconds": 120},
                             "waves": {"maxUnavailable": 1, "podTimeoutSeconds": 120}}}))
    wait_for(lambda: (status(cluster).get("rollout") or {}).get("phase") == "Complete",
             "v1 rolled out", timeout=240)
    st = status(cluster)
    digest = st["rollout"]["digest"]
    assert st["rollout"]["canaryPods"] == [oldest]  # the oldest Ready pod, not by name
    assert st["rollout"]["updatedPods"] == [oldest, second] and st["rollout"]["wave"] == 2
    assert late in st["rollout"]["message"]  # skipped: not Ready, gets the plugin key
    assert not any(k.startswith("canary.") for k in cluster.configmap(CONFIGMAP))
    wait_for(lambda: pod_states(cluster).get(late) == "NotReady", "the late pod NotReady", 60)
    assert ready(cluster)["reason"] == "PodsNotReady" and f"{late}: NotReady" in \
        ready(cluster)["message"]
    # The kubelet calls it Ready: its sidecar already runs the release from the plugin key.
    pods.objects.set_status(late, pods.rigs[late].ip, True)
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 3, "3/3 Ready", 120)
    assert all(rig.plugin_digest(PLUGIN) == digest for rig in pods.rigs.values())
    assert plugforge(["rollout", PLUGIN, "--watch", "-n", cluster.ns, *api.cli_flags()]) == 0
    out = capsys.readouterr().out
    assert "pods ready 3/3" in out and "Ready=True" in out


@pytest.mark.timeout(600)
def test_pods_added_and_removed_mid_rollout(cluster: Cluster, pods: Pods,
                                           source: dict[str, Any]) -> None:
    wait_for(lambda: ready(cluster).get("status") == "True", "Ready before", 60)
    canary = status(cluster)["rollout"]["canaryPods"][0]
    gone = next(name for name in pods.rigs if name != canary)
    commit = push_deny(source, "mallory,eve")
    wait_for(lambda: (status(cluster).get("rollout") or {}).get("commit") == commit and
             status(cluster)["rollout"]["phase"] in ("Canary", "Rolling"),
             "the v2 rollout under way", timeout=120)
    added = pods.add()
    pods.remove(gone)
    wait_for(lambda: status(cluster)["rollout"]["phase"] == "Complete" and
             status(cluster)["rollout"]["commit"] == commit, "v2 rolled out", timeout=240)
    wait_for(lambda: ready(cluster).get("status") == "True" and
             set(pod_states(cluster)) == set(pods.rigs), "status follows the pods", 120)
    digest = status(cluster)["rollout"]["digest"]
    assert gone not in pod_states(cluster) and added in pod_states(cluster)
    assert all(rig.plugin_digest(PLUGIN) == digest for rig in pods.rigs.values())
    assert status(cluster)["podsReady"] == len(pods.rigs) == 3


@pytest.mark.timeout(600)
def test_a_failing_wave_rolls_back_every_pod(cluster: Cluster, pods: Pods,
                                             source: dict[str, Any]) -> None:
    wait_for(lambda: ready(cluster).get("status") == "True", "Ready before", 60)
    stable = status(cluster)["currentImage"].rpartition("@")[2]
    # The newest pod lacks the probe's Secret: the alice probe fails there only, in the
    # last wave, after the canary and earlier waves passed.
    broken = pods.add(probe_secret=False)
    wait_for(lambda: pod_states(cluster).get(broken) is not None, "the new pod in status", 60)
    commit = push_deny(source, "mallory,trudy")
    wait_for(lambda: (status(cluster).get("rollout") or {}).get("commit") == commit and
             status(cluster)["rollout"]["phase"] == "RolledBack", "rolled back", timeout=300)
    st = status(cluster)
    assert st["rollout"]["wave"] >= 2 and broken in st["rollout"]["wavePods"]
    cond = ready(cluster)
    assert cond["status"] == "False" and cond["reason"] == "CanaryFailed"
    assert f"wave {st['rollout']['wave']} (pods)" in cond["message"] and broken in cond["message"]
    assert st["currentImage"].endswith("@" + stable)
    assert not any(k.startswith("canary.") for k in cluster.configmap(CONFIGMAP))
    wait_for(lambda: all(rig.plugin_digest(PLUGIN) == stable for name, rig in pods.rigs.items()
                         if name != broken), "every pod back on the stable release", 120)


def test_rollout_view_at_fifty_pods_lists_only_the_pods_not_current(
        capsys: pytest.CaptureFixture[str]) -> None:
    from plugforge.cli.rollout import show
    from plugforge.v1 import build_pb2 as pb

    pods = [pb.PodRollout(pod=f"mq-{i}", desired_digest=NEW, running_digest=NEW,
                          state=pb.POD_STATE_CURRENT, sidecar_phase="Applied") for i in range(50)]
    pods[7].state = pb.POD_STATE_UPDATING
    pods[8].state = pb.POD_STATE_NOT_READY
    pods[8].last_error = "pod not Ready (ContainersNotReady)"
    r = pb.Rollout(namespace="ns", plugin="gate", plugin_name="gate", phase="Rolling",
                   desired_image=f"r/x@{NEW}", wave=3, waves=6, pods=pods, pods_ready=48,
                   pods_total=50, reason="RolloutInProgress", message="wave 3: mq-7 Updating")
    show(r, "table")
    out = capsys.readouterr().out.splitlines()
    assert out[1] == ("rollout Rolling wave 3/6  pods ready 48/50 (1 not ready, 1 updating)  "
                      "Ready=False RolloutInProgress")
    rows = [line.split()[0] for line in out if line.startswith("mq-")]
    assert rows == ["mq-7", "mq-8"] and out[-1] == "(48 more pods current, not listed)"
    assert len(out) <= 7
