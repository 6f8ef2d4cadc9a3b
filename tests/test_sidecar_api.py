"""API mode against the real kube-apiserver (as the sidecar's own service account, with the
RBAC of manifests/sidecar/rbac.yaml), Kubernetes Events, and the gRPC service."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kubernetes import client
from sidecar_support import (
    broker_yaml,
    make_sidecar,
    start_dynsec_broker,
    wait_for,
)

from builder.kube import api_client_from_kubeconfig, apply_documents, load_documents
from plugforge.v1 import sidecar_pb2 as pb
from plugforge.v1 import sidecar_pb2_grpc as pb_grpc
from sidecar.events import kubernetes_event_sink
from sidecar.grpc_service import serve
from sidecar.state import Phase
from sidecar.trigger import Trigger
from sidecar.watch_api import ConfigMapWatcher
from testbed.certs import CertificateAuthority
from testbed.kube import ControlPlane
from testbed.mosquitto import Mosquitto

pytestmark = pytest.mark.timeout(180)

RBAC = Path(__file__).resolve().parent.parent / "manifests" / "sidecar" / "rbac.yaml"
CONFIG = {"max_inflight_messages": "20"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = start_dynsec_broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def core(control_plane: ControlPlane) -> client.CoreV1Api:
    api = api_client_from_kubeconfig(control_plane.kubeconfig("admin"))
    apply_documents(api, load_documents([RBAC]))
    return client.CoreV1Api(api)


def put_configmap(core: client.CoreV1Api, name: str, data: dict[str, str]) -> None:
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, namespace="default"),
                              data=data)
    try:
        core.replace_namespaced_config_map(name, "default", body)
    except client.ApiException as e:
        if e.status != 404:
            raise
        core.create_namespaced_config_map("default", body)


def test_api_mode_applies_configmap_edits_and_posts_events(
        control_plane: ControlPlane, core: client.CoreV1Api, broker: Mosquitto,
        tmp_path: Path) -> None:
    put_configmap(core, "broker-a", {"broker.yaml": broker_yaml(CONFIG)})
    overrides: dict[str, Any] = dict(source="api", configmaps=("broker-a",), namespace="default",
                     kubeconfig=control_plane.kubeconfig("sidecar"), pod_name="mosquitto-a-0",
                     pod_namespace="default")
    sidecar, _ = make_sidecar(broker, [], tmp_path / "sc", None, **overrides)
    sink = kubernetes_event_sink(sidecar.settings)
    assert sink is not None
    sidecar._sinks.append(sink)
    assert sidecar.mode == "api"
    sidecar.start()
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply from the API")
        put_configmap(core, "broker-a", {"broker.yaml": broker_yaml(
            {**CONFIG, "max_queued_messages": "555"})})
        wait_for(lambda: "max_queued_messages 555" in (
            broker.include_dir / "50-plugforge-config.conf").read_text(), "edit applied")
        # An invalid edit is rejected and shows up as a Warning event on the pod.
        put_configmap(core, "broker-a", {"broker.yaml": broker_yaml({"max_qos": "7"})})
        wait_for(lambda: sidecar.state.phase is Phase.REJECTED, "rejected")
        assert "max_qos: expected an integer from 0 to 2" in sidecar.state.last_error

        def reasons() -> set[str]:
            events = core.list_namespaced_event(
                "default", field_selector="involvedObject.name=mosquitto-a-0").items
            return {e.reason or "" for e in events}

        wait_for(lambda: {"Applied", "Rejected"} <= reasons(), "events on the pod")
        # Deleting the ConfigMap is not an empty desired state: the last good one stays.
        core.delete_namespaced_config_map("broker-a", "default")
        wait_for(lambda: "broker-a not found" in sidecar.state.last_error, "deletion noticed")
        assert "max_queued_messages 555" in (
            broker.include_dir / "50-plugforge-config.conf").read_text()
    finally:
        sidecar.stop()


def test_watch_relists_after_410_and_restarts_a_silent_watch(
        control_plane: ControlPlane, core: client.CoreV1Api) -> None:
    put_configmap(core, "broker-b", {"broker.yaml": "v: 1"})
    trigger = Trigger(debounce=0, resync_interval=3600)
    # Resource version "1" is far older than the apiserver's watch cache: 410 Gone.
    watcher = ConfigMapWatcher("default", ["broker-b"], trigger,
                               kubeconfig=control_plane.kubeconfig("sidecar"), idle_timeout=2.0,
                               initial_resource_version="1")
    watcher.start()
    try:
        wait_for(lambda: watcher.relists >= 1 and watcher.documents() is not None,
                 "relist after 410")
        docs = watcher.documents()
        assert docs is not None and docs[0].text == "v: 1"
        # Nothing changes for longer than idle_timeout: the watchdog restarts the watch...
        wait_for(lambda: watcher.restarts >= 1, "watchdog restart", timeout=15)
        # ...and the restarted watch still delivers.
        put_configmap(core, "broker-b", {"broker.yaml": "v: 2"})
        wait_for(lambda: [d.text for d in watcher.documents() or []] == ["v: 2"],
                 "update after restart")
    finally:
        watcher.stop()


def test_grpc_state_plan_reconcile_and_events(broker: Mosquitto, tmp_path: Path) -> None:
    from testbed.configmap_dir import ConfigMapDir
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml(CONFIG)})
    sidecar, adapter = make_sidecar(broker, [cm.path], tmp_path / "sc", None)
    sidecar.start()
    server = serve(sidecar, "127.0.0.1:0", token="s3cret-token")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.bound_port}")
    stub = pb_grpc.SidecarServiceStub(channel)
    auth = (("authorization", "Bearer s3cret-token"),)
    try:
        wait_for(lambda: sidecar.state.phase is Phase.APPLIED, "first apply")
        with pytest.raises(grpc.RpcError) as info:
            stub.GetState(pb.GetStateRequest(), metadata=(("authorization", "Bearer nope"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        state = stub.GetState(pb.GetStateRequest(), metadata=auth)
        assert state.phase == pb.PHASE_APPLIED and state.ready and state.broker == "mosquitto"
        assert state.observed_config["max_inflight_messages"] == "20"

        calls = adapter.mutating_calls()
        assert list(stub.Plan(pb.PlanRequest(), metadata=auth).actions) == []
        proposed = stub.Plan(pb.PlanRequest(documents=[pb.Document(
            key="broker.yaml", text=broker_yaml({**CONFIG, "max_connections": "50"}))]),
            metadata=auth)
        assert [(a.target, a.change) for a in proposed.actions] == [
            ("max_connections", pb.CHANGE_CLASS_BROKER_RESTART),
            ("broker", pb.CHANGE_CLASS_BROKER_RESTART)]
        assert proposed.max_change == pb.CHANGE_CLASS_BROKER_RESTART
        with pytest.raises(grpc.RpcError) as info:
            stub.Plan(pb.PlanRequest(documents=[pb.Document(key="broker.yaml", text="[")]),
                      metadata=auth)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert adapter.mutating_calls() == calls  # dry runs change nothing

        received: list[pb.WatchEventsResponse] = []
        stream = stub.WatchEvents(pb.WatchEventsRequest(), metadata=auth)

        def consume() -> None:
            try:
                for item in stream:
                    received.append(item)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.CANCELLED

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        time.sleep(0.5)
        cm.update({"broker.yaml": broker_yaml({**CONFIG, "max_queued_messages": "77"})})
        wait_for(lambda: any(r.event.kind == pb.EVENT_KIND_APPLIED for r in received),
                 "an Applied event on the stream")
        stream.cancel()
        result = stub.Reconcile(pb.ReconcileRequest(reason="test"), metadata=auth)
        assert result.phase == pb.PHASE_APPLIED and list(result.actions) == []
    finally:
        channel.close()
        server.stop(grace=None)
        sidecar.stop()


def test_cli_process_serves_grpc_with_token_and_stops_on_sigterm(
        broker: Mosquitto, tmp_path: Path, testbed_ca: CertificateAuthority) -> None:
    import signal
    import subprocess
    import sys

    from sidecar_support import ADMIN

    from testbed.configmap_dir import ConfigMapDir
    from testbed.procs import free_port
    cm = ConfigMapDir(tmp_path / "cm")
    cm.update({"broker.yaml": broker_yaml(CONFIG)})
    (tmp_path / "token").write_text("cli-token\n")
    (tmp_path / "dynsec").write_text(ADMIN[1])
    port = free_port()
    pair = testbed_ca.issue("cli-sidecar")
    argv = [sys.executable, "-m", "sidecar", "--broker", "mosquitto", "--source", "files",
            "--config-dir", str(cm.path), "--adapter-opt", f"port={broker.port}",
            "--adapter-opt", f"conf_dir={broker.include_dir}",
            "--adapter-opt", f"config_path={broker.conf_path}",
            "--adapter-opt", f"dynsec_username={ADMIN[0]}",
            "--adapter-opt", f"dynsec_password_file={tmp_path / 'dynsec'}",
            "--plugin-dir", str(tmp_path / "plugins"), "--cache-dir", str(tmp_path / "cache"),
            "--http-address", "127.0.0.1:0", "--grpc-address", f"127.0.0.1:{port}",
            "--grpc-token-file", str(tmp_path / "token"),
            "--grpc-tls-cert", str(pair.cert), "--grpc-tls-key", str(pair.key),
            "--allow-unsigned-images"]
    log = tmp_path / "sidecar.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    channel = grpc.secure_channel(f"127.0.0.1:{port}",
                                  grpc.ssl_channel_credentials(testbed_ca.cert.read_bytes()))
    stub = pb_grpc.SidecarServiceStub(channel)

    def ready() -> bool:
        try:
            state = stub.GetState(pb.GetStateRequest(),
                                  metadata=(("authorization", "Bearer cli-token"),), timeout=2)
        except grpc.RpcError:
            return False
        return bool(state.ready)

    try:
        wait_for(ready, f"the CLI sidecar to be ready (log: {log})", timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "decision=Applied" in log.read_text()  # structured decision log lines
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
