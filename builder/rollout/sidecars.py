"""Asking broker pods' sidecars what they run: ``SidecarService.GetState`` over TLS + token.

The only builder module that is a gRPC client. Pods are found by ``spec.target.selector``
(``podwatch``) and dialled at their pod IP; TLS checks the sidecar's certificate for the name
``plugforge-sidecar.<namespace>.svc`` (the certificate ``plugforge api-secrets`` issues per
broker namespace is valid for ``*.<namespace>.svc``), as a pod IP is in no certificate.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc

from builder.rollout.canary import PodReport
from plugforge.grpc_auth import secure_channel
from plugforge.v1 import sidecar_pb2 as pb
from plugforge.v1 import sidecar_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
MAX_CHANNELS = 1024

_PHASES = {pb.PHASE_PENDING: "Pending", pb.PHASE_APPLIED: "Applied",
           pb.PHASE_RESTART_REQUIRED: "RestartRequired", pb.PHASE_REJECTED: "Rejected",
           pb.PHASE_ROLLED_BACK: "RolledBack", pb.PHASE_FAILED: "Failed",
           pb.PHASE_UNAVAILABLE: "Unavailable"}
_STATUS = {pb.PLUGIN_STATUS_RUNNING: "Running", pb.PLUGIN_STATUS_STAGED: "Staged",
           pb.PLUGIN_STATUS_DISABLED: "Disabled", pb.PLUGIN_STATUS_MISSING: "Missing",
           pb.PLUGIN_STATUS_PROBE_FAILED: "ProbeFailed", pb.PLUGIN_STATUS_REFUSED: "Refused"}


class SidecarClient:
    """GetState of many sidecars at once. TLS with ``ca_file`` and ``token``; plain text only
    when neither is given (development)."""

    def __init__(self, ca_file: Path | None, token: str | None, timeout: float = 3.0) -> None:
        self._ca = ca_file
        self._token = token
        self._timeout = timeout
        # Pod IPs come and go: keep the most recently used channels only.
        self._channels: OrderedDict[tuple[str, str], grpc.Channel] = OrderedDict()
        self._lock = threading.Lock()
        # One pool for every gather (a rollout asks every 0.25 s): at most 16 calls at once.
        self._pool = futures.ThreadPoolExecutor(max_workers=16,
                                                thread_name_prefix="sidecar-getstate")

    def _stub(self, address: str, namespace: str) -> pb_grpc.SidecarServiceStub:
        key = (address, namespace)
        with self._lock:
            channel = self._channels.get(key)
            if channel is None:
                if self._ca is None and self._token is None:
                    channel = grpc.insecure_channel(address)
                else:
                    channel = secure_channel(address, self._ca, self._token,
                                             server_name=sidecar_server_name(namespace))
                self._channels[key] = channel
                while len(self._channels) > MAX_CHANNELS:
                    self._channels.popitem(last=False)[1].close()
            self._channels.move_to_end(key)
        return pb_grpc.SidecarServiceStub(channel)

    def report(self, pod: str, address: str, namespace: str, plugin: str) -> PodReport:
        """What the sidecar at ``address`` (a pod of ``namespace``) runs of ``plugin``."""
        try:
            state = self._stub(address, namespace).GetState(pb.GetStateRequest(),
                                                             timeout=self._timeout)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "ERROR"
            details = e.details() if hasattr(e, "details") else str(e)
            return PodReport(pod, address, False,
                             last_error=f"sidecar {address}: {code}: {details}")
        entry = next((p for p in state.plugins if p.name == plugin), None)
        return PodReport(
            pod=pod, address=address, reachable=True,
            phase=_PHASES.get(state.phase, "Unspecified"), last_error=state.last_error,
            desired_digest=entry.desired_digest if entry else "",
            running_digest=entry.running_digest if entry else "",
            status=_STATUS.get(entry.status, "") if entry else "",
            probe_results=tuple(entry.probe_results) if entry else (),
            applied_hash=state.applied_hash, desired_hash=state.desired_hash,
            failed_hash=state.failed_hash, failed_keys=tuple(state.failed_keys), plugin=plugin)

    def gather(self, targets: Sequence[tuple[str, str]], namespace: str,
               plugin: str) -> dict[str, PodReport]:
        """Every (pod, address)'s report, asked in parallel (an unreachable one says so)."""
        if not targets:
            return {}
        reports = self._pool.map(lambda t: self.report(t[0], t[1], namespace, plugin), targets)
        return {r.pod: r for r in reports}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def sidecar_server_name(namespace: str) -> str:
    """The name a sidecar's certificate is checked for (``*.<namespace>.svc`` covers it)."""
    return f"plugforge-sidecar.{namespace}.svc"
