"""Image references: ``host[:port]/path[:tag][@sha256:<64 hex>]``, validated, round-trippable.

The grammar follows the distribution reference spec, with two deliberate restrictions:
the registry host is always explicit (no implicit Docker Hub), and the only digest
algorithm accepted is sha256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from plugforge.oci.errors import InvalidReference

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$"
)
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_NAME_LENGTH = 255


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def validate_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise InvalidReference(
            f"expected a digest 'sha256:<64 lowercase hex>', found {digest!r}"
        )
    return digest


def validate_registry(host: str) -> str:
    if not _HOST_RE.match(host):
        raise InvalidReference(
            f"expected a registry host like 'registry.example.com' or '127.0.0.1:5000', "
            f"found {host!r}"
        )
    port = host.rsplit("]", 1)[-1].partition(":")[2]
    if port and not 0 < int(port) < 65536:
        raise InvalidReference(f"registry port must be 1-65535, found {port!r} in {host!r}")
    return host


def validate_repository(repository: str) -> str:
    if not repository:
        raise InvalidReference("expected a repository path like 'team/plugin', found nothing")
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidReference(
                f"invalid repository path component {component!r} in {repository!r}: use "
                "lowercase letters and digits, separated by '.', '_', '__' or '-'"
            )
    return repository


def validate_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise InvalidReference(
            f"invalid tag {tag!r}: up to 128 characters of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return tag


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference. ``str(ref)`` gives back the canonical text."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        validate_registry(self.registry)
        validate_repository(self.repository)
        if self.tag is not None:
            validate_tag(self.tag)
        if self.digest is not None:
            validate_digest(self.digest)
        name_length = len(self.registry) + 1 + len(self.repository)
        if name_length > MAX_NAME_LENGTH:
            raise InvalidReference(
                f"image name {self.name!r} is {name_length} characters; the limit is "
                f"{MAX_NAME_LENGTH}"
            )

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageRef:
    """Parse ``host[:port]/path[:tag][@sha256:<hex>]``; ``InvalidReference`` says why not."""
    if not isinstance(text, str) or not text:
        raise InvalidReference(
            f"expected an image reference like 'registry.example.com/team/plugin:1.0', "
            f"found {text!r}"
        )
    if text != text.strip():
        raise InvalidReference(f"image reference {text!r} has surrounding whitespace")
    remainder, at, digest = text.partition("@")
    if at:
        validate_digest(digest)
    host, slash, path = remainder.partition("/")
    if not slash or not _looks_like_host(host):
        raise InvalidReference(
            f"expected an explicit registry host in {text!r}, e.g. "
            f"'registry.example.com/{remainder}'; plugforge never assumes Docker Hub"
        )
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
    return ImageRef(host, path, tag, digest if at else None)


def require_digest(ref: ImageRef | str) -> ImageRef:
    """The reference, which must be pinned by digest (the sidecar never installs a mutable tag)."""
    parsed = parse_reference(ref) if isinstance(ref, str) else ref
    if parsed.digest is None:
        found = f"tag ':{parsed.tag}'" if parsed.tag is not None else "neither tag nor digest"
        raise InvalidReference(
            f"expected {parsed.name}@sha256:<64 hex>, found {found} — pin by digest"
        )
    return parsed


def _looks_like_host(component: str) -> bool:
    # Same rule as the distribution reference library: a first component is a host when it
    # has a dot, a port, brackets, or is "localhost"; anything else would be a Docker Hub path.
    return "." in component or ":" in component or component.startswith("[") or (
        component == "localhost"
    )
