"""The builder's typed errors: permanent (fix the input) versus transient (retry with backoff).

Every error has a ``reason``: a CamelCase word used verbatim as a Kubernetes condition reason and
as the PluginBuild's ``status.reason``. Messages say what was expected, what was found, and what
to do. Third-party exceptions are wrapped at the adapter boundary (``raise ... from e``).
"""

from __future__ import annotations


class BuilderError(Exception):
    """Base of every error the reconciler handles."""

    reason = "BuildError"
    transient = False
    commit: str | None = None  # the commit being built, once the source fetch resolved it


class PermanentError(BuilderError):
    """Retrying with the same input will fail the same way: wait for a spec or source change."""


class TransientError(BuilderError):
    """Worth retrying later (network, registry or apiserver hiccups)."""

    transient = True


class InternalError(PermanentError):
    """A bug in the builder, not in the input: reported, not retried."""

    reason = "InternalError"


class InvalidSpec(PermanentError):
    reason = "InvalidSpec"


class SourceUnavailable(TransientError):
    """The repository could not be reached (DNS, connection refused, timeout, 5xx)."""

    reason = "SourceUnavailable"


class SourceAuthFailed(PermanentError):
    reason = "SourceAuthFailed"


class UnknownRef(PermanentError):
    reason = "UnknownRef"


class RepositoryNotFound(PermanentError):
    """The Git server answered that the repository does not exist."""

    reason = "RepositoryNotFound"


class AmbiguousRef(PermanentError):
    """A short ref names both a branch and a tag: the spec must say which."""

    reason = "AmbiguousRef"


class SourcePathMissing(PermanentError):
    reason = "SourcePathMissing"


class RegistryUnavailable(TransientError):
    reason = "RegistryUnavailable"


class RegistryRefused(PermanentError):
    """The registry refused the push: credentials, permissions, or content."""

    reason = "RegistryRefused"


class KeyConflict(PermanentError):
    """Another BrokerPlugin owns the ConfigMap key this one would write."""

    reason = "Conflict"


class TargetMissing(TransientError):
    """The target ConfigMap was deleted after a rollout; retried until it is back."""

    reason = "TargetMissing"


class SecretInvalid(PermanentError):
    reason = "SecretInvalid"


class SecretRefused(PermanentError):
    """A referenced Secret was not made for the builder's use (its type says so)."""

    reason = "SecretRefused"


# --- apiserver errors (raised by builder.kube only) -------------------------------------------


class KubeError(TransientError):
    """An apiserver call failed in a way worth retrying."""

    reason = "ApiServerError"


class NotFound(PermanentError):
    reason = "NotFound"


class Conflict(TransientError):
    """Optimistic concurrency lost (HTTP 409): re-read and retry."""

    reason = "Conflict"


class Forbidden(PermanentError):
    """RBAC denied a call; the message names the verb and resource to grant."""

    reason = "Forbidden"


class Invalid(PermanentError):
    """The apiserver rejected an object (HTTP 422): schema or validation failure."""

    reason = "Invalid"


class Gone(KubeError):
    """A watch's resourceVersion is too old (HTTP 410): relist."""

    reason = "Gone"


class ExecutorUnavailable(TransientError):
    """Where builds run refused or broke (cluster, runtime, transfer): not the plugin's fault."""

    reason = "ExecutorFailed"


class BuildStepFailed(PermanentError):
    """The recipe failed (compile error, timeout, missing tool, bad metadata or artifacts).

    ``reason`` is the recipe error's own (BuildFailed, BuildTimeout, ToolMissing, ...).
    """

    def __init__(self, message: str, reason: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.log_tail = log_tail
