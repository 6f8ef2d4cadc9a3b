"""Wiring: settings → kube adapter, source cache, pipeline, controller, leader election."""

from __future__ import annotations

import logging
import threading

from builder.api.scopes import parse_caller
from builder.build import toolchains
from builder.build.executors.container import ContainerExecutor
from builder.build.executors.kubernetes import JobSettings, KubernetesExecutor
from builder.build.executors.select import ExecutorRefused, select_executor
from builder.build.executors.transfer import TransferServer
from builder.build.pipeline import Pipeline
from builder.build.recipe_errors import BuildError
from builder.build.signing import BuildSigner, load_signing_key
from builder.build.source import SourceCache
from builder.controller import Controller
from builder.kube import Kube
from builder.leader import LeaderElector
from builder.metrics import serve_metrics
from builder.rollout.sidecars import SidecarClient
from builder.settings import Settings
from builder.webhooks.server import ServerSettings
from builder.webhooks.service import WebhookSettings
from builder.webhooks.service import start_with_kube as start_webhooks
from plugforge.grpc_auth import TokenFileError, read_client_token, read_tokens

log = logging.getLogger(__name__)


def toolchain_pins(settings: Settings, executor: str) -> toolchains.Pins | None:
    """The pins, read now so a bad file stops the start; none: every isolated build fails
    naming its toolchain and the command that pins it. The process executor uses the host's
    tools: no pins (a given file is still checked)."""
    pins = toolchains.load_pins(settings.toolchains) if settings.toolchains else None
    if executor == "process":
        return None
    if pins is not None:
        log.info("toolchains pinned: %s",
                 ", ".join(f"{k}={v.image}" for k, v in pins.items()) or "none")
        return pins
    log.warning("decision=no-toolchains: no --toolchains pin file; every build fails with "
                "ToolchainMissing until one is given (%s)", toolchains.FIX_COMMAND)
    return {}


def kubernetes_executor(kube: Kube, settings: Settings) -> KubernetesExecutor:
    """The ``kubernetes`` executor with its transfer server listening (``--transfer-*``)."""
    missing = [flag for flag, value in (("--transfer-host", settings.transfer_host),
                                        ("--transfer-image", settings.transfer_image))
               if not value]
    if missing or not settings.transfer_host or not settings.transfer_image:
        raise ExecutorRefused(f"--executor kubernetes needs {' and '.join(missing)}: the "
                              "address build pods reach this builder at (its pod IP) and a "
                              "static busybox image for their transfer containers")
    job = JobSettings(transfer_image=settings.transfer_image, identity=settings.identity,
                      namespace=settings.build_namespace)
    transfers = TransferServer(settings.transfer_address, settings.transfer_host,
                               job.max_result_bytes)
    log.info("build Jobs in namespace %s; build pods reach this builder at %s",
             settings.build_namespace, transfers.base_url.split("/v1/")[0])
    return KubernetesExecutor(kube, transfers, job)


class Builder:
    """One builder instance: builds only while it holds the Lease."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kube = Kube.from_kubeconfig(settings.kubeconfig, settings.watch_namespace)
        sources = SourceCache(settings.git_dir)
        # The key is read now, so a bad one (or password) stops the start with its reason.
        signer = BuildSigner(load_signing_key(settings.signing_key)) \
            if settings.signing_key else None
        if signer is None:
            log.warning("decision=unsigned: no --signing-key; images are pushed without "
                        "signature or provenance, and verifying sidecars will refuse them")
        else:
            log.info("signing images with key %s", signer.key.public.key_id)
        # Chosen now, so a refused executor stops the start; `process` warns at every start.
        executor = select_executor(settings.executor, log=log,
                                   allow_process=settings.allow_process_executor,
                                   owner=f"{settings.namespace}/{settings.lease_name}",
                                   kubernetes=lambda: kubernetes_executor(self.kube, settings))
        self.executor = executor
        log.info("builds run with the %s executor", executor.name)
        self.pipeline = Pipeline(sources, self.kube.read_secret, settings.work_dir,
                                 settings.max_build_seconds, settings.registry_ca,
                                 settings.docker_url, signer, executor=executor,
                                 toolchain_pins=toolchain_pins(settings, executor.name))
        # Token files are read now, so a bad one stops the start with its reason.
        self.api_tokens = read_tokens(settings.grpc_token_file) \
            if settings.grpc_token_file and settings.grpc_address else {}
        for name in self.api_tokens:
            try:
                if not parse_caller(name).namespaces:
                    log.warning("API token %r has no scope (NAME@NS,...:TOKEN or NAME@*:TOKEN) "
                                "in --grpc-token-file: it may act in no namespace", name)
            except ValueError as e:
                raise TokenFileError(f"token file {settings.grpc_token_file}: {e}") from None
        self.sidecars = SidecarClient(
            settings.sidecar_ca, read_client_token(settings.sidecar_token_file)
            if settings.sidecar_token_file else None)
        self.controller = Controller(self.kube, self.pipeline, settings, sidecars=self.sidecars)
        self.elector = LeaderElector(
            self.kube, settings.namespace, settings.lease_name, settings.identity,
            settings.lease_duration_seconds, settings.lease_renew_seconds,
            on_started=self._leading, on_stopped=self._lost)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_leadership = threading.Event()
        self.webhook_url: str | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.serving = threading.Event()

    @property
    def leading(self) -> bool:
        return self.elector.leading

    def _leading(self) -> None:
        # Jobs of builds no builder runs any more (a killed or deposed leader's): deleted
        # before this one runs builds; the controller resumes those builds.
        if isinstance(self.executor, (KubernetesExecutor, ContainerExecutor)):
            try:
                for name in self.executor.sweep():
                    log.warning("deleted orphaned build %s %s", self.executor.name, name)
            except BuildError as e:
                log.warning("could not look for orphaned build Jobs (retried at the next "
                            "leadership): %s", e)
        self.controller.start()

    def _lost(self) -> None:
        self.controller.stop()
        self.lost_leadership.set()

    def run(self) -> None:
        """Block until ``stop``; builds only while holding the Lease, rejoins if it loses it.

        The webhook endpoint (if configured) serves on every replica for as long as this runs.
        """
        webhooks = None
        if self.settings.webhook_address is not None:
            host, port = self.settings.webhook_address
            webhooks = start_webhooks(self.kube, WebhookSettings(
                server=ServerSettings(host=host, port=port)))
            self.webhook_url = webhooks.url
            log.info("serving push webhooks on %s", webhooks.url)
        api = None
        if self.settings.grpc_address is not None:
            from builder.api.grpc_service import serve

            s = self.settings
            if not (s.grpc_token_file and s.grpc_tls_cert and s.grpc_tls_key
                    and s.grpc_address):
                raise ValueError("--grpc-address needs a token file, TLS cert and key")
            host, port = s.grpc_address
            api, self.grpc_port = serve(self.kube, s.log_dir, f"{host}:{port}",
                                        tokens=self.api_tokens,
                                        tls=(s.grpc_tls_cert, s.grpc_tls_key),
                                        sidecars=self.sidecars)
            log.info("serving the BuildService (gRPC, TLS) on %s:%d", host, self.grpc_port)
        metrics = None
        if self.settings.metrics_address is not None:
            host, port = self.settings.metrics_address
            metrics = serve_metrics(host, port, lambda: self.controller.metrics.render(
                self.elector.leading, len(self.controller.queue)))
            self.metrics_port = int(metrics.server_address[1])
            log.info("serving metrics on %s:%d", host, self.metrics_port)
        self.serving.set()
        try:
            self.elector.run(self._stop)
        finally:
            if metrics is not None:
                metrics.shutdown()
            if webhooks is not None:
                webhooks.stop()
            if api is not None:
                api.stop(2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"{self.settings.identity}-leader",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.controller.stop()
        self.sidecars.close()
        self.kube.close()
