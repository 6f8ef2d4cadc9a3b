"""The builder's side: sign an image and attest its provenance, in cosign's layout.

Both are idempotent per key: an existing signature by the same key over the same digest is
kept rather than duplicated, and a provenance for the same build replaces nothing else.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from plugforge.oci.reference import ImageRef, require_digest, sha256_digest
from plugforge.oci.registry import RegistryClient
from plugforge.signing.errors import VerificationFailed
from plugforge.signing.formats import (
    DSSE_MEDIA_TYPE,
    IN_TOTO_PAYLOAD_TYPE,
    MAX_PAYLOAD_BYTES,
    SIMPLE_SIGNING_MEDIA_TYPE,
    SLSA_PROVENANCE_V1,
    make_envelope,
    make_statement,
    pae,
    simple_signing_payload,
)
from plugforge.signing.keys import SigningKey
from plugforge.signing.policy import policy_for_keys
from plugforge.signing.provenance import Provenance
from plugforge.signing.store import (
    PREDICATE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    Layer,
    append_layer,
    attestation_tag,
    read_layers,
    signature_tag,
)
from plugforge.signing.verify import attested_provenance, fetch_attestations, verify_image


def sign_image(client: RegistryClient, image: ImageRef, key: SigningKey) -> bool:
    """Add ``key``'s signature over ``image`` unless one is there; True when one was added."""
    pinned = require_digest(image)
    digest = str(pinned.digest)
    payload = simple_signing_payload(pinned.name, digest)
    tag = signature_tag(digest)
    current = read_layers(client, pinned, tag, SIMPLE_SIGNING_MEDIA_TYPE, MAX_PAYLOAD_BYTES,
                          {sha256_digest(payload): payload})
    if any(layer.data == payload and _signed_by(layer, key) for layer in current):
        return False
    signature = base64.b64encode(key.sign(payload)).decode()
    append_layer(client, pinned, tag, Layer(SIMPLE_SIGNING_MEDIA_TYPE, payload,
                                            {SIGNATURE_ANNOTATION: signature}), current)
    return True


def attest_provenance(client: RegistryClient, image: ImageRef, key: SigningKey,
                      provenance: Provenance,
                      unless: Callable[[Provenance], bool] = lambda _p: False) -> bool:
    """Add a DSSE-signed SLSA v1 provenance statement for ``image``, unless ``key`` already
    attested one that ``unless`` accepts (e.g. the same commit). True when one was added."""
    pinned = require_digest(image)
    current = fetch_attestations(client, pinned)
    if current:
        try:
            known = attested_provenance(client, pinned, [key.public], None, current)
        except VerificationFailed:
            known = ()
        if any(unless(p) for p in known):
            return False
    statement = make_statement(pinned.name, str(pinned.digest), provenance.predicate())
    envelope = make_envelope(statement, key.sign(pae(IN_TOTO_PAYLOAD_TYPE, statement)))
    append_layer(client, pinned, attestation_tag(str(pinned.digest)),
                 Layer(DSSE_MEDIA_TYPE, envelope,
                       {SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION: SLSA_PROVENANCE_V1}),
                 current)
    return True


def trusted_build_of_tree(client: RegistryClient, image: ImageRef, key: SigningKey,
                          tree: str) -> Provenance | None:
    """A provenance by ``key`` for ``image`` built from ``tree``, or None (then rebuild).

    The builder's cache follows a content tag only when this finds one: a tag moved by anyone
    without the key leads to a build, never to a re-signature.
    """
    try:
        verified = verify_image(client, image, policy_for_keys([key.public]),
                                need_provenance=True)
    except VerificationFailed:
        return None
    matches = [p for p in verified.provenance if p.tree == tree]
    return matches[-1] if matches else None


def _signed_by(layer: Layer, key: SigningKey) -> bool:
    try:
        signature = base64.b64decode(layer.annotations.get(SIGNATURE_ANNOTATION, ""),
                                     validate=True)
    except ValueError:
        return False
    return key.public.verify(signature, layer.data)

