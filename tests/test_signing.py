"""plugforge.signing: keys in cosign's files, formats, and sign → verify on the real registry.

Each bad input of issue 17 is refused with its reason word, before anything is extracted.
The interop half (the real cosign binary) is ``test_signing_cosign.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from signing_support import (
    COMMIT,
    SOURCE,
    TREE,
    client_for,
    policy_text,
    provenance,
    push_plugin,
)

from plugforge.oci import ImageRef, RegistryClient
from plugforge.oci.manifest import OCI_MANIFEST, canonical_json
from plugforge.oci.pack import Blob
from plugforge.signing import (
    KeyFileError,
    VerificationFailed,
    attest_provenance,
    encrypt_private_key,
    generate,
    load_private_key,
    load_public_keys,
    parse_policy,
    secretbox,
    sign_image,
    trusted_build_of_tree,
    verify_image,
)
from plugforge.signing.formats import DSSE_MEDIA_TYPE, MAX_ENVELOPE_BYTES, pae
from plugforge.signing.store import (
    SIGNATURE_ANNOTATION,
    Layer,
    append_layer,
    attestation_tag,
    read_layers,
    signature_tag,
)
from testbed.registry import Registry

KEY = generate()
OTHER = generate()


# --- keys and the secretbox ---------------------------------------------------------------

def test_secretbox_matches_nacl() -> None:
    # Recorded from Go's golang.org/x/crypto/nacl/secretbox.Seal with these inputs.
    key = bytes(i * 7 % 256 for i in range(32))
    nonce = bytes(200 - i for i in range(24))
    box = secretbox.seal(bytes(range(150)), nonce, key)
    assert box.hex().startswith("456fbe5aa0b97b224e622b2bbca01bb16710c4f14cc87cc1605240842ea7b638")
    assert box.hex().endswith("ea3b22dc15877e0f1beeceb8")
    assert secretbox.open_box(box, nonce, key) == bytes(range(150))
    with pytest.raises(secretbox.SecretBoxError):
        secretbox.open_box(box[:-1] + bytes([box[-1] ^ 1]), nonce, key)


@pytest.mark.parametrize("password", [b"", b"correct horse"])
def test_private_key_round_trip(password: bytes) -> None:
    pem = encrypt_private_key(KEY, password)
    assert pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert load_private_key(pem, password).public.key_id == KEY.public.key_id


def test_private_key_refusals() -> None:
    pem = encrypt_private_key(KEY, b"pw")
    with pytest.raises(KeyFileError, match="wrong password"):
        load_private_key(pem, b"not-it")
    with pytest.raises(KeyFileError, match="expected one PEM block"):
        load_private_key(KEY.public.pem(), b"")
    body = json.loads(base64.b64decode(b"".join(pem.splitlines()[1:-1])))
    body["kdf"]["params"]["N"] = 1 << 30
    forged = (b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
              + base64.b64encode(json.dumps(body).encode())
              + b"\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="scrypt parameters"):
        load_private_key(forged, b"pw")


def test_public_keys_several_blocks() -> None:
    both = load_public_keys(KEY.public.pem() + OTHER.public.pem())
    assert [k.key_id for k in both] == [KEY.public.key_id, OTHER.public.key_id]
    with pytest.raises(KeyFileError, match="none"):
        load_public_keys(b"not a key")


def test_pae_is_dsse_v1() -> None:
    assert pae("application/vnd.in-toto+json", b"{}") == \
        b"DSSEv1 28 application/vnd.in-toto+json 2 {}"


# --- trust policy --------------------------------------------------------------------------

def test_policy_parses_and_defaults() -> None:
    policy = parse_policy(policy_text(KEY, OTHER, sources=(SOURCE,)))
    assert len(policy.keys) == 2 and policy.require_provenance
    assert policy.allows_source(SOURCE, "refs/heads/x")
    assert not policy.allows_source("https://evil.example/x.git", "refs/heads/main")
    assert not parse_policy(policy_text(KEY, provenance_required=False)).require_provenance


@pytest.mark.parametrize(("text", "match"), [
    (b"keys: [", "not valid YAML"),
    (b"[]", "expected a mapping"),
    (b"apiVersion: plugforge.dev/v1\nkind: TrustPolicy\nkeys: []\n", "non-empty list"),
    (b"apiVersion: plugforge.dev/v1\nkind: TrustPolicy\nkeys: [{publicKey: nope}]\n",
     "PUBLIC KEY"),
    (b"apiVersion: plugforge.dev/v1\nkind: TrustPolicy\nkeyz: []\n", "unknown field"),
    (b"apiVersion: v2\nkind: TrustPolicy\nkeys: []\n", "apiVersion"),
])
def test_policy_that_does_not_parse(text: bytes, match: str) -> None:
    with pytest.raises(VerificationFailed, match=match) as caught:
        parse_policy(text)
    assert caught.value.reason == "TrustPolicyInvalid"


# --- sign → verify against the real registry -----------------------------------------------

@pytest.fixture
def signed(registry: Registry, tmp_path: Path) -> ImageRef:
    image = push_plugin(registry, tmp_path, "signing/signed", tmp_path.name)
    with client_for(registry) as client:
        assert sign_image(client, image, KEY)
        assert not sign_image(client, image, KEY)  # idempotent: one signature per key
        attest_provenance(client, image, KEY, provenance())
    return image


def refusal(client: RegistryClient, image: ImageRef, policy: bytes) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as caught:
        verify_image(client, image, parse_policy(policy))
    return caught.value


def test_signed_image_verifies(registry: Registry, signed: ImageRef) -> None:
    with client_for(registry) as client:
        verified = verify_image(client, signed, parse_policy(policy_text(KEY)))
        assert verified.signers == (f"key-0 ({KEY.public.key_id})",)
        (prov,) = verified.provenance
        assert (prov.commit, prov.tree, prov.source_url) == (COMMIT, TREE, SOURCE)
        assert trusted_build_of_tree(client, signed, KEY, TREE) == prov
        assert trusted_build_of_tree(client, signed, KEY, "f" * 40) is None
        assert trusted_build_of_tree(client, signed, OTHER, TREE) is None
        sig_layers = read_layers(client, signed, signature_tag(str(signed.digest)),
                                 "application/vnd.dev.cosign.simplesigning.v1+json", 65536)
        assert len(sig_layers) == 1


def test_unsigned_image_refused(registry: Registry, tmp_path: Path) -> None:
    image = push_plugin(registry, tmp_path, "signing/unsigned", "unsigned")
    with client_for(registry) as client:
        error = refusal(client, image, policy_text(KEY))
    assert error.reason == "SignatureMissing"
    assert "has no signature" in str(error)


def test_other_key_refused(registry: Registry, signed: ImageRef) -> None:
    with client_for(registry) as client:
        error = refusal(client, signed, policy_text(OTHER))
    assert error.reason == "SignatureInvalid"
    assert OTHER.public.key_id in str(error)


def test_rotated_out_and_expired_keys(registry: Registry, signed: ImageRef) -> None:
    with client_for(registry) as client:
        # During a rotation both keys are trusted; after it only the new one.
        assert verify_image(client, signed, parse_policy(policy_text(OTHER, KEY)))
        assert refusal(client, signed, policy_text(OTHER)).reason == "SignatureInvalid"
        expiring = policy_text(KEY).replace(
            b"  publicKey:", b"  validUntil: '2027-01-01T00:00:00Z'\n  publicKey:")
        policy = parse_policy(expiring)
        assert verify_image(client, signed, policy, now=dt.datetime(2026, 12, 31, tzinfo=dt.UTC))
        with pytest.raises(VerificationFailed, match="no key valid now"):
            verify_image(client, signed, policy, now=dt.datetime(2027, 1, 2, tzinfo=dt.UTC))


def _rewrite_signature(client: RegistryClient, image: ImageRef, layer: Layer) -> None:
    append_layer(client, image, signature_tag(str(image.digest)), layer, [])


def test_tampered_signature_refused(registry: Registry, signed: ImageRef) -> None:
    with client_for(registry) as client:
        (layer,) = read_layers(client, signed, signature_tag(str(signed.digest)),
                               "application/vnd.dev.cosign.simplesigning.v1+json", 65536)
        raw = bytearray(base64.b64decode(layer.annotations[SIGNATURE_ANNOTATION]))
        raw[-1] ^= 1
        _rewrite_signature(client, signed, Layer(layer.media_type, layer.data, {
            SIGNATURE_ANNOTATION: base64.b64encode(bytes(raw)).decode()}))
        assert refusal(client, signed, policy_text(KEY)).reason == "SignatureInvalid"
        # The payload altered instead (a signature kept): refused the same way.
        _rewrite_signature(client, signed, Layer(layer.media_type, layer.data + b" ",
                                                 layer.annotations))
        assert refusal(client, signed, policy_text(KEY)).reason == "SignatureInvalid"


def test_signature_over_another_digest_refused(registry: Registry, signed: ImageRef,
                                              tmp_path: Path) -> None:
    other = push_plugin(registry, tmp_path, "signing/signed", "another")
    with client_for(registry) as client:
        # Copy the signed image's signature tag onto the other image.
        (layer,) = read_layers(client, signed, signature_tag(str(signed.digest)),
                               "application/vnd.dev.cosign.simplesigning.v1+json", 65536)
        _rewrite_signature(client, other, layer)
        error = refusal(client, other, policy_text(KEY))
    assert error.reason == "SignatureDigestMismatch"
    assert str(signed.digest) in str(error)


def test_attestation_for_another_commit_source_or_ref(registry: Registry,
                                                      tmp_path: Path) -> None:
    image = push_plugin(registry, tmp_path, "signing/prov", "prov")
    with client_for(registry) as client:
        sign_image(client, image, KEY)
        attest_provenance(client, image, KEY, provenance(
            commit="d" * 40, ref="refs/heads/feature", source="https://git.example.com/fork.git"))
        error = refusal(client, image, policy_text(KEY, sources=(SOURCE,)))
        assert error.reason == "ProvenanceMismatch"
        assert "fork.git refs/heads/feature (commit dddddddddddd)" in str(error)
        assert refusal(client, image, policy_text(
            KEY, refs=("refs/heads/main",))).reason == "ProvenanceMismatch"
        # An attestation by another key does not count, even naming the right source.
        attest_provenance(client, image, OTHER, provenance())
        assert refusal(client, image, policy_text(KEY, sources=(SOURCE,))).reason == \
            "ProvenanceMismatch"
        # The builder's own provenance for the allowed source and ref: accepted.
        attest_provenance(client, image, KEY, provenance())
        verified = verify_image(client, image, parse_policy(policy_text(
            KEY, sources=(SOURCE,), refs=("refs/heads/main",))))
        assert [p.commit for p in verified.provenance] == [COMMIT]


def test_missing_attestation_refused(registry: Registry, tmp_path: Path) -> None:
    image = push_plugin(registry, tmp_path, "signing/noatt", "noatt")
    with client_for(registry) as client:
        sign_image(client, image, KEY)
        assert refusal(client, image, policy_text(KEY)).reason == "AttestationMissing"
        # A policy that asks for signatures only accepts it (cosign sign --key images).
        assert verify_image(client, image, parse_policy(
            policy_text(KEY, provenance_required=False))).provenance == ()


def _push_raw_attestation(client: RegistryClient, image: ImageRef, envelope: bytes,
                          declared: int | None = None) -> None:
    blob = Blob(DSSE_MEDIA_TYPE, envelope)
    client.push_blob(image.repository, blob)
    config = Blob("application/vnd.oci.image.config.v1+json", b"{}")
    client.push_blob(image.repository, config)
    layer = {**blob.descriptor().to_json(), "annotations": {SIGNATURE_ANNOTATION: ""}}
    if declared is not None:
        layer["size"] = declared
    manifest = canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": config.descriptor().to_json(), "layers": [layer]})
    client.push_manifest(image.repository, attestation_tag(str(image.digest)), manifest,
                         OCI_MANIFEST)


@pytest.mark.parametrize(("envelope", "declared", "match"), [
    (b"{not json", None, "not valid JSON"),
    (b'{"payloadType": "text/plain", "payload": "", "signatures": []}', None, "payloadType"),
    (b'{"payloadType": "application/vnd.in-toto+json", "payload": "!!", '
     b'"signatures": [{"sig": "AA=="}]}', None, "not base64"),
    (b"{}", MAX_ENVELOPE_BYTES + 1, "over the"),
])
def test_malformed_or_huge_envelope_refused(registry: Registry, tmp_path: Path,
                                            envelope: bytes, declared: int | None,
                                            match: str) -> None:
    image = push_plugin(registry, tmp_path, "signing/dsse", tmp_path.name)
    with client_for(registry) as client:
        sign_image(client, image, KEY)
        try:
            _push_raw_attestation(client, image, envelope, declared)
        except Exception as e:  # the registry itself may refuse a lying size; then it is safe
            pytest.skip(f"registry refused the forged manifest: {e}")
        error = refusal(client, image, policy_text(KEY))
    assert error.reason == "AttestationInvalid"
    assert match in str(error)


def test_signature_tag_served_with_wrong_digest(registry: Registry, signed: ImageRef) -> None:
    """The registry's storage is altered under the tags: the signature manifest no longer
    hashes to the digest the registry announces, or the provenance envelope to its descriptor;
    either is refused. (The signature payload blob itself is never read: the verifier knows
    the payload it expects, so an altered copy in storage changes nothing.)"""
    with client_for(registry) as client:
        sig = client.get_manifest(signed.repository, signature_tag(str(signed.digest)))
        att = client.get_manifest(signed.repository, attestation_tag(str(signed.digest)))
        assert sig is not None and att is not None
        envelope_digest = json.loads(att[0])["layers"][0]["digest"]
    for digest, old, new, reason in (
            (sig[1], b"schemaVersion", b"schemaversion", "SignatureInvalid"),
            (envelope_digest, b"payloadType", b"payloadtype", "AttestationInvalid")):
        blob = _blob_path(registry, digest)
        original = blob.read_bytes()
        blob.write_bytes(original.replace(old, new))
        try:
            with client_for(registry) as client:
                error = refusal(client, signed, policy_text(KEY))
        finally:
            blob.write_bytes(original)
        assert error.reason == reason
        assert "nothing was used" in str(error)


def _blob_path(registry: Registry, digest: str) -> Path:
    hexdigest = digest.removeprefix("sha256:")
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / \
        "data"
