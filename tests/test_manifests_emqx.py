"""manifests/brokers/emqx: accepted by a real kube-apiserver, and wired as decided on two live
nodes (tests/test_emqx_cluster.py): one sidecar for the whole EMQX cluster, next to one node,
sharing that node's plugins dir."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.kube import ControlPlane
from testbed.manifests import MANIFESTS, Applier, render

EXAMPLE = MANIFESTS / "brokers" / "emqx"


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}


def test_one_sidecar_for_the_cluster_next_to_one_node() -> None:
    sets = _pods(render(EXAMPLE))
    assert set(sets) == {"emqx-plugforge", "emqx"}
    assert sets["emqx-plugforge"]["spec"]["replicas"] == 1
    with_sidecar = [n for n, s in sets.items() if any(
        c["name"] == "plugforge-sidecar" for c in s["spec"]["template"]["spec"]["containers"])]
    assert with_sidecar == ["emqx-plugforge"]
    pod = sets["emqx-plugforge"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    sidecar, emqx = containers["plugforge-sidecar"], containers["emqx"]
    options = dict(a.removeprefix("--adapter-opt=").split("=", 1) for a in sidecar["args"]
                   if a.startswith("--adapter-opt="))
    shared = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert shared[options["install_dir"]] == "emqx-plugins"
    assert {m["name"]: m["mountPath"] for m in emqx["volumeMounts"]}["emqx-plugins"] == \
        "/opt/emqx/plugins"  # EMQX's default plugins.install_dir
    assert options["api_url"] == "http://127.0.0.1:18083"
    # Both StatefulSets form one cluster: same discovery, same headless Service, same labels.
    for s in sets.values():
        assert s["spec"]["serviceName"] == "emqx-headless"
        assert s["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "emqx"
        for c in s["spec"]["template"]["spec"]["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert "memory" in c["resources"]["limits"]


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Applier:
    return Applier(control_plane.url, control_plane.identities["admin"].token,
                   control_plane.ca.cert, field_manager="plugforge-test-manifests-emqx")


def test_accepted_by_the_apiserver(admin: Applier) -> None:
    docs = render(EXAMPLE)
    for doc in docs:
        admin.apply(doc, dry_run=True)
