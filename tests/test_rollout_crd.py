"""The rollout fields of the BrokerPlugin CRD on the real apiserver: the pod selector, the
canary and wave strategy (defaults, rejections), and the per-pod status the builder writes."""

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


def test_selector_canary_and_wave_defaults(control_plane: ControlPlane, ns: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin("ok", {
        "selector": {"matchLabels": {"app": "mq"},
                     "matchExpressions": [{"key": "tier", "operator": "NotIn",
                                           "values": ["test"]}]},
        "strategy": {"canary": {}, "waves": {}}}))
    assert code == 201, body
    target = body["spec"]["target"]  # type: ignore[index]
    assert target["strategy"]["canary"] == {"enabled": True, "count": 1,
                                            "probeTimeoutSeconds": 60}
    assert target["strategy"]["waves"] == {"maxUnavailable": "25%", "podTimeoutSeconds": 120}
    assert target["sidecarPort"] == 9443
    spec = parse_plugin(body)
    assert spec.selector is not None and spec.uses_canary
    assert spec.selector.matches({"app": "mq"}) and spec.selector.matches({"app": "mq",
                                                                           "tier": "prod"})
    assert not spec.selector.matches({"app": "mq", "tier": "test"})
    assert not spec.selector.matches({"app": "other"})
    assert spec.waves.size(50) == 12 and spec.waves.size(3) == 1


@pytest.mark.parametrize(("target", "field"), [
    ({"selector": {}}, "empty selector"),
    ({"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}, "need values"),
    ({"selector": {"matchLabels": {"app": "mq"}}, "sidecarPort": 0},
     "spec.target.sidecarPort"),
    ({"strategy": {"waves": {"maxUnavailable": "0%"}}}, "percent"),
    ({"strategy": {"waves": {"maxUnavailable": 0}}}, "percent"),
    ({"strategy": {"canary": {"count": 0}}}, "spec.target.strategy.canary.count"),
    ({"strategy": {"canary": {"probeTimeoutSeconds": 0}}},
     "spec.target.strategy.canary.probeTimeoutSeconds"),
])
def test_bad_rollout_fields_are_rejected(control_plane: ControlPlane, ns: str,
                                         target: dict[str, Any], field: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin("bad", target))
    assert code == 422, body
    assert field in str(body.get("message"))


@pytest.mark.parametrize(("target", "message"), [
    ({"selector": {}}, "empty selector"),
    ({"selector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                         "values": ["x"]}]}}, "In/NotIn need"),
    ({"strategy": {"waves": {"maxUnavailable": "150%"}}}, "1%-100%"),
])
def test_the_builder_refuses_what_a_schema_would(target: dict[str, Any], message: str) -> None:
    obj = plugin("dup", target)
    obj["metadata"]["namespace"] = "x"
    with pytest.raises(InvalidSpec, match=message):
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
