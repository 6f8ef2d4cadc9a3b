"""``plugforge signing-keys``, ``verify`` and ``provenance`` against the real apiserver and
registry; key rotation as the runbook in manifests/README.md does it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from builder_support import install, tenant_namespace
from signing_support import client_for, provenance, push_plugin

from builder.build.signing import load_signing_key
from plugforge.cli import main as cli
from plugforge.oci import ImageRef
from plugforge.signing import attest_provenance, parse_policy, sign_image
from testbed.kube import ControlPlane
from testbed.registry import Registry


def _kube(cp: ControlPlane) -> list[str]:
    return ["--kubeconfig", str(cp.kubeconfig("admin"))]


def _read(cp: ControlPlane, kind: str, namespace: str, name: str) -> dict[str, str]:
    from kubernetes import client

    from plugforge.cli._common import kube_api_client

    core = client.CoreV1Api(kube_api_client(cp.kubeconfig("admin"), None))
    if kind == "secret":
        data = core.read_namespaced_secret(name, namespace).data or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}
    return dict(core.read_namespaced_config_map(name, namespace).data or {})


def _mount(secret: dict[str, str], where: Path) -> Path:
    """The Secret as the kubelet mounts it into the builder."""
    where.mkdir(parents=True, exist_ok=True)
    for key, value in secret.items():
        (where / key).write_text(value)
    return where


def _built(registry: Registry, tmp_path: Path, key_dir: Path, marker: str) -> ImageRef:
    key = load_signing_key(key_dir)
    image = push_plugin(registry, tmp_path, "cli/signed", marker)
    with client_for(registry) as client:
        sign_image(client, image, key)
        attest_provenance(client, image, key, provenance())
    return image


def test_signing_keys_verify_provenance_and_rotation(
        control_plane: ControlPlane, registry: Registry, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    install(control_plane)
    ns = tenant_namespace(control_plane, "sig")
    # Its own system namespace: other tests of the session (the e2e stage) made the default one's.
    system = tenant_namespace(control_plane, "sigsys")
    out = tmp_path / "out"
    assert cli(["signing-keys", *_kube(control_plane), "--system-namespace", system,
                "--broker-namespace", ns,
                "--source", "https://git.example.com/*", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"created secret {system}/plugforge-signing-key" in printed
    assert f"created configmap {ns}/plugforge-trust" in printed
    secret = _read(control_plane, "secret", system, "plugforge-signing-key")
    assert set(secret) == {"cosign.key", "cosign.password", "cosign.pub"}
    assert secret["cosign.password"] not in printed
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(_read(control_plane, "configmap", ns, "plugforge-trust")["policy.yaml"])
    assert parse_policy(policy_file.read_bytes()).require_provenance

    old_dir = _mount(secret, tmp_path / "key-old")
    image = _built(registry, tmp_path, old_dir, "old")
    reg = ["--registry-ca", str(registry.ca.cert)]
    assert cli(["verify", str(image), "--key", str(out / "cosign.pub"), *reg]) == 0
    assert f"verified {image}" in capsys.readouterr().out
    assert cli(["verify", str(image), "--policy", str(policy_file), *reg, "-o", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] and result["provenance"][0]["commit"] == "a" * 40
    assert cli(["provenance", str(image), "--key", str(out / "cosign.pub"), *reg]) == 0
    table = capsys.readouterr().out
    assert "COMMIT" in table and "aaaaaaaaaaaa" in table and "yes" in table
    assert cli(["provenance", str(image), *reg, "-o", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["build_name"] == "plugins/auth-1" and listed["verified"] is False

    unsigned = push_plugin(registry, tmp_path, "cli/signed", "unsigned")
    assert cli(["verify", str(unsigned), "--key", str(out / "cosign.pub"), *reg]) == 1
    assert "refused: SignatureMissing" in capsys.readouterr().err
    assert cli(["verify", f"{registry.host}/cli/signed:latest", "--key", "x", *reg]) == 2
    assert cli(["verify", str(image), *reg]) == 2  # neither --key nor --policy

    # Rotation: a new key, both trusted; the old key's images still verify meanwhile.
    old_id = parse_policy(policy_file.read_bytes()).keys[0].key.key_id
    assert cli(["signing-keys", *_kube(control_plane), "--system-namespace", system,
                "--broker-namespace", ns, "--rotate",
                "--out-dir", str(out)]) == 0
    capsys.readouterr()
    policy_file.write_text(_read(control_plane, "configmap", ns, "plugforge-trust")["policy.yaml"])
    rotating = parse_policy(policy_file.read_bytes())
    assert len(rotating.keys) == 2 and rotating.sources == ("https://git.example.com/*",)
    assert _read(control_plane, "secret", system, "plugforge-signing-key-previous") == secret
    new_dir = _mount(_read(control_plane, "secret", system, "plugforge-signing-key"),
                     tmp_path / "key-new")
    rebuilt = _built(registry, tmp_path, new_dir, "new")
    for either in (image, rebuilt):
        assert cli(["verify", str(either), "--policy", str(policy_file), *reg]) == 0
    # Done: the old key is dropped; its images are refused, the new key's verify.
    assert cli(["signing-keys", *_kube(control_plane), "--system-namespace", system,
                "--broker-namespace", ns,
                "--drop-key", old_id, "--out-dir", str(out)]) == 0
    assert f"updated configmap {ns}/plugforge-trust" in capsys.readouterr().out
    policy_file.write_text(_read(control_plane, "configmap", ns, "plugforge-trust")["policy.yaml"])
    assert [k["name"] for k in yaml.safe_load(policy_file.read_text())["keys"]] == [
        parse_policy(policy_file.read_bytes()).keys[0].key.name]
    assert cli(["verify", str(image), "--policy", str(policy_file), *reg]) == 1
    assert "SignatureInvalid" in capsys.readouterr().err
    assert cli(["verify", str(rebuilt), "--policy", str(policy_file), *reg]) == 0
    new_id = parse_policy(policy_file.read_bytes()).keys[0].key.key_id
    assert cli(["signing-keys", *_kube(control_plane), "--system-namespace", system,
                "--broker-namespace", ns,
                "--drop-key", new_id, "--out-dir", str(out)]) == 2
