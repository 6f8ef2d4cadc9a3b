"""gRPC ``plugforge.v1.SidecarService``: convert messages, call the sidecar, map errors.

Authentication (optional here, required by rollouts): a bearer token in the ``authorization``
metadata, checked by the shared ``plugforge.grpc_auth``; TLS when a certificate and key are given.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from plugforge.contract import ContractError, Document
from plugforge.grpc_auth import Authenticator, TokenAuth, TokenFileError, read_client_token
from plugforge.v1 import sidecar_pb2 as pb
from plugforge.v1 import sidecar_pb2_grpc as pb_grpc
from sidecar.adapters.base import AdapterError, BrokerUnavailable, ChangeClass
from sidecar.app import Sidecar
from sidecar.desired import SourceError
from sidecar.plan import Action, is_secret, max_change
from sidecar.settings import Settings, SettingsError
from sidecar.state import ApplyEvent

_PHASES = {"Pending": pb.PHASE_PENDING, "Applied": pb.PHASE_APPLIED,
           "RestartRequired": pb.PHASE_RESTART_REQUIRED, "Rejected": pb.PHASE_REJECTED,
           "RolledBack": pb.PHASE_ROLLED_BACK, "Failed": pb.PHASE_FAILED,
           "Unavailable": pb.PHASE_UNAVAILABLE}
_CHANGES = {ChangeClass.HOT: pb.CHANGE_CLASS_HOT,
            ChangeClass.PLUGIN_RELOAD: pb.CHANGE_CLASS_PLUGIN_RELOAD,
            ChangeClass.BROKER_RESTART: pb.CHANGE_CLASS_BROKER_RESTART}
_ACTIONS = {"install_plugin": pb.ACTION_KIND_INSTALL_PLUGIN,
            "enable_plugin": pb.ACTION_KIND_ENABLE_PLUGIN,
            "disable_plugin": pb.ACTION_KIND_DISABLE_PLUGIN,
            "set_config": pb.ACTION_KIND_SET_CONFIG, "unset_config": pb.ACTION_KIND_UNSET_CONFIG,
            "restart_broker": pb.ACTION_KIND_RESTART_BROKER}
_PLUGIN_STATUS = {"Running": pb.PLUGIN_STATUS_RUNNING, "Staged": pb.PLUGIN_STATUS_STAGED,
                  "Disabled": pb.PLUGIN_STATUS_DISABLED, "Missing": pb.PLUGIN_STATUS_MISSING,
                  "ProbeFailed": pb.PLUGIN_STATUS_PROBE_FAILED,
                  "Refused": pb.PLUGIN_STATUS_REFUSED}
_EVENTS = {"Applied": pb.EVENT_KIND_APPLIED, "Rejected": pb.EVENT_KIND_REJECTED,
           "RolledBack": pb.EVENT_KIND_ROLLED_BACK, "Failed": pb.EVENT_KIND_FAILED,
           "RestartRequired": pb.EVENT_KIND_RESTART_REQUIRED}


def action_message(action: Action) -> pb.Action:
    secret = is_secret(action.target)
    return pb.Action(kind=_ACTIONS[action.kind.value], target=action.target,
                     change=_CHANGES[action.change], reason=action.reason,
                     value="" if secret else (action.value or ""),
                     previous="" if secret else (action.previous or ""),
                     description=action.describe())


def event_message(event: ApplyEvent) -> pb.ApplyEvent:
    return pb.ApplyEvent(kind=_EVENTS[event.kind.value], reason=event.reason,
                         message=event.message, content_hash=event.content_hash,
                         duration_seconds=event.duration, time_unix_nano=int(event.time * 1e9),
                         actions=list(event.actions))


def _redacted(config: Mapping[str, str]) -> dict[str, str]:
    return {k: ("<redacted>" if is_secret(k) else v) for k, v in config.items()}


class SidecarServicer(pb_grpc.SidecarServiceServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def GetState(self, request: pb.GetStateRequest,
                 context: grpc.ServicerContext) -> pb.GetStateResponse:
        s = self._sidecar.state
        observed = s.observed
        return pb.GetStateResponse(
            broker=self._sidecar.settings.broker, pod_name=self._sidecar.settings.pod_name,
            phase=_PHASES[s.phase.value], ready=s.ready, ready_reason=s.ready_reason,
            desired_hash=s.desired_hash, applied_hash=s.last_applied.content_hash,
            failed_hash=s.failed_hash, failed_keys=list(s.failed_keys),
            refused_image=s.refused_image, refused_reason=s.refused_reason,
            last_error=s.last_error, restart_required=s.restart_required,
            broker_reachable=bool(observed and observed.reachable),
            desired_config=_redacted(s.desired.config if s.desired else {}),
            observed_config=_redacted(observed.config if observed else {}),
            applied_config=_redacted(s.last_applied.config),
            plugins=[pb.Plugin(name=p.name, desired_digest=p.desired_digest,
                               running_digest=p.running_digest or "",
                               status=_PLUGIN_STATUS[p.status], probe_results=list(p.probes))
                     for p in s.plugins],
            last_plan=[action_message(a) for a in s.last_plan])

    def Plan(self, request: pb.PlanRequest,
             context: grpc.ServicerContext) -> pb.PlanResponse:
        documents = [Document(d.origin or "request", d.key, d.text)
                     for d in request.documents] or None
        actions = _call(context, lambda: self._sidecar.plan(documents))
        top = max_change(actions)
        return pb.PlanResponse(actions=[action_message(a) for a in actions],
                               max_change=_CHANGES[top] if top else
                               pb.CHANGE_CLASS_UNSPECIFIED)

    def Reconcile(self, request: pb.ReconcileRequest,
                  context: grpc.ServicerContext) -> pb.ReconcileResponse:
        outcome = _call(context, lambda: self._sidecar.reconcile_now(
            f"gRPC Reconcile: {request.reason or 'no reason given'}"))
        return pb.ReconcileResponse(phase=_PHASES[outcome.phase.value],
                                    actions=[action_message(a) for a in outcome.actions],
                                    last_error=self._sidecar.state.last_error)

    def WatchEvents(self, request: pb.WatchEventsRequest,
                    context: grpc.ServicerContext) -> Iterator[pb.WatchEventsResponse]:
        events = self._sidecar.subscribe()
        try:
            while context.is_active():
                try:
                    event = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                yield pb.WatchEventsResponse(event=event_message(event))
        finally:
            self._sidecar.unsubscribe(events)


def _call(context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (ContractError, SourceError) as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except AdapterError as e:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except BrokerUnavailable as e:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


def serve(sidecar: Sidecar, address: str, *, token: str | None = None,
          tls: tuple[Path, Path] | None = None) -> grpc.Server:
    """Start the service on ``address`` (port 0: pick one; see ``server.bound_port``)."""
    interceptors = [TokenAuth(Authenticator({"caller": token}))] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    pb_grpc.add_SidecarServiceServicer_to_server(SidecarServicer(sidecar), server)
    if tls is not None:
        credentials = grpc.ssl_server_credentials([(tls[1].read_bytes(), tls[0].read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    server.bound_port = port
    server.start()
    return server


def serve_configured(sidecar: Sidecar, settings: Settings) -> grpc.Server:
    """The service as ``settings.grpc_*`` ask (``--grpc-address`` set). The token file holds
    one token, bare or ``NAME:TOKEN``."""
    try:
        token = read_client_token(settings.grpc_token_file) if settings.grpc_token_file \
            else None
    except TokenFileError as e:
        raise SettingsError(f"--grpc-token-file: {e}") from e
    tls = (settings.grpc_tls_cert, settings.grpc_tls_key) \
        if settings.grpc_tls_cert and settings.grpc_tls_key else None
    return serve(sidecar, settings.grpc_address, token=token, tls=tls)
