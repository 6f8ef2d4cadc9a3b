"""The builder end to end on real servers: apiserver, git server, registry, gcc, skopeo.

The builder runs in-process as the ``builder`` identity (its token, its RBAC from manifests/);
tests act as admin, the way an operator would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
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
from conftest import REGISTRY_CREDENTIALS

from builder.app import Builder
from plugforge.contract import Document, parse_desired_state, plugin_key
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.procs import free_port
from testbed.registry import Registry


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with templates_in_use(tmp_path_factory.mktemp("templates"), slow_seconds=5) as root:
        yield root


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    return Cluster(control_plane, tenant_namespace(control_plane, "e2e"))


@pytest.fixture(scope="module")
def builder(control_plane: ControlPlane, registry: Registry, templates: Path,
            tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> Iterator[Builder]:
    with running_builder(fast_settings(control_plane, registry.ca.cert, "builder-e2e",
                                       "builder-e2e-1",
                                       tmp_path_factory.mktemp("builder-state"),
                                       watch_namespace=cluster.ns)) as b:
        yield b


def _skopeo_inspect(registry: Registry, image: str, tmp: Path) -> dict[str, Any]:
    certs = tmp / "skopeo-certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(registry.ca.cert, certs / "ca.crt")
    out = subprocess.run(["skopeo", "inspect", "--raw", f"--cert-dir={certs}",
                          f"docker://{image}"], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _tags(registry: Registry, repository: str, tmp: Path) -> set[str]:
    certs = tmp / "skopeo-certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(registry.ca.cert, certs / "ca.crt")
    out = subprocess.run(["skopeo", "list-tags", f"--cert-dir={certs}",
                          f"docker://{registry.host}/{repository}"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout)["Tags"])


def _desired(cluster: Cluster, configmap: str) -> Any:
    data = cluster.configmap(configmap)
    return parse_desired_state(Document(configmap, k, v) for k, v in data.items())


def _build_log(builder: Builder, build: dict[str, Any]) -> str:
    meta = build["metadata"]
    return builder.controller.log_path(meta["namespace"], meta["name"]).read_text()


# --- the happy path --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mosquitto_plugin(builder: Builder, cluster: Cluster, git_server: GitServer,
                     registry: Registry, tmp_path_factory: pytest.TempPathFactory
                     ) -> dict[str, Any]:
    """deny-mallory from the mosquitto-c starter, built once and rolled out."""
    url = git_server.create_repo(f"{cluster.ns}/deny-mallory.git")
    repo = scaffold_repo(tmp_path_factory.mktemp("src") / "deny-mallory", "mosquitto-c",
                         "mosquitto", "deny-mallory", url)
    cluster.create_configmap("broker-plugins", {
        "broker.yaml": "apiVersion: plugforge.dev/v1alpha1\nkind: BrokerConfig\n"
                       "broker: mosquitto\n",
        "notes.txt": "operators' own key: must survive",
    })
    cluster.create("brokerplugins", broker_plugin(
        "deny-mallory", url=url, repository=f"{registry.host}/plugins/deny-mallory",
        settings={"deny_users": "mallory,eve"},
        probes=[{"name": "mallory-refused", "action": "connect", "username": "mallory",
                 "expect": "refused"}]))
    build = cluster.wait_build("deny-mallory")
    return {"url": url, "repo": repo, "build": build}


def test_mosquitto_plugin_is_built_pushed_and_rolled_out(
        mosquitto_plugin: dict[str, Any], cluster: Cluster, registry: Registry,
        builder: Builder, tmp_path: Path) -> None:
    build = mosquitto_plugin["build"]
    status = build["status"]
    assert status["phase"] == "Succeeded", status
    commit = run_git(mosquitto_plugin["repo"], "rev-parse", "HEAD")
    assert status["commit"] == commit
    assert status["digest"].startswith("sha256:")
    assert status["cacheHit"] is False
    assert build["spec"]["trigger"]["type"] == "ResourceChange"
    assert build["metadata"]["ownerReferences"][0]["name"] == "deny-mallory"

    plugin = wait_for(lambda: (p := cluster.plugin("deny-mallory"))["status"].get(
        "currentImage") and p, "currentImage")
    st = plugin["status"]
    image = f"{registry.host}/plugins/deny-mallory@{status['digest']}"
    assert st["currentImage"] == image
    assert st["latestBuild"]["digest"] == status["digest"]
    assert st["latestBuild"]["commit"] == commit
    assert st["latestBuild"]["name"] == build["metadata"]["name"]
    assert st["observedGeneration"] == plugin["metadata"]["generation"]
    built = cluster.condition("deny-mallory", "Built")
    assert (built["status"], built["reason"]) == ("True", "BuildSucceeded")
    assert cluster.condition("deny-mallory", "Ready")["status"] == "True"

    data = cluster.configmap("broker-plugins")
    assert data["notes.txt"] == "operators' own key: must survive"
    state = _desired(cluster, "broker-plugins")
    release = state.plugin("deny_mallory")
    assert release is not None and release.image == image
    assert dict(release.settings) == {"deny_users": "mallory,eve"}
    assert release.source.commit == commit
    assert release.probes[0].name == "mallory-refused"
    assert plugin_key("deny_mallory") in data

    manifest = _skopeo_inspect(registry, image, tmp_path)
    notes = manifest["annotations"]
    assert notes["org.opencontainers.image.source"] == mosquitto_plugin["url"]
    # The commit is in the signed provenance, not the image: its digest names the artifact.
    assert "org.opencontainers.image.revision" not in notes
    assert notes["dev.plugforge.broker"] == "mosquitto"
    assert notes["dev.plugforge.plugin.name"] == "deny_mallory"
    assert "$ gcc" in _build_log(builder, build)

    def reasons() -> set[str] | None:
        code, events = cluster.cp.request(
            "GET", f"/apis/events.k8s.io/v1/namespaces/{cluster.ns}/events")
        assert code == 200
        items: Any = events["items"]
        found = {e["reason"] for e in items if e["regarding"]["name"] == "deny-mallory"}
        return found if {"BuildStarted", "BuildSucceeded"} <= found else None
    wait_for(reasons, "BuildStarted and BuildSucceeded events")


def test_second_build_of_same_commit_reuses_digest_without_compiling(
        mosquitto_plugin: dict[str, Any], cluster: Cluster, builder: Builder) -> None:
    first = mosquitto_plugin["build"]
    before = len(cluster.builds("deny-mallory"))
    cluster.create("pluginbuilds", {
        "apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
        "metadata": {"name": "deny-mallory-manual-1",
                     "labels": {"plugforge.dev/plugin": "deny-mallory"}},
        "spec": {"plugin": "deny-mallory", "commit": first["status"]["commit"],
                 "trigger": {"type": "Manual", "user": "alice"}}})
    second = cluster.wait_build("deny-mallory", after=before)
    assert second["metadata"]["name"] == "deny-mallory-manual-1"
    assert second["status"]["phase"] == "Succeeded", second["status"]
    assert second["status"]["digest"] == first["status"]["digest"]
    assert second["status"]["cacheHit"] is True
    log = _build_log(builder, second)
    assert "cache hit" in log
    assert "$ gcc" not in log  # the compiler did not run


def test_compile_error_keeps_previous_image(
        mosquitto_plugin: dict[str, Any], cluster: Cluster, registry: Registry,
        git_server: GitServer, tmp_path: Path) -> None:
    good = cluster.plugin("deny-mallory")["status"]["currentImage"]
    cm_before = cluster.configmap("broker-plugins")
    tags_before = _tags(registry, "plugins/deny-mallory", tmp_path)
    before = len(cluster.builds("deny-mallory"))
    repo: Path = mosquitto_plugin["repo"]
    source = repo / "src" / "deny_mallory.c"
    source.write_text(source.read_text() + "\nthis is not C;\n")
    run_git(repo, "commit", "-qam", "break the build")
    run_git(repo, "push", "-q", mosquitto_plugin["url"], "HEAD:main")
    broken = run_git(repo, "rev-parse", "HEAD")

    failed = cluster.wait_build("deny-mallory", after=before)  # found by the periodic resync
    assert failed["spec"]["commit"] == broken
    assert failed["status"]["commit"] == broken  # a failed build says which commit failed
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["reason"] == "BuildFailed"
    assert "error" in failed["status"]["logTail"]
    built = cluster.condition("deny-mallory", "Built")
    assert (built["status"], built["reason"]) == ("False", "BuildFailed")
    assert good in built["message"]  # says the previous image stays
    status = cluster.plugin("deny-mallory")["status"]
    assert status["currentImage"] == good
    latest = status["latestBuild"]
    assert (latest["name"], latest["phase"], latest["commit"]) == \
        (failed["metadata"]["name"], "Failed", broken)
    assert "digest" not in latest and "image" not in latest  # nothing left from the good build
    assert cluster.configmap("broker-plugins") == cm_before
    assert _tags(registry, "plugins/deny-mallory", tmp_path) == tags_before  # nothing partial
    # permanent: not retried while neither spec nor commit changes (resync runs every 2s)
    time.sleep(5)
    assert len(cluster.builds("deny-mallory")) == before + 1

    # repair it: the next commit builds and rolls out again
    run_git(repo, "revert", "--no-edit", "HEAD")
    run_git(repo, "push", "-q", mosquitto_plugin["url"], "HEAD:main")
    fixed = cluster.wait_build("deny-mallory", after=before + 1)
    assert fixed["status"]["phase"] == "Succeeded"


# --- failure paths ---------------------------------------------------------------------------


def _expect_failure(cluster: Cluster, name: str, reason: str, body: dict[str, Any],
                    timeout: float = 60) -> dict[str, Any]:
    cluster.create("brokerplugins", body)
    build = cluster.wait_build(name, phases=("Failed",), timeout=timeout)
    assert build["status"]["reason"] == reason, build["status"]
    def condition() -> dict[str, Any] | None:
        c = cluster.condition(name, "Built")
        return c if c.get("reason") == reason else None
    built = wait_for(condition, f"Built condition of {name} to say {reason}")
    assert built["status"] == "False"
    assert "currentImage" not in cluster.plugin(name)["status"]
    return build


def test_unknown_ref(builder: Builder, cluster: Cluster, git_server: GitServer,
                     registry: Registry, mosquitto_plugin: dict[str, Any]) -> None:
    build = _expect_failure(cluster, "bad-ref", "UnknownRef", broker_plugin(
        "bad-ref", url=mosquitto_plugin["url"], ref="no-such-branch",
        repository=f"{registry.host}/plugins/bad-ref", configmap="bad-ref"))
    assert "no-such-branch" in build["status"]["message"]


def test_unreachable_repo_is_retried_then_fails(builder: Builder, cluster: Cluster,
                                                registry: Registry) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody/home.git"
    build = _expect_failure(cluster, "unreachable", "SourceUnavailable", broker_plugin(
        "unreachable", url=url, repository=f"{registry.host}/plugins/unreachable"))
    assert build["status"]["attempts"] == 2  # transient: retried up to max_attempts


def test_missing_path(builder: Builder, cluster: Cluster, registry: Registry,
                      mosquitto_plugin: dict[str, Any]) -> None:
    body = broker_plugin("missing-path", url=mosquitto_plugin["url"],
                         repository=f"{registry.host}/plugins/missing-path")
    body["spec"]["source"]["git"]["path"] = "plugins/nope"
    build = _expect_failure(cluster, "missing-path", "SourcePathMissing", body)
    assert "plugins/nope" in build["status"]["message"]


def test_timeout(builder: Builder, cluster: Cluster, registry: Registry,
                 mosquitto_plugin: dict[str, Any]) -> None:
    build = _expect_failure(cluster, "too-slow", "BuildTimeout", broker_plugin(
        "too-slow", url=mosquitto_plugin["url"], template="slow-c",
        repository=f"{registry.host}/plugins/too-slow", build={"timeoutSeconds": 1}))
    assert "1s" in build["status"]["message"]


def test_registry_down(builder: Builder, cluster: Cluster,
                       mosquitto_plugin: dict[str, Any]) -> None:
    build = _expect_failure(cluster, "registry-down", "RegistryUnavailable", broker_plugin(
        "registry-down", url=mosquitto_plugin["url"],
        repository=f"127.0.0.1:{free_port()}/plugins/registry-down"))
    assert build["status"]["attempts"] == 2


def test_registry_auth_refused_then_accepted(builder: Builder, cluster: Cluster,
                                             registry_auth: Registry,
                                             mosquitto_plugin: dict[str, Any]) -> None:
    # The builder trusts one CA bundle; both registries' certificates chain to the testbed CA.
    assert registry_auth.ca.cert == builder.settings.registry_ca
    _expect_failure(cluster, "no-creds", "RegistryRefused", broker_plugin(
        "no-creds", url=mosquitto_plugin["url"],
        repository=f"{registry_auth.host}/plugins/no-creds", configmap="no-creds"))
    user, password = REGISTRY_CREDENTIALS
    import base64
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    cluster.create_secret("push-creds", {".dockerconfigjson": json.dumps(
        {"auths": {registry_auth.host: {"auth": auth}}})}, "kubernetes.io/dockerconfigjson")
    body = broker_plugin("with-creds", url=mosquitto_plugin["url"],
                         repository=f"{registry_auth.host}/plugins/with-creds",
                         configmap="with-creds")
    body["spec"]["image"]["pushSecretRef"] = {"name": "push-creds"}
    cluster.create("brokerplugins", body)
    build = cluster.wait_build("with-creds")
    assert build["status"]["phase"] == "Succeeded", build["status"]


def test_private_git_repo_with_secret(builder: Builder, cluster: Cluster,
                                      git_server_auth: GitServer, registry: Registry,
                                      tmp_path: Path) -> None:
    url = git_server_auth.create_repo(f"{cluster.ns}/private.git")
    scaffold_repo(tmp_path / "private", "mosquitto-c", "mosquitto", "private-acl",
                  git_server_auth.authed_url(url))
    assert git_server_auth.credentials is not None
    user, token = git_server_auth.credentials
    cluster.create_secret("git-creds", {"username": user, "password": token},
                          "kubernetes.io/basic-auth")
    body = broker_plugin("private-acl", url=url, repository=f"{registry.host}/plugins/private",
                         configmap="private")
    body["spec"]["source"]["git"]["secretRef"] = {"name": "git-creds"}
    cluster.create("brokerplugins", body)
    build = cluster.wait_build("private-acl")
    assert build["status"]["phase"] == "Succeeded", build["status"]
    # the secret never lands in the mirror's config, the status or the log
    mirrors = builder.settings.git_dir
    for config in mirrors.glob("**/config"):
        assert token not in config.read_text()
    assert token not in json.dumps(build)
    assert token not in _build_log(builder, build)


def test_disabled_plugin_is_not_built(builder: Builder, cluster: Cluster, registry: Registry,
                                      mosquitto_plugin: dict[str, Any]) -> None:
    cluster.create("brokerplugins", broker_plugin(
        "disabled", url=mosquitto_plugin["url"], enabled=False,
        repository=f"{registry.host}/plugins/disabled"))
    time.sleep(3)
    assert cluster.builds("disabled") == []


def test_history_is_pruned(builder: Builder, cluster: Cluster, registry: Registry,
                           mosquitto_plugin: dict[str, Any]) -> None:
    cluster.create("brokerplugins", broker_plugin(
        "pruned", url=mosquitto_plugin["url"], buildHistoryLimit=1, configmap="pruned",
        repository=f"{registry.host}/plugins/pruned"))
    cluster.wait_build("pruned")
    for i in range(2):
        cluster.create("pluginbuilds", {
            "apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
            "metadata": {"name": f"pruned-manual-{i}",
                         "labels": {"plugforge.dev/plugin": "pruned"}},
            "spec": {"plugin": "pruned", "trigger": {"type": "Manual"}}})
        wait_for(lambda i=i: any(b["metadata"]["name"] == f"pruned-manual-{i}" and  # type: ignore[misc]
                                 (b.get("status") or {}).get("phase") == "Succeeded"
                                 for b in cluster.builds("pruned")), "manual build")
    wait_for(lambda: len(cluster.builds("pruned")) == 1, "pruning to 1 build")
    assert cluster.builds("pruned")[0]["metadata"]["name"] == "pruned-manual-1"
    logs = builder.controller.log_path(cluster.ns, "x").parent
    assert (logs / "pruned-manual-1.log").exists()
    assert not (logs / "pruned-manual-0.log").exists()  # logs go with their builds


def test_vernemq_erlang_plugin_end_to_end(builder: Builder, cluster: Cluster,
                                          git_server: GitServer, registry: Registry,
                                          tmp_path: Path) -> None:
    """VerneMQ cannot run here (no Debian package); the plugin is built, pushed and released."""
    url = git_server.create_repo(f"{cluster.ns}/vmq-acl.git")
    repo = scaffold_repo(tmp_path / "vmq-acl", "vernemq-erlang", "vernemq", "vmq-acl", url)
    cluster.create("brokerplugins", broker_plugin(
        "vmq-acl", url=url, broker="vernemq", configmap="vernemq-plugins",
        repository=f"{registry.host}/plugins/vmq-acl"))
    build = cluster.wait_build("vmq-acl", timeout=300)
    assert build["status"]["phase"] == "Succeeded", build["status"]
    assert "rebar3 compile" in _build_log(builder, build)
    commit = run_git(repo, "rev-parse", "HEAD")
    image = f"{registry.host}/plugins/vmq-acl@{build['status']['digest']}"
    wait_for(lambda: cluster.plugin("vmq-acl")["status"].get("currentImage") == image,
             "currentImage of vmq-acl")
    release = _desired(cluster, "vernemq-plugins").plugin("vmq_acl")
    assert release is not None and release.image == image
    assert release.source.commit == commit  # the release names the commit, the image not
    notes = _skopeo_inspect(registry, image, tmp_path)["annotations"]
    assert notes["dev.plugforge.broker"] == "vernemq"
    assert "org.opencontainers.image.revision" not in notes


def test_spec_change_rebuilds_and_rolls_out_new_settings(
        mosquitto_plugin: dict[str, Any], cluster: Cluster, builder: Builder) -> None:
    """Level-triggered: a new generation is a new request; the same tree is a cache hit."""
    wait_for(lambda: cluster.condition("deny-mallory", "Ready").get("status") == "True",
             "deny-mallory Ready")
    before = len(cluster.builds("deny-mallory"))
    cluster.patch_plugin("deny-mallory", {"settings": {"deny_users": "mallory,eve,trudy"}})
    build = cluster.wait_build("deny-mallory", after=before)
    assert build["status"]["phase"] == "Succeeded"
    assert build["status"]["cacheHit"] is True
    release = wait_for(lambda: (r := _desired(cluster, "broker-plugins").plugin("deny_mallory"))
                       and r.settings.get("deny_users") == "mallory,eve,trudy" and r,
                       "new settings in the ConfigMap")
    assert release.image.endswith(build["status"]["digest"])
    # The ConfigMap is written before the status: wait for the status to catch up.
    wait_for(lambda: (p := cluster.plugin("deny-mallory"))["status"].get("observedGeneration")
             == p["metadata"]["generation"], "status.observedGeneration to catch up")


def test_newer_request_supersedes_a_pending_one(builder: Builder, cluster: Cluster,
                                                registry: Registry,
                                                mosquitto_plugin: dict[str, Any]) -> None:
    """One build per plugin at a time; of the requests queued meanwhile only the newest runs."""
    cluster.create("brokerplugins", broker_plugin(
        "busy", url=mosquitto_plugin["url"], template="slow-c", configmap="busy",
        repository=f"{registry.host}/plugins/busy"))
    wait_for(lambda: any((b.get("status") or {}).get("phase") == "Running"
                         for b in cluster.builds("busy")), "the first build to run")
    for i in range(2):
        cluster.create("pluginbuilds", {
            "apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
            "metadata": {"name": f"busy-manual-{i}"},  # no label: found by spec.plugin
            "spec": {"plugin": "busy", "trigger": {"type": "Manual", "user": "alice"}}})
        time.sleep(1.1)  # creation timestamps have one-second resolution
    assert sum((b.get("status") or {}).get("phase") == "Running"
               for b in cluster.builds("busy")) == 1

    def phases() -> dict[str, str] | None:
        found = {b["metadata"]["name"]: (b.get("status") or {}).get("reason", "")
                 for b in cluster.builds("busy")
                 if (b.get("status") or {}).get("phase") in ("Succeeded", "Failed")}
        return found if len(found) == 3 else None
    reasons = wait_for(phases, "all three builds to finish", timeout=60)
    assert reasons["busy-manual-0"] == "Superseded"
    assert reasons["busy-manual-1"] == "BuildSucceeded"


def test_ref_git_refuses_is_invalid_spec_and_nothing_is_built(
        builder: Builder, cluster: Cluster, registry: Registry,
        mosquitto_plugin: dict[str, Any]) -> None:
    """The schema lets ``x.lock`` through; git's ref rules (checked by the builder) do not."""
    cluster.create("brokerplugins", broker_plugin(
        "lock-ref", url=mosquitto_plugin["url"], ref="release.lock",
        repository=f"{registry.host}/plugins/lock-ref"))
    built = wait_for(lambda: cluster.condition("lock-ref", "Built") or None, "a Built condition")
    assert (built["status"], built["reason"]) == ("False", "InvalidSpec")
    assert "release.lock" in built["message"] and ".lock" in built["message"]
    assert cluster.plugin("lock-ref")["status"]["observedGeneration"] == 1
    assert cluster.builds("lock-ref") == []


def test_template_for_another_broker_fails_the_build_as_invalid_spec(
        builder: Builder, cluster: Cluster, registry: Registry,
        mosquitto_plugin: dict[str, Any]) -> None:
    build = _expect_failure(cluster, "wrong-template", "InvalidSpec", broker_plugin(
        "wrong-template", url=mosquitto_plugin["url"], template="vernemq-erlang",
        repository=f"{registry.host}/plugins/wrong-template"))
    assert "vernemq" in build["status"]["message"]


def test_namespace_without_tenant_binding_builds_but_cannot_roll_out(
        templates: Path, cluster: Cluster, registry: Registry, tmp_path: Path,
        mosquitto_plugin: dict[str, Any]) -> None:
    """Least privilege: no RoleBinding in a namespace means no ConfigMap writes there."""
    ns = f"{cluster.ns}-unbound"
    code, out = cluster.cp.request("POST", "/api/v1/namespaces",
                                   body={"metadata": {"name": ns}})
    assert code == 201, out
    unbound = Cluster(cluster.cp, ns)
    unbound.create("brokerplugins", broker_plugin(
        "unbound", url=mosquitto_plugin["url"], configmap="plugins",
        repository=f"{registry.host}/plugins/unbound"))
    with running_builder(fast_settings(cluster.cp, registry.ca.cert, "builder-e2e-unbound",
                                       "builder-unbound-1", tmp_path, watch_namespace=ns)):
        assert unbound.wait_build("unbound")["status"]["phase"] == "Succeeded"
        ready = wait_for(lambda: ((c := unbound.condition("unbound", "Ready")).get("reason")
                                  == "RolloutFailed" and c) or None, "Ready=False RolloutFailed")
    assert ready["status"] == "False"
    assert "forbidden" in ready["message"]
    assert "currentImage" not in unbound.plugin("unbound")["status"]


def test_disabling_a_plugin_reaches_the_configmap_without_a_build(
        mosquitto_plugin: dict[str, Any], cluster: Cluster) -> None:
    wait_for(lambda: cluster.condition("deny-mallory", "Ready").get("status") == "True",
             "deny-mallory Ready")
    before = {b["metadata"]["name"] for b in cluster.builds("deny-mallory")}
    image = cluster.plugin("deny-mallory")["status"]["currentImage"]
    cluster.patch_plugin("deny-mallory", {"enabled": False})
    release = wait_for(lambda: (r := _desired(cluster, "broker-plugins").plugin("deny_mallory"))
                       and not r.enabled and r, "enabled: false in the ConfigMap")
    assert release.image == image
    assert {b["metadata"]["name"] for b in cluster.builds("deny-mallory")} == before
    cluster.patch_plugin("deny-mallory", {"enabled": True})
    wait_for(lambda: (r := _desired(cluster, "broker-plugins").plugin("deny_mallory"))
             and r.enabled, "enabled again")
    # re-enabling is a new generation: one build request, a content-key hit
    again = cluster.wait_build("deny-mallory", known=before)
    assert again["status"]["cacheHit"] is True
