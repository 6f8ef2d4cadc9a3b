"""Plugin images: pull by digest, verify every blob, extract safely, cache by digest.

With a verifier (``sidecar.trust``), an image is pulled only after its signature and provenance
verified: a refused image is never downloaded past its manifest's signatures, never extracted.
All of that is ``plugforge.oci``; this module picks credentials and TLS per registry, says which
refusals are final (``ImageRefused``), lets a pull be abandoned, and keeps the cache bounded:
after every pull that fetched something, least recently used images go until at most
``keep_images`` images of at most ``max_cache_bytes`` remain, never one in ``protect()`` (the
running release: its roll back must not need the registry). The adapters have copied what runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from plugforge.oci import (
    ContentRefused,
    ImageRef,
    OciError,
    RegistryClient,
    UnsafeLayer,
    cached_image,
    credentials_from_dockerconfigjson,
    parse_reference,
    prune_least_recent,
    pull_image,
    require_digest,
)

DEFAULT_CACHE_BYTES = 2 * 1024 ** 3

# Verification refusals that stay true for the same digest and trust policy. A missing or bad
# signature or attestation is not final: one can be pushed beside the image later.
FINAL_VERIFICATION_REASONS = frozenset({"RepositoryNotAllowed", "ProvenanceMismatch",
                                        "TrustPolicyInvalid"})


class ImageRefused(Exception):
    """The image is refused. ``final``: its content (or the policy's verdict on it) cannot
    change, so pulling it again is pointless until the desired state or the policy changes."""

    def __init__(self, image: str, reason: str, detail: str, *, final: bool) -> None:
        super().__init__(f"image {image} refused ({reason}): {detail}")
        self.image = image
        self.digest = image.rpartition("@")[2]
        self.reason = reason
        self.detail = detail
        self.final = final


def refusal(image: str, error: BaseException) -> ImageRefused | None:
    """``error`` as an ``ImageRefused``, or None when it is transient (retry with backoff)."""
    if isinstance(error, ImageRefused):
        return error
    if isinstance(error, (UnsafeLayer, ContentRefused)):
        return ImageRefused(image, type(error).__name__, str(error), final=True)
    reason = getattr(error, "reason", None)  # plugforge.signing.VerificationFailed
    if isinstance(error, OciError) and isinstance(reason, str) and \
            reason != "SignatureUnavailable":
        return ImageRefused(image, reason, str(getattr(error, "detail", error)),
                            final=reason in FINAL_VERIFICATION_REASONS)
    return None


class ImagePuller:
    """``puller(image) -> extracted tree``; a digest is fetched once, then served from cache.
    Raises ``ImageRefused`` for a refused image, ``PullAbandoned`` when ``abandon()`` turned
    True during the download, other ``OciError``/``OSError`` for transient trouble."""

    def __init__(self, cache_dir: Path, *, ca_bundle: Path | None = None,
                 docker_config: Path | None = None,
                 insecure_http_registries: tuple[str, ...] = (), keep_images: int = 16,
                 max_cache_bytes: int = DEFAULT_CACHE_BYTES,
                 verify: Callable[[RegistryClient, ImageRef, str], object] | None = None,
                 expected_commit: Callable[[str], str] = lambda _image: "") -> None:
        self.cache_dir = cache_dir
        self._verify = verify
        self._expected_commit = expected_commit
        self._keep = keep_images
        self._max_bytes = max_cache_bytes
        self._ca = ca_bundle
        self._docker_config = docker_config
        self._insecure = insecure_http_registries
        self._lock = threading.Lock()
        self.abandon: Callable[[], bool] = lambda: False
        """Asked while downloading: True gives up (a newer desired state arrived)."""
        self.protect: Callable[[], frozenset[str]] = frozenset
        """Digests the cache must keep (the running release)."""
        self.pulls = 0  # registry round trips (cache misses), for tests and metrics
        self.attempts = 0  # pulls that reached the registry, refused or failed ones included

    def __call__(self, image: str) -> Path:
        try:
            return self._pull(image)
        except (OciError, OSError) as e:
            refused = refusal(image, e)
            if refused is None:
                raise
            raise refused from e

    def _pull(self, image: str) -> Path:
        ref = require_digest(parse_reference(image))
        credentials = None
        # The manifests mount the pull Secret as optional: no file means anonymous pulls.
        if self._docker_config is not None and self._docker_config.exists():
            credentials = credentials_from_dockerconfigjson(self._docker_config.read_bytes(),
                                                            ref.registry)
        with self._lock, RegistryClient(ref.registry, credentials=credentials,
                                        ca_bundle=self._ca,
                                        insecure_http=ref.registry in self._insecure) as client:
            before = set(self.cache_dir.glob("images/*"))
            if cached_image(self.cache_dir, str(ref.digest)) is None:
                self.attempts += 1
            if self._verify is not None:
                # Raises VerificationFailed: nothing is pulled.
                self._verify(client, ref, self._expected_commit(image))
            tree = pull_image(client, ref, self.cache_dir, abandon=self.abandon)
            if set(self.cache_dir.glob("images/*")) != before:
                self.pulls += 1
                prune_least_recent(self.cache_dir, self._keep, self._max_bytes,
                                   protect=self.protect() | {str(ref.digest)})
            return tree

