"""The builder's BuildService over a real TLS channel with bearer tokens, against a real
apiserver, git server and registry; the ``plugforge`` CLI as its client.

Shows: trigger a build and follow its log to the end; a failing build's log; list with
filters and pagination; wrong or missing token → UNAUTHENTICATED; bad input → precise errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from builder_support import (
    Cluster,
    broker_plugin,
    install,
    scaffold_repo,
    templates_in_use,
    tenant_namespace,
)
from grpc_support import Api, start_builder_api

from plugforge.cli import main as plugforge
from plugforge.v1 import build_pb2 as pb
from testbed.certs import CertificateAuthority
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with templates_in_use(tmp_path_factory.mktemp("templates"), slow_seconds=2) as root:
        yield root


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    return Cluster(control_plane, tenant_namespace(control_plane, "grpc"))


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, testbed_ca: CertificateAuthority, registry: Registry,
        templates: Path, cluster: Cluster,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = start_builder_api(control_plane, testbed_ca, tmp_path_factory.mktemp("builder"),
                          "builder-grpc", registry.ca.cert, watch_namespace=cluster.ns)
    yield a
    a.builder.stop()


@pytest.fixture(scope="module")
def plugins(api: Api, cluster: Cluster, git_server: GitServer, registry: Registry,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``slow`` (a build that runs ~2 s, so there is something to follow) and ``broken``
    (a compile error); both built once by the controller on creation."""
    url = git_server.create_repo(f"{cluster.ns}/slow.git")
    src = tmp_path_factory.mktemp("src")
    repo = scaffold_repo(src / "slow", "mosquitto-c", "mosquitto", "slow", url)
    bad_url = git_server.create_repo(f"{cluster.ns}/broken.git")
    bad = scaffold_repo(src / "broken", "mosquitto-c", "mosquitto", "broken", bad_url)
    source = next((bad / "src").glob("*.c"))
    source.write_text(source.read_text() + "\nthis is not C;\n")
    run_git(bad, "commit", "-qam", "break the build")
    run_git(bad, "push", "-q", bad_url, "HEAD:main")
    for name, repo_url in (("slow", url), ("broken", bad_url)):
        cluster.create("brokerplugins", broker_plugin(
            name, url=repo_url, repository=f"{registry.host}/plugins/{name}",
            template="slow-c", configmap=None))
    cluster.wait_build("slow")
    cluster.wait_build("broken")
    return {"url": url, "bad_url": bad_url, "repo": repo}


def new_commit(plugins: dict[str, Any], note: str) -> str:
    """A new source tree on main, so the next build really compiles (no content-key hit)."""
    repo = plugins["repo"]
    source = next((repo / "src").glob("*.c"))
    source.write_text(source.read_text() + f"\n/* {note} */\n")
    run_git(repo, "commit", "-qam", note)
    run_git(repo, "push", "-q", plugins["url"], "HEAD:main")
    return run_git(repo, "rev-parse", "HEAD")


def test_trigger_and_follow_logs_to_completion(api: Api, cluster: Cluster,
                                               plugins: dict[str, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    commit = new_commit(plugins, "follow me")
    code = plugforge(["trigger", "slow", "--commit", commit, "-n", cluster.ns, "--follow",
                      *api.cli_flags()])
    out, err = capsys.readouterr()
    assert code == 0, err
    name = out.splitlines()[0]
    assert name.startswith("slow-manual-")
    # The log was streamed while the build ran (the recipe's sleep, then gcc), to its end.
    assert "sleep 2" in out and "gcc" in out
    full = api.builder.controller.log_path(cluster.ns, name).read_text()
    assert out.split("\n", 1)[1] == full
    assert f"-- {name}: Succeeded" in err
    build = api.stub().GetBuild(pb.GetBuildRequest(namespace=cluster.ns, name=name)).build
    assert build.phase == pb.BUILD_PHASE_SUCCEEDED
    assert build.trigger_type == pb.TRIGGER_TYPE_MANUAL
    assert build.trigger_user == "alice"  # the authenticated caller, not a claim
    assert build.digest.startswith("sha256:") and build.image.endswith(build.digest)
    assert build.commit == commit


def test_follow_a_running_build_through_the_api(api: Api, cluster: Cluster,
                                                plugins: dict[str, Any]) -> None:
    stub = api.stub(api_token("ci"))
    commit = new_commit(plugins, "follow me through the API")
    build = stub.TriggerBuild(pb.TriggerBuildRequest(namespace=cluster.ns, plugin="slow",
                                                     commit=commit), timeout=10).build
    assert build.phase == pb.BUILD_PHASE_PENDING and build.trigger_user == "ci"
    chunks = list(stub.StreamBuildLogs(pb.StreamBuildLogsRequest(
        namespace=cluster.ns, name=build.name, follow=True), timeout=120))
    phases = [c.phase for c in chunks]
    assert phases[-1] == pb.BUILD_PHASE_SUCCEEDED
    assert pb.BUILD_PHASE_RUNNING in phases  # lines arrived while it was still running
    text = "".join(c.text for c in chunks)
    assert text == api.builder.controller.log_path(cluster.ns, build.name).read_text()


def api_token(user: str) -> str:
    from grpc_support import TOKENS

    return TOKENS[user]


def test_failing_build_logs(api: Api, cluster: Cluster, plugins: dict[str, Any],
                            capsys: pytest.CaptureFixture[str]) -> None:
    failed = cluster.wait_build("broken")
    assert failed["status"]["phase"] == "Failed"
    name = failed["metadata"]["name"]
    assert plugforge(["logs", name, "-n", cluster.ns, *api.cli_flags()]) == 0
    out, _ = capsys.readouterr()
    assert "this is not C" in out or "error" in out
    assert "!! BuildFailed" in out
    # Following a finished failed build replays it and exits with the build's failure.
    assert plugforge(["logs", "-f", name, "-n", cluster.ns, *api.cli_flags()]) == 1
    out, err = capsys.readouterr()
    assert "!! BuildFailed" in out and f"-- {name}: Failed" in err
    # --wait on a new build of the same broken commit: exit 1 with the reason.
    assert plugforge(["trigger", "broken", "--wait", "-n", cluster.ns, *api.cli_flags()]) == 1
    out, err = capsys.readouterr()
    assert "failed (BuildFailed)" in err


def test_list_with_filters_and_pagination(api: Api, cluster: Cluster,
                                          plugins: dict[str, Any],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stub = api.stub()
    every = stub.ListBuilds(pb.ListBuildsRequest(namespace=cluster.ns)).builds
    assert {b.plugin for b in every} == {"slow", "broken"}
    slow = stub.ListBuilds(pb.ListBuildsRequest(namespace=cluster.ns, plugin="slow")).builds
    assert slow and all(b.plugin == "slow" for b in slow)
    failed = stub.ListBuilds(pb.ListBuildsRequest(namespace=cluster.ns,
                                                  phase=pb.BUILD_PHASE_FAILED)).builds
    assert failed and all(b.phase == pb.BUILD_PHASE_FAILED for b in failed)
    # "slow" builds may have lost a race to a newer request of the same commit (Superseded).
    assert {b.plugin for b in failed if b.reason != "Superseded"} == {"broken"}
    # Page by page, one at a time: the same builds in the same order, none twice.
    names, token = [], ""
    while True:
        page = stub.ListBuilds(pb.ListBuildsRequest(namespace=cluster.ns, page_size=1,
                                                    page_token=token))
        assert len(page.builds) <= 1
        names += [b.name for b in page.builds]
        token = page.next_page_token
        if not token:
            break
    assert names == [b.name for b in every]
    # The CLI: a table, and JSON for scripts.
    assert plugforge(["builds", "--plugin", "broken", "-n", cluster.ns, *api.cli_flags()]) == 0
    out, _ = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["NAME", "PLUGIN", "PHASE"]
    assert rows and all(r.split()[1] == "broken" for r in rows)
    assert plugforge(["builds", "--phase", "Failed", "--limit", "1", "-o", "json",
                      "-n", cluster.ns, *api.cli_flags()]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 1 and listed[0]["phase"] == "BUILD_PHASE_FAILED"


def test_wrong_or_missing_token_is_unauthenticated(api: Api, cluster: Cluster,
                                                   capsys: pytest.CaptureFixture[str],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    for token in ("not-a-valid-token", None):
        stub = api.stub(token)
        with pytest.raises(grpc.RpcError) as e:
            stub.ListBuilds(pb.ListBuildsRequest(namespace=cluster.ns), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            list(stub.StreamBuildLogs(pb.StreamBuildLogsRequest(namespace=cluster.ns,
                                                                name="x"), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            stub.TriggerBuild(pb.TriggerBuildRequest(namespace=cluster.ns, plugin="slow"),
                              timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Plain text to the TLS port does not get through either.
    channel = grpc.insecure_channel(api.address)
    from plugforge.v1 import build_pb2_grpc

    with pytest.raises(grpc.RpcError) as e:
        build_pb2_grpc.BuildServiceStub(channel).ListBuilds(pb.ListBuildsRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()
    flags = api.cli_flags("wrong")
    assert plugforge(["builds", "-n", cluster.ns, *flags]) == 1
    err = capsys.readouterr().err
    assert "UNAUTHENTICATED" in err and "check --token-file" in err
    assert "not-a-valid-token" not in err
    # Neither the presented nor the expected tokens reach any log.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "not-a-valid-token" not in logged and "alice-token" not in logged


@pytest.mark.parametrize(("request_", "code"), [
    (pb.GetBuildRequest(name="no-such-build"), grpc.StatusCode.NOT_FOUND),
    (pb.GetBuildRequest(name="Bad_Name"), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.TriggerBuildRequest(plugin="no-such-plugin"), grpc.StatusCode.NOT_FOUND),
    (pb.TriggerBuildRequest(plugin="slow", commit="--upload-pack=x"),
     grpc.StatusCode.INVALID_ARGUMENT),
    (pb.ListBuildsRequest(page_token="garbage!"), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.GetRolloutRequest(plugin="no-such-plugin"), grpc.StatusCode.NOT_FOUND),
])
def test_bad_requests_get_precise_status_codes(api: Api, cluster: Cluster,
                                               plugins: dict[str, Any], request_: Any,
                                               code: grpc.StatusCode) -> None:
    request_.namespace = cluster.ns
    stub = api.stub()
    method = {pb.GetBuildRequest: stub.GetBuild, pb.TriggerBuildRequest: stub.TriggerBuild,
              pb.ListBuildsRequest: stub.ListBuilds,
              pb.GetRolloutRequest: stub.GetRollout}[type(request_)]
    with pytest.raises(grpc.RpcError) as e:
        method(request_, timeout=10)
    assert e.value.code() == code
    assert e.value.details()
