"""Plugin images: pull by digest, verify every blob, extract safely, cache by digest.

With a verifier (``sidecar.trust``), an image is pulled only after its signature and provenance
verified: a refused image is never downloaded past its manifest's signatures, never extracted.
All of that is ``plugforge.oci``; this module picks credentials and TLS per registry and keeps
the cache bounded: after every pull that fetched something, only the ``keep_images`` most
recently used images stay (the adapters have copied what runs; a rollback further back pulls
again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from plugforge.oci import (
    ImageRef,
    RegistryClient,
    credentials_from_dockerconfigjson,
    parse_reference,
    prune_least_recent,
    pull_image,
    require_digest,
)


class ImagePuller:
    """``puller(image) -> extracted tree``; a digest is fetched once, then served from cache."""

    def __init__(self, cache_dir: Path, *, ca_bundle: Path | None = None,
                 docker_config: Path | None = None,
                 insecure_http_registries: tuple[str, ...] = (), keep_images: int = 16,
                 verify: Callable[[RegistryClient, ImageRef, str], object] | None = None,
                 expected_commit: Callable[[str], str] = lambda _image: "") -> None:
        self.cache_dir = cache_dir
        self._verify = verify
        self._expected_commit = expected_commit
        self._keep = keep_images
        self._ca = ca_bundle
        self._docker_config = docker_config
        self._insecure = insecure_http_registries
        self._lock = threading.Lock()
        self.pulls = 0  # registry round trips (cache misses), for tests and metrics

    def __call__(self, image: str) -> Path:
        ref = require_digest(parse_reference(image))
        credentials = None
        # The manifests mount the pull Secret as optional: no file means anonymous pulls.
        if self._docker_config is not None and self._docker_config.exists():
            credentials = credentials_from_dockerconfigjson(self._docker_config.read_bytes(),
                                                            ref.registry)
        with self._lock, RegistryClient(ref.registry, credentials=credentials,
                                        ca_bundle=self._ca,
                                        insecure_http=ref.registry in self._insecure) as client:
            if self._verify is not None:
                # Raises VerificationFailed: nothing is pulled.
                self._verify(client, ref, self._expected_commit(image))
            before = set(self.cache_dir.glob("images/*"))
            tree = pull_image(client, ref, self.cache_dir)
            if set(self.cache_dir.glob("images/*")) != before:
                self.pulls += 1
                prune_least_recent(self.cache_dir, self._keep)
            return tree
