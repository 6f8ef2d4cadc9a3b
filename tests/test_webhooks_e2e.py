"""Webhooks end to end: a real commit pushed to the git server, a signed GitHub delivery, the
real builder (as the ``builder`` identity) building that commit, the BrokerPlugin ending up
with its digest. Plugins and webhook Secrets are read from the real apiserver.
"""

from __future__ import annotations

import json
import logging
import threading
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
from test_webhooks_server import post
from webhooks_support import Commit, Push, encode, github_headers, github_push

from builder.app import Builder
from builder.kube import Kube
from builder.webhooks import service
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.registry import Registry

SECRET = "e2e-webhook-secret-1f0c"
PLUGIN = "hook-acl"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with templates_in_use(tmp_path_factory.mktemp("templates")) as root:
        yield root


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    return Cluster(control_plane, tenant_namespace(control_plane, "wh"))


@pytest.fixture(scope="module")
def builder(control_plane: ControlPlane, registry: Registry, templates: Path,
            tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> Iterator[Builder]:
    # A long resync: the controller does not poll the ref, so new commits get built only
    # because a webhook asked.
    with running_builder(fast_settings(control_plane, registry.ca.cert, "builder-webhooks",
                                       "builder-wh-1", tmp_path_factory.mktemp("builder-state"),
                                       resync_seconds=600.0, watch_namespace=cluster.ns)) as b:
        yield b


@pytest.fixture(scope="module")
def replicas(control_plane: ControlPlane, builder: Builder
             ) -> Iterator[list[service.Webhooks]]:
    """Two webhook endpoints (as two builder replicas would run), both as the builder identity."""
    kubes = [Kube.from_kubeconfig(control_plane.kubeconfig("builder")) for _ in range(2)]
    running = [service.start_with_kube(k) for k in kubes]
    yield running
    for r in running:
        r.stop()
    for k in kubes:
        k.close()


@pytest.fixture(scope="module")
def source(builder: Builder, cluster: Cluster, git_server: GitServer, registry: Registry,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = git_server.create_repo(f"{cluster.ns}/Hook-ACL.git")
    repo = scaffold_repo(tmp_path_factory.mktemp("src") / PLUGIN, "mosquitto-c", "mosquitto",
                         PLUGIN, url)
    cluster.create_secret("github-hook", {"secret": SECRET})
    cluster.create_configmap("broker-plugins", {})
    cluster.create("brokerplugins", broker_plugin(
        PLUGIN, url=url, repository=f"{registry.host}/plugins/{PLUGIN}",
        webhook={"secretRef": {"name": "github-hook"}}))
    first = cluster.wait_build(PLUGIN, timeout=300)
    assert first["status"]["phase"] == "Succeeded", first["status"]
    return {"url": url, "repo": repo}


def commit_and_push(src: dict[str, Any], note: str) -> tuple[str, str]:
    repo: Path = src["repo"]
    before = run_git(repo, "rev-parse", "HEAD")
    file = repo / "src" / f"{PLUGIN.replace('-', '_')}.c"
    file.write_text(file.read_text() + f"/* {note} */\n")
    run_git(repo, "commit", "-qam", note)
    run_git(repo, "push", "-q", src["url"], "HEAD:main")
    return before, run_git(repo, "rev-parse", "HEAD")


def delivery(git_server: GitServer, cluster: Cluster, before: str, after: str,
             delivery_id: str) -> tuple[bytes, dict[str, str]]:
    # The forge reports the repository with its own case; the plugin's URL differs in case
    # and suffix handling, as with real forges.
    push = Push(host=f"127.0.0.1:{git_server.port}", owner=cluster.ns, repo="hook-acl",
                ref="refs/heads/main", before=before, after=after, scheme="http",
                pusher="alice", commits=[Commit(after, modified=["src/hook_acl.c"])])
    body = encode(github_push(push))
    return body, github_headers(body, SECRET.encode(), delivery=delivery_id)


def webhook_builds(cluster: Cluster) -> list[dict[str, Any]]:
    return [b for b in cluster.builds(PLUGIN) if b["spec"]["trigger"]["type"] == "Webhook"]


def test_signed_push_builds_the_pushed_commit(
        source: dict[str, Any], cluster: Cluster, git_server: GitServer,
        replicas: list[service.Webhooks], registry: Registry) -> None:
    before, after = commit_and_push(source, "first webhook change")
    body, headers = delivery(git_server, cluster, before, after, "e2e-delivery-1")
    status, out = post(replicas[0], "/webhooks/github", body, headers)
    assert status == 202, out
    assert out["queued"] == [{"plugin": f"{cluster.ns}/{PLUGIN}", "commit": after,
                              "coalescing": "queued"}]

    build = wait_for(lambda: next((b for b in webhook_builds(cluster)
                                   if (b.get("status") or {}).get("phase") in
                                   ("Succeeded", "Failed")), None),
                     "the webhook's build to finish", timeout=300)
    assert build["status"]["phase"] == "Succeeded", build["status"]
    assert "commit" not in build["spec"]  # a poke: the build resolves the ref itself
    assert build["status"]["commit"] == after
    assert build["status"]["ref"] == "refs/heads/main"
    trigger = build["spec"]["trigger"]
    assert trigger == {
        "type": "Webhook", "event": "github:push", "delivery": "e2e-delivery-1",
        "user": "alice", "commit": after,
        "compareURL": f"http://127.0.0.1:{git_server.port}/{cluster.ns}/hook-acl/compare/"
                      f"{before[:12]}...{after[:12]}"}

    def rolled_out() -> dict[str, Any] | None:
        st = cluster.plugin(PLUGIN)["status"]
        return st if st.get("latestBuild", {}).get("commit") == after and \
            st.get("currentCommit") == after else None

    st = wait_for(rolled_out, "the plugin to record the webhook build")
    assert st["latestBuild"]["digest"] == build["status"]["digest"]
    assert st["currentImage"] == (f"{registry.host}/plugins/{PLUGIN}@"
                                  f"{build['status']['digest']}")


def test_burst_of_pushes_builds_only_the_newest_commit(
        source: dict[str, Any], cluster: Cluster, git_server: GitServer,
        replicas: list[service.Webhooks]) -> None:
    done_before = len(webhook_builds(cluster))
    transitions = [commit_and_push(source, f"burst {i}") for i in range(4)]
    newest = transitions[-1][1]
    deliveries = [delivery(git_server, cluster, b, a, f"burst-{i}")
                  for i, (b, a) in enumerate(transitions)]
    results: list[tuple[int, dict[str, Any]]] = []

    def send(body: bytes, headers: dict[str, str], replica: service.Webhooks) -> None:
        results.append(post(replica, "/webhooks/github", body, headers))

    # All at once and newest first, so arrival order is not commit order; the newest one
    # also reaches the second replica (a forge redelivering elsewhere).
    threads = [threading.Thread(target=send, args=(*d, replicas[0]))
               for d in reversed(deliveries)]
    threads.append(threading.Thread(target=send, args=(*deliveries[-1], replicas[1])))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(code in (200, 202) for code, _ in results), results

    build = wait_for(lambda: next((b for b in webhook_builds(cluster)[done_before:]
                                   if (b.get("status") or {}).get("phase") in
                                   ("Succeeded", "Failed")), None),
                     "the burst's build to finish", timeout=300)
    time.sleep(2.5)  # past the coalescing window: anything else would have been created
    new = webhook_builds(cluster)[done_before:]
    assert [b["spec"]["trigger"]["commit"] for b in new] == [newest], json.dumps(
        [(b["metadata"]["name"], b["spec"]["trigger"]["commit"],
          b.get("status", {}).get("phase"))
         for b in new])
    assert build["status"]["phase"] == "Succeeded", build["status"]
    assert wait_for(lambda: cluster.plugin(PLUGIN)["status"]["latestBuild"].get("commit")
                    == newest, "the newest commit to be recorded")


def test_unsigned_delivery_builds_nothing(
        source: dict[str, Any], cluster: Cluster, git_server: GitServer,
        replicas: list[service.Webhooks]) -> None:
    before_count = len(cluster.builds(PLUGIN))
    prev, after = commit_and_push(source, "unsigned change")
    body, headers = delivery(git_server, cluster, prev, after, "e2e-unsigned")
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    status, out = post(replicas[0], "/webhooks/github", body, headers)
    assert status == 401, out
    time.sleep(2.5)
    assert len(cluster.builds(PLUGIN)) == before_count


def test_unreadable_webhook_secrets_refuse_deliveries(
        cluster: Cluster, control_plane: ControlPlane, replicas: list[service.Webhooks],
        registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugforge.webhooks")
    fenced_secret = "secret-in-a-namespace-the-builder-may-not-read"
    # A Secret that does not exist, and one in a namespace without the tenant RoleBinding.
    cluster.create("brokerplugins", broker_plugin(
        "secret-missing", url="https://git.example/acme/missing.git", enabled=False,
        repository=f"{registry.host}/plugins/x", webhook={"secretRef": {"name": "nope"}}))
    fenced = f"fenced-{cluster.ns}"
    assert control_plane.request("POST", "/api/v1/namespaces",
                                 body={"metadata": {"name": fenced}})[0] == 201
    Cluster(control_plane, fenced).create_secret("hook", {"secret": fenced_secret})
    Cluster(control_plane, fenced).create("brokerplugins", broker_plugin(
        "fenced", url="https://git.example/acme/fenced.git", enabled=False,
        repository=f"{registry.host}/plugins/x", webhook={"secretRef": {"name": "hook"}}))
    time.sleep(2.2)  # the endpoint re-lists plugins at most every 2 s

    for secret, repo in (("a-guess-at-the-missing-one", "missing"), (fenced_secret, "fenced")):
        push = Push(host="git.example", owner="acme", repo=repo, ref="refs/heads/main",
                    before="a" * 40, after="b" * 40, commits=[Commit("b" * 40)])
        body = encode(github_push(push))
        status, out = post(replicas[0], "/webhooks/github", body,
                           github_headers(body, secret.encode()))
        assert status == 401, out
    assert f"webhook Secret {cluster.ns}/nope unreadable (NotFound)" in caplog.text
    assert f"webhook Secret {fenced}/hook unreadable (Forbidden)" in caplog.text
    assert fenced_secret not in caplog.text
