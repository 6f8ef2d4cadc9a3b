"""Two live EMQX 5.8.9 nodes joined into one cluster: why plugforge runs one sidecar per EMQX
cluster, next to one node, and not one per pod (manifests/brokers/emqx).

Shown here: EMQX's REST API acts on the whole cluster. A package placed in one node's plugins
dir and started through that node's API runs on every node (the other node copies it); broker
config set on one node is the other's too; a node that comes back takes the cluster's current
plugin. So a second sidecar in another pod is not a second, independent broker to converge: it
drives the same cluster-wide state from its own copy of the ConfigMap, and a copy that is behind
(kubelet projections lag up to a minute) undoes the other sidecar's rollout everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from emqx_support import (
    PLUGIN,
    Versions,
    accepted,
    build_versions,
    enable_password_database,
    make_adapter,
)

from sidecar.adapters.emqx import EmqxAdapter
from testbed.emqx import Emqx, start_emqx

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class Cluster:
    a: Emqx
    b: Emqx
    versions: Versions
    root: Path

    def sidecar(self, node: Emqx, label: str) -> EmqxAdapter:
        plugin_dir = self.root / f"sidecar-{label}"
        plugin_dir.mkdir(exist_ok=True)
        return make_adapter(node, self.root / f"secret-{label}", plugin_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("emqx-cluster")
    a = start_emqx(root / "a")
    b = None
    try:
        b = start_emqx(root / "b", cookie=a.env["EMQX_NODE__COOKIE"])
        b.join(a)
        enable_password_database(a)
        yield Cluster(a, b, build_versions(root / "build"), root)
    finally:
        for node in (b, a):
            if node is not None:
                node.stop()


def statuses(node: Emqx) -> dict[str, list[str]]:
    """name-vsn -> the node names it runs on, as this node's API reports the cluster."""
    return {f"{p['name']}-{p['rel_vsn']}": sorted(s["node"] for s in p["running_status"]
                                                  if s["status"] == "running")
            for p in node.api("GET", "/plugins")}


def test_the_api_of_one_node_acts_on_the_whole_cluster(cluster: Cluster) -> None:
    a, b, v1 = cluster.a, cluster.b, cluster.versions.v1
    both = sorted([a.nodename, b.nodename])
    assert sorted(n["node"] for n in b.api("GET", "/nodes")) == both
    sidecar = cluster.sidecar(a, "a")
    sidecar.install_plugin(PLUGIN, v1.digest, v1.tree)
    sidecar.enable(PLUGIN, v1.digest, {})
    # Placed in a's plugins dir only, started through a's API: running on both nodes.
    assert statuses(b) == {f"{PLUGIN}-0.1.0": both}
    assert (b.plugins_dir / v1.package.name).read_bytes() == v1.package.read_bytes()
    assert not accepted(b, "mallory") and accepted(b, "alice")
    sidecar.apply_config({"mqtt.max_inflight": "77"})
    assert b.api("GET", "/configs/global_zone")["mqtt"]["max_inflight"] == 77
    sidecar.apply_config({"mqtt.max_inflight": None})


def test_a_sidecar_per_pod_would_undo_a_rollout_cluster_wide(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    v1, v2 = cluster.versions.v1, cluster.versions.v2
    on_a, on_b = cluster.sidecar(a, "a"), cluster.sidecar(b, "b")
    for sidecar in (on_a, on_b):
        for v in (v1, v2):
            sidecar.install_plugin(PLUGIN, v.digest, v.tree)
    on_a.enable(PLUGIN, v1.digest, {})
    on_b.enable(PLUGIN, v1.digest, {})  # same desired state: adopted, nothing changed
    assert [c for c in on_b.api.log if not c.startswith("GET")] == []
    on_a.enable(PLUGIN, v2.digest, {})  # a's sidecar saw the new ConfigMap first
    assert not accepted(a, "eve") and not accepted(b, "eve")
    on_b.enable(PLUGIN, v1.digest, {})  # b's copy of the ConfigMap is still behind
    both = sorted([a.nodename, b.nodename])
    assert statuses(a) == {f"{PLUGIN}-0.1.0": both}  # the whole cluster went back to v1
    assert accepted(a, "eve")
    on_a.enable(PLUGIN, v2.digest, {})


def test_a_node_that_comes_back_runs_the_clusters_plugin(cluster: Cluster) -> None:
    a, b, v2 = cluster.a, cluster.b, cluster.versions.v2
    sidecar = cluster.sidecar(a, "a")
    sidecar.install_plugin(PLUGIN, v2.digest, v2.tree)
    sidecar.enable(PLUGIN, v2.digest, {})
    b.stop_node()
    try:
        assert statuses(a) == {f"{PLUGIN}-0.2.0": [a.nodename]}
    finally:
        b.start_node()
    assert statuses(b) == {f"{PLUGIN}-0.2.0": sorted([a.nodename, b.nodename])}
    assert not accepted(b, "eve") and accepted(b, "alice")
    assert json.loads((b.plugins_dir / f"{PLUGIN}-0.2.0" / "release.json").read_text())[
        "rel_vsn"] == "0.2.0"
