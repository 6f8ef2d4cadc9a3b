"""Builder availability: leader election between replicas, and a restart in the middle of a build.

Real apiserver and Lease; the restart test runs ``python -m builder`` as subprocesses and kills
one with SIGKILL while its build is running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builder_support import (
    ROOT,
    Cluster,
    broker_plugin,
    install,
    scaffold_repo,
    templates_in_use,
    tenant_namespace,
    wait_for,
)

from builder.app import Builder
from builder.settings import Settings
from testbed.gitserver import GitServer
from testbed.kube import ControlPlane
from testbed.registry import Registry

SLOW_SECONDS = 6


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with templates_in_use(tmp_path_factory.mktemp("templates"),
                          slow_seconds=SLOW_SECONDS) as root:
        yield root


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    return Cluster(control_plane, tenant_namespace(control_plane, "ha"))


@pytest.fixture(scope="module")
def source_url(cluster: Cluster, git_server: GitServer,
               tmp_path_factory: pytest.TempPathFactory) -> str:
    url = git_server.create_repo(f"{cluster.ns}/ha-acl.git")
    scaffold_repo(tmp_path_factory.mktemp("src") / "ha-acl", "mosquitto-c", "mosquitto",
                  "ha-acl", url)
    return url


def _settings(cp: ControlPlane, registry: Registry, lease: str, identity: str,
              state: Path, namespace: str) -> Settings:
    # Scoped to this module's namespace: other modules' leftover plugins are not ours to count.
    return Settings(kubeconfig=cp.kubeconfig("builder"), lease_name=lease, identity=identity,
                    watch_namespace=namespace,
                    state_dir=state, resync_seconds=2.0, lease_duration_seconds=4,
                    lease_renew_seconds=1, backoff_base_seconds=0.5, max_attempts=2,
                    registry_ca=registry.ca.cert, executor="process",
                    allow_process_executor=True)


def test_two_replicas_only_the_leader_builds(control_plane: ControlPlane, registry: Registry,
                                             cluster: Cluster, source_url: str,
                                             templates: Path, tmp_path: Path) -> None:
    a = Builder(_settings(control_plane, registry, "ha-leader", "replica-a", tmp_path / "a",
                          cluster.ns))
    b = Builder(_settings(control_plane, registry, "ha-leader", "replica-b", tmp_path / "b",
                          cluster.ns))
    a.start()
    b.start()
    try:
        wait_for(lambda: a.leading or b.leading, "a leader")
        leader, follower = (a, b) if a.leading else (b, a)
        cluster.create("brokerplugins", broker_plugin(
            "ha-one", url=source_url, repository=f"{registry.host}/plugins/ha-one",
            configmap="ha"))
        build = cluster.wait_build("ha-one")
        assert build["status"]["phase"] == "Succeeded"
        assert len(cluster.builds("ha-one")) == 1
        assert leader.controller.builds_run == 1
        assert follower.controller.builds_run == 0
        assert not follower.leading

        # the leader goes away (clean stop releases the lease): the follower takes over
        leader.stop()
        wait_for(lambda: follower.leading, "the follower to take over", timeout=20)
        cluster.create("brokerplugins", broker_plugin(
            "ha-two", url=source_url, repository=f"{registry.host}/plugins/ha-two",
            configmap="ha"))
        assert cluster.wait_build("ha-two")["status"]["phase"] == "Succeeded"
        assert follower.controller.builds_run == 1
    finally:
        a.stop()
        b.stop()


def _spawn(cp: ControlPlane, registry: Registry, identity: str, state: Path,
           templates: Path) -> subprocess.Popen[bytes]:
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PLUGFORGE_TEMPLATES": str(templates), "PYTHONPATH": str(ROOT)}
    log = open(state / "builder.log", "wb")  # noqa: SIM115  closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "builder", "--kubeconfig", str(cp.kubeconfig("builder")),
         "--lease-name", "ha-restart", "--identity", identity, "--state-dir", str(state),
         "--registry-ca", str(registry.ca.cert), "--lease-duration-seconds", "4",
         "--lease-renew-seconds", "1", "--resync-seconds", "2",
         "--executor", "process", "--allow-process-executor"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_restart_mid_build_resumes_the_same_build(control_plane: ControlPlane,
                                                  registry: Registry, cluster: Cluster,
                                                  source_url: str, templates: Path,
                                                  tmp_path: Path) -> None:
    first = _spawn(control_plane, registry, "proc-a", tmp_path / "a", templates)
    second: subprocess.Popen[bytes] | None = None
    try:
        cluster.create("brokerplugins", broker_plugin(
            "restarted", url=source_url, template="slow-c",
            repository=f"{registry.host}/plugins/restarted", configmap="restarted"))

        def running() -> dict[str, Any] | None:
            builds = cluster.builds("restarted")
            return next((b for b in builds if (b.get("status") or {}).get("phase") == "Running"),
                        None)
        build = wait_for(running, "the build to start", timeout=60)
        assert build["status"]["holder"] == "proc-a"
        first.send_signal(signal.SIGKILL)
        first.wait(10)

        second = _spawn(control_plane, registry, "proc-b", tmp_path / "b", templates)
        done = cluster.wait_build("restarted", timeout=90)
        assert done["metadata"]["name"] == build["metadata"]["name"]
        assert done["metadata"]["uid"] == build["metadata"]["uid"]  # the same object
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["attempts"] == 2
        assert len(cluster.builds("restarted")) == 1  # not duplicated
        log = (tmp_path / "b" / "builder.log").read_text()
        assert "resuming orphaned build" in log
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_leadership_lost_and_regained_builds_again(control_plane: ControlPlane,
                                                   registry: Registry, cluster: Cluster,
                                                   source_url: str, templates: Path,
                                                   tmp_path: Path) -> None:
    """Someone else holds the Lease for a while: the builder stops, then resumes building."""
    from datetime import UTC, datetime, timedelta

    from builder.leader import micro_time

    lease_path = "/apis/coordination.k8s.io/v1/namespaces/plugforge-system/leases/ha-regain"
    b = Builder(_settings(control_plane, registry, "ha-regain", "regainer", tmp_path / "r",
                          cluster.ns))
    b.start()
    try:
        wait_for(lambda: b.leading, "leadership")
        code, lease = control_plane.request("GET", lease_path)
        assert code == 200
        spec: Any = lease["spec"]
        spec.update(holderIdentity="usurper", leaseDurationSeconds=6,
                    renewTime=micro_time(datetime.now(UTC) + timedelta(seconds=1)))
        code, out = control_plane.request("PUT", lease_path, body=lease)
        assert code == 200, out
        wait_for(b.lost_leadership.is_set, "the builder to step down", timeout=20)
        assert not b.leading
        wait_for(lambda: b.leading, "the builder to lead again", timeout=30)
        cluster.create("brokerplugins", broker_plugin(
            "regained", url=source_url, repository=f"{registry.host}/plugins/regained",
            configmap="regained"))
        assert cluster.wait_build("regained")["status"]["phase"] == "Succeeded"
    finally:
        b.stop()
