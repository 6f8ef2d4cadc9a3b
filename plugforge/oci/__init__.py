"""Daemonless OCI images for plugforge: pack, push, pull by digest, verify, extract safely.

Builder side::

    image = pack_image(artifact_dir, ImageMetadata(source, revision, broker, name, version))
    with RegistryClient("registry.example.com", credentials=creds, ca_bundle=ca) as client:
        pinned = client.push_image(parse_reference("registry.example.com/team/x:1.0"), image)
    # pinned.digest == image.digest; str(pinned) is "host/team/x:1.0@sha256:..."

Sidecar side::

    ref = require_digest(text)             # tags are refused: pin by digest
    tree = pull_image(client, ref, cache)  # <cache>/images/sha256-<hex>/rootfs
    plugin_files = tree / PLUGIN_ROOT / plugin_name

Credentials come from a ``.dockerconfigjson`` via ``credentials_from_dockerconfigjson``.
Errors: ``RegistryError`` splits into ``TransientRegistryError`` (retry with backoff) and
``PermanentRegistryError`` (fix the input; ``DigestMismatch`` is one); ``UnsafeLayer`` for
refused layer entries; ``InvalidReference`` for bad image references; ``PackError``.
A second push backend through a Docker-API engine lives in ``plugforge.oci.docker_backend``
(not imported here so the ``docker`` SDK stays optional at import time).
"""

from plugforge.oci.auth import (
    Challenge,
    Credentials,
    credentials_from_dockerconfigjson,
    parse_www_authenticate,
)
from plugforge.oci.cache import cached_image, cached_manifest, prune_least_recent, pull_image
from plugforge.oci.errors import (
    ContentRefused,
    DigestMismatch,
    InvalidReference,
    OciError,
    PackError,
    PermanentRegistryError,
    PullAbandoned,
    RegistryError,
    TransientRegistryError,
    UnsafeLayer,
)
from plugforge.oci.extract import ExtractLimits, extract_layers
from plugforge.oci.manifest import Descriptor, ImageManifest, parse_manifest
from plugforge.oci.pack import (
    ANNOTATION_BROKER,
    ANNOTATION_PLUGIN_NAME,
    ANNOTATION_PLUGIN_VERSION,
    ANNOTATION_REVISION,
    ANNOTATION_SOURCE,
    PLUGIN_ROOT,
    Blob,
    ImageMetadata,
    PackedImage,
    assemble_image,
    pack_image,
)
from plugforge.oci.reference import ImageRef, parse_reference, require_digest, sha256_digest
from plugforge.oci.registry import RegistryClient

__all__ = [
    "ANNOTATION_BROKER",
    "ANNOTATION_PLUGIN_NAME",
    "ANNOTATION_PLUGIN_VERSION",
    "ANNOTATION_REVISION",
    "ANNOTATION_SOURCE",
    "PLUGIN_ROOT",
    "Blob",
    "Challenge",
    "ContentRefused",
    "Credentials",
    "Descriptor",
    "DigestMismatch",
    "ExtractLimits",
    "ImageManifest",
    "ImageMetadata",
    "ImageRef",
    "InvalidReference",
    "OciError",
    "PackError",
    "PackedImage",
    "PermanentRegistryError",
    "PullAbandoned",
    "RegistryClient",
    "RegistryError",
    "TransientRegistryError",
    "UnsafeLayer",
    "assemble_image",
    "cached_image",
    "cached_manifest",
    "credentials_from_dockerconfigjson",
    "extract_layers",
    "pack_image",
    "parse_manifest",
    "parse_reference",
    "parse_www_authenticate",
    "prune_least_recent",
    "pull_image",
    "require_digest",
    "sha256_digest",
]
