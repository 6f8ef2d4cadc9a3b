"""The cluster side of the e2e flows: the apiserver calls an operator makes, plugforge's manifests
applied, the builder and its webhook endpoint, and a kubelet-style ConfigMap projection."""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from builder.app import Builder
from builder.build.toolchains import dump_pins
from builder.kube import Kube, apply_documents
from builder.settings import Settings as BuilderSettings
from builder.webhooks import service as webhooks
from builder.webhooks.signatures import github_header
from plugforge.signing import encrypt_private_key, generate, render_policy
from testbed import images, toolchains
from testbed.configmap_dir import ConfigMapDir
from testbed.gitserver import GitServer
from testbed.kube import ControlPlane
from testbed.manifests import MANIFESTS, render
from testbed.registry import Registry

T = TypeVar("T")
NAMESPACE = "default"  # where manifests/ bind the builder's tenant role and the sidecar's role
WEBHOOK_SECRET_NAME = "github-webhook"  # noqa: S105 - a Secret's name, not its value
Say = Callable[[str], None]


def quiet(_message: str) -> None:
    pass


def check(condition: object, what: object) -> None:
    """Like ``assert`` (tests see an AssertionError), but never optimized away."""
    if not condition:
        raise AssertionError(what)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0,
             say: Say = quiet, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; tells ``say`` every 5 s while waiting."""
    started = time.monotonic()
    next_note = started + 5
    while True:
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        if now >= next_note:
            say(f"    ... still waiting for {what} ({now - started:.0f}s)")
            next_note = now + 5
        time.sleep(interval)


# --- the cluster side -------------------------------------------------------------------------


class Api:
    """Admin-side apiserver calls the flows make (what an operator does with kubectl)."""

    def __init__(self, cp: ControlPlane, identity: str = "admin") -> None:
        self.cp = cp
        self.identity = identity

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, Any]:
        req = urllib.request.Request(
            self.cp.url + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.cp.identities[self.identity].token}",
                     "Content-Type": content_type, "Accept": "application/json"})
        ctx = ssl.create_default_context(cafile=str(self.cp.ca.cert))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"message": raw.decode(errors="replace")}

    def ok(self, method: str, path: str, body: Any = None,
           content_type: str = "application/json") -> Any:
        code, out = self.call(method, path, body, content_type)
        if code not in (200, 201):
            raise AssertionError(f"{method} {path}: {code} {out}")
        return out

    def plugin(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.ok(
            "GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/brokerplugins/{name}")
        return out

    def builds(self, plugin: str) -> list[dict[str, Any]]:
        out = self.ok("GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{NAMESPACE}/pluginbuilds")
        items = [b for b in out["items"] if b["spec"]["plugin"] == plugin]
        return sorted(items, key=lambda b: (b["metadata"]["creationTimestamp"],
                                            b["metadata"]["name"]))

    def configmap(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
        return out

    def put_configmap(self, cm: dict[str, Any]) -> None:
        """Write back a ConfigMap read before (optimistic concurrency on resourceVersion)."""
        self.ok("PUT", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{cm['metadata']['name']}",
                cm)

    def events(self, involved: str) -> list[dict[str, Any]]:
        out = self.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/events")
        return [e for e in out["items"] if e["involvedObject"].get("name") == involved]


def install_manifests(cp: ControlPlane) -> None:
    """Apply manifests/base (the same objects ``kubectl apply -k manifests/`` creates) as admin."""
    docs = render(MANIFESTS / "base")
    admin = Kube.from_kubeconfig(cp.kubeconfig("admin"))
    try:
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        apply_documents(admin.api, crds)
        for plural in ("brokerplugins", "pluginbuilds"):
            wait_for(lambda p=plural: cp.request(  # type: ignore[misc]
                "GET", f"/apis/plugforge.dev/v1alpha1/{p}")[0] == 200, f"CRD {plural}")
        apply_documents(admin.api, [d for d in docs if d["kind"] != "CustomResourceDefinition"])
    finally:
        admin.close()


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block only (what an executor copies
    when it is made), then the previous values again."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Stage:
    """The cluster side: apiserver (manifests applied), builder, webhooks, registry, git."""

    cp: ControlPlane
    registry: Registry
    git: GitServer
    workdir: Path
    say: Say = quiet
    api: Api = field(init=False)
    builder: Builder = field(init=False)
    hooks: webhooks.Webhooks = field(init=False)
    webhook_secret: str = field(init=False)
    trust_policy: Path = field(init=False)
    """The sidecars' trust policy (what the plugforge-trust ConfigMap holds), mounted."""
    _kube: Kube = field(init=False)

    def start(self) -> Stage:
        self.api = Api(self.cp)
        install_manifests(self.cp)
        self.webhook_secret = uuid.uuid4().hex
        code, out = self.api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "metadata": {"name": WEBHOOK_SECRET_NAME},
            "stringData": {"secret": self.webhook_secret}})
        if code == 409:
            secret = self.api.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/"
                                 f"{WEBHOOK_SECRET_NAME}")
            secret["stringData"] = {"secret": self.webhook_secret}
            self.api.ok("PUT", f"/api/v1/namespaces/{NAMESPACE}/secrets/{WEBHOOK_SECRET_NAME}",
                        secret)
        elif code != 201:
            raise AssertionError(f"creating the webhook Secret: {code} {out}")
        # Signing on, as in manifests/: the builder mounts a key pair Secret in cosign's layout,
        # the sidecars a policy trusting its public key for sources on this git server.
        key = generate()
        key_dir = self.workdir / "signing-key"
        key_dir.mkdir(parents=True, exist_ok=True)
        (key_dir / "cosign.password").write_text("demo-password")
        (key_dir / "cosign.key").write_bytes(encrypt_private_key(key, b"demo-password"))
        trust = ConfigMapDir(self.workdir / "trust")
        trust.update({"policy.yaml": render_policy([("demo", key.public.pem())],
                                                   sources=[f"{self.git.url}/*"])})
        self.trust_policy = trust.path / "policy.yaml"
        # Builds run isolated, each in its template's toolchain image with podman (the
        # ``container`` executor), pinned by digest in this machine's image store.
        podman = images.Podman.in_cache()
        pins = self.workdir / "toolchains.yaml"
        pins.write_text(dump_pins(toolchains.local_pins(podman)))
        podman_conf = toolchains.executor_env(podman, self.workdir / "podman")
        # A long resync: new commits are built because a webhook asked, not because of polling.
        with environment({k: podman_conf[k] for k in ("CONTAINERS_CONF",
                                                        "CONTAINERS_STORAGE_CONF")}):
            self.builder = Builder(BuilderSettings(
                kubeconfig=self.cp.kubeconfig("builder"),
                lease_name=f"flows-{uuid.uuid4().hex[:6]}", identity="builder-flows-0",
                state_dir=self.workdir / "builder", workers=2,
                resync_seconds=600.0, lease_duration_seconds=4, lease_renew_seconds=1,
                backoff_base_seconds=0.5, backoff_max_seconds=2, max_attempts=2,
                registry_ca=self.registry.ca.cert, signing_key=key_dir,
                executor="container", toolchains=pins))
        self.builder.start()
        wait_for(lambda: self.builder.leading, "the builder to take its Lease", say=self.say)
        self._kube = Kube.from_kubeconfig(self.cp.kubeconfig("builder"))
        self.hooks = webhooks.start_with_kube(self._kube)
        return self

    def stop(self) -> None:
        self.hooks.stop()
        self._kube.close()
        self.builder.stop()

    def send_push(self, repo: str, before: str, after: str, changed: list[str]) -> int:
        """A GitHub ``push`` delivery for ``repo`` (owner/name), signed with the Secret."""
        owner, name = repo.split("/")
        base = f"http://127.0.0.1:{self.git.port}/{owner}/{name}"
        commit = {"id": after, "message": "change the policy", "timestamp":
                  "2026-11-21T21:00:00+00:00", "url": f"{base}/commit/{after}", "distinct": True,
                  "author": {"name": "Alice", "email": "alice@example", "username": "alice"},
                  "committer": {"name": "Alice", "email": "alice@example", "username": "alice"},
                  "added": [], "removed": [], "modified": changed}
        payload = {
            "ref": "refs/heads/main", "before": before, "after": after, "created": False,
            "deleted": False, "forced": False, "base_ref": None,
            "compare": f"{base}/compare/{before[:12]}...{after[:12]}",
            "commits": [commit], "head_commit": commit,
            "repository": {"id": 1, "name": name, "full_name": repo, "private": False,
                           "owner": {"login": owner, "name": owner, "id": 2},
                           "html_url": base, "clone_url": f"{base}.git",
                           "ssh_url": f"git@127.0.0.1:{repo}.git", "default_branch": "main"},
            "pusher": {"name": "alice", "email": "alice@example"},
            "sender": {"login": "alice", "id": 3},
        }
        body = json.dumps(payload).encode()
        req = urllib.request.Request(f"{self.hooks.url}/webhooks/github", data=body,
                                     method="POST", headers={
                                         "Content-Type": "application/json",
                                         "X-GitHub-Event": "push",
                                         "X-GitHub-Delivery": str(uuid.uuid4()),
                                         "X-Hub-Signature-256": github_header(
                                             self.webhook_secret.encode(), body)})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)


class Projection:
    """Plays the kubelet for a ConfigMap volume: copies the ConfigMap from the apiserver into an
    atomic-writer directory whenever its resourceVersion changes (polled every 50 ms; the real
    kubelet takes up to a minute or more)."""

    def __init__(self, api: Api, name: str, directory: Path) -> None:
        self.api = api
        self.name = name
        self.dir = ConfigMapDir(directory)
        self._version = ""
        self._stop = threading.Event()
        self.sync()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{name}", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        code, cm = self.api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/{self.name}")
        if code == 200 and cm["metadata"]["resourceVersion"] != self._version:
            self.dir.update(cm.get("data") or {})
            self._version = cm["metadata"]["resourceVersion"]

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sync()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
