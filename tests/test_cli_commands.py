"""``plugforge`` subcommands that talk to the builder or the apiserver: help text, usage
errors (exit 2), failures of the thing asked (exit 1), and ``status`` on the real apiserver.

The end-to-end uses (trigger/logs/builds against a real builder, rollout across two brokers)
are in test_grpc_build_service.py and test_rollout_canary.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builder_support import install, tenant_namespace

from plugforge.cli import main as plugforge
from testbed.certs import CertificateAuthority
from testbed.kube import ControlPlane
from testbed.procs import free_port

SUBCOMMANDS = ("new", "build", "trigger", "builds", "logs", "rollout", "status")


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugforge(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"    {name} " in out


@pytest.mark.parametrize(("command", "expected"), [
    (["trigger"], ["plugin", "--commit", "--wait", "--follow", "--builder", "--token-file",
                   "--ca-file", "--namespace", "--output"]),
    (["builds"], ["--plugin", "--phase", "--limit", "--builder", "--output"]),
    (["logs"], ["build", "--follow", "exit code is then the build's"]),
    (["rollout"], ["plugin", "--watch", "--watch-timeout", "exit 0 when it settled Ready"]),
    (["status"], ["--kubeconfig", "--context", "--all-namespaces", "--output"]),
])
def test_subcommand_help(command: list[str], expected: list[str],
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert plugforge([*command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in expected:
        assert text in out, f"{text!r} missing from {command} --help"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PLUGFORGE_BUILDER", "PLUGFORGE_TOKEN_FILE", "PLUGFORGE_CA_FILE",
                 "PLUGFORGE_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("argv", "message"), [
    (["frobnicate"], "invalid choice"),
    (["trigger"], "the following arguments are required: plugin"),
    (["builds", "-o", "xml"], "invalid choice: 'xml'"),
    (["builds", "--phase", "Done"], "invalid choice: 'Done'"),
    (["builds", "--limit", "-1"], "--limit: expected 0 (all) or more"),
    (["builds"], "no builder address: pass --builder HOST:PORT"),
    (["logs", "x", "--builder", "127.0.0.1:1"], "no API token: pass --token-file"),
    (["rollout", "p", "--builder", "127.0.0.1:1", "--token-file", "/nonexistent/token"],
     "cannot read it"),
])
def test_usage_errors_exit_2(no_env: None, argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert plugforge(argv) == 2
    assert message in capsys.readouterr().err


def test_unreachable_builder_is_a_failure_exit_1(no_env: None, tmp_path: Path,
                                                 testbed_ca: CertificateAuthority,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken-that-must-not-be-printed\n")
    argv = ["--builder", f"127.0.0.1:{free_port()}", "--token-file", str(token),
            "--ca-file", str(testbed_ca.cert), "--timeout", "2"]
    assert plugforge(["builds", *argv]) == 1
    err = capsys.readouterr().err
    assert "list builds: UNAVAILABLE" in err and "is --builder right" in err
    assert "t0ken-that" not in err
    assert plugforge(["rollout", "p", *argv]) == 1
    assert "rollout p: UNAVAILABLE" in capsys.readouterr().err


def test_missing_ca_file_is_a_usage_error(no_env: None, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    assert plugforge(["builds", "--builder", "127.0.0.1:1", "--token-file", str(token),
                      "--ca-file", str(tmp_path / "nope.crt")]) == 2
    assert "--ca-file" in capsys.readouterr().err


def test_status_reads_the_apiserver(control_plane: ControlPlane, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    install(control_plane)
    ns = tenant_namespace(control_plane, "cli")
    kubeconfig = str(control_plane.kubeconfig("admin"))
    assert plugforge(["status", "-n", ns, "--kubeconfig", kubeconfig]) == 0
    assert capsys.readouterr().out == f"no BrokerPlugins in namespace {ns}\n"
    code, created = control_plane.request(
        "POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{ns}/brokerplugins", body={
            "apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
            "metadata": {"name": "listed"},
            "spec": {"broker": "mosquitto",
                     "source": {"git": {"url": "https://git.example/x.git", "ref": "main"}},
                     "image": {"repository": "registry.example/plugins/x"}}})
    assert code == 201, created
    assert plugforge(["status", "-n", ns, "--kubeconfig", kubeconfig, "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["broker"], r["built"], r["ready"]) for r in rows] == [
        ("listed", "mosquitto", "Unknown", "Unknown")]
    assert plugforge(["status", "-A", "--kubeconfig", kubeconfig]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:5] == ["NAMESPACE", "NAME", "BROKER", "BUILT", "READY"]
    assert any(line.split()[:2] == [ns, "listed"] for line in out.splitlines())
    # A context that is not in the kubeconfig: usage error; an identity without rights: 1.
    assert plugforge(["status", "--kubeconfig", kubeconfig, "--context", "nope"]) == 2
    assert "kubeconfig" in capsys.readouterr().err
    assert plugforge(["status", "-A", "--kubeconfig",
                      str(control_plane.kubeconfig("sidecar"))]) == 1
    assert "HTTP 403" in capsys.readouterr().err
