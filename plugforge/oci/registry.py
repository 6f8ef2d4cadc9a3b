"""``RegistryClient``: push and pull images over the distribution HTTP API v2.

HTTPS by default (``ca_bundle`` for private CAs); plain HTTP only with ``insecure_http=True``.
Everything pulled is verified against its digest before it is used: manifests before they
are parsed, blobs while they stream (with a size limit), and a partial blob file is deleted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import urllib3

from plugforge.oci.auth import Credentials
from plugforge.oci.errors import (
    ContentRefused,
    DigestMismatch,
    PermanentRegistryError,
    PullAbandoned,
    TransientRegistryError,
)
from plugforge.oci.manifest import MANIFEST_TYPES, Descriptor, ImageManifest, parse_manifest
from plugforge.oci.pack import Blob, PackedImage
from plugforge.oci.reference import (
    ImageRef,
    require_digest,
    sha256_digest,
    validate_digest,
    validate_registry,
    validate_repository,
    validate_tag,
)
from plugforge.oci.transport import Transport, read_limited, release

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_BLOB_BYTES = 512 * 1024 * 1024
"""Default ceiling for one downloaded blob; plugin layers are far smaller."""


class RegistryClient:
    """A client for one registry host (``host[:port]``). Not tied to a repository."""

    def __init__(self, registry: str, *, credentials: Credentials | None = None,
                 ca_bundle: Path | None = None, insecure_http: bool = False,
                 timeout: float = 60.0) -> None:
        self.registry = validate_registry(registry)
        self._http = Transport(registry, credentials=credentials, ca_bundle=ca_bundle,
                               insecure_http=insecure_http, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- push ---------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        validate_repository(repository)
        response = self._http.request(
            "HEAD", f"/v2/{repository}/blobs/{validate_digest(digest)}",
            scope=_scope(repository, "pull"), what=f"check blob {repository}@{digest}",
            not_found_ok=True)
        release(response)
        return response.status == 200

    def push_blob(self, repository: str, blob: Blob, *, check_exists: bool = True) -> None:
        """Upload ``blob`` unless the registry already has it (monolithic POST + PUT).

        ``check_exists=False`` skips the HEAD: cheaper for small blobs likely to be new.
        """
        digest = blob.digest
        if check_exists and self.blob_exists(repository, digest):
            return
        what = f"upload blob {repository}@{digest}"
        scope = _scope(repository, "pull,push")
        started = self._http.request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope,
                                     what=what, ok=(202,))
        release(started)
        location = started.headers.get("Location")
        if not location:
            raise PermanentRegistryError(f"{what}: registry gave no upload Location header")
        upload_url = self._http.url(location)
        if urlsplit(upload_url).scheme != self._http.scheme:
            raise PermanentRegistryError(
                f"{what}: upload Location {urlsplit(upload_url).scheme}://... changes the "
                f"scheme from {self._http.scheme}; refusing to send the blob"
            )
        separator = "&" if urlsplit(upload_url).query else "?"
        done = self._http.request(
            "PUT", upload_url + separator + urlencode({"digest": digest}), scope=scope, what=what,
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(len(blob.data))},
            body=blob.data, ok=(201,))
        release(done)
        _check_announced(done, digest, what)

    def push_manifest(self, repository: str, reference: str, manifest: bytes,
                      media_type: str) -> str:
        """PUT a manifest by tag (or digest); return its digest, checked against the registry's."""
        validate_repository(repository)
        if reference.startswith("sha256:"):
            validate_digest(reference)
        else:
            validate_tag(reference)
        digest = sha256_digest(manifest)
        what = f"push manifest {repository}:{reference}"
        response = self._http.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", scope=_scope(repository, "pull,push"),
            what=what, headers={"Content-Type": media_type}, body=manifest, ok=(201,))
        release(response)
        _check_announced(response, digest, what)
        return digest

    def push_image(self, ref: ImageRef, image: PackedImage) -> ImageRef:
        """Push every blob, then the manifest (by ``ref.tag``, else by digest).

        Returns ``ref`` pinned to the manifest digest.
        """
        self._check_registry(ref)
        for blob in image.blobs:
            self.push_blob(ref.repository, blob)
        reference = ref.tag if ref.tag is not None else image.digest
        digest = self.push_manifest(ref.repository, reference, image.manifest, image.media_type)
        return ref.with_digest(digest)

    # --- pull ---------------------------------------------------------------------------

    def pull_manifest(self, ref: ImageRef | str,
                      max_bytes: int = MAX_MANIFEST_BYTES) -> tuple[bytes, ImageManifest]:
        """Fetch the manifest by digest, verify its bytes, then parse it."""
        pinned = require_digest(ref)
        self._check_registry(pinned)
        digest = str(pinned.digest)
        what = f"pull manifest {pinned.repository}@{digest}"
        response = self._http.request(
            "GET", f"/v2/{pinned.repository}/manifests/{digest}",
            scope=_scope(pinned.repository, "pull"), what=what,
            headers={"Accept": ", ".join(MANIFEST_TYPES)})
        content_type = response.headers.get("Content-Type")
        data = read_limited(response, max_bytes, what)
        found = sha256_digest(data)
        if found != digest:
            raise DigestMismatch(
                f"{what}: registry returned content with digest {found}, expected {digest}; "
                "the registry storage is corrupt or tampered with — nothing was used"
            )
        return data, parse_manifest(data, content_type)

    def fetch_blob(self, repository: str, descriptor: Descriptor, dest: Path,
                   max_bytes: int = MAX_BLOB_BYTES,
                   abandon: Callable[[], bool] = lambda: False) -> None:
        """Stream a blob into ``dest``, verifying digest and size; ``dest`` is gone on failure.
        ``abandon()`` is asked after every chunk: True raises ``PullAbandoned``."""
        validate_repository(repository)
        digest = validate_digest(descriptor.digest)
        what = f"fetch blob {repository}@{digest}"
        if descriptor.size > max_bytes:
            raise ContentRefused(
                f"{what}: manifest declares {descriptor.size} bytes, over the {max_bytes} byte "
                "limit; raise the limit if this image is expected to be that large"
            )
        response = self._http.request("GET", f"/v2/{repository}/blobs/{digest}",
                                      scope=_scope(repository, "pull"), what=what)
        try:
            _stream_verified(response, dest, descriptor, what, abandon)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            release(response)

    def get_manifest(self, repository: str, reference: str,
                     max_bytes: int = MAX_MANIFEST_BYTES) -> tuple[bytes, str] | None:
        """Raw manifest bytes and digest by tag or digest; None when the registry has none.

        By tag there is no digest to check against beforehand: the registry's
        ``Docker-Content-Digest``, when sent, must match the bytes (signature tags use this).
        """
        validate_repository(repository)
        if reference.startswith("sha256:"):
            validate_digest(reference)
        else:
            validate_tag(reference)
        what = f"pull manifest {repository}:{reference}"
        response = self._http.request(
            "GET", f"/v2/{repository}/manifests/{reference}", scope=_scope(repository, "pull"),
            what=what, headers={"Accept": ", ".join(MANIFEST_TYPES)}, not_found_ok=True)
        if response.status == 404:
            release(response)
            return None
        data = read_limited(response, max_bytes, what)
        digest = sha256_digest(data)
        expected = reference if reference.startswith("sha256:") else \
            response.headers.get("Docker-Content-Digest")
        if expected is not None and expected != digest:
            raise DigestMismatch(f"{what}: registry says {expected}, but the content it sent "
                                 f"has digest {digest}; nothing was used")
        return data, digest

    def read_blob(self, repository: str, descriptor: Descriptor, max_bytes: int) -> bytes:
        """A small blob in memory, checked against the descriptor's size and digest."""
        validate_repository(repository)
        digest = validate_digest(descriptor.digest)
        what = f"fetch blob {repository}@{digest}"
        if descriptor.size > max_bytes:
            raise ContentRefused(f"{what}: declared {descriptor.size} bytes, over the "
                                         f"{max_bytes} byte limit; not fetched")
        response = self._http.request("GET", f"/v2/{repository}/blobs/{digest}",
                                      scope=_scope(repository, "pull"), what=what)
        data = read_limited(response, descriptor.size, what)
        if len(data) != descriptor.size or sha256_digest(data) != digest:
            raise DigestMismatch(f"{what}: received {len(data)} bytes with digest "
                                 f"{sha256_digest(data)}, expected {descriptor.size} bytes with "
                                 f"{digest}; nothing was used")
        return data

    def _check_registry(self, ref: ImageRef) -> None:
        if ref.registry != self.registry:
            raise PermanentRegistryError(
                f"image {ref} is on registry {ref.registry}, but this client talks to "
                f"{self.registry}; use a client for {ref.registry}"
            )


def _stream_verified(response: urllib3.BaseHTTPResponse, dest: Path, descriptor: Descriptor,
                     what: str, abandon: Callable[[], bool]) -> None:
    hasher = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            for chunk in response.stream(1024 * 1024):
                size += len(chunk)
                if size > descriptor.size:
                    raise DigestMismatch(
                        f"{what}: registry sent more than the {descriptor.size} bytes the "
                        "manifest declares; refusing the blob"
                    )
                hasher.update(chunk)
                out.write(chunk)
                if abandon():
                    raise PullAbandoned(f"{what}: abandoned after {size} bytes")
        except urllib3.exceptions.HTTPError as e:
            raise TransientRegistryError(f"{what}: download broke off: {e}; retry later") from e
    found = "sha256:" + hasher.hexdigest()
    if size != descriptor.size or found != descriptor.digest:
        raise DigestMismatch(
            f"{what}: received {size} bytes with digest {found}, expected {descriptor.size} "
            f"bytes with digest {descriptor.digest}; the registry content is corrupt or "
            "tampered with — nothing was used"
        )


def _check_announced(response: urllib3.BaseHTTPResponse, digest: str, what: str) -> None:
    announced = response.headers.get("Docker-Content-Digest")
    if announced is not None and announced != digest:
        raise DigestMismatch(
            f"{what}: registry stored digest {announced}, but the content we sent has digest "
            f"{digest}; the registry rewrote the content — do not use this push"
        )


def _scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"
