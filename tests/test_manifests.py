"""manifests/ applied to a real kube-apiserver with server-side apply, as an operator would.

Every kustomization (the base, each broker example, each overlay) is rendered with the real
``kustomize build`` when scripts/ensure.d/kustomize.sh installed it (else with
testbed/manifests.py's renderer of the subset we use; both are compared when both exist), and
every object is applied for real. The test apiserver has no scheduler or kubelet: Deployments
and StatefulSets are stored and validated but never run; the builder's RBAC is exercised by the
builder and e2e tests, which run the builder as exactly this ServiceAccount.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from testbed.kube import ControlPlane
from testbed.manifests import (
    MANIFESTS,
    Applier,
    ManifestError,
    Obj,
    _object_id,
    kustomize_binary,
    render,
)

KUSTOMIZATIONS = [
    MANIFESTS, MANIFESTS / "base", MANIFESTS / "brokers" / "mosquitto",
    MANIFESTS / "brokers" / "hivemq", MANIFESTS / "brokers" / "vernemq",
    MANIFESTS / "brokers" / "emqx", MANIFESTS / "brokers" / "rabbitmq",
    MANIFESTS / "overlays" / "mosquitto", MANIFESTS / "overlays" / "all-brokers",
]


def _ids(docs: list[Obj]) -> set[str]:
    return {_object_id(d) for d in docs}


def _pods(docs: list[Obj]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")}


def _apply_all(applier: Applier, docs: list[Obj], dry_run: bool = False) -> None:
    """CRDs first, then wait until they are served: what `kubectl apply` users do twice."""
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    for doc in crds:
        applier.apply(doc, dry_run=dry_run)
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    deadline = time.monotonic() + 30
    for doc in rest:
        while True:
            try:
                applier.apply(doc, dry_run=dry_run)
                break
            except ManifestError as e:
                if "not served" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Applier:
    return Applier(control_plane.url, control_plane.identities["admin"].token,
                   control_plane.ca.cert, field_manager="plugforge-test-manifests")


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_renders(directory: Path) -> None:
    docs = render(directory)
    assert docs, directory
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    if kustomize_binary() is not None:
        ours = render(directory, use_binary=False)
        assert _ids(ours) == _ids(docs)
        images = {n: [c["image"] for c in p["containers"]] for n, p in _pods(docs).items()}
        assert images == {n: [c["image"] for c in p["containers"]]
                          for n, p in _pods(ours).items()}


def test_everything_is_accepted_by_the_apiserver(admin: Applier) -> None:
    docs = render(MANIFESTS / "overlays" / "all-brokers")
    _apply_all(admin, docs)
    for doc in docs:
        code, stored = admin.get(doc)
        assert code == 200, (_object_id(doc), stored)
    # Re-applying the same manifests is a no-op change, as with `kubectl apply --server-side`.
    _apply_all(admin, docs)


def test_example_brokerplugin_is_valid(admin: Applier) -> None:
    docs = render(MANIFESTS / "overlays" / "mosquitto")
    _apply_all(admin, [d for d in docs if d["kind"] == "CustomResourceDefinition"])
    plugin = next(d for d in docs if d["kind"] == "BrokerPlugin")
    # Dry run: a stored BrokerPlugin would make any running builder try to fetch example.com.
    stored = admin.apply(plugin, dry_run=True)
    assert stored["spec"]["target"]["rollout"] == "Automatic"
    assert admin.get(plugin)[0] == 404


def test_broken_manifest_is_refused(admin: Applier) -> None:
    """The apply path really validates: the same Deployment with a bad field is refused."""
    deployment = next(d for d in render(MANIFESTS / "brokers" / "mosquitto")
                      if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = -1
    with pytest.raises(ManifestError, match="containerPort"):
        admin.apply(deployment, dry_run=True)


def test_hardening_of_every_pod() -> None:
    for name, pod in _pods(render(MANIFESTS / "overlays" / "all-brokers")).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in [*pod["containers"], *pod.get("initContainers", [])]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            if c["name"] == "plugforge-sidecar":
                assert sc["readOnlyRootFilesystem"] is True
        for c in pod["containers"]:
            assert "memory" in c["resources"]["limits"], (name, c["name"])


def test_broker_examples_wire_the_sidecar() -> None:
    docs = render(MANIFESTS / "overlays" / "all-brokers")
    pods = _pods(docs)
    pdbs = {d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for d in docs
            if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"mosquitto", "hivemq", "vernemq", "rabbitmq"}
    for broker in ("mosquitto", "hivemq", "vernemq", "rabbitmq"):
        pod = pods[broker]
        containers = {c["name"]: c for c in pod["containers"]}
        sidecar, main = containers["plugforge-sidecar"], containers[broker]
        plugin_mounts = [m for c in (sidecar, main) for m in c["volumeMounts"]
                         if m["mountPath"] == "/plugins"]
        assert {m["name"] for m in plugin_mounts} == {"plugins"}, broker  # one shared volume
        target = next(v for v in pod["volumes"] if v["name"] == "target")
        assert target["configMap"]["name"] == f"{broker}-plugins"
        assert f"--configmap={broker}-plugins" in sidecar["args"]
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pods["mosquitto"]["shareProcessNamespace"] is True
    hivemq_init = pods["hivemq"]["initContainers"][0]
    assert hivemq_init["volumeMounts"][0]["mountPath"] == "/opt/hivemq/extensions"
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    headless = next(d for d in docs if d["metadata"]["name"] == statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("broker", ["mosquitto", "hivemq", "vernemq", "emqx", "rabbitmq"])
def test_every_broker_example_sidecar_args_parse(broker: str) -> None:
    """The sidecar refuses to start on arguments it cannot accept (e.g. no trust policy and no
    --allow-unsigned-images): each example's container args must pass its own parser."""
    from sidecar.settings import parse_args

    sidecars = [c for pod in _pods(render(MANIFESTS / "brokers" / broker)).values()
                for c in pod["containers"] if c["name"] == "plugforge-sidecar"]
    assert len(sidecars) == 1, broker
    settings = parse_args(sidecars[0]["args"], {"POD_NAMESPACE": "default"})
    assert settings.broker == broker
    assert settings.trust_policy is not None, "images must be verified"
