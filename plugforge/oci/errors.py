"""Typed errors of the OCI layer: callers decide between *retry later* and *fix the input*."""

from __future__ import annotations


class OciError(Exception):
    """Base of every error raised by ``plugforge.oci``."""


class InvalidReference(OciError, ValueError):
    """An image reference does not follow ``host[:port]/path[:tag][@sha256:<64 hex>]``."""


class PackError(OciError):
    """The artifact directory cannot be packed into an image (bad name, escaping symlink...)."""


class RegistryError(OciError):
    """Talking to a registry failed."""


class TransientRegistryError(RegistryError):
    """Worth retrying with backoff: connection refused/reset, timeouts, 5xx, 429."""


class PermanentRegistryError(RegistryError):
    """Retrying will not help: credentials refused, unknown manifest, bad content."""


class ContentRefused(PermanentRegistryError):
    """The content behind a digest is unusable, and stays so: too large, not an image. A client
    may remember the digest as refused (unlike a missing manifest, which a push can fix)."""


class DigestMismatch(ContentRefused):
    """Content received does not hash to the digest it was requested (or announced) by."""


class UnsafeLayer(OciError):
    """A layer tar holds an entry that must not be extracted; ``entry`` names it."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"refusing layer entry {entry!r}: {reason}; nothing was installed")
        self.entry = entry
        self.reason = reason


class PullAbandoned(OciError):
    """The caller no longer wants the image (``abandon()`` said so); partial work is removed."""
