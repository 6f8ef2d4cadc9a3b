"""The builder owns its plugins' ConfigMap keys: a direct edit is written back, and said so.

Pure: which keys a write reverts (``builder.rollout.ownership``). Real: the builder (real
apiserver, git server, registry, a real build) writes a plugin key; an operator's direct edit
of it is written back at the next reconcile with one Warning Event ``ConfigMapEditReverted``
on the BrokerPlugin naming the key and the ConfigMap but not the values — once per overwrite,
not on every resync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from builder_support import (
    Cluster,
    broker_plugin,
    install,
    scaffold_repo,
    tenant_namespace,
    wait_for,
)
from grpc_support import Api, rollout_builder_api
from sidecar_support import broker_yaml

from builder.rollout.ownership import (
    WRITTEN_ANNOTATION,
    fingerprint,
    record,
    reverted,
    written,
)
from testbed.certs import CertificateAuthority
from testbed.gitserver import GitServer
from testbed.kube import ControlPlane
from testbed.registry import Registry

pytestmark = pytest.mark.timeout(300)

KEY = "plugin.gate.yaml"
CANARY = "canary.mq-0.plugin.gate.yaml"


# --- pure ---------------------------------------------------------------------------------------


def test_only_an_overwritten_edit_of_a_recorded_key_is_reported() -> None:
    recorded = {KEY: fingerprint("v1"), CANARY: fingerprint("c1")}
    keys = [KEY, CANARY]
    # The builder's own earlier value replaced by a new release: no edit.
    assert reverted({KEY: "v1"}, {KEY: "v2"}, recorded, keys) == []
    # Edited, then overwritten: reported; edited to what the builder writes anyway: not.
    assert reverted({KEY: "mine"}, {KEY: "v1"}, recorded, keys) == [KEY]
    assert reverted({KEY: "v1"}, {KEY: "v1"}, recorded, keys) == []
    # Removed and written back; an edited canary key removed by an abort: both overwritten.
    assert reverted({}, {KEY: "v1"}, recorded, keys) == [KEY]
    assert reverted({KEY: "v1", CANARY: "edited"}, {KEY: "v1"}, recorded, keys) == [CANARY]
    # No record (written before records were kept): never reported.
    assert reverted({KEY: "mine"}, {KEY: "v1"}, {}, keys) == []
    # Another owner's keys are not ours to judge.
    assert reverted({"broker.yaml": "x"}, {"broker.yaml": "y"},
                    {"broker.yaml": fingerprint("z")}, keys) == []


def test_records_follow_the_write_and_hold_no_values() -> None:
    recorded = {"plugin.other.yaml": fingerprint("o"), CANARY: fingerprint("c1")}
    after = record(recorded, {KEY: "settings: {password: hunter2}"}, [KEY, CANARY])
    assert after == {"plugin.other.yaml": fingerprint("o"),
                     KEY: fingerprint("settings: {password: hunter2}")}
    assert "hunter2" not in str(after)
    assert written({WRITTEN_ANNOTATION: "not json"}) == {}
    assert written({WRITTEN_ANNOTATION: '["a"]'}) == {}


# --- real builder, apiserver, git, registry -----------------------------------------------------

CONFIGMAP = "edit-plugins"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Cluster:
    install(control_plane)
    c = Cluster(control_plane, tenant_namespace(control_plane, "owned"))
    c.create_configmap(CONFIGMAP, {"broker.yaml": broker_yaml({"max_inflight_messages": "20"})})
    return c


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane, testbed_ca: CertificateAuthority, registry: Registry,
        cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with rollout_builder_api(control_plane, testbed_ca, registry.ca.cert, tmp_path_factory,
                             "builder-owned", cluster.ns) as a:
        yield a


@pytest.fixture(scope="module")
def rolled_out(api: Api, cluster: Cluster, git_server: GitServer, registry: Registry,
               tmp_path_factory: pytest.TempPathFactory) -> str:
    """The plugin key as the builder wrote it (no selector: written directly)."""
    url = git_server.create_repo(f"{cluster.ns}/gate.git")
    scaffold_repo(tmp_path_factory.mktemp("src") / "gate", "mosquitto-c", "mosquitto", "gate",
                  url)
    cluster.create("brokerplugins", broker_plugin(
        "gate", url=url, repository=f"{registry.host}/plugins/gate", configmap=CONFIGMAP,
        settings={"deny_users": "mallory"}))
    wait_for(lambda: cluster.condition("gate", "Ready").get("reason") == "RolledOut",
             "the plugin key written", timeout=180)
    return cluster.configmap(CONFIGMAP)[KEY]


def edit(cluster: Cluster, change: Callable[[dict[str, str]], object]) -> None:
    """An operator's direct edit (read, change, replace with the resourceVersion read)."""
    path = f"/api/v1/namespaces/{cluster.ns}/configmaps/{CONFIGMAP}"
    for _ in range(10):
        _, cm = cluster.cp.request("GET", path)
        data: Any = cm["data"]
        change(data)
        code, out = cluster.cp.request("PUT", path, body=cm)
        if code == 200:
            return
        assert code == 409, out
    raise AssertionError("the ConfigMap kept changing")


def reverted_events(cluster: Cluster) -> list[dict[str, Any]]:
    code, out = cluster.cp.request("GET",
                                   f"/apis/events.k8s.io/v1/namespaces/{cluster.ns}/events")
    assert code == 200, out
    items: Any = out["items"]
    return [e for e in items if e["reason"] == "ConfigMapEditReverted"
            and e["regarding"]["name"] == "gate" and e["regarding"]["kind"] == "BrokerPlugin"]


def test_a_direct_edit_is_written_back_with_one_warning(
        rolled_out: str, cluster: Cluster, api: Api) -> None:
    _, cm = cluster.cp.request("GET", f"/api/v1/namespaces/{cluster.ns}/configmaps/{CONFIGMAP}")
    meta: Any = cm["metadata"]
    assert written(meta["annotations"]) == {KEY: fingerprint(rolled_out)}
    assert reverted_events(cluster) == []

    edited = rolled_out.replace("mallory", "hunter2-secret-value")
    assert edited != rolled_out
    edit(cluster, lambda d: d.__setitem__(KEY, edited))
    wait_for(lambda: cluster.configmap(CONFIGMAP)[KEY] == rolled_out, "the key written back",
             timeout=30)
    events = wait_for(lambda: reverted_events(cluster) or None, "the Warning Event", timeout=30)
    assert len(events) == 1
    note = events[0]["note"]
    assert events[0]["type"] == "Warning"
    assert KEY in note and f"ConfigMap {cluster.ns}/{CONFIGMAP}" in note
    assert "hunter2" not in note and "mallory" not in note  # names, never values
    # Resyncs (every 2 s here) find their own value again: no more events, no more writes.
    _, before = cluster.cp.request("GET",
                                   f"/api/v1/namespaces/{cluster.ns}/configmaps/{CONFIGMAP}")
    time.sleep(6)
    _, after = cluster.cp.request("GET",
                                  f"/api/v1/namespaces/{cluster.ns}/configmaps/{CONFIGMAP}")
    assert len(reverted_events(cluster)) == 1
    meta_before: Any = before["metadata"]
    meta_after: Any = after["metadata"]
    assert meta_after["resourceVersion"] == meta_before["resourceVersion"]

    # A removed key is put back too, and said so once more.
    edit(cluster, lambda d: d.pop(KEY))
    wait_for(lambda: cluster.configmap(CONFIGMAP).get(KEY) == rolled_out, "the key put back",
             timeout=30)
    wait_for(lambda: len(reverted_events(cluster)) == 2, "a second Warning Event", timeout=30)
    # Editing another owner's key (broker.yaml) is none of the plugin's business.
    edit(cluster, lambda d: d.__setitem__(
        "broker.yaml", broker_yaml({"max_inflight_messages": "30"})))
    time.sleep(4)
    assert len(reverted_events(cluster)) == 2
    assert "30" in cluster.configmap(CONFIGMAP)["broker.yaml"]
