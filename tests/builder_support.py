"""Helpers shared by the builder tests: install manifests as admin, wait for things."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from builder.kube import Kube, apply_documents, load_documents
from testbed.kube import ControlPlane

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "manifests" / "crds"
BUILDER_MANIFESTS = ROOT / "manifests" / "builder"
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


def tenant_namespace(cp: ControlPlane, prefix: str = "t") -> str:
    """A fresh namespace bound to the builder's tenant role, as an operator would set it up."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = Kube.from_kubeconfig(cp.kubeconfig("admin"))
    try:
        docs: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": name}}]
        for doc in load_documents([TENANT_RBAC]):
            if doc["kind"] == "RoleBinding":
                doc["metadata"]["namespace"] = name
                docs.append(doc)
        apply_documents(admin.api, docs)
    finally:
        admin.close()
    return name


def wait_for(check: Callable[[], T], what: str, timeout: float = 60.0,
             interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
