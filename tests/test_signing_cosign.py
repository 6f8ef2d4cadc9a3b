"""Interop with the real cosign (Debian trixie's 2.5.0 package, or v2.6.5 built from the Go
module proxy where the archive no longer has it: scripts/ensure.d/cosign.sh), both directions,
against the real registry.

No transparency log is reachable here, so cosign runs with ``--tlog-upload=false`` and
``--insecure-ignore-tlog=true``: trust comes from the key alone, exactly as in plugforge.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from signing_support import client_for, provenance, push_plugin

from plugforge.signing import (
    VerificationFailed,
    attest_provenance,
    encrypt_private_key,
    generate,
    load_private_key,
    load_public_keys,
    policy_for_keys,
    sign_image,
    verify_image,
)
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cosign() -> str:
    cache = Path(os.environ.get("PLUGFORGE_CACHE", Path.home() / ".cache" / "plugforge"))
    installed = sorted(cache.glob("cosign/deb-*/cosign")) + sorted(
        cache.glob("go-bin/cosign-*/cosign"))
    binary = (os.environ.get("PLUGFORGE_COSIGN") or shutil.which("cosign")
              or str(installed[0] if installed else ""))
    if not binary or not Path(binary).is_file():
        pytest.skip("cosign is not built (scripts/ensure.d/cosign.sh builds it into the cache)")
    return binary


def run_cosign(cosign: str, registry: Registry, *args: str, password: str = "",
               check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
           "SSL_CERT_FILE": str(registry.ca.cert), "COSIGN_PASSWORD": password,
           "COSIGN_YES": "true", "TUF_ROOT": str(Path(registry.storage).parent / "tuf")}
    done = subprocess.run([cosign, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    if check:
        assert done.returncode == 0, f"cosign {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_cosign_verifies_what_the_builder_pushed(cosign: str, registry: Registry,
                                                 tmp_path: Path) -> None:
    key = generate()
    (tmp_path / "pub.pem").write_bytes(key.public.pem())
    image = push_plugin(registry, tmp_path, "interop/builder", "builder")
    with client_for(registry) as client:
        sign_image(client, image, key)
        attest_provenance(client, image, key, provenance())
    pub = str(tmp_path / "pub.pem")
    done = run_cosign(cosign, registry, "verify", "--key", pub, "--insecure-ignore-tlog=true",
                      str(image))
    (claim,) = json.loads(done.stdout)
    assert claim["critical"]["image"]["docker-manifest-digest"] == image.digest
    done = run_cosign(cosign, registry, "verify-attestation", "--type", "slsaprovenance1",
                      "--key", pub, "--insecure-ignore-tlog=true", str(image))
    envelope = json.loads(done.stdout.splitlines()[0])
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == "plugins/auth-1"
    # ... and refuses it with another key.
    (tmp_path / "other.pem").write_bytes(generate().public.pem())
    done = run_cosign(cosign, registry, "verify", "--key", str(tmp_path / "other.pem"),
                      "--insecure-ignore-tlog=true", str(image), check=False)
    assert done.returncode != 0


def test_sidecar_verifies_what_cosign_signed(cosign: str, registry: Registry,
                                             tmp_path: Path) -> None:
    run_cosign(cosign, registry, "generate-key-pair", "--output-key-prefix",
               str(tmp_path / "cosign"), password="s3cret")
    image = push_plugin(registry, tmp_path, "interop/cosign", "cosign")
    run_cosign(cosign, registry, "sign", "--key", str(tmp_path / "cosign.key"),
               "--tlog-upload=false", str(image), password="s3cret")
    keys = load_public_keys((tmp_path / "cosign.pub").read_bytes())
    with client_for(registry) as client:
        verified = verify_image(client, image, policy_for_keys(keys))
        assert verified.signers == (keys[0].key_id,)
        with pytest.raises(VerificationFailed) as refused:
            verify_image(client, image, policy_for_keys([generate().public]))
        assert refused.value.reason == "SignatureInvalid"
        # A policy that asks for plugforge's provenance refuses a signature-only image.
        with pytest.raises(VerificationFailed, match="AttestationMissing"):
            verify_image(client, image, policy_for_keys(keys), need_provenance=True)


@pytest.mark.parametrize("password", ["", "pw"])
def test_key_files_interchangeable(cosign: str, registry: Registry, tmp_path: Path,
                                   password: str) -> None:
    # cosign's key file, used by plugforge's builder code; cosign verifies.
    run_cosign(cosign, registry, "generate-key-pair", "--output-key-prefix",
               str(tmp_path / "cosign"), password=password)
    theirs = load_private_key((tmp_path / "cosign.key").read_bytes(), password.encode())
    image = push_plugin(registry, tmp_path, "interop/keys", f"keys-{password}")
    with client_for(registry) as client:
        sign_image(client, image, theirs)
    run_cosign(cosign, registry, "verify", "--key", str(tmp_path / "cosign.pub"),
               "--insecure-ignore-tlog=true", str(image))
    # plugforge's key file, used by cosign sign; plugforge verifies.
    ours = generate()
    (tmp_path / "ours.key").write_bytes(encrypt_private_key(ours, password.encode()))
    other = push_plugin(registry, tmp_path, "interop/keys", f"ours-{password}")
    run_cosign(cosign, registry, "sign", "--key", str(tmp_path / "ours.key"),
               "--tlog-upload=false", str(other), password=password)
    with client_for(registry) as client:
        assert verify_image(client, other, policy_for_keys([ours.public])).signers
