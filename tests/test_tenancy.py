"""Issue 16: one tenant may not read or change what belongs to another. Each test plays the
attacker against real components (kube-apiserver + etcd with manifests/ applied, the builder as
its own ServiceAccount, a Git server, a registry) and checks the refusal and that nothing of
the other tenant was read or changed.

The module runs its own apiserver, so its builder can watch every namespace (the tenants are
two namespaces) without picking up other modules' plugins. ``mallory`` is a tenant user: she
may create BrokerPlugins and PluginBuilds in her namespace and read nothing else.
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from builder_support import (
    Cluster,
    broker_plugin,
    fast_settings,
    install,
    running_builder,
    templates_in_use,
    tenant_namespace,
)

from builder.app import Builder
from testbed.kube import ControlPlane, Identity, start_control_plane
from testbed.registry import Registry

MALLORY = "mallory"
# The Secrets the tenants' operators let the builder read (the tenant Role's resourceNames).
LISTED = ("git-creds", "sa-token", "app-db", "github-hook")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = start_control_plane(tmp_path_factory.mktemp("tenancy-kube"),
                             (Identity(MALLORY, MALLORY, ("tenants",)),))
    try:
        install(cp)
        yield cp
    finally:
        cp.stop()


def _grant_tenant(cp: ControlPlane, namespace: str, user: str) -> None:
    """``user`` may manage BrokerPlugins and PluginBuilds in ``namespace``: nothing else."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "plugin-author"},
            "rules": [{"apiGroups": ["plugforge.dev"],
                       "resources": ["brokerplugins", "pluginbuilds"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch",
                                 "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "plugin-author"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": "plugin-author"},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": user}]}
    for plural, body in (("roles", role), ("rolebindings", binding)):
        code, out = cp.request(
            "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural}",
            body=body)
        assert code == 201, out


@pytest.fixture(scope="module")
def alice(plane: ControlPlane) -> Cluster:
    """Tenant A: a private repository, its credentials, its ConfigMap."""
    return Cluster(plane, tenant_namespace(plane, "alice", LISTED))


@pytest.fixture(scope="module")
def mallory(plane: ControlPlane) -> Cluster:
    """Tenant B, the attacker: may create BrokerPlugins in her namespace, not read Secrets."""
    ns = tenant_namespace(plane, "mallory", LISTED)
    _grant_tenant(plane, ns, MALLORY)
    return Cluster(plane, ns)


@pytest.fixture(scope="module")
def builder(plane: ControlPlane, registry: Registry, alice: Cluster, mallory: Cluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    with templates_in_use(tmp_path_factory.mktemp("templates"), slow_seconds=5):
        settings = fast_settings(plane, registry.ca.cert, "tenancy", "builder-tenancy-1",
                                 tmp_path_factory.mktemp("builder-state"),
                                 watch_namespace=alice.ns).with_(watch_namespace=None)
        with running_builder(settings) as b:
            yield b


def as_mallory(cluster: Cluster, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    code, out = cluster.cp.request(
        "POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{cluster.ns}/{plural}",
        identity=MALLORY, body=body)
    assert code == 201, out
    return out


class _Listener(http.server.BaseHTTPRequestHandler):
    """The attacker's "Git host": records what each request carried, answers 404."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"path": self.path, **dict(self.headers.items())})
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_host() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Listener", (_Listener,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


# --- 1. a secretRef names only Secrets made for the builder ------------------------------------


def _secret(cluster: Cluster, name: str, type_: str, data: dict[str, str],
            annotations: dict[str, str] | None = None) -> None:
    code, out = cluster.cp.request(
        "POST", f"/api/v1/namespaces/{cluster.ns}/secrets",
        body={"metadata": {"name": name, "annotations": annotations or {}}, "type": type_,
              "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
    assert code == 201, out


def test_1_secret_refs_to_secrets_not_made_for_the_builder_are_refused(
        builder: Builder, mallory: Cluster, registry: Registry,
        attacker_host: tuple[str, list[dict[str, str]]]) -> None:
    host, seen = attacker_host
    # Secrets in mallory's namespace she cannot read herself.
    _secret(mallory, "sa-token", "kubernetes.io/service-account-token",
            {"token": "eyJhbGciOi-the-namespace-default-token"},
            {"kubernetes.io/service-account.name": "default"})
    _secret(mallory, "app-db", "Opaque", {"username": "app", "password": "db-password"})
    _secret(mallory, "not-listed", "kubernetes.io/basic-auth",
            {"username": "ops", "password": "ops-password"})
    code, _ = mallory.cp.request("GET", f"/api/v1/namespaces/{mallory.ns}/secrets/app-db",
                                 identity=MALLORY)
    assert code == 403

    expected = {
        "sa-token": ("SecretRefused", "is a ServiceAccount token"),
        "app-db": ("SecretRefused", "has type 'Opaque'; the builder only uses a Secret of "
                                    "type kubernetes.io/basic-auth or kubernetes.io/ssh-auth"),
        "not-listed": ("Forbidden", "forbidden"),
    }
    for secret in expected:
        body = broker_plugin(f"steal-{secret}", url=f"{host}/{secret}.git",
                             repository=f"{registry.host}/plugins/steal", configmap=None)
        body["spec"]["source"]["git"]["secretRef"] = {"name": secret}
        as_mallory(mallory, "brokerplugins", body)
    for secret, (reason, words) in expected.items():
        build = mallory.wait_build(f"steal-{secret}")
        status = build["status"]
        assert (status["phase"], status["reason"]) == ("Failed", reason), status
        assert words in status["message"], status["message"]
        assert secret in status["message"]
    # Not one request reached the attacker's host, let alone one with credentials.
    assert seen == []

