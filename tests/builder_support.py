"""Helpers shared by the builder tests: install manifests as admin, wait for things."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from builder.app import Builder
from builder.kube import Kube, apply_documents, load_documents
from builder.settings import Settings
from testbed.kube import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "manifests" / "crds"
BUILDER_MANIFESTS = ROOT / "manifests" / "builder"
SIDECAR_RBAC = ROOT / "manifests" / "sidecar" / "rbac.yaml"
TENANT_RBAC = BUILDER_MANIFESTS / "30-tenant-rbac.yaml"

T = TypeVar("T")
_installed: set[str] = set()


def install(cp: ControlPlane) -> None:
    """Apply the CRDs and the builder's manifests as admin (once per control plane)."""
    if cp.url in _installed:
        return
    admin = Kube.from_kubeconfig(cp.kubeconfig("admin"))
    try:
        apply_documents(admin.api, load_documents([CRDS]))
        for plural in ("brokerplugins", "pluginbuilds"):
            wait_for(lambda p=plural: cp.request(  # type: ignore[misc]
                "GET", f"/apis/plugforge.dev/v1alpha1/{p}")[0] == 200,
                f"CRD {plural} established")
        apply_documents(admin.api, load_documents([BUILDER_MANIFESTS]))
    finally:
        admin.close()
    _installed.add(cp.url)


# The Secrets the test modules' BrokerPlugins reference: what an operator lists in the tenant
# Role's resourceNames (manifests/builder/30-tenant-rbac.yaml).
TEST_SECRETS = ("git-creds", "push-creds", "github-hook", "hook", "nope")


def tenant_namespace(cp: ControlPlane, prefix: str = "t",
                     secrets: tuple[str, ...] = TEST_SECRETS) -> str:
    """A fresh namespace bound to the builder's tenant roles, as an operator would set it up:
    the builder may ``get`` the Secrets named ``secrets`` there, and no other."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = Kube.from_kubeconfig(cp.kubeconfig("admin"))
    try:
        docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": name}}]
        for doc in load_documents([TENANT_RBAC]):
            if doc["kind"] == "Role":
                doc["rules"][0]["resourceNames"] = list(secrets)
            if doc["kind"] in ("Role", "RoleBinding"):
                doc["metadata"]["namespace"] = name
                docs.append(doc)
        apply_documents(admin.api, docs)
    finally:
        admin.close()
    return name


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0,
             interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- builder test scaffolding ----------------------------------------------------------------

TEMPLATES = ROOT / "plugin-templates"


def make_templates_root(dest: Path, slow_seconds: int = 30) -> Path:
    """The real templates plus ``slow-c``: mosquitto-c with a leading ``sleep`` step.

    ``slow-c`` gives the timeout and restart tests a build that is reliably still running.
    """
    import shutil

    import yaml

    shutil.copytree(TEMPLATES, dest, dirs_exist_ok=True)
    slow = dest / "slow-c"
    shutil.copytree(TEMPLATES / "mosquitto-c", slow, dirs_exist_ok=True)
    recipe = yaml.safe_load((slow / "recipe.yaml").read_text())
    recipe["tools"] = [*recipe.get("tools", []), "sleep"]
    recipe["build"] = [{"argv": ["sleep", str(slow_seconds)]}, *recipe["build"]]
    (slow / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return dest


@contextmanager
def templates_in_use(dest: Path, slow_seconds: int = 30) -> Iterator[Path]:
    """``make_templates_root(dest)`` as the builder's ``$PLUGFORGE_TEMPLATES`` while in use."""
    root = make_templates_root(dest, slow_seconds)
    before = os.environ.get("PLUGFORGE_TEMPLATES")
    os.environ["PLUGFORGE_TEMPLATES"] = str(root)
    try:
        yield root
    finally:
        if before is None:
            os.environ.pop("PLUGFORGE_TEMPLATES", None)
        else:
            os.environ["PLUGFORGE_TEMPLATES"] = before


def fast_settings(cp: ControlPlane, registry_ca: Path, lease: str, identity: str,
                  state_dir: Path, *, watch_namespace: str, **overrides: Any) -> Settings:
    """Builder settings as the builder identity, with timings short enough for tests, scoped
    to the test module's namespace (other modules' plugins outlive their builders)."""
    settings = Settings(
        kubeconfig=cp.kubeconfig("builder"), lease_name=lease, identity=identity,
        watch_namespace=watch_namespace,
        state_dir=state_dir, workers=2, resync_seconds=2.0, lease_duration_seconds=4,
        lease_renew_seconds=1, backoff_base_seconds=0.5, backoff_max_seconds=2, max_attempts=2,
        registry_ca=registry_ca,
        # These test the builder's control flow; build isolation: tests/test_build_isolation.py.
        executor="process", allow_process_executor=True)
    return settings.with_(**overrides) if overrides else settings


@contextmanager
def running_builder(settings: Settings) -> Iterator[Builder]:
    """A started builder that holds its Lease; stopped on exit."""
    b = Builder(settings)
    b.start()
    try:
        wait_for(lambda: b.leading, "the builder to take the lease")
        yield b
    finally:
        b.stop()


def scaffold_repo(dest: Path, template: str, broker: str, name: str, push_url: str) -> Path:
    """``plugforge new``'s scaffold of ``template`` as a repo pushed to ``push_url`` main."""
    from builder.build.recipe import template_dir
    from builder.build.scaffold import scaffold
    from testbed.gitserver import run_git

    repo = scaffold(template_dir(template), template, broker, name, dest)
    run_git(repo, "push", "-q", push_url, "HEAD:main")
    return repo


def broker_plugin(name: str, *, url: str, repository: str, ref: str = "main",
                  broker: str = "mosquitto", configmap: str | None = "broker-plugins",
                  **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
        "metadata": {"name": name},
        "spec": {"broker": broker, "source": {"git": {"url": url, "ref": ref}},
                 "image": {"repository": repository}, **spec},
    }
    if configmap:
        body["spec"]["target"] = {"configMap": configmap}
    return body


class Cluster:
    """Admin-side view used by tests to create objects and read what the builder did."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.ns = namespace

    def grant_sidecar_rights(self) -> None:
        """The sidecar's Role and RoleBinding from the manifests, in this namespace."""
        admin = Kube.from_kubeconfig(self.cp.kubeconfig("admin"))
        try:
            docs = [d for d in load_documents([SIDECAR_RBAC])
                    if d["kind"] in ("Role", "RoleBinding")]
            for d in docs:
                d["metadata"]["namespace"] = self.ns
            apply_documents(admin.api, docs)
        finally:
            admin.close()

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        code, out = self.cp.request(
            "POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{self.ns}/{plural}", body=body)
        assert code == 201, out
        return out

    def plugin(self, name: str) -> dict[str, Any]:
        code, out = self.cp.request(
            "GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{self.ns}/brokerplugins/{name}")
        assert code == 200, out
        return out

    def patch_plugin(self, name: str, spec: dict[str, Any]) -> None:
        import json
        import ssl
        import urllib.request

        req = urllib.request.Request(
            f"{self.cp.url}/apis/plugforge.dev/v1alpha1/namespaces/{self.ns}/brokerplugins/{name}",
            method="PATCH", data=json.dumps({"spec": spec}).encode(),
            headers={"Authorization": f"Bearer {self.cp.identities['admin'].token}",
                     "Content-Type": "application/merge-patch+json"})
        ctx = ssl.create_default_context(cafile=str(self.cp.ca.cert))
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200

    def builds(self, plugin: str) -> list[dict[str, Any]]:
        code, out = self.cp.request(
            "GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{self.ns}/pluginbuilds")
        assert code == 200, out
        every: Any = out["items"]
        items = [b for b in every if b["spec"]["plugin"] == plugin]
        return sorted(items, key=lambda b: (b["metadata"]["creationTimestamp"],
                                            b["metadata"]["name"]))

    def configmap(self, name: str) -> dict[str, str]:
        code, out = self.cp.request("GET", f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        assert code == 200, out
        data: Any = out.get("data") or {}
        return dict(data)

    def create_configmap(self, name: str, data: dict[str, str]) -> None:
        code, out = self.cp.request("POST", f"/api/v1/namespaces/{self.ns}/configmaps",
                                    body={"metadata": {"name": name}, "data": data})
        assert code == 201, out

    def create_secret(self, name: str, data: dict[str, str], type_: str = "Opaque") -> None:
        import base64

        code, out = self.cp.request(
            "POST", f"/api/v1/namespaces/{self.ns}/secrets",
            body={"metadata": {"name": name}, "type": type_,
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})
        assert code == 201, out

    def wait_build(self, plugin: str, phases: tuple[str, ...] = ("Succeeded", "Failed"),
                   after: int = 0, timeout: float = 120,
                   known: set[str] | None = None) -> dict[str, Any]:
        """The first build (in creation order, skipping ``after`` or the ``known`` names; the
        latter survives history pruning) that reached ``phases``."""
        def done() -> dict[str, Any] | None:
            builds = [b for b in self.builds(plugin)[after:]
                      if b["metadata"]["name"] not in (known or set())]
            for b in builds:
                if (b.get("status") or {}).get("phase") in phases:
                    return b
            return None
        return wait_for(done, f"a build of {plugin} in {phases}", timeout=timeout)

    def condition(self, plugin: str, type_: str) -> dict[str, Any]:
        conds = (self.plugin(plugin).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), {})
