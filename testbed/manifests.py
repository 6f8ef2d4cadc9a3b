"""Render plugforge's Kustomize directories and server-side apply them to a real apiserver.

``render`` runs the real ``kustomize build`` when it is available (``$PLUGFORGE_KUSTOMIZE``,
installed by ``scripts/ensure.d/kustomize.sh``); otherwise it renders the subset of Kustomize
our kustomizations use — ``resources`` (files and directories with their own
kustomization.yaml) and ``images`` — and refuses any other field rather than silently ignoring
it. ``apply`` is what ``kubectl apply --server-side`` does: one apply-patch per object, the
resource found through API discovery.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
ENV_KUSTOMIZE = "PLUGFORGE_KUSTOMIZE"
_SUPPORTED = {"apiVersion", "kind", "resources", "images"}
_FILE_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class ManifestError(Exception):
    """A kustomization we cannot render, or an object the apiserver refused."""


def kustomize_binary() -> Path | None:
    configured = os.environ.get(ENV_KUSTOMIZE)
    if configured and Path(configured).is_file():
        return Path(configured)
    cache = Path(os.environ.get("PLUGFORGE_CACHE", Path.home() / ".cache" / "plugforge"))
    found = sorted(cache.glob("go-bin/kustomize-*/kustomize"))
    return found[-1] if found else None


def render(directory: Path, *, use_binary: bool = True) -> list[Obj]:
    """The objects ``kustomize build directory`` prints, in its order."""
    binary = kustomize_binary() if use_binary else None
    if binary is not None:
        out = subprocess.run([str(binary), "build", str(directory)], capture_output=True,
                             text=True, timeout=120, check=False)
        if out.returncode != 0:
            raise ManifestError(f"kustomize build {directory} failed: {out.stderr.strip()}")
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    return _render_subset(directory.resolve(), set())


def _render_subset(directory: Path, seen: set[Path]) -> list[Obj]:
    if directory in seen:
        raise ManifestError(f"{directory}: kustomization cycle")
    seen.add(directory)
    file = next((directory / n for n in _FILE_NAMES if (directory / n).is_file()), None)
    if file is None:
        raise ManifestError(f"{directory}: none of {list(_FILE_NAMES)}")
    spec = yaml.safe_load(file.read_text()) or {}
    unknown = sorted(set(spec) - _SUPPORTED)
    if unknown:
        raise ManifestError(f"{file}: fields {unknown} need the real kustomize "
                            f"(set {ENV_KUSTOMIZE}); this renderer knows {sorted(_SUPPORTED)}")
    docs: list[Obj] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs.extend(_render_subset(path, seen))
        elif path.is_file():
            if not path.is_relative_to(directory):
                raise ManifestError(f"{file}: {entry} is outside the kustomization root")
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
        else:
            raise ManifestError(f"{file}: resource {entry} does not exist")
    for image in spec.get("images", []):
        _set_image(docs, image)
    ids = [_object_id(d) for d in docs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ManifestError(f"{file}: objects defined twice: {dupes}")
    return docs


def _set_image(docs: list[Obj], rule: dict[str, str]) -> None:
    for doc in docs:
        pod = (doc.get("spec") or {}).get("template", {}).get("spec")
        if not pod:
            continue
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name, _, tag = container["image"].partition(":")
            if name == rule["name"]:
                container["image"] = (f"{rule.get('newName', name)}:"
                                      f"{rule.get('newTag', tag)}")


def _object_id(doc: Obj) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')}"


@dataclass(frozen=True)
class Resource:
    plural: str
    namespaced: bool


class Applier:
    """Server-side apply as one identity (a bearer token), like ``kubectl apply --server-side``."""

    def __init__(self, url: str, token: str, ca: Path, field_manager: str = "plugforge") -> None:
        self.url = url
        self.token = token
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.field_manager = field_manager
        self._discovered: dict[str, dict[str, Resource]] = {}

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json") -> tuple[int, Obj]:
        req = urllib.request.Request(self.url + path, method=method, data=body, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"message": raw.decode(errors="replace")}

    def resource(self, api_version: str, kind: str) -> Resource:
        if api_version not in self._discovered:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            code, out = self._call("GET", path)
            if code != 200:
                raise ManifestError(f"{api_version} is not served by the apiserver ({code}): "
                                    "is its CRD installed and established?")
            self._discovered[api_version] = {
                r["kind"]: Resource(r["name"], r["namespaced"])
                for r in out.get("resources", []) if "/" not in r["name"]}
        found = self._discovered[api_version].get(kind)
        if found is None:
            self._discovered.pop(api_version)  # a CRD may still be getting established
            raise ManifestError(f"kind {kind} is not served under {api_version}")
        return found

    def path(self, doc: Obj) -> str:
        api_version, kind = doc["apiVersion"], doc["kind"]
        res = self.resource(api_version, kind)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        meta = doc["metadata"]
        ns = f"/namespaces/{meta.get('namespace', 'default')}" if res.namespaced else ""
        return f"{base}{ns}/{res.plural}/{meta['name']}"

    def apply(self, doc: Obj, *, dry_run: bool = False) -> Obj:
        query = f"?fieldManager={self.field_manager}&force=true"
        if dry_run:
            query += "&dryRun=All"
        code, out = self._call("PATCH", self.path(doc) + query, json.dumps(doc).encode(),
                               "application/apply-patch+yaml")
        if code not in (200, 201):
            raise ManifestError(f"apiserver refused {_object_id(doc)} ({code}): "
                                f"{out.get('message', out)}")
        return out

    def get(self, doc: Obj) -> tuple[int, Obj]:
        return self._call("GET", self.path(doc))

    def delete(self, doc: Obj) -> int:
        return self._call("DELETE", self.path(doc))[0]

