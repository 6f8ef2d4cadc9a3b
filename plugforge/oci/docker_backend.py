"""Second push backend: build and push through any Docker-API engine (dockerd, podman service).

The image is ``FROM scratch`` plus the artifact under ``PLUGIN_ROOT/<plugin-name>/`` with the
same labels as ``pack_image``. The build context is the normalized layer tar from
``pack.build_layer_tar`` plus a Dockerfile, so file modes and ownership match. Unlike
``pack_image`` the result is not byte-reproducible: engines stamp ``created`` times.
Engine messages are classified by text, since the Docker API reports push failures as
strings inside a 200 stream.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from plugforge.oci.auth import Credentials
from plugforge.oci.errors import OciError, PermanentRegistryError, TransientRegistryError
from plugforge.oci.pack import PLUGIN_ROOT, ImageMetadata, build_layer_tar
from plugforge.oci.reference import DIGEST_RE, ImageRef

DOCKERFILE = f"FROM scratch\nCOPY {PLUGIN_ROOT}/ /{PLUGIN_ROOT}/\n".encode()
_DIGEST_IN_STATUS = re.compile(r"digest: (sha256:[0-9a-f]{64})")
_PERMANENT_HINTS = ("unauthorized", "authentication required", "denied", "x509",
                    "certificate", "manifest invalid", "name invalid", "forbidden")


class DockerEngineError(OciError):
    """The Docker-API engine is unreachable or the scratch build failed."""


def build_context(artifact_dir: Path, plugin_name: str) -> bytes:
    """The build context tar: normalized ``plugin/<name>/`` tree plus the Dockerfile."""
    buffer = io.BytesIO(build_layer_tar(artifact_dir, plugin_name))
    with tarfile.open(fileobj=buffer, mode="a") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode, info.mtime = len(DOCKERFILE), 0o644, 0
        tar.addfile(info, io.BytesIO(DOCKERFILE))
    return buffer.getvalue()


def push_with_docker(artifact_dir: Path, metadata: ImageMetadata, ref: ImageRef, *,
                     docker_url: str, credentials: Credentials | None = None,
                     timeout: int = 300) -> ImageRef:
    """Build, tag ``<registry>/<repo>:<tag>``, push; return ``ref`` pinned to the pushed digest."""
    if ref.tag is None:
        raise PermanentRegistryError(f"push through a Docker engine needs a tag; {ref} has none")
    target = f"{ref.name}:{ref.tag}"
    context = build_context(artifact_dir, metadata.plugin_name)
    try:
        client = docker.DockerClient(base_url=docker_url, version="auto", timeout=timeout)
    except docker.errors.DockerException as e:
        raise DockerEngineError(f"cannot reach the Docker-API engine at {docker_url}: {e}") from e
    try:
        try:
            client.images.build(fileobj=io.BytesIO(context), custom_context=True, tag=target,
                                labels=metadata.annotations(), rm=True, pull=False)
        except docker.errors.BuildError as e:
            raise DockerEngineError(f"scratch build of {target} failed: {e.msg}") from e
        except docker.errors.DockerException as e:
            raise DockerEngineError(f"engine at {docker_url} refused the build: {e}") from e
        auth = ({"username": credentials.username, "password": credentials.password}
                if credentials else None)
        try:
            lines = client.api.push(ref.name, tag=ref.tag, auth_config=auth, stream=True,
                                    decode=True)
            digest = _digest_from_push(lines, target)
        except docker.errors.DockerException as e:
            raise TransientRegistryError(
                f"push of {target} through {docker_url} failed: {e}; retry later"
            ) from e
        return ref.with_digest(digest)
    finally:
        # A leftover local tag costs only disk; the push result stands either way.
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(target, noprune=False)
        client.close()


def _digest_from_push(lines: Iterable[Mapping[str, Any]], target: str) -> str:
    digest: str | None = None
    for line in lines:
        error = line.get("error") or (line.get("errorDetail") or {}).get("message")
        if error:
            text = str(error)
            kind = (PermanentRegistryError if any(h in text.lower() for h in _PERMANENT_HINTS)
                    else TransientRegistryError)
            raise kind(f"push of {target} failed: {text}")
        aux = line.get("aux") or {}
        if isinstance(aux, Mapping) and DIGEST_RE.match(str(aux.get("Digest", ""))):
            digest = str(aux["Digest"])  # dockerd
        match = _DIGEST_IN_STATUS.search(str(line.get("status", "")))
        if match and digest is None:
            digest = match.group(1)  # podman's compat API reports it only in the status text
    if digest is None:
        raise PermanentRegistryError(
            f"push of {target} finished without reporting a digest; check the engine's log"
        )
    return digest
