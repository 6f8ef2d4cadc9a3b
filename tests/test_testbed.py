"""Smoke tests proving the real servers behind every other test: apiserver, registry, git."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client, config, watch

from testbed.gitserver import GitServer, run_git
from testbed.kube import ControlPlane
from testbed.registry import Registry


def _core_api(cp: ControlPlane, identity: str = "admin") -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(cp.kubeconfig(identity))))


def test_configmap_create_watch_delete(control_plane: ControlPlane) -> None:
    api = _core_api(control_plane)
    name = "smoke-watch"
    events: list[tuple[str, str]] = []
    started = threading.Event()

    def watch_configmaps() -> None:
        w = watch.Watch()
        started.set()
        for event in w.stream(api.list_namespaced_config_map, "default",
                              field_selector=f"metadata.name={name}", timeout_seconds=20):
            events.append((event["type"], event["object"].data.get("k", "")))
            if len(events) == 3:
                w.stop()

    watcher = threading.Thread(target=watch_configmaps, daemon=True)
    watcher.start()
    started.wait(5)
    # The watch is established asynchronously; give the request a moment to reach the server.
    threading.Event().wait(0.5)
    api.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name), data={"k": "v1"}))
    api.patch_namespaced_config_map(name, "default", {"data": {"k": "v2"}})
    api.delete_namespaced_config_map(name, "default")
    watcher.join(20)

    assert events == [("ADDED", "v1"), ("MODIFIED", "v2"), ("DELETED", "v2")]


def test_builder_identity_has_only_rbac_rights(control_plane: ControlPlane) -> None:
    # Without the RBAC objects from manifests/, the builder's service account may do nothing.
    status, body = control_plane.request(
        "GET", "/api/v1/namespaces/default/configmaps", identity="builder")
    assert status == 403, body
    assert "system:serviceaccount:plugforge-system:plugforge-builder" in str(body["message"])

    status, _ = control_plane.request("GET", "/api/v1/namespaces/default/configmaps")
    assert status == 200


def test_unknown_token_is_rejected(control_plane: ControlPlane) -> None:
    req = urllib.request.Request(control_plane.url + "/api/v1/namespaces",
                                 headers={"Authorization": "Bearer not-a-token"})
    ctx = ssl.create_default_context(cafile=str(control_plane.ca.cert))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx, timeout=10)
    assert err.value.code == 401


def _registry_call(reg: Registry, method: str, path: str, data: bytes | None = None,
                   headers: dict[str, str] | None = None,
                   credentials: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers or {})
    if credentials:
        token = base64.b64encode("{}:{}".format(*credentials).encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(reg.url + path, method=method, data=data, headers=headers)
    ctx = ssl.create_default_context(cafile=str(reg.ca.cert))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _push_image(reg: Registry, repo: str, credentials: tuple[str, str] | None = None) -> str:
    blob = b"plugforge smoke layer"
    blob_digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    cfg = b"{}"
    cfg_digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
    for content, digest in ((blob, blob_digest), (cfg, cfg_digest)):
        status, headers, _ = _registry_call(reg, "POST", f"/v2/{repo}/blobs/uploads/",
                                            credentials=credentials)
        assert status == 202
        location = headers["Location"].replace(reg.url, "")
        sep = "&" if "?" in location else "?"
        status, _, _ = _registry_call(reg, "PUT", f"{location}{sep}digest={digest}", content,
                                      {"Content-Type": "application/octet-stream"}, credentials)
        assert status == 201
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": cfg_digest, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": blob_digest, "size": len(blob)}],
    }).encode()
    status, headers, _ = _registry_call(
        reg, "PUT", f"/v2/{repo}/manifests/v1", manifest,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, credentials)
    assert status == 201
    digest = headers["Docker-Content-Digest"]
    assert digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    return digest


def test_registry_push_and_read_back_over_tls(registry: Registry) -> None:
    digest = _push_image(registry, "smoke/plugin")
    status, _, body = _registry_call(
        registry, "GET", f"/v2/smoke/plugin/manifests/{digest}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200
    layer = json.loads(body)["layers"][0]["digest"]
    status, _, blob = _registry_call(registry, "GET", f"/v2/smoke/plugin/blobs/{layer}")
    assert (status, blob) == (200, b"plugforge smoke layer")


def test_registry_basic_auth(registry_auth: Registry) -> None:
    status, _, _ = _registry_call(registry_auth, "GET", "/v2/")
    assert status == 401
    status, _, _ = _registry_call(registry_auth, "GET", "/v2/", credentials=("pusher", "wrong"))
    assert status == 401
    assert registry_auth.credentials is not None
    _push_image(registry_auth, "smoke/authed", registry_auth.credentials)


def test_git_push_two_commits_and_clone(git_server: GitServer, tmp_path: Path) -> None:
    url = git_server.create_repo("acme/smoke.git")
    work = tmp_path / "work"
    work.mkdir()
    run_git(work, "init", "-q", "-b", "main")
    for n in (1, 2):
        (work / "file.txt").write_text(f"revision {n}\n")
        run_git(work, "add", "file.txt")
        run_git(work, "commit", "-q", "-m", f"commit {n}")
    run_git(work, "push", "-q", url, "main")

    clone = tmp_path / "clone"
    run_git(tmp_path, "clone", "-q", url, str(clone))
    assert run_git(clone, "log", "--format=%s").splitlines() == ["commit 2", "commit 1"]
    assert (clone / "file.txt").read_text() == "revision 2\n"


def test_git_server_with_credentials(git_server_auth: GitServer, tmp_path: Path) -> None:
    url = git_server_auth.create_repo("acme/private.git")
    with pytest.raises(RuntimeError, match=r"Authentication failed|could not read Username"):
        run_git(tmp_path, "clone", "-q", url, str(tmp_path / "denied"))
    run_git(tmp_path, "clone", "-q", git_server_auth.authed_url(url), str(tmp_path / "ok"))
