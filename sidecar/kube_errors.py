"""Typed errors of the sidecar's Kubernetes client; nothing from urllib3 leaks past it."""

from __future__ import annotations


class KubeError(Exception):
    """Any failure to talk to the Kubernetes API; the message says what to do."""


class KubeConfigError(KubeError):
    """The cluster configuration (kubeconfig, in-cluster mounts) is missing or invalid."""


class KubeConnectionError(KubeError):
    """No answer: connection refused or reset, TLS failure, or a read timeout."""


class KubeWatchIdle(KubeConnectionError):
    """A watch sent nothing, not even a bookmark, for its idle timeout: resume it."""


class KubeApiError(KubeError):
    """The apiserver answered with an error status (or an ERROR event in a watch)."""

    def __init__(self, message: str, *, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        """The Status object's machine-readable reason, e.g. ``Forbidden``, ``Expired``."""


class KubeGone(KubeApiError):
    """410 Gone: the resourceVersion is older than the apiserver keeps; list again."""
