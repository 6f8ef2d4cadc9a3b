"""Broker "pods" without a kubelet: Pod objects in the real apiserver whose status is written as
the kubelet writes it (phase, podIP, Ready condition, through the status subresource), and
behind each pod IP a real mosquitto with a real sidecar whose gRPC service listens on that IP.

Pod IPs are loopback addresses (127.0.10.N: all of 127.0.0.0/8 routes to ``lo``), so every
sidecar listens on the same port at its own address, as in a cluster. The sidecars read their
ConfigMap from the apiserver (API mode) and know their pod name (canary keys).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from plugforge.grpc_auth import secure_channel
from plugforge.v1 import sidecar_pb2, sidecar_pb2_grpc
from sidecar.adapters.mosquitto import MosquittoAdapter, MosquittoSettings
from sidecar.app import Sidecar
from sidecar.grpc_service import serve
from sidecar.settings import Settings
from testbed.kube import ControlPlane
from testbed.mosquitto import Mosquitto, MosquittoConfig, start_mosquitto
from testbed.procs import Supervisor

DYNSEC_LIB = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
ADMIN = ("admin", "admin-secret-pw")


def pod_ip(index: int, subnet: int = 10) -> str:
    """The ``index``-th pod address of a test's own loopback range 127.<subnet>.x.y."""
    return f"127.{subnet}.{index // 250}.{index % 250 + 1}"


def free_port_on(ips: list[str]) -> int:
    """A port free on every address of ``ips`` (checked by binding each)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = int(s.getsockname()[1])
        try:
            for ip in ips:
                with socket.socket() as s:
                    s.bind((ip, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on all pod addresses")


class PodObjects:
    """Pods through the apiserver as an admin (the controllers and kubelet are not here)."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.ns = namespace
        code, body = cp.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
                                body={"metadata": {"name": "default"}})
        if code not in (201, 409):  # the ServiceAccount admission needs it; no controller
            raise RuntimeError(f"creating ServiceAccount default: {code} {body}")

    def create(self, name: str, labels: dict[str, str],
               statefulset: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if statefulset:
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                        "name": statefulset, "uid": f"uid-{statefulset}",
                                        "controller": True}]
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"automountServiceAccountToken": False,
                         "containers": [{"name": "broker", "image": "eclipse-mosquitto:2"}]}}
        code, out = self.cp.request("POST", f"/api/v1/namespaces/{self.ns}/pods", body=body)
        if code != 201:
            raise RuntimeError(f"creating pod {name}: {code} {out}")
        return out

    def set_status(self, name: str, ip: str, ready: bool, phase: str = "Running") -> None:
        """What the kubelet reports: phase, pod IP and the Ready condition."""
        path = f"/api/v1/namespaces/{self.ns}/pods/{name}/status"
        for _ in range(5):
            code, pod = self.cp.request("GET", path)
            if code != 200:
                raise RuntimeError(f"reading pod {name}: {code} {pod}")
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            pod["status"] = {
                "phase": phase, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1",
                "startTime": stamp,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                "lastTransitionTime": stamp,
                                **({} if ready else {"reason": "ContainersNotReady"})}]}
            code, out = self.cp.request("PUT", path, body=pod)
            if code == 200:
                return
            if code != 409:
                raise RuntimeError(f"pod {name} status: {code} {out}")
        raise RuntimeError(f"pod {name} status: kept conflicting")

    def delete(self, name: str) -> None:
        self.cp.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{name}?gracePeriodSeconds=0")


def start_dynsec_broker(workdir: Path) -> Mosquitto:
    """mosquitto 2.0 with the dynamic-security plugin and an admin client; no anonymous."""
    workdir.mkdir(parents=True, exist_ok=True)
    dynsec_file = workdir / "dynamic-security.json"
    if not dynsec_file.exists():
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(dynsec_file), *ADMIN],
                       check=True, capture_output=True, timeout=30)
    return start_mosquitto(workdir, MosquittoConfig(allow_anonymous=False, extra_lines=(
        f"plugin {DYNSEC_LIB}", f"plugin_opt_config_file {dynsec_file}")))


@dataclass
class BrokerPod:
    """One broker pod: mosquitto (restarted by a supervisor, as by the kubelet), its sidecar
    in API mode — in this process, or as its own ``python -m sidecar`` process — and the
    sidecar's gRPC service on ``ip:port``."""

    name: str
    ip: str
    broker: Mosquitto
    supervisor: Supervisor
    sidecar: Sidecar | None
    server: grpc.Server | None
    process: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None

    def plugin_digest(self, plugin: str) -> str | None:
        if self.sidecar is not None:
            p = next((p for p in self.sidecar.state.plugins if p.name == plugin), None)
            return p.running_digest if p else None
        if self.channel is None:
            return None
        try:
            state = sidecar_pb2_grpc.SidecarServiceStub(self.channel).GetState(
                sidecar_pb2.GetStateRequest(), timeout=2)
        except grpc.RpcError:
            return None
        entry = next((p for p in state.plugins if p.name == plugin), None)
        return entry.running_digest if entry else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)
        if self.sidecar is not None:
            self.sidecar.stop()
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.channel is not None:
            self.channel.close()
        self.supervisor.stop()
        self.broker.stop()


def start_broker_pod(name: str, ip: str, port: int, workdir: Path, *, cp: ControlPlane,
                     namespace: str, configmap: str, registry_ca: Path, token: str,
                     tls: tuple[Path, Path], probe_secrets: dict[str, dict[str, str]],
                     ca: Path | None = None, process: bool = False) -> BrokerPod:
    """``process``: the sidecar runs as ``python -m sidecar`` (its own RSS; ``ca`` checks its
    gRPC certificate when we ask it what it runs)."""
    broker = start_dynsec_broker(workdir / "broker")
    supervisor = Supervisor(broker)
    mounted = workdir / "probe-secrets"  # the probe Secrets, as the kubelet mounts them
    for secret, keys in probe_secrets.items():
        (mounted / secret).mkdir(parents=True, exist_ok=True)
        for key, value in keys.items():
            (mounted / secret / key).write_text(value)
    options = {"host": broker.host, "port": str(broker.port),
               "conf_dir": str(broker.include_dir), "config_path": str(broker.conf_path),
               "dynsec_username": ADMIN[0], "dynsec_password": ADMIN[1],
               "restart_timeout": "20"}
    if process:
        return _sidecar_process(name, ip, port, workdir, broker, supervisor, options, cp=cp,
                                namespace=namespace, configmap=configmap,
                                registry_ca=registry_ca, token=token, tls=tls,
                                mounted=mounted, ca=ca)
    settings = Settings(
        broker="mosquitto", config_dirs=(), source="api", configmaps=(configmap,),
        namespace=namespace, kubeconfig=cp.kubeconfig("sidecar"), pod_name=name,
        pod_namespace=namespace, adapter_options=options, plugin_dir=workdir / "plugins",
        cache_dir=workdir / "cache", allow_broker_restart=True, debounce=0.05,
        resync_interval=2.0, http_address="127.0.0.1:0", registry_ca=registry_ca,
        probe_host=broker.host, probe_port=broker.port, probe_secrets_dir=mounted)
    adapter = MosquittoAdapter(MosquittoSettings.from_options(options, settings.plugin_dir))
    sidecar = Sidecar(settings, adapter=adapter)
    sidecar.start()
    server = serve(sidecar, f"{ip}:{port}", token=token, tls=tls)
    return BrokerPod(name, ip, broker, supervisor, sidecar, server)


def _sidecar_process(name: str, ip: str, port: int, workdir: Path, broker: Mosquitto,
                     supervisor: Supervisor, options: dict[str, str], *, cp: ControlPlane,
                     namespace: str, configmap: str, registry_ca: Path, token: str,
                     tls: tuple[Path, Path], mounted: Path, ca: Path | None) -> BrokerPod:
    tokens = workdir / "grpc-tokens"
    tokens.write_text(f"builder:{token}\n")
    argv = [sys.executable, "-m", "sidecar", "--broker=mosquitto", "--source=api",
            f"--configmap={configmap}", f"--namespace={namespace}",
            f"--kubeconfig={cp.kubeconfig('sidecar')}", f"--plugin-dir={workdir / 'plugins'}",
            f"--cache-dir={workdir / 'cache'}", "--allow-broker-restart", "--debounce=0.05",
            "--resync-interval=2", "--http-address=127.0.0.1:0", f"--grpc-address={ip}:{port}",
            f"--grpc-token-file={tokens}", f"--grpc-tls-cert={tls[0]}",
            f"--grpc-tls-key={tls[1]}", f"--registry-ca={registry_ca}",
            "--allow-unsigned-images", f"--probe-secrets-dir={mounted}",
            *(f"--adapter-opt={k}={v}" for k, v in options.items())]
    env = {**os.environ, "POD_NAME": name, "POD_NAMESPACE": namespace}
    log = (workdir / "sidecar.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own descriptor
    channel = secure_channel(f"{ip}:{port}", ca, token,
                             server_name=f"plugforge-sidecar.{namespace}.svc")
    pod = BrokerPod(name, ip, broker, supervisor, None, None, proc, channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar {name} exited: see {workdir / 'sidecar.log'}")
        try:
            grpc.channel_ready_future(channel).result(timeout=0.5)
            return pod
        except grpc.FutureTimeoutError:
            continue
    pod.stop()
    raise RuntimeError(f"sidecar {name} did not serve gRPC within 60 s")
