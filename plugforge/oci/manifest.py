"""OCI media types, descriptors and the strict manifest parser used on pulled content."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plugforge.oci.errors import ContentRefused
from plugforge.oci.reference import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_TYPES = (OCI_LAYER_GZIP, OCI_LAYER_TAR, DOCKER_LAYER_GZIP)


def canonical_json(value: object) -> bytes:
    """Stable bytes for a JSON value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)


def parse_manifest(data: bytes, content_type: str | None = None) -> ImageManifest:
    """Parse an image manifest whose bytes were already verified against their digest.

    Only single-platform image manifests are accepted (no indexes): plugforge images are
    built for the platform that runs them.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ContentRefused(f"manifest is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ContentRefused(f"expected a JSON object manifest, found {type(doc).__name__}")
    media_type = doc.get("mediaType") or content_type
    if doc.get("schemaVersion") != 2 or media_type not in MANIFEST_TYPES:
        raise ContentRefused(
            f"expected an image manifest (schemaVersion 2, mediaType one of {MANIFEST_TYPES}), "
            f"found schemaVersion={doc.get('schemaVersion')!r} mediaType={media_type!r}; "
            "push a single-platform image"
        )
    config = _descriptor(doc.get("config"), "config")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise ContentRefused("manifest has no layers; expected at least one")
    layers = tuple(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise ContentRefused(
                f"layers[{i}] has media type {layer.media_type!r}; expected one of {LAYER_TYPES}"
            )
    annotations = doc.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ContentRefused("manifest annotations must map strings to strings")
    return ImageManifest(str(media_type), config, layers, annotations)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ContentRefused(f"manifest {where} must be an object, found {value!r}")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str):
        raise ContentRefused(f"manifest {where}.mediaType missing or not a string")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ContentRefused(
            f"manifest {where}.digest must be 'sha256:<64 hex>', found {digest!r}"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ContentRefused(
            f"manifest {where}.size must be a non-negative integer, found {size!r}"
        )
    return Descriptor(media_type, digest, size)
