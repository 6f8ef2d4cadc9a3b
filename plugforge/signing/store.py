"""Where cosign keeps signatures and attestations: tags beside the image, in its repository.

``sha256-<hex>.sig`` holds one layer per signature (simple-signing payload, the signature in the
layer annotation ``dev.cosignproject.cosign/signature``); ``sha256-<hex>.att`` one layer per
DSSE envelope. This is cosign's default ("legacy") layout: it works on every registry,
including those without the OCI 1.1 referrers API, and ``cosign verify`` / ``verify-attestation``
read it without extra flags. Adding a signature rewrites the tag with one more layer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from plugforge.oci.manifest import OCI_CONFIG, OCI_MANIFEST, Descriptor, canonical_json
from plugforge.oci.pack import Blob
from plugforge.oci.reference import ImageRef, sha256_digest, validate_digest
from plugforge.oci.registry import RegistryClient
from plugforge.signing.errors import VerificationFailed

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
MAX_SIGNATURE_MANIFEST_BYTES = 256 * 1024
MAX_LAYERS = 32
"""Layers kept per tag (oldest dropped): enough for rotations and one attestation per commit."""


@dataclass(frozen=True)
class Layer:
    media_type: str
    data: bytes
    annotations: dict[str, str] = field(default_factory=dict)


def signature_tag(digest: str) -> str:
    return validate_digest(digest).replace(":", "-") + ".sig"


def attestation_tag(digest: str) -> str:
    return validate_digest(digest).replace(":", "-") + ".att"


def read_layers(client: RegistryClient, image: ImageRef, tag: str, media_type: str,
                max_layer_bytes: int, known: Mapping[str, bytes] | None = None) -> list[Layer]:
    """The layers of ``media_type`` under ``tag`` (none when the tag does not exist).

    A layer over ``max_layer_bytes`` is refused before it is downloaded. ``known`` maps digests
    to content the caller already has (the payload it expects): such a layer is not fetched,
    as content-addressed bytes are the same wherever they come from.
    """
    got = client.get_manifest(image.repository, tag, MAX_SIGNATURE_MANIFEST_BYTES)
    if got is None:
        return []
    try:
        doc = json.loads(got[0])
        raw_layers = doc["layers"]
        if not isinstance(raw_layers, list):
            raise TypeError("layers is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationFailed("SignatureInvalid",
                                 f"{image.name}:{tag} is not an image manifest: {e!r}") from e
    layers = []
    for index, raw in enumerate(raw_layers[:MAX_LAYERS]):
        try:
            descriptor = Descriptor(str(raw["mediaType"]), validate_digest(raw["digest"]),
                                    int(raw["size"]))
            annotations = {str(k): str(v) for k, v in (raw.get("annotations") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VerificationFailed("SignatureInvalid", f"{image.name}:{tag} layer {index} "
                                     f"is malformed: {e!r}") from e
        if descriptor.media_type != media_type:
            continue
        if descriptor.size > max_layer_bytes:
            raise VerificationFailed(
                "AttestationInvalid" if tag.endswith(".att") else "SignatureInvalid",
                f"{image.name}:{tag} layer {index} declares {descriptor.size} bytes, over the "
                f"{max_layer_bytes} byte limit; not downloaded")
        data = (known or {}).get(descriptor.digest)
        if data is None or sha256_digest(data) != descriptor.digest:
            data = client.read_blob(image.repository, descriptor, max_layer_bytes)
        layers.append(Layer(descriptor.media_type, data, annotations))
    return layers


def append_layer(client: RegistryClient, image: ImageRef, tag: str, layer: Layer,
                 current: list[Layer]) -> None:
    """Push ``tag`` with ``current`` (its layers as just read) plus ``layer``.

    Small blobs are uploaded without asking first whether the registry has them: one round
    trip less each, and a registry keeps one copy of a blob however often it is uploaded.
    """
    layers = [existing for existing in current if existing != layer]
    layers = [*layers, layer][-MAX_LAYERS:]
    blobs = [Blob(entry.media_type, entry.data) for entry in layers]
    config = Blob(OCI_CONFIG, canonical_json({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in blobs]}}))
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.descriptor().to_json(),
        "layers": [{**blob.descriptor().to_json(), "annotations": entry.annotations}
                   for blob, entry in zip(blobs, layers, strict=True)]})
    for blob in [blobs[-1], config]:  # the others are there: they were just read
        client.push_blob(image.repository, blob, check_exists=False)
    client.push_manifest(image.repository, tag, manifest, OCI_MANIFEST)
