"""Where a build's steps run: the one interface, and the choice among its implementations.

The builder decides everything before an executor sees a build (the source tree is checked out
and copied, the recipe validated, ``{name}``/``{version}`` filled in): an executor gets a
``BuildJob`` of plain argv lists and a workspace directory, runs the steps *in* that workspace
(leaving their outputs there for the builder to collect, hash and pack), and reports failure as
``BuildFailed``/``BuildTimeout`` with the log's tail. It never receives a credential.

Implementations (``--executor``):
- ``kubernetes``: each build a Job in a build namespace, from the recipe's toolchain image;
- ``container``: the same toolchain image with podman, on one machine (``build --local``);
- ``process``: subprocesses of the caller (development only; see ``process.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

__all__ = ["EXECUTORS", "BuildJob", "BuildStep", "Executor"]

EXECUTORS = ("kubernetes", "container", "process")


@dataclass(frozen=True)
class BuildStep:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    """The recipe's own variables for this step (HOME, PATH, TMPDIR, caches: the executor's)."""


@dataclass(frozen=True)
class BuildJob:
    """One build, fully decided: nothing in it is interpreted by a shell."""

    name: str
    """Unique per build (the PluginBuild's name, or a local id): names Jobs, containers, logs."""
    tenant: str
    """The namespace the build belongs to: caches are scoped by it, never shared across it."""
    toolchain_image: str
    """The recipe's toolchain image reference (ignored by the ``process`` executor)."""
    steps: tuple[BuildStep, ...]
    caches: tuple[str, ...]
    """Named dependency caches the recipe uses (``maven``, ``rebar3``): per tenant + toolchain."""
    timeout: float
    """Seconds for all steps together; past it every process of the build is killed."""
    tools: tuple[str, ...] = ()
    """Programs the steps need; an executor that can check them says which one is missing."""


class Executor(Protocol):
    """Runs a ``BuildJob``'s steps in order inside ``workspace``.

    ``workspace`` holds the source tree on entry and whatever the steps left on return. Output
    (stdout and stderr merged) is appended to ``log_path`` as it arrives and echoed to ``echo``.
    Raises ``BuildFailed`` (a step exited non-zero), ``BuildTimeout`` (the deadline passed) or
    ``ToolMissing``; infrastructure trouble (the runtime or cluster refused) is ``BuildError``
    with reason ``ExecutorFailed``.
    """

    name: str

    def run(self, job: BuildJob, workspace: Path, log_path: Path,
            echo: TextIO | None = None) -> None: ...
