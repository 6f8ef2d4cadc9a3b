"""The real node (tests/test_real_node.py's header says what it is) as session fixtures, so every
module that needs pods shares one node: ``real_node`` (containerd + kubelet + controller-manager
+ scheduler beside a control plane, with a registry on the node's bridge) and
``plugforge_images`` (the sidecar and builder images built from containers/ and pushed there).
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
from testbed.node_cluster import start_session
from testbed.registry import Registry

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
    session = start_session()  # the machine's node lock, control plane, registry, node
    yield RealNode(session.cp, session.registry, session.node, session.podman, session.api,
                   session.busybox, session.timings)
    session.stop()


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


