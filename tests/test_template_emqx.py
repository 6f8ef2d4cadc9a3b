"""emqx-erlang: scaffold with the CLI, build with the recipe, check the EMQX plugin package, and
run it in a live EMQX 5.8.9 node (the session's ``emqx`` fixture) with EMQX's built-in
authentication on: where the plugin's hooks sit in EMQX's chains and what MQTT 3.1.1 and 5
clients see (mallory refused despite a valid password, unknown users and wrong passwords refused
by EMQX, alice in, PUBLISH to forbidden/ refused).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from emqx_support import accepted, enable_password_database, publish_refused, remove_plugins
from paho.mqtt.enums import MQTTProtocolVersion

from plugforge.cli import main
from testbed.emqx import Emqx

NAME, VSN = "deny_test", "0.1.0"
NAME_VSN = f"{NAME}-{VSN}"

pytestmark = pytest.mark.timeout(600)


@dataclass
class Built:
    repo: Path
    package: Path
    artifact_dir: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("emqx-erlang")
    repo = root / "deny-test"
    assert main(["new", "--broker", "emqx", "deny-test", "--dir", str(repo)]) == 0
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    assert "All 3 tests passed" in (work / "build.log").read_text()
    artifact_dir = work / "artifact"
    return Built(repo=repo, package=artifact_dir / f"{NAME_VSN}.tar.gz", artifact_dir=artifact_dir)


def test_artifact_is_the_plugin_package(built: Built) -> None:
    assert sorted(p.name for p in built.artifact_dir.iterdir()) == [f"{NAME_VSN}.tar.gz"]
    with tarfile.open(built.package) as tar:
        names = tar.getnames()
        info = json.load(tar.extractfile(f"{NAME_VSN}/release.json"))  # type: ignore[arg-type]
    for name in names:
        assert name.startswith(f"{NAME_VSN}/") and ".." not in name.split("/"), name
    assert f"{NAME_VSN}/{NAME_VSN}/ebin/{NAME}.app" in names
    assert f"{NAME_VSN}/{NAME_VSN}/ebin/{NAME}.beam" in names
    assert f"{NAME_VSN}/README.md" in names
    # The fields EMQX 5's plugin manager requires, and the NAME-VSN it checks them against.
    assert {"name", "rel_vsn", "rel_apps", "description"} <= set(info)
    assert f"{info['name']}-{info['rel_vsn']}" == NAME_VSN
    assert info["rel_apps"] == [NAME_VSN]
    assert info["description"]
    # EMQX splits NAME-VSN at the first '-', so the name must not contain one.
    assert "-" not in info["name"]
    assert re.fullmatch(r"\d+", info["built_on_otp_release"])


def test_same_commit_builds_the_same_bytes(built: Built, tmp_path: Path) -> None:
    # Entries carry the commit time and beams are compiled `deterministic`, so an unchanged
    # commit gives an unchanged package (and image digest).
    assert main(["build", "--local", str(built.repo), "--work-dir", str(tmp_path / "again"),
                 "--quiet"]) == 0
    again = tmp_path / "again" / "artifact" / built.package.name
    assert again.read_bytes() == built.package.read_bytes()
    with tarfile.open(built.package) as tar:
        info = json.load(tar.extractfile(f"{NAME_VSN}/release.json"))  # type: ignore[arg-type]
    head = subprocess.run(["git", "-C", str(built.repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert info["git_ref"] == head


@pytest.fixture(scope="module")
def node(emqx: Emqx) -> Iterator[Emqx]:
    enable_password_database(emqx)
    remove_plugins(emqx)
    yield emqx
    remove_plugins(emqx)


@pytest.fixture
def started(built: Built, node: Emqx) -> Iterator[Emqx]:
    """The package placed in EMQX's plugins dir and started by name (as the adapter does)."""
    shutil.copyfile(built.package, node.plugins_dir / built.package.name)
    node.api("PUT", f"/plugins/{NAME_VSN}/start")
    yield node
    remove_plugins(node)


def callbacks(node: Emqx, hook: str) -> list[tuple[str, int]]:
    """(module, priority) of every callback of ``hook`` on the node, in the order EMQX runs
    them."""
    out = node.eval(
        f"[io:format(\"CB ~s ~b~n\", [element(1, element(2, C)), element(4, C)]) "
        f"|| C <- emqx_hooks:lookup('{hook}')], ok.")
    return [(m, int(p)) for m, p in
            (line.split()[1:3] for line in out.splitlines() if line.startswith("CB "))]


def test_hooks_run_before_emqx_authentication_and_authorization(started: Emqx) -> None:
    authn = callbacks(started, "client.authenticate")
    authz = callbacks(started, "client.authorize")
    # EMQX runs a hook's callbacks by priority, highest first: the plugin (1000) before the
    # built-in authentication chain (970) and authorization sources (960).
    assert authn[0] == (NAME, 1000), authn
    assert ("emqx_authn_chains", 970) in authn, authn
    assert authz[0] == (NAME, 1000), authz
    assert any(p == 960 for _, p in authz[1:]), authz


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["v311", "v5"])
def test_policy_with_emqx_password_database(started: Emqx, protocol: MQTTProtocolVersion
                                            ) -> None:
    # The plugin refuses mallory although her password is right...
    assert not accepted(started, "mallory", protocol=protocol)
    # ... and leaves everyone else to EMQX's password database.
    assert not accepted(started, "nobody", protocol=protocol)
    assert not accepted(started, "alice", "wrong-password", protocol=protocol)
    assert accepted(started, "alice", protocol=protocol)
    assert publish_refused(started, "alice", None, "forbidden/x", protocol=protocol)
    assert not publish_refused(started, "alice", None, "ok/x", protocol=protocol)


def test_stopped_plugin_leaves_no_hooks(started: Emqx) -> None:
    assert not accepted(started, "mallory")
    started.api("PUT", f"/plugins/{NAME_VSN}/stop")
    assert all(m != NAME for m, _ in callbacks(started, "client.authenticate"))
    assert all(m != NAME for m, _ in callbacks(started, "client.authorize"))
    assert accepted(started, "mallory")  # EMQX's password database admits her again
    assert not publish_refused(started, "alice", None, "forbidden/x")
