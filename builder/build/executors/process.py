"""The ``process`` executor: steps as subprocesses of the caller — for development only.

A build run this way can read whatever the caller can (the builder's ServiceAccount token, its
mounted Secrets, other tenants' mirrors): the fences are a clean environment and a process group,
nothing more. The builder refuses it unless explicitly enabled and says so loudly at each start;
tests of the templates use it because they test recipes, not isolation.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TextIO

from builder.build import sandbox
from builder.build.executors import BuildJob
from builder.build.recipe_errors import ToolMissing


class ProcessExecutor:
    name = "process"

    def __init__(self, cache_root: Path) -> None:
        self._cache_root = cache_root

    def run(self, job: BuildJob, workspace: Path, log_path: Path,
            echo: TextIO | None = None) -> None:
        # Beside the workspace, so nothing of the build's own leaks into its outputs.
        home, tmp = workspace.parent / "home", workspace.parent / "tmp"
        for d in (home, tmp):
            d.mkdir(parents=True, exist_ok=True)
        env = sandbox.clean_env(home, tmp)
        for tool in job.tools:
            if shutil.which(tool, path=env["PATH"]) is None:
                raise ToolMissing(
                    f"tool {tool!r} is not on PATH ({env['PATH']}); install it (the recipe's "
                    f"toolchain image is {job.toolchain_image or 'not given'})", tool=tool)
        if job.caches:
            env.update(sandbox.cache_env(job.caches, self._cache_root, home))
        steps = [(step.argv, {**env, **step.env}) for step in job.steps]
        sandbox.run_steps(steps, cwd=workspace, log_path=log_path, echo=echo,
                          deadline=time.monotonic() + job.timeout, timeout=job.timeout)

