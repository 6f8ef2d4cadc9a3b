"""plugforge the way users run it: a real node (containerd, kubelet, controller-manager,
scheduler; testbed/node.py) and images built from the project's Containerfiles.

One module, so its cost shows on its own: the node starts once for the session (and is removed
completely afterwards); the images are built once per input into the plugforge cache. When the
node cannot start, every test here fails with the reason; none is skipped.
"""

from __future__ import annotations

import ssl
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
    # The registry's blobs persist in the cache: a warm session pushes only what changed.
    storage = images.cache_dir() / "images" / "node-registry"
    storage.mkdir(parents=True, exist_ok=True)
    (node.NODE_DIR / "registry").mkdir()
    (node.NODE_DIR / "registry" / "storage").symlink_to(storage)
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


# --- the images, built from containers/*.Containerfile ---------------------------------------

@dataclass
class Image:
    ref: str  # name@digest in the node's registry
    built: str  # in the cache's podman store
    size: int
    build_seconds: float  # 0 when cached


@pytest.fixture(scope="session")
def plugforge_images(real_node: RealNode) -> dict[str, Image]:
    podman, log = real_node.podman, node.NODE_DIR / "images.log"
    t = time.monotonic()
    base = images.debian_base(podman, log)
    real_node.timings["debian base"] = time.monotonic() - t
    out = {}
    for name in ("sidecar", "builder"):
        t = time.monotonic()
        built = images.build(podman, ROOT / "containers" / f"{name}.Containerfile", name, base,
                             log)
        real_node.timings[f"{name} image"] = time.monotonic() - t
        t = time.monotonic()
        ref = images.push(podman, built.ref, real_node.registry.host, real_node.cp.ca,
                          f"plugforge/{name}", log)
        real_node.timings[f"{name} push"] = time.monotonic() - t
        out[name] = Image(ref, built.ref, built.size, built.seconds)
    return out


PROBE = """
import os
print("uid", os.getuid(), "gid", os.getgid())
for path in ("/opt/plugforge/probe", "/probe"):
    try:
        open(path, "w")
        print("writable", path)
    except OSError as e:
        print("refused", path, e.strerror)
"""


@pytest.mark.parametrize("name", ["sidecar", "builder"])
def test_image_runs_its_entrypoint_non_root_on_a_read_only_root(
        real_node: RealNode, plugforge_images: dict[str, Image], name: str) -> None:
    image, api = plugforge_images[name], real_node.api
    security = {"readOnlyRootFilesystem": True, "runAsNonRoot": True,
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    pod = f"image-{name}"
    started = time.monotonic()
    api.ok("POST", f"/api/v1/namespaces/{NS}/pods", {
        "metadata": {"name": pod},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "help", "image": image.ref, "args": ["--help"],
             "securityContext": security},
            {"name": "probe", "image": image.ref, "command": ["python", "-c", PROBE],
             "securityContext": security}]}})
    wait_for(lambda: pod_status(api, pod)["status"].get("phase") in ("Succeeded", "Failed"),
             f"pod {pod} to finish", timeout=300, interval=0.5)
    finished = time.monotonic() - started
    status = pod_status(api, pod)["status"]
    logs = {c: api_text(api, f"/api/v1/namespaces/{NS}/pods/{pod}/log?container={c}")
            for c in ("help", "probe")}
    assert status["phase"] == "Succeeded", (status, logs)
    assert "usage:" in logs["help"], logs["help"]
    # The image says USER 10001:10001; containerd 1.6 takes only the uid from it (gid 0) unless
    # the pod sets runAsGroup, as manifests/ do.
    assert "uid 10001 " in logs["probe"], logs["probe"]
    assert real_node.podman("image", "inspect", "--format", "{{.Config.User}}",
                            image.built).strip() == "10001:10001"
    assert "writable" not in logs["probe"], logs["probe"]
    assert "refused /opt/plugforge/probe Read-only file system" in logs["probe"], logs["probe"]
    # Guards against growth; the builder carries gcc, Erlang/OTP, Maven and a JDK (README).
    limit = {"sidecar": 450, "builder": 2100}[name]
    print(f"\n{name}: {image.size / 1e6:.0f} MB, built in {image.build_seconds:.0f} s "
          f"(0 = cached), pulled + ran in {finished:.1f} s; {real_node.timings}")
    assert image.size < limit * 1e6, f"{name} image is {image.size / 1e6:.0f} MB"
    api.ok("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod}")


def api_text(api: Api, path: str) -> str:
    """A plain-text API response (pod logs: apiserver -> kubelet -> containerd)."""
    req = urllib.request.Request(api.cp.url + path, headers={
        "Authorization": f"Bearer {api.cp.identities[api.identity].token}"})
    ctx = ssl.create_default_context(cafile=str(api.cp.ca.cert))
    with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
        return str(resp.read().decode(errors="replace"))
