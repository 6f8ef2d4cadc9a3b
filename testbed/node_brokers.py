"""Broker pods on the real node (testbed/node.py): ``manifests/brokers/<broker>`` applied as a
user applies it, with the broker image built here (testbed/containers/), a BrokerPlugin built by
the builder pod from a repository scaffolded from the broker's template, and the sidecar
container loading it into the live broker. Shared by tests/test_real_node.py and the demo's
``--cluster`` mode.

What the testbed's cluster differs in is added by a small overlay, never by editing the
example: image names (the node's registry), that registry's private CA, and the apiserver's
address for in-cluster clients (no kube-proxy here: the ``kubernetes`` Service's IP does not
route). It assumes plugforge itself is deployed (the builder pod, ``plugforge api-secrets`` and
``plugforge signing-keys`` for the namespace, the ``testbed-registry-ca`` ConfigMap).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.build.recipe import template_dir
from builder.build.scaffold import scaffold
from plugforge.contract import API_VERSION, Probe
from sidecar.probes import run_probe
from testbed import images
from testbed.certs import CertificateAuthority
from testbed.e2e_cluster import Api, wait_for
from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.manifests import Applier, ManifestError, render

ROOT = Path(__file__).resolve().parent.parent
NS = "default"
CA_CONFIGMAP = "testbed-registry-ca"
CA_MOUNT = "/etc/testbed-ca"
SIDECAR = "plugforge-sidecar"


@dataclass(frozen=True)
class NodeBroker:
    """What differs per broker example: its template, the image name its manifests use, the
    workload holding the sidecar, and what an MQTT client can show."""

    name: str
    template: str
    image: str  # as manifests/brokers/<name> names it (replaced by the node's registry)
    kind: str = "Deployment"
    workload: str = ""  # default: the broker's name
    mqtt_version: str = "5"
    # The plugin decides who is in (no broker password database behind it, or one that knows
    # alice and trent): alice gets in.
    plugin_admits: bool = True
    # The testbed's environment for the broker container (merged by name into the example's).
    broker_env: tuple[tuple[str, str], ...] = ()
    # The example's other workloads, which the testbed scales to 0 (no sidecar in them).
    idle: tuple[str, ...] = ()

    @property
    def containerfile(self) -> Path:
        return ROOT / "testbed" / "containers" / f"{self.name}.Containerfile"

    @property
    def configmap(self) -> str:
        return f"{self.name}-plugins"


# Erlang brokers on the node's 2 shared cores: no busy-waiting schedulers.
_NO_BUSY_WAIT = "+sbwt none +sbwtdcpu none +sbwtdio none"
# Who VerneMQ's own password database (vmq_passwd) admits, so the plugin is the one refusing.
_VMQ_USERS = tuple((f"DOCKER_VERNEMQ_USER_{u}", "any-password")
                   for u in ("alice", "trent", "mallory"))

BROKERS = {
    "rabbitmq": NodeBroker("rabbitmq", "rabbitmq-erlang", "rabbitmq", mqtt_version="3.1.1"),
    "hivemq": NodeBroker("hivemq", "hivemq-java", "hivemq/hivemq-ce"),
    "vernemq": NodeBroker("vernemq", "vernemq-erlang", "vernemq/vernemq", kind="StatefulSet",
                          broker_env=(*_VMQ_USERS, ("ERL_FLAGS", _NO_BUSY_WAIT))),
    # EMQX without an authenticator admits everyone the plugin does not refuse. Its sidecar
    # sits next to one node (emqx-plugforge); the other nodes (emqx) would only join by DNS.
    "emqx": NodeBroker("emqx", "emqx-erlang", "emqx/emqx", kind="StatefulSet",
                       workload="emqx-plugforge", broker_env=(("ERL_ZFLAGS", _NO_BUSY_WAIT),),
                       idle=("emqx",)),
}


@dataclass(frozen=True)
class Cluster:
    """The real node's control plane and registry, as the helpers here need them."""

    cp: ControlPlane
    registry_host: str
    ca: CertificateAuthority
    podman: images.Podman
    git: GitServer
    log: Path

    @property
    def api(self) -> Api:
        return Api(self.cp)


@dataclass
class BrokerPod:
    broker: NodeBroker
    pod: str
    ip: str
    plugin: str  # the BrokerPlugin's name
    key: str = ""  # its key in the ConfigMap, plugin.<the plugin's own name>.yaml (once built)
    docs: list[dict[str, Any]] = field(default_factory=list)  # what was applied
    timings: dict[str, float] = field(default_factory=dict)

    def outcome(self, action: str, username: str) -> str:
        return outcome(self.ip, action, username, self.broker.mqtt_version)

    def runs(self, digest: str) -> bool:
        return runs(self.ip, digest)


def outcome(ip: str, action: str, username: str, mqtt_version: str = "5") -> str:
    """What a real MQTT client at the pod's address sees: accepted or refused."""
    kind: Any = "publish" if action == "publish" else "connect"
    return run_probe(Probe(f"{action}-{username}", kind, username, "accepted"), ip, 1883,
                     mqtt_version=mqtt_version,
                     password="any-password").outcome  # noqa: S106 (a test client)


def metrics(ip: str) -> str:
    """The sidecar's Prometheus text at the pod's address (port sidecar-http)."""
    try:
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


def metric(ip: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in metrics(ip).splitlines()
                 if line.startswith(name + " ")), -1.0)


def runs(ip: str, digest: str) -> bool:
    """The sidecar's metrics name ``digest`` as running."""
    return f'running_digest="{digest}"' in metrics(ip)


def release_context(name: str) -> Path:
    """The build context of the VerneMQ or EMQX image: ``release/`` (the release the shared
    build makes, testbed/vernemq.py or testbed/emqx.py) and ``entrypoint.sh`` (beside the
    Containerfile), in the cache; refreshed when either changed."""
    if name == "vernemq":
        from testbed.vernemq import ensure_release
        release = ensure_release()
    else:
        from testbed.emqx import ensure_release as ensure_emqx
        release = ensure_emqx()
    context = images.cache_dir() / "images" / "contexts" / name
    marker = context / "release.from"
    if not marker.is_file() or marker.read_text() != str(release):
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        shutil.copytree(release, context / "release", symlinks=True)
        marker.write_text(str(release))
    script = ROOT / "testbed" / "containers" / f"{name}-entrypoint.sh"
    if not (context / "entrypoint.sh").is_file() \
            or (context / "entrypoint.sh").read_bytes() != script.read_bytes():
        shutil.copy2(script, context / "entrypoint.sh")
    return context


def broker_image(cluster: Cluster, broker: NodeBroker) -> str:
    """Build (cached by its inputs) and push the broker's image; ``host/repo@digest``."""
    base = images.debian_base(cluster.podman, cluster.log)
    built = images.build(cluster.podman, broker.containerfile, broker.name, base, cluster.log,
                         context=images.broker_context(broker.name))
    return images.push(cluster.podman, built.ref, cluster.registry_host, cluster.ca,
                       f"brokers/{broker.name}", cluster.log)


def testbed_env(cp: ControlPlane) -> list[dict[str, str]]:
    return [{"name": "KUBERNETES_SERVICE_HOST", "value": cp.host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(cp.port)}]


def _workload(broker: NodeBroker) -> dict[str, Any]:
    docs = render(ROOT / "manifests" / "brokers" / broker.name, use_binary=False)
    return next(d for d in docs if d["kind"] == broker.kind
                and d["metadata"]["name"] == (broker.workload or broker.name))


def _sidecar_patch(broker: NodeBroker, cp: ControlPlane, replicas: int) -> dict[str, Any]:
    """A strategic-merge patch of the broker's workload: the sidecar container trusts the
    registry's CA and reaches the apiserver at its address (containers merge by name), the
    broker container gets ``broker.env``; ``replicas`` pods; each volumeClaimTemplate's volume
    is an emptyDir instead (no storage provisioner on the node; see ``_no_claims``)."""
    workload = _workload(broker)
    sidecar = next(c for c in workload["spec"]["template"]["spec"]["containers"]
                   if c["name"] == SIDECAR)
    claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
    # The broker container first, as in the example: a merged list takes the patch's order, and
    # the kubelet starts containers in order (VerneMQ's postStart prepares the sidecar's tools).
    containers: list[dict[str, Any]] = [
        {"name": broker.name, "env": [{"name": k, "value": v} for k, v in broker.broker_env]},
        {"name": SIDECAR,
         "args": [*sidecar["args"], f"--registry-ca={CA_MOUNT}/ca.crt"],
         "env": testbed_env(cp),
         "volumeMounts": [{"name": "testbed-ca", "mountPath": CA_MOUNT, "readOnly": True}]}]
    return {
        "apiVersion": workload["apiVersion"], "kind": broker.kind,
        "metadata": {"name": workload["metadata"]["name"], "namespace": NS},
        "spec": {"replicas": replicas, "template": {"spec": {
            "containers": containers,
            "volumes": [{"name": "testbed-ca", "configMap": {"name": CA_CONFIGMAP}},
                        *({"name": c, "emptyDir": {}} for c in claims)]}}}}


def _no_claims(broker: NodeBroker) -> list[dict[str, Any]]:
    """Kustomize JSON patches dropping the workload's volumeClaimTemplates (their volumes are
    emptyDirs, ``_sidecar_patch``): the node has no storage provisioner."""
    workload = _workload(broker)
    if not workload["spec"].get("volumeClaimTemplates"):
        return []
    return [{"target": {"kind": broker.kind, "name": workload["metadata"]["name"]},
             "patch": yaml.safe_dump([{"op": "remove", "path": "/spec/volumeClaimTemplates"}])}]


def brokerplugin(broker: NodeBroker, name: str, git_url: str, registry_host: str,
                 ) -> dict[str, Any]:
    probes = [{"name": "mallory-refused", "action": "connect", "username": "mallory",
               "expect": "refused"}]
    return {
        "apiVersion": API_VERSION, "kind": "BrokerPlugin",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"broker": broker.name, "source": {"git": {"url": git_url, "ref": "main"}},
                 "image": {"repository": f"{registry_host}/plugins/{name}"},
                 "target": {"configMap": broker.configmap, "rollout": "Automatic",
                            "selector": {"matchLabels": {"app.kubernetes.io/name": broker.name}},
                            "strategy": {"canary": {"enabled": False}}},
                 "settings": {"deny_users": "mallory"},
                 "probes": probes}}


def write_overlay(directory: Path, cluster: Cluster, broker: NodeBroker, refs: dict[str, str],
                  plugin: dict[str, Any], replicas: int = 1) -> Path:
    """The user's broker example plus the testbed's differences (module docstring), with
    ``replicas`` broker pods and the example's ``broker.idle`` workloads at 0."""

    def image(name: str, ref: str) -> dict[str, str]:
        repo, digest = ref.split("@")
        return {"name": name, "newName": repo, "digest": digest}

    directory.mkdir(parents=True, exist_ok=True)
    patches: list[dict[str, Any]] = [{"path": "testbed.yaml"}, *_no_claims(broker)]
    for name in broker.idle:
        patches.append({"target": {"kind": broker.kind, "name": name},
                        "patch": yaml.safe_dump([{"op": "replace", "path": "/spec/replicas",
                                                  "value": 0}])})
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "manifests" / "brokers" / broker.name, directory),
                      "brokerplugin.yaml"],
        "images": [image("plugforge/sidecar", refs["sidecar"]),
                   image(broker.image, refs[broker.name])],
        "patches": patches}))
    (directory / "brokerplugin.yaml").write_text(yaml.safe_dump(plugin))
    (directory / "testbed.yaml").write_text(yaml.safe_dump(
        _sidecar_patch(broker, cluster.cp, replicas)))
    return directory


def apply(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    """``kubectl apply --server-side``: CRDs first, the rest once its kind is served."""
    applier = Applier(cp.url, cp.identities["admin"].token, cp.ca.cert, field_manager="kubectl")
    for doc in [d for d in docs if d["kind"] == "CustomResourceDefinition"]:
        applier.apply(doc)
    for doc in [d for d in docs if d["kind"] != "CustomResourceDefinition"]:
        wait_for(lambda d=doc: _applied(applier, d), f"apply {doc['kind']} "  # type: ignore[misc]
                 f"{doc['metadata']['name']}", timeout=60, interval=0.5)


def _applied(applier: Applier, doc: dict[str, Any]) -> bool:
    try:
        applier.apply(doc)
        return True
    except ManifestError:
        return False  # a CRD still being established, or a namespace not created yet


def deploy(cluster: Cluster, broker: NodeBroker, sidecar_ref: str, workdir: Path, *,
           replicas: int = 1, spec: dict[str, Any] | None = None, plugin_name: str = "",
           ) -> BrokerPod:
    """Image, repository, overlay applied; returns once the ``replicas`` broker pods have an
    address (the first by name). ``spec`` updates the BrokerPlugin's spec (``target`` merged
    key by key); ``plugin_name``: the BrokerPlugin's and its repository's name (one per
    session: the git server keeps repositories), default ``<broker>-deny``."""
    api, timings = cluster.api, {}
    t = time.monotonic()
    refs = {"sidecar": sidecar_ref, broker.name: broker_image(cluster, broker)}
    timings["image build + push"] = time.monotonic() - t
    name = plugin_name or f"{broker.name}-deny"
    url = cluster.git.create_repo(f"acme/{name}.git")
    source = workdir / name
    scaffold(template_dir(broker.template), broker.template, broker.name, name, source)
    run_git(source, "push", "-q", url, "HEAD:main")
    plugin = brokerplugin(broker, name, url, cluster.registry_host)
    for key, value in (spec or {}).items():
        plugin["spec"][key] = {**plugin["spec"][key], **value} if key == "target" else value
    overlay = write_overlay(workdir / f"{name}-overlay", cluster, broker, refs, plugin, replicas)
    docs = render(overlay)
    t = time.monotonic()
    apply(cluster.cp, docs)
    timings["applied at"] = t

    def addresses() -> list[tuple[str, str]] | None:
        found = pods(api, broker)
        return found if len(found) == replicas else None

    pod, ip = wait_for(addresses, f"{replicas} {broker.name} pod address(es)", timeout=180,
                       interval=0.5)[0]
    return BrokerPod(broker, pod, ip, name, docs=docs, timings=timings)


def pods(api: Api, broker: NodeBroker) -> list[tuple[str, str]]:
    """The broker's pods that have an address: (name, IP), by name."""
    items = api.ok("GET", f"/api/v1/namespaces/{NS}/pods?labelSelector="
                   f"app.kubernetes.io/name%3D{broker.name}")["items"]
    return sorted((p["metadata"]["name"], p["status"]["podIP"]) for p in items
                  if p.get("status", {}).get("podIP") and not p["metadata"].get(
                      "deletionTimestamp"))


def wait_built(api: Api, pod: BrokerPod, timeout: float = 600) -> str:
    """The BrokerPlugin built by the builder pod: the image@digest it wrote to the ConfigMap."""
    path = f"/apis/plugforge.dev/v1alpha1/namespaces/{NS}/brokerplugins/{pod.plugin}"

    def built() -> str | None:
        status = api.ok("GET", path).get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        if conditions.get("Built", {}).get("status") != "True":
            return None
        # The key names the artifact (an Erlang application's name has no dashes).
        pod.key = f"plugin.{status.get('currentPluginName') or pod.plugin}.yaml"
        data = api.ok("GET", f"/api/v1/namespaces/{NS}/configmaps/"
                      f"{pod.broker.configmap}")["data"]
        release = data.get(pod.key)
        return str(yaml.safe_load(release)["image"]) if release else None

    try:
        return wait_for(built, f"the builder pod to build {pod.plugin}", timeout=timeout,
                        interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}: {api.ok('GET', path).get('status')}") from None


def pod_state(api: Api, plugin: str, pod: str) -> dict[str, Any] | None:
    """The BrokerPlugin's ``status.pods`` entry for ``pod``: what the builder pod found by the
    target's selector and asked that pod's sidecar over gRPC, at the pod's IP."""
    found = api.ok("GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{NS}/brokerplugins/"
                   f"{plugin}").get("status", {}).get("pods") or []
    return next((p for p in found if p.get("pod") == pod), None)


def set_deny_users(api: Api, pod: BrokerPod, users: str) -> float:
    """Change the plugin's ``deny_users`` in the BrokerPlugin (merge patch); the write's time.

    Not in the ConfigMap: with an Automatic rollout the builder keeps the release key in step
    with the BrokerPlugin's spec, so a direct edit of that key is undone at its next reconcile
    (seen here within a second of a rollout). The builder writes the new settings into the
    ConfigMap without a build; the sidecar applies them live."""
    api.ok("PATCH", f"/apis/plugforge.dev/v1alpha1/namespaces/{NS}/brokerplugins/{pod.plugin}",
           {"spec": {"settings": {"deny_users": users}}},
           content_type="application/merge-patch+json")
    return time.monotonic()


def remove(cp: ControlPlane, pod: BrokerPod) -> None:
    """Delete what ``deploy`` applied (the node's memory is shared by every broker in turn)."""
    applier = Applier(cp.url, cp.identities["admin"].token, cp.ca.cert, field_manager="kubectl")
    for doc in reversed(pod.docs):
        applier.delete(doc)
    # A StatefulSet's pods go after it (garbage collection): the next deploy reuses their names.
    api, path = Api(cp), (f"/api/v1/namespaces/{NS}/pods?labelSelector="
                          f"app.kubernetes.io/name%3D{pod.broker.name}")
    wait_for(lambda: not api.ok("GET", path)["items"], f"the {pod.broker.name} pods to go",
             timeout=120, interval=0.5)
