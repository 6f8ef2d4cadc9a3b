"""Wiring: settings -> adapter, sources, watchers, reconciler, loop, HTTP (and gRPC)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from plugforge.contract import Document, select_for_pod
from sidecar.adapters.base import BrokerAdapter
from sidecar.adapters.registry import create_adapter
from sidecar.desired import NotSynced, read_documents
from sidecar.images import ImagePuller
from sidecar.metrics import Metrics
from sidecar.plan import Action
from sidecar.probes import run_probe
from sidecar.reconcile import Outcome, PullImage, Reconciler, documents_hash
from sidecar.server import HttpServer
from sidecar.settings import Settings, api_credentials_present
from sidecar.state import ApplyEvent, SidecarState
from sidecar.trigger import Trigger
from sidecar.watch_files import DirectoryWatcher

log = logging.getLogger("plugforge.sidecar")


class Sidecar:
    def __init__(self, settings: Settings, *, adapter: BrokerAdapter | None = None,
                 pull_image: PullImage | None = None,
                 event_sinks: Sequence[Callable[[ApplyEvent], None]] = ()) -> None:
        self.settings = settings
        self.adapter = adapter or create_adapter(settings.broker, settings.adapter_options,
                                                 settings.plugin_dir)
        self.verifier = None
        if settings.trust_policy is not None:
            # Imported only when verifying: cryptography costs ~7 MB an unverified sidecar
            # does not need.
            from sidecar.trust import ImageVerifier
            self.verifier = ImageVerifier(settings.trust_policy)
        self.puller = pull_image or ImagePuller(
            settings.cache_dir, ca_bundle=settings.registry_ca,
            docker_config=settings.docker_config,
            insecure_http_registries=settings.insecure_http_registries, verify=self.verifier,
            expected_commit=self._release_commit, max_cache_bytes=settings.image_cache_bytes)
        self.metrics = Metrics()
        self.trigger = Trigger(settings.debounce, settings.resync_interval)
        self._sinks = list(event_sinks)
        self._subscribers: list[queue.Queue[ApplyEvent]] = []
        self._sub_lock = threading.Lock()
        self.api_source = None
        self.mode = self._pick_mode()
        if self.mode == "api":
            from sidecar.watch_api import ConfigMapWatcher  # only API mode talks to the API
            self.api_source = ConfigMapWatcher(
                settings.namespace, settings.configmaps, self.trigger,
                kubeconfig=settings.kubeconfig, idle_timeout=settings.watch_idle_timeout)
        self.reconciler = Reconciler(
            self.adapter, self.read_documents, self.puller,
            lambda probe: run_probe(probe, settings.probe_host, settings.probe_port,
                                    mqtt_version=settings.probe_mqtt_version,
                                    secrets_dir=settings.probe_secrets_dir),
            allow_broker_restart=settings.allow_broker_restart, on_event=self._on_event,
            state_file=settings.cache_dir / "last-good.json", policy_version=self._policy_version)
        self._abandon_checked = 0.0
        if isinstance(self.puller, ImagePuller):
            self.puller.abandon = self._newer_desired_state
            self.puller.protect = lambda: frozenset(
                self.reconciler.state.last_applied.plugins.values())
        self._file_watcher = DirectoryWatcher(settings.config_dirs, self.trigger) \
            if settings.config_dirs else None
        # A trust policy edit (a key rotation) retries a refused image at once.
        self._policy_watcher = DirectoryWatcher((settings.trust_policy.parent,), self.trigger) \
            if settings.trust_policy is not None else None
        self._http: HttpServer | None = None
        self._loop = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._timers: list[threading.Timer] = []
        self.loops = 0

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        log.info("decision=start mode=%s broker=%s dirs=%s configmaps=%s", self.mode,
                 self.settings.broker, [str(d) for d in self.settings.config_dirs],
                 list(self.settings.configmaps))
        if self.verifier is None:
            log.warning("decision=verification-off images are loaded without checking "
                        "signature or provenance (%s)", "--allow-unsigned-images"
                        if self.settings.allow_unsigned_images else "no --trust-policy")
        else:
            log.info("decision=verification-on trust_policy=%s", self.settings.trust_policy)
            self.verifier.check_policy()
        if self.api_source is not None:
            self.api_source.start()
        if self._file_watcher is not None:
            self._file_watcher.start()
        if self._policy_watcher is not None:
            self._policy_watcher.start()
        if self.settings.http_address:
            self._http = HttpServer(self.settings.http_address, {
                "/healthz": self._healthz, "/readyz": self._readyz, "/metrics": self._metrics})
            self._http.start()
        self._loop.start()
        self.trigger.notify("startup", urgent=True)

    def stop(self) -> None:
        self.trigger.close()
        for timer in self._timers:
            timer.cancel()
        for watcher in (self._file_watcher, self._policy_watcher):
            if watcher is not None:
                watcher.stop()
        if self.api_source is not None:
            self.api_source.stop()
        if self._http is not None:
            self._http.stop()
        self._loop.join(timeout=30)
        close = getattr(self.adapter, "close", None)
        if callable(close):
            close()

    @property
    def http_port(self) -> int:
        return self._http.port if self._http is not None else 0

    # --- what the interfaces call -----------------------------------------------------------

    def read_documents(self) -> list[Document]:
        """The desired-state documents as this pod sees them (its canary releases applied)."""
        return select_for_pod(self._read_sources(), self.settings.pod_name)

    def _read_sources(self) -> list[Document]:
        if self.api_source is not None:
            documents = self.api_source.documents()
            if documents is not None:
                return documents
            if not self.settings.config_dirs:
                raise NotSynced("the ConfigMap watch has not synced yet and no --config-dir "
                                "is mounted as a fallback")
            # The watch is down: the mounted volume is consistent, only later.
        return read_documents(self.settings.config_dirs)

    @property
    def state(self) -> SidecarState:
        return self.reconciler.state

    def plan(self, documents: Sequence[Document] | None = None) -> list[Action]:
        if documents is not None:
            documents = select_for_pod(documents, self.settings.pod_name)
        return self.reconciler.dry_run(documents)

    def reconcile_now(self, reason: str = "requested") -> Outcome:
        return self.reconciler.reconcile(reason)

    def subscribe(self) -> queue.Queue[ApplyEvent]:
        q: queue.Queue[ApplyEvent] = queue.Queue(maxsize=1000)
        with self._sub_lock:
            self._subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[ApplyEvent]) -> None:
        with self._sub_lock:
            if q in self._subscribers:
                self._subscribers.remove(q)

    # --- internals --------------------------------------------------------------------------

    def _release_commit(self, image: str) -> str:
        """The commit the desired release of ``image`` names (its provenance must name it too);
        empty for an image no release names now (a roll back to the last good state)."""
        desired = self.reconciler.state.desired
        release = next((p for p in desired.plugins if p.image == image), None) \
            if desired is not None else None
        return release.source.commit if release is not None else ""

    def _policy_version(self) -> str:
        """Changes when the trust policy file does: a refusal remembered under the old policy
        is retried under the new one."""
        if self.settings.trust_policy is None:
            return ""
        try:
            return hashlib.sha256(self.settings.trust_policy.read_bytes()).hexdigest()
        except OSError as e:
            return f"unreadable: {e.errno}"

    def _newer_desired_state(self) -> bool:
        """Asked during an image download: give it up when the sidecar stops or the desired
        state changed meanwhile (a good ConfigMap must not wait behind a bad image's pull)."""
        if self.trigger.closed:
            return True
        now = time.monotonic()
        if not self.trigger.pending or now - self._abandon_checked < 0.1:
            return False
        self._abandon_checked = now
        try:
            current = documents_hash(self.read_documents())
        except Exception:  # cannot tell now: keep pulling, the loop reads again afterwards
            return False
        return current != self.reconciler.state.desired_hash

    def _pick_mode(self) -> str:
        if self.settings.source == "auto":
            return "api" if self.settings.configmaps and api_credentials_present(
                self.settings) else "files"
        return self.settings.source

    def _run(self) -> None:
        while (reason := self.trigger.wait()) is not None:
            self.loops += 1
            try:
                outcome = self.reconciler.reconcile(reason)
            except Exception:  # the loop must survive anything; the error is in the log
                log.exception("decision=error reason=%r", reason)
                outcome = Outcome(self.reconciler.state.phase, retry_after=5.0)
            # One retry timer, for the state just reconciled: an older state's timer would
            # run its backoff chain beside the new one (and re-apply what failed).
            for timer in self._timers:
                timer.cancel()
            self._timers = []
            if outcome.retry_after is not None and not self.trigger.closed:
                timer = threading.Timer(outcome.retry_after, self.trigger.notify,
                                        args=(f"retry after {outcome.retry_after:g}s",),
                                        kwargs={"urgent": True})
                timer.daemon = True
                self._timers = [timer]
                timer.start()

    def _on_event(self, event: ApplyEvent) -> None:
        self.metrics.record(event)
        with self._sub_lock:
            for q in self._subscribers:
                # A stuck stream loses events rather than blocking the loop.
                with contextlib.suppress(queue.Full):
                    q.put_nowait(event)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("event sink failed")

    def _healthz(self) -> tuple[int, str, str]:
        alive = self._loop.is_alive()
        return (200 if alive else 500), "text/plain", "ok\n" if alive else "loop stopped\n"

    def _readyz(self) -> tuple[int, str, str]:
        state = self.state
        body = json.dumps({"ready": state.ready, "reason": state.ready_reason,
                           "phase": state.phase.value, "lastError": state.last_error})
        return (200 if state.ready else 503), "application/json", body + "\n"

    def _metrics(self) -> tuple[int, str, str]:
        state = self.state
        body = self.metrics.render(state.ready, state.plugins, state.refused_image,
                                   state.refused_reason)
        if self.verifier is not None:
            body += "\n".join(self.verifier.render()) + "\n"
        return 200, "text/plain; version=0.0.4", body


