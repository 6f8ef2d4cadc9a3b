"""The BrokerPlugin controller: watches enqueue keys, ``reconcile(key)`` converges one plugin.

A build request is a PluginBuild in phase Pending (created here on spec or source changes, or by
webhooks and the gRPC API), so requests survive restarts. Per plugin key, reconcile:

1. reads the plugin and its builds; an invalid spec is recorded and nothing is built;
2. hands orphaned Running builds (holder gone) back to Pending: they resume, never duplicate;
3. requests a build when the (generation, commit) pair has not been requested yet;
4. supersedes all but the newest Pending build, claims it (Running), runs the pipeline, records
   the outcome on the build and the plugin, rolls ``image@digest`` out to the target ConfigMap;
5. prunes finished builds beyond ``buildHistoryLimit``.
Transient failures put the build back to Pending with a backoff (``nextAttemptAt``) until
``max_attempts``; permanent ones fail it, and nothing is retried until generation or commit moves.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from builder.build.pipeline import Outcome, Pipeline
from builder.build.source import validate_source
from builder.errors import (
    BuilderError,
    Conflict,
    Gone,
    InternalError,
    InvalidSpec,
    KeyConflict,
    KubeError,
    NotFound,
    TargetMissing,
)
from builder.informers import BuildStore
from builder.kube import API_VERSION, PLUGIN_LABEL, PLUGINS, Kube
from builder.metrics import BuildMetrics
from builder.planning import ACTIVE, needs_request, plan_prune, plan_queue
from builder.queue import Backoff, WorkQueue
from builder.resolving import ResolveCache
from builder.resources import (
    BuildView,
    PluginSpec,
    parse_build,
    parse_plugin,
    rfc3339,
    set_condition,
)
from builder.rollout import configmap as rollout
from builder.rollout.podwatch import PodCache
from builder.rollout.sidecars import SidecarClient
from builder.rollout.tracker import RolloutTracker, report_reverted
from builder.secret_cache import SecretCache
from builder.secrets import Use, check_use, webhook_secret_problem
from builder.settings import Settings
from builder.target_cache import TargetCache
from builder.webhooks.plugins import plugin_source
from plugforge.contract import PluginRelease, plugin_key, render_plugin_release

log = logging.getLogger(__name__)

MIRROR_PRUNE_SECONDS = 3600.0
MIRROR_IDLE_SECONDS = 24 * 3600.0
Obj = dict[str, Any]


def build_name(plugin: str, generation: int, commit: str | None, salt: str = "") -> str:
    """Deterministic for controller requests: creating the same request twice is a 409."""
    digest = hashlib.sha256(f"{generation}/{commit}/{salt}".encode()).hexdigest()[:10]
    return f"{plugin[:200]}-{digest}"


class Controller:
    def __init__(self, kube: Kube, pipeline: Pipeline, settings: Settings,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 sidecars: SidecarClient | None = None) -> None:
        self.kube = kube
        self.sidecars = sidecars
        self.pipeline = pipeline
        self.settings = settings
        self.identity = settings.identity
        self.now = now
        self.queue = WorkQueue()
        self.builds: BuildStore | None = None  # the running term's store (``start``)
        self.metrics = BuildMetrics()
        self.backoff = Backoff(settings.backoff_base_seconds, settings.backoff_max_seconds)
        self.resolved = ResolveCache(settings.resync_seconds * 0.9)
        self.secrets = SecretCache(kube.read_secret)  # webhook Secrets, shared by plugins
        self.targets = TargetCache(kube.get_configmap)  # shared by a ConfigMap's plugins
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self.builds_run = 0
        # Broker pods of plugins with a selector; a pod event re-queues the plugins it matches.
        self.pods = PodCache(kube, lambda key: self.queue.add(key),
                             settings.watch_timeout_seconds)
        self.tracker = RolloutTracker(kube, sidecars, self.pods, lambda: self.now(),
                                      self._patch_status, self._event) \
            if sidecars is not None else None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        # Fresh per term of leadership: a stopped queue stays shut down, and keys queued under
        # the last term are relisted by the watches anyway.
        # Threads keep the stop event and queue of their own term, so a thread of an old
        # term that is still finishing a build cannot pick up work of the new one.
        stop = self._stop = threading.Event()
        queue = self.queue = WorkQueue()
        builds = self.builds = BuildStore(self.kube, queue.add,
                                          self.settings.watch_timeout_seconds)
        # Watch threads are not joined at stop: they block in a read until the next event,
        # check the stop event before acting on it, and are daemons.
        watches: list[tuple[str, Callable[[], None]]] = [
            ("watch-plugins", lambda: self._watch_loop(PLUGINS, stop, queue)),
            ("watch-builds", lambda: builds.run(stop)),
        ]
        joined: list[tuple[str, Callable[[], None]]] = [
            ("resync", lambda: self._resync_loop(stop, queue))]
        joined += [(f"worker-{i}", lambda: self._worker(stop, queue, builds))
                   for i in range(self.settings.workers)]

        def spawn(name: str, target: Callable[[], None]) -> threading.Thread:
            thread = threading.Thread(target=target, name=f"{self.identity}-{name}", daemon=True)
            thread.start()
            return thread

        for name, target in watches:
            spawn(name, target)
        self._threads += [spawn(name, target) for name, target in joined]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait (up to ``timeout`` in all) for the resync and worker threads."""
        self._stop.set()
        self.queue.shutdown()
        self.pods.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # --- event sources: they only enqueue keys ------------------------------------------------

    def _watch_loop(self, plural: str, stop: threading.Event, queue: WorkQueue) -> None:
        resource_version: str | None = None
        while not stop.is_set():
            try:
                if resource_version is None:
                    # Page by page: only keys are kept, never every object at once.
                    listed = ""
                    for items, page_version in self.kube.pages(plural):
                        listed = page_version
                        for obj in items:
                            _enqueue_for(queue, plural, obj)
                    resource_version = listed
                for kind, obj in self.kube.watch(plural, resource_version,
                                                 self.settings.watch_timeout_seconds):
                    if stop.is_set():
                        return
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        resource_version = str(rv)
                    if kind != "BOOKMARK":
                        _enqueue_for(queue, plural, obj)
            except Gone:
                resource_version = None  # too old: relist
            except BuilderError as e:
                if stop.is_set():
                    return  # the client was closed under us at shutdown
                log.warning("watch %s: %s; retrying", plural, e)
                stop.wait(1.0)

    def _resync_loop(self, stop: threading.Event, queue: WorkQueue) -> None:
        next_prune = time.monotonic() + MIRROR_PRUNE_SECONDS
        while not stop.wait(self.settings.resync_seconds):
            urls: list[str] = []
            try:
                for items, _ in self.kube.pages(PLUGINS):
                    for obj in items:
                        _enqueue_for(queue, PLUGINS, obj)
                        urls.append(str((((obj.get("spec") or {}).get("source") or {})
                                         .get("git") or {}).get("url", "")))
            except BuilderError as e:
                log.warning("resync: %s", e)
                continue  # an incomplete list prunes nothing
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + MIRROR_PRUNE_SECONDS
                self._prune_mirrors(urls)

    def _prune_mirrors(self, urls: list[str]) -> None:
        """Git mirrors of repositories no plugin names any more, idle a day, are removed."""
        try:
            removed = self.pipeline.sources.prune(urls, MIRROR_IDLE_SECONDS)
        except OSError as e:
            log.warning("pruning git mirrors: %s", e)
            return
        for mirror in removed:
            log.info("removed git mirror %s: no plugin uses its repository", mirror.name)

    def _worker(self, stop: threading.Event, queue: WorkQueue, builds: BuildStore) -> None:
        # Reconciles read builds from the store: none before it has listed them all.
        while not stop.is_set() and not builds.synced.wait(0.5):
            pass
        while not stop.is_set():
            key = queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                after = self.reconcile(key)
            except BuilderError as e:
                delay = self.backoff.next_delay(key)
                log.warning("reconcile %s: %s; retrying in %.1fs", key, e, delay)
                queue.add_after(key, delay)
            except Exception:
                delay = self.backoff.next_delay(key)
                log.exception("reconcile %s crashed; retrying in %.1fs", key, delay)
                queue.add_after(key, delay)
            else:
                self.backoff.forget(key)
                if after is not None:
                    queue.add_after(key, after)
            finally:
                queue.done(key)

    # --- reconcile ----------------------------------------------------------------------------

    def reconcile(self, key: str) -> float | None:
        """Converge one plugin; returns seconds until it wants to run again (None: on events).

        The plugin is read from the apiserver; its builds come from the store
        (``builder.informers``), which may lag behind by events not yet delivered. Each
        decision stays correct on such a stale list:
        - a build missing from it: requests are named by (generation, commit), so requesting
          again conflicts and is dropped, and ``status.lastRequest`` (read fresh) already
          says it was requested; its creation event queues this key again;
        - a build changed since: every write carries the read ``resourceVersion`` (claiming,
          adopting an orphan, superseding, recording an outcome), gets 409 and is decided
          again on the next reconcile; ``_finish`` gives up when the re-read build has left
          the phase the decision was made on;
        - a build deleted since: deleting it again is a no-op;
        - the builder's own writes are stored as soon as they return, so its next reconcile
          does not see its build still Running and take it for an orphan.
        """
        namespace, _, name = key.partition("/")
        obj = self.kube.get_plugin(namespace, name)
        if obj is None:
            self.resolved.forget(key)
            self.pods.forget(key)
            for build in self._builds_of(namespace, name):
                self.kube.delete_build(namespace, build["metadata"]["name"])
            return None
        try:
            spec = parse_plugin(obj)
            validate_source(spec.source)
        except InvalidSpec as e:
            self._record_invalid(obj, str(e))
            return None

        builds = self._builds_of(namespace, name)
        for build in builds:
            self._adopt_orphan(build)
        views = [parse_build(b) for b in builds]

        if spec.enabled and not any(v.phase in ACTIVE for v in views):
            last = (obj.get("status") or {}).get("lastRequest") or {}
            commit = self._resolve(spec, settled=last.get("generation") == spec.generation)
            if needs_request(spec.generation, commit, views, last):
                self._request(spec, commit)
                builds = self._builds_of(namespace, name)
                views = [parse_build(b) for b in builds]

        plan = plan_queue(views, self.now(), spec.enabled)
        by_name = {b["metadata"]["name"]: b for b in builds}
        for older in plan.supersede:
            self._finish(by_name[older], "Failed", reason="Superseded",
                         message="superseded by a newer build request for this plugin")
        if plan.run is None:
            self._prune(spec, views)
            if not any(v.phase in ACTIVE for v in views):
                self._sync_release(obj, spec)
                self._check_webhook(obj, spec)
                self._ensure_observed(obj, spec)
                again = self.tracker.track(obj, spec) if self.tracker else None
                if again is not None:
                    return min(again, plan.wait_seconds or again)
            return plan.wait_seconds
        self._run(obj, spec, by_name[plan.run])
        self._prune(spec, [parse_build(b) for b in self._builds_of(namespace, name)])
        return 0.0  # look again: more requests may have arrived while building

    # --- steps --------------------------------------------------------------------------------

    def _builds_of(self, namespace: str, plugin: str) -> list[Obj]:
        """The plugin's builds in creation order: from the store of a running term, else
        (``reconcile`` called outside ``start``) from the apiserver."""
        store = self.builds
        builds = store.builds(namespace, plugin) if store is not None and store.synced.is_set() \
            else self.kube.list_builds(namespace, plugin)
        return sorted(builds, key=_created)

    def _stored(self, build: Obj) -> Obj:
        """``build`` as the apiserver returned it from a write, stored for the next reads."""
        if self.builds is not None:
            self.builds.put(build)
        return build

    def _adopt_orphan(self, build: Obj) -> bool:
        """A Running build that no thread of this leader is running lost its builder (another
        replica, or an earlier term of this one): hand it back to Pending."""
        view = parse_build(build)
        if view.phase != "Running":
            return False
        with self._running_lock:
            if view.holder == self.identity and view.name in self._running:
                return False
        if view.attempts >= self.settings.max_attempts:
            # Its builder vanished every time (e.g. OOM-killed by this very build): resuming
            # it again would loop forever and block the plugin's queue.
            with contextlib.suppress(Conflict, NotFound, KubeError):
                self._finish(build, "Failed", reason="BuilderLost", message=(
                    f"the builder running it ({view.holder}) stopped during each of its "
                    f"{view.attempts} attempts (killed for memory or time?); not resumed "
                    "again: check the build's log, then push a fix or trigger a new build"))
            log.warning("build %s/%s lost its builder %d times; failed", view.namespace,
                        view.name, view.attempts)
            return True
        status = dict(build.get("status") or {})
        status.update(phase="Pending", holder="",
                      message=f"resumed: builder {view.holder} stopped while building")
        build["status"] = status
        with contextlib.suppress(Conflict):
            build.update(self._stored(self.kube.replace_build_status(build)))
        log.info("resuming orphaned build %s/%s (was held by %s)", view.namespace, view.name,
                 view.holder)
        return True

    def _request(self, spec: PluginSpec, commit: str | None) -> None:
        """Create the ResourceChange request for (generation, commit); idempotent by name."""
        name = build_name(spec.name, spec.generation, commit)
        body = {
            "apiVersion": API_VERSION, "kind": "PluginBuild",
            "metadata": {
                "name": name, "namespace": spec.namespace,
                "labels": {PLUGIN_LABEL: spec.name[:63].rstrip("-_.")},
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": "BrokerPlugin",
                                     "name": spec.name, "uid": spec.uid,
                                     "blockOwnerDeletion": False}],
            },
            "spec": {"plugin": spec.name, "pluginGeneration": spec.generation,
                     "trigger": {"type": "ResourceChange", "user": "plugforge-builder"},
                     **({"commit": commit} if commit else {})},
        }
        with contextlib.suppress(Conflict):
            self._stored(self.kube.create_build(spec.namespace, body))
        self._patch_status(spec, {"lastRequest": {"generation": spec.generation,
                                                  "commit": commit or ""}})

    def _resolve(self, spec: PluginSpec, settled: bool) -> str | None:
        """The ref's commit, re-fetched on spec changes and at most once per resync period per
        source (``builder.resolving``: plugins of one repository and ref share a fetch);
        ``settled``: a build was already requested for this generation (not a new plugin)."""
        def fetch() -> str | None:
            try:
                return self.pipeline.resolve(spec)
            except BuilderError as e:
                log.info("resolving %s: %s", spec.key, e)
                return None

        src = spec.source
        return self.resolved.resolve(spec.key, spec.generation, (
            spec.namespace, src.url, src.ref, src.revision, src.secret), fetch, settled)

    def _run(self, obj: Obj, spec: PluginSpec, build: Obj) -> None:
        view = parse_build(build)
        with self._running_lock:
            self._running.add(view.name)
        try:
            self._run_claimed(obj, spec, build, view, self._stop)
        finally:
            with self._running_lock:
                self._running.discard(view.name)

    def _run_claimed(self, obj: Obj, spec: PluginSpec, build: Obj, view: BuildView,
                     stop: threading.Event) -> None:
        started = self.now()
        status = dict(build.get("status") or {})
        status.update(phase="Running", holder=self.identity, attempts=view.attempts + 1,
                      startedAt=rfc3339(started), nextAttemptAt=None, reason="", message="")
        build["status"] = {k: v for k, v in status.items() if v is not None}
        try:
            build = self._stored(self.kube.replace_build_status(build))
        except (Conflict, NotFound):
            return  # someone else changed it; the next reconcile sees the new state
        self._event(obj, "Normal", "BuildStarted", f"build {view.name} started "
                    f"(attempt {view.attempts + 1})")
        self._patch_status(spec, {"latestBuild": _latest(
            view.name, "Running", view.commit, startedAt=rfc3339(started))})
        log_path = self.log_path(spec.namespace, view.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        clock = time.monotonic()
        try:
            with open(log_path, "a", encoding="utf-8") as log_file:
                outcome = self.pipeline.run(spec, view.commit, view.name, log_file)
        except Exception as e:
            self.builds_run += 1
            if not isinstance(e, BuilderError):
                log.exception("build %s/%s crashed", view.namespace, view.name)
                e = InternalError(f"the builder crashed: {type(e).__name__}: {e}; this is a "
                                  "bug in plugforge, please report it with the build log")
            self.metrics.record("failed", e.reason, time.monotonic() - clock)
            if not self._abandoned(view, stop):
                self._failed(obj, spec, build, e, started, log_path)
            return
        self.builds_run += 1
        self.metrics.record("succeeded", "CacheHit" if outcome.cache_hit else "Built",
                            time.monotonic() - clock, outcome.cache_hit)
        if not self._abandoned(view, stop):
            self._succeeded(obj, spec, build, outcome, started, log_path)

    def _abandoned(self, view: BuildView, stop: threading.Event) -> bool:
        """Stopped (shutdown or lost Lease) while building: leave the build Running.

        The next leader sees a Running build it does not hold and resumes it; a finished push
        makes that a content-key hit. Recording here could race that leader.
        """
        if stop.is_set():
            log.warning("stopped while building %s/%s; the next leader resumes it",
                        view.namespace, view.name)
            return True
        return False

    def log_path(self, namespace: str, build: str) -> Path:
        return self.settings.log_dir / namespace / f"{build}.log"

    def _succeeded(self, obj: Obj, spec: PluginSpec, build: Obj, outcome: Outcome,
                   started: datetime, log_path: Path) -> None:
        name = build["metadata"]["name"]
        finished = self.now()
        self._finish(build, "Succeeded", reason="BuildSucceeded",
                     message=("content key already built; reused" if outcome.cache_hit
                              else "built and pushed"),
                     extra={"commit": outcome.commit, "shortCommit": outcome.commit[:12],
                            **({"ref": outcome.ref} if outcome.ref else {}),
                            "contentKey": outcome.content_key, "cacheHit": outcome.cache_hit,
                            "image": outcome.image, "digest": outcome.digest,
                            "shortDigest": outcome.digest.removeprefix("sha256:")[:12],
                            "pluginName": outcome.plugin_name,
                            "pluginVersion": outcome.plugin_version,
                            "durationSeconds": round((finished - started).total_seconds(), 3),
                            "logTail": _tail(log_path, self.settings.log_tail_lines)})
        latest = {"name": name, "phase": "Succeeded", "commit": outcome.commit,
                  "ref": outcome.ref or None,
                  "shortCommit": outcome.commit[:12], "image": outcome.image,
                  "digest": outcome.digest,
                  "shortDigest": outcome.digest.removeprefix("sha256:")[:12],
                  "startedAt": rfc3339(started), "finishedAt": rfc3339(finished), "reason": ""}
        conditions = list((obj.get("status") or {}).get("conditions") or [])
        stamp = rfc3339(finished)
        conditions = set_condition(conditions, "Built", "True", "BuildSucceeded",
                                   f"{name}: {outcome.image} from commit {outcome.commit[:12]}",
                                   stamp, spec.generation)
        patch: Obj = {"latestBuild": latest, "observedGeneration": spec.generation}
        # In waves to the selected pods (builder.rollout.waves); None: no pod matches yet.
        staged: Obj | BuilderError | None = None
        if spec.configmap and spec.uses_canary and self.tracker is not None:
            try:
                staged = self.tracker.begin(spec, rollout.release_for(spec, outcome, name), name,
                                            outcome.digest)
            except BuilderError as e:
                staged = e
        if isinstance(staged, BuilderError):
            conditions = self._rollout_failed(obj, conditions, spec, staged, stamp)
        elif staged is not None:
            current = (obj.get("status") or {}).get("currentImage") or "nothing"
            patch["rollout"] = staged
            conditions = set_condition(
                conditions, "Ready", "Unknown", "CanaryInProgress",
                f"{outcome.image} rolling out in {staged['waves']} wave(s)"
                + (", canary first" if spec.canary.enabled else "")
                + f"; the other pods keep {current}", stamp, spec.generation)
        elif spec.configmap and spec.rollout == "Automatic":
            try:
                report_reverted(self._event, obj, spec,
                                rollout.write_release(self.kube, spec, outcome, name))
            except BuilderError as e:
                conditions = self._rollout_failed(obj, conditions, spec, e, stamp)
            else:
                patch.update(currentImage=outcome.image, currentCommit=outcome.commit,
                             currentBuild=name, currentTarget=spec.configmap,
                             currentPluginName=outcome.plugin_name or spec.name)
                conditions = set_condition(conditions, "Ready", "True", "RolledOut",
                                           f"{outcome.image} written to ConfigMap "
                                           f"{spec.configmap}", stamp, spec.generation)
        else:
            conditions = set_condition(conditions, "Ready", "True", "BuiltNotRolledOut",
                                       "rollout is Manual (or no target): the image is built; "
                                       "roll it out yourself", stamp, spec.generation)
        patch["conditions"] = conditions
        self._patch_status(spec, patch)
        self._event(obj, "Normal", "BuildSucceeded",
                    f"{name}: {outcome.image}" + (" (cache hit)" if outcome.cache_hit else ""))

    def _rollout_failed(self, obj: Obj, conditions: list[Obj], spec: PluginSpec,
                        error: BuilderError, stamp: str) -> list[Obj]:
        """``Ready=False``: ``Conflict`` when another BrokerPlugin owns the key (with a Warning
        Event), else ``RolloutFailed``."""
        own = isinstance(error, (KeyConflict, TargetMissing))
        reason = error.reason if own else "RolloutFailed"
        message = str(error) if own else f"writing {spec.configmap}: {error}"
        if own:
            self._event(obj, "Warning", reason, message)
        return set_condition(conditions, "Ready", "False", reason, message, stamp,
                             spec.generation)

    def _failed(self, obj: Obj, spec: PluginSpec, build: Obj, error: BuilderError,
                started: datetime, log_path: Path) -> None:
        name = build["metadata"]["name"]
        attempts = int((build.get("status") or {}).get("attempts") or 1)
        with open(log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"!! {error.reason}: {error}\n")
        tail = getattr(error, "log_tail", "") or _tail(log_path, self.settings.log_tail_lines)
        stamp = rfc3339(self.now())
        retry = error.transient and attempts < self.settings.max_attempts
        commit = parse_build(build).commit or error.commit
        which = {"commit": commit, "shortCommit": commit[:12]} if commit else {}
        if retry:
            delay = self.backoff.delay_for(attempts)
            due = self.now() + timedelta(seconds=delay)
            self._finish(build, "Pending", reason=error.reason,
                         message=f"attempt {attempts} failed: {error}; retrying at "
                                 f"{rfc3339(due)}",
                         extra={"nextAttemptAt": rfc3339(due), "holder": "", "logTail": tail,
                                **which})
            summary = (f"{name} attempt {attempts}/{self.settings.max_attempts} failed "
                       f"({error.reason}); retrying in {delay:g}s: {error}")
        else:
            self._finish(build, "Failed", reason=error.reason, message=str(error),
                         extra={"logTail": tail, **which,
                                "durationSeconds": round(
                                    (self.now() - started).total_seconds(), 3)})
            summary = f"{name} failed ({error.reason}): {error}"
        current = (obj.get("status") or {}).get("currentImage")
        if current:
            summary += f"; {current} stays rolled out"
        conditions = list((obj.get("status") or {}).get("conditions") or [])
        conditions = set_condition(conditions, "Built", "False", error.reason, summary, stamp,
                                   spec.generation)
        conditions = set_condition(conditions, "Ready", "False", error.reason, summary, stamp,
                                   spec.generation)
        self._patch_status(spec, {
            "observedGeneration": spec.generation, "conditions": conditions,
            "latestBuild": _latest(name, "Pending" if retry else "Failed",
                                   commit, startedAt=rfc3339(started),
                                   finishedAt=stamp, reason=error.reason)})
        self._event(obj, "Warning", "BuildFailed", summary)

    def _finish(self, build: Obj, phase: str, *, reason: str, message: str,
                extra: Mapping[str, Any] | None = None) -> None:
        """Write the build's outcome; on 409 re-read it and write again, unless it has left
        the phase this was decided on (a stale read: the next reconcile decides anew)."""
        decided_on = parse_build(build).phase
        for _ in range(5):
            status = dict(build.get("status") or {})
            status.update(phase=phase, reason=reason, message=message[:32000],
                          **(extra or {}))
            if phase in ("Succeeded", "Failed"):
                status.update(finishedAt=rfc3339(self.now()), holder="")
                status.pop("nextAttemptAt", None)
            build["status"] = status
            try:
                self._stored(self.kube.replace_build_status(build))
                return
            except Conflict:
                fresh = self.kube.get_build(build["metadata"]["namespace"],
                                            build["metadata"]["name"])
                if fresh is None or parse_build(fresh).phase != decided_on:
                    return
                build = fresh
            except NotFound:
                return
        raise KubeError(f"could not record the outcome of {build['metadata']['name']}")

    def _record_invalid(self, obj: Obj, message: str) -> None:
        meta = obj["metadata"]
        generation = int(meta.get("generation") or 0)
        stamp = rfc3339(self.now())
        conditions = list((obj.get("status") or {}).get("conditions") or [])
        conditions = set_condition(conditions, "Built", "False", "InvalidSpec", message, stamp,
                                   generation)
        conditions = set_condition(conditions, "Ready", "False", "InvalidSpec", message, stamp,
                                   generation)
        self.kube.patch_plugin_status(meta["namespace"], meta["name"],
                                      {"observedGeneration": generation,
                                       "conditions": conditions})

    def _sync_release(self, obj: Obj, spec: PluginSpec) -> None:
        """Keep the rolled-out release in step with spec fields that need no build.

        ``enabled: false`` requests no build, yet the sidecars must see it: disabling always
        takes effect. With a canary strategy only a direct edit of the key is undone here (the
        release the builder last wrote, exactly): a spec change requests a build (a content-key
        hit for settings alone), whose release is canaried. Otherwise the release is only
        rewritten while the latest build succeeded, so a spec whose build failed changes nothing
        that is rolled out.
        """
        status = obj.get("status") or {}
        image, name = status.get("currentImage"), status.get("currentPluginName")
        if not (image and name and spec.configmap and spec.rollout == "Automatic"):
            return
        if spec.enabled and (status.get("latestBuild") or {}).get("phase") != "Succeeded":
            return
        canary = spec.enabled and spec.uses_canary and self.tracker is not None
        release = rollout.current_release(spec, name, image, status.get("currentCommit", ""),
                                          status.get("currentBuild", ""))
        if self._in_place(spec, release):
            return
        self.targets.forget(spec.namespace, spec.configmap)  # about to be read and written
        try:
            report_reverted(self._event, obj, spec, (rollout.restore if canary else rollout.write)(
                self.kube, spec, release))
        except BuilderError as e:
            log.warning("syncing %s into %s: %s", spec.key, spec.configmap, e)

    def _in_place(self, spec: PluginSpec, release: PluginRelease) -> bool:
        """Is ``release`` already in the target, as the builder wrote it? Read through
        ``self.targets`` (a few seconds old at most): on a stale "yes" a direct edit made in
        those seconds is written back at the plugin's next reconcile instead of this one, as
        an edit made just after it would be (the builder does not watch ConfigMaps); a "no" or
        an error goes the normal way, which reads afresh and writes optimistically."""
        if not spec.configmap:
            return False
        try:
            target = self.targets.get(spec.namespace, spec.configmap)
        except BuilderError:
            return False
        return target is not None and target.holds(
            plugin_key(release.name), render_plugin_release(release), spec.name)

    def _check_webhook(self, obj: Obj, spec: PluginSpec) -> None:
        """The ``Webhook`` condition of a plugin with ``spec.webhook.secretRef``: False (and no
        webhook builds, the endpoint refuses them too) while the Secret is missing, not usable
        by the builder, or holds a placeholder or too short a value."""
        source = plugin_source(obj)
        if source is None or source.secret is None:
            return
        ref = source.secret
        where = f"Secret {ref.namespace}/{ref.name} key {ref.key!r} (webhook.secretRef)"
        try:
            data = check_use(self.secrets.read(ref.namespace, ref.name), Use.WEBHOOK)
            problem = webhook_secret_problem(data.get(ref.key))
        except NotFound:
            problem = ("WebhookSecretMissing", "the Secret does not exist; create it: kubectl "
                       f"-n {ref.namespace} create secret generic {ref.name} "
                       f"--from-literal={ref.key}=$(openssl rand -hex 32)")
        except BuilderError as e:
            if e.transient:
                return
            problem = (e.reason, str(e))
        if problem is None:
            status, reason, message = "True", "SecretReady", \
                f"deliveries signed with {where} are accepted"
        else:
            status, reason = "False", problem[0]
            message = f"{where}: {problem[1]}; webhook deliveries for this plugin are refused"
        old = list((obj.get("status") or {}).get("conditions") or [])
        new = set_condition(old, "Webhook", status, reason, message, rfc3339(self.now()),
                            spec.generation)
        if new != old:
            self._patch_status(spec, {"conditions": new})
            if status == "False":
                self._event(obj, "Warning", reason, message)

    def _ensure_observed(self, obj: Obj, spec: PluginSpec) -> None:
        status = obj.get("status") or {}
        if status.get("observedGeneration") == spec.generation:
            return
        last = (status.get("lastRequest") or {})
        if last.get("generation") != spec.generation:
            return  # a build for this generation has not been decided yet
        self._patch_status(spec, {"observedGeneration": spec.generation})

    def _prune(self, spec: PluginSpec, builds: list[BuildView]) -> None:
        for name in plan_prune(builds, spec.history_limit):
            self.kube.delete_build(spec.namespace, name)
            self.log_path(spec.namespace, name).unlink(missing_ok=True)

    def _patch_status(self, spec: PluginSpec, status: Mapping[str, Any]) -> None:
        self.kube.patch_plugin_status(spec.namespace, spec.name, status)

    def _event(self, obj: Obj, type_: str, reason: str, note: str) -> None:
        try:
            self.kube.emit_event(obj, type_=type_, reason=reason, note=note, action="Build",
                                 now=self.now().astimezone(UTC).strftime(
                                     "%Y-%m-%dT%H:%M:%S.%fZ"), reporter=self.identity)
        except BuilderError as e:
            log.warning("event %s for %s: %s", reason, obj["metadata"]["name"], e)


def _latest(name: str, phase: str, commit: str | None, **fields: str) -> Obj:
    """``status.latestBuild`` for a build without an image (yet): the status is merge-patched,
    so fields of an earlier build are nulled rather than left behind under this name."""
    return {"name": name, "phase": phase, "commit": commit,
            "shortCommit": commit[:12] if commit else None, "ref": None, "image": None,
            "digest": None,
            "shortDigest": None, "startedAt": None, "finishedAt": None, "reason": None,
            **fields}


def _enqueue_for(queue: WorkQueue, plural: str, obj: Mapping[str, Any]) -> None:
    """Watches only enqueue keys: a plugin's own key, or the plugin a build belongs to."""
    meta = obj.get("metadata") or {}
    if plural == PLUGINS:
        queue.add(f"{meta.get('namespace')}/{meta.get('name')}")
    else:
        plugin = (obj.get("spec") or {}).get("plugin")
        if plugin:
            queue.add(f"{meta.get('namespace')}/{plugin}")


def _created(build: Mapping[str, Any]) -> tuple[str, str]:
    meta = build.get("metadata") or {}
    return str(meta.get("creationTimestamp", "")), str(meta.get("name", ""))


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-16000:]
