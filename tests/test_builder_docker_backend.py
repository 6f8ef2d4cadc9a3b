"""The builder's second push backend: a Docker-API engine (podman's service), end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from builder_support import (
    Cluster,
    broker_plugin,
    install,
    scaffold_repo,
    tenant_namespace,
    wait_for,
)

from builder.app import Builder
from builder.settings import Settings
from plugforge.contract import Document, parse_desired_state
from testbed.gitserver import GitServer
from testbed.kube import ControlPlane
from testbed.podman import PodmanService
from testbed.registry import Registry


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    return Cluster(control_plane, tenant_namespace(control_plane, "docker"))


@pytest.fixture(scope="module")
def builder(control_plane: ControlPlane, registry: Registry, podman_service: PodmanService,
            tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> Iterator[Builder]:
    podman_service.trust_registry(registry.host, registry.ca.cert)
    b = Builder(Settings(
        kubeconfig=control_plane.kubeconfig("builder"), lease_name="builder-docker",
        identity="builder-docker", state_dir=tmp_path_factory.mktemp("state"),
        resync_seconds=2.0, lease_duration_seconds=4, lease_renew_seconds=1,
        registry_ca=registry.ca.cert, docker_url=podman_service.url,
        executor="process", allow_process_executor=True))
    b.start()
    wait_for(lambda: b.leading, "the builder to lead")
    yield b
    b.stop()


def test_build_pushed_through_podman(builder: Builder, cluster: Cluster, git_server: GitServer,
                                     registry: Registry, tmp_path: Path) -> None:
    url = git_server.create_repo(f"{cluster.ns}/engine-acl.git")
    scaffold_repo(tmp_path / "engine-acl", "mosquitto-c", "mosquitto", "engine-acl", url)
    cluster.create("brokerplugins", broker_plugin(
        "engine-acl", url=url, repository=f"{registry.host}/plugins/engine-acl",
        configmap="engine"))
    build = cluster.wait_build("engine-acl", timeout=180)
    assert build["status"]["phase"] == "Succeeded", build["status"]
    log = builder.controller.log_path(cluster.ns, build["metadata"]["name"]).read_text()
    assert "Docker-API engine" in log
    image = f"{registry.host}/plugins/engine-acl@{build['status']['digest']}"
    wait_for(lambda: cluster.plugin("engine-acl")["status"].get("currentImage") == image,
             "currentImage")
    state = parse_desired_state(Document("engine", k, v)
                                for k, v in cluster.configmap("engine").items())
    release = state.plugin("engine_acl")
    assert release is not None and release.image == image
