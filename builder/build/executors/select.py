"""The ``--executor`` setting made into an ``Executor``, refusing and warning where it must."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from builder.build.executors import EXECUTORS, Executor
from builder.build.executors.container import ContainerExecutor
from builder.build.executors.process import ProcessExecutor

PROCESS_WARNING = (
    "decision=process-executor: builds run as subprocesses of this process, as its user: a "
    "plugin's Makefile, rebar.config or pom.xml can read the builder's ServiceAccount token, "
    "its mounted Secrets (API tokens, signing key, sidecar token), the environment of "
    "concurrent git fetches and every tenant's git mirrors, work dirs, logs and caches. "
    "Use it for development only; deploy with --executor kubernetes or container")

CONTAINER_EGRESS_WARNING = (
    "decision=container-egress: not running as root: builds whose recipes declare dependency "
    "caches (maven, rebar3) will fail with ExecutorFailed, because their egress proxy is "
    "opened inside the build container's network namespace, which needs root and rootful "
    "podman; builds without caches are not affected")


class ExecutorRefused(ValueError):
    """The setting names an executor this builder will not (or cannot) run."""


def default_cache_root() -> Path:
    """``$PLUGFORGE_CACHE`` or ``~/.cache/plugforge``: where build caches live on this machine."""
    value = os.environ.get("PLUGFORGE_CACHE")
    return Path(value) if value else Path.home() / ".cache" / "plugforge"


def select_executor(kind: str, *, allow_process: bool, log: logging.Logger,
                    cache_root: Path | None = None, owner: str = "",
                    kubernetes: Callable[[], Executor] | None = None) -> Executor:
    """The executor named ``kind``. ``kubernetes`` builds that one (it needs the cluster's
    client and settings, which the caller has); ``process`` needs ``allow_process`` and is
    logged as a WARNING each time it is chosen. ``cache_root``: default_cache_root();
    ``owner``: the builder the ``container`` executor labels its containers with."""
    cache_root = cache_root or default_cache_root()
    if kind == "process":
        if not allow_process:
            raise ExecutorRefused(
                "the process executor lets builds read the builder's credentials; it is "
                "refused unless explicitly allowed (--allow-process-executor)")
        log.warning(PROCESS_WARNING)
        return ProcessExecutor(cache_root)
    if kind == "container":
        if os.geteuid() != 0:
            log.warning(CONTAINER_EGRESS_WARNING)
        return ContainerExecutor(cache_root, owner=owner)
    if kind == "kubernetes":
        if kubernetes is None:
            raise ExecutorRefused("the kubernetes executor is not available to this caller; "
                                  "use --executor container")
        return kubernetes()
    raise ExecutorRefused(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTORS)}")
