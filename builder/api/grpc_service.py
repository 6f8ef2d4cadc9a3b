"""gRPC ``plugforge.v1.BuildService``: convert messages, call ``build_api``, map errors.

Served on every builder replica (TLS + bearer tokens, see ``plugforge.grpc_auth``): requests
only create PluginBuild objects, which the leader runs. Build logs are on the disk of the
replica that ran the build; another replica replays the build's recorded log tail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc

from builder.api import builds as build_api
from builder.api.scopes import parse_caller
from builder.errors import BuilderError, Forbidden, InvalidSpec, NotFound
from builder.kube import Kube
from builder.resources import parse_plugin
from builder.rollout.pods import pod_info, select
from builder.rollout.sidecars import SidecarClient
from builder.rollout.tracker import ask
from builder.rollout.view import RolloutView, build_view
from plugforge.grpc_auth import Authenticator, TokenAuth, server_credentials
from plugforge.v1 import build_pb2 as pb
from plugforge.v1 import build_pb2_grpc as pb_grpc

T = TypeVar("T")
Obj = dict[str, Any]

_PHASES = {"Pending": pb.BUILD_PHASE_PENDING, "Running": pb.BUILD_PHASE_RUNNING,
           "Succeeded": pb.BUILD_PHASE_SUCCEEDED, "Failed": pb.BUILD_PHASE_FAILED}
_PHASE_NAMES = {v: k for k, v in _PHASES.items()}
_TRIGGERS = {"ResourceChange": pb.TRIGGER_TYPE_RESOURCE_CHANGE,
             "Webhook": pb.TRIGGER_TYPE_WEBHOOK, "Manual": pb.TRIGGER_TYPE_MANUAL}
_POD_STATES = {"Current": pb.POD_STATE_CURRENT, "Updating": pb.POD_STATE_UPDATING,
               "Failed": pb.POD_STATE_FAILED, "Unreachable": pb.POD_STATE_UNREACHABLE,
               "Disabled": pb.POD_STATE_DISABLED, "NotReady": pb.POD_STATE_NOT_READY}


def build_message(obj: Obj) -> pb.Build:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    trigger = spec.get("trigger") or {}
    return pb.Build(
        namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
        plugin=str(spec.get("plugin", "")), phase=_PHASES.get(build_api.phase_of(obj),
                                                               pb.BUILD_PHASE_UNSPECIFIED),
        trigger_type=_TRIGGERS.get(str(trigger.get("type")), pb.TRIGGER_TYPE_UNSPECIFIED),
        trigger_user=str(trigger.get("user") or trigger.get("sender") or ""),
        commit=str(status.get("commit") or spec.get("commit") or ""),
        image=str(status.get("image") or ""), digest=str(status.get("digest") or ""),
        reason=str(status.get("reason") or ""), message=str(status.get("message") or ""),
        created_at=str(meta.get("creationTimestamp") or ""),
        started_at=str(status.get("startedAt") or ""),
        finished_at=str(status.get("finishedAt") or ""),
        attempts=int(status.get("attempts") or 0), log_tail=str(status.get("logTail") or ""))


def rollout_message(view: RolloutView) -> pb.Rollout:
    return pb.Rollout(
        namespace=view.namespace, plugin=view.plugin, plugin_name=view.plugin_name,
        desired_image=view.desired_image, desired_digest=view.desired_digest,
        commit=view.commit, build=view.build, phase=view.phase,
        canary_digest=view.canary_digest, pods_ready=view.pods_ready,
        pods_total=len(view.pods), ready=view.ready, reason=view.reason, message=view.message,
        wave=view.wave, waves=view.waves,
        pods=[pb.PodRollout(pod=p.pod, address=p.address, desired_digest=p.desired_digest,
                            running_digest=p.report.running_digest,
                            state=_POD_STATES[p.state.value], canary=p.canary,
                            sidecar_phase=p.report.phase, last_error=p.report.last_error,
                            probe_results=list(p.report.probe_results))
              for p in view.pods])


class BuildServicer(pb_grpc.BuildServiceServicer):
    def __init__(self, kube: Kube, log_dir: Path, authenticator: Authenticator,
                 sidecars: SidecarClient, stop: threading.Event) -> None:
        self._kube = kube
        self._log_dir = log_dir
        self._auth = authenticator
        self._sidecars = sidecars
        self._stop = stop

    def _caller(self, context: grpc.ServicerContext, namespace: str) -> str:
        """The caller's user name, once its token is scoped to ``namespace`` (else the call
        ends with PERMISSION_DENIED naming the namespace)."""
        name = self._auth.caller(context.invocation_metadata()) or ""
        _call(context, lambda: parse_caller(name).check(namespace))
        return parse_caller(name).user

    def TriggerBuild(self, request: pb.TriggerBuildRequest,
                     context: grpc.ServicerContext) -> pb.TriggerBuildResponse:
        user = self._caller(context, request.namespace or "default")
        obj = _call(context, lambda: build_api.trigger(
            self._kube, request.namespace or "default", request.plugin, request.commit, user))
        return pb.TriggerBuildResponse(build=build_message(obj))

    def GetBuild(self, request: pb.GetBuildRequest,
                 context: grpc.ServicerContext) -> pb.GetBuildResponse:
        self._caller(context, request.namespace or "default")
        obj = _call(context, lambda: build_api.get(self._kube, request.namespace or "default",
                                                   request.name))
        return pb.GetBuildResponse(build=build_message(obj))

    def ListBuilds(self, request: pb.ListBuildsRequest,
                   context: grpc.ServicerContext) -> pb.ListBuildsResponse:
        self._caller(context, request.namespace or "default")
        items, token = _call(context, lambda: build_api.list_page(
            self._kube, request.namespace or "default", request.plugin,
            _PHASE_NAMES.get(request.phase, ""), request.page_size, request.page_token))
        return pb.ListBuildsResponse(builds=[build_message(b) for b in items],
                                     next_page_token=token)

    def StreamBuildLogs(self, request: pb.StreamBuildLogsRequest,
                        context: grpc.ServicerContext) -> Iterator[pb.StreamBuildLogsResponse]:
        namespace = request.namespace or "default"
        self._caller(context, namespace)

        def fetch() -> Obj:
            return build_api.get(self._kube, namespace, request.name)

        _call(context, fetch)  # NOT_FOUND / INVALID_ARGUMENT before streaming anything
        path = self._log_dir / namespace / f"{request.name}.log"
        stop = threading.Event()
        context.add_callback(stop.set)
        chunks = build_api.stream_log(path, fetch, request.follow, stop)
        while True:
            item = _call(context, lambda: next(chunks, None))
            if item is None or self._stop.is_set():
                return
            text, phase = item
            yield pb.StreamBuildLogsResponse(text=text, phase=_PHASES.get(
                phase, pb.BUILD_PHASE_UNSPECIFIED))

    def GetRollout(self, request: pb.GetRolloutRequest,
                   context: grpc.ServicerContext) -> pb.GetRolloutResponse:
        self._caller(context, request.namespace or "default")
        view = _call(context, lambda: rollout(self._kube, self._sidecars,
                                              request.namespace or "default", request.plugin))
        return pb.GetRolloutResponse(rollout=rollout_message(view))


def rollout(kube: Kube, sidecars: SidecarClient, namespace: str, plugin: str) -> RolloutView:
    build_api.check_name("namespace", namespace)
    build_api.check_name("plugin", plugin)
    obj = kube.get_plugin(namespace, plugin)
    if obj is None:
        raise NotFound(f"BrokerPlugin {namespace}/{plugin} not found")
    spec = parse_plugin(obj)
    name = str((obj.get("status") or {}).get("currentPluginName") or spec.name)
    pods = select(map(pod_info, kube.list_pods_rv(namespace)[0]), spec.selector) \
        if spec.selector is not None else []
    return build_view(obj, spec, ask(sidecars, spec, pods, name), pods)


def _call(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (build_api.ApiInvalid, InvalidSpec) as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except NotFound as e:
        context.abort(grpc.StatusCode.NOT_FOUND, str(e))
    except Forbidden as e:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
    except BuilderError as e:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


def serve(kube: Kube, log_dir: Path, address: str, *, tokens: dict[str, str],
          tls: tuple[Path, Path], sidecars: SidecarClient) -> tuple[grpc.Server, int]:
    """Start the BuildService on ``address`` (port 0: pick one); returns (server, port).

    TLS and tokens are not optional: the API creates builds and reads logs. Each token's
    name carries the namespaces it may act in (``builder.api.scopes``).
    """
    for name in tokens:
        parse_caller(name)  # a malformed scope stops the start, with its reason
    authenticator = Authenticator(tokens)
    stop = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         interceptors=[TokenAuth(authenticator)])
    pb_grpc.add_BuildServiceServicer_to_server(
        BuildServicer(kube, log_dir, authenticator, sidecars, stop), server)
    port = server.add_secure_port(address, server_credentials(*tls))
    server.start()
    original_stop = server.stop

    def stop_all(grace: float | None) -> Any:
        stop.set()
        return original_stop(grace)

    server.stop = stop_all
    return server, port
