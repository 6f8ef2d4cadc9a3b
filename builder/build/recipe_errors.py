"""Typed errors of the recipe runner.

Every error carries a ``reason``: a short CamelCase word for a Kubernetes condition's ``reason``
field. The message (``str(err)``) says what was expected, what was found and what to do.
"""

from __future__ import annotations


class BuildError(Exception):
    """Base of everything that can go wrong between reading a recipe and collecting artifacts."""

    reason = "BuildError"


class RecipeError(BuildError):
    """The recipe (or the template it comes from) is invalid; fix the recipe, not the source."""

    reason = "RecipeInvalid"


class ToolMissing(BuildError):
    """An executable the recipe needs is not on the runner's PATH."""

    reason = "ToolMissing"

    def __init__(self, message: str, tool: str) -> None:
        super().__init__(message)
        self.tool = tool


class MetadataError(BuildError):
    """The plugin's name or version could not be read from the source tree."""

    reason = "MetadataInvalid"


class BuildFailed(BuildError):
    """A build step exited non-zero. ``log_tail`` holds its last output lines."""

    reason = "BuildFailed"

    def __init__(self, message: str, *, step: int, exit_code: int, log_tail: str) -> None:
        super().__init__(message)
        self.step = step
        self.exit_code = exit_code
        self.log_tail = log_tail


class BuildTimeout(BuildError):
    """The build ran past its wall-clock limit; its whole process group was killed."""

    reason = "BuildTimeout"

    def __init__(self, message: str, *, timeout: float, log_tail: str) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.log_tail = log_tail


class ArtifactError(BuildError):
    """An artifact is missing, or its path escapes the source tree."""

    reason = "ArtifactInvalid"


class ExecutorFailed(BuildError):
    """Where builds run refused or broke (runtime, cluster, transfer): not the plugin's fault;
    the builder retries it as transient."""

    reason = "ExecutorFailed"
