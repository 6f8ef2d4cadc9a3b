"""Canary rollouts across two real mosquitto brokers, each with its own real sidecar (API mode
on the real apiserver, gRPC over TLS with a token), driven by the real builder.

Two mosquitto instances are the lightest real pair here. A mosquitto plugin change needs a
broker restart (the sidecars run with --allow-broker-restart; a supervisor plays the kubelet),
which makes "the second instance never saw it" provable by more than the sidecar's word: its
broker process (pid) is the same before and after the failed canary, and it never loaded the
bad digest.

Flow: v1 (denies mallory) canaries on mq-0 then fans out to mq-1; v2 (also refuses alice, whom
the probe expects accepted) fails its probe on the canary and is rolled back, mq-1 untouched,
the BrokerPlugin Ready=False with the canary's error; v3 (denies eve too) fans out to both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from mqtt_support import Client
from sidecar_support import broker_yaml, make_sidecar, start_dynsec_broker

from plugforge.cli import main as plugforge
from plugforge.v1 import build_pb2 as pb
from sidecar.app import Sidecar
from sidecar.grpc_service import serve
from testbed.broker_pods import PodObjects, free_port_on, pod_ip
from testbed.certs import CertificateAuthority
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.mosquitto import Mosquitto
from testbed.procs import Supervisor
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(600)

CONFIGMAP = "mq-plugins"
PLUGIN = "gate"
PROBES = [{"name": "mallory-refused", "action": "connect", "username": "mallory",
           "expect": "refused"},
          {"name": "alice-accepted", "action": "connect", "username": "alice",
           "passwordFrom": {"secret": "probe-creds", "key": "alice"}, "expect": "accepted"}]


@dataclass
class Pod:
    name: str
    broker: Mosquitto
    sidecar: Sidecar
    supervisor: Supervisor
    address: str
    tls: tuple[Path, Path]

    def accepts(self, user: str) -> bool:
        try:
            client = Client(self.broker.port, user, password="pw")
        except OSError:
            return False  # restarting
        try:
            return bool(client.accepted)
        finally:
            client.close()

    def plugin(self) -> Any:
        return next((p for p in self.sidecar.state.plugins if p.name == PLUGIN), None)

    def running(self) -> str | None:
        p = self.plugin()
        return p.running_digest if p else None


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    c = Cluster(control_plane, tenant_namespace(control_plane, "canary"))
    # The sidecars' own RBAC (manifests/sidecar/rbac.yaml), bound in this namespace.
    c.grant_sidecar_rights()
    c.create_configmap(CONFIGMAP, {"broker.yaml": broker_yaml({"max_inflight_messages": "20"})})
    return c


@pytest.fixture(scope="module")
def pods(cluster: Cluster, control_plane: ControlPlane, testbed_ca: CertificateAuthority,
         registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Pod]]:
    made: list[Pod] = []
    # StatefulSet pods without a kubelet: Pod objects whose status says Ready at a loopback
    # IP, each sidecar's gRPC on that IP and one shared port, as in a cluster.
    objects = PodObjects(control_plane, cluster.ns)
    ips = [pod_ip(i, subnet=11) for i in range(2)]
    port = free_port_on(ips)
    pair = testbed_ca.issue(f"sidecar-{cluster.ns}", sans=(f"*.{cluster.ns}.svc",))
    try:
        for name, ip in zip(("mq-0", "mq-1"), ips, strict=True):
            work = tmp_path_factory.mktemp(name)
            broker = start_dynsec_broker(work / "broker")
            supervisor = Supervisor(broker)
            mounted = work / "probe-secrets"  # the probe Secret, as the kubelet mounts it
            (mounted / "probe-creds").mkdir(parents=True)
            (mounted / "probe-creds" / "alice").write_text("pw")
            sidecar, _ = make_sidecar(
                broker, [], work / "sc", registry.ca.cert, allow_restart=True, resync=2.0,
                probe_secrets_dir=mounted,
                source="api", configmaps=(CONFIGMAP,), namespace=cluster.ns,
                kubeconfig=control_plane.kubeconfig("sidecar"), pod_name=name,
                pod_namespace=cluster.ns)
            sidecar.start()
            server = serve(sidecar, f"{ip}:{port}", token=SIDECAR_TOKEN,
                           tls=(pair.cert, pair.key))
            made.append(Pod(name, broker, sidecar, supervisor, f"{ip}:{port}",
                            (pair.cert, pair.key)))
            sidecar._grpc_server = server  # type: ignore[attr-defined]  # stopped below
            objects.create(name, {"app": "mq"}, statefulset="mq")
            objects.set_status(name, ip, True)
        yield made
    finally:
        for pod in made:
            pod.sidecar._grpc_server.stop(1)  # type: ignore[attr-defined]
            pod.sidecar.stop()
            pod.supervisor.stop()
            pod.broker.stop()


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, testbed_ca: CertificateAuthority, registry: Registry,
        cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with rollout_builder_api(control_plane, testbed_ca, registry.ca.cert, tmp_path_factory,
                             "builder-canary", cluster.ns) as a:
        yield a


@pytest.fixture(scope="module")
def source(cluster: Cluster, git_server: GitServer,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = git_server.create_repo(f"{cluster.ns}/{PLUGIN}.git")
    repo = scaffold_repo(tmp_path_factory.mktemp("src") / PLUGIN, "mosquitto-c", "mosquitto",
                         PLUGIN, url)
    return {"url": url, "repo": repo}


def push_deny_default(source: dict[str, Any], users: str) -> str:
    """A new commit whose plugin denies ``users`` by default (different code, new digest)."""
    repo = source["repo"]
    path = next((repo / "src").glob("*.c"))
    text = path.read_text()
    start = text.index("#define DEFAULT_DENY_USERS")
    end = text.index("\n", start)
    path.write_text(text[:start] + f'#define DEFAULT_DENY_USERS "{users}"' + text[end:])
    run_git(repo, "commit", "-qam", f"deny {users} by default")
    run_git(repo, "push", "-q", source["url"], "HEAD:main")
    return run_git(repo, "rev-parse", "HEAD")


def ready(cluster: Cluster) -> dict[str, Any]:
    return cluster.condition(PLUGIN, "Ready")


def status(cluster: Cluster) -> dict[str, Any]:
    result: dict[str, Any] = cluster.plugin(PLUGIN).get("status") or {}
    return result


@pytest.fixture(scope="module")
def v1(api: Api, cluster: Cluster, pods: list[Pod], source: dict[str, Any],
       registry: Registry) -> str:
    """The first release, rolled out canary-first to both pods; returns its digest."""
    commit = run_git(source["repo"], "rev-parse", "HEAD")
    cluster.create("brokerplugins", broker_plugin(
        PLUGIN, url=source["url"], repository=f"{registry.host}/plugins/{PLUGIN}",
        configmap=None, probes=PROBES,
        target={"configMap": CONFIGMAP, "selector": {"matchLabels": {"app": "mq"}},
                "sidecarPort": int(pods[0].address.rpartition(":")[2]),
                "strategy": {"canary": {"count": 1, "probeTimeoutSeconds": 120}}}))
    wait_for(lambda: (status(cluster).get("rollout") or {}).get("phase") == "Complete",
             "v1 promoted after its canary", timeout=180)
    st = status(cluster)
    assert st["currentCommit"] == commit
    return str(st["rollout"]["digest"])


def test_good_release_goes_to_the_canary_first_then_fans_out(
        v1: str, cluster: Cluster, pods: list[Pod], api: Api,
        capsys: pytest.CaptureFixture[str]) -> None:
    st = status(cluster)
    assert st["rollout"]["canaryPods"] == ["mq-0"]
    assert st["currentImage"].endswith("@" + v1)
    wait_for(lambda: all(p.running() == v1 for p in pods), "v1 runs on both brokers", 120)
    wait_for(lambda: status(cluster).get("podsReady") == 2, "podsReady 2/2", 60)
    st = status(cluster)
    assert st["podsTotal"] == 2 and ready(cluster)["status"] == "True"
    # Provenance chain: commit → PluginBuild → digest → pods.
    assert all(p["digest"] == v1 and p["commit"] == st["currentCommit"]
               and p["build"] == st["currentBuild"] and p["state"] == "Current"
               for p in st["pods"])
    build = api.stub().GetBuild(pb.GetBuildRequest(namespace=cluster.ns,
                                                   name=st["currentBuild"])).build
    assert build.digest == v1 and build.commit == st["currentCommit"]
    for pod in pods:  # the plugin's code decides, on both brokers
        assert not pod.accepts("mallory") and pod.accepts("alice")
    # No canary key is left behind.
    assert not any(k.startswith("canary.") for k in cluster.configmap(CONFIGMAP))

    rollout = api.stub().GetRollout(pb.GetRolloutRequest(namespace=cluster.ns,
                                                         plugin=PLUGIN)).rollout
    assert rollout.desired_digest == v1 and rollout.pods_ready == 2 and rollout.ready
    assert [(p.pod, p.running_digest, p.state) for p in rollout.pods] == [
        ("mq-0", v1, pb.POD_STATE_CURRENT), ("mq-1", v1, pb.POD_STATE_CURRENT)]
    # GetRollout asks both sidecars (TLS + token) in parallel on every call.
    stub = api.stub()
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        stub.GetRollout(pb.GetRolloutRequest(namespace=cluster.ns, plugin=PLUGIN))
        timings.append(time.perf_counter() - started)
    timings.sort()
    with capsys.disabled():
        print(f"\nGetRollout over 2 sidecars: median {timings[10] * 1000:.1f} ms, "
              f"max {timings[-1] * 1000:.1f} ms")
    assert timings[10] < 1.0
    assert plugforge(["rollout", PLUGIN, "--watch", "-n", cluster.ns, *api.cli_flags()]) == 0
    out = capsys.readouterr().out
    assert "pods ready 2/2" in out and "Ready=True" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("mq-")]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("mq-0", "Current", v1[7:19], v1[7:19]), ("mq-1", "Current", v1[7:19], v1[7:19])]


def test_failing_canary_is_rolled_back_and_the_other_pod_never_sees_it(
        v1: str, cluster: Cluster, pods: list[Pod], api: Api, source: dict[str, Any],
        control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    canary, other = pods
    wait_for(lambda: status(cluster).get("podsReady") == 2, "steady on v1", 60)
    other_pid = other.broker.pid
    seen_by_other: set[str] = set()
    stop = threading.Event()

    def watch_other() -> None:  # every digest mq-1's sidecar is ever asked to run
        while not stop.wait(0.05):
            p = other.plugin()
            if p is not None:
                seen_by_other.add(p.desired_digest)

    watcher = threading.Thread(target=watch_other, daemon=True)
    watcher.start()
    try:
        bad_commit = push_deny_default(source, "mallory,alice")
        wait_for(lambda: (status(cluster).get("rollout") or {}).get("commit") == bad_commit,
                 "the bad build's canary", timeout=120)
        bad = status(cluster)["rollout"]["digest"]
        assert bad != v1
        wait_for(lambda: status(cluster)["rollout"]["phase"] == "RolledBack",
                 "the canary rolled back", timeout=180)
        # The canary pod returns to v1 and admits alice again.
        wait_for(lambda: canary.running() == v1 and canary.sidecar.state.ready,
                 "mq-0 back on v1", timeout=120)
        wait_for(lambda: canary.accepts("alice"), "mq-0 admits alice again", timeout=60)
        assert not canary.accepts("mallory")
    finally:
        stop.set()
        watcher.join()
    cond = ready(cluster)
    assert cond["status"] == "False" and cond["reason"] == "CanaryFailed"
    assert "alice-accepted" in cond["message"] and "mq-0" in cond["message"]
    assert bad_commit[:12] in cond["message"]
    st = status(cluster)
    assert st["currentImage"].endswith("@" + v1)  # the stable release did not move
    # mq-1 never saw the bad digest: not in its desired state, not loaded, not restarted.
    assert bad not in seen_by_other and seen_by_other == {v1}
    assert other.broker.pid == other_pid and other.running() == v1
    assert other.accepts("alice")
    data = cluster.configmap(CONFIGMAP)
    assert not any(k.startswith("canary.") for k in data)
    assert bad not in data[f"plugin.{PLUGIN}.yaml"]

    rollout = api.stub().GetRollout(pb.GetRolloutRequest(namespace=cluster.ns,
                                                         plugin=PLUGIN)).rollout
    assert rollout.phase == "RolledBack" and not rollout.ready
    assert rollout.reason == "CanaryFailed"
    # rollout --watch: settled, but not Ready → exit 1, and the table says why.
    wait_for(lambda: status(cluster).get("podsReady") == 2, "both pods on v1", 60)
    assert plugforge(["rollout", PLUGIN, "--watch", "-n", cluster.ns, *api.cli_flags()]) == 1
    out = capsys.readouterr().out
    assert "CanaryFailed" in out and "alice-accepted" in out
    # plugforge status (from the apiserver, with a kubeconfig like kubectl's).
    assert plugforge(["status", "-n", cluster.ns,
                      "--kubeconfig", str(control_plane.kubeconfig("admin"))]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if f" {PLUGIN} " in x)
    assert line.split()[2:6] == ["mosquitto", "True", "False", "2/2"]
    assert "CanaryFailed" in line


def test_next_good_release_fans_out_to_both(
        v1: str, cluster: Cluster, pods: list[Pod], api: Api, source: dict[str, Any]) -> None:
    good = push_deny_default(source, "mallory,eve")
    wait_for(lambda: status(cluster).get("currentCommit") == good, "v3 promoted", timeout=240)
    v3 = status(cluster)["rollout"]["digest"]
    assert v3 != v1
    wait_for(lambda: all(p.running() == v3 for p in pods), "v3 on both brokers", 120)
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready again", 60)
    for pod in pods:
        assert not pod.accepts("eve") and pod.accepts("alice")


def test_bad_settings_are_canaried_too(cluster: Cluster, pods: list[Pod], api: Api) -> None:
    """A settings change builds nothing new (content-key hit, same digest) but its release
    still goes to the canary first: refusing alice fails the probe there, mq-1 never sees it."""
    canary, other = pods
    wait_for(lambda: ready(cluster).get("status") == "True", "Ready before", 60)
    before = status(cluster)
    digest = before["currentImage"].rpartition("@")[2]
    other_pid = other.broker.pid
    cluster.patch_plugin(PLUGIN, {"settings": {"deny_users": "mallory,alice"}})
    wait_for(lambda: ready(cluster).get("reason") == "CanaryFailed", "settings canary failed",
             timeout=120)
    st = status(cluster)
    assert st["rollout"]["digest"] == digest and st["rollout"]["phase"] == "RolledBack"
    assert "alice-accepted" in ready(cluster)["message"]
    assert other.broker.pid == other_pid and other.accepts("alice")
    assert "deny_users" not in cluster.configmap(CONFIGMAP)[f"plugin.{PLUGIN}.yaml"]
    wait_for(lambda: canary.accepts("alice"), "mq-0 admits alice again", timeout=60)
    # Undoing the change rolls out (the canary already runs that state: promoted at once).
    cluster.patch_plugin(PLUGIN, {"settings": None})
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready again", timeout=120)


def test_pods_ready_follows_the_sidecars(cluster: Cluster, pods: list[Pod], api: Api) -> None:
    """Per-pod truth: a sidecar that stops answering makes the plugin not Ready, naming it."""
    _, other = pods
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready with 2/2", 60)
    other.sidecar._grpc_server.stop(0)  # type: ignore[attr-defined]
    wait_for(lambda: ready(cluster).get("reason") == "PodsNotReady", "PodsNotReady", 60)
    st = status(cluster)
    assert st["podsReady"] == 1 and st["podsTotal"] == 2
    assert "mq-1: Unreachable" in ready(cluster)["message"]
    rollout = api.stub().GetRollout(pb.GetRolloutRequest(namespace=cluster.ns,
                                                         plugin=PLUGIN)).rollout
    states = {p.pod: p.state for p in rollout.pods}
    assert states == {"mq-0": pb.POD_STATE_CURRENT, "mq-1": pb.POD_STATE_UNREACHABLE}
    other.sidecar._grpc_server = serve(  # type: ignore[attr-defined]
        other.sidecar, other.address, token=SIDECAR_TOKEN, tls=other.tls)
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready again", 60)


def edit_configmap(cluster: Cluster, key: str, value: str) -> None:
    """An operator's direct edit of one key (read, change, replace at that resourceVersion)."""
    path = f"/api/v1/namespaces/{cluster.ns}/configmaps/{CONFIGMAP}"
    for _ in range(10):
        _, cm = cluster.cp.request("GET", path)
        data: Any = cm["data"]
        data[key] = value
        code, out = cluster.cp.request("PUT", path, body=cm)
        if code == 200:
            return
        assert code == 409, out
    raise AssertionError("the ConfigMap kept changing")


def test_a_broken_broker_yaml_holds_the_canary_instead_of_failing_it(
        cluster: Cluster, pods: list[Pod], api: Api) -> None:
    """An operator breaks broker.yaml while a settings release canaries: the sidecars reject
    the whole state for broker.yaml (GetState.failed_keys), which is not the plugin's doing.
    The canary holds, past its timeout, saying why; once broker.yaml is fixed it goes on."""
    canary, other = pods
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready before", 60)
    good = cluster.configmap(CONFIGMAP)["broker.yaml"]
    stable = cluster.configmap(CONFIGMAP)[f"plugin.{PLUGIN}.yaml"]
    edit_configmap(cluster, "broker.yaml", "broker: mosquitto\nconfig: [not, a, mapping\n")
    wait_for(lambda: all(p.sidecar.state.failed_keys == ("broker.yaml",) for p in pods),
             "both sidecars reject broker.yaml", timeout=30)
    timeout = 8
    cluster.patch_plugin(PLUGIN, {"settings": {"deny_users": "mallory,trent"},
                                  "target": {"strategy": {"canary": {
                                      "probeTimeoutSeconds": timeout}}}})
    held = wait_for(lambda: ready(cluster) if ready(cluster).get("reason") == "RolloutHeld"
                    else None, "the canary held", timeout=120)
    assert "broker.yaml" in held["message"] and "mq-0" in held["message"]
    assert status(cluster)["rollout"]["heldSince"]
    time.sleep(timeout + 4)  # past the canary's timeout: still held, nothing rolled back
    st = status(cluster)
    assert st["rollout"]["phase"] == "Canary" and ready(cluster)["reason"] == "RolloutHeld"
    assert cluster.configmap(CONFIGMAP)[f"plugin.{PLUGIN}.yaml"] == stable
    assert f"canary.mq-0.plugin.{PLUGIN}.yaml" in cluster.configmap(CONFIGMAP)
    _, out = cluster.cp.request("GET", f"/apis/events.k8s.io/v1/namespaces/{cluster.ns}"
                                       "/events")
    items: Any = out["items"]
    assert any(e["reason"] == "RolloutHeld" and e["regarding"]["name"] == PLUGIN
               for e in items)
    assert not any(e["reason"] == "CanaryFailed" and "trent" in e["note"] for e in items)

    edit_configmap(cluster, "broker.yaml", good)  # fixed: the canary goes on, then fans out
    wait_for(lambda: status(cluster)["rollout"]["phase"] == "Complete", "promoted", timeout=120)
    assert "trent" in cluster.configmap(CONFIGMAP)[f"plugin.{PLUGIN}.yaml"]
    assert "heldSince" not in status(cluster)["rollout"]
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready with 2/2", 120)
    wait_for(lambda: not canary.accepts("trent") and not other.accepts("trent"),
             "trent refused on both", 60)
    cluster.patch_plugin(PLUGIN, {"settings": None, "target": {"strategy": {"canary": {
        "probeTimeoutSeconds": 120}}}})
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2 and
             "trent" not in cluster.configmap(CONFIGMAP)[f"plugin.{PLUGIN}.yaml"],
             "Ready again", timeout=120)


def test_a_direct_edit_of_the_stable_key_is_written_back_once(
        cluster: Cluster, pods: list[Pod], api: Api) -> None:
    """Under a canary strategy too: the builder puts back exactly the release it promoted,
    with one Warning Event naming the key and the ConfigMap (no values)."""
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready before", 60)
    key = f"plugin.{PLUGIN}.yaml"
    stable = cluster.configmap(CONFIGMAP)[key]

    def reverted() -> list[dict[str, Any]]:
        _, out = cluster.cp.request("GET", f"/apis/events.k8s.io/v1/namespaces/{cluster.ns}"
                                           "/events")
        items: Any = out["items"]
        return [e for e in items if e["reason"] == "ConfigMapEditReverted"
                and e["regarding"]["name"] == PLUGIN]

    before = len(reverted())
    assert before == 0  # the builder's own writes (promotions, rollbacks) were never reported
    edit_configmap(cluster, key, stable + "# hunter2: edited by hand\n")
    wait_for(lambda: cluster.configmap(CONFIGMAP)[key] == stable, "the key written back", 30)
    events = wait_for(lambda: reverted()[before:] or None, "the Warning Event", 30)
    assert key in events[0]["note"] and f"ConfigMap {cluster.ns}/{CONFIGMAP}" in events[0]["note"]
    assert "hunter2" not in events[0]["note"]
    time.sleep(5)  # resyncs every 2 s: nothing more to say
    assert len(reverted()) == before + 1
    wait_for(lambda: ready(cluster).get("status") == "True" and
             status(cluster).get("podsReady") == 2, "Ready after", 60)
