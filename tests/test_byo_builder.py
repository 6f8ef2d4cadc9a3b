"""Bring your own plugin through the builder: Eclipse Mosquitto's message-timestamp plugin
(v2.0.11, unmodified, plus only ``.plugforge/recipe.yaml``) pushed to the real git server, built
by the builder's pipeline in the container executor (the mosquitto-c toolchain image, pinned in
the real registry), and the same tree built with ``plugforge build --local --push`` gives the
same digest. The builder's image is then pulled, verified against its release name and loaded
by the real sidecar into a real mosquitto, and an MQTT 5 client sees the timestamp property.
The ``process`` executor refuses a repository's recipe.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import yaml
from builder_support import (
    Cluster,
    broker_plugin,
    fast_settings,
    install,
    running_builder,
    tenant_namespace,
)
from sidecar_support import ADMIN, broker_yaml, make_sidecar, start_dynsec_broker, wait_for
from test_byo_mosquitto import ISO_SECOND, PropertiesClient, third_party_repo

from builder.build import toolchains
from builder.build.executors.container import ContainerExecutor
from builder.build.pipeline import Outcome, Pipeline
from builder.build.source import SourceCache
from builder.errors import BuildStepFailed
from builder.resources import GitSource, PluginSpec
from plugforge.cli import main
from plugforge.contract import PluginRelease, plugin_key, render_plugin_release
from sidecar.state import Phase
from testbed import images
from testbed import toolchains as testbed_toolchains
from testbed.certs import CertificateAuthority
from testbed.configmap_dir import ConfigMapDir
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.mosquitto import Mosquitto
from testbed.procs import Supervisor
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(600)

PLUGIN = "mosquitto_message_timestamp"


def _no_secret(namespace: str, name: str) -> NoReturn:
    raise AssertionError(f"these builds read no Secret, asked for {namespace}/{name}")


@dataclass(frozen=True)
class Source:
    repo: Path
    url: str


@pytest.fixture(scope="module")
def source(git_server: GitServer, tmp_path_factory: pytest.TempPathFactory) -> Source:
    repo = third_party_repo(tmp_path_factory.mktemp("byo-builder") / "mosquitto",
                            "message-timestamp")
    url = git_server.create_repo("eclipse/mosquitto-timestamp.git")
    run_git(repo, "push", "-q", url, "main")
    return Source(repo, url)


def _spec(url: str, registry: Registry, repository: str) -> PluginSpec:
    return PluginSpec(namespace="byo", name="timestamp", uid="u1", generation=1,
                      broker="mosquitto", source=GitSource(url=url, ref="main", path="."),
                      repository=f"{registry.host}/{repository}")


@pytest.fixture(scope="module")
def pins(registry: Registry, testbed_ca: CertificateAuthority,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, toolchains.Pin]:
    """The mosquitto-c toolchain image pushed to the registry and pinned by digest."""
    podman = images.Podman.in_cache()
    log = tmp_path_factory.mktemp("toolchain") / "toolchain.log"
    pinned = testbed_toolchains.pins(podman, registry.host, testbed_ca,
                                     templates=("mosquitto-c",), log=log)
    # What a node's runtime does with a registry it trusts: the executor then runs it by digest.
    podman("pull", "--cert-dir", str(podman.home / "certs.d" / registry.host),
           pinned["mosquitto-c"].image, timeout=600)
    return pinned


@pytest.fixture(scope="module")
def built(source: Source, registry: Registry, pins: dict[str, toolchains.Pin],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[Outcome, str]:
    """The builder's build: container executor, the toolchain pinned in the registry."""
    root = tmp_path_factory.mktemp("byo-pipeline")
    executor = ContainerExecutor(root / "caches",
                                 podman_env=testbed_toolchains.cli_env(images.Podman.in_cache()))
    pipeline = Pipeline(SourceCache(root / "git"), _no_secret, root / "work", 300,
                        registry_ca=registry.ca.cert, toolchain_pins=pins, executor=executor)
    log = io.StringIO()
    outcome = pipeline.run(_spec(source.url, registry, "byo/timestamp"), None, "ts-1", log)
    return outcome, log.getvalue()


def test_process_executor_refuses_a_repository_recipe(source: Source, registry: Registry,
                                                      tmp_path: Path) -> None:
    pipeline = Pipeline(SourceCache(tmp_path / "git"), _no_secret, tmp_path / "work", 300,
                        registry_ca=registry.ca.cert)
    with pytest.raises(BuildStepFailed) as err:
        pipeline.run(_spec(source.url, registry, "byo/refused"), None, "refused-1",
                     io.StringIO())
    assert err.value.reason == "RecipeInvalid"
    message = str(err.value)
    assert ".plugforge/recipe.yaml over template mosquitto-c: a repository's recipe runs only "\
           "in isolated builds" in message
    assert "'process' executor" in message


def test_builder_honours_the_repository_recipe(built: tuple[Outcome, str]) -> None:
    outcome, log = built
    assert "==> recipe: .plugforge/recipe.yaml over template mosquitto-c" in log
    assert "[container executor]" in log, log
    assert (outcome.plugin_name, outcome.plugin_version) == (PLUGIN, "2.0.11")
    assert not outcome.cache_hit


def test_local_build_and_push_give_the_builders_digest(
        built: tuple[Outcome, str], source: Source, registry_auth: Registry,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcome = built[0]
    assert registry_auth.credentials is not None
    user, password = registry_auth.credentials
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config.write_text(json.dumps({"auths": {registry_auth.host: {"auth": auth}}}))
    capsys.readouterr()
    # Anonymous push to a registry that wants credentials: refused, saying where it went.
    work0 = tmp_path / "w0"
    assert main(["build", "--local", str(source.repo), "--work-dir", str(work0), "--quiet",
                 "--source", source.url, "--push", f"{registry_auth.host}/byo/timestamp",
                 "--registry-ca", str(registry_auth.ca.cert),
                 "--docker-config", str(tmp_path / "none.json")]) == 1
    assert f"push to {registry_auth.host}" in capsys.readouterr().err
    # With the Docker config: the same digest as the builder's, printed as repo@digest.
    work = tmp_path / "w"
    assert main(["build", "--local", str(source.repo), "--work-dir", str(work), "--quiet",
                 "--source", source.url, "--push", f"{registry_auth.host}/byo/timestamp",
                 "--registry-ca", str(registry_auth.ca.cert),
                 "--docker-config", str(config)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"{registry_auth.host}/byo/timestamp@{outcome.digest}"
    # plugforge push of the same work dir again: the same image.
    assert main(["push", str(work), f"{registry_auth.host}/byo/again:2.0.11",
                 "--registry-ca", str(registry_auth.ca.cert), "--docker-config",
                 str(config)]) == 0
    assert capsys.readouterr().out.strip() == f"{registry_auth.host}/byo/again@{outcome.digest}"
    assert password not in (work / "plugforge-build.json").read_text()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_dynsec_broker(tmp_path / "broker")
    ctrl = ["mosquitto_ctrl", "-h", b.host, "-p", str(b.port), "-u", ADMIN[0], "-P", ADMIN[1],
            "dynsec"]
    subprocess.run([*ctrl, "createClient", "alice", "-p", "alice-pw"], check=True,
                   capture_output=True, timeout=30)
    yield b
    b.stop()


# Who may publish and subscribe is broker config the sidecar owns (the default ACLs).
BROKER = broker_yaml({"dynsec.default_acl.publishClientSend": "allow",
                      "dynsec.default_acl.subscribe": "allow"})


def _release(name: str, image: str) -> str:
    return render_plugin_release(PluginRelease(name, image))


def test_sidecar_loads_the_builders_image_into_mosquitto(
        built: tuple[Outcome, str], broker: Mosquitto, registry: Registry,
        tmp_path: Path) -> None:
    outcome = built[0]
    cm = ConfigMapDir(tmp_path / "cm")
    # A release named unlike the artifact is refused, naming both.
    cm.update({"broker.yaml": BROKER,
               "plugin.timestamp.yaml": _release("timestamp", outcome.image)})
    supervisor = Supervisor(broker)
    sidecar, _ = make_sidecar(broker, [cm.path], tmp_path / "sc", registry.ca.cert,
                              allow_restart=True)
    sidecar.start()
    try:
        wait_for(lambda: "WrongArtifact" in sidecar.state.last_error or
                 "not a build of plugin" in sidecar.state.last_error, "the refusal", timeout=40)
        assert f"plugin/{PLUGIN}/" in sidecar.state.last_error
        assert "the release names plugin 'timestamp'" in sidecar.state.last_error

        # The release named as the builder reports it: loaded (a mosquitto restart).
        cm.update({"broker.yaml": BROKER,
                   f"plugin.{PLUGIN}.yaml": _release(outcome.plugin_name, outcome.image)})
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED
                 and sidecar.state.last_applied.plugins.get(PLUGIN) == outcome.digest,
                 "the plugin applied", timeout=60)
        sub = PropertiesClient(broker.port, "alice", password="alice-pw")
        pub = PropertiesClient(broker.port, "alice", password="alice-pw")
        assert sub.accepted and pub.accepted
        sub.subscribe("ts/#")
        rc = pub.publish("ts/x", b"hi")
        assert rc.value == 0, (str(rc), broker.log_tail(60))
        sub.wait_for_message("ts/x")
        ((key, value),) = sub.user_properties["ts/x"]
        assert key == "timestamp" and ISO_SECOND.match(value), value
        sub.close()
        pub.close()
    finally:
        sidecar.stop()
        supervisor.stop()


def test_in_the_cluster_a_brokerplugin_builds_with_the_repository_recipe(
        built: tuple[Outcome, str], source: Source, control_plane: ControlPlane,
        registry: Registry, pins: dict[str, toolchains.Pin], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder process itself (controller, real apiserver, --executor container): the
    BrokerPlugin names only the repository; the release it writes names the artifact."""
    install(control_plane)
    cluster = Cluster(control_plane, tenant_namespace(control_plane, "byo"))
    pin_file = tmp_path / "toolchains.yaml"
    pin_file.write_text(toolchains.dump_pins(pins))
    # The executor's podman uses the test store (where the pinned toolchain was pulled).
    podman_env = testbed_toolchains.cli_env(images.Podman.in_cache())
    for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"):
        monkeypatch.setenv(key, podman_env[key])
    settings = fast_settings(control_plane, registry.ca.cert, "builder-byo", "builder-byo-1",
                             tmp_path / "state", watch_namespace=cluster.ns,
                             executor="container", toolchains=pin_file)
    cluster.create_configmap("broker-plugins", {"broker.yaml": BROKER})
    with running_builder(settings):
        cluster.create("brokerplugins", broker_plugin(
            "timestamp", url=source.url, repository=f"{registry.host}/byo/in-cluster"))
        build = cluster.wait_build("timestamp", timeout=180)
    status = build["status"]
    assert status["phase"] == "Succeeded", status
    assert status["cacheHit"] is False  # another repository: no content tag there yet
    assert status["digest"] == built[0].digest  # the pipeline's (and build --local's) digest
    release = yaml.safe_load(cluster.configmap("broker-plugins")[plugin_key(PLUGIN)])
    assert release["name"] == PLUGIN
    assert release["image"] == f"{registry.host}/byo/in-cluster@{built[0].digest}"
