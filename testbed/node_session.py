"""The real node (testbed/node.py) as one context manager, for code outside pytest (bench/):
the control plane on the node's address, a registry on the bridge, the pause and busybox images
pushed, the node Ready; everything removed on exit. tests/node_support.py does the same as a
session fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed import images, node
from testbed.kube import ControlPlane
from testbed.registry import Registry, start_registry


@dataclass(frozen=True)
class NodeSession:
    cp: ControlPlane
    registry: Registry
    podman: images.Podman
    busybox: str
    """image@digest of a static busybox in the node's registry."""
    log: Path


@contextmanager
def real_node_session() -> Iterator[NodeSession]:
    tunables = node.prepare()
    cp = node.start_control_plane_for_node()
    registry: Registry | None = None
    started: node.Node | None = None
    try:
        storage = images.cache_dir() / "images" / "node-registry"
        storage.mkdir(parents=True, exist_ok=True)
        (node.NODE_DIR / "registry").mkdir()
        (node.NODE_DIR / "registry" / "storage").symlink_to(storage)
        registry = start_registry(node.NODE_DIR / "registry", cp.ca, address=node.NODE_IP)
        node.record(registry.server)
        podman, log = images.Podman.in_cache(), node.NODE_DIR / "images.log"
        pause = images.static_image(podman, "pause", {"/pause": images.pause_binary(log)},
                                    ["/pause"], log)
        busybox = images.static_image(podman, "busybox", {"/bin/busybox": Path("/bin/busybox")},
                                      ["/bin/busybox"], log)
        pause_ref = images.push(podman, pause.ref, registry.host, cp.ca, "pause", log)
        busybox_ref = images.push(podman, busybox.ref, registry.host, cp.ca, "busybox", log)
        started = node.start_node(cp, registry, pause_ref, tunables)
        yield NodeSession(cp, registry, podman, busybox_ref, log)
    finally:
        if started is not None:
            started.stop()
        if registry is not None:
            registry.stop()
        cp.stop()
        node.teardown(tunables=tunables)
        node.release()
