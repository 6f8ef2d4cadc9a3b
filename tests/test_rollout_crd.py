"""The rollout fields of the BrokerPlugin CRD on the real apiserver: sidecars and the canary
strategy (defaults, rejections), and the per-pod status the builder writes."""

from __future__ import annotations

from typing import Any

import pytest
from builder_support import install, tenant_namespace

from builder.errors import InvalidSpec
from builder.resources import parse_plugin
from testbed.kube import ControlPlane

BP = "/apis/plugforge.dev/v1alpha1/namespaces/{ns}/brokerplugins"


def plugin(name: str, target: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
            "metadata": {"name": name},
            "spec": {"broker": "mosquitto",
                     "source": {"git": {"url": "https://git.example/acme/p.git", "ref": "main"}},
                     "image": {"repository": "registry.example:5000/plugins/p"},
                     "target": {"configMap": "broker-plugins", **target}}}


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane) -> str:
    install(control_plane)
    return tenant_namespace(control_plane, "rcrd")


def test_sidecars_and_canary_defaults(control_plane: ControlPlane, ns: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin("ok", {
        "sidecars": [{"pod": "mq-0", "address": "10.0.0.5:9090"},
                     {"pod": "mq-1", "address": "10.0.0.6:9090"}],
        "strategy": {"canary": {}}}))
    assert code == 201, body
    canary = body["spec"]["target"]["strategy"]["canary"]  # type: ignore[index]
    assert canary == {"enabled": True, "count": 1, "probeTimeoutSeconds": 60}
    spec = parse_plugin(body)
    assert [t.pod for t in spec.sidecars] == ["mq-0", "mq-1"] and spec.uses_canary


@pytest.mark.parametrize(("target", "field"), [
    ({"sidecars": [{"pod": "Not_A_Pod", "address": "a:1"}]}, "spec.target.sidecars[0].pod"),
    ({"sidecars": [{"pod": "mq-0"}]}, "spec.target.sidecars[0].address"),
    ({"strategy": {"canary": {"count": 0}}}, "spec.target.strategy.canary.count"),
    ({"strategy": {"canary": {"probeTimeoutSeconds": 0}}},
     "spec.target.strategy.canary.probeTimeoutSeconds"),
])
def test_bad_rollout_fields_are_rejected(control_plane: ControlPlane, ns: str,
                                         target: dict[str, Any], field: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin("bad", target))
    assert code == 422, body
    assert field in str(body.get("message"))


def test_duplicate_pods_are_refused_by_the_builder() -> None:
    obj = plugin("dup", {"sidecars": [{"pod": "mq-0", "address": "a:1"},
                                      {"pod": "mq-0", "address": "b:1"}]})
    obj["metadata"]["namespace"] = "x"
    with pytest.raises(InvalidSpec, match="each pod may be listed once"):
        parse_plugin(obj)


def test_per_pod_status_is_accepted(control_plane: ControlPlane, ns: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin("st", {}))
    assert code == 201, body
    status = {"podsReady": 1, "podsTotal": 2,
              "pods": [{"pod": "mq-0", "digest": "sha256:" + "1" * 64, "state": "Current",
                        "canary": False, "configHash": "sha256:" + "2" * 64,
                        "commit": "a" * 40, "build": "st-1", "lastError": "",
                        "desiredDigest": "sha256:" + "1" * 64, "time": "2026-01-01T00:00:00Z"}],
              "rollout": {"phase": "RolledBack", "digest": "sha256:" + "3" * 64,
                          "canaryPods": ["mq-0"], "message": "canary failed"}}
    code, out = control_plane.request("PUT", BP.format(ns=ns) + "/st/status",
                                      body={**body, "status": status})
    assert code == 200, out
    assert out["status"]["pods"][0]["state"] == "Current"  # type: ignore[index]
    assert out["status"]["rollout"]["phase"] == "RolledBack"  # type: ignore[index]
