"""plugforge the way users run it: a real node (containerd, kubelet, controller-manager,
scheduler; testbed/node.py) and images built from the project's Containerfiles.

One module, so its cost shows on its own: the node starts once for the session (and is removed
completely afterwards); the images are built once per input into the plugforge cache. When the
node cannot start, every test here fails with the reason; none is skipped.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testbed import images, node
from testbed.e2e_cluster import Api, wait_for
from testbed.kube import ControlPlane
from testbed.registry import Registry, start_registry

ROOT = Path(__file__).resolve().parent.parent
NS = "default"


@dataclass
class RealNode:
    cp: ControlPlane
    registry: Registry
    node: node.Node
    podman: images.Podman
    api: Api
    busybox: str  # image@digest in the node's registry
    timings: dict[str, float]

    @property
    def server(self) -> Any:
        return self.node.server


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    tunables = node.prepare()
    cp = node.start_control_plane_for_node()
    registry = start_registry(node.NODE_DIR / "registry", cp.ca, address=node.NODE_IP)
    node.record(registry.server)
    timings["control plane + registry"] = time.monotonic() - started
    podman = images.Podman.in_cache()
    log = node.NODE_DIR / "images.log"
    try:
        t = time.monotonic()
        pause = images.static_image(podman, "pause", {"/pause": images.pause_binary(log)},
                                    ["/pause"], log)
        busybox = images.static_image(podman, "busybox", {"/bin/busybox": Path("/bin/busybox")},
                                      ["/bin/busybox"], log)
        pause_ref = images.push(podman, pause.ref, registry.host, cp.ca, "pause", log)
        busybox_ref = images.push(podman, busybox.ref, registry.host, cp.ca, "busybox", log)
        timings["pause + busybox images"] = time.monotonic() - t
        t = time.monotonic()
        n = node.start_node(cp, registry, pause_ref, tunables)
        timings["node Ready"] = time.monotonic() - t
    except BaseException:
        registry.stop()
        cp.stop()
        node.teardown(tunables=tunables)
        raise
    yield RealNode(cp, registry, n, podman, Api(cp), busybox_ref, timings)
    n.stop()
    registry.stop()
    cp.stop()
    node.teardown()


def pod_status(api: Api, name: str) -> dict[str, Any]:
    out: dict[str, Any] = api.ok("GET", f"/api/v1/namespaces/{NS}/pods/{name}")
    return out


def wait_running(api: Api, name: str, timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pod = pod_status(api, name)
        conditions = pod.get("status", {}).get("conditions", [])
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            return pod
        return None
    return wait_for(ready, f"pod {name} Ready", timeout=timeout, interval=0.2)


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def test_node_runs_a_pod_that_sees_its_configmap_and_its_updates(real_node: RealNode) -> None:
    api = real_node.api
    api.ok("POST", f"/api/v1/namespaces/{NS}/configmaps",
           {"metadata": {"name": "projected"}, "data": {"greeting": "hello"}})
    api.ok("POST", f"/api/v1/namespaces/{NS}/pods", {
        "metadata": {"name": "projection"},
        "spec": {
            "containers": [{
                "name": "web", "image": real_node.busybox,
                "args": ["httpd", "-f", "-p", "8080", "-h", "/cfg"],
                "readinessProbe": {"httpGet": {"path": "/greeting", "port": 8080},
                                   "periodSeconds": 1},
                "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "allowPrivilegeEscalation": False},
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "projected"}}]}})
    started = time.monotonic()
    pod = wait_running(api, "projection")
    pod_ready = time.monotonic() - started
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.217.0."), pod["status"]
    assert pod["spec"]["nodeName"] == node.NODE_NAME  # placed by the real scheduler
    assert http_get(f"http://{ip}:8080/greeting") == "hello"

    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/projected")
    cm["data"]["greeting"] = "changed"
    api.ok("PUT", f"/api/v1/namespaces/{NS}/configmaps/projected", cm)
    written = time.monotonic()
    wait_for(lambda: http_get(f"http://{ip}:8080/greeting") == "changed",
             "the kubelet to project the new ConfigMap", timeout=30, interval=0.05)
    propagation = time.monotonic() - written
    print(f"\npod created -> Ready {pod_ready:.1f} s; ConfigMap write -> seen in the pod "
          f"{propagation:.2f} s; setup {real_node.timings}")
    assert propagation < 10

    api.ok("DELETE", f"/api/v1/namespaces/{NS}/pods/projection")
    api.ok("DELETE", f"/api/v1/namespaces/{NS}/configmaps/projected")
