"""plugforge the way users run it: a real node (containerd, kubelet, controller-manager,
scheduler; testbed/node.py) and images built from the project's Containerfiles.

One module, so its cost shows on its own: the node starts once for the session (and is removed
completely afterwards); the images are built once per input into the plugforge cache. When the
node cannot start, every test here fails with the reason; none is skipped.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from node_support import Image, RealNode, http_get, pod_status, wait_running

from plugforge.contract import Probe
from sidecar.probes import run_probe
from testbed import e2e, node, node_brokers, node_cluster
from testbed.e2e_cluster import Api, wait_for
from testbed.gitserver import run_git
from testbed.node_cluster import Deployed

ROOT = Path(__file__).resolve().parent.parent
NS = "default"
# A cold machine builds the Debian base and both images inside the first image test's setup
# (about 9 minutes on 2 cores), past the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(1800)


def test_node_runs_a_pod_that_sees_its_configmap_and_its_updates(real_node: RealNode) -> None:
    api = real_node.api
    api.ok("POST", f"/api/v1/namespaces/{NS}/configmaps",
           {"metadata": {"name": "projected"}, "data": {"greeting": "hello"}})
    api.ok("POST", f"/api/v1/namespaces/{NS}/pods", {
        "metadata": {"name": "projection"},
        "spec": {
            "containers": [{
                "name": "web", "image": real_node.busybox,
                "args": ["httpd", "-f", "-p", "8080", "-h", "/cfg"],
                "readinessProbe": {"httpGet": {"path": "/greeting", "port": 8080},
                                   "periodSeconds": 1},
                "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "allowPrivilegeEscalation": False},
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "projected"}}]}})
    started = time.monotonic()
    pod = wait_running(api, "projection")
    pod_ready = time.monotonic() - started
    ip = pod["status"]["podIP"]
    assert ip.startswith("10.217.0."), pod["status"]
    assert pod["spec"]["nodeName"] == node.NODE_NAME  # placed by the real scheduler
    assert http_get(f"http://{ip}:8080/greeting") == "hello"

    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/projected")
    cm["data"]["greeting"] = "changed"
    api.ok("PUT", f"/api/v1/namespaces/{NS}/configmaps/projected", cm)
    written = time.monotonic()
    wait_for(lambda: http_get(f"http://{ip}:8080/greeting") == "changed",
             "the kubelet to project the new ConfigMap", timeout=30, interval=0.05)
    propagation = time.monotonic() - written
    print(f"\npod created -> Ready {pod_ready:.1f} s; ConfigMap write -> seen in the pod "
          f"{propagation:.2f} s; setup {real_node.timings}")
    assert propagation < 10

    api.ok("DELETE", f"/api/v1/namespaces/{NS}/pods/projection")
    api.ok("DELETE", f"/api/v1/namespaces/{NS}/configmaps/projected")


PROBE = """
import os
print("uid", os.getuid(), "gid", os.getgid())
for path in ("/opt/plugforge/probe", "/probe"):
    try:
        open(path, "w")
        print("writable", path)
    except OSError as e:
        print("refused", path, e.strerror)
"""


@pytest.mark.parametrize("name", ["sidecar", "builder"])
def test_image_runs_its_entrypoint_non_root_on_a_read_only_root(
        real_node: RealNode, plugforge_images: dict[str, Image], name: str) -> None:
    image, api = plugforge_images[name], real_node.api
    security = {"readOnlyRootFilesystem": True, "runAsNonRoot": True,
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    pod = f"image-{name}"
    started = time.monotonic()
    api.ok("POST", f"/api/v1/namespaces/{NS}/pods", {
        "metadata": {"name": pod},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "help", "image": image.ref, "args": ["--help"],
             "securityContext": security},
            {"name": "probe", "image": image.ref, "command": ["python", "-c", PROBE],
             "securityContext": security}]}})
    wait_for(lambda: pod_status(api, pod)["status"].get("phase") in ("Succeeded", "Failed"),
             f"pod {pod} to finish", timeout=300, interval=0.5)
    finished = time.monotonic() - started
    status = pod_status(api, pod)["status"]
    logs = {c: api_text(api, f"/api/v1/namespaces/{NS}/pods/{pod}/log?container={c}")
            for c in ("help", "probe")}
    assert status["phase"] == "Succeeded", (status, logs)
    assert "usage:" in logs["help"], logs["help"]
    # The image says USER 10001:10001; containerd 1.6 takes only the uid from it (gid 0) unless
    # the pod sets runAsGroup, as manifests/ do.
    assert "uid 10001 " in logs["probe"], logs["probe"]
    assert real_node.podman("image", "inspect", "--format", "{{.Config.User}}",
                            image.built).strip() == "10001:10001"
    assert "writable" not in logs["probe"], logs["probe"]
    assert "refused /opt/plugforge/probe Read-only file system" in logs["probe"], logs["probe"]
    # Guards against growth; the builder carries gcc, Erlang/OTP, Maven and a JDK (README).
    limit = {"sidecar": 450, "builder": 2100}[name]
    print(f"\n{name}: {image.size / 1e6:.0f} MB, built in {image.build_seconds:.0f} s "
          f"(0 = cached), pulled + ran in {finished:.1f} s; {real_node.timings}")
    assert image.size < limit * 1e6, f"{name} image is {image.size / 1e6:.0f} MB"
    api.ok("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod}")


def api_text(api: Api, path: str) -> str:
    """A plain-text API response (pod logs: apiserver -> kubelet -> containerd)."""
    req = urllib.request.Request(api.cp.url + path, headers={
        "Authorization": f"Bearer {api.cp.identities[api.identity].token}"})
    ctx = ssl.create_default_context(cafile=str(api.cp.ca.cert))
    with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
        return str(resp.read().decode(errors="replace"))


# --- flow 1 on real pods: manifests/overlays/mosquitto as users apply it -----------------------

@pytest.fixture(scope="session")
def deployed(real_node: RealNode, plugforge_images: dict[str, Image],
             tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """manifests/overlays/mosquitto applied as users apply it (testbed/node_cluster.py)."""
    session = node_cluster.NodeSession(real_node.cp, real_node.registry, real_node.node,
                                       real_node.podman, real_node.busybox, real_node.timings)
    refs = {name: image.ref for name, image in plugforge_images.items()}
    t = time.monotonic()
    refs["mosquitto"] = node_cluster.push_image(
        session, "mosquitto", ROOT / "testbed" / "containers" / "mosquitto.Containerfile",
        "brokers/mosquitto")
    real_node.timings["mosquitto image + push"] = time.monotonic() - t
    return node_cluster.deploy_plugforge(session, refs, tmp_path_factory.mktemp("real-node-flows"))


def test_flow1_brokerplugin_built_by_the_builder_pod_loaded_by_the_sidecar_container(
        real_node: RealNode, deployed: Deployed) -> None:
    api = real_node.api
    started = deployed.applied_at  # the builder pod starts building as soon as it runs
    path = f"/apis/plugforge.dev/v1alpha1/namespaces/{NS}/brokerplugins/deny-test"

    def built() -> dict[str, Any] | None:
        plugin: dict[str, Any] = api.ok("GET", path)
        conditions = {c["type"]: c for c in (plugin.get("status") or {}).get("conditions", [])}
        return plugin if conditions.get("Built", {}).get("status") == "True" else None

    try:
        wait_for(built, "the builder pod to build deny-test", timeout=300, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {api.ok('GET', path).get('status')}") from None
    build_seconds = time.monotonic() - started
    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins")
    releases = [yaml.safe_load(v) for k, v in cm["data"].items() if k.startswith("plugin.")]
    image = releases[0]["image"] if len(releases) == 1 else ""
    assert image.startswith(f"{deployed.registry_host}/plugins/deny-test@sha256:"), cm["data"]
    digest = image.split("@")[1]
    # The kubelet projects the ConfigMap; the sidecar container pulls, verifies and stages the
    # plugin and restarts the broker (plugins load at start), which the kubelet completes.
    try:
        wait_for(lambda: runs(deployed, digest), "the sidecar to run the new digest",
                 timeout=120, interval=0.2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(api, deployed.mosquitto_pod)}") from None
    rollout_seconds = time.monotonic() - started - build_seconds
    wait_for(lambda: restarts(api, deployed.mosquitto_pod)["mosquitto"] >= 1,
             "the kubelet to report the broker container's restart", timeout=30)
    wait_running(api, deployed.mosquitto_pod)
    # The policy the BrokerPlugin's probe checks, seen by a client through the pod network.
    assert outcome_at(deployed.pod_ip, "connect", "mallory") == "refused"
    deployed.digest = digest
    print(f"\nflow 1 on real pods: apply -> built {build_seconds:.1f} s (builder pod start "
          f"included), built -> running {rollout_seconds:.1f} s; "
          f"setup {real_node.timings}")


def outcome_at(host: str, action: str, username: str) -> str:
    kind: Any = "publish" if action == "publish" else "connect"
    return run_probe(Probe(f"{action}-{username}", kind, username, "accepted"), host, 1883,
                     mqtt_version="5", password="any-password").outcome


def describe(api: Api, pod: str) -> str:
    """Container states and log tails of ``pod``, for a failure message."""
    status = pod_status(api, pod)["status"]
    lines = [str(status.get("conditions"))]
    for c in status.get("containerStatuses", []):
        lines.append(f"--- {c['name']}: restarts {c['restartCount']}, {c['state']}")
        try:
            log = api_text(api, f"/api/v1/namespaces/{NS}/pods/{pod}/log?container={c['name']}"
                           "&tailLines=25")
        except urllib.error.HTTPError as e:
            log = str(e)
        lines.append(log)
    return "\n".join(lines)


def runs(deployed: Deployed, digest: str) -> bool:
    """The sidecar's metrics name ``digest`` as running (pod network, port sidecar-http)."""
    metrics = http_get(f"http://{deployed.pod_ip}:8080/metrics") or ""
    return f'running_digest="{digest}"' in metrics


def restarts(api: Api, pod: str) -> dict[str, int]:
    status = pod_status(api, pod)["status"]
    return {c["name"]: c["restartCount"] for c in status.get("containerStatuses", [])}


def container_pid(api: Api, pod: str, argv0: str) -> int:
    """The host PID of the process ``argv0`` in ``pod`` (found through the pod's cgroup)."""
    uid = pod_status(api, pod)["metadata"]["uid"]
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and f"pod{uid}" in (proc / "cgroup").read_text()
                    and (proc / "cmdline").read_bytes().split(b"\0")[0].endswith(argv0.encode())):
                return int(proc.name)
        except OSError:
            continue
    raise AssertionError(f"no {argv0} process in pod {pod}")


def test_killed_broker_container_is_restarted_by_the_kubelet_and_reconverged(
        real_node: RealNode, deployed: Deployed) -> None:
    api, pod = real_node.api, deployed.mosquitto_pod
    assert deployed.digest, "flow 1 did not run first"
    before = restarts(api, pod)
    os.kill(container_pid(api, pod, "mosquitto"), signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: restarts(api, pod)["mosquitto"] == before["mosquitto"] + 1,
             "the kubelet to restart the broker container", timeout=60)
    wait_running(api, pod)
    wait_for(lambda: runs(deployed, deployed.digest), "the sidecar to report the plugin again",
             timeout=60)
    assert outcome_at(deployed.pod_ip, "connect", "mallory") == "refused"
    assert restarts(api, pod)["plugforge-sidecar"] == before["plugforge-sidecar"]
    print(f"\nkilled broker: restarted and reconverged in {time.monotonic() - started:.1f} s")


def test_sidecar_container_restart_keeps_the_broker_running(
        real_node: RealNode, deployed: Deployed) -> None:
    api, pod = real_node.api, deployed.mosquitto_pod
    assert deployed.digest, "flow 1 did not run first"
    before = restarts(api, pod)
    broker = container_pid(api, pod, "mosquitto")
    os.kill(container_pid(api, pod, "python"), signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: restarts(api, pod)["plugforge-sidecar"] == before["plugforge-sidecar"] + 1,
             "the kubelet to restart the sidecar container", timeout=60)
    wait_running(api, pod)
    wait_for(lambda: runs(deployed, deployed.digest), "the new sidecar to find the plugin running",
             timeout=60)
    assert container_pid(api, pod, "mosquitto") == broker, "the broker was restarted"
    assert restarts(api, pod)["mosquitto"] == before["mosquitto"]
    print(f"\nsidecar restart: Ready again in {time.monotonic() - started:.1f} s, same broker")


def metric(deployed: Deployed, name: str) -> float:
    text = http_get(f"http://{deployed.pod_ip}:8080/metrics") or ""
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith(name + " ")), -1.0)


def _edit_broker_config(api: Api, config: dict[str, str]) -> float:
    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins")
    cm["data"]["broker.yaml"] = yaml.safe_dump({
        "apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerConfig", "broker": "mosquitto",
        "config": config})
    api.ok("PUT", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins", cm)
    return time.monotonic()


def test_flow3_configmap_edit_applied_live_through_the_real_kubelet_and_a_broken_one_refused(
        real_node: RealNode, deployed: Deployed) -> None:
    api, pod = real_node.api, deployed.mosquitto_pod
    assert deployed.digest, "flow 1 did not run first"
    broker = container_pid(api, pod, "mosquitto")
    applies = metric(deployed, "plugforge_sidecar_applies_total")
    written = _edit_broker_config(api, {"max_keepalive": "120"})
    wait_for(lambda: metric(deployed, "plugforge_sidecar_applies_total") > applies,
             "the sidecar to apply the edited broker.yaml", timeout=60, interval=0.05)
    applied = time.monotonic() - written
    assert container_pid(api, pod, "mosquitto") == broker, "a live option restarted the broker"

    rejections = metric(deployed, "plugforge_sidecar_rejections_total")
    _edit_broker_config(api, {"max_keepalive": "banana"})
    wait_for(lambda: metric(deployed, "plugforge_sidecar_rejections_total") > rejections,
             "the sidecar to reject the broken edit", timeout=60, interval=0.1)
    assert container_pid(api, pod, "mosquitto") == broker
    assert runs(deployed, deployed.digest)
    wait_running(api, pod)  # last good state kept, the pod stays Ready
    _edit_broker_config(api, {"max_keepalive": "120"})
    print(f"\nflow 3 on real pods: ConfigMap write -> applied by the sidecar {applied:.2f} s "
          "(same broker pid); broken edit rejected, last good kept")


def test_flow2_push_webhook_to_the_builder_pod_rebuilds_and_rolls_out(
        real_node: RealNode, deployed: Deployed) -> None:
    api, pod = real_node.api, deployed.mosquitto_pod
    assert deployed.digest, "flow 1 did not run first"
    source = next((deployed.source / "src").glob("*.c"))
    source.write_text(source.read_text().replace('#define DEFAULT_DENY_USERS "mallory"',
                                                 '#define DEFAULT_DENY_USERS "mallory,eve"'))
    before = run_git(deployed.source, "rev-parse", "HEAD")
    run_git(deployed.source, "commit", "-qam", "deny eve too")
    run_git(deployed.source, "push", "-q", deployed.url, "HEAD:main")
    after = run_git(deployed.source, "rev-parse", "HEAD")
    builders = api.ok("GET", "/api/v1/namespaces/plugforge-system/pods?labelSelector="
                      "app.kubernetes.io/name%3Dplugforge-builder")["items"]
    restarts_before = restarts(api, pod)["mosquitto"]
    started = time.monotonic()
    status = node_cluster.github_push(deployed, builders[0]["status"]["podIP"], before, after,
                          [str(source.relative_to(deployed.source))])
    assert status in (200, 202), status

    def new_digest() -> str | None:
        cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins")
        images = [yaml.safe_load(v)["image"] for k, v in cm["data"].items()
                  if k.startswith("plugin.")]
        digest = images[0].split("@")[1] if images else ""
        return digest if digest and digest != deployed.digest else None

    digest = wait_for(new_digest, "the rebuilt image in the ConfigMap", timeout=300, interval=0.5)
    built = time.monotonic() - started
    wait_for(lambda: runs(deployed, digest), "the sidecar to run the rebuilt plugin",
             timeout=120, interval=0.2)
    rolled = time.monotonic() - started - built
    wait_for(lambda: restarts(api, pod)["mosquitto"] > restarts_before,
             "the kubelet to report the broker restart (plugins load at start)", timeout=30)
    wait_running(api, pod)
    # The overlay's BrokerPlugin sets deny_users: mallory, which overrides the compiled default
    # this commit changed: the policy seen by clients stays the same.
    assert outcome_at(deployed.pod_ip, "connect", "mallory") == "refused"
    assert outcome_at(deployed.pod_ip, "connect", "eve") == "accepted"
    deployed.digest = digest
    print(f"\nflow 2 on real pods: webhook -> built {built:.1f} s, built -> running "
          f"{rolled:.1f} s")


def _builder_ip(api: Api) -> str:
    builders = api.ok("GET", "/api/v1/namespaces/plugforge-system/pods?labelSelector="
                      "app.kubernetes.io/name%3Dplugforge-builder")["items"]
    return str(builders[0]["status"]["podIP"])


def _released_image(api: Api) -> tuple[str, str]:
    """The plugin's key in the mosquitto ConfigMap and its release text."""
    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins")
    return next((k, v) for k, v in cm["data"].items() if k.startswith("plugin."))


def test_broken_push_fails_on_the_brokerplugin_and_the_running_plugin_stays(
        real_node: RealNode, deployed: Deployed) -> None:
    """A push that does not compile: the build Job's step fails, the BrokerPlugin says why, and
    the broker pod keeps running the last good plugin, untouched."""
    api, pod = real_node.api, deployed.mosquitto_pod
    assert deployed.digest, "flow 1 did not run first"
    path = f"/apis/plugforge.dev/v1alpha1/namespaces/{NS}/brokerplugins/deny-test"
    source = next((deployed.source / "src").glob("*.c"))
    source.write_text(source.read_text() + "\nthis is not C;\n")
    before = run_git(deployed.source, "rev-parse", "HEAD")
    run_git(deployed.source, "commit", "-qam", "oops: does not compile")
    run_git(deployed.source, "push", "-q", deployed.url, "HEAD:main")
    after = run_git(deployed.source, "rev-parse", "HEAD")
    restarts_before = restarts(api, pod)
    started = time.monotonic()
    status = node_cluster.github_push(deployed, _builder_ip(api), before, after,
                                      [str(source.relative_to(deployed.source))])
    assert status in (200, 202), status

    def built_false() -> dict[str, Any] | None:
        conditions = (api.ok("GET", path).get("status") or {}).get("conditions", [])
        built: dict[str, Any] = next((c for c in conditions if c["type"] == "Built"), {})
        return built if built.get("status") == "False" else None

    built = wait_for(built_false, "Built=False on the BrokerPlugin", timeout=300, interval=0.5)
    failed = time.monotonic() - started
    assert built["reason"] == "BuildFailed", built
    assert "build step 1" in built["message"] and "error" in built["message"], built
    assert deployed.digest in _released_image(api)[1]  # the release is unchanged
    assert runs(deployed, deployed.digest)
    assert restarts(api, pod) == restarts_before
    assert outcome_at(deployed.pod_ip, "connect", "mallory") == "refused"
    run_git(deployed.source, "revert", "--no-edit", "HEAD")
    run_git(deployed.source, "push", "-q", deployed.url, "HEAD:main")
    print(f"\nbroken push on real pods: webhook -> Built=False {failed:.1f} s "
          f"({built['message'].splitlines()[0]}); the pod kept {deployed.digest[:19]}...")


def test_unsigned_image_in_the_configmap_is_refused_before_pull(
        real_node: RealNode, deployed: Deployed) -> None:
    """Someone who can push to the registry and write the ConfigMap, without the builder's
    key, points the pod at an image of theirs: the sidecar container refuses it before pulling,
    posts a Warning Event on its pod and keeps the last good plugin."""
    api, pod = real_node.api, deployed.mosquitto_pod
    assert deployed.digest, "flow 1 did not run first"
    key, good = _released_image(api)
    release = yaml.safe_load(good)
    unsigned = e2e.unsigned_copy(release["image"], real_node.cp.ca.cert)
    rejections = metric(deployed, "plugforge_sidecar_rejections_total")
    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins")
    cm["data"][key] = yaml.safe_dump({**release, "image": unsigned}, sort_keys=False)
    api.ok("PUT", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins", cm)
    written = time.monotonic()

    def warned() -> list[dict[str, Any]]:
        events = api.ok("GET", f"/api/v1/namespaces/{NS}/events?fieldSelector="
                        f"involvedObject.name%3D{pod}")["items"]
        return [e for e in events if "SignatureMissing" in e.get("message", "")]

    events = wait_for(warned, "a Warning Event naming SignatureMissing on the pod", timeout=60,
                      interval=0.2)
    refused = time.monotonic() - written
    assert events[-1]["type"] == "Warning", events[-1]
    assert metric(deployed, "plugforge_sidecar_rejections_total") > rejections
    assert runs(deployed, deployed.digest) and not runs(deployed, unsigned.split("@")[1])
    assert outcome_at(deployed.pod_ip, "connect", "mallory") == "refused"
    cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins")
    cm["data"][key] = good
    api.ok("PUT", f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins", cm)
    wait_running(api, pod)
    print(f"\nunsigned image on real pods: ConfigMap write -> refused with an Event "
          f"{refused:.2f} s; the pod kept {deployed.digest[:19]}...")


# --- every broker example on real pods --------------------------------------------------------

@pytest.mark.parametrize("name", sorted(node_brokers.BROKERS))
def test_broker_pod_loads_the_builder_pods_plugin_and_applies_a_settings_edit_live(
        real_node: RealNode, plugforge_images: dict[str, Image], deployed: Deployed,
        tmp_path: Path, name: str) -> None:
    """manifests/brokers/<name> as users apply it: the builder pod builds the starter plugin,
    the sidecar container loads it into the live broker (a real MQTT client sees the policy),
    the builder reports the pod's state (found by selector, its sidecar asked at the pod IP),
    and a plugin setting changed in the BrokerPlugin reaches the pod's ConfigMap (written by the
    builder) and applies live, the broker container untouched."""
    api, broker = real_node.api, node_brokers.BROKERS[name]
    cluster = node_brokers.Cluster(real_node.cp, real_node.registry.host, real_node.cp.ca,
                                   real_node.podman, deployed.git, node.NODE_DIR / "images.log")
    pod = node_brokers.deploy(cluster, broker, plugforge_images["sidecar"].ref, tmp_path)
    try:
        image = node_brokers.wait_built(api, pod)
        built = time.monotonic() - pod.timings["applied at"]
        assert image.startswith(f"{real_node.registry.host}/plugins/{pod.plugin}@sha256:"), image
        digest = image.split("@")[1]
        try:
            wait_for(lambda: pod.runs(digest), "the sidecar to run the new digest", timeout=300,
                     interval=0.2)
            rolled = time.monotonic() - pod.timings["applied at"] - built
            wait_running(api, pod.pod, timeout=120)  # the sidecar's readiness: probes pass
        except AssertionError as e:
            raise AssertionError(f"{e}\n{describe(api, pod.pod)}") from None
        state = wait_for(lambda: (node_brokers.pod_state(api, pod.plugin, pod.pod) or {}).get(
            "digest") == digest and node_brokers.pod_state(api, pod.plugin, pod.pod),
            "the builder pod to report the pod's state (selector, sidecar gRPC at the pod IP)",
            timeout=120, interval=0.5)
        assert state["desiredDigest"] == digest and not state.get("lastError"), state
        before = restarts(api, pod.pod)
        assert pod.outcome("connect", "mallory") == "refused"
        if broker.plugin_admits:  # else the broker's own password database decides
            assert pod.outcome("connect", "alice") == "accepted"
            assert pod.outcome("connect", "trent") == "accepted"

        written = node_brokers.set_deny_users(api, pod, "mallory,trent")
        wait_for(lambda: pod.outcome("connect", "trent") == "refused",
                 "deny_users=mallory,trent to take effect", timeout=120, interval=0.1)
        applied = time.monotonic() - written
        assert restarts(api, pod.pod) == before, "a plugin setting restarted a container"
        print(f"\n{name} on real pods: apply -> built {built:.1f} s, built -> running "
              f"{rolled:.1f} s, BrokerPlugin settings edit -> applied {applied:.2f} s (same "
              f"containers); image {pod.timings['image build + push']:.1f} s")
    finally:
        node_brokers.remove(real_node.cp, pod)


# --- ConfigMap propagation through the real kubelet: file mode vs API mode ---------------------

def _apply_latencies(real_node: RealNode, deployed: Deployed, count: int) -> list[float]:
    """ConfigMap write -> the sidecar in the pod has applied it (its applies counter), seconds,
    for ``count`` live broker.yaml edits."""
    seen = []
    for i in range(count):
        applies = metric(deployed, "plugforge_sidecar_applies_total")
        written = _edit_broker_config(real_node.api, {"max_keepalive": str(200 + i)})
        wait_for(lambda a=applies: metric(  # type: ignore[misc]
            deployed, "plugforge_sidecar_applies_total") > a,
            "the sidecar to apply the edit", timeout=120, interval=0.02)
        seen.append(time.monotonic() - written)
        time.sleep(0.5)
    return seen


def test_configmap_propagation_file_mode_vs_api_mode_through_the_real_kubelet(
        real_node: RealNode, deployed: Deployed) -> None:
    """The same edit, the same pod spec but ``--source``: API mode (the sidecar watches the
    ConfigMap, what ``--source=auto`` picks in a pod) against file mode (the kubelet's
    projection of the mounted ConfigMap, refreshed on its sync, ``syncFrequency: 1s`` here).
    Runs last: it replaces the mosquitto pod."""
    api = real_node.api
    assert deployed.digest, "flow 1 did not run first"
    count = 5
    modes = {"api (--source=auto)": _apply_latencies(real_node, deployed, count)}
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/mosquitto"
    deployment = api.ok("GET", path)
    sidecar = deployment["spec"]["template"]["spec"]["containers"][1]
    sidecar["args"] = [a if a != "--source=auto" else "--source=files" for a in sidecar["args"]]
    old_pod = deployed.mosquitto_pod
    api.ok("PUT", path, deployment)

    def replaced() -> tuple[str, str] | None:
        pods = api.ok("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector="
                      "app.kubernetes.io/name%3Dmosquitto")["items"]
        new = [p for p in pods if p["metadata"]["name"] != old_pod
               and p.get("status", {}).get("podIP")]
        return (new[0]["metadata"]["name"], new[0]["status"]["podIP"]) if new else None

    deployed.mosquitto_pod, deployed.pod_ip = wait_for(replaced, "the file-mode pod",
                                                       timeout=120)
    wait_for(lambda: runs(deployed, deployed.digest), "the file-mode sidecar to run the plugin",
             timeout=180, interval=0.2)
    wait_running(api, deployed.mosquitto_pod, timeout=120)
    modes["files (--source=files)"] = _apply_latencies(real_node, deployed, count)
    rows = ["| ConfigMap write -> applied by the sidecar in the pod | min | median | max |",
            "|---|---|---|---|"]
    for mode, seen in modes.items():
        ordered = sorted(seen)
        rows.append(f"| {mode} | {ordered[0]:.2f} s | {ordered[len(ordered) // 2]:.2f} s | "
                    f"{ordered[-1]:.2f} s |")
    print("\nreal kubelet (syncFrequency 1s), mosquitto broker.yaml edits, "
          f"{count} each:\n" + "\n".join(rows))
    assert max(modes["api (--source=auto)"]) < 5
    assert max(modes["files (--source=files)"]) < 30


# --- a canary on the StatefulSet example: manifests/brokers/vernemq with 2 pods ----------------

def _running_digests(ip: str) -> set[str]:
    """Every digest the pod's sidecar names as running (its metrics)."""
    return set(re.findall(r'running_digest="([^"]+)"', node_brokers.metrics(ip)))


def _created_to_ready(pod: dict[str, Any]) -> str:
    """Pod creation -> its Ready condition, as the apiserver recorded them (1 s resolution)."""
    def at(stamp: str) -> float:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    return f"{at(ready['lastTransitionTime']) - at(pod['metadata']['creationTimestamp']):.0f} s"


def test_statefulset_canary_goes_to_one_pod_first_and_a_failing_one_is_rolled_back_there(
        real_node: RealNode, plugforge_images: dict[str, Image], deployed: Deployed,
        tmp_path: Path) -> None:
    """``spec.target.strategy.canary`` on the VerneMQ StatefulSet with 2 pods: the first
    release runs on one pod (the canary, its per-pod ConfigMap key), is probed there, then
    reaches the other; a new digest whose probe fails on the canary is rolled back on that pod,
    and the other pod never receives it (no per-pod key, never its desired digest in the
    builder's status, never run by its sidecar), its containers untouched."""
    api, broker = real_node.api, node_brokers.BROKERS["vernemq"]
    cluster = node_brokers.Cluster(real_node.cp, real_node.registry.host, real_node.cp.ca,
                                   real_node.podman, deployed.git, node.NODE_DIR / "images.log")
    # The probe's password, in the Secret the example mounts for the sidecar's probes.
    secrets = f"/api/v1/namespaces/{NS}/secrets"
    api.ok("POST", secrets, {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "vernemq-probe-credentials", "namespace": NS},
                             "stringData": {"trent": "any-password"}})
    probes = [{"name": "mallory-refused", "action": "connect", "username": "mallory",
               "expect": "refused"},
              {"name": "trent-accepted", "action": "connect", "username": "trent",
               "passwordFrom": {"secret": "vernemq-probe-credentials", "key": "trent"},
               "expect": "accepted"}]
    pod = node_brokers.deploy(
        cluster, broker, plugforge_images["sidecar"].ref, tmp_path, replicas=2,
        plugin_name="vernemq-canary", spec={
            "probes": probes, "webhook": {"secretRef": {"name": "github-webhook"}},
            "target": {"strategy": {"canary": {"enabled": True, "count": 1,
                                               "probeTimeoutSeconds": 120}}}})
    path = f"/apis/plugforge.dev/v1alpha1/namespaces/{NS}/brokerplugins/{pod.plugin}"
    ips = dict(node_brokers.pods(api, broker))
    try:
        ready_after = {n: _created_to_ready(wait_running(api, n, timeout=180)) for n in ips}
        def status() -> dict[str, Any]:
            return api.ok("GET", path).get("status") or {}

        # 1. The first release: one pod first, then the other.
        started, first_seen = pod.timings["applied at"], {}

        def promoted() -> dict[str, Any] | None:
            rollout = status().get("rollout") or {}
            for name, ip in ips.items():
                if name not in first_seen and rollout.get("digest") in _running_digests(ip):
                    first_seen[name] = time.monotonic()
            return rollout if rollout.get("phase") == "Complete" and len(first_seen) == 2 \
                else None

        try:
            rollout = wait_for(promoted, "the first release through its canary to both pods",
                               timeout=900, interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}: {status()}\n"
                                 + "\n".join(describe(api, n) for n in ips)) from None
        v1 = rollout["digest"]
        assert len(rollout["canaryPods"]) == 1, rollout
        canary = rollout["canaryPods"][0]
        other = next(n for n in ips if n != canary)
        assert first_seen[canary] < first_seen[other], first_seen
        for ip in ips.values():
            assert node_brokers.outcome(ip, "connect", "mallory") == "refused"
            assert node_brokers.outcome(ip, "connect", "trent") == "accepted"
        first = (f"pods created -> Ready {ready_after}; canary {canary} running "
                 f"{first_seen[canary] - started:.1f} s after apply, {other} "
                 f"{first_seen[other] - first_seen[canary]:.1f} s later")

        # 2. A new digest that refuses trent, whom the probe expects accepted.
        source = tmp_path / pod.plugin
        code = source / "src" / f"{pod.plugin.replace('-', '_')}.erl"
        if not code.is_file():
            code = next((source / "src").glob("*.erl"))
        code.write_text(code.read_text().replace(
            "    lists:member(UserName, deny_users()).",
            '    UserName =:= <<"trent">> orelse lists:member(UserName, deny_users()).'))
        url = next(d for d in pod.docs if d["kind"] == "BrokerPlugin")["spec"]["source"][
            "git"]["url"]
        before = run_git(source, "rev-parse", "HEAD")
        run_git(source, "commit", "-qam", "refuse trent")
        run_git(source, "push", "-q", url, "HEAD:main")
        bad_commit = run_git(source, "rev-parse", "HEAD")
        before_restarts = {n: restarts(api, n) for n in ips}
        # What each pod could have been handed, every 0.1 s (the canary is chosen per rollout).
        keys: set[str] = set()
        desired: dict[str, set[str]] = {n: set() for n in ips}
        running: dict[str, set[str]] = {n: set() for n in ips}
        stop = threading.Event()

        def watch_other() -> None:
            while not stop.wait(0.1):
                cm = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/{broker.configmap}")
                keys.update(k for k in cm.get("data", {}) if k.startswith("canary."))
                for n, ip in ips.items():
                    state = node_brokers.pod_state(api, pod.plugin, n) or {}
                    desired[n].add(str(state.get("desiredDigest", "")))
                    running[n] |= _running_digests(ip)

        watcher = threading.Thread(target=watch_other, daemon=True)
        watcher.start()
        builders = api.ok("GET", "/api/v1/namespaces/plugforge-system/pods?labelSelector="
                          "app.kubernetes.io/name%3Dplugforge-builder")["items"]
        pushed = time.monotonic()
        assert node_cluster.github_push(
            dataclasses.replace(deployed, url=url), builders[0]["status"]["podIP"], before,
            bad_commit, [str(code.relative_to(source))]) in (200, 202)
        try:
            wait_for(lambda: (status().get("rollout") or {}).get("commit") == bad_commit,
                     "the bad commit's canary", timeout=600, interval=0.5)
            canaried = time.monotonic() - pushed
            bad, canaries = status()["rollout"]["digest"], status()["rollout"]["canaryPods"]
            assert bad != v1 and len(canaries) == 1, status()["rollout"]
            canary = canaries[0]
            other = next(n for n in ips if n != canary)
            wait_for(lambda: status()["rollout"]["phase"] == "RolledBack",
                     "the failing canary rolled back", timeout=300, interval=0.5)
            rolled_back = time.monotonic() - pushed - canaried
            wait_for(lambda: _running_digests(ips[canary]) == {v1},
                     f"{canary} back on the first release", timeout=120, interval=0.2)
            wait_for(lambda: node_brokers.outcome(ips[canary], "connect", "trent")
                     == "accepted", f"{canary} admits trent again", timeout=60, interval=0.5)
            back = time.monotonic() - pushed - canaried - rolled_back
        finally:
            stop.set()
            watcher.join()
        ready = {c["type"]: c for c in status()["conditions"]}["Ready"]
        assert ready["status"] == "False" and ready["reason"] == "CanaryFailed", ready
        assert "trent-accepted" in ready["message"], ready["message"]
        assert canary in ready["message"], ready["message"]
        assert status()["currentImage"].endswith("@" + v1)  # the stable release stayed
        # The other pod never received the bad digest, and nothing of it restarted.
        assert not any(other in k for k in keys) and any(canary in k for k in keys), keys
        assert bad in running[canary] or bad in desired[canary], (desired, running)
        assert bad not in desired[other] and bad not in running[other], (desired, running)
        assert _running_digests(ips[other]) == {v1}
        assert restarts(api, other) == before_restarts[other]
        assert node_brokers.outcome(ips[other], "connect", "trent") == "accepted"
        data = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/{broker.configmap}")["data"]
        assert not any(k.startswith("canary.") for k in data)
        print(f"\nvernemq StatefulSet canary on real pods: first release {first}; bad commit: "
              f"webhook -> its canary {canaried:.1f} s, canary -> RolledBack "
              f"{rolled_back:.1f} s, -> {canary} on the first release again {back:.1f} s; "
              f"{other} never saw it")
    finally:
        node_brokers.remove(real_node.cp, pod)
        api.ok("DELETE", f"{secrets}/vernemq-probe-credentials")
