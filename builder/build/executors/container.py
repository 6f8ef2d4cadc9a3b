"""The ``container`` executor: each build in its own podman container from the toolchain image.

One container per build, started with nothing in reach but what the build needs:

- the recipe's toolchain image, run as a fixed non-root uid with every capability dropped,
  ``no-new-privileges``, podman's default seccomp profile and a read-only root filesystem;
- the workspace is a size-limited tmpfs at ``/workspace`` (the source is copied in, the tree
  copied back out when the steps succeed), so a build that fills it gets ENOSPC, not the
  machine's disk; ``HOME`` and ``/tmp`` are small tmpfs too;
- only the recipe's named caches, from ``toolchains.cache_dir`` (per tenant and toolchain
  digest: the image must be pinned when the recipe has caches), bind-mounted read-write:
  never another tenant's;
- memory, CPU and pids limits;
- ``--network=none`` always: loopback only, no DNS, no route. A recipe with caches gets its
  dependency registries through the builder's allowlisting proxy (``egress.py``), opened on
  that loopback (127.0.0.1:3128) once the container runs and closed when the build ends: TLS
  tunnels to port 443 of the caches' registries only (maven: repo.maven.apache.org,
  repo1.maven.org; rebar3: repo.hex.pm, hex.pm, builds.hex.pm), names resolved by the
  builder; anything else is a 403 naming the host and the reason, and a ``[egress] refused``
  line in the build log. Tools are told by ``HTTPS_PROXY``/``https_proxy`` (rebar3) and
  ``-Dhttps.proxyHost``/``-Dhttp.proxyHost`` in ``MAVEN_OPTS`` (Maven); a recipe that changes
  them reaches nothing more. Opening the proxy needs root (rootful podman);
- no environment from the caller: the image's ``PATH``, ``HOME``/``TMPDIR`` here, the step's
  own variables; no podman proxy variables (``--http-proxy=false``).

Steps run with ``podman exec`` (argv lists, no shell); output streams through
``sandbox.run_steps`` (log file capped, echo, deadline). At the deadline, on failure and on
success the container is removed with ``rm -f``: every process of the build dies with it. Its
PID 1 is ``sleep`` for the timeout plus a margin, so a container whose builder died stops
(and, started with ``--rm``, removes itself) on its own; a restarted builder retrying the same
build replaces it (the name is derived from tenant and build). The toolchain image must
provide ``sleep`` (coreutils: every Debian-based image does).

Machine quirks (runtime, cgroup manager, ulimits) belong in podman's own configuration
(``CONTAINERS_CONF``), not here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from builder.build import sandbox, toolchains
from builder.build.executors import BuildJob, egress
from builder.build.recipe_errors import BuildError, BuildFailed, ExecutorFailed, ToolMissing

WORKSPACE = "/workspace"
TMP = "/tmp"  # noqa: S108 - the container's own, a fresh tmpfs
LABEL_BUILD = "dev.plugforge.build"
LABEL_TENANT = "dev.plugforge.tenant"
LABEL_OWNER = "dev.plugforge.owner"
# PID 1 outlives the deadline by this much, so the builder is always the one that kills it.
_SELF_EXPIRY_MARGIN = 60
_PODMAN_SECONDS = 120.0


@dataclass(frozen=True)
class Limits:
    """What one build may use. tmpfs sizes count against ``memory`` when filled."""

    memory: str = "3g"
    cpus: float = 2.0
    pids: int = 1024
    workspace: str = "1g"
    tmp: str = "512m"
    home: str = "256m"


def container_name(job: BuildJob) -> str:
    """Stable per (tenant, build): a retried build finds its predecessor's leftover."""
    key = hashlib.sha256(f"{job.tenant}/{job.name}".encode()).hexdigest()[:20]
    return f"plugforge-build-{key}"


def cache_env(caches: Sequence[str]) -> dict[str, str]:
    """Point each tool at its mounted cache (Maven by system property, rebar3 by variable) and,
    when there are caches, at the egress proxy (``egress.proxy_env``; Maven's by ``-D``)."""
    env = egress.proxy_env(caches)
    for name in caches:
        if name == "maven":
            env["MAVEN_OPTS"] = (f"-Dmaven.repo.local={toolchains.cache_mount(name)} "
                                 f"{egress.java_proxy_options()}")
        elif name == "rebar3":
            env["REBAR_CACHE_DIR"] = toolchains.cache_mount(name)
    return env


def run_argv(job: BuildJob, name: str, caches: Mapping[str, Path], limits: Limits,
             user: str, owner: str = "") -> list[str]:
    """``podman run`` arguments that start the build's (idle) container. Pure."""
    argv = [
        # --replace: an earlier attempt's leftover (its builder died) goes first.
        # --stop-timeout 0: nothing of a build deserves a graceful stop (replace, rm, kill).
        "run", "--detach", "--rm", "--replace", "--stop-timeout", "0", "--name", name,
        "--label", f"{LABEL_BUILD}={job.name}", "--label", f"{LABEL_TENANT}={job.tenant}",
        "--label", f"{LABEL_OWNER}={owner}",
        "--user", user, "--read-only", "--cap-drop=all",
        "--security-opt", "no-new-privileges", "--http-proxy=false", "--log-driver=none",
        "--memory", limits.memory, "--memory-swap", limits.memory,
        "--cpus", f"{limits.cpus:g}", "--pids-limit", str(limits.pids),
        "--tmpfs", f"{WORKSPACE}:rw,exec,nosuid,nodev,size={limits.workspace},mode=1777",
        "--tmpfs", f"{TMP}:rw,exec,nosuid,nodev,size={limits.tmp},mode=1777",
        # U: owned by the build user (podman keeps the image directory's 0700 root-owned mode
        # otherwise, whatever mode= says, and rebar3 cannot read its own config there).
        "--tmpfs", f"{toolchains.BUILD_HOME}:rw,exec,nosuid,nodev,size={limits.home},U",
        "--workdir", WORKSPACE,
        # Loopback only, always: a build with caches reaches its registries through the
        # egress proxy the builder opens on this loopback (egress.py), and nothing else.
        "--network=none",
    ]
    env = {"HOME": toolchains.BUILD_HOME, "TMPDIR": TMP, "LANG": "C.UTF-8", **cache_env(job.caches)}
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for cache, directory in sorted(caches.items()):
        argv += ["--volume", f"{directory}:{toolchains.cache_mount(cache)}:rw,nosuid,nodev"]
    expiry = int(job.timeout) + _SELF_EXPIRY_MARGIN
    return [*argv, "--entrypoint", "sleep", job.toolchain_image, str(expiry)]


def exec_argv(name: str, env: Mapping[str, str], argv: Sequence[str]) -> list[str]:
    """``podman exec`` arguments for one step. Pure."""
    flags = [f for key, value in env.items() for f in ("--env", f"{key}={value}")]
    return ["exec", "--workdir", WORKSPACE, *flags, name, *argv]


class ContainerExecutor:
    name = "container"

    def __init__(self, cache_root: Path, *, podman: Sequence[str] = ("podman",),
                 podman_env: Mapping[str, str] | None = None, limits: Limits = Limits(),
                 egress_limits: egress.Limits = egress.DEFAULT_LIMITS, owner: str = "") -> None:
        """``podman``/``podman_env``: how to call podman (default: ``podman`` with the caller's
        environment; podman passes none of it into containers). ``egress_limits``: the
        dependency proxy's, per build. ``owner``: labels this builder's containers, so
        ``sweep`` finds its predecessors' (e.g. the Lease's name)."""
        self._cache_root = cache_root
        self._podman = list(podman)
        self._env = dict(podman_env) if podman_env is not None else dict(os.environ)
        self._limits = limits
        self._egress_limits = egress_limits
        self._owner = owner
        self._running: set[str] = set()
        self._lock = threading.Lock()

    def sweep(self) -> list[str]:
        """Remove every build container of ``owner`` this process does not run (a dead or
        deposed builder's); returns their names. Call it while holding the Lease."""
        if not self._owner:  # unowned containers are concurrent CLI builds': never swept
            return []
        listed = self._call("ps", "--all", "--format", "{{.Names}}",
                            "--filter", f"label={LABEL_OWNER}={self._owner}")
        with self._lock:
            orphans = [n for n in listed.split() if n not in self._running]
        for name in orphans:
            self._call("rm", "--force", "--ignore", "--time", "0", name)
        return orphans

    def run(self, job: BuildJob, workspace: Path, log_path: Path,
            echo: TextIO | None = None) -> None:
        deadline = time.monotonic() + job.timeout
        name = container_name(job)
        if not job.toolchain_image:
            raise ExecutorFailed("the recipe names no toolchain image; the container executor "
                                 "runs every build in one")
        caches = {c: self._cache(job, c) for c in job.caches}
        uid = toolchains.BUILD_UID
        with self._lock:
            self._running.add(name)
        proxy: egress.BuildProxy | None = None
        try:
            self._call(*run_argv(job, name, caches, self._limits, f"{uid}:{uid}", self._owner))
            if job.caches:
                proxy = self._proxy(job, name, log_path)
            self._call("cp", f"{workspace}/.", f"{name}:{WORKSPACE}/")
            steps = [([*self._podman, *exec_argv(name, step.env, step.argv)], self._env)
                     for step in job.steps]
            try:
                sandbox.run_steps(steps, cwd=workspace, log_path=log_path, echo=echo,
                                  deadline=deadline, timeout=job.timeout,
                                  shown=[step.argv for step in job.steps])
            except BuildFailed as e:
                if not self._alive(name):  # removed or died under the build: not its fault
                    raise ExecutorFailed(f"the build's container {name} vanished during step "
                                         f"{e.step} (removed, or its PID 1 was killed): {e}"
                                         ) from None
                raise self._explained(e, job, proxy) from None
            # The tree goes back as the steps left it: cleared first, so nothing of the
            # original can redirect the copy (a symlink where the build made a directory).
            for entry in workspace.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            self._call("cp", f"{name}:{WORKSPACE}/.", f"{workspace}/")
        finally:
            if proxy is not None:
                proxy.close()
            try:
                self._call("rm", "--force", "--ignore", "--time", "0", name)
            finally:
                with self._lock:
                    self._running.discard(name)

    def local_image(self, repository: str) -> str | None:
        """The newest image of ``repository`` in podman's store as ``repository@digest``
        (what ``plugforge toolchains build`` left), or None (no image, or podman fails)."""
        try:
            listed = self._call("images", "--format", "{{.Digest}}", "--sort", "created",
                                "--filter", f"reference={repository}")
        except ExecutorFailed:
            return None
        digests = listed.split()
        return f"{repository}@{digests[0]}" if digests else None  # newest first

    def _cache(self, job: BuildJob, cache: str) -> Path:
        directory = toolchains.cache_dir(self._cache_root, job.tenant, job.toolchain_image, cache)
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(directory, toolchains.BUILD_UID, toolchains.BUILD_UID)
        return directory

    def _proxy(self, job: BuildJob, name: str, log_path: Path) -> egress.BuildProxy:
        """The build's egress proxy, listening on its container's loopback."""
        pid = self._call("container", "inspect", "--format", "{{.State.Pid}}", name).strip()
        if not pid.isdigit() or pid == "0":
            raise ExecutorFailed(f"the build's container {name} has no process (pid {pid!r})")
        allowed = egress.allowed_hosts(job.caches)
        listener = egress.listen_in(Path(f"/proc/{pid}/ns/net"))
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"[egress] network: only HTTPS to {', '.join(sorted(allowed))} through "
                    f"the builder's proxy ({egress.PROXY_URL}); no DNS, no other route\n")
        return egress.BuildProxy(job.name, listener, allowed, log_path, self._egress_limits)

    def _alive(self, name: str) -> bool:
        try:
            state = self._call("container", "inspect", "--format", "{{.State.Running}}", name)
        except ExecutorFailed:
            return False
        return state.strip() == "true"

    def _call(self, *args: str) -> str:
        argv = [*self._podman, *args]
        try:
            result = subprocess.run(argv, env=self._env, capture_output=True, text=True,
                                    timeout=_PODMAN_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ExecutorFailed(f"podman {args[0]} failed: {e}") from e
        if result.returncode != 0:
            raise ExecutorFailed(f"podman {args[0]} exited {result.returncode}: "
                                 f"{(result.stderr or result.stdout).strip()[-2000:]}")
        return result.stdout

    def _explained(self, error: BuildFailed, job: BuildJob,
                   proxy: egress.BuildProxy | None) -> BuildError:
        """A failed step, with what the container's limits make of its exit."""
        step = job.steps[error.step - 1]
        if error.exit_code == 127 and "executable file not found" in error.log_tail:
            return ToolMissing(f"{step.argv[0]!r} is not in the toolchain image "
                               f"{job.toolchain_image}; add it to the toolchain or fix the "
                               f"recipe's step {error.step}", tool=step.argv[0])
        notes = []
        if error.exit_code == 137:
            notes.append(f"exit 137 is SIGKILL: the build may have hit its memory limit "
                         f"({self._limits.memory}, tmpfs contents included)")
        if "No space left on device" in error.log_tail:
            notes.append(f"the workspace holds at most {self._limits.workspace}, /tmp "
                         f"{self._limits.tmp}")
        if "Resource temporarily unavailable" in error.log_tail:
            notes.append(f"a build runs at most {self._limits.pids} processes")
        if proxy is not None and proxy.refused:
            notes.append(f"the egress proxy turned down {len(proxy.refused)} request(s), first: "
                         f"{proxy.refused[0]}")
        if not notes:
            return error
        first, newline, rest = str(error).partition("\n")
        return BuildFailed(f"{first} ({'; '.join(notes)}){newline}{rest}", step=error.step,
                           exit_code=error.exit_code, log_tail=error.log_tail)
