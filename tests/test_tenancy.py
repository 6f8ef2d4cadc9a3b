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
import json
import logging
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import kubernetes.client
import pytest
import yaml
from builder_support import (
    Cluster,
    broker_plugin,
    fast_settings,
    install,
    running_builder,
    scaffold_repo,
    templates_in_use,
    tenant_namespace,
    wait_for,
)
from conftest import GIT_CREDENTIALS
from sidecar_support import broker_yaml, make_sidecar, start_dynsec_broker
from sidecar_support import wait_for as sidecar_wait
from test_webhooks_server import post
from webhooks_support import Commit, Push, encode, github_headers, github_push

from builder.api import grpc_service
from builder.app import Builder
from builder.errors import InvalidSpec, KubeError
from builder.kube import Kube, apply_documents, load_documents
from builder.resources import parse_plugin
from builder.rollout.sidecars import SidecarClient
from builder.webhooks import service
from plugforge.cli import main as plugforge
from plugforge.grpc_auth import secure_channel
from plugforge.v1 import build_pb2 as pb
from plugforge.v1 import build_pb2_grpc
from sidecar.state import Phase
from testbed.certs import CertificateAuthority
from testbed.configmap_dir import ConfigMapDir
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane, Identity, start_control_plane
from testbed.procs import Supervisor
from testbed.registry import Registry

MALLORY = "mallory"
# The Secrets the tenants' operators let the builder read (the tenant Role's resourceNames).
LISTED = ("git-creds", "sa-token", "app-db", "github-hook", "shipped-hook", "absent-hook",
          "copycat-hook")


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


# --- 2. a mirror holds one tenant's fetches only -----------------------------------------------


@pytest.fixture(scope="module")
def alice_private(builder: Builder, alice: Cluster, git_server_auth: GitServer,
                  registry: Registry, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Any]:
    """Alice's private repository, built once with her credentials (so the builder's mirror
    of that URL holds her commits)."""
    url = git_server_auth.create_repo(f"{alice.ns}/private.git")
    repo = scaffold_repo(tmp_path_factory.mktemp("alice") / "private", "mosquitto-c",
                         "mosquitto", "alice-acl", git_server_auth.authed_url(url))
    user, token = GIT_CREDENTIALS
    alice.create_secret("git-creds", {"username": user, "password": token},
                        "kubernetes.io/basic-auth")
    body = broker_plugin("alice-acl", url=url, repository=f"{registry.host}/plugins/alice",
                         configmap="alice-plugins")
    body["spec"]["source"]["git"]["secretRef"] = {"name": "git-creds"}
    alice.create("brokerplugins", body)
    build = alice.wait_build("alice-acl")
    assert build["status"]["phase"] == "Succeeded", build["status"]
    return {"url": url, "repo": repo, "commit": build["status"]["commit"]}


def test_2_a_commit_in_another_tenants_mirror_is_not_built(
        builder: Builder, alice_private: dict[str, Any], mallory: Cluster,
        registry: Registry) -> None:
    commit = alice_private["commit"]
    for name, revision in (("pin-full", commit), ("pin-short", commit[:8])):
        body = broker_plugin(name, url=alice_private["url"], configmap=None,
                             repository=f"{registry.host}/plugins/{name}")
        body["spec"]["source"]["git"]["revision"] = revision
        as_mallory(mallory, "brokerplugins", body)
    for name in ("pin-full", "pin-short"):
        status = mallory.wait_build(name)["status"]
        assert (status["phase"], status["reason"]) == ("Failed", "SourceAuthFailed"), status
        assert "refused our credentials" in status["message"]
        assert not status.get("image") and not status.get("digest"), status
    # Alice's mirror is the only one that has her commit; mallory's has nothing.
    mirrors = builder.settings.git_dir
    holders = [p.parent for p in mirrors.glob("*/*/HEAD")
               if subprocess.run(["git", "-C", str(p.parent), "cat-file", "-e", commit],
                                 capture_output=True).returncode == 0]
    assert len(holders) == 1, holders


# --- 4. a webhook is a poke: the builder resolves the ref itself -------------------------------

HOOK_SECRET = "tenancy-webhook-secret-9d1e"


@pytest.fixture(scope="module")
def hooks(plane: ControlPlane, builder: Builder) -> Iterator[service.Webhooks]:
    kube = Kube.from_kubeconfig(plane.kubeconfig("builder"))
    endpoint = service.start_with_kube(kube)
    try:
        yield endpoint
    finally:
        endpoint.stop()
        kube.close()


@pytest.fixture(scope="module")
def hooked(builder: Builder, alice: Cluster, git_server: GitServer, registry: Registry,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Alice's plugin following ``main``, built at two commits (c1 then c2, the tip)."""
    url = git_server.create_repo(f"{alice.ns}/hooked.git")
    repo = scaffold_repo(tmp_path_factory.mktemp("hooked") / "hooked", "mosquitto-c",
                         "mosquitto", "hooked", url)
    alice.create_secret("github-hook", {"secret": HOOK_SECRET})
    alice.create("brokerplugins", broker_plugin(
        "hooked", url=url, repository=f"{registry.host}/plugins/hooked", configmap="hooked",
        webhook={"secretRef": {"name": "github-hook"}}))
    first = alice.wait_build("hooked")
    assert first["status"]["phase"] == "Succeeded", first["status"]
    c1 = first["status"]["commit"]
    c2 = _commit(repo, url, "second version")
    wait_for(lambda: alice.plugin("hooked")["status"].get("currentCommit") == c2,
             "the plugin to roll out c2 (resync)")
    return {"url": url, "repo": repo, "c1": c1, "c2": c2}


def _commit(repo: Path, url: str, note: str, ref: str = "HEAD:main") -> str:
    file = repo / "src" / "hooked.c"
    file.write_text(file.read_text() + f"/* {note} */\n")
    run_git(repo, "commit", "-qam", note)
    run_git(repo, "push", "-q", url, ref)
    return run_git(repo, "rev-parse", "HEAD")


def _push_event(git_server: GitServer, alice: Cluster, ref: str, before: str, after: str,
                delivery: str) -> tuple[bytes, dict[str, str]]:
    push = Push(host=f"127.0.0.1:{git_server.port}", owner=alice.ns, repo="hooked", ref=ref,
                before=before, after=after, scheme="http", pusher="mallory",
                commits=[Commit(after, modified=["src/hooked.c"])])
    body = encode(github_push(push))
    return body, github_headers(body, HOOK_SECRET.encode(), delivery=delivery)


def _rolled_out(alice: Cluster) -> tuple[str, str]:
    """The image and commit of the release in the ConfigMap (its provenance names the last
    build, which a rebuild of the same commit changes)."""
    release = yaml.safe_load(alice.configmap("hooked")["plugin.hooked.yaml"])
    return release["image"], release["source"]["commit"]


def _webhook_build(alice: Cluster, delivery: str) -> dict[str, Any] | None:
    for b in alice.builds("hooked"):
        if b["spec"]["trigger"].get("delivery") == delivery and \
                (b.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return b
    return None


def test_4_a_replayed_push_does_not_roll_a_plugin_back(
        hooked: dict[str, Any], hooks: service.Webhooks, alice: Cluster,
        git_server: GitServer) -> None:
    rolled_out = _rolled_out(alice)
    assert rolled_out[1] == hooked["c2"]
    # The push that once brought c1, signed, replayed with a fresh delivery id.
    body, headers = _push_event(git_server, alice, "refs/heads/main", "0" * 40, hooked["c1"],
                                "replay-of-c1")
    code, out = post(hooks, "/webhooks/github", body, headers)
    assert code == 202, out
    build = wait_for(lambda: _webhook_build(alice, "replay-of-c1"), "the replay's build")
    assert "commit" not in build["spec"], build["spec"]
    assert build["spec"]["trigger"]["commit"] == hooked["c1"]  # recorded, not obeyed
    assert (build["status"]["phase"], build["status"]["commit"], build["status"]["ref"]) == \
        ("Succeeded", hooked["c2"], "refs/heads/main"), build["status"]
    assert alice.plugin("hooked")["status"]["currentCommit"] == hooked["c2"]
    assert _rolled_out(alice) == rolled_out


def test_4_a_tag_named_like_the_branch_is_ambiguous_not_rolled_out(
        hooked: dict[str, Any], hooks: service.Webhooks, alice: Cluster,
        git_server: GitServer) -> None:
    rolled_out = _rolled_out(alice)
    repo, url = hooked["repo"], hooked["url"]
    run_git(repo, "checkout", "-q", "-b", "side")
    side = _commit(repo, url, "not on main", "HEAD:refs/tags/main")
    run_git(repo, "checkout", "-q", "-")
    body, headers = _push_event(git_server, alice, "refs/tags/main", "0" * 40, side,
                                "tag-main")
    code, out = post(hooks, "/webhooks/github", body, headers)
    assert code == 202, out
    build = wait_for(lambda: _webhook_build(alice, "tag-main"), "the tag push's build")
    status = build["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "AmbiguousRef"), status
    assert "both refs/heads/main and refs/tags/main exist" in status["message"]
    plugin = alice.plugin("hooked")["status"]
    assert plugin["currentCommit"] == hooked["c2"]
    assert _rolled_out(alice) == rolled_out
    run_git(repo, "push", "-q", url, ":refs/tags/main")  # leave the repository unambiguous


def test_4_a_short_ref_naming_only_a_tag_builds_that_tag(
        hooked: dict[str, Any], alice: Cluster, registry: Registry) -> None:
    run_git(hooked["repo"], "tag", "v1.2", hooked["c2"])
    run_git(hooked["repo"], "push", "-q", hooked["url"], "refs/tags/v1.2")
    alice.create("brokerplugins", broker_plugin(
        "tagged", url=hooked["url"], ref="v1.2", configmap=None,
        repository=f"{registry.host}/plugins/hooked"))
    status = alice.wait_build("tagged")["status"]
    assert (status["phase"], status["commit"], status["ref"]) == \
        ("Succeeded", hooked["c2"], "refs/tags/v1.2"), status



def test_4_a_plugins_own_receiver_path_checks_only_that_plugins_secret(
        hooked: dict[str, Any], hooks: service.Webhooks, alice: Cluster, mallory: Cluster,
        git_server: GitServer, registry: Registry) -> None:
    copycat_secret = "mallory-knows-this-one-7c2e"
    mallory.create_secret("copycat-hook", {"secret": copycat_secret})
    as_mallory(mallory, "brokerplugins", broker_plugin(
        "copycat", url=hooked["url"], repository=f"{registry.host}/plugins/copycat",
        configmap=None, enabled=False, webhook={"secretRef": {"name": "copycat-hook"}}))
    path = f"/webhooks/github/{alice.ns}/hooked"
    before = len(alice.builds("hooked"))
    body, _ = _push_event(git_server, alice, "refs/heads/main", "0" * 40, hooked["c2"], "x")
    # Signed with mallory's secret, sent to alice's receiver: only alice's secret is tried.
    code, out = post(hooks, path, body, github_headers(body, copycat_secret.encode()))
    assert code == 401, out
    code, out = post(hooks, path, body, github_headers(body, HOOK_SECRET.encode()))
    assert code == 202, out
    assert [q["plugin"] for q in out["queued"]] == [f"{alice.ns}/hooked"]
    wait_for(lambda: len(alice.builds("hooked")) > before, "the poke's build request")

# --- 5. a BrokerPlugin owns its ConfigMap key --------------------------------------------------


def test_5_a_second_plugin_of_the_same_name_gets_conflict_and_writes_nothing(
        builder: Builder, alice: Cluster, git_server: GitServer, registry: Registry,
        tmp_path: Path) -> None:
    urls = {}
    for owner in ("first", "second"):
        urls[owner] = git_server.create_repo(f"{alice.ns}/{owner}.git")
        # Both repositories name their plugin "gate": the name picks the ConfigMap key.
        repo = scaffold_repo(tmp_path / owner, "mosquitto-c", "mosquitto", "gate", urls[owner])
        if owner == "second":
            (repo / "src" / "gate.c").write_text((repo / "src" / "gate.c").read_text() +
                                                 "/* a different plugin */\n")
            run_git(repo, "commit", "-qam", "different")
            run_git(repo, "push", "-q", urls[owner], "HEAD:main")
    alice.create("brokerplugins", broker_plugin(
        "first", url=urls["first"], repository=f"{registry.host}/plugins/first",
        configmap="shared"))
    wait_for(lambda: alice.condition("first", "Ready").get("reason") == "RolledOut",
             "the first plugin to roll out")
    before = alice.configmap("shared")
    shared = _get(alice, f"/api/v1/namespaces/{alice.ns}/configmaps/shared")
    assert json.loads(shared["metadata"]["annotations"]["plugforge.dev/owners"]) == \
        {"plugin.gate.yaml": "first"}

    alice.create("brokerplugins", broker_plugin(
        "second", url=urls["second"], repository=f"{registry.host}/plugins/second",
        configmap="shared"))
    build = alice.wait_build("second")
    assert build["status"]["phase"] == "Succeeded", build["status"]  # built, not rolled out
    ready = wait_for(lambda: (c := alice.condition("second", "Ready")).get("reason") ==
                     "Conflict" and c, "the second plugin's Conflict condition")
    assert ready["status"] == "False"
    assert "key 'plugin.gate.yaml' belongs to BrokerPlugin 'first'" in ready["message"]
    assert alice.configmap("shared") == before
    assert alice.condition("first", "Ready")["reason"] == "RolledOut"
    assert not alice.plugin("second")["status"].get("currentImage")
    events = _get(alice, f"/apis/events.k8s.io/v1/namespaces/{alice.ns}/events")["items"]
    assert any(e["reason"] == "Conflict" and e["regarding"]["name"] == "second"
               for e in events), events


def _get(cluster: Cluster, path: str) -> Any:
    code, out = cluster.cp.request("GET", path)
    assert code == 200, out
    return out


# --- 3. an API token acts only in the namespaces it names --------------------------------------


@pytest.fixture(scope="module")
def api(plane: ControlPlane, testbed_ca: CertificateAuthority, builder: Builder,
        alice: Cluster, mallory: Cluster, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[dict[str, Any]]:
    """The BuildService as the builder serves it (TLS, the builder's identity), with one token
    per tenant, each scoped to its own namespace."""
    state = tmp_path_factory.mktemp("api")
    tokens = {f"alice@{alice.ns}": "alice-api-token-0123", f"mallory@{mallory.ns}":
              "mallory-api-token-4567"}
    files = {}
    for name, token in tokens.items():
        files[name.partition("@")[0]] = state / f"{name.partition('@')[0]}.token"
        files[name.partition("@")[0]].write_text(f"{name}:{token}\n")
    pair = testbed_ca.issue("tenancy-grpc")
    kube = Kube.from_kubeconfig(plane.kubeconfig("builder"))
    server, port = grpc_service.serve(kube, builder.settings.log_dir, "127.0.0.1:0",
                                      tokens=tokens, tls=(pair.cert, pair.key),
                                      sidecars=SidecarClient(None, None))
    try:
        yield {"address": f"127.0.0.1:{port}", "ca": testbed_ca.cert, "files": files,
               "tokens": tokens}
    finally:
        server.stop(0)
        kube.close()


def test_3_a_token_cannot_act_in_another_tenants_namespace(
        api: dict[str, Any], alice: Cluster, mallory: Cluster, hooked: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    token = api["tokens"][f"mallory@{mallory.ns}"]
    stub = build_pb2_grpc.BuildServiceStub(secure_channel(api["address"], api["ca"], token))
    before = len(alice.builds("hooked"))
    a_build = alice.builds("hooked")[0]["metadata"]["name"]
    calls = {
        "TriggerBuild": lambda: stub.TriggerBuild(
            pb.TriggerBuildRequest(namespace=alice.ns, plugin="hooked"), timeout=10),
        "ListBuilds": lambda: stub.ListBuilds(pb.ListBuildsRequest(namespace=alice.ns),
                                              timeout=10),
        "GetBuild": lambda: stub.GetBuild(pb.GetBuildRequest(namespace=alice.ns,
                                                             name=a_build), timeout=10),
        "StreamBuildLogs": lambda: list(stub.StreamBuildLogs(pb.StreamBuildLogsRequest(
            namespace=alice.ns, name=a_build), timeout=10)),
        "GetRollout": lambda: stub.GetRollout(pb.GetRolloutRequest(namespace=alice.ns,
                                                                   plugin="hooked"), timeout=10),
    }
    for method, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert f"may not act in namespace {alice.ns!r}" in str(refused.value.details()), method
    assert len(alice.builds("hooked")) == before  # nothing was requested
    # Her own namespace is fine.
    stub.ListBuilds(pb.ListBuildsRequest(namespace=mallory.ns), timeout=10)
    # The CLI says so in one line, exit 1.
    argv = ["--builder", api["address"], "--ca-file", str(api["ca"]), "--token-file",
            str(api["files"]["mallory"]), "-n", alice.ns]
    assert plugforge(["trigger", "hooked", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "PERMISSION_DENIED" in err and f"namespace {alice.ns!r}" in err and token not in err


# --- 7. no shipped secret values; a placeholder or missing webhook Secret is a condition ----

BASE = Path(__file__).resolve().parent.parent / "manifests"
PLACEHOLDER = "REPLACE-ME-with-openssl-rand-hex-32"


def test_7_the_base_manifests_ship_no_secret() -> None:
    docs = load_documents([BASE / "builder", BASE / "crds", BASE / "sidecar"])
    assert docs and not [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]


def test_7_a_placeholder_or_missing_webhook_secret_is_a_condition_and_builds_nothing(
        builder: Builder, hooks: service.Webhooks, alice: Cluster, git_server: GitServer,
        registry: Registry) -> None:
    alice.create_secret("shipped-hook", {"secret": PLACEHOLDER})
    for name, secret in (("shipped", "shipped-hook"), ("absent", "absent-hook")):
        alice.create("brokerplugins", broker_plugin(
            name, url=f"http://127.0.0.1:{git_server.port}/{alice.ns}/{name}.git",
            repository=f"{registry.host}/plugins/{name}", configmap=None, enabled=False,
            webhook={"secretRef": {"name": secret}}))
    for name, reason in (("shipped", "WebhookSecretPlaceholder"),
                         ("absent", "WebhookSecretMissing")):
        cond = wait_for(lambda n=name: alice.condition(n, "Webhook") or None,  # type: ignore[misc]
                        f"{name}'s Webhook condition")
        assert (cond["status"], cond["reason"]) == ("False", reason), cond
        assert "webhook deliveries for this plugin are refused" in cond["message"]
    # A push signed with the placeholder everyone can read is refused, and nothing is built.
    push = Push(host=f"127.0.0.1:{git_server.port}", owner=alice.ns, repo="shipped",
                ref="refs/heads/main", before="0" * 40, after="1" * 40, scheme="http",
                commits=[Commit("1" * 40, modified=["x.c"])])
    body = encode(github_push(push))
    code, out = post(hooks, "/webhooks/github", body, github_headers(body, PLACEHOLDER.encode()))
    assert code == 401, out
    assert alice.builds("shipped") == []



# --- 10. what each identity may do is what manifests/README.md says ----------------------------

Rule = tuple[str, str, str, frozenset[str]]  # API group, resource, verb, resourceNames


def _table() -> dict[tuple[str, str], set[Rule]]:
    """manifests/README.md's rights table: {(identity, namespace kind): rules}."""
    text = (BASE / "README.md").read_text()
    rows = text[text.index("| identity | namespaces |"):].split("\n\n")[0].splitlines()[2:]
    table: dict[tuple[str, str], set[Rule]] = {}
    for row in rows:
        who, where, group, resource, verbs, names = (c.strip() for c in row.strip("|").split("|"))
        for verb in verbs.split(", "):
            table.setdefault((who, where), set()).add(
                ("" if group == "core" else group, resource, verb,
                 frozenset({"*named*"}) if names else frozenset()))
    return table


def _granted(cp: ControlPlane, identity: str, namespace: str) -> set[Rule]:
    code, out = cp.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                           identity=identity, body={"spec": {"namespace": namespace}})
    assert code == 201, out
    status: Any = out["status"]
    rules: set[Rule] = set()
    for rule in status["resourceRules"]:
        for group in rule.get("apiGroups") or [""]:
            if group in ("authorization.k8s.io", "authentication.k8s.io"):
                continue  # every authenticated user may ask who they are and what they may do
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    rules.add((group, resource, verb, frozenset(rule.get("resourceNames") or ())))
    return rules


def _expected(identity: str, kinds: tuple[str, ...], names: tuple[str, ...]) -> set[Rule]:
    table = _table()
    rules = set().union(*(table.get((identity, kind), set()) for kind in kinds))
    return {(g, r, v, frozenset(names) if n else n) for g, r, v, n in rules}


def test_10_each_identity_has_exactly_the_rights_in_the_readme(
        plane: ControlPlane, alice: Cluster) -> None:
    admin = Kube.from_kubeconfig(plane.kubeconfig("admin"))
    try:
        apply_documents(admin.api, load_documents([BASE / "sidecar" / "rbac.yaml"]))
    finally:
        admin.close()
    shipped = next(d for d in load_documents([BASE / "builder" / "30-tenant-rbac.yaml"])
                   if d["kind"] == "Role")["rules"][0]["resourceNames"]
    cases = {
        ("builder", alice.ns): _expected("builder", ("every", "tenant"), LISTED),
        ("builder", "default"): _expected("builder", ("every", "tenant"), tuple(shipped)),
        ("builder", "kube-system"): _expected("builder", ("every",), ()),
        ("builder", "plugforge-system"): _expected("builder", ("every", "system"), ()),
        ("sidecar", "default"): _expected("sidecar", ("broker",), ()),
        ("sidecar", "kube-system"): set(),
    }
    for (identity, namespace), expected in cases.items():
        assert _granted(plane, identity, namespace) == expected, (identity, namespace)
    # What the review found, tried: the broker's admin password, Events in kube-system.
    assert plane.request("GET", "/api/v1/namespaces/default/secrets/mosquitto-dynsec-admin",
                         identity="builder")[0] == 403
    assert plane.request("POST", "/apis/events.k8s.io/v1/namespaces/kube-system/events",
                         identity="builder", body={"metadata": {"generateName": "x-"}})[0] == 403


# --- 6. a deleted target ConfigMap is not re-created with one plugin's key alone ---------------

BROKER_YAML = "apiVersion: plugforge.dev/v1alpha1\nkind: BrokerConfig\nbroker: mosquitto\n"


def test_6_a_deleted_target_is_not_recreated_with_less(
        hooked: dict[str, Any], alice: Cluster, registry: Registry) -> None:
    others = {"broker.yaml": BROKER_YAML, "notes.txt": "the operator's own key"}
    alice.create_configmap("six", others)
    alice.create("brokerplugins", broker_plugin(
        "six", url=hooked["url"], repository=f"{registry.host}/plugins/six", configmap="six"))
    wait_for(lambda: "plugin.hooked.yaml" in alice.configmap("six"), "the first rollout")
    code, out = alice.cp.request("DELETE", f"/api/v1/namespaces/{alice.ns}/configmaps/six")
    assert code == 200, out
    alice.patch_plugin("six", {"settings": {"deny_users": "eve"}})  # a new build and rollout
    ready = wait_for(lambda: (c := alice.condition("six", "Ready")).get("reason") ==
                     "TargetMissing" and c, "the TargetMissing condition")
    assert "is not re-created with this plugin's key alone" in ready["message"]
    code, _ = alice.cp.request("GET", f"/api/v1/namespaces/{alice.ns}/configmaps/six")
    assert code == 404  # not re-created holding only this plugin
    # The operator re-creates it; the plugin's key comes back beside the others.
    alice.create_configmap("six", others)
    wait_for(lambda: "plugin.hooked.yaml" in alice.configmap("six"),
             "the plugin's key to be written again")
    data = alice.configmap("six")
    assert {k: data[k] for k in others} == others


# --- 8. probe passwords ----------------------------------------------------------------------

PROBE_PASSWORD = "probe-pw-only-in-the-secret-51c9"  # the value hunted for below


def test_8_an_inline_probe_password_is_refused(mallory: Cluster) -> None:
    """By the apiserver (the CRD's rule, not a silent prune) and by the builder's own parser."""
    probe = {"name": "alice-ok", "action": "connect", "username": "alice", "expect": "accepted"}
    for extra, reason in (
            ({"password": PROBE_PASSWORD}, "inline probe passwords are refused"),
            ({"passwordFrom": {"secret": "../../etc", "key": "passwd"}}, "should match"),
            ({"passwordFrom": {"secret": "creds", "key": ".."}}, "cannot be '.' or '..'")):
        code, out = mallory.cp.request(
            "POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{mallory.ns}/brokerplugins",
            identity=MALLORY, body=broker_plugin(
                "inline-pw", url="https://git.example/m/p.git",
                repository="registry.example/p", probes=[{**probe, **extra}]))
        assert code == 422 and reason in json.dumps(out), out
        assert PROBE_PASSWORD not in json.dumps(out)
    body = broker_plugin("inline-pw", url="https://git.example/m/p.git",
                         repository="registry.example/p",
                         probes=[{**probe, "password": PROBE_PASSWORD}])
    body["metadata"]["namespace"] = mallory.ns
    with pytest.raises(InvalidSpec, match=r"spec.probes\[0\].password: inline probe passwords "
                                          "are refused") as refused:
        parse_plugin(body)
    assert PROBE_PASSWORD not in str(refused.value)


def test_8_a_probe_password_is_read_from_the_mounted_secret_and_written_nowhere(
        hooked: dict[str, Any], alice: Cluster, registry: Registry, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """BrokerPlugin -> builder -> ConfigMap -> a real sidecar and mosquitto: the ConfigMap names
    the Secret key, the sidecar reads the file the kubelet would mount; the value is in no
    ConfigMap, status, Event, build, log, metric or sidecar state, and an unmounted key is a
    probe error with the path while the last good release keeps running."""
    caplog.set_level(logging.DEBUG)
    alice.create_secret("probe-creds", {"alice": PROBE_PASSWORD})
    ref = {"secret": "probe-creds", "key": "alice"}
    alice.create("brokerplugins", broker_plugin(
        "eight", url=hooked["url"], repository=f"{registry.host}/plugins/eight",
        configmap="eight", probes=[{"name": "alice-ok", "action": "connect",
                                    "username": "alice", "expect": "accepted",
                                    "passwordFrom": ref}]))
    alice.create_configmap("eight", {"broker.yaml": BROKER_YAML})
    wait_for(lambda: "plugin.hooked.yaml" in alice.configmap("eight"), "the rollout")
    data = alice.configmap("eight")
    release = yaml.safe_load(data["plugin.hooked.yaml"])
    assert release["probes"][0]["passwordFrom"] == ref
    events = _get(alice, f"/apis/events.k8s.io/v1/namespaces/{alice.ns}/events")
    seen: Any
    for seen in (data, alice.plugin("eight"), alice.builds("eight"), events):
        assert PROBE_PASSWORD not in json.dumps(seen)

    # The sidecar's end: the ConfigMap as mounted, the Secret as mounted (one file per key).
    mounted = tmp_path / "probe-secrets"
    (mounted / "probe-creds").mkdir(parents=True)
    (mounted / "probe-creds" / "alice").write_text(PROBE_PASSWORD)
    broker = start_dynsec_broker(tmp_path / "broker")
    supervisor = Supervisor(broker)
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update(data)
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              allow_restart=True, probe_secrets_dir=mounted)
    sidecar.start()
    try:
        sidecar_wait(lambda: sidecar.state.phase is Phase.APPLIED and sidecar.state.ready,
                     "the release applied with its probe passing", timeout=60)
        # The next release names a key nobody mounted: its probe fails with the path, and the
        # last good release (whose key is mounted) runs again.
        assert "settings" not in release and "key: alice" in data["plugin.hooked.yaml"]
        cm.update({**data, "plugin.hooked.yaml": data["plugin.hooked.yaml"].replace(
            "key: alice", "key: bob") + "settings: {note: changed}\n"})
        sidecar_wait(lambda: sidecar.state.phase is Phase.ROLLED_BACK, "the rollback",
                     timeout=60)
        assert f"no file {mounted / 'probe-creds' / 'bob'}" in sidecar.state.last_error
        assert sidecar.state.ready  # the last good release passes its probe again
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}/metrics") as r:
            metrics = r.read().decode()
        for seen_text in (metrics, repr(sidecar.state), caplog.text,  # state: what GetState says
                          (tmp_path / "sc" / "cache" / "last-good.json").read_text()):
            assert PROBE_PASSWORD not in seen_text
    finally:
        sidecar.stop()
        supervisor.stop()
        broker.stop()


# --- 9. faults found in the same review -------------------------------------------------------


def test_9_a_missing_repository_is_permanent_and_says_so(
        builder: Builder, alice: Cluster, git_server: GitServer, registry: Registry) -> None:
    alice.create("brokerplugins", broker_plugin(
        "nowhere", url=f"http://127.0.0.1:{git_server.port}/{alice.ns}/does-not-exist.git",
        repository=f"{registry.host}/plugins/nowhere", configmap=None))
    status = alice.wait_build("nowhere")["status"]
    assert (status["phase"], status["reason"], status["attempts"]) == \
        ("Failed", "RepositoryNotFound", 1), status
    assert "no such repository" in status["message"] and "not retried" in status["message"]


def test_9_a_build_whose_builder_keeps_vanishing_is_not_resumed_forever(
        builder: Builder, alice: Cluster, registry: Registry) -> None:
    alice.create("brokerplugins", broker_plugin(
        "lost", url="https://git.example/acme/lost.git", enabled=False, configmap=None,
        repository=f"{registry.host}/plugins/lost"))
    build = alice.create("pluginbuilds", {
        "apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
        "metadata": {"name": "lost-oom"},
        "spec": {"plugin": "lost", "trigger": {"type": "Manual", "user": "alice"}}})
    attempts = builder.settings.max_attempts
    build["status"] = {"phase": "Running", "holder": "builder-killed-for-memory",
                       "attempts": attempts}
    code, out = alice.cp.request(
        "PUT", f"/apis/plugforge.dev/v1alpha1/namespaces/{alice.ns}/pluginbuilds/lost-oom/status",
        body=build)
    assert code == 200, out
    status = alice.wait_build("lost")["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "BuilderLost"), status
    assert f"stopped during each of its {attempts} attempts" in status["message"]


def test_9_a_half_open_watch_is_noticed_without_waiting_for_the_resync() -> None:
    """An 'apiserver' that accepts the watch and then says nothing, ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    config = kubernetes.client.Configuration()
    config.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    kube = Kube(kubernetes.client.ApiClient(config))
    started = time.monotonic()
    try:
        with pytest.raises(KubeError, match="watch brokerplugins: connection lost"):
            list(kube.watch("brokerplugins", "1", 240, idle_seconds=1.0))
        assert time.monotonic() - started < 10
    finally:
        kube.close()
        listener.close()
        for conn in held:
            conn.close()


def test_9_a_restarted_sidecar_still_has_a_last_good_state_to_roll_back_to(
        tmp_path: Path) -> None:
    """A real mosquitto and the real sidecar: apply, stop the sidecar, let a change the broker
    refuses arrive while it is down, start a new sidecar on the same volumes: it rolls back to
    the saved last good state instead of failing with nothing to roll back to."""
    broker = start_dynsec_broker(tmp_path / "broker")
    good = {"dynsec.client.bob.password": "bob-pw", "dynsec.client.bob.roles": "",
            "max_inflight_messages": "20"}
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml(good)})
    include = broker.include_dir / "50-plugforge-config.conf"
    try:
        first, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", None)
        first.start()
        try:
            sidecar_wait(lambda: first.state.phase is Phase.APPLIED, "the first apply")
        finally:
            first.stop()
        saved = tmp_path / "sc" / "cache" / "last-good.json"
        assert saved.stat().st_mode & 0o777 == 0o600
        cm.update({"broker.yaml": broker_yaml({
            **good, "max_inflight_messages": "30", "dynsec.client.bob.roles": "nosuchrole"})})
        second, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", None)
        second.start()
        try:
            sidecar_wait(lambda: second.state.phase in (Phase.ROLLED_BACK, Phase.FAILED),
                         "the refused change")
            assert second.state.phase is Phase.ROLLED_BACK, second.state.last_error
            assert "max_inflight_messages 20" in include.read_text()  # the saved state runs
        finally:
            second.stop()
    finally:
        broker.stop()
