"""Untrusted builds run isolated (issue 21): each attack of tests/evil_repos.py, built through
the ``container`` executor with the mosquitto-c toolchain image (real podman, runc, gcc), fails
or is contained, and the secret's bytes never reach the artifact or the log. The same reading
attacks built with the ``process`` executor succeed: the control that gives the test teeth.

podman is driven the way the product drives it: a plain ``podman`` whose store and this
machine's quirks (runc, cgroupfs, no default ulimits) come from podman's own config files.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import evil_repos
import pytest
from builder_support import (
    Cluster,
    broker_plugin,
    fast_settings,
    install,
    running_builder,
    tenant_namespace,
)

from builder.build import repo_recipe
from builder.build.executors import BuildJob, BuildStep
from builder.build.executors.container import (
    LABEL_BUILD,
    LABEL_OWNER,
    ContainerExecutor,
    Limits,
    container_name,
    run_argv,
)
from builder.build.executors.process import ProcessExecutor
from builder.build.executors.select import PROCESS_WARNING, ExecutorRefused, select_executor
from builder.build.recipe import BuildResult, run_recipe, template_dir
from builder.build.recipe_errors import (
    BuildError,
    BuildFailed,
    BuildTimeout,
    ExecutorFailed,
    ToolMissing,
)
from builder.build.scaffold import scaffold
from builder.build.toolchains import Pin, cache_dir, dump_pins
from builder.settings import SettingsError, parse_settings
from plugforge.cli import main as plugforge_main
from testbed import images, toolchains
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.registry import Registry

LIMITS = Limits(memory="768m", cpus=1.0, pids=128, workspace="64m", tmp="64m", home="16m")
TENANT, OTHER_TENANT = "tenant-a", "tenant-b"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return toolchains.executor_env(images.Podman.in_cache(), tmp_path_factory.mktemp("podman-conf"))


@pytest.fixture(scope="module")
def toolchain(env: dict[str, str]) -> str:
    """The mosquitto-c toolchain image, pinned by its digest in the local store."""
    return toolchains.local_pins(images.Podman.in_cache(), ("mosquitto-c",))["mosquitto-c"].image


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("caches")


@pytest.fixture
def container(env: dict[str, str], cache_root: Path) -> ContainerExecutor:
    return ContainerExecutor(cache_root, podman_env=env, limits=LIMITS)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory, cache_root: Path, toolchain: str,
            control_plane: ControlPlane) -> Iterator[evil_repos.Targets]:
    """What a build must not reach, planted on this machine with one random secret."""
    root = tmp_path_factory.mktemp("planted")
    secret = "pf-secret-" + secrets.token_hex(16)
    token = root / "serviceaccount" / "token"
    secret_dir = root / "builder-secrets"
    other = root / "state" / "work" / OTHER_TENANT / "build-1" / "source" / "src" / "auth.c"
    mirror = root / "state" / "git" / OTHER_TENANT / "repo.git" / "config"
    for path, text in ((token, secret), (secret_dir / "api-tokens", f"ci@*:{secret}\n"),
                       (secret_dir / "cosign.key", secret), (other, f"// {secret}\n"),
                       (mirror, f"[remote]\n\turl = https://x:{secret}@git.example\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    other_cache = cache_dir(cache_root, OTHER_TENANT, toolchain, "maven")
    other_cache.mkdir(parents=True)
    (other_cache / evil_repos.CACHE_OWNER).write_text(OTHER_TENANT)
    builder = subprocess.Popen(["sleep", "3600"],
                               env={"PATH": os.environ["PATH"],
                                    evil_repos.SECRET_VARIABLE: secret})
    api = evil_repos.LeakyApi(secret)
    apiserver = control_plane.url.split("//", 1)[1].rstrip("/")
    host, port = apiserver.rsplit(":", 1)
    try:
        yield evil_repos.Targets(
            secret=secret, token_file=token, secret_dir=secret_dir,
            other_tenant_files=(other, mirror),
            other_cache=other_cache,
            builder_pid=builder.pid, ports=(("127.0.0.1", api.port), (host, int(port))),
            marker=f"pf-evil-{uuid.uuid4().hex[:10]}")
    finally:
        builder.kill()
        builder.wait()
        api.sock.close()


def _build(attack: str, targets: evil_repos.Targets, tmp: Path, executor: object,
           toolchain: str, timeout: float = 60) -> tuple[BuildResult | BuildError, str, str]:
    """The build's result or error, its log, and its name."""
    repo = evil_repos.write_repo(tmp / "repo", attack, targets)
    name = f"evil-{attack}-{uuid.uuid4().hex[:6]}"
    resolved = repo_recipe.resolve(repo)
    log = io.StringIO()
    try:
        result: BuildResult | BuildError = run_recipe(
            resolved.recipe, repo, tmp / "work", log=log, timeout=timeout,
            executor=executor,  # type: ignore[arg-type]
            toolchain_image=toolchain, build_name=name,
            tenant=TENANT)
    except BuildError as e:
        result = e
    return result, (tmp / "work" / "build.log").read_text(errors="replace") + log.getvalue(), name


def _leftovers(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(f"{cmdline.parent.name}: {text}")
    return found


def _containers(env: dict[str, str], label: str) -> str:
    return subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}", "--filter",
                           f"label={label}"], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


# What each attack comes to in a container: contained (the build goes on without what it
# wanted) or failed, with the words the error must say.
OUTCOMES: dict[str, tuple[type[BuildError] | None, str]] = {
    "sa_token": (None, ""), "builder_secrets": (None, ""), "other_tenant": (None, ""),
    "host_proc": (None, ""), "cache_write": (None, ""), "daemon": (None, ""),
    "network": (None, ""),
    "incbin": (BuildFailed, "file not found"),
    "disk_fill": (BuildFailed, "the workspace holds at most 64m"),
    "fork_bomb": (BuildTimeout, "time limit of 8s"),
}


@pytest.mark.parametrize("attack", evil_repos.ATTACKS)
def test_attack_is_contained_by_the_container_executor(
        attack: str, targets: evil_repos.Targets, container: ContainerExecutor,
        toolchain: str, env: dict[str, str], tmp_path: Path) -> None:
    expected, words = OUTCOMES[attack]
    started = time.monotonic()
    result, log, name = _build(attack, targets, tmp_path, container, toolchain,
                         timeout=8 if attack == "fork_bomb" else 60)
    took = time.monotonic() - started
    print(f"\n{attack}: {type(result).__name__} in {took:.1f}s")
    if attack != "incbin":
        assert f"ATTACK {attack}:" in log, log  # the repository's code did run
    assert "SUCCEEDED" not in log, log
    secret = targets.secret.encode()
    assert secret not in log.encode()
    if expected is None:
        assert isinstance(result, BuildResult), f"{result}\n{log}"
        for f in result.artifact_dir.rglob("*"):
            assert not f.is_file() or secret not in f.read_bytes(), f
    else:
        assert isinstance(result, expected), f"{result!r}\n{log}"
        assert words in str(result), str(result)
        assert targets.secret not in str(result)
    assert not _leftovers(targets.marker)
    assert not _containers(env, f"{LABEL_BUILD}={name}")
    assert not (targets.other_cache / evil_repos.TROJAN).exists()


@pytest.mark.parametrize("attack", evil_repos.READS)
def test_control_the_same_attack_succeeds_unisolated(
        attack: str, targets: evil_repos.Targets, cache_root: Path, tmp_path: Path) -> None:
    """With the process executor (development only) the attack works: the test above can see
    a leak, so its passing means something."""
    result, log, _ = _build(attack, targets, tmp_path, ProcessExecutor(cache_root), "")
    try:
        if attack == "cache_write":
            assert (targets.other_cache / evil_repos.TROJAN).exists(), log
        else:
            assert isinstance(result, BuildResult), f"{result}\n{log}"
            shipped = b"".join(f.read_bytes() for f in result.artifact_dir.rglob("*")
                               if f.is_file())
            assert targets.secret.encode() in shipped, log
    finally:
        (targets.other_cache / evil_repos.TROJAN).unlink(missing_ok=True)


def test_caches_are_per_tenant_and_toolchain(container: ContainerExecutor, toolchain: str,
                                             cache_root: Path, tmp_path: Path) -> None:
    """A tenant's build sees its own cache, never another tenant's; the host keeps them apart
    by tenant and toolchain digest."""
    def job(tenant: str, script: str) -> BuildJob:
        return BuildJob(name=f"cache-{uuid.uuid4().hex[:6]}", tenant=tenant,
                        toolchain_image=toolchain, caches=("maven",), timeout=60,
                        steps=(BuildStep(("sh", "-c", script)),))

    for tenant in (TENANT, OTHER_TENANT):
        (tmp_path / tenant).mkdir()
    container.run(job(TENANT, 'echo "$MAVEN_OPTS"; echo planted > /var/cache/plugforge/maven/'
                              'trojan.jar'), tmp_path / TENANT, tmp_path / "a.log")
    container.run(job(OTHER_TENANT, "ls -A /var/cache/plugforge/maven; ls -A /var/cache/plugforge"
                                    "/maven | grep -c . || true"),
                  tmp_path / OTHER_TENANT, tmp_path / "b.log")
    mine = cache_dir(cache_root, TENANT, toolchain, "maven")
    assert (mine / "trojan.jar").read_text() == "planted\n"
    assert "-Dmaven.repo.local=/var/cache/plugforge/maven" in (tmp_path / "a.log").read_text()
    assert "trojan" not in (tmp_path / "b.log").read_text()
    assert mine.parent.name == "sha256-" + toolchain.rsplit(":", 1)[1]
    assert not (cache_dir(cache_root, OTHER_TENANT, toolchain, "maven") / "trojan.jar").exists()


def test_what_a_build_sees(container: ContainerExecutor, toolchain: str, tmp_path: Path) -> None:
    """Non-root, no capabilities, read-only root, nothing of the caller's environment, no
    network; outputs come back, the container goes."""
    os.environ["PF_CALLER_ONLY"] = "must-not-leak"
    try:
        job = BuildJob(name="sees", tenant=TENANT, toolchain_image=toolchain, caches=(),
                       timeout=60, steps=(BuildStep(
                           ("sh", "-c", "id -u; grep CapEff /proc/self/status; env; "
                                        "touch /usr/x 2>&1; cat /proc/net/dev; echo out > o.txt"),
                           {"STEP_VAR": "from-recipe"}),))
        container.run(job, tmp_path, tmp_path.parent / "sees.log")
    finally:
        del os.environ["PF_CALLER_ONLY"]
    log = (tmp_path.parent / "sees.log").read_text()
    assert "\n65532\n" in log and "CapEff:\t0000000000000000" in log, log
    assert "STEP_VAR=from-recipe" in log and "PF_CALLER_ONLY" not in log, log
    assert "Read-only file system" in log, log
    assert "eth0" not in log and "lo:" in log, log  # --network=none: loopback only
    assert (tmp_path / "o.txt").read_text() == "out\n"


def test_a_retried_build_removes_its_predecessors_container(
        container: ContainerExecutor, env: dict[str, str], toolchain: str,
        tmp_path: Path) -> None:
    """A builder that died mid-build left its container; the retry (same tenant and build
    name) removes it before starting, and a missing image is ExecutorFailed, not the plugin's
    fault."""
    job = BuildJob(name=f"retry-{uuid.uuid4().hex[:6]}", tenant=TENANT,
                   toolchain_image=toolchain, caches=(), timeout=60,
                   steps=(BuildStep(("true",)),))
    subprocess.run(["podman", *run_argv(job, container_name(job), {}, LIMITS, "65532:65532")],
                   env=env, check=True, capture_output=True)
    container.run(job, tmp_path, tmp_path.parent / "retry.log")
    assert not _containers(env, f"{LABEL_BUILD}={job.name}")
    missing = BuildJob(name="missing", tenant=TENANT, caches=(), timeout=60,
                       toolchain_image="localhost/plugforge/no-such-toolchain@sha256:" + "0" * 64,
                       steps=(BuildStep(("true",)),))
    with pytest.raises(ExecutorFailed, match="no-such-toolchain"):
        container.run(missing, tmp_path, tmp_path.parent / "missing.log")
    vanishing = BuildJob(name=f"vanish-{uuid.uuid4().hex[:6]}", tenant=TENANT, caches=(),
                         timeout=60, toolchain_image=toolchain,
                         steps=(BuildStep(("sleep", "30")),))
    remover = threading.Timer(2, lambda: subprocess.run(
        ["podman", "rm", "-f", "-t", "0", container_name(vanishing)], env=env,
        capture_output=True, check=False))
    remover.start()
    with pytest.raises(ExecutorFailed, match="vanished during step 1"):
        container.run(vanishing, tmp_path, tmp_path.parent / "vanish.log")
    remover.join()
    absent = BuildJob(name="absent", tenant=TENANT, caches=(), timeout=60,
                      toolchain_image=toolchain, steps=(BuildStep(("rebar3", "compile")),))
    with pytest.raises(ToolMissing, match="'rebar3' is not in the toolchain image"):
        container.run(absent, tmp_path, tmp_path.parent / "absent.log")


def test_process_executor_is_refused_unless_allowed_and_warns_at_start(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="allow-process-executor"):
        parse_settings(["--executor", "process"], {})
    with pytest.raises(ExecutorRefused):
        select_executor("process", allow_process=False, log=logging.getLogger("t"))
    assert parse_settings([], {}).executor == "kubernetes"
    settings = parse_settings([], {"PLUGFORGE_BUILDER_EXECUTOR": "process",
                                   "PLUGFORGE_BUILDER_ALLOW_PROCESS_EXECUTOR": "true"})
    with caplog.at_level(logging.WARNING):
        chosen = select_executor(settings.executor, allow_process=True,
                                 log=logging.getLogger("t"), cache_root=tmp_path)
    assert chosen.name == "process"
    assert PROCESS_WARNING in caplog.text and "ServiceAccount token" in caplog.text
    assert select_executor("container", allow_process=False, log=logging.getLogger("t"),
                           cache_root=tmp_path).name == "container"


def _blobs_hold(storage: Path, needle: bytes) -> list[Path]:
    """Registry blobs (gunzipped when gzip) that contain ``needle``."""
    found = []
    for blob in storage.rglob("data"):
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            with contextlib.suppress(OSError, EOFError):
                data = gzip.decompress(data)
        if needle in data:
            found.append(blob)
    return found


def test_through_the_builder_the_secret_is_in_no_status_event_log_or_image(
        control_plane: ControlPlane, registry: Registry, git_server: GitServer,
        targets: evil_repos.Targets, toolchain: str, env: dict[str, str],
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder with ``--executor container`` builds two evil repositories (a hook reading
    the token, an ``.incbin`` of it): one is contained and pushed, one fails with the
    assembler's reason; the secret is in no PluginBuild, BrokerPlugin, Event, build log or
    registry blob."""
    install(control_plane)
    cluster = Cluster(control_plane, tenant_namespace(control_plane, "iso"))
    state = tmp_path_factory.mktemp("iso-builder")
    pins = state / "toolchains.yaml"
    pins.write_text(dump_pins({"mosquitto-c": Pin(toolchain, ("gcc",))}))
    for name in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):  # podman's own config
        monkeypatch.setenv(name, env[name])
    settings = fast_settings(control_plane, registry.ca.cert, "iso", "iso-builder",
                             state / "state", watch_namespace=cluster.ns, executor="container",
                             allow_process_executor=False, toolchains=pins)
    outcomes = {}
    with running_builder(settings) as builder:
        for attack in ("sa_token", "incbin"):
            plugin = attack.replace("_", "-")
            url = git_server.create_repo(f"{cluster.ns}/{plugin}.git")
            repo = evil_repos.write_repo(tmp_path_factory.mktemp("src") / plugin, attack,
                                         targets)
            run_git(repo, "add", "-A")
            run_git(repo, "commit", "-qm", "innocent change")
            run_git(repo, "push", "-q", url, "HEAD:main")
            cluster.create("brokerplugins", broker_plugin(
                plugin, url=url, repository=f"{registry.host}/plugins/{plugin}",
                configmap=None))
            build = cluster.wait_build(plugin, timeout=180)
            log = builder.controller.log_path(cluster.ns, build["metadata"]["name"]).read_text()
            outcomes[attack] = (build["status"], log)
            for text in (json.dumps(build), json.dumps(cluster.plugin(plugin)), log):
                assert targets.secret not in text
    _, events = control_plane.request("GET", f"/api/v1/namespaces/{cluster.ns}/events")
    assert targets.secret not in json.dumps(events)
    assert not _blobs_hold(registry.storage, targets.secret.encode())
    status, log = outcomes["sa_token"]
    assert status["phase"] == "Succeeded", status
    assert "ATTACK sa_token: blocked" in log and "[container executor]" in log, log
    status, log = outcomes["incbin"]
    assert (status["phase"], status.get("reason")) == ("Failed", "BuildFailed"), status
    assert "file not found" in status.get("message", "") + log, status


def test_a_new_leader_sweeps_its_predecessors_containers_only(
        env: dict[str, str], cache_root: Path, toolchain: str) -> None:
    """``sweep`` (called when a builder takes the Lease) removes the build containers its
    owner left, and no one else's (another builder's, a CLI build's)."""
    owner, other = f"plugforge-system/{uuid.uuid4().hex[:6]}", f"else/{uuid.uuid4().hex[:6]}"
    names = {who: f"sweep-{uuid.uuid4().hex[:8]}" for who in (owner, other)}
    for who, name in names.items():
        subprocess.run(["podman", "run", "-d", "--rm", "--name", name, "--label",
                        f"{LABEL_OWNER}={who}", "--network=none", toolchain, "sleep", "600"],
                       env=env, check=True, capture_output=True)
    try:
        swept = ContainerExecutor(cache_root, podman_env=env, owner=owner).sweep()
        assert swept == [names[owner]]
        assert _containers(env, f"{LABEL_OWNER}={other}") == names[other]
        assert not ContainerExecutor(cache_root, podman_env=env).sweep()
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *names.values()], env=env,
                       check=False, capture_output=True)


def test_build_local_runs_in_the_toolchain_image_when_podman_has_it(
        env: dict[str, str], toolchain: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``plugforge build --local`` picks the container executor when the recipe's toolchain
    image is in podman's store, and says so; ``--executor container`` without one fails with
    the command that builds it."""
    for name in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
        monkeypatch.setenv(name, env[name])
    repo = scaffold(template_dir("mosquitto-c"), "mosquitto-c", "mosquitto", "local-iso",
                    tmp_path / "repo")
    assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(tmp_path / "w"),
                           "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "==> container executor in localhost/plugforge/toolchain-mosquitto-c@sha256:" in out
    assert (tmp_path / "w" / "artifact" / "local_iso.so").is_file()
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(tmp_path / "empty-store.conf"))
    (tmp_path / "empty-store.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{tmp_path / "store"}"\n'
        f'runroot = "{tmp_path / "run"}"\n')
    assert plugforge_main(["build", "--local", str(repo), "--work-dir", str(tmp_path / "w2"),
                           "--executor", "container"]) == 1
    assert "plugforge toolchains build mosquitto-c" in capsys.readouterr().err
