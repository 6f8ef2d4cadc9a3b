"""The CRDs and the builder's RBAC against a real kube-apiserver."""

from __future__ import annotations

from typing import Any

import pytest
from builder_support import install, tenant_namespace

from testbed.kube import ControlPlane

BP = "/apis/plugforge.dev/v1alpha1/namespaces/{ns}/brokerplugins"
PB = "/apis/plugforge.dev/v1alpha1/namespaces/{ns}/pluginbuilds"


def plugin(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "broker": "mosquitto",
        "source": {"git": {"url": "https://git.example/acme/plugin.git", "ref": "main"}},
        "image": {"repository": "registry.example:5000/plugins/acl"},
        "target": {"configMap": "broker-plugins"},
    }
    for path, value in overrides.items():
        node = spec
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return {"apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
            "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def ns(control_plane: ControlPlane) -> str:
    install(control_plane)
    return tenant_namespace(control_plane, "crd")


def test_valid_plugin_is_accepted_with_defaults(control_plane: ControlPlane, ns: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin("ok"))
    assert code == 201, body
    spec: Any = body["spec"]
    assert spec["enabled"] is True
    assert spec["buildHistoryLimit"] == 5
    assert spec["source"]["git"]["path"] == "."
    assert spec["target"]["rollout"] == "Automatic"
    assert spec["image"]["plainHTTP"] is False


def test_short_name_and_printer_columns(control_plane: ControlPlane, ns: str) -> None:
    code, body = control_plane.request("GET", "/apis/plugforge.dev/v1alpha1")
    assert code == 200
    resources: Any = body["resources"]
    bp = next(r for r in resources if r["name"] == "brokerplugins")
    assert bp["shortNames"] == ["bp"]
    code, crd = control_plane.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
               "brokerplugins.plugforge.dev")
    version: Any = crd["spec"]
    columns = [c["name"] for c in version["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Broker", "Ref", "Commit", "Digest", "Ready", "Age"]


@pytest.mark.parametrize(("name", "overrides", "complaint"), [
    ("bad-broker", {"broker": "nats"}, "spec.broker"),
    ("no-url", {"source__git__url": None}, "spec.source.git.url"),
    ("dash-ref", {"source__git__ref": "-x"}, "spec.source.git.ref"),
    ("dotdot-ref", {"source__git__ref": "a..b"}, "spec.source.git.ref"),
    ("space-ref", {"source__git__ref": "a b"}, "spec.source.git.ref"),
    ("ext-url", {"source__git__url": "ext::sh -c touch% /tmp/pwned"}, "spec.source.git.url"),
    ("file-url", {"source__git__url": "file:///etc"}, "spec.source.git.url"),
    ("dash-url", {"source__git__url": "--upload-pack=touch /tmp/x"}, "spec.source.git.url"),
    ("escape-path", {"source__git__path": "../other"}, "spec.source.git.path"),
    ("abs-path", {"source__git__path": "/etc"}, "spec.source.git.path"),
    ("bad-revision", {"source__git__revision": "HEAD~1"}, "spec.source.git.revision"),
    ("bad-repo", {"image__repository": "UPPER/case"}, "spec.image.repository"),
    ("bad-rollout", {"target__rollout": "Sometimes"}, "spec.target.rollout"),
    ("history-zero", {"buildHistoryLimit": 0}, "spec.buildHistoryLimit"),
    ("no-image", {"image": None}, "spec.image"),
])
def test_invalid_plugins_are_rejected(control_plane: ControlPlane, ns: str, name: str,
                                      overrides: dict[str, Any], complaint: str) -> None:
    code, body = control_plane.request("POST", BP.format(ns=ns), body=plugin(name, **overrides))
    assert code == 422, body
    assert complaint in str(body["message"])


def test_pluginbuild_schema(control_plane: ControlPlane, ns: str) -> None:
    good = {"apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
            "metadata": {"name": "ok-1"},
            "spec": {"plugin": "ok", "trigger": {"type": "Manual", "user": "alice"}}}
    code, body = control_plane.request("POST", PB.format(ns=ns), body=good)
    assert code == 201, body
    bad = {**good, "metadata": {"name": "bad-1"},
           "spec": {"plugin": "ok", "trigger": {"type": "Cron"}}}
    code, body = control_plane.request("POST", PB.format(ns=ns), body=bad)
    assert code == 422
    assert "spec.trigger.type" in str(body["message"])


# --- RBAC: what the builder identity may and may not do -------------------------------------


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/apis/plugforge.dev/v1alpha1/brokerplugins", 200),
    ("GET", "/apis/plugforge.dev/v1alpha1/pluginbuilds", 200),
    ("GET", "/apis/coordination.k8s.io/v1/namespaces/plugforge-system/leases/x", 404),
    ("GET", "/api/v1/namespaces/{ns}/secrets/nope", 404),       # get by name: allowed
    ("GET", "/api/v1/namespaces/{ns}/configmaps/nope", 404),
    # refused: enumerate secrets, anything outside tenant namespaces, plugin spec writes
    ("GET", "/api/v1/secrets", 403),
    ("GET", "/api/v1/namespaces/{ns}/secrets", 403),
    ("GET", "/api/v1/namespaces/kube-system/secrets/nope", 403),
    ("GET", "/api/v1/namespaces/kube-system/configmaps/nope", 403),
    ("GET", "/api/v1/configmaps", 403),
    ("DELETE", "/api/v1/namespaces/{ns}/configmaps/nope", 403),
    ("DELETE", "/apis/plugforge.dev/v1alpha1/namespaces/{ns}/brokerplugins/ok", 403),
    ("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/x", 403),
    ("GET", "/api/v1/pods", 403),
])
def test_builder_rbac(control_plane: ControlPlane, ns: str, method: str, path: str,
                      expected: int) -> None:
    code, body = control_plane.request(method, path.format(ns=ns), identity="builder")
    assert code == expected, body


def test_builder_cannot_write_plugin_spec_or_create_plugins(control_plane: ControlPlane,
                                                            ns: str) -> None:
    code, _ = control_plane.request("POST", BP.format(ns=ns), identity="builder",
                                    body=plugin("sneaky"))
    assert code == 403
    code, _ = control_plane.request("POST", f"/api/v1/namespaces/{ns}/configmaps",
                                    identity="builder",
                                    body={"metadata": {"name": "allowed"}, "data": {}})
    assert code == 201
    code, _ = control_plane.request("POST", "/api/v1/namespaces/kube-system/configmaps",
                                    identity="builder",
                                    body={"metadata": {"name": "refused"}, "data": {}})
    assert code == 403


def test_watch_from_a_too_old_resource_version_is_gone(control_plane: ControlPlane,
                                                      ns: str) -> None:
    """The builder's watch loop relists on ``Gone``; prove the adapter raises it."""
    from builder.errors import Gone
    from builder.kube import Kube

    kube = Kube.from_kubeconfig(control_plane.kubeconfig("builder"))
    try:
        with pytest.raises(Gone):
            for _ in kube.watch("brokerplugins", "1", timeout_seconds=5):
                pass
        items, rv = kube.list_plugins()
        assert any(i["metadata"]["name"] == "ok" for i in items)
        assert int(rv) > 1
    finally:
        kube.close()
