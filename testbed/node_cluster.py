"""plugforge on the real node (testbed/node.py) the way users run it, for tests/test_real_node.py
and the demo's ``--cluster`` mode: the node with its registry, the images built from the
Containerfiles, ``manifests/overlays/mosquitto`` applied with the testbed's differences, the
Secrets ``manifests/README.md`` tells users to make, and a plugin repository on a git server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.build import toolchains
from builder.build.recipe import template_dir
from builder.build.scaffold import scaffold
from builder.webhooks.signatures import github_header
from testbed import images, node
from testbed import toolchains as testbed_toolchains
from testbed.e2e_cluster import Api, wait_for
from testbed.gitserver import GitServer, run_git, start_git_server
from testbed.kube import ControlPlane
from testbed.manifests import kustomize_binary, render
from testbed.node_brokers import CA_CONFIGMAP, CA_MOUNT, apply, testbed_env
from testbed.registry import Registry, start_registry

ROOT = Path(__file__).resolve().parent.parent
NS = "default"


@dataclass
class NodeSession:
    """A running node, its control plane and registry; ``stop`` removes everything."""

    cp: ControlPlane
    registry: Registry
    node: node.Node
    podman: images.Podman
    busybox: str  # image@digest in the node's registry
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def api(self) -> Api:
        return Api(self.cp)

    @property
    def log(self) -> Path:
        return node.NODE_DIR / "images.log"

    def stop(self) -> None:
        self.node.stop()
        self.registry.stop()
        self.cp.stop()
        node.teardown()
        node.release()


def start_session() -> NodeSession:
    """Take the machine's node lock, start the control plane, a registry on the node's bridge
    (its blobs kept in the cache: a warm session pushes only what changed) and the node."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    tunables = node.prepare()
    cp = node.start_control_plane_for_node()
    storage = images.cache_dir() / "images" / "node-registry"
    storage.mkdir(parents=True, exist_ok=True)
    (node.NODE_DIR / "registry").mkdir()
    (node.NODE_DIR / "registry" / "storage").symlink_to(storage)
    registry = start_registry(node.NODE_DIR / "registry", cp.ca, address=node.NODE_IP)
    node.record(registry.server)
    timings["control plane + registry"] = time.monotonic() - started
    podman = images.Podman.in_cache()
    log = node.NODE_DIR / "images.log"
    try:
        t = time.monotonic()
        pause = images.static_image(podman, "pause", {"/pause": images.pause_binary(log)},
                                    ["/pause"], log)
        busybox = images.static_image(podman, "busybox", {"/bin/busybox": Path("/bin/busybox")},
                                      ["/bin/busybox"], log)
        pause_ref = images.push(podman, pause.ref, registry.host, cp.ca, "pause", log)
        busybox_ref = images.push(podman, busybox.ref, registry.host, cp.ca, "busybox", log)
        timings["pause + busybox images"] = time.monotonic() - t
        t = time.monotonic()
        n = node.start_node(cp, registry, pause_ref, tunables)
        timings["node Ready"] = time.monotonic() - t
    except BaseException:
        registry.stop()
        cp.stop()
        node.teardown(tunables=tunables)
        node.release()
        raise
    return NodeSession(cp, registry, n, podman, busybox_ref, timings)


def push_image(session: NodeSession, name: str, containerfile: Path, repository: str) -> str:
    """Build (cached by its inputs) and push one image; ``host/repository@digest``."""
    t = time.monotonic()
    base = images.debian_base(session.podman, session.log)
    built = images.build(session.podman, containerfile, name, base, session.log)
    session.timings[f"{name} image"] = time.monotonic() - t
    t = time.monotonic()
    ref = images.push(session.podman, built.ref, session.registry.host, session.cp.ca,
                      repository, session.log)
    session.timings[f"{name} push"] = time.monotonic() - t
    return ref


@dataclass
class Deployed:
    """plugforge and the mosquitto example running on the node, and the plugin's repository."""

    git: GitServer
    registry_host: str
    mosquitto_pod: str
    pod_ip: str
    source: Path = Path()  # the plugin's working copy
    url: str = ""  # its repository on the git server
    webhook_secret: str = ""
    applied_at: float = 0.0  # monotonic time the manifests were applied
    digest: str = ""  # what flow 1 rolled out


def testbed_overlay(directory: Path, session: NodeSession, refs: dict[str, str],
                    git_url: str, pins: toolchains.Pins) -> Path:
    """The user's overlay plus what this cluster differs in: image names (the node's registry),
    the registry's private CA, the apiserver's address for in-cluster clients (no kube-proxy
    here: the ``kubernetes`` Service's IP does not route), the toolchain pins and the transfer
    image the builder's build Jobs run (made and pushed here, as a release would)."""
    ca_volume = {"name": "testbed-ca", "configMap": {"name": CA_CONFIGMAP}}
    ca_mount = {"name": "testbed-ca", "mountPath": CA_MOUNT, "readOnly": True}

    def image(name: str, ref: str) -> dict[str, str]:
        repo, digest = ref.split("@")
        return {"name": name, "newName": repo, "digest": digest}

    def ops(path: str, container: int, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
        c = f"{path}/containers/{container}"
        return [*({"op": "add", "path": f"{c}/env/-", "value": e}
                  for e in testbed_env(session.cp)),
                {"op": "add", "path": f"{path}/volumes/-", "value": ca_volume},
                {"op": "add", "path": f"{c}/volumeMounts/-", "value": ca_mount}, *extra]

    spec = "/spec/template/spec"
    # No route leaves the node's network, so Maven Central is out of the build pods' reach:
    # the tenant's Maven cache for the hivemq-java toolchain starts as a copy of this machine's
    # (what the process-level tests filled), as a cluster's builder would start from a warm
    # cache or a repository mirror. The kubernetes executor hands it to the tenant's builds.
    seed = images.cache_dir() / "build-caches" / "maven"
    cache = "/var/lib/plugforge/cache"
    tenant_maven = toolchains.cache_dir(Path(cache), NS, pins["hivemq-java"].image, "maven")
    hardened = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}}
    maven_seed = [
        {"op": "add", "path": f"{spec}/initContainers", "value": [{
            "name": "testbed-maven-cache", "image": session.busybox,
            "command": ["/bin/busybox", "sh", "-c",
                        f"/bin/busybox mkdir -p {tenant_maven} && "
                        f"/bin/busybox cp -R /seed/. {tenant_maven}/"],
            "securityContext": hardened,
            "volumeMounts": [{"name": "state", "mountPath": "/var/lib/plugforge"},
                             {"name": "testbed-maven", "mountPath": "/seed",
                              "readOnly": True}]}]},
        {"op": "add", "path": f"{spec}/volumes/-", "value": {
            "name": "testbed-maven", "hostPath": {"path": str(seed), "type": "Directory"}}}]
    builder_env = [e["name"] for e in yaml.safe_load((
        ROOT / "manifests" / "builder" / "40-deployment.yaml").read_text())[
        "spec"]["template"]["spec"]["containers"][0]["env"]]
    transfer_image = {"op": "replace", "value": session.busybox, "path": (
        f"{spec}/containers/0/env/{builder_env.index('PLUGFORGE_BUILDER_TRANSFER_IMAGE')}/value")}
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "manifests" / "overlays" / "mosquitto", directory),
                      "ca.yaml"],
        "images": [image("registry.example.com/plugforge/builder", refs["builder"]),
                   image("registry.example.com/plugforge/sidecar", refs["sidecar"]),
                   image("eclipse-mosquitto", refs["mosquitto"])],
        "patches": [
            {"target": {"kind": "Deployment", "name": "plugforge-builder"},
             "patch": yaml.safe_dump([
                 {"op": "replace", "path": "/spec/replicas", "value": 1},
                 *ops(spec, 0, [{"op": "add", "path": f"{spec}/containers/0/env/-", "value": {
                     "name": name, "value": value}} for name, value in (
                         ("PLUGFORGE_BUILDER_REGISTRY_CA", f"{CA_MOUNT}/ca.crt"),
                         ("PLUGFORGE_CACHE", cache))]), transfer_image, *maven_seed])},
            {"target": {"kind": "ConfigMap", "name": "plugforge-toolchains"},
             "patch": yaml.safe_dump([{"op": "replace", "path": "/data/toolchains.yaml",
                                       "value": toolchains.dump_pins(pins)}])},
            {"target": {"kind": "Deployment", "name": "mosquitto"},
             "patch": yaml.safe_dump(ops(spec, 1, [
                 {"op": "add", "path": f"{spec}/containers/1/args/-",
                  "value": f"--registry-ca={CA_MOUNT}/ca.crt"}]))},
            {"target": {"kind": "BrokerPlugin", "name": "deny-test"},
             "patch": yaml.safe_dump([
                 {"op": "replace", "path": "/spec/source/git/url", "value": git_url},
                 {"op": "replace", "path": "/spec/image/repository",
                  "value": f"{session.registry.host}/plugins/deny-test"}])},
        ],
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    (directory / "ca.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CA_CONFIGMAP, "namespace": NS},
        "data": {"ca.crt": session.cp.ca.cert.read_text()}}))
    return directory


def deploy_plugforge(session: NodeSession, refs: dict[str, str], work: Path) -> Deployed:
    """``kubectl apply --server-side -k`` of the overlay, then what manifests/README.md tells
    users to create next (the pods wait for these Secrets); returns once the mosquitto pod has
    an address. ``refs``: sidecar, builder and mosquitto images in the node's registry."""
    git = start_git_server(node.NODE_DIR / "git", host=node.NODE_IP)
    node.record(git.server)
    url = git.create_repo("acme/deny-test.git")
    source = work / "deny-test"
    scaffold(template_dir("mosquitto-c"), "mosquitto-c", "mosquitto", "deny-test", source)
    run_git(source, "push", "-q", url, "HEAD:main")

    if kustomize_binary() is None:
        raise AssertionError("kustomize is not installed: scripts/ensure.d/kustomize.sh builds it")
    api, kubeconfig = session.api, session.cp.kubeconfig("admin")
    t = time.monotonic()
    pins = testbed_toolchains.pins(session.podman, session.registry.host, session.cp.ca,
                                   log=session.log)
    session.timings["toolchain images + push"] = time.monotonic() - t
    t = time.monotonic()
    docs = render(testbed_overlay(work / "overlay", session, refs, url, pins))
    ca = next(d for d in docs if d["kind"] == "ConfigMap"
              and d["metadata"]["name"] == CA_CONFIGMAP)
    # The same ConfigMap in the builder's namespace.
    docs.append({**ca, "metadata": {**ca["metadata"], "namespace": "plugforge-system"}})
    apply(session.cp, docs)
    session.timings["apply"] = time.monotonic() - t
    for command in ("api-secrets", "signing-keys"):
        done = subprocess.run([str(Path(sys.executable).with_name("plugforge")), command,
                               "--kubeconfig", str(kubeconfig), "--broker-namespace", NS,
                               "--out-dir", str(work / command)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise AssertionError(f"plugforge {command}: {done.stdout}{done.stderr}")
    secret = uuid.uuid4().hex
    api.ok("POST", f"/api/v1/namespaces/{NS}/secrets", {
        "metadata": {"name": "github-webhook"}, "stringData": {"secret": secret}})

    def address() -> tuple[str, str] | None:
        pods = api.ok("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector="
                      "app.kubernetes.io/name%3Dmosquitto")["items"]
        ip = pods[0].get("status", {}).get("podIP") if pods else None
        return (pods[0]["metadata"]["name"], ip) if ip else None

    pod, ip = wait_for(address, "the mosquitto pod's IP", timeout=120, interval=0.5)
    return Deployed(git, session.registry.host, pod, ip, source=source, url=url,
                    webhook_secret=secret, applied_at=t)


def github_push(deployed: Deployed, builder_ip: str, before: str, after: str,
                changed: list[str]) -> int:
    """A signed GitHub ``push`` delivery, sent to the builder pod's webhook port."""
    base = deployed.url.removesuffix(".git")
    commit = {"id": after, "message": "deny eve too", "timestamp": "2026-12-06T17:00:00+00:00",
              "url": f"{base}/commit/{after}", "distinct": True, "added": [], "removed": [],
              "modified": changed, "author": {"name": "Alice", "email": "alice@example"},
              "committer": {"name": "Alice", "email": "alice@example"}}
    body = json.dumps({
        "ref": "refs/heads/main", "before": before, "after": after, "created": False,
        "deleted": False, "forced": False, "base_ref": None, "compare": f"{base}/compare",
        "commits": [commit], "head_commit": commit,
        "repository": {"id": 1, "name": "deny-test", "full_name": "acme/deny-test",
                       "private": False, "owner": {"login": "acme", "name": "acme", "id": 2},
                       "html_url": base, "clone_url": deployed.url, "default_branch": "main"},
        "pusher": {"name": "alice", "email": "alice@example"},
        "sender": {"login": "alice", "id": 3}}).encode()
    req = urllib.request.Request(
        f"http://{builder_ip}:8443/webhooks/github", data=body, method="POST", headers={
            "Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": github_header(deployed.webhook_secret.encode(), body)})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)
