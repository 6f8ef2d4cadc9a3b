"""The sidecar's lean Kubernetes client (sidecar/kube_http.py, kube_config.py) against the real
kube-apiserver: kubeconfig and in-cluster config, tokens that rotate, client certificates,
streaming watches (events, 410 Gone, the idle watchdog), typed errors that name the missing
RBAC verb, and an API-mode sidecar process that never imports the official client."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.kube import api_client_from_kubeconfig, apply_documents, load_documents
from sidecar.events import SERIES_WINDOW, EventRecorder, post_event
from sidecar.kube_config import ClusterConfig, TokenSource, load_config, load_incluster
from sidecar.kube_errors import (
    KubeApiError,
    KubeConfigError,
    KubeConnectionError,
    KubeGone,
    KubeWatchIdle,
)
from sidecar.kube_http import KubeClient, rbac_request
from sidecar.state import ApplyEvent, EventKind
from testbed.kube import SIDECAR_USER, ControlPlane

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
RBAC = ROOT / "manifests" / "sidecar" / "rbac.yaml"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
def cp(control_plane: ControlPlane) -> ControlPlane:
    apply_documents(api_client_from_kubeconfig(control_plane.kubeconfig("admin")),
                    load_documents([RBAC]))
    return control_plane


def client_for(cp: ControlPlane, identity: str = "sidecar") -> KubeClient:
    return KubeClient(load_config(cp.kubeconfig(identity)))


def put_configmap(cp: ControlPlane, name: str, data: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"}, "data": data}
    code, out = cp.request("PUT", f"{CONFIGMAPS}/{name}", body=body)
    if code == 404:
        code, out = cp.request("POST", CONFIGMAPS, body=body)
    assert code in (200, 201), out


def write_kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def offline_mosquitto_args(tmp_path: Path) -> list[str]:
    """Enough for the adapter to construct; no broker is contacted before the first apply."""
    return ["--adapter-opt", f"conf_dir={tmp_path / 'conf.d'}",
            "--adapter-opt", f"config_path={tmp_path / 'mosquitto.conf'}",
            "--plugin-dir", str(tmp_path / "plugins"), "--cache-dir", str(tmp_path / "cache"),
            "--allow-unsigned-images"]


# --- pure ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", CONFIGMAPS, {}, ("list", "configmaps", "", "default")),
    ("GET", CONFIGMAPS, {"watch": "true"}, ("watch", "configmaps", "", "default")),
    ("GET", f"{CONFIGMAPS}/x", {}, ("get", "configmaps", "", "default")),
    ("POST", "/api/v1/namespaces/ns/events", {}, ("create", "events", "", "ns")),
    ("GET", "/api/v1/namespaces/ns/pods/p/log", {}, ("get", "pods/log", "", "ns")),
    ("DELETE", "/apis/plugforge.io/v1/namespaces/ns/rollouts", {},
     ("deletecollection", "rollouts", "plugforge.io", "ns")),
    ("GET", "/api/v1/namespaces", {}, ("list", "namespaces", "", None)),
    ("PUT", "/api/v1/namespaces/ns", {}, ("update", "namespaces", "", None)),
])
def test_rbac_request_names_verb_and_resource(method: str, path: str, query: dict[str, str],
                                              expected: tuple[str, str, str, str | None]) -> None:
    r = rbac_request(method, path, query)
    assert (r.verb, r.resource, r.group, r.namespace) == expected


def test_token_file_is_reread_after_its_period_or_when_invalidated(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "token"
    path.write_text("one\n")
    token = TokenSource(path=path, reread=60, clock=lambda: now[0])
    assert token.get() == "one"
    path.write_text("two")
    now[0] = 59.0
    assert token.get() == "one"  # within the period: no file read per request
    now[0] = 60.0
    assert token.get() == "two"
    path.write_text("three")
    token.invalidate()
    assert token.get() == "three"
    path.write_text("")
    token.invalidate()
    with pytest.raises(KubeConfigError, match="is empty"):
        token.get()


def test_config_errors_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"not running in a pod.*--kubeconfig"):
        load_incluster({}, tmp_path)
    with pytest.raises(KubeConfigError, match=r"token is missing.*automountServiceAccountToken"):
        load_incluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                       tmp_path)
    kc = write_kubeconfig(tmp_path / "exec.yaml", {"server": "https://127.0.0.1:1"},
                          {"exec": {"command": "aws"}})
    with pytest.raises(KubeConfigError, match=r"'exec'.*use a token, tokenFile or client"):
        load_config(kc)
    kc = write_kubeconfig(tmp_path / "half.yaml", {"server": "https://127.0.0.1:1"},
                          {"client-certificate": "c.crt"})
    with pytest.raises(KubeConfigError, match=r"cannot read client-certificate .*c\.crt"):
        load_config(kc)
    (tmp_path / "no-context.yaml").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(KubeConfigError, match="no current-context"):
        load_config(tmp_path / "no-context.yaml")
    with pytest.raises(KubeConfigError, match="cannot read kubeconfig"):
        load_config(tmp_path / "absent.yaml")


def test_ipv6_service_host_is_bracketed(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("")
    config = load_incluster({"KUBERNETES_SERVICE_HOST": "fd00::1",
                             "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert config.server == "https://[fd00::1]:443"


# --- against the apiserver ------------------------------------------------------------------

def test_list_and_create_with_the_sidecar_kubeconfig(cp: ControlPlane) -> None:
    put_configmap(cp, "kh-list", {"k": "v"})
    api = client_for(cp)
    result = api.get(CONFIGMAPS, {"fieldSelector": "metadata.name=kh-list"})
    assert [i["data"] for i in result["items"]] == [{"k": "v"}]
    assert result["metadata"]["resourceVersion"]
    post_event(api, "default", "kh-pod-0", ApplyEvent(
        EventKind.REJECTED, "test", "max_qos: bad", "sha256:0", 0.1, 0.0))
    code, events = cp.request(
        "GET", "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dkh-pod-0")
    assert code == 200
    items: list[dict[str, Any]] = events["items"]  # type: ignore[assignment]
    assert [(e["reason"], e["type"], e["message"], e["source"]["component"])
            for e in items] == [("Rejected", "Warning", "max_qos: bad", "plugforge-sidecar")]


def _events_of(cp: ControlPlane, pod: str) -> list[tuple[str, str, int]]:
    code, events = cp.request(
        "GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{pod}")
    assert code == 200
    items: list[dict[str, Any]] = events["items"]  # type: ignore[assignment]
    return sorted((e["reason"], e["message"], e["count"]) for e in items)


def test_repeated_events_are_counted_on_one_event(cp: ControlPlane) -> None:
    """A retry loop's identical outcomes bump one Event's count (as the sidecar identity,
    with exactly manifests/sidecar/rbac.yaml: create and patch on events)."""
    now = [1000.0]
    record = EventRecorder(client_for(cp), "default", "kh-pod-series", clock=lambda: now[0])

    def failed(message: str) -> ApplyEvent:
        return ApplyEvent(EventKind.FAILED, "retry", message, "sha256:1", 0.1, 0.0)

    for _ in range(3):
        record(failed("broker unreachable"))
    record(failed("broker unreachable: connection refused"))  # another message: another Event
    assert _events_of(cp, "kh-pod-series") == [
        ("Failed", "broker unreachable", 3),
        ("Failed", "broker unreachable: connection refused", 1)]

    now[0] += SERIES_WINDOW + 1  # a new series after the window
    record(failed("broker unreachable"))
    assert _events_of(cp, "kh-pod-series").count(("Failed", "broker unreachable", 1)) == 1

    # The Event expired (deleted) under us: a new one, not an error.
    _, events = cp.request("GET", "/api/v1/namespaces/default/events?fieldSelector="
                           "involvedObject.name%3Dkh-pod-series")
    for item in events["items"]:  # type: ignore[attr-defined]
        cp.request("DELETE", f"/api/v1/namespaces/default/events/{item['metadata']['name']}")
    record(failed("broker unreachable"))
    assert _events_of(cp, "kh-pod-series") == [("Failed", "broker unreachable", 1)]


def test_403_names_the_missing_rbac_verb_and_resource(cp: ControlPlane) -> None:
    api = client_for(cp)
    with pytest.raises(KubeApiError) as info:
        api.get("/api/v1/namespaces/default/secrets")
    assert info.value.status == 403 and info.value.reason == "Forbidden"
    assert "RBAC does not allow 'list' on 'secrets' in namespace default" in str(info.value)
    assert "manifests/sidecar/rbac.yaml" in str(info.value)
    with pytest.raises(KubeApiError, match="'watch' on 'configmaps' in namespace kube-system"):
        next(api.watch("/api/v1/namespaces/kube-system/configmaps", idle_timeout=5))


def test_401_says_the_credentials_were_rejected(cp: ControlPlane, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "bad.yaml",
                          {"server": cp.url, "certificate-authority": str(cp.ca.cert)},
                          {"token": "not-a-valid-token"})
    with pytest.raises(KubeApiError, match=r"rejected the credentials of kubeconfig .*401") as e:
        KubeClient(load_config(kc)).get(CONFIGMAPS)
    assert e.value.status == 401
    assert "not-a-valid-token" not in str(e.value)


def test_incluster_config_follows_a_rotated_token(cp: ControlPlane, tmp_path: Path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(cp.ca.cert.read_bytes())
    (sa / "token").write_text("expired-token")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(cp.port)}
    api = KubeClient(load_config(None, environ=env, service_account_dir=sa))
    with pytest.raises(KubeApiError, match="in-cluster service account"):
        api.get(CONFIGMAPS)
    # The kubelet rotates the projected token: the next 401 re-reads the file and retries.
    (sa / "token").write_text(cp.identities["sidecar"].token + "\n")
    assert "items" in api.get(CONFIGMAPS)


@pytest.mark.parametrize("inline", [True, False], ids=["data", "files"])
def test_client_certificate_authenticates(cp: ControlPlane, tmp_path: Path,
                                          inline: bool) -> None:
    # The apiserver trusts the testbed CA for clients: CN is the user (the sidecar's SA).
    pair = cp.ca.issue(SIDECAR_USER, client=True)
    cluster: dict[str, Any] = {"server": cp.url}
    user: dict[str, Any]
    if inline:
        cluster["certificate-authority-data"] = base64.b64encode(cp.ca.cert.read_bytes()).decode()
        user = {"client-certificate-data": base64.b64encode(pair.cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(pair.key.read_bytes()).decode()}
    else:
        cluster["certificate-authority"] = str(cp.ca.cert)
        user = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    api = KubeClient(load_config(write_kubeconfig(tmp_path / "cert.yaml", cluster, user)))
    assert "items" in api.get(CONFIGMAPS)
    with pytest.raises(KubeApiError, match="'list' on 'secrets'"):
        api.get("/api/v1/namespaces/default/secrets")


def test_tls_failures_point_at_the_ca(cp: ControlPlane, tmp_path: Path,
                                      testbed_ca: Any) -> None:
    token = cp.identities["sidecar"].token
    wrong_ca = write_kubeconfig(tmp_path / "wrong-ca.yaml", {
        "server": cp.url, "certificate-authority": str(testbed_ca.cert)}, {"token": token})
    with pytest.raises(KubeConnectionError, match=r"TLS with the apiserver .*check the cluster CA"):
        KubeClient(load_config(wrong_ca)).get(CONFIGMAPS)
    # tls-server-name is what the serving certificate is checked against.
    cluster = {"server": cp.url, "certificate-authority": str(cp.ca.cert)}
    good = write_kubeconfig(tmp_path / "sni.yaml", {
        **cluster, "tls-server-name": "kubernetes.default.svc"}, {"token": token})
    assert "items" in KubeClient(load_config(good)).get(CONFIGMAPS)
    bad = write_kubeconfig(tmp_path / "sni-bad.yaml", {
        **cluster, "tls-server-name": "elsewhere.example"}, {"token": token})
    with pytest.raises(KubeConnectionError, match="TLS"):
        KubeClient(load_config(bad)).get(CONFIGMAPS)
    with pytest.raises(KubeConfigError, match="cannot load the cluster CA"):
        KubeClient(ClusterConfig(server=cp.url, ca_data="not a pem", source="test"))


def test_watch_streams_changes_bookmarks_and_ends_in_gone_or_timeout(cp: ControlPlane) -> None:
    put_configmap(cp, "kh-watch", {"v": "1"})
    api = client_for(cp)
    query = {"fieldSelector": "metadata.name=kh-watch"}
    rv = api.get(CONFIGMAPS, query)["metadata"]["resourceVersion"]
    events = api.watch(CONFIGMAPS, {**query, "resourceVersion": rv,
                                    "allowWatchBookmarks": "true"}, idle_timeout=10)
    put_configmap(cp, "kh-watch", {"v": "2"})
    event = next(events)
    assert (event.type, event.object["data"]) == ("MODIFIED", {"v": "2"})
    assert int(event.resource_version) > int(rv)
    events.close()  # leaving early closes the connection; the pool stays usable
    assert api.get(CONFIGMAPS, query)["items"][0]["data"] == {"v": "2"}

    # The server ends a watch cleanly after timeoutSeconds: the iteration just stops.
    done = list(api.watch(CONFIGMAPS, {**query, "resourceVersion": event.resource_version,
                                       "timeoutSeconds": "1"}, idle_timeout=10))
    assert all(e.type == "BOOKMARK" for e in done)
    # Nothing at all for idle_timeout: the read timeout is the dead-watch detector.
    with pytest.raises(KubeWatchIdle, match="nothing for 1 s"):
        list(api.watch(CONFIGMAPS, {**query, "resourceVersion": event.resource_version},
                       idle_timeout=1))
    # A version older than the watch cache: 410, as an HTTP status or an ERROR event.
    with pytest.raises(KubeGone, match="410"):
        list(api.watch(CONFIGMAPS, {**query, "resourceVersion": "1"}, idle_timeout=10))


def test_api_mode_process_never_imports_the_kubernetes_package(cp: ControlPlane,
                                                               tmp_path: Path) -> None:
    """Nor grpc, without --grpc-address: each costs the sidecar >10 MB of RSS."""
    put_configmap(cp, "kh-proc", {"broker.yaml": "apiVersion: plugforge.io/v1\n"})
    script = textwrap.dedent("""
        import json, sys, time
        from sidecar.__main__ import _build
        from sidecar.settings import parse_args
        sidecar = _build(parse_args(sys.argv[1:]))
        sidecar.api_source.start()
        deadline = time.monotonic() + 30
        while sidecar.api_source.documents() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        print(json.dumps({"sinks": len(sidecar._sinks),
                          "docs": len(sidecar.api_source.documents() or []),
                          "heavy": sorted(m for m in sys.modules
                                          if m.split(".")[0] in ("kubernetes", "grpc"))}))
    """)
    env = {**os.environ, "POD_NAME": "kh-proc-0", "POD_NAMESPACE": "default"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    out = subprocess.run(
        [sys.executable, "-c", script, "--broker", "mosquitto", "--source", "api",
         "--configmap", "kh-proc", "--namespace", "default",
         "--kubeconfig", str(cp.kubeconfig("sidecar")),
         *offline_mosquitto_args(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"sinks": 1, "docs": 1, "heavy": []}


def test_cli_reports_a_bad_kubeconfig_without_a_traceback(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "--broker", "mosquitto", "--source", "api",
         "--configmap", "x", "--kubeconfig", str(tmp_path / "absent.yaml"),
         *offline_mosquitto_args(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot read kubeconfig"), out.stderr
