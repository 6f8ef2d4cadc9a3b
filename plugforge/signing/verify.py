"""Is this image (by digest) signed by a trusted key, with provenance the policy allows?

Order: repository allowed → signatures (``.sig``): one layer whose signature verifies with a
trusted key over a payload naming this digest → when the policy requires provenance,
attestations (``.att``): one DSSE envelope verified by a trusted key, whose statement names this
digest, is SLSA provenance v1 from plugforge's builder, with a source and ref the policy allows.
Every refusal is a ``VerificationFailed`` with a reason word and a message that says what was
expected and what was found. Nothing here extracts or runs anything.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from plugforge.oci.errors import DigestMismatch, RegistryError, TransientRegistryError
from plugforge.oci.reference import ImageRef, require_digest, sha256_digest
from plugforge.oci.registry import RegistryClient
from plugforge.signing.errors import SignatureUnavailable, VerificationFailed
from plugforge.signing.formats import (
    DSSE_MEDIA_TYPE,
    MAX_ENVELOPE_BYTES,
    MAX_PAYLOAD_BYTES,
    SIMPLE_SIGNING_MEDIA_TYPE,
    SLSA_PROVENANCE_V1,
    parse_envelope,
    parse_simple_signing,
    parse_statement,
    simple_signing_payload,
)
from plugforge.signing.keys import PublicKey
from plugforge.signing.policy import TrustPolicy
from plugforge.signing.provenance import Provenance, from_predicate
from plugforge.signing.store import (
    SIGNATURE_ANNOTATION,
    Layer,
    attestation_tag,
    read_layers,
    signature_tag,
)


@dataclass(frozen=True)
class Verified:
    image: str
    signers: tuple[str, ...]
    """Descriptions of the trusted keys whose signatures verified."""
    provenance: tuple[Provenance, ...]
    """Verified provenance statements the policy allows (newest build last)."""


def verify_image(client: RegistryClient, ref: ImageRef | str, policy: TrustPolicy, *,
                 now: dt.datetime | None = None,
                 need_provenance: bool | None = None) -> Verified:
    pinned = require_digest(ref)
    digest = str(pinned.digest)
    if not policy.allows_repository(pinned.name):
        raise VerificationFailed("RepositoryNotAllowed", f"{pinned.name} matches none of the "
                                 f"trust policy's repositories {list(policy.repositories)}")
    keys = policy.keys_at(now or dt.datetime.now(dt.UTC))
    if not keys:
        raise VerificationFailed("SignatureInvalid", "the trust policy has no key valid now "
                                 "(every validUntil has passed); add the current public key")
    if not (policy.require_provenance if need_provenance is None else need_provenance):
        return Verified(str(pinned), _verify_signatures(client, pinned, digest, keys), ())
    # Both tags are fetched at once: verification is round trips, not CPU.
    with ThreadPoolExecutor(max_workers=1) as pool:
        attestations = pool.submit(fetch_attestations, client, pinned)
        signers = _verify_signatures(client, pinned, digest, keys)
        provenance = attested_provenance(client, pinned, keys, policy, attestations)
    return Verified(str(pinned), signers, provenance)


def fetch_attestations(client: RegistryClient, image: ImageRef) -> list[Layer]:
    return _fetch(client, image, attestation_tag(str(image.digest)), DSSE_MEDIA_TYPE,
                  MAX_ENVELOPE_BYTES)


def _fetch(client: RegistryClient, image: ImageRef, tag: str, media_type: str,
           limit: int, known: dict[str, bytes] | None = None) -> list[Layer]:
    try:
        return read_layers(client, image, tag, media_type, limit, known)
    except TransientRegistryError as e:
        raise SignatureUnavailable(f"{image.name}:{tag}: {e}") from e
    except DigestMismatch as e:
        reason = "AttestationInvalid" if tag.endswith(".att") else "SignatureInvalid"
        raise VerificationFailed(reason, f"{image.name}:{tag}: {e}") from e
    except RegistryError as e:
        raise VerificationFailed("SignatureMissing", f"{image.name}:{tag}: {e}") from e


def _verify_signatures(client: RegistryClient, image: ImageRef, digest: str,
                       keys: list[PublicKey]) -> tuple[str, ...]:
    tag = signature_tag(digest)
    # The payload a signer writes for this image is known: its blob need not be fetched.
    expected = simple_signing_payload(image.name, digest)
    layers = _fetch(client, image, tag, SIMPLE_SIGNING_MEDIA_TYPE, MAX_PAYLOAD_BYTES,
                    {sha256_digest(expected): expected})
    if not layers:
        raise VerificationFailed("SignatureMissing", f"{image.name}@{digest} has no signature "
                                 f"({image.name}:{tag} does not exist or holds none); sign it "
                                 "with the builder's key or cosign sign --key")
    signers: list[str] = []
    other_digests: list[str] = []
    for layer in layers:
        try:
            signature = base64.b64decode(layer.annotations.get(SIGNATURE_ANNOTATION, ""),
                                         validate=True)
        except (binascii.Error, ValueError):
            continue
        good = [k for k in keys if k.verify(signature, layer.data)]
        if not good:
            continue
        claim = parse_simple_signing(layer.data)
        if claim.digest != digest:
            other_digests.append(claim.digest)
            continue
        signers += [k.describe() for k in good]
    if signers:
        return tuple(dict.fromkeys(signers))
    if other_digests:
        raise VerificationFailed("SignatureDigestMismatch", f"{image.name}:{tag} holds a "
                                 f"trusted signature over {other_digests[0]}, not over {digest}; "
                                 "a signature was copied from another image")
    raise VerificationFailed("SignatureInvalid", f"none of the {len(layers)} signature(s) of "
                             f"{image.name}@{digest} verifies with a trusted key "
                             f"({', '.join(k.describe() for k in keys)}): signed with another "
                             "key, or altered")


def attested_provenance(client: RegistryClient, image: ImageRef, keys: list[PublicKey],
                        policy: TrustPolicy | None = None,
                        fetched: Future[list[Layer]] | list[Layer] | None = None,
                        ) -> tuple[Provenance, ...]:
    """Verified SLSA provenance of ``image`` that ``policy`` allows (all of it without one).

    ``fetched``: the attestation layers when the caller already has (or is fetching) them.
    """
    digest = str(image.digest)
    tag = attestation_tag(digest)
    if fetched is None:
        layers = fetch_attestations(client, image)
    else:
        layers = fetched.result() if isinstance(fetched, Future) else fetched
    if not layers:
        raise VerificationFailed("AttestationMissing", f"{image.name}@{digest} has no "
                                 f"provenance attestation ({image.name}:{tag}); the trust policy "
                                 "requires one: build it with plugforge's builder")
    found: list[Provenance] = []
    refused: list[str] = []
    for layer in layers:
        envelope = parse_envelope(layer.data)
        signed = envelope.signed_bytes()
        if not any(k.verify(sig, signed) for sig in envelope.signatures for k in keys):
            refused.append("an attestation not signed by a trusted key")
            continue
        statement = parse_statement(envelope.payload)
        if statement.predicate_type != SLSA_PROVENANCE_V1:
            continue
        if not statement.names_digest(digest):
            named = statement.subjects[0][1] if statement.subjects else "no subject"
            refused.append(f"an attestation for {named}")
            continue
        provenance = from_predicate(statement.predicate)
        if policy is not None and not policy.allows_source(provenance.source_url, provenance.ref):
            refused.append(f"provenance for {provenance.source_url} {provenance.ref} "
                           f"(commit {provenance.commit[:12]})")
            continue
        found.append(provenance)
    if found:
        return tuple(sorted(found, key=lambda p: p.finished))
    allowed = ""
    if policy is not None:
        allowed = f"; the policy allows sources {list(policy.sources) or ['*']} and refs " \
                  f"{list(policy.refs) or ['*']}"
    reason = "ProvenanceMismatch" if any(r.startswith("provenance") for r in refused) \
        else "AttestationInvalid"
    raise VerificationFailed(reason, f"no acceptable provenance for {image.name}@{digest}: "
                             f"found {'; '.join(refused) or 'no SLSA v1 provenance'}{allowed}")


def listed_provenance(client: RegistryClient, image: ImageRef,
                      keys: list[PublicKey]) -> list[tuple[Provenance, bool]]:
    """Every plugforge provenance attached to ``image``, each with whether a key in ``keys``
    signed it (for ``plugforge provenance`` without a key: shown, marked unverified)."""
    digest = str(image.digest)
    listed = []
    for layer in _fetch(client, image, attestation_tag(digest), DSSE_MEDIA_TYPE,
                        MAX_ENVELOPE_BYTES):
        envelope = parse_envelope(layer.data)
        statement = parse_statement(envelope.payload)
        if statement.predicate_type != SLSA_PROVENANCE_V1 or not statement.names_digest(digest):
            continue
        signed = envelope.signed_bytes()
        trusted = any(k.verify(s, signed) for s in envelope.signatures for k in keys)
        listed.append((from_predicate(statement.predicate), trusted))
    return sorted(listed, key=lambda item: item[0].finished)
