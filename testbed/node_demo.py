"""The demo's flows on the real node (``scripts/demo --cluster``): plugforge deployed from
``manifests/`` as pods (testbed/node_cluster.py), the builder pod building (each build a Job
in plugforge-builds, the manifests' kubernetes executor), the sidecar
containers loading, the real kubelet projecting and restarting. Slower than the process-level
default (images, pod starts, the kubelet's sync), so it is a flag.

Per broker the same rows as the default demo's table where the flow exists on pods: mosquitto
runs flows 1-3 and the broken-edit path; the other brokers (testbed/node_brokers.py) flow 1
and a live plugin-setting edit.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from testbed import node_brokers, node_cluster
from testbed.e2e import Results
from testbed.e2e_cluster import Api, wait_for
from testbed.gitserver import run_git

NS = "default"
Say = Callable[[str], None]
BROKERS = ("mosquitto", *node_brokers.BROKERS)


def _digest_in(api: Api, configmap: str) -> str:
    data = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/{configmap}")["data"]
    found = [yaml.safe_load(v)["image"] for k, v in data.items() if k.startswith("plugin.")]
    return str(found[0].split("@")[1]) if found else ""


def _restarts(api: Api, pod: str, container: str) -> int:
    status = api.ok("GET", f"/api/v1/namespaces/{NS}/pods/{pod}")["status"]
    return next((c["restartCount"] for c in status.get("containerStatuses", [])
                 if c["name"] == container), 0)


def mosquitto_flows(session: node_cluster.NodeSession, deployed: node_cluster.Deployed,
                    say: Say) -> Results:
    api, results = session.api, Results("mosquitto")
    ip = deployed.pod_ip
    say("Flow 1 on mosquitto pods: the builder pod builds deny-test, the sidecar container "
        "loads it")
    digest = wait_for(lambda: _digest_in(api, "mosquitto-plugins") or None,
                      "the builder pod to build deny-test", timeout=600, interval=0.5)
    built = time.monotonic() - deployed.applied_at
    say(f"  built and pushed @{digest[:19]}... {built:.1f}s after the apply (builder pod start, "
        "clone, gcc, sign, push)")
    wait_for(lambda: node_brokers.runs(ip, digest), "the sidecar to run it", timeout=300,
             interval=0.2)
    rolled = time.monotonic() - deployed.applied_at - built
    wait_for(lambda: node_brokers.outcome(ip, "connect", "mallory") == "refused" or None,
             "the broker to refuse mallory", timeout=60, interval=0.5)
    say(f"  sidecar container verified, pulled and loaded it, the kubelet restarted the broker: "
        f"{rolled:.1f}s; MQTT: mallory refused")
    results.add("1 CR -> broker", "build (CR applied -> image pushed)", f"{built:.1f} s")
    results.add("1 CR -> broker", "rollout (pushed -> loaded, probes pass)", f"{rolled:.1f} s")
    deployed.digest = digest

    say("Flow 2 on mosquitto pods: a signed push webhook to the builder pod")
    source = next((deployed.source / "src").glob("*.c"))
    source.write_text(source.read_text().replace('#define DEFAULT_DENY_USERS "mallory"',
                                                 '#define DEFAULT_DENY_USERS "mallory,eve"'))
    before = run_git(deployed.source, "rev-parse", "HEAD")
    run_git(deployed.source, "commit", "-qam", "deny eve too")
    run_git(deployed.source, "push", "-q", deployed.url, "HEAD:main")
    after = run_git(deployed.source, "rev-parse", "HEAD")
    builders = api.ok("GET", "/api/v1/namespaces/plugforge-system/pods?labelSelector="
                      "app.kubernetes.io/name%3Dplugforge-builder")["items"]
    started = time.monotonic()
    status = node_cluster.github_push(deployed, builders[0]["status"]["podIP"], before, after,
                                      [str(source.relative_to(deployed.source))])
    def rebuilt() -> str | None:
        found = _digest_in(api, "mosquitto-plugins")
        return found if found and found != digest else None

    new = wait_for(rebuilt, "the rebuilt image", timeout=300, interval=0.5)
    built = time.monotonic() - started
    wait_for(lambda: node_brokers.runs(ip, new), "the sidecar to run the rebuilt plugin",
             timeout=300, interval=0.2)
    rolled = time.monotonic() - started - built
    say(f"  webhook HTTP {status}; rebuilt in {built:.1f}s, running {rolled:.1f}s later "
        "(the kubelet restarts the broker: plugins load at start)")
    results.add("2 push -> rebuild", "build (webhook -> image pushed)", f"{built:.1f} s")
    results.add("2 push -> rebuild", "rollout (pushed -> loaded, probes pass)", f"{rolled:.1f} s")
    deployed.digest = new

    say("Flow 3 on mosquitto pods: broker.yaml edited in the ConfigMap (sidecar in API mode)")
    restarts = _restarts(api, deployed.mosquitto_pod, "mosquitto")
    applies = node_brokers.metric(ip, "plugforge_sidecar_applies_total")
    written = _edit_broker_yaml(api, {"max_keepalive": "120"})
    wait_for(lambda: node_brokers.metric(ip, "plugforge_sidecar_applies_total") > applies,
             "the sidecar to apply the edit", timeout=60, interval=0.02)
    latency = time.monotonic() - written
    same = _restarts(api, deployed.mosquitto_pod, "mosquitto") == restarts
    say(f"  max_keepalive=120 applied {latency * 1000:.0f} ms after the write (SIGHUP); broker "
        f"container not restarted: {same}")
    results.add("3 ConfigMap edits", "apply latency: broker config",
                f"{latency * 1000:.0f} ms (max_keepalive)" + (", same pid" if same else ""))
    rejections = node_brokers.metric(ip, "plugforge_sidecar_rejections_total")
    _edit_broker_yaml(api, {"max_keepalive": "banana"})
    wait_for(lambda: node_brokers.metric(ip, "plugforge_sidecar_rejections_total") > rejections,
             "the broken edit to be rejected", timeout=60, interval=0.1)
    kept = node_brokers.runs(ip, new)
    say(f"  max_keepalive=banana rejected; the last good state kept: {kept}")
    results.add("unhappy", "broken ConfigMap edit",
                "Rejected, last good state kept" if kept else "Rejected")
    _edit_broker_yaml(api, {"max_keepalive": "120"})
    return results


def _edit_broker_yaml(api: Api, config: dict[str, str]) -> float:
    path = f"/api/v1/namespaces/{NS}/configmaps/mosquitto-plugins"
    cm: dict[str, Any] = api.ok("GET", path)
    cm["data"]["broker.yaml"] = yaml.safe_dump({
        "apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerConfig", "broker": "mosquitto",
        "config": config})
    api.ok("PUT", path, cm)
    return time.monotonic()


def broker_flows(session: node_cluster.NodeSession, deployed: node_cluster.Deployed,
                 sidecar_ref: str, name: str, work: Path, say: Say) -> Results:
    broker, results, api = node_brokers.BROKERS[name], Results(name), session.api
    cluster = node_brokers.Cluster(session.cp, session.registry.host, session.cp.ca,
                                   session.podman, deployed.git, session.log)
    say(f"Flow 1 on {name} pods: manifests/brokers/{name} applied, the builder pod builds "
        f"{name}-deny")
    pod = node_brokers.deploy(cluster, broker, sidecar_ref, work)
    try:
        image = node_brokers.wait_built(api, pod)
        built = time.monotonic() - pod.timings["applied at"]
        digest = image.split("@")[1]
        wait_for(lambda: pod.runs(digest), "the sidecar to run it", timeout=300, interval=0.2)
        rolled = time.monotonic() - pod.timings["applied at"] - built
        say(f"  built {built:.1f}s after the apply, loaded {rolled:.1f}s later (broker pod "
            f"start included); MQTT: mallory {pod.outcome('connect', 'mallory')}")
        results.add("1 CR -> broker", "build (CR applied -> image pushed)", f"{built:.1f} s")
        results.add("1 CR -> broker", "rollout (pushed -> loaded, probes pass)",
                    f"{rolled:.1f} s")
        # The builder's last write of the release ends its rollout: an edit before it is lost.
        state = wait_for(lambda: (s := node_brokers.pod_state(api, pod.plugin, pod.pod))
                         and s.get("digest") == digest and s,
                         "the builder to report the pod's state", timeout=120, interval=0.5)
        say(f"  the builder pod found the pod by selector and asked its sidecar: {state['pod']} "
            f"{state.get('state')} {str(state.get('digest'))[:19]}...")
        say(f"Flow 3 on {name} pods: deny_users changed in the BrokerPlugin (the builder "
            "writes it into the ConfigMap)")
        written = node_brokers.set_deny_users(api, pod, "mallory,trent")
        wait_for(lambda: pod.outcome("connect", "trent") == "refused",
                 "the setting to take effect", timeout=120, interval=0.1)
        latency = time.monotonic() - written
        say(f"  deny_users=mallory,trent: trent refused {latency * 1000:.0f} ms after the write")
        results.add("3 ConfigMap edits", "apply latency: plugin setting deny_users",
                    f"{latency * 1000:.0f} ms, same pid")
    finally:
        node_brokers.remove(session.cp, pod)
    return results


def run(brokers: list[str], say: Say) -> list[Results]:
    """Start the node, deploy plugforge, run the flows on ``brokers``, remove everything."""
    say("Starting a real node (containerd, kubelet, controller-manager, scheduler) and its "
        "control plane")
    session = node_cluster.start_session()
    try:
        say(f"  node Ready: {session.timings}")
        say("Building the images from containers/ and testbed/containers/ (cached by inputs) "
            "and pushing them to the node's registry")
        root = node_cluster.ROOT
        refs = {name: node_cluster.push_image(session, name, path, repo) for name, path, repo in (
            ("sidecar", root / "containers" / "sidecar.Containerfile", "plugforge/sidecar"),
            ("builder", root / "containers" / "builder.Containerfile", "plugforge/builder"),
            ("mosquitto", root / "testbed" / "containers" / "mosquitto.Containerfile",
             "brokers/mosquitto"))}
        with tempfile.TemporaryDirectory(prefix="plugforge-demo-cluster-") as tmp:
            say("kubectl apply --server-side -k manifests/overlays/mosquitto (+ the testbed's "
                "registry, apiserver address and toolchain pins); plugforge api-secrets; "
                "plugforge signing-keys; builds run as Jobs in plugforge-builds")
            deployed = node_cluster.deploy_plugforge(session, refs, Path(tmp))
            results = []
            for name in brokers:
                if name == "mosquitto":
                    results.append(mosquitto_flows(session, deployed, say))
                else:
                    results.append(broker_flows(session, deployed, refs["sidecar"], name,
                                                Path(tmp) / name, say))
                say(f"All flows passed on {name} pods")
        return results
    finally:
        say("Removing the node: pods, containers, mounts, network namespaces, cgroups, bridge")
        session.stop()
