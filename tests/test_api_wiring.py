"""The gRPC APIs wired exactly as manifests/ wires them, against the real apiserver.

`plugforge api-secrets` makes the Secrets; each Secret is then laid out the way the kubelet
mounts it (keys as files under the Deployment's mountPath), and the builder runs with the
builder Deployment's own arguments (only mount paths, listen ports and the state dir moved
into the test's directory), as the builder ServiceAccount. The CLI reaches it with the token
and CA the command wrote; the builder reaches a sidecar started with the mosquitto example's
gRPC arguments, over TLS with the token from the same Secrets.
"""

from __future__ import annotations

import base64
import contextlib
import io
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from builder_support import install, tenant_namespace, wait_for
from sidecar_support import make_sidecar, start_dynsec_broker

from builder.app import Builder
from builder.settings import parse_settings
from plugforge.cli import main as cli
from plugforge.cli.api_secrets import BUILDER_SECRET, CA_SECRET, SIDECAR_SECRET
from plugforge.cli.signing_keys import KEY_SECRET
from sidecar.grpc_service import serve_configured
from sidecar.settings import parse_args as parse_sidecar_args
from testbed.kube import ControlPlane
from testbed.manifests import MANIFESTS, render

SYSTEM = "plugforge-system"


@dataclass(frozen=True)
class Installed:
    namespace: str
    out_dir: Path
    first_output: str


def _secret(cp: ControlPlane, namespace: str, name: str) -> dict[str, bytes]:
    code, body = cp.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert code == 200, body
    data: dict[str, str] = body["data"]  # type: ignore[assignment]
    return {k: base64.b64decode(v) for k, v in data.items()}


def _container(kustomization: Path, workload: str, container: str) -> dict[str, Any]:
    docs = render(kustomization)
    pod = next(d["spec"]["template"]["spec"] for d in docs
               if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == workload)
    found: dict[str, Any] = next(c for c in pod["containers"] if c["name"] == container)
    found["_volumes"] = pod["volumes"]
    return found


TOOLCHAINS_CONFIGMAP = "plugforge-toolchains"  # manifests/builder/45-toolchains.yaml


def _configmap(cp: ControlPlane, namespace: str, name: str) -> dict[str, bytes]:
    code, body = cp.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
    assert code == 200, body
    data: dict[str, str] = body["data"]  # type: ignore[assignment]
    return {k: v.encode() for k, v in data.items()}


def _mount_secrets(cp: ControlPlane, container: dict[str, Any], namespace: str,
                   root: Path) -> dict[str, str]:
    """Lay out the gRPC Secret volumes and the toolchain pins as the kubelet would;
    {mountPath: local path}."""
    volumes = {v["name"]: v for v in container["_volumes"]}
    moved = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if volume.get("configMap", {}).get("name") == TOOLCHAINS_CONFIGMAP:
            files = _configmap(cp, namespace, volume["configMap"]["name"])
        elif volume.get("secret", {}).get("secretName") in (BUILDER_SECRET, SIDECAR_SECRET,
                                                            KEY_SECRET):
            files = _secret(cp, namespace, volume["secret"]["secretName"])
        else:
            continue
        local = root / mount["mountPath"].strip("/")
        local.mkdir(parents=True, exist_ok=True)
        for key, value in files.items():
            (local / key).write_bytes(value)
        moved[mount["mountPath"]] = str(local)
    return moved


def _moved_args(args: list[str], moved: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        for mount, local in moved.items():
            arg = arg.replace(f"={mount}/", f"={local}/")
            if arg.endswith(f"={mount}"):
                arg = arg.removesuffix(mount) + local
        out.append(arg.replace("=0.0.0.0:", "=127.0.0.1:").rsplit(":", 1)[0] + ":0"
                   if "=0.0.0.0:" in arg else arg)
    return out


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
              ) -> Installed:
    install(control_plane)  # the manifests' namespace plugforge-system and RBAC
    namespace = tenant_namespace(control_plane, "api")
    out_dir = tmp_path_factory.mktemp("cli") / "plugforge-api"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli(["api-secrets", "--kubeconfig", str(control_plane.kubeconfig("admin")),
                    "--broker-namespace", namespace, "--sidecar-host", "localhost",
                    "--out-dir", str(out_dir)])
    assert code == 0, buf.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):  # the builder mounts the signing key
        assert cli(["signing-keys", "--kubeconfig", str(control_plane.kubeconfig("admin")),
                    "--broker-namespace", namespace,
                    "--out-dir", str(out_dir.parent / "signing")]) == 0
    return Installed(namespace, out_dir, buf.getvalue())


def test_api_secrets_creates_once_then_keeps(installed: Installed, control_plane: ControlPlane,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ns = installed.namespace
    assert f"created secret {SYSTEM}/{BUILDER_SECRET}" in installed.first_output
    assert f"created secret {ns}/{SIDECAR_SECRET}" in installed.first_output
    builder = _secret(control_plane, SYSTEM, BUILDER_SECRET)
    sidecar = _secret(control_plane, ns, SIDECAR_SECRET)
    assert set(builder) == {"tls.crt", "tls.key", "ca.crt", "api-tokens", "sidecar-token"}
    assert set(sidecar) == {"tls.crt", "tls.key", "ca.crt", "tokens"}
    # The builder presents to sidecars exactly what the sidecars accept; one CA signs both.
    assert sidecar["tokens"] == b"builder:" + builder["sidecar-token"] + b"\n"
    assert sidecar["ca.crt"] == builder["ca.crt"] == _secret(control_plane, SYSTEM,
                                                             CA_SECRET)["ca.crt"]
    token = (installed.out_dir / "token").read_bytes()
    assert token.startswith(b"admin@*:") and token in builder["api-tokens"]
    assert stat.S_IMODE((installed.out_dir / "token").stat().st_mode) == 0o600
    assert token.split(b":", 1)[1].strip().decode() not in installed.first_output

    # Again: nothing is replaced (running pods keep working), the files are rewritten.
    (installed.out_dir / "token").unlink()
    assert cli(["api-secrets", "--kubeconfig", str(control_plane.kubeconfig("admin")),
                "--broker-namespace", ns, "--out-dir", str(installed.out_dir)]) == 0
    out = capsys.readouterr().out
    assert "created" not in out and f"kept    secret {ns}/{SIDECAR_SECRET}" in out
    assert _secret(control_plane, SYSTEM, BUILDER_SECRET) == builder
    assert (installed.out_dir / "token").read_bytes() == token


@pytest.mark.parametrize("bad", ["a,b", "two words", "*.svc", "-x.example"])
def test_api_secrets_refuses_bad_names_before_creating_anything(
        bad: str, control_plane: ControlPlane, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ns = f"never-{uuid.uuid4().hex[:6]}"
    code = cli(["api-secrets", "--kubeconfig", str(control_plane.kubeconfig("admin")),
                "--system-namespace", ns, f"--sidecar-host={bad}", "--out-dir", str(tmp_path)])
    assert code == 2
    assert "is not a DNS name" in capsys.readouterr().err
    assert control_plane.request("GET", f"/api/v1/namespaces/{ns}/secrets")[1].get(
        "items", []) == []


def test_api_secrets_explains_a_bad_kubeconfig(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kubeconfig").write_text("clusters: [\n")
    code = cli(["api-secrets", "--kubeconfig", str(tmp_path / "kubeconfig"),
                "--out-dir", str(tmp_path / "out")])
    assert code == 2
    assert "plugforge api-secrets: kubeconfig:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_api_secrets_explains_a_missing_namespace(control_plane: ControlPlane, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["api-secrets", "--kubeconfig", str(control_plane.kubeconfig("admin")),
                "--system-namespace", "no-such-namespace", "--out-dir", str(tmp_path)])
    assert code == 1
    assert "namespace 'no-such-namespace' does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def deployed_builder(installed: Installed, control_plane: ControlPlane,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builder]:
    root = tmp_path_factory.mktemp("builder-pod")
    container = _container(MANIFESTS / "builder", "plugforge-builder", "builder")
    moved = _mount_secrets(control_plane, container, SYSTEM, root)
    moved["/var/lib/plugforge"] = str(root / "state")
    args = _moved_args(container["args"], moved)
    args = [a if not a.startswith("--state-dir=") else f"--state-dir={root / 'state'}"
            for a in args]
    settings = parse_settings([
        *args, "--kubeconfig", str(control_plane.kubeconfig("builder")),
        "--watch-namespace", installed.namespace, "--lease-name", f"api-{uuid.uuid4().hex[:6]}",
        "--identity", "api-wiring", "--executor", "process", "--allow-process-executor"], {})
    builder = Builder(settings)
    builder.start()
    try:
        wait_for(lambda: builder.serving.is_set() and builder.grpc_port, "the builder to serve")
        yield builder
    finally:
        builder.stop()


def test_cli_reaches_the_deployed_builder_with_the_written_token(
        installed: Installed, deployed_builder: Builder,
        capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--builder", f"localhost:{deployed_builder.grpc_port}",
             "--ca-file", str(installed.out_dir / "ca.crt")]
    assert cli(["builds", "-n", installed.namespace, *flags,
                "--token-file", str(installed.out_dir / "token")]) == 0, capsys.readouterr()
    wrong = installed.out_dir.parent / "wrong-token"
    wrong.write_text("admin:not-the-token\n")
    assert cli(["builds", "-n", installed.namespace, *flags, "--token-file", str(wrong)]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_builder_reaches_a_sidecar_wired_like_the_broker_example(
        installed: Installed, deployed_builder: Builder, control_plane: ControlPlane,
        tmp_path: Path) -> None:
    container = _container(MANIFESTS / "brokers" / "mosquitto", "mosquitto", "plugforge-sidecar")
    moved = _mount_secrets(control_plane, container, installed.namespace, tmp_path / "pod")
    grpc_args = _moved_args([a for a in container["args"] if a.startswith("--grpc-")], moved)
    example = parse_sidecar_args(["--broker=mosquitto", "--source=files",
                                  f"--config-dir={tmp_path}", *grpc_args,
                                  "--allow-unsigned-images"])  # verification: test_signing_*
    broker = start_dynsec_broker(tmp_path / "broker")
    sidecar, _ = make_sidecar(broker, [], tmp_path / "sc", None)
    server = serve_configured(sidecar, example)
    try:
        # Dialled by pod IP, checked as plugforge-sidecar.<namespace>.svc (a pod IP is in no
        # certificate).
        target = ("mosquitto", f"127.0.0.1:{server.bound_port}", installed.namespace)
        report = deployed_builder.sidecars.report(*target, "deny-test")
        assert report.reachable, report.last_error
        # A caller without the builder's token is refused.
        from builder.rollout.sidecars import SidecarClient
        stranger = SidecarClient(Path(moved["/etc/plugforge/grpc"]) / "ca.crt", "guess")
        try:
            refused = stranger.report(*target, "deny-test")
        finally:
            stranger.close()
        assert not refused.reachable and "UNAUTHENTICATED" in refused.last_error
    finally:
        server.stop(0)
        broker.stop()
