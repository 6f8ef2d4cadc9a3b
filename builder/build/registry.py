"""Where built images go: content-key lookup and push, over ``plugforge.oci`` (daemonless).

The content-key index lives in the registry itself, as a tag ``ck-<key>`` on the plugin's
repository: it survives builder restarts and is shared by replicas, and the tag is written
only after every blob is uploaded, so it never points at a partial image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from builder.errors import InvalidSpec, RegistryRefused, RegistryUnavailable
from plugforge.oci import (
    Credentials,
    ImageMetadata,
    ImageRef,
    InvalidReference,
    OciError,
    PackedImage,
    PermanentRegistryError,
    RegistryClient,
    TransientRegistryError,
    parse_reference,
)
from plugforge.oci.manifest import MANIFEST_TYPES
from plugforge.oci.transport import Transport, release

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryAccess:
    credentials: Credentials | None = field(default=None, repr=False)
    ca_bundle: Path | None = None
    plain_http: bool = False
    timeout: float = 30.0


def parse_repository(repository: str) -> ImageRef:
    """``host[:port]/path`` (no tag or digest) as an ``ImageRef``."""
    try:
        ref = parse_reference(repository)
    except InvalidReference as e:
        raise InvalidSpec(f"spec.image.repository: {e}") from e
    if ref.tag is not None or ref.digest is not None:
        raise InvalidSpec(f"spec.image.repository: {repository!r} must not carry a tag or digest")
    return ref


def _wrap(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except TransientRegistryError as e:
        raise RegistryUnavailable(f"{what}: {e}") from e
    except PermanentRegistryError as e:
        raise RegistryRefused(f"{what}: {e}") from e
    except OciError as e:
        raise RegistryRefused(f"{what}: {e}") from e


class Publisher:
    """Looks up and pushes images for one registry host with one set of credentials."""

    def __init__(self, registry: str, access: RegistryAccess) -> None:
        self.registry = registry
        self.access = access

    @contextmanager
    def client(self) -> Iterator[RegistryClient]:
        """A registry client with this publisher's credentials (signatures use it too)."""
        client = RegistryClient(self.registry, credentials=self.access.credentials,
                                ca_bundle=self.access.ca_bundle,
                                insecure_http=self.access.plain_http, timeout=self.access.timeout)
        try:
            yield client
        finally:
            client.close()

    def lookup_tag(self, repo: ImageRef, tag: str) -> str | None:
        """The manifest digest ``tag`` points at, or None if there is no such tag."""
        def head() -> str | None:
            transport = Transport(self.registry, credentials=self.access.credentials,
                                  ca_bundle=self.access.ca_bundle,
                                  insecure_http=self.access.plain_http,
                                  timeout=self.access.timeout)
            try:
                response = transport.request(
                    "HEAD", f"/v2/{repo.repository}/manifests/{tag}",
                    scope=f"repository:{repo.repository}:pull", what=f"look up {repo.name}:{tag}",
                    headers={"Accept": ", ".join(MANIFEST_TYPES)}, not_found_ok=True)
                status, digest = response.status, response.headers.get("Docker-Content-Digest")
                release(response)
            finally:
                transport.close()
            return digest if status == 200 and digest else None
        return _wrap(f"look up {repo.name}:{tag}", head)

    def annotations(self, repo: ImageRef, digest: str) -> dict[str, str]:
        def pull() -> dict[str, str]:
            with self.client() as client:
                _, manifest = client.pull_manifest(repo.with_digest(digest))
                return dict(manifest.annotations)
        return _wrap(f"read manifest {repo.name}@{digest}", pull)

    def push_through_engine(self, repo: ImageRef, artifact_dir: Path, metadata: ImageMetadata,
                            tag: str, docker_url: str) -> str:
        """The second backend: build FROM scratch and push through a Docker-API engine.

        Not byte-reproducible (engines stamp creation times); the ``ck-`` tag still makes a
        second build of the same content a hit.
        """
        from plugforge.oci.docker_backend import DockerEngineError, push_with_docker

        def push() -> str:
            try:
                pinned = push_with_docker(
                    artifact_dir, metadata, ImageRef(repo.registry, repo.repository, tag),
                    docker_url=docker_url, credentials=self.access.credentials)
            except DockerEngineError as e:
                raise RegistryUnavailable(f"push {repo.name}:{tag} via {docker_url}: {e}") from e
            return str(pinned.digest)
        return _wrap(f"push {repo.name}:{tag} via {docker_url}", push)

    def push(self, repo: ImageRef, image: PackedImage, tag: str) -> str:
        """Push blobs, then the manifest under ``tag``; return the manifest digest."""
        def push() -> str:
            with self.client() as client:
                pinned = client.push_image(ImageRef(repo.registry, repo.repository, tag), image)
                return str(pinned.digest)
        return _wrap(f"push {repo.name}:{tag}", push)
