"""The ``kubernetes`` executor on the real node (tests/node_support.py): every build a Job in
``plugforge-builds`` (manifests/builder/50-builds.yaml applied as shipped), run by the builder's
own identity with exactly that Role, the source in and the result out over one-time URLs.

The builder here is this test process (the transfer server listens on the node's bridge
address, where pods reach the host; its cache root, holding the tenants' build caches, is a
temporary directory); the toolchain image is the mosquitto-c template's, built from its
toolchain.Containerfile and pushed to the node's registry, and every template's for the test
that builds each starter as a Job. One module shares the session's node; when it cannot start,
every test fails with the reason.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import evil_repos
import pytest
from kubernetes.client import ApiClient
from node_support import RealNode

from builder.app import kubernetes_executor
from builder.build import repo_recipe
from builder.build import toolchains as toolchains_mod
from builder.build.executors import BuildJob, BuildStep
from builder.build.executors.kubernetes import (
    LABEL_MANAGED,
    MANAGED_BY,
    JobSettings,
    KubernetesExecutor,
    _Log,
    job_manifest,
    judge,
    label_value,
)
from builder.build.executors.process import ProcessExecutor
from builder.build.executors.select import ExecutorRefused
from builder.build.executors.transfer import (
    CacheMerge,
    TransferServer,
    extract_result,
    merge_cache,
)
from builder.build.recipe import BuildResult, load_recipe, run_recipe, template_dir
from builder.build.recipe_errors import (
    ArtifactError,
    BuildError,
    BuildFailed,
    BuildTimeout,
    ExecutorFailed,
    ToolMissing,
)
from builder.build.scaffold import scaffold
from builder.kube import Kube, apply_documents, load_documents
from builder.settings import Settings
from testbed import images, node, toolchains
from testbed.e2e_cluster import wait_for

ROOT = Path(__file__).resolve().parent.parent
NS = "plugforge-builds"
# A cold machine builds the Debian base and the toolchain image in the first test's setup.
pytestmark = pytest.mark.timeout(1800)


@dataclass
class Builds:
    real: RealNode
    kube: Kube  # as the builder's ServiceAccount: only manifests/ grant it anything
    transfers: TransferServer
    settings: JobSettings
    toolchain: str  # the mosquitto-c toolchain, image@digest in the node's registry
    executor: KubernetesExecutor
    cache_root: Path  # the builder's $PLUGFORGE_CACHE: the tenants' build caches

    def jobs(self) -> list[dict[str, Any]]:
        out: dict[str, Any] = self.real.api.ok(
            "GET", f"/apis/batch/v1/namespaces/{NS}/jobs?labelSelector={LABEL_MANAGED}%3D"
                   f"{MANAGED_BY}")
        return list(out["items"])

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        query = f"?labelSelector={selector}" if selector else ""
        out: dict[str, Any] = self.real.api.ok("GET", f"/api/v1/namespaces/{NS}/pods{query}")
        return list(out["items"])


@pytest.fixture(scope="module")
def builds(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    cp = real_node.cp
    admin = Kube.from_kubeconfig(cp.kubeconfig("admin"))
    try:
        apply_documents(admin.api, load_documents([ROOT / "manifests" / "builder" /
                                                   "50-builds.yaml"]))
    finally:
        admin.close()
    t = time.monotonic()
    toolchain = toolchains.push_toolchain(real_node.podman, "mosquitto-c",
                                          real_node.registry.host, cp.ca,
                                          node.NODE_DIR / "images.log")
    real_node.timings["mosquitto-c toolchain"] = time.monotonic() - t
    kube = Kube.from_kubeconfig(cp.kubeconfig("builder"))
    transfers = TransferServer((node.NODE_IP, 0), node.NODE_IP, max_bytes=64 * 1024 * 1024)
    settings = JobSettings(transfer_image=real_node.busybox, identity="test-builder-1",
                           namespace=NS, cpu="1", memory="512Mi", ephemeral_storage="1Gi",
                           workspace_size="256Mi", cpu_request="50m", memory_request="64Mi")
    cache_root = tmp_path_factory.mktemp("builder-cache")
    executor = KubernetesExecutor(kube, transfers, settings, cache_root)
    yield Builds(real_node, kube, transfers, settings, toolchain, executor, cache_root)
    transfers.close()
    kube.close()


def job_of(steps: list[list[str]], name: str, image: str, timeout: float = 60,
           tenant: str = "tenant-a", caches: tuple[str, ...] = ()) -> BuildJob:
    return BuildJob(name=name, tenant=tenant, toolchain_image=image,
                    steps=tuple(BuildStep(tuple(s)) for s in steps), caches=caches,
                    timeout=timeout)


def workspace(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for rel, text in (files or {"README": "hello\n"}).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


# --- the mosquitto template through a Job: the same bytes as the process executor -------------

def test_mosquitto_starter_builds_in_a_job_byte_identical_to_the_process_executor(
        builds: Builds, tmp_path: Path) -> None:
    tdir = template_dir("mosquitto-c")
    recipe = load_recipe(tdir)
    source = scaffold(tdir, "mosquitto-c", "mosquitto", "deny-test", tmp_path / "repo")

    t = time.monotonic()
    local = run_recipe(recipe, source, tmp_path / "process", executor=ProcessExecutor(tmp_path))
    process_seconds = time.monotonic() - t
    echo = (tmp_path / "echo.txt").open("w")
    t = time.monotonic()
    in_job = run_recipe(recipe, source, tmp_path / "job", executor=builds.executor, log=echo,
                        build_name="deny-test-1", tenant="tenant-a",
                        toolchain_image=builds.toolchain)
    job_seconds = time.monotonic() - t
    echo.close()

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    assert files(in_job.artifact_dir) == files(local.artifact_dir)
    assert list(files(in_job.artifact_dir)) == ["deny_test.so"]
    log = in_job.log_path.read_text()
    assert "$ gcc -std=gnu11" in log and "==> build Job plugforge-builds/build-deny-test-1-" in log
    # The live echo (what `plugforge logs -f` shows) saw the same lines.
    assert "$ gcc -std=gnu11" in (tmp_path / "echo.txt").read_text()
    # A second run: the images are on the node, as they are for every build but the first.
    t = time.monotonic()
    run_recipe(recipe, source, tmp_path / "job2", executor=builds.executor,
               build_name="deny-test-2", tenant="tenant-a", toolchain_image=builds.toolchain)
    warm_seconds = time.monotonic() - t
    print(f"\nmosquitto-c starter: process executor {process_seconds:.2f} s; kubernetes "
          f"executor {job_seconds:.2f} s (first), {warm_seconds:.2f} s (again): Job overhead "
          f"{warm_seconds - process_seconds:.2f} s; containers (seen started, log ended) "
          f"{builds.executor.timings}; setup {builds.real.timings}")


# --- every template, unchanged, as a Job --------------------------------------------------------

# Whose artifact is the same bytes from a Job as from the process executor. The others hold
# their build's time: EMQX's package is a tar.gz with mtimes, HiveMQ's jar its entries' times.
REPRODUCIBLE = {"mosquitto-c", "rabbitmq-erlang", "vernemq-erlang"}


@pytest.fixture(scope="module")
def pins(builds: Builds) -> dict[str, toolchains_mod.Pin]:
    """Every template's toolchain image, pushed to the node's registry and pinned."""
    t = time.monotonic()
    pinned = toolchains.pins(builds.real.podman, builds.real.registry.host, builds.real.cp.ca,
                             log=node.NODE_DIR / "images.log")
    builds.real.timings["all toolchains"] = time.monotonic() - t
    return pinned


def seed_maven_cache(builds: Builds, tenant: str, image: str) -> Path:
    """The tenant's Maven cache for ``image``, seeded from this machine's (which the
    process-level tests and scripts/ensure.d/hivemq.sh fill): the node's pods have no route off
    the machine, so this stands for what a cluster's builder starts from, a warm cache or a
    repository mirror. Hard links: the builder only ever adds files to a cache."""
    seeded = toolchains_mod.cache_dir(builds.cache_root, tenant, image, "maven")
    if not seeded.exists():
        shutil.copytree(images.cache_dir() / "build-caches" / "maven", seeded,
                        symlinks=True, copy_function=os.link)
    return seeded


@pytest.mark.parametrize("template", toolchains.TEMPLATES)
def test_every_template_builds_unchanged_as_a_job(builds: Builds, pins: dict[str, Any],
                                                  template: str, tmp_path: Path) -> None:
    tdir = template_dir(template)
    recipe = load_recipe(tdir)
    source = scaffold(tdir, template, recipe.broker, "tpl-job", tmp_path / "repo")
    image = pins[template].image
    tenant = "tenant-templates"
    if "maven" in recipe.caches:
        seed_maven_cache(builds, tenant, image)
    # Java and Erlang want more than the mosquitto-sized defaults of this module; the Maven
    # cache (~220 MB) rides in the workspace.
    executor = KubernetesExecutor(builds.kube, builds.transfers, replace(
        builds.settings, memory="1536Mi", workspace_size="1536Mi", ephemeral_storage="3Gi"),
        builds.cache_root)

    t = time.monotonic()
    local = run_recipe(recipe, source, tmp_path / "process",
                       executor=ProcessExecutor(images.cache_dir()))
    process_seconds = time.monotonic() - t
    t = time.monotonic()
    in_job = run_recipe(recipe, source, tmp_path / "job", executor=executor,
                        build_name=f"tpl-{template}", tenant=tenant, toolchain_image=image)
    job_seconds = time.monotonic() - t
    log = in_job.log_path.read_text()
    print(f"\n{template}: process executor {process_seconds:.2f} s, Job {job_seconds:.2f} s "
          f"(containers: {[(c, round(a, 1), round(b, 1)) for c, a, b in executor.timings]}); "
          + "; ".join(line for line in log.splitlines() if line.startswith(("==>", "!!"))))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    got, want = files(in_job.artifact_dir), files(local.artifact_dir)
    assert (in_job.name, in_job.version) == (local.name, local.version)
    assert sorted(got) == sorted(want), log
    assert all(got.values()), got.keys()
    print(f"{template}: byte-identical to the process executor: {got == want}")
    if template in REPRODUCIBLE:
        assert got == want
    assert "!!" not in log, log
    if recipe.caches:
        assert "==> caches:" in log, log


def test_the_build_pod_is_locked_down(builds: Builds, tmp_path: Path) -> None:
    """The Pod spec as the apiserver stored it, and the same facts seen from inside."""
    # (The markers are split so the echoed command line does not contain them.)
    inside = ("id -u; id -g; "
              "test -e /var/run/secrets/kubernetes.io/serviceaccount && echo TOKEN''-DIR; "
              "touch /probe 2>/dev/null && echo ROOT''-WRITABLE; "
              "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
              "env | grep _SERVICE_HOST= | grep -v ^KUBERNETES_ | wc -l; "
              "echo made > out.txt")
    src = workspace(tmp_path)
    builds.executor.run(job_of([["sh", "-c", inside]], "locked-down", builds.toolchain),
                        src, tmp_path / "build.log")
    log = (tmp_path / "build.log").read_text()
    assert (src / "out.txt").read_text() == "made\n"
    assert "TOKEN-DIR" not in log and "ROOT-WRITABLE" not in log, log
    assert "\n65532\n65532\n" in log, log
    assert "CapEff:\t0000000000000000" in log and "NoNewPrivs:\t1" in log, log
    assert "Seccomp:\t2" in log, log  # filter mode: the runtime's default profile
    # No Service variables but the apiserver's own, which the kubelet always sets (an address,
    # no credential).
    assert "\n0\n" in log, log

    job = next(j for j in builds.jobs()
               if j["metadata"]["labels"]["plugforge.dev/build"] == "locked-down")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 60
    assert spec["ttlSecondsAfterFinished"] == builds.settings.ttl_after_finished
    assert job["metadata"]["labels"]["plugforge.dev/tenant"] == "tenant-a"
    assert job["metadata"]["labels"]["plugforge.dev/builder"] == "test-builder-1"
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "plugforge-build"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["volumes"] == [{"name": "workspace", "emptyDir": {"sizeLimit": "256Mi"}}]
    containers = [*pod["initContainers"], *pod["containers"]]
    assert [c["name"] for c in containers] == ["fetch", "step-1", "return"]
    assert containers[1]["command"] == ["sh", "-c", inside]  # the step's argv, as it is
    for c in containers:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert set(c["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}
    # The pod the Job made has no token volume either (the apiserver adds none).
    pods = builds.pods(f"plugforge.dev/build-job={job['metadata']['name']}")
    volumes = [v["name"] for p in pods for v in p["spec"]["volumes"]]
    assert volumes == ["workspace"], volumes


def test_rights_builder_manages_jobs_in_the_build_namespace_only_and_builds_have_none(
        builds: Builds) -> None:
    cp = builds.real.cp

    def allowed(user: str, namespace: str, verb: str, resource: str, group: str = "",
                sub: str = "") -> bool:
        code, out = cp.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                               body={"spec": {"user": user, "groups": [
                                   "system:serviceaccounts",
                                   f"system:serviceaccounts:{user.split(':')[2]}"],
                                   "resourceAttributes": {
                                       "namespace": namespace, "verb": verb, "group": group,
                                       "resource": resource, "subresource": sub}}})
        assert code == 201, out
        status: Any = out["status"]
        return bool(status.get("allowed"))

    builder = "system:serviceaccount:plugforge-system:plugforge-builder"
    assert allowed(builder, NS, "create", "jobs", "batch")
    assert allowed(builder, NS, "get", "pods", sub="log")
    assert not allowed(builder, "default", "create", "jobs", "batch")
    assert not allowed(builder, NS, "create", "pods")  # Jobs only: their pods are the Job's
    assert not allowed(builder, NS, "get", "secrets")
    build = f"system:serviceaccount:{NS}:plugforge-build"
    for verb, resource, group in (("get", "secrets", ""), ("list", "pods", ""),
                                  ("create", "jobs", "batch"), ("get", "configmaps", ""),
                                  ("list", "brokerplugins", "plugforge.dev")):
        for namespace in (NS, "default", "plugforge-system"):
            assert not allowed(build, namespace, verb, resource, group), (verb, resource)


# --- per-tenant caches through the transfers --------------------------------------------------

def test_a_tenants_cache_persists_across_its_jobs_and_only_grows(
        builds: Builds, tmp_path: Path) -> None:
    """rebar3's cache as a recipe names it: filled by one build, found by the next (no
    network needed), invisible to another tenant, and never changed by a later build."""
    cache = "$REBAR_CACHE_DIR"
    pkg = f"{cache}/hex/packages/dep-1.0.tar"

    def build(n: int, script: str, tenant: str = "tenant-a") -> str:
        work = tmp_path / str(n)
        work.mkdir()
        builds.executor.run(job_of([["sh", "-c", script]], f"cache-{n}", builds.toolchain,
                                   tenant=tenant, caches=("rebar3",)),
                            workspace(work), work / "build.log")
        return (work / "build.log").read_text()

    def on_builder(tenant: str) -> Path:
        return toolchains_mod.cache_dir(builds.cache_root, tenant, builds.toolchain, "rebar3")

    mine = on_builder("tenant-a")
    # 1. An empty cache; the build downloads (here: writes) a package into it.
    log = build(1, f'test -z "$(ls -A {cache})" && mkdir -p {cache}/hex/packages && '
                   f"echo v1 > {pkg} && echo FILLED")
    assert "FILLED" in log and "==> caches: 1 files added, 0 already cached" in log, log
    assert (mine / "hex/packages/dep-1.0.tar").read_text() == "v1\n"
    # 2. The next build of the tenant finds it: nothing to fetch, nothing new to return.
    log = build(2, f"cat {pkg}")
    assert "\nv1\n" in log and "==> caches: 0 files added" in log, log
    # 3. Another tenant's build starts empty, and what it adds stays its own.
    log = build(3, f'echo "entries: $(ls -A {cache} | wc -l)"; mkdir -p {cache}/x && '
                   f"echo b > {cache}/x/b", tenant="tenant-b")
    assert "entries: 0" in log, log
    assert (on_builder("tenant-b") / "x/b").read_text() == "b\n"
    assert not (mine / "x").exists()
    # 4. A build that overwrites a cached file (a trojaned package) cannot change it; what it
    #    adds beside it is added.
    log = build(4, f"echo trojan > {pkg}; echo v2 > {cache}/hex/packages/dep-2.0.tar")
    assert "==> caches: 1 files added, 1 already cached (kept as they were)" in log, log
    assert (mine / "hex/packages/dep-1.0.tar").read_text() == "v1\n"
    assert (mine / "hex/packages/dep-2.0.tar").read_text() == "v2\n"
    # 5. A symlink (to anything) is refused, with everything else of that build's additions.
    log = build(5, f"ln -s /etc/passwd {cache}/hex/passwd; echo x > {cache}/hex/extra")
    assert "!! cache additions refused, caches unchanged:" in log, log
    assert not (mine / "hex/passwd").exists() and not (mine / "hex/extra").exists()
    # 6. A failed build adds nothing.
    with pytest.raises(BuildFailed):
        build(6, f"echo x > {cache}/from-a-failed-build; exit 1")
    assert not (mine / "from-a-failed-build").exists()
    # 7. Additions over the upload cap (64 MiB here) are not sent; the build still succeeds.
    log = build(7, f"head -c 68000000 /dev/zero > {cache}/huge")
    assert "!! the build's cache additions did not arrive (no upload)" in log, log
    assert not (mine / "huge").exists()
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == [
        "hex", "hex/packages", "hex/packages/dep-1.0.tar", "hex/packages/dep-2.0.tar"]


# --- failures: a step's exit code, the deadline, a missing tool, an image that is not there ---

def test_a_failing_step_is_build_failed_with_its_number_and_log_tail(
        builds: Builds, tmp_path: Path) -> None:
    steps = [["sh", "-c", "echo first step ok"],
             ["sh", "-c", "echo 'src/x.c:3: error: expected ;' >&2; exit 3"],
             ["sh", "-c", "echo never runs"]]
    with pytest.raises(BuildFailed) as failed:
        builds.executor.run(job_of(steps, "fails", builds.toolchain), workspace(tmp_path),
                            tmp_path / "build.log")
    assert failed.value.step == 2 and failed.value.exit_code == 3
    assert "src/x.c:3: error: expected ;" in failed.value.log_tail
    assert "first step ok" in failed.value.log_tail
    assert "never runs" not in (tmp_path / "build.log").read_text()
    assert "build step 2 (sh -c echo" in str(failed.value)


def test_the_deadline_is_build_timeout_and_stops_the_pod(
        builds: Builds, tmp_path: Path) -> None:
    t = time.monotonic()
    with pytest.raises(BuildTimeout) as timed_out:
        builds.executor.run(job_of([["sh", "-c", "echo started; sleep 300"]], "slow",
                                   builds.toolchain, timeout=8),
                            workspace(tmp_path), tmp_path / "build.log")
    elapsed = time.monotonic() - t
    assert "time limit of 8s" in str(timed_out.value)
    assert "started" in timed_out.value.log_tail
    assert elapsed < 40, elapsed
    wait_for(lambda: not any(c.get("state", {}).get("running")
                             for p in builds.pods("plugforge.dev/build=slow")
                             for c in p.get("status", {}).get("initContainerStatuses", [])),
             "the slow build's step to be stopped", timeout=30)


def test_a_program_the_toolchain_lacks_is_tool_missing(builds: Builds, tmp_path: Path) -> None:
    with pytest.raises(ToolMissing) as missing:
        builds.executor.run(job_of([["rebar3", "compile"]], "no-rebar", builds.toolchain),
                            workspace(tmp_path), tmp_path / "build.log")
    assert missing.value.tool == "rebar3"
    assert builds.toolchain in str(missing.value)


def test_an_image_that_cannot_be_pulled_is_executor_failed_and_its_job_deleted(
        builds: Builds, tmp_path: Path) -> None:
    image = f"{builds.real.registry.host}/plugforge/no-such-toolchain:1"
    with pytest.raises(ExecutorFailed) as broken:
        builds.executor.run(job_of([["true"]], "no-image", image), workspace(tmp_path),
                            tmp_path / "build.log")
    assert "cannot pull image" in str(broken.value) and "no-such-toolchain" in str(broken.value)
    wait_for(lambda: not [j for j in builds.jobs()
                          if j["metadata"]["labels"]["plugforge.dev/build"] == "no-image"],
             "the failed Job to be deleted", timeout=30)


# --- a killed builder leaves nothing running after the next start -----------------------------

KILLED_BUILDER = """
import json, sys
from pathlib import Path
from builder.build import repo_recipe
from builder.build.executors import BuildJob, BuildStep
from builder.build.executors.kubernetes import JobSettings, KubernetesExecutor
from builder.build.executors.transfer import TransferServer, extract_result
from builder.kube import Kube
cfg = json.loads(sys.argv[1])
ex = KubernetesExecutor(Kube.from_kubeconfig(Path(cfg["kubeconfig"])),
                        TransferServer((cfg["ip"], 0), cfg["ip"], 1 << 20),
                        JobSettings(**cfg["settings"]))
src = Path(cfg["work"]) / "src"
src.mkdir(parents=True)
job = BuildJob("orphaned", "tenant-a", cfg["image"],
               (BuildStep(("sh", "-c", "echo building; sleep 600")),), (), 300.0)
ex.run(job, src, Path(cfg["work"]) / "build.log", sys.stdout)
"""


def test_a_killed_builders_job_is_deleted_by_the_next_one(
        builds: Builds, tmp_path: Path) -> None:
    settings = replace(builds.settings, identity="test-builder-killed")
    cfg = {"kubeconfig": str(builds.real.cp.kubeconfig("builder")), "ip": node.NODE_IP,
           "work": str(tmp_path), "image": builds.toolchain,
           "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, json.dumps(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: any(c.get("state", {}).get("running")
                             for p in builds.pods("plugforge.dev/build=orphaned")
                             for c in p.get("status", {}).get("initContainerStatuses", [])),
                 "the build step to run", timeout=90)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    orphans = [j["metadata"]["name"] for j in builds.jobs()
               if j["metadata"]["labels"]["plugforge.dev/builder"] == "test-builder-killed"]
    assert len(orphans) == 1, orphans  # the kill left it running

    # The next builder (this process's executor, holding no build) starts and sweeps.
    swept = builds.executor.sweep()
    assert orphans[0] in swept
    wait_for(lambda: not builds.pods("plugforge.dev/build=orphaned"),
             "the orphan's pod to be gone", timeout=60)
    assert not [j for j in builds.jobs() if j["metadata"]["name"] == orphans[0]]


# --- the transfer server and the result's extraction (no node needed) -------------------------

def _post(url: str, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_transfer_urls_work_once_expire_and_cap_sizes(tmp_path: Path) -> None:
    server = TransferServer(("127.0.0.1", 0), "127.0.0.1", max_bytes=1000)
    try:
        (tmp_path / "source.tar").write_bytes(b"tar bytes")
        url = server.offer(tmp_path / "source.tar", ttl=30)
        assert _get(url) == (200, b"tar bytes")
        assert _get(url)[0] == 404  # single use
        assert _get(url.rsplit("/", 1)[0] + "/guessed")[0] == 404
        assert _get(server.offer(tmp_path / "source.tar", ttl=-1))[0] == 404  # expired

        url, receipt = server.expect(tmp_path / "result.tar", ttl=30)
        assert _get(url)[0] == 404  # an upload URL does not serve, and is not used up by it
        assert _post(url, base64.b64encode(b"\0result\0")) == 204
        assert receipt.done.is_set() and receipt.error is None
        assert (tmp_path / "result.tar").read_bytes() == b"\0result\0"
        assert _post(url, base64.b64encode(b"again")) == 404

        url, receipt = server.expect(tmp_path / "big.tar", ttl=30)
        assert _post(url, base64.b64encode(b"x" * 2000)) == 413
        assert receipt.error is not None and "at most 1000 bytes" in receipt.error
        assert not (tmp_path / "big.tar").exists()
    finally:
        server.close()


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def test_the_result_is_extracted_without_escapes(tmp_path: Path) -> None:
    good = _tar(tmp_path / "good.tar", [
        (_member("./"), b""), (_member("./lib", tarfile.DIRTYPE), b""),
        (_member("./lib/a.so"), b"\x7fELF"), (_member("./lib/b.so", tarfile.LNKTYPE, "lib/a.so"),
                                              b""),
        (_member("./passwd", tarfile.SYMTYPE, "/etc/passwd"), b"")])
    out = tmp_path / "out"
    out.mkdir()
    assert extract_result(good, out, 1 << 20) == []
    assert (out / "lib" / "b.so").read_bytes() == b"\x7fELF"
    assert not (out / "lib" / "b.so").is_symlink()  # a hard link becomes a copy
    assert os.readlink(out / "passwd") == "/etc/passwd"  # kept; artifacts.collect judges it

    bad = {
        "escape": [(_member("../evil"), b"x")],
        "absolute": [(_member("/tmp/evil"), b"x")],
        "through a link": [(_member("up", tarfile.SYMTYPE, "/tmp"), b""),
                           (_member("up/evil"), b"x")],
        "device": [(_member("null", tarfile.CHRTYPE), b"")],
        "twice": [(_member("a"), b"x"), (_member("a", tarfile.SYMTYPE, "/etc/shadow"), b"")],
        "hard link out": [(_member("h", tarfile.LNKTYPE, "/etc/shadow"), b"")],
        "too big": [(_member("a"), b"x" * 600), (_member("b"), b"x" * 600)],
    }
    for case, members in bad.items():
        dest = tmp_path / case.replace(" ", "-")
        dest.mkdir()
        with pytest.raises(ArtifactError):
            extract_result(_tar(tmp_path / f"{dest.name}.tar", members), dest, 1000)
    assert not Path("/tmp/evil").exists()


def test_cache_additions_are_merged_without_overwrites_links_or_escapes(tmp_path: Path) -> None:
    caches = {"maven": tmp_path / "t" / "sha256-x" / "maven"}
    (caches["maven"] / "org").mkdir(parents=True)
    (caches["maven"] / "org" / "plugin.jar").write_bytes(b"good")
    added = _tar(tmp_path / "added.tar", [
        (_member("./"), b""), (_member("./maven", tarfile.DIRTYPE), b""),
        (_member("./maven/org", tarfile.DIRTYPE), b""),
        (_member("./maven/org/plugin.jar"), b"trojan"),
        (_member("./maven/org/new", tarfile.DIRTYPE), b""),
        (_member("./maven/org/new/dep.jar"), b"dep")])
    assert merge_cache(added, caches, 1 << 20) == CacheMerge(added=1, kept=1)
    assert (caches["maven"] / "org" / "plugin.jar").read_bytes() == b"good"
    assert (caches["maven"] / "org" / "new" / "dep.jar").read_bytes() == b"dep"

    bad = {
        "symlink": [(_member("maven", tarfile.DIRTYPE), b""),
                    (_member("maven/evil", tarfile.SYMTYPE, "/etc/passwd"), b""),
                    (_member("maven/fine"), b"x")],
        "escape": [(_member("maven/../../evil"), b"x")],
        "device": [(_member("maven", tarfile.DIRTYPE), b""),
                   (_member("maven/null", tarfile.CHRTYPE), b"")],
        "other cache": [(_member("rebar3", tarfile.DIRTYPE), b""),
                        (_member("rebar3/x"), b"x")],
        "too big": [(_member("maven", tarfile.DIRTYPE), b""), (_member("maven/a"), b"x" * 2000)],
    }
    for case, members in bad.items():
        with pytest.raises(ArtifactError):
            merge_cache(_tar(tmp_path / f"{case}.tar", members), caches, 1000)
    assert sorted(str(p.relative_to(caches["maven"])) for p in caches["maven"].rglob("*")) == [
        "org", "org/new", "org/new/dep.jar", "org/plugin.jar"]
    assert not (tmp_path / "evil").exists()
    assert [p.name for p in caches["maven"].parent.iterdir()] == ["maven"]  # no staging left


def test_a_cache_over_the_cap_is_sent_empty_and_said(tmp_path: Path) -> None:
    image = "r.example/plugforge/toolchain-x@sha256:" + "a" * 64
    transfers = TransferServer(("127.0.0.1", 0), "127.0.0.1", max_bytes=1000)
    kube = Kube(ApiClient())
    try:
        executor = KubernetesExecutor(kube, transfers, JobSettings(
            transfer_image="bb", identity="t", max_cache_bytes=100), tmp_path / "root")
        small = toolchains_mod.cache_dir(tmp_path / "root", "tenant-a", image, "rebar3")
        big = toolchains_mod.cache_dir(tmp_path / "root", "tenant-a", image, "maven")
        for directory, size in ((small, 10), (big, 200)):
            directory.mkdir(parents=True)
            (directory / "f").write_bytes(b"x" * size)
        out = _Log(tmp_path / "build.log", None)
        sent = executor._caches_to_send({"rebar3": small, "maven": big,
                                         "none": tmp_path / "missing"}, out)
        out.close()
    finally:
        transfers.close()
        kube.close()
    assert sent == {"rebar3": small, "maven": None, "none": None}
    assert "!! the maven cache" in (tmp_path / "build.log").read_text()
    # The Job asks the return container for the additions only when there are caches.
    job = job_of([["true"]], "b", image, caches=("rebar3",))
    spec = job_manifest(job, executor.settings, "j", "http://s", "http://r", "http://c")
    ret = spec["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "PLUGFORGE_CACHE_URL", "value": "http://c"} in ret["env"]
    assert "cpio" in ret["command"][-1] and "PLUGFORGE_CACHE_URL" in ret["command"][-1]
    plain = job_manifest(replace(job, caches=()), executor.settings, "j", "http://s",
                         "http://r")["spec"]["template"]["spec"]["containers"][0]
    assert "cpio" not in plain["command"][-1] and len(plain["env"]) == 1


def test_the_apiserver_answers_a_build_pod_as_anonymous(builds: Builds, tmp_path: Path) -> None:
    """This node's bridge enforces no NetworkPolicy (manifests/builder/50-builds.yaml denies
    it where the CNI does): a build pod reaches the apiserver here, and holds nothing to show
    it. busybox's TLS client, as a step."""
    cp = builds.real.cp
    url = f"https://{cp.host}:{cp.port}/api/v1/namespaces/plugforge-system/secrets"
    with pytest.raises(BuildFailed) as refused:
        builds.executor.run(job_of([["/bin/busybox", "wget", "-q", "-O", "-", url]],
                                   "anonymous", builds.real.busybox),
                            workspace(tmp_path), tmp_path / "build.log")
    assert ("401 Unauthorized" in refused.value.log_tail
            or "403 Forbidden" in refused.value.log_tail), refused.value.log_tail
    assert '"kind":"SecretList"' not in refused.value.log_tail.replace(" ", "")


# --- the evil repositories (tests/evil_repos.py) through Jobs ---------------------------------

@pytest.fixture(scope="module")
def targets(builds: Builds, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[evil_repos.Targets]:
    """What a build must not reach, planted on the node's host with one random secret."""
    root = tmp_path_factory.mktemp("planted")
    secret = "pf-secret-" + secrets.token_hex(16)
    token = root / "serviceaccount" / "token"
    secret_dir = root / "builder-secrets"
    other = root / "state" / "work" / "tenant-b" / "build-1" / "source" / "src" / "auth.c"
    for path, text in ((token, secret), (secret_dir / "api-tokens", f"ci@*:{secret}\n"),
                       (other, f"// {secret}\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    holder = subprocess.Popen(["sleep", "3600"], env={"PATH": os.environ["PATH"],
                                                      evil_repos.SECRET_VARIABLE: secret})
    try:
        yield evil_repos.Targets(
            secret=secret, token_file=token, secret_dir=secret_dir, other_tenant_files=(other,),
            other_cache=root / "caches" / "tenant-b" / "maven", builder_pid=holder.pid,
            ports=((builds.real.cp.host, builds.real.cp.port),),
            marker=f"pf-evil-{secrets.token_hex(5)}")
    finally:
        holder.kill()
        holder.wait()


# Contained: the build goes on without what it wanted; or it fails, saying why.
ATTACKS: dict[str, tuple[tuple[type[BuildError], ...], str]] = {
    "sa_token": ((), ""), "builder_secrets": ((), ""), "other_tenant": ((), ""),
    "host_proc": ((), ""), "cache_write": ((), ""), "daemon": ((), ""),
    "network": ((), ""),
    "incbin": ((BuildFailed,), "file not found"),
    "disk_fill": ((BuildFailed,), "No space left on device"),
    # The pod's 1024 pids (the kubelet's podPidsLimit) stop it: gcc cannot fork its linker,
    # or the bomb's own loop keeps the build busy until its deadline.
    "fork_bomb": ((BuildFailed, BuildTimeout), ""),
}
FORK_BOMB_TIMEOUT = 40


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_contained_in_a_build_job(builds: Builds, targets: evil_repos.Targets,
                                            attack: str, tmp_path: Path) -> None:
    # A tmpfs workspace: disk_fill then hits a hard cap instead of this machine's disk.
    executor = KubernetesExecutor(builds.kube, builds.transfers, replace(
        builds.settings, workspace_in_memory=True, workspace_size="64Mi"))
    repo = evil_repos.write_repo(tmp_path / "repo", attack, targets)
    resolved = repo_recipe.resolve(repo)
    name = f"evil-{attack.replace('_', '-')}"
    try:
        result: BuildResult | BuildError = run_recipe(
            resolved.recipe, repo, tmp_path / "work", executor=executor, build_name=name,
            tenant="tenant-a", toolchain_image=builds.toolchain,
            timeout=FORK_BOMB_TIMEOUT if attack == "fork_bomb" else None)
    except BuildError as e:
        result = e
    log = (tmp_path / "work" / "build.log").read_text(errors="replace")
    expected, words = ATTACKS[attack]
    print(f"\n{attack}: {type(result).__name__}; " + "; ".join(
        line for line in log.splitlines() if line.startswith("ATTACK")))
    if attack != "incbin":
        assert f"ATTACK {attack}:" in log, log  # the repository's code did run
    assert "SUCCEEDED" not in log, log
    assert targets.secret not in log
    if not expected:
        assert isinstance(result, BuildResult), f"{result}\n{log}"
        for f in result.artifact_dir.rglob("*"):
            assert not f.is_file() or targets.secret.encode() not in f.read_bytes(), f
    else:
        assert isinstance(result, expected), f"{result!r}\n{log}"
        assert words in str(result), str(result)
        assert targets.secret not in str(result)
    assert not targets.other_cache.exists()
    # Nothing of the build runs on: no marked process on the host, no running container.
    # (A pod stopped at its deadline takes the kubelet a moment to kill.)
    wait_for(lambda: not [p for p in Path("/proc").glob("[0-9]*/cmdline")
                          if targets.marker.encode() in _read(p)],
             f"{attack}'s processes to be gone", timeout=60 if attack == "fork_bomb" else 0.1)
    wait_for(lambda: not [c for p in builds.pods(f"plugforge.dev/build={name}")
                          for c in (*p["status"].get("initContainerStatuses", []),
                                    *p["status"].get("containerStatuses", []))
                          if c.get("state", {}).get("running")],
             f"{name}'s containers to end", timeout=30)
    if attack == "fork_bomb":
        # The node stays Ready and runs the next build.
        status = builds.real.api.ok("GET", f"/api/v1/nodes/{node.NODE_NAME}")["status"]
        assert any(c["type"] == "Ready" and c["status"] == "True"
                   for c in status["conditions"]), status["conditions"]
        after = tmp_path / "after"
        after.mkdir()
        builds.executor.run(job_of([["sh", "-c", "echo built > out.txt"]], "after-bomb",
                                   builds.toolchain), workspace(after), after / "build.log")
        assert (after / "src" / "out.txt").read_text() == "built\n"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


# --- judge(): the apiserver's view of a Job and its pod -> how the build ended (pure) ---------

NOW = datetime(2026, 12, 6, 19, 0, 0, tzinfo=UTC)


def _pod(phase: str = "Pending", inits: list[dict[str, Any]] | None = None,
         mains: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {"status": {"phase": phase, "initContainerStatuses": inits or [],
                       "containerStatuses": mains or [], **status}}


def _ended(name: str, code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {"name": name, "state": {"terminated": {"exitCode": code, "reason": reason,
                                                   "message": message}}}


def _verdict(job: dict[str, Any] | None, pod: dict[str, Any] | None,
             elapsed: float = 5) -> tuple[str, int, int]:
    v = judge(job, pod, elapsed=elapsed, timeout=60, now=NOW)
    return v.kind, v.step, v.code


def test_judge_maps_what_the_cluster_shows_to_the_build_outcome() -> None:
    job: dict[str, Any] = {"status": {}}
    deadline = {"status": {"conditions": [{"type": "FailureTarget", "status": "True",
                                           "reason": "DeadlineExceeded"}]}}
    ok = [_ended("fetch", 0, "Completed")]
    assert _verdict(job, None) == ("running", 0, 0)
    refused = {"metadata": {"creationTimestamp": "2026-12-06T18:59:00Z"}, "status": {}}
    assert _verdict(refused, None)[0] == "infra"  # no pod for a minute: admission refused it
    young = {"metadata": {"creationTimestamp": "2026-12-06T18:59:59+00:00"}, "status": {}}
    assert _verdict(young, None)[0] == "running"  # (as the typed client re-serializes it)
    assert _verdict(None, None)[0] == "infra"  # deleted under us
    assert _verdict(deadline, _pod("Running"))[0] == "timeout"
    assert _verdict(job, _pod("Failed", reason="DeadlineExceeded"))[0] == "timeout"
    assert _verdict(job, _pod("Failed", [*ok, _ended("step-1", 137)]), elapsed=60)[0] == \
        "timeout"  # killed at the deadline before the cluster said so
    assert _verdict(job, _pod("Failed", [*ok, _ended("step-1", 0), _ended("step-2", 2)])) == \
        ("step-failed", 2, 2)
    assert _verdict(job, _pod("Failed", [_ended("fetch", 1)]))[0] == "infra"
    missing = _ended("step-1", 128, "StartError",
                     'exec: "rebar3": executable file not found in $PATH')
    assert _verdict(job, _pod("Failed", [*ok, missing])) == ("tool-missing", 1, 128)
    pulling = {"name": "step-1", "image": "r/x:1", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "not found"}}}
    assert _verdict(job, _pod("Pending", [*ok, pulling]))[0] == "infra"
    assert _verdict(job, _pod("Failed", reason="Evicted", message="disk"))[0] == "infra"
    assert _verdict(job, _pod("Running", ok, [_ended("return", 1)]))[0] == "infra"
    assert _verdict(job, _pod("Succeeded"))[0] == "succeeded"
    waiting = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "lastTransitionTime": "2026-12-06T18:59:50Z", "message": "0/1 nodes"}]
    assert _verdict(job, _pod("Pending", conditions=waiting))[0] == "running"  # 10 s: waits
    waiting[0]["lastTransitionTime"] = "2026-12-06T18:58:00Z"
    assert _verdict(job, _pod("Pending", conditions=waiting))[0] == "infra"


def test_kubernetes_executor_needs_the_transfer_settings() -> None:
    kube = Kube(ApiClient())
    try:
        with pytest.raises(ExecutorRefused, match="--transfer-host and --transfer-image"):
            kubernetes_executor(kube, Settings())
        with pytest.raises(ExecutorRefused, match="needs --transfer-image"):
            kubernetes_executor(kube, Settings(transfer_host="10.0.0.7"))
    finally:
        kube.close()


def test_label_values_stay_valid() -> None:
    assert label_value("deny-test-1") == "deny-test-1"
    for text in ("x" * 100, "a/b c", "-lead", "plugforge-builder-7d9f8c-abcde.example.com" * 2):
        value = label_value(text)
        assert len(value) <= 63 and value[0].isalnum() and value[-1].isalnum(), value
        assert re.fullmatch(r"[A-Za-z0-9._-]+", value), value
    assert label_value("a/b") != label_value("a:b")  # hashed, so no two builds collide
