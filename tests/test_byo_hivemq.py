"""Bring your own plugin on HiveMQ: HiveMQ's own Hello World extension at 4.4.0
(tests/third_party/README.md), unmodified, in a Git repository that gains only
``.plugforge/recipe.yaml`` (a complete recipe). Built with ``plugforge build --local`` (its own
pom: shade and assembly plugins from Maven Central, cached), pushed with ``plugforge push``,
pulled by digest and installed by the sidecar's HiveMQ adapter into a real HiveMQ CE, taking
effect at the broker restart the adapter performs (restart mode: the plugforge loader hot-loads
only security plugins and refuses this one, which registers a lifecycle listener and a publish
interceptor); a real MQTT client sees its interceptor rewrite ``hello/world`` payloads.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _track
from hivemq_support import make_adapter
from mqtt_support import Client

from builder.build.repo_recipe import REPO_RECIPE
from plugforge.cli import main
from plugforge.oci import RegistryClient, pull_image
from testbed.gitserver import run_git
from testbed.hivemq import HiveMQ, start_hivemq
from testbed.procs import Supervisor
from testbed.registry import Registry

# A cold Maven cache downloads the SDK and the pom's plugins (~1 min); warm runs take seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

THIRD_PARTY = Path(__file__).parent / "third_party"
TREE = THIRD_PARTY / "hivemq-hello-world-extension-4.4.0"
NAME = "hivemq-hello-world-extension"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("byo-hivemq")
    repo = root / NAME
    shutil.copytree(TREE, repo)
    run_git(repo, "init", "-q", "-b", "main")
    run_git(repo, "add", ".")
    run_git(repo, "commit", "-q", "-m", "HiveMQ Hello World extension 4.4.0, unmodified")
    (repo / ".plugforge").mkdir()
    shutil.copy(THIRD_PARTY / "recipes" / f"{NAME}.yaml", repo / REPO_RECIPE)
    run_git(repo, "add", REPO_RECIPE)
    run_git(repo, "commit", "-q", "-m", "plugforge recipe")
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet",
                 "--executor", "process"]) == 0
    return work


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[HiveMQ]:
    b = start_hivemq(tmp_path / "hivemq")
    _track(b)
    yield b
    b.stop()


def test_build_is_the_extension_folder(work: Path) -> None:
    files = sorted(p.name for p in (work / "artifact").iterdir())
    assert f"{NAME}-4.4.0.jar" in files and "hivemq-extension.xml" in files
    xml = (work / "artifact" / "hivemq-extension.xml").read_text()
    assert f"<id>{NAME}</id>" in xml and "<version>4.4.0</version>" in xml  # filtered by Maven


def test_pushed_pulled_and_installed_it_rewrites_hello_world(
        work: Path, broker: HiveMQ, registry: Registry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["push", str(work), f"{registry.host}/byo/hello-world",
                 "--registry-ca", str(registry.ca.cert)]) == 0
    image = capsys.readouterr().out.strip()
    digest = image.rpartition("@")[2]
    with RegistryClient(registry.host, ca_bundle=registry.ca.cert) as client:
        tree = pull_image(client, image, tmp_path / "images")
    adapter = make_adapter(broker, tmp_path / "plugins", mode="restart")
    supervisor = Supervisor(broker)  # plays the kubelet: starts HiveMQ again when it exits
    try:
        adapter.install_plugin(NAME, digest, tree)
        adapter.enable(NAME, digest, {})
        adapter.restart()
        _track(broker)
        assert adapter.observe().plugins[NAME].digest == digest
        watcher, sender = Client(broker.port, "alice"), Client(broker.port, "bob")
        watcher.subscribe("hello/#")
        sender.publish("hello/world", b"anything")
        sender.publish("hello/other", b"untouched")
        watcher.wait_for_message("hello/other")
        assert sorted(watcher.messages) == [("hello/other", b"untouched"),
                                            ("hello/world", b"Hello World!")]
        watcher.close()
        sender.close()
    finally:
        supervisor.stop()
    assert "Started Hello World Extension:4.4.0" in broker.server.log_path.read_text()
