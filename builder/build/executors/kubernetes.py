"""The ``kubernetes`` executor: each build a Job in the build namespace, holding no credential.

The pod: one init container fetches the source tarball over a one-time URL (a static busybox
image; the URL is the builder's, never the plugin's), one init container per recipe step runs
its exact argv and env in the toolchain image (no shell), and the last container returns the
tree over another one-time URL. No ServiceAccount token is mounted and the ServiceAccount has
no rights; non-root, read-only root filesystem, all capabilities dropped, seccomp
RuntimeDefault, CPU/memory/ephemeral-storage limits, an emptyDir workspace with a size limit,
``activeDeadlineSeconds`` = the build's timeout, no retries, deleted a while after it ends.

Dependency caches (the recipe's ``caches``) persist per tenant and toolchain digest on the
builder, at ``toolchains.cache_dir`` under the builder's cache root (``$PLUGFORGE_CACHE``),
exactly where the ``container`` executor keeps them; no volume is shared with the pod. The
tenant's caches go in with the source, in the same tarball (under ``cache/<name>/``, at most
``max_cache_bytes``); the fetch container then stamps the time; the return container sends
back, on a third one-time URL and before the result, only the cache files newer than that
stamp, and the builder adds those to that tenant's caches once the build has succeeded
(``transfer.merge_cache``: additions only, never overwriting a file, no links or devices).
So a build can add files to its own tenant's cache and nothing else: it cannot change a
cached file, reach another tenant's cache, or keep anything from a failed build.

Each container's log is followed into the build log as it runs. How the pod ended becomes the
executor's errors: a step's exit code ``BuildFailed``, the deadline ``BuildTimeout``, a program
the image lacks ``ToolMissing``; pull errors, no node, eviction, a broken transfer
``ExecutorFailed`` (not the plugin's fault: retried).

Orphans: every Job is labelled with its build, tenant and the builder's identity. ``sweep``,
called when this replica starts running builds (it holds the Lease), deletes every build Job
it is not running: a Job cannot be adopted, since its upload URL died with the process that
made it, so the controller runs the build again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from builder.build import sandbox, toolchains
from builder.build.executors import BuildJob
from builder.build.executors.select import default_cache_root
from builder.build.executors.transfer import (
    Receipt,
    TransferServer,
    clear,
    extract_result,
    merge_cache,
    pack_workspace,
    tree_size,
)
from builder.build.recipe_errors import (
    ArtifactError,
    BuildFailed,
    BuildTimeout,
    ExecutorFailed,
    ToolMissing,
)
from builder.errors import BuilderError
from builder.kube import Kube, LogStream

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MANAGED_BY = "plugforge-builder"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
LABEL_BUILD = "plugforge.dev/build"
LABEL_TENANT = "plugforge.dev/tenant"
LABEL_BUILDER = "plugforge.dev/builder"
LABEL_JOB = "plugforge.dev/build-job"
LABEL_EGRESS = "plugforge.dev/egress"
"""``dependencies`` on pods of recipes with dependency caches: the NetworkPolicy that lets
them reach package registries selects it (manifests/builds/)."""
WORKSPACE = "/build"
UNSCHEDULABLE_GRACE = 30.0
"""Seconds a pod may wait for a node (others' builds finishing) before the build is retried."""
POLL_SECONDS = 0.2
PULL_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                         "ErrImageNeverPull", "RegistryUnavailable"})
CREATE_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError",
                           "RunContainerError", "PreCreateHookError", "PreStartHookError"})

# The transfer containers' scripts are the builder's constants; the URLs come in through env.
# A try that could not connect is repeated (the URL is used up only by a request that arrived);
# each try gets 60 s (busybox 1.35's wget -T crashes). Their files live beside src/, home/ and
# tmp/, never inside them.
_BB = "/bin/busybox"
_FILES = f"{WORKSPACE}/.transfer"
CACHES = f"{WORKSPACE}/cache"
_STAMP = f"{_FILES}/cache-since"
_NEW = f"{_FILES}/new-cache"


def _try(command: str) -> str:
    """``command`` (a wget of a one-time URL), tried up to 5 times a second apart."""
    return (f'for try in 1 2 3 4 5; do {command} && break; [ "$try" = 5 ] && exit 1; '
            f"{_BB} sleep 1; done")


def _wget(args: str, url_variable: str) -> str:
    return f'{_BB} timeout 60 {_BB} wget -q {args} "${url_variable}"'


# The source (and caches) stream from wget into tar, never on disk twice; a try that broke
# part-way finds its URL used up, so the fetch fails. Then the stamp, a second old: busybox
# find compares whole seconds, and a file a build adds in the stamp's own second must still
# count as new (one that was there is merely sent again, and kept as it was).
FETCH_SCRIPT = (f"set -e -o pipefail; {_BB} mkdir -p {_FILES}; "
                + _try(_wget("-O -", "PLUGFORGE_SOURCE_URL")
                       + f" | {_BB} tar -x -f - -C {WORKSPACE}")
                + f"; {_BB} touch -d \"@$(( $({_BB} date +%s) - 1 ))\" {_STAMP}")
# Cache files newer than the stamp, copied with their directories (busybox tar takes no file
# list; cpio does), as a tarball. Best effort, never failing the return: what the build made
# unreadable or a missing stamp (the build removed it) leaves additions out; additions over
# the upload cap are not sent (busybox wget would read them all into memory first), and a
# refused upload is the builder's to report.
CACHE_RETURN_SCRIPT = (
    f"{_BB} rm -rf {_NEW}; {_BB} mkdir -p {_NEW}; "
    f"if [ -e {_STAMP} ]; then (cd {CACHES} && {_BB} find . -newer {_STAMP} ! -type d -print0 "
    f"| {_BB} cpio -0 -o -H newc | (cd {_NEW} && {_BB} cpio -i -d)) 2>/dev/null "
    "|| echo 'some cache files could not be returned'; fi; "
    f"{_BB} tar -c -f - -C {_NEW} . | {_BB} base64 > {_FILES}/cache.b64; {_BB} rm -rf {_NEW}; "
    f'if [ "$({_BB} wc -c < {_FILES}/cache.b64)" -le "$PLUGFORGE_CACHE_MAX" ]; then ('
    + _try(_wget(f"-O /dev/null --post-file {_FILES}/cache.b64", "PLUGFORGE_CACHE_URL"))
    + ") || echo 'the cache additions were refused'; "
    "else echo 'the cache additions are over the cap: not returned'; fi; "
    f"{_BB} rm {_FILES}/cache.b64; ")
RETURN_SCRIPT = (f"set -e -o pipefail; {_BB} tar -c -f - -C {WORKSPACE}/src . "
                 f"| {_BB} base64 > {_FILES}/result.b64; "
                 + _try(_wget(f"-O /dev/null --post-file {_FILES}/result.b64",
                              "PLUGFORGE_RESULT_URL")))


@dataclass(frozen=True)
class JobSettings:
    """Where and how build Jobs run (builder settings; manifests/builder/40-deployment.yaml)."""

    transfer_image: str
    """A static busybox image (``wget``, ``tar``, ``base64``) for the transfer containers."""
    identity: str
    """This builder replica; labels its Jobs."""
    namespace: str = "plugforge-builds"
    service_account: str = "plugforge-build"
    run_as: int = toolchains.BUILD_UID
    """The toolchain images' build user."""
    cpu: str = "2"
    memory: str = "2Gi"
    ephemeral_storage: str = "4Gi"
    workspace_size: str = "2Gi"
    workspace_in_memory: bool = False
    """A tmpfs workspace: ``workspace_size`` is then a hard cap (a write past it fails at
    once) and counts against ``memory``; on disk the kubelet evicts a pod past it, on its
    next check (about every 10 s)."""
    cpu_request: str = "250m"
    memory_request: str = "256Mi"
    ttl_after_finished: int = 600
    """Seconds a finished Job (and its logs) stays for inspection."""
    max_result_bytes: int = 512 * 1024 * 1024
    max_cache_bytes: int = 512 * 1024 * 1024
    """A tenant's caches larger than this are not sent to its builds (which then start with
    empty caches; the builder logs it). They must fit ``workspace_size`` beside the build,
    and twice over if the build adds as much (its additions are copied to be returned)."""


# --- the Job (pure) ----------------------------------------------------------------------------

def job_name(build: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", build.lower()).strip("-")[:40].strip("-")
    return f"build-{slug or 'x'}-{secrets.token_hex(3)}"


def label_value(text: str) -> str:
    """A valid label value for ``text``: shortened with a hash when cut or changed."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    if clean == text and len(text) <= 63 and (not text or (text[0].isalnum()
                                                           and text[-1].isalnum())):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return (clean[:54].strip("-._") + "-" + digest).strip("-._")


def job_manifest(job: BuildJob, settings: JobSettings, name: str, source_url: str,
                 result_url: str, cache_url: str = "", cache_max_bytes: int = 0) -> Obj:
    """The build's Job. ``cache_url``: where the return container sends the cache files the
    build added (the recipe has caches), before the result, if their tarball is at most
    ``cache_max_bytes``."""
    labels = {LABEL_MANAGED: MANAGED_BY, LABEL_BUILD: label_value(job.name),
              LABEL_TENANT: label_value(job.tenant), LABEL_BUILDER: label_value(settings.identity),
              LABEL_JOB: name}
    pod_labels = dict(labels)
    if job.caches:
        pod_labels[LABEL_EGRESS] = "dependencies"
    resources = {"limits": {"cpu": settings.cpu, "memory": settings.memory,
                            "ephemeral-storage": settings.ephemeral_storage},
                 "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request}}
    security = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "runAsNonRoot": True, "privileged": False, "capabilities": {"drop": ["ALL"]}}
    mount = [{"name": "workspace", "mountPath": WORKSPACE}]

    def container(cname: str, image: str, command: list[str], env: Mapping[str, str],
                  workdir: str = WORKSPACE) -> Obj:
        return {"name": cname, "image": image, "command": command, "workingDir": workdir,
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "resources": resources, "securityContext": security, "volumeMounts": mount,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "imagePullPolicy": "IfNotPresent"}

    base_env = {"HOME": f"{WORKSPACE}/home", "TMPDIR": f"{WORKSPACE}/tmp",  # noqa: S108
                "LANG": "C.UTF-8",
                **cache_env(job.caches)}
    steps = [container(f"step-{i}", job.toolchain_image, list(step.argv),
                       {**base_env, **step.env}, f"{WORKSPACE}/src")
             for i, step in enumerate(job.steps, 1)]
    deadline = max(1, math.ceil(job.timeout))
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels,
                     "annotations": {"plugforge.dev/build-name": job.name,
                                     "plugforge.dev/tenant": job.tenant,
                                     "plugforge.dev/builder": settings.identity}},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": settings.ttl_after_finished,
            "template": {"metadata": {"labels": pod_labels}, "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": settings.service_account,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,  # no env vars naming the cluster's Services
                "activeDeadlineSeconds": deadline,  # the kubelet's own stop, with a clear reason
                "terminationGracePeriodSeconds": 2,
                "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as,
                                    "runAsGroup": settings.run_as, "fsGroup": settings.run_as,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "volumes": [{"name": "workspace", "emptyDir": {
                    "sizeLimit": settings.workspace_size,
                    **({"medium": "Memory"} if settings.workspace_in_memory else {})}}],
                "initContainers": [
                    container("fetch", settings.transfer_image,
                              ["/bin/busybox", "sh", "-c", FETCH_SCRIPT],
                              {"PLUGFORGE_SOURCE_URL": source_url}),
                    *steps],
                "containers": [
                    container("return", settings.transfer_image,
                              ["/bin/busybox", "sh", "-c", return_script(bool(cache_url))],
                              {"PLUGFORGE_RESULT_URL": result_url,
                               **({"PLUGFORGE_CACHE_URL": cache_url,
                                   "PLUGFORGE_CACHE_MAX": str(_base64_size(cache_max_bytes))}
                                  if cache_url else {})})],
            }},
        },
    }


def _base64_size(size: int) -> int:
    """Bytes of busybox base64's output for ``size`` bytes (76-character lines)."""
    encoded = (size + 2) // 3 * 4
    return encoded + encoded // 76 + 1


def return_script(caches: bool) -> str:
    """The return container's script: the cache additions first (if any), then the result,
    whose arrival ends the build."""
    if not caches:
        return RETURN_SCRIPT
    return RETURN_SCRIPT.replace("set -e -o pipefail; ", "set -e -o pipefail; "
                                 + CACHE_RETURN_SCRIPT, 1)


def cache_env(caches: tuple[str, ...]) -> dict[str, str]:
    """Dependency caches in the pod's workspace, filled from the tenant's on the builder."""
    env: dict[str, str] = {}
    if "maven" in caches:
        env["MAVEN_OPTS"] = f"-Dmaven.repo.local={CACHES}/maven"
    if "rebar3" in caches:
        env["REBAR_CACHE_DIR"] = f"{CACHES}/rebar3"
    return env


# --- how it ended (pure) -----------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    kind: str
    """``running``, ``succeeded``, ``step-failed``, ``tool-missing``, ``timeout``, ``infra``."""
    step: int = 0
    code: int = 0
    message: str = ""


RUNNING = Verdict("running")


def judge(job: Obj | None, pod: Obj | None, *, elapsed: float, timeout: float,
          now: datetime) -> Verdict:
    """The build's state from its Job and pod as the apiserver shows them."""
    if job is None:
        return Verdict("infra", message="the Job was deleted while the build ran")
    conditions = (job.get("status") or {}).get("conditions") or []
    for c in conditions:
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            if c.get("reason") == "DeadlineExceeded":
                return Verdict("timeout")
            if pod is None:
                return Verdict("infra", message=f"the Job failed: {c.get('reason')}: "
                                                f"{c.get('message', '')}")
    if pod is None:
        if _age((job.get("metadata") or {}).get("creationTimestamp"), now) > UNSCHEDULABLE_GRACE:
            return Verdict("infra", message=(
                f"the Job made no pod in {UNSCHEDULABLE_GRACE:g} s: a quota, Pod Security or an "
                "admission webhook refuses it (the Job's Events say which)"))
        return RUNNING
    status = pod.get("status") or {}
    if status.get("reason") == "DeadlineExceeded":
        return Verdict("timeout")
    if status.get("reason") == "Evicted":
        return Verdict("infra", message=f"the pod was evicted: {status.get('message', '')}")
    inits = status.get("initContainerStatuses") or []
    mains = status.get("containerStatuses") or []
    for cs in (*inits, *mains):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in PULL_ERRORS:
            return Verdict("infra", message=f"cannot pull image {cs.get('image')}: "
                                            f"{waiting['reason']}: {waiting.get('message', '')}")
        if waiting.get("reason") in CREATE_ERRORS:
            return Verdict("infra", message=f"container {cs.get('name')} cannot start: "
                                            f"{waiting['reason']}: {waiting.get('message', '')}")
    for cs in inits:
        ended = (cs.get("state") or {}).get("terminated") or {}
        code = int(ended.get("exitCode", 0))
        if not ended or code == 0:
            continue
        if cs.get("name") == "fetch":
            return Verdict("infra", code=code, message=f"fetching the source into the pod "
                           f"failed (exit {code}): {ended.get('message', '').strip()}")
        step = int(str(cs.get("name", "step-0")).removeprefix("step-") or 0)
        text = str(ended.get("message", ""))
        if ended.get("reason") in ("StartError", "ContainerCannotRun") and (
                "executable file not found" in text or "no such file or directory" in text):
            return Verdict("tool-missing", step=step, code=code, message=text.strip())
        if code in (137, 143) and elapsed >= timeout - 1:
            return Verdict("timeout", step=step)
        return Verdict("step-failed", step=step, code=code, message=text.strip())
    for cs in mains:
        ended = (cs.get("state") or {}).get("terminated") or {}
        if ended and int(ended.get("exitCode", 0)) != 0:
            return Verdict("infra", code=int(ended["exitCode"]), message=(
                f"returning the result from the pod failed (exit {ended['exitCode']}): "
                f"{ended.get('message', '').strip()}"))
    if status.get("phase") == "Succeeded":
        return Verdict("succeeded")
    if status.get("phase") == "Failed":
        return Verdict("infra", message=f"the pod failed: {status.get('reason', '')}: "
                                        f"{status.get('message', '')}")
    for c in status.get("conditions") or []:
        if (c.get("type") == "PodScheduled" and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
                and _age(c.get("lastTransitionTime"), now) > UNSCHEDULABLE_GRACE):
            return Verdict("infra", message=f"no node can run the build: {c.get('message')}")
    return RUNNING


def _age(stamp: str | None, now: datetime) -> float:
    if not stamp:
        return 0.0
    # "...Z" from the wire, "...+00:00" once the typed client has parsed and re-serialized it.
    then = datetime.fromisoformat(stamp)
    return (now - (then if then.tzinfo else then.replace(tzinfo=UTC))).total_seconds()


def started(pod: Obj | None, container: str) -> bool:
    """Whether ``container`` of ``pod`` runs or ran (its log can be followed)."""
    status = (pod or {}).get("status") or {}
    for cs in (*(status.get("initContainerStatuses") or []),
               *(status.get("containerStatuses") or [])):
        if cs.get("name") == container:
            state = cs.get("state") or {}
            return bool(state.get("running") or state.get("terminated"))
    return False


def ended(pod: Obj | None, container: str) -> bool:
    """Whether ``container`` of ``pod`` has terminated (its log is complete)."""
    status = (pod or {}).get("status") or {}
    for cs in (*(status.get("initContainerStatuses") or []),
               *(status.get("containerStatuses") or [])):
        if cs.get("name") == container:
            return bool((cs.get("state") or {}).get("terminated"))
    return False


# --- running it (I/O) --------------------------------------------------------------------------

class _Log:
    """The build log file plus the live echo; at most ``limit`` bytes kept."""

    def __init__(self, path: Path, echo: TextIO | None,
                 limit: int = sandbox.LOG_LIMIT_BYTES) -> None:
        self._file = path.open("ab")
        self._echo, self._left, self._dropped = echo, limit, 0
        self._at_line_start = True

    def line(self, text: str) -> None:
        """One line of the executor's own, on a line of its own (a build's last output may
        lack its newline)."""
        self.write(("" if self._at_line_start else "\n").encode() + text.encode() + b"\n")

    def write(self, data: bytes) -> None:
        kept = data[:max(self._left, 0)]
        self._dropped += len(data) - len(kept)
        self._left -= len(kept)
        if kept:
            self._at_line_start = kept.endswith(b"\n")
            self._file.write(kept)
            self._file.flush()
            if self._echo is not None:
                self._echo.write(kept.decode("utf-8", errors="replace"))
                self._echo.flush()

    def close(self) -> None:
        if self._dropped:
            self._file.write(f"\n!! log truncated: {self._dropped} more bytes of output not "
                             "kept\n".encode())
        self._file.close()


class _Follower:
    """Follows one container's log into the build log on a thread of its own.

    The kubelet ends a followed log only on its next look at the container (seconds after it
    exited, longer under load), so ``finish`` does not wait for that: it gives the stream a
    moment, cuts it, and appends what the stream had not delivered yet from a plain read.
    """

    GRACE = 0.05  # the plain read below is cheaper than waiting for the kubelet

    def __init__(self, kube: Kube, namespace: str, pod: str, container: str, out: _Log,
                 seen: float, read_timeout: float) -> None:
        self.container, self.seen = container, seen
        self._kube, self._ns, self._pod, self._out = kube, namespace, pod, out
        self._written = 0
        self._cut = self._complete = False
        self._stream: LogStream | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(read_timeout,), daemon=True,
                                        name=f"log-{container}")
        self._thread.start()

    def _run(self, read_timeout: float) -> None:
        try:
            self._stream = self._kube.follow_pod_log(self._ns, self._pod, self.container,
                                                     read_timeout)
            for chunk in self._stream.chunks():
                with self._lock:
                    if self._cut:
                        return
                    self._out.write(chunk)
                    self._written += len(chunk)
            self._complete = True
        except BuilderError:
            pass  # cut, or broken: finish() reads the rest

    def finish(self) -> None:
        self._thread.join(self.GRACE)
        if self._thread.is_alive() and self._stream is not None:
            self._stream.close()
        self._thread.join(10)
        with self._lock:
            self._cut = True  # a chunk still in flight is not written after the rest
            if self._complete:
                return
            written = self._written
        try:
            rest = self._kube.read_pod_log(self._ns, self._pod, self.container,
                                           sandbox.LOG_LIMIT_BYTES)[written:]
        except BuilderError as e:
            self._out.line(f"!! the log of {self.container} is incomplete: {e}")
            return
        self._out.write(rest)


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(self, kube: Kube, transfers: TransferServer, settings: JobSettings,
                 cache_root: Path | None = None) -> None:
        """``cache_root``: where the tenants' caches live (default: ``$PLUGFORGE_CACHE``)."""
        self.kube = kube
        self.transfers = transfers
        self.settings = settings
        self.cache_root = cache_root or default_cache_root()
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self.timings: list[tuple[str, float, float]] = []
        """(container, seen started, log ended) in seconds after the Job's creation: where the
        overhead of the last build to end went (read by bench/ and tests)."""

    def sweep(self) -> list[str]:
        """Delete every build Job in the namespace that this process does not run (left by a
        builder that died or lost the Lease); returns their names. Call it while holding the
        Lease: a standby replica must not reap the leader's builds."""
        try:
            jobs = self.kube.list_jobs(self.settings.namespace, f"{LABEL_MANAGED}={MANAGED_BY}")
        except BuilderError as e:
            raise ExecutorFailed(f"cannot list build Jobs in {self.settings.namespace}: {e}"
                                 ) from e
        with self._lock:
            orphans = [j["metadata"]["name"] for j in jobs
                       if j["metadata"]["name"] not in self._running]
        for name in orphans:
            owner = (j for j in jobs if j["metadata"]["name"] == name)
            meta = next(owner)["metadata"]
            log.warning("deleting build Job %s/%s of build %s (tenant %s, builder %s): no "
                        "builder runs it any more", self.settings.namespace, name,
                        meta.get("annotations", {}).get("plugforge.dev/build-name"),
                        meta.get("annotations", {}).get("plugforge.dev/tenant"),
                        meta.get("annotations", {}).get("plugforge.dev/builder"))
            self._delete(name)
        return orphans

    def run(self, job: BuildJob, workspace: Path, log_path: Path,
            echo: TextIO | None = None) -> None:
        started_at = time.monotonic()
        ns, name = self.settings.namespace, job_name(job.name)
        # (Refuses an unpinned toolchain or a bad tenant name before anything is made.)
        caches = {c: toolchains.cache_dir(self.cache_root, job.tenant, job.toolchain_image, c)
                  for c in job.caches}
        staging = workspace.parent / "transfer"
        staging.mkdir(exist_ok=True)
        source_tar, result_tar = staging / "source.tar", staging / "result.tar"
        out = _Log(log_path, echo)
        pack_workspace(workspace, source_tar, self._caches_to_send(caches, out))
        ttl = job.timeout + 300  # the deadline plus time to pull images and schedule
        source_url = self.transfers.offer(source_tar, ttl)
        result_url, receipt = self.transfers.expect(result_tar, ttl)
        cache_url, cache_receipt = (self.transfers.expect(staging / "cache.tar", ttl)
                                    if caches else ("", None))
        finished = False
        try:
            try:
                with self._lock:
                    self._running.add(name)
                self.kube.create_job(ns, job_manifest(job, self.settings, name, source_url,
                                                      result_url, cache_url,
                                                      self.transfers.max_bytes))
            except BuilderError as e:
                raise ExecutorFailed(f"cannot create the build Job in {ns}: {e}") from e
            out.line(f"==> build Job {ns}/{name} ({job.toolchain_image})")
            verdict = self._follow(job, name, out, started_at, receipt)
            # Ended pods stay until the TTL for inspection; anything else is deleted now.
            finished = verdict.kind in ("succeeded", "step-failed", "tool-missing")
            self._conclude(job, verdict, out, log_path, receipt, workspace, result_tar,
                           name, started_at)
            if cache_receipt is not None:
                self._merge_caches(cache_receipt, caches, out)
        finally:
            self.transfers.revoke(source_url)
            self.transfers.revoke(result_url)
            if cache_url:
                self.transfers.revoke(cache_url)
            out.close()
            if not finished:
                # Timed out, stuck or interrupted: nothing of it keeps running.
                self._delete(name)
            with self._lock:
                self._running.discard(name)
            shutil.rmtree(staging, ignore_errors=True)

    def _caches_to_send(self, caches: Mapping[str, Path], out: _Log) -> dict[str, Path | None]:
        """Each cache's directory, or None (sent empty) when it is missing or over the cap."""
        sent: dict[str, Path | None] = {}
        for cache, directory in caches.items():
            size = tree_size(directory)
            if size > self.settings.max_cache_bytes:
                note = (f"the {cache} cache ({directory}) holds {size} bytes, over the "
                        f"{self.settings.max_cache_bytes} a build is sent: this build starts "
                        "with it empty (prune it, or raise max_cache_bytes and workspace_size)")
                log.warning("%s", note)
                out.line(f"!! {note}")
            sent[cache] = directory if directory.is_dir() and \
                size <= self.settings.max_cache_bytes else None
        return sent

    def _merge_caches(self, receipt: Receipt, caches: Mapping[str, Path], out: _Log) -> None:
        """Add what the succeeded build put in its caches; a refusal is logged, not fatal
        (the build's result stands, the caches stay as they were)."""
        if not receipt.done.is_set() or receipt.error:
            out.line(f"!! the build's cache additions did not arrive "
                     f"({receipt.error or 'no upload'}): caches unchanged")
            return
        try:
            merged = merge_cache(receipt.dest, caches, self.settings.max_result_bytes)
        except (ArtifactError, OSError) as e:
            log.warning("cache additions of a build of tenant %s refused: %s",
                        next(iter(caches.values())).parent.parent.name, e)
            out.line(f"!! cache additions refused, caches unchanged: {e}")
            return
        out.line(f"==> caches: {merged.added} files added, {merged.kept} already cached "
                 "(kept as they were)")

    def _delete(self, name: str) -> None:
        try:
            self.kube.delete_job(self.settings.namespace, name)
        except BuilderError as e:
            log.warning("could not delete build Job %s/%s (the next sweep will): %s",
                        self.settings.namespace, name, e)

    def _follow(self, job: BuildJob, name: str, out: _Log, started_at: float,
                receipt: Receipt) -> Verdict:
        """Stream the fetch's and each step's log in order until the build ends; its verdict.

        A complete result upload ends it at once: the return container runs only after every
        step succeeded, and waiting for the pod's phase costs the kubelet's next status sync
        (about a second).
        """
        ns = self.settings.namespace
        logged = ["fetch", *(f"step-{i}" for i in range(1, len(job.steps) + 1))]
        follower: _Follower | None = None
        followed = 0
        timings: list[tuple[str, float, float]] = []
        guard = started_at + job.timeout + 60  # if the cluster never reports the deadline
        try:
            while True:
                try:
                    current = self.kube.get_job(ns, name)
                    pods = self.kube.list_pods(ns, f"{LABEL_JOB}={name}")
                except BuilderError as e:
                    raise ExecutorFailed(f"lost track of build Job {ns}/{name}: {e}") from e
                pod = max(pods, key=lambda p: p["metadata"]["creationTimestamp"], default=None)
                verdict = judge(current, pod, elapsed=time.monotonic() - started_at,
                                timeout=job.timeout, now=datetime.now(UTC))
                done = verdict.kind != "running" or receipt.done.is_set()
                if follower is not None and (done or ended(pod, follower.container)):
                    follower.finish()
                    timings.append((follower.container, follower.seen,
                                    time.monotonic() - started_at))
                    follower = None
                    followed += 1
                    continue  # the next container may have started meanwhile
                if follower is None and pod and followed < len(logged) \
                        and started(pod, logged[followed]):
                    container = logged[followed]
                    if followed:
                        out.line(f"$ {' '.join(job.steps[followed - 1].argv)}")
                    follower = _Follower(self.kube, ns, pod["metadata"]["name"], container,
                                         out, time.monotonic() - started_at,
                                         max(5.0, guard - time.monotonic()))
                    continue
                if verdict.kind != "running":
                    return verdict
                if receipt.done.is_set() and receipt.error is None:
                    return Verdict("succeeded")
                if time.monotonic() > guard:
                    return Verdict("timeout")
                time.sleep(POLL_SECONDS)
        finally:
            if follower is not None:
                follower.finish()
            self.timings = timings

    def _conclude(self, job: BuildJob, verdict: Verdict, out: _Log, log_path: Path,
                  receipt: Receipt, workspace: Path, result_tar: Path, name: str,
                  started_at: float) -> None:
        ns = self.settings.namespace
        if verdict.kind == "succeeded":
            if not receipt.done.wait(10) or receipt.error:
                raise ExecutorFailed(f"build Job {ns}/{name} ended but its result did not "
                                     f"arrive: {receipt.error or 'no upload'}")
            clear(workspace)
            for note in extract_result(result_tar, workspace, self.settings.max_result_bytes):
                out.line(f"!! {note}")
            out.line(f"==> build Job {ns}/{name} done in {time.monotonic() - started_at:.1f}s"
                     f" (result {receipt.size} bytes)")
            return
        if verdict.kind == "timeout":
            out.line(f"!! killed: build exceeded its {job.timeout:g}s limit")
            tail = sandbox.log_tail(log_path)
            raise BuildTimeout(
                f"build exceeded its time limit of {job.timeout:g}s"
                + (f" during step {verdict.step}" if verdict.step else "")
                + f"; its pod ({ns}/{name}) was stopped. Make the build faster or raise "
                f"timeoutSeconds in the recipe.\n--- last lines of the build log ---\n{tail}",
                timeout=job.timeout, log_tail=tail)
        if verdict.kind == "tool-missing":
            tool = job.steps[verdict.step - 1].argv[0]
            raise ToolMissing(f"build step {verdict.step}: {tool!r} is not in the toolchain "
                              f"image {job.toolchain_image} ({verdict.message})", tool=tool)
        if verdict.kind == "step-failed":
            argv = job.steps[verdict.step - 1].argv
            tail = sandbox.log_tail(log_path)
            raise BuildFailed(
                f"build step {verdict.step} ({' '.join(argv)}) exited with code "
                f"{verdict.code}.\n--- last lines of the build log ---\n{tail}",
                step=verdict.step, exit_code=verdict.code, log_tail=tail)
        raise ExecutorFailed(f"build Job {ns}/{name}: {verdict.message}")
