"""The executor: validate, pull, apply the plan through the adapter, verify, probe, roll back.

One ``reconcile(reason)`` reads the whole desired state and converges; it never depends on what
woke it. The result says when to try again (``retry_after``), so the loop can back off while
the desired state stays the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plugforge.contract import (
    BROKER_KEY,
    ContractError,
    DesiredState,
    Document,
    Probe,
    content_hash,
    parse_desired_state,
    plugin_key,
)
from plugforge.oci.errors import OciError, PullAbandoned
from sidecar import last_good
from sidecar.adapters.base import (
    AdapterError,
    BrokerAdapter,
    BrokerUnavailable,
    Observed,
    SettingsRejected,
)
from sidecar.desired import NotSynced, SourceError
from sidecar.images import ImageRefused
from sidecar.plan import Action, ActionKind, Applied, Classifier, plan
from sidecar.probes import ProbeResult
from sidecar.state import ApplyEvent, EventKind, Phase, PluginStatus, SidecarState

log = logging.getLogger("plugforge.sidecar")

ReadDocuments = Callable[[], Sequence[Document]]
PullImage = Callable[[str], Path]           # repository@digest -> extracted image tree
RunProbe = Callable[[Probe], ProbeResult]
EventSink = Callable[[ApplyEvent], None]


class ApplyFailed(Exception):
    """One step of applying failed; the message says which and why."""


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    retry_after: float | None = None  # None: wait for the next change or resync
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0

    def delay(self, attempt: int) -> float:
        return float(min(self.initial * (2 ** max(attempt - 1, 0)), self.maximum))


def classifier_for(adapter: BrokerAdapter) -> Classifier:
    return Classifier(adapter.classify, adapter.plugin_change_class(), adapter.write_only,
                      adapter.normalize)


class Reconciler:
    def __init__(self, adapter: BrokerAdapter, read_documents: ReadDocuments,
                 pull_image: PullImage, run_probe: RunProbe, *,
                 allow_broker_restart: bool = False, backoff: Backoff = Backoff(),
                 on_event: EventSink = lambda _e: None,
                 clock: Callable[[], float] = time.monotonic,
                 state_file: Path | None = None,
                 policy_version: Callable[[], str] = lambda: "") -> None:
        self.adapter = adapter
        self._read = read_documents
        # An adapter may ask the broker for its state before the files are read and parsed,
        # so the answer comes meanwhile (MosquittoAdapter.prefetch); observe() takes it.
        self._prefetch: Callable[[], None] = getattr(adapter, "prefetch", lambda: None)
        self._pull = pull_image
        self._probe = run_probe
        self._allow_restart = allow_broker_restart
        self._backoff = backoff
        self._emit = on_event
        self._clock = clock
        self._lock = threading.Lock()
        self.state = SidecarState()
        self._last_good: DesiredState | None = None
        self._failed_hash = ""
        self._failures = 0
        self._rejected_hash = ""
        # The documents a failure while applying is attributed to (state.failed_keys): what
        # the step that failed came from, narrowed as applying goes on.
        self._blame: tuple[str, ...] = ()
        self._policy_version = policy_version
        # (desired hash, policy version) whose image was refused for good: not pulled again
        # until one of the two changes.
        self._refused: tuple[str, str] | None = None
        self._good_phase = Phase.APPLIED
        self._probed_instance = ""
        self._probe_results: dict[str, tuple[ProbeResult, ...]] = {}
        self._state_file = state_file
        self._restore()

    # --- public -----------------------------------------------------------------------------

    def reconcile(self, reason: str) -> Outcome:
        with self._lock:
            return self._reconcile(reason)

    def dry_run(self, documents: Sequence[Document] | None = None) -> list[Action]:
        """The plan for the current (or a proposed) desired state; changes nothing."""
        desired = self._validated(self._read() if documents is None else documents)
        observed = self.adapter.observe()
        if not observed.reachable:
            raise BrokerUnavailable(observed.detail or "broker not reachable")
        return plan(desired, observed, self.state.last_applied, classifier_for(self.adapter))

    # --- the loop body ----------------------------------------------------------------------

    def _reconcile(self, reason: str) -> Outcome:
        started = self._clock()
        self._prefetch()
        try:
            documents = self._read()
            desired = self._validated(documents)
        except NotSynced as e:
            log.info("decision=wait reason=%r detail=%r", reason, str(e))
            return Outcome(self.state.phase, retry_after=self._backoff.initial)
        except (ContractError, SourceError, AdapterError) as e:
            read = self._safe_read()
            return self._reject(reason, documents_hash(read), str(e), self._invalid_keys(read))
        self.state.desired = desired
        self.state.desired_hash = desired.content_hash

        observed = self.adapter.observe()
        self.state.observed = observed
        if not observed.reachable:
            self._set_ready(False, f"broker not reachable: {observed.detail}")
            self.state.phase = Phase.UNAVAILABLE
            log.info("decision=wait reason=%r detail=%r", "broker not reachable",
                     observed.detail)
            return Outcome(Phase.UNAVAILABLE, retry_after=self._backoff.initial)

        actions = plan(desired, observed, self.state.last_applied, classifier_for(self.adapter))
        self.state.last_plan = tuple(actions)
        instance_changed = observed.instance != self._probed_instance
        # A restart we may not perform is already reported: planning it again is no news.
        nothing_new = not actions or (not self._allow_restart and all(
            a.kind is ActionKind.RESTART_BROKER for a in actions))
        if nothing_new and not instance_changed and self.state.applied_once and \
                desired.content_hash == self.state.last_applied.content_hash:
            log.debug("decision=noop reason=%r hash=%s", reason, desired.content_hash)
            if self.state.phase in (Phase.REJECTED, Phase.FAILED, Phase.ROLLED_BACK,
                                    Phase.UNAVAILABLE):
                # The desired state is the last good one again: nothing to do, nothing wrong.
                log.info("decision=recovered reason=%r hash=%s", reason, desired.content_hash)
                self.state.phase = self._good_phase
                self.state.last_error = ""
                self.state.failed_hash = ""
                self.state.failed_keys = ()
                self._rejected_hash = self._failed_hash = ""
                self._failures = 0
                self._refused = None
                self.state.refused_image = self.state.refused_reason = ""
                # e.g. back from Unavailable with nothing to do (EMQX restarts its plugins
                # itself): readiness must not keep saying "not reachable".
                self._update_readiness(desired, observed)
            return Outcome(self.state.phase)
        if self._refused == (desired.content_hash, self._policy_version()):
            log.debug("decision=refused-known reason=%r image=%s", reason,
                      self.state.refused_image)
            return Outcome(Phase.REJECTED)
        return self._apply(reason, desired, actions, started, documents)

    def _restore(self) -> None:
        """The last good state a previous run of this sidecar saved (``sidecar.last_good``):
        what a failed first apply after a restart rolls back to."""
        saved = last_good.load(self._state_file) if self._state_file else None
        if saved is None:
            return
        documents, applied = saved
        try:
            self._last_good = self._validated(documents)
        except (ContractError, AdapterError) as e:
            log.warning("decision=last-good-ignored error=%r", str(e))
            return
        self.state.last_applied = applied
        log.info("decision=last-good-restored hash=%s", applied.content_hash)

    def _apply(self, reason: str, desired: DesiredState, actions: list[Action],
               started: float, documents: Sequence[Document] = ()) -> Outcome:
        for action in actions:
            log.info("decision=plan action=%r", action.describe())
        self._blame = action_keys(actions)
        try:
            # Every image before any change: a refused or unreachable image changes nothing.
            self._pull_all(actions)
        except PullAbandoned as e:
            log.info("decision=abandon reason=%r detail=%r", "a newer desired state arrived",
                     str(e))
            return Outcome(self.state.phase)
        except ImageRefused as e:
            return self._refuse(reason, desired, e, started)
        except (OciError, OSError) as e:
            return self._fail(reason, desired, actions, started, e, changed=False)
        try:
            restart_pending = self._execute(actions)
            observed = self._verify(desired)
            self._run_probes(desired, observed)
        except SettingsRejected as e:
            blame = self._blame
            self._roll_back(desired)  # what earlier actions of this plan changed
            return self._reject(reason, desired.content_hash, str(e), blame)
        except ImageRefused as e:  # pulled again (evicted meanwhile) and refused this time
            self._roll_back(desired)
            return self._refuse(reason, desired, e, started)
        except (AdapterError, ApplyFailed, BrokerUnavailable, OSError, OciError) as e:
            return self._fail(reason, desired, actions, started, e)

        self._failures = 0
        self._failed_hash = ""
        self._refused = None
        self.state.refused_image = self.state.refused_reason = ""
        self._last_good = desired
        self.state.last_applied = Applied(
            dict(desired.config), {p.name: p.digest for p in desired.plugins if p.enabled},
            desired.content_hash)
        if self._state_file is not None:
            last_good.save(self._state_file, documents, self.state.last_applied)
        self.state.applied_once = True
        self.state.last_error = ""
        self.state.failed_hash = ""
        self.state.failed_keys = ()
        self.state.restart_required = restart_pending
        self.state.phase = Phase.RESTART_REQUIRED if restart_pending else Phase.APPLIED
        self._good_phase = self.state.phase
        self._update_readiness(desired, self.state.observed)
        kind = EventKind.RESTART_REQUIRED if restart_pending else EventKind.APPLIED
        message = (f"applied {len(actions)} action(s); "
                   + ("plugin changes wait for a broker restart (--allow-broker-restart is off)"
                      if restart_pending else "broker converged"))
        self._event(kind, reason, message, desired.content_hash, started, actions)
        return Outcome(self.state.phase, actions=tuple(actions))

    def _pull_all(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if action.kind is not ActionKind.INSTALL_PLUGIN:
                continue
            image = action.image or ""
            tree = self._pull(image)
            if not (tree / "plugin" / action.target).is_dir():
                # Name both: a release named differently from the artifact is a common slip.
                held = sorted(p.name for p in (tree / "plugin").iterdir()) \
                    if (tree / "plugin").is_dir() else []
                raise ImageRefused(image, "WrongArtifact", f"the release names plugin "
                                   f"{action.target!r}, but the image holds "
                                   f"{', '.join(f'plugin/{h}/' for h in held) or 'no plugin/'}: "
                                   f"not a build of plugin {action.target}", final=True)

    def _execute(self, actions: list[Action]) -> bool:
        """Perform ``actions`` in order; True when a needed broker restart was not performed."""
        config: dict[str, str | None] = {}
        restart_pending = False
        for action in actions:
            self._blame = action_keys([action])
            if action.kind is ActionKind.INSTALL_PLUGIN:
                tree = self._pull(action.image or "")
                self.adapter.install_plugin(action.target, action.value or "", tree)
            elif action.kind is ActionKind.DISABLE_PLUGIN:
                self.adapter.disable(action.target)
            elif action.kind is ActionKind.ENABLE_PLUGIN:
                self.adapter.enable(action.target, action.value or "", action.settings)
            elif action.kind is ActionKind.SET_CONFIG:
                config[action.target] = action.value
            elif action.kind is ActionKind.UNSET_CONFIG:
                config[action.target] = None
        if config:
            self._blame = (BROKER_KEY,)
            self.adapter.apply_config(config)
        # A broker that fails to come back, or to converge, may owe it to any of the changes.
        self._blame = action_keys(actions)
        if any(a.kind is ActionKind.RESTART_BROKER for a in actions):
            if self._allow_restart:
                log.info("decision=restart reason=%r", "staged changes need a broker restart")
                self.adapter.restart()
            else:
                restart_pending = True
        return restart_pending

    def _verify(self, desired: DesiredState) -> Observed:
        observed = self.adapter.observe()
        self.state.observed = observed
        if not observed.reachable:
            raise BrokerUnavailable(f"broker stopped answering while applying: "
                                    f"{observed.detail}")
        applied = Applied(dict(desired.config), {}, desired.content_hash)
        remaining = [a for a in plan(desired, observed, applied, classifier_for(self.adapter))
                     if not (a.kind is ActionKind.RESTART_BROKER and not self._allow_restart)]
        if remaining:
            self._blame = action_keys(remaining)
            raise ApplyFailed("the broker did not converge; still to do: "
                              + "; ".join(a.describe() for a in remaining))
        return observed

    def _run_probes(self, desired: DesiredState, observed: Observed) -> None:
        self._probe_results = {}
        for release in desired.plugins:
            seen = observed.plugins.get(release.name)
            if not release.enabled or seen is None or seen.digest != release.digest:
                continue  # not running yet (restart pending): nothing to probe
            results = tuple(self._probe(p) for p in release.probes)
            self._probe_results[release.name] = results
            failed = [r for r in results if not r.passed]
            if failed:
                self._blame = (plugin_key(release.name),)
                raise ApplyFailed(f"plugin {release.name} {release.digest}: "
                                  + "; ".join(str(r) for r in failed))
        self._probed_instance = observed.instance

    def _fail(self, reason: str, desired: DesiredState, actions: list[Action], started: float,
              error: BaseException, changed: bool = True) -> Outcome:
        self._count_failure(desired)
        message = f"{type(error).__name__}: {error}"
        log.warning("decision=%s reason=%r error=%r", "rollback" if changed else "fail",
                    reason, message)
        blame = self._blame
        rolled_back = changed and self._roll_back(desired)
        self.state.last_error = message
        self.state.failed_hash = desired.content_hash
        self.state.failed_keys = blame
        changed_anything = any(a.kind is not ActionKind.INSTALL_PLUGIN for a in actions)
        if rolled_back:
            self.state.phase = Phase.ROLLED_BACK
            kind = EventKind.ROLLED_BACK
            message += "; rolled back to the last good state"
        else:
            self.state.phase = Phase.FAILED
            kind = EventKind.FAILED
            if not changed:
                message += "; nothing was changed, retrying"
            elif changed_anything and self._last_good is None:
                message += "; no earlier good state to roll back to"
        self._update_readiness(self._last_good, self.state.observed)
        self._event(kind, reason, message, desired.content_hash, started, actions)
        return Outcome(self.state.phase, retry_after=self._backoff.delay(self._failures),
                       actions=tuple(actions))

    def _count_failure(self, desired: DesiredState) -> None:
        if desired.content_hash == self._failed_hash:
            self._failures += 1
        else:
            self._failed_hash, self._failures = desired.content_hash, 1

    def _refuse(self, reason: str, desired: DesiredState, refused: ImageRefused,
                started: float) -> Outcome:
        """An image refused before anything changed: ``Rejected`` with the refused digest; a
        final refusal is remembered (no pull, no retry until the desired state or the trust
        policy changes), any other is retried with backoff."""
        retry_after = None
        if refused.final:
            self._refused = (desired.content_hash, self._policy_version())
        else:
            self._count_failure(desired)
            retry_after = self._backoff.delay(self._failures)
        self.state.phase = Phase.REJECTED
        self.state.last_error = str(refused)
        self.state.failed_hash = self.state.desired_hash = desired.content_hash
        self.state.failed_keys = tuple(sorted({plugin_key(p.name) for p in desired.plugins
                                               if p.digest == refused.digest}))
        self.state.refused_image, self.state.refused_reason = refused.image, refused.reason
        self._update_readiness(self._last_good, self.state.observed)
        # What is desired (and refused), not the last good state's digests.
        self.state.plugins = self._plugin_statuses(desired, self.state.observed,
                                                   refused.digest)[0]
        if desired.content_hash != self._rejected_hash:
            self._rejected_hash = desired.content_hash
            log.warning("decision=reject-image reason=%r image=%s refusal=%s final=%s "
                        "retry_after=%s", reason, refused.image, refused.reason, refused.final,
                        retry_after)
            self._event(EventKind.REJECTED, reason,
                        f"{refused}; nothing was applied, the last good state is kept"
                        + ("" if refused.final else "; retrying"),
                        desired.content_hash, started, ())
        return Outcome(Phase.REJECTED, retry_after=retry_after)

    def _roll_back(self, failed: DesiredState) -> bool:
        good = self._last_good
        if good is None:
            return False
        try:
            observed = self.adapter.observe()
            if not observed.reachable:
                return False
            # What may be on the broker now: the failed state's values over the good ones, so
            # keys it added are unset and write-only values it changed are set back.
            maybe_applied = Applied({**self.state.last_applied.config, **failed.config},
                                    dict(self.state.last_applied.plugins))
            undo = plan(good, observed, maybe_applied, classifier_for(self.adapter))
            for action in undo:
                log.info("decision=rollback action=%r", action.describe())
            self._execute(undo)
            self.state.observed = self.adapter.observe()
            self._probe_results = {}
            if self.state.observed.reachable:
                self._run_probes(good, self.state.observed)
        except (AdapterError, ApplyFailed, BrokerUnavailable, OSError, OciError,
                ImageRefused) as e:
            log.error("decision=rollback-failed error=%r", f"{type(e).__name__}: {e}")
            self.state.last_error += f"; rollback failed: {e}"
            return False
        return True

    def _reject(self, reason: str, content_hash: str, message: str,
                keys: tuple[str, ...]) -> Outcome:
        self.state.phase = Phase.REJECTED
        self.state.last_error = message
        self.state.failed_hash = content_hash
        self.state.failed_keys = keys
        self.state.desired_hash = content_hash
        if content_hash != self._rejected_hash:
            self._rejected_hash = content_hash
            log.warning("decision=reject reason=%r error=%r", reason, message)
            self._event(EventKind.REJECTED, reason,
                        message + "; nothing was applied, the last good state is kept",
                        content_hash, self._clock(), ())
        return Outcome(Phase.REJECTED)

    # --- helpers ----------------------------------------------------------------------------

    def _validated(self, documents: Sequence[Document]) -> DesiredState:
        desired = parse_desired_state(documents)
        if desired.broker is not None and desired.broker != self.adapter.name:
            raise ContractError(f"broker.yaml: .broker is {desired.broker!r} but this sidecar "
                                f"runs the {self.adapter.name!r} adapter")
        problems = self.adapter.validate_config(desired.config)
        if problems:
            raise ContractError("broker.yaml: the broker would refuse: "
                                + "; ".join(str(p) for p in problems))
        return desired

    def _invalid_keys(self, documents: Sequence[Document]) -> tuple[str, ...]:
        """The documents a rejection is attributed to: those invalid on their own (none when
        only their combination is, e.g. two keys naming one plugin)."""
        bad = set()
        for doc in documents:
            try:
                self._validated([doc])
            except (ContractError, AdapterError):
                bad.add(doc.key)
        return tuple(sorted(bad))

    def _safe_read(self) -> list[Document]:
        try:
            return list(self._read())
        except SourceError:
            return []

    def _update_readiness(self, desired: DesiredState | None, observed: Observed | None) -> None:
        statuses, missing = self._plugin_statuses(desired, observed)
        self.state.plugins = statuses
        if not self.state.applied_once:
            self._set_ready(False, "no desired state applied yet")
        elif missing:
            self._set_ready(False, "required auth plugin(s) not loaded and passing probes: "
                            + ", ".join(missing))
        else:
            self._set_ready(True, "last good state applied")

    def _plugin_statuses(self, desired: DesiredState | None, observed: Observed | None,
                         refused_digest: str = "") -> tuple[tuple[PluginStatus, ...], list[str]]:
        """Each plugin's status, and the enabled ones not running (or failing probes)."""
        statuses = []
        missing = []
        if desired is not None and observed is not None:
            for release in desired.plugins:
                seen = observed.plugins.get(release.name)
                running = seen.digest if seen else None
                probes = self._probe_results.get(release.name, ())
                if not release.enabled:
                    status = "Disabled"
                elif any(not r.passed for r in probes):
                    status = "ProbeFailed"
                elif running == release.digest:
                    status = "Running"
                elif release.digest == refused_digest:
                    status = "Refused"
                elif seen is not None and seen.staged_digest == release.digest:
                    status = "Staged"
                else:
                    status = "Missing"
                statuses.append(PluginStatus(release.name, release.digest, running, status,
                                             tuple(str(r) for r in probes)))
                if release.enabled and (running is None or status == "ProbeFailed"):
                    missing.append(f"{release.name} ({status.lower()})")
        return tuple(statuses), missing

    def _set_ready(self, ready: bool, why: str) -> None:
        if ready != self.state.ready:
            log.info("decision=readiness ready=%s reason=%r", ready, why)
        self.state.ready = ready
        self.state.ready_reason = why

    def _event(self, kind: EventKind, reason: str, message: str, content_hash: str,
               started: float, actions: Sequence[Action]) -> None:
        event = ApplyEvent(kind, reason, message, content_hash,
                           max(self._clock() - started, 0.0), time.time(),
                           tuple(a.describe() for a in actions))
        log.info("decision=%s reason=%r message=%r hash=%s", kind.value, reason, message,
                 content_hash)
        self._emit(event)


def documents_hash(documents: Sequence[Document]) -> str:
    return content_hash(documents)


def action_keys(actions: Sequence[Action]) -> tuple[str, ...]:
    """The documents ``actions`` come from: broker.yaml for config, a plugin's own key."""
    keys = {BROKER_KEY if a.kind in (ActionKind.SET_CONFIG, ActionKind.UNSET_CONFIG)
            else plugin_key(a.target) for a in actions
            if a.kind is not ActionKind.RESTART_BROKER}
    return tuple(sorted(keys))

