"""EMQX 5 adapter: a CONTRACT test against EMQX's documented REST API v5 shapes.

EMQX cannot run on these machines (no package reachable from the allowed registries), and no
recordings of a real node exist. So this is a contract test: the adapter talks real HTTP to our
own server (``DocumentedEmqx`` below, on ``testbed.replay_http``) that implements the endpoints
as EMQX's OpenAPI declares them (``emqx_mgmt_api_plugins``, ``emqx_mgmt_api_configs``; the
endpoint is cited at each handler) and as the plugin manager behaves per EMQX's docs and source:
``ALREADY_INSTALLED`` for a second version of an installed plugin, ``start`` answering 204 even
when the application fails to start, ``403 FORBIDDEN`` for uploads not allowed with
``emqx ctl plugins allow``, ``401 BAD_API_KEY_OR_SECRET``, ``{"code","message"}`` errors.

Proven: request shapes and sequences (install -> start -> verify, upgrade = stop/uninstall old,
install/start new, rollback on failure, uninstall), parsing of the documented responses, error
handling. NOT proven: that a real EMQX release answers exactly so (field details vary between
5.x releases), that the plugin's code really runs, and hook behaviour with MQTT clients.
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugforge.contract import Document
from sidecar.adapters.base import AdapterError, BrokerUnavailable, ChangeClass
from sidecar.adapters.emqx import EmqxAdapter, create, read_package
from sidecar.adapters.registry import create_adapter
from sidecar.probes import ProbeResult
from sidecar.reconcile import Reconciler
from sidecar.state import Phase
from testbed.procs import free_port
from testbed.replay_http import ReplayServer, Request, Response

NAME = "deny_mallory"
KEY, SECRET = "plugforge-sidecar", "s3cret-emqx-api-secret"
NODE = "emqx@127.0.0.1"

DEFAULT_ZONE: dict[str, Any] = {
    "mqtt": {"max_inflight": 32, "max_packet_size": "1MB", "idle_timeout": "15s",
             "retain_available": True, "max_qos_allowed": 2},
    "force_gc": {"enable": True, "count": 16000, "bytes": "16MB"},
    "force_shutdown": {"enable": True, "max_mailbox_size": 1000, "max_heap_size": "32MB"},
    "flapping_detect": {"enable": False, "max_count": 15, "window_time": "1m",
                        "ban_time": "5m"},
}
DEFAULT_ROOTS: dict[str, Any] = {
    "sysmon": {"vm": {"long_gc": "disabled", "long_schedule": "240ms", "large_heap": "32MB"},
               "os": {"cpu_check_interval": "60s", "cpu_high_watermark": "80%"}},
    "log": {"console": {"enable": True, "level": "warning", "formatter": "text"}},
    "alarm": {"actions": ["log", "publish"], "size_limit": 1000, "validity_period": "24h"},
    "sys_topics": {"sys_msg_interval": "1m", "sys_heartbeat_interval": "30s"},
}


def error(status: int, code: str, message: str) -> Response:
    return Response(status, json.dumps({"code": code, "message": message}).encode(),
                    {"content-type": "application/json"})


def ok(body: Any = None, status: int = 200) -> Response:
    if body is None:
        return Response(204)
    return Response(status, json.dumps(body).encode(), {"content-type": "application/json"})


class DocumentedEmqx:
    """EMQX 5's REST API v5 as documented; state in memory."""

    def __init__(self) -> None:
        self.plugins: dict[str, dict[str, Any]] = {}  # name-vsn -> release, running, ...
        self.zone = copy.deepcopy(DEFAULT_ZONE)
        self.roots = copy.deepcopy(DEFAULT_ROOTS)
        self.allowed: set[str] | None = None  # None: no `emqx ctl plugins allow` needed

    def __call__(self, request: Request) -> Response:
        if request.headers.get("authorization") != "Basic " + base64.b64encode(
                f"{KEY}:{SECRET}".encode()).decode():
            return error(401, "BAD_API_KEY_OR_SECRET", "Check api_key/api_secret")
        path, method = request.path, request.method
        if path == "/api/v5/plugins" and method == "GET":
            return self.list_plugins()
        if path == "/api/v5/plugins/install" and method == "POST":
            return self.install(request)
        match = re.fullmatch(r"/api/v5/plugins/([^/]+)(?:/(start|stop|config))?", path)
        if match:
            return self.plugin(method, match.group(1), match.group(2), request)
        if path == "/api/v5/configs/global_zone":
            return self.global_zone(request)
        match = re.fullmatch(r"/api/v5/configs/([a-z_]+)", path)
        if match and match.group(1) in self.roots:
            return self.root(match.group(1), request)
        return error(404, "NOT_FOUND", "Request Path Not Found")

    # GET /plugins -> 200 [plugin] (fields(plugin): name, rel_vsn, rel_apps, description,
    # running_status [{node, status: running|stopped}], ...)
    def list_plugins(self) -> Response:
        return ok([{**p["release"], "running_status": [
            {"node": NODE, "status": "running" if p["running"] else "stopped"}]}
            for p in self.plugins.values()])

    # POST /plugins/install, multipart/form-data field `plugin` (NAME-VSN.tar.gz) -> 204;
    # 400 ALREADY_INSTALLED / BAD_PLUGIN_INFO / BAD_FORM_DATA; 403 FORBIDDEN if not allowed.
    def install(self, request: Request) -> Response:
        parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + request.headers.get("content-type", "").encode() + b"\r\n\r\n"
            + request.body)
        parts = [p for p in parsed.iter_parts()
                 if p.get_param("name", header="content-disposition") == "plugin"]
        if not parts or not parts[0].get_filename():
            return error(400, "BAD_FORM_DATA", "form-data should be "
                         "`plugin=@packagename-vsn.tar.gz;type=application/x-gzip`")
        filename = str(parts[0].get_filename())
        data = parts[0].get_payload(decode=True)
        if not isinstance(data, bytes):
            return error(400, "BAD_FORM_DATA", "the plugin part carries no file")
        name_vsn = filename.removesuffix(".tar.gz")
        if self.allowed is not None and name_vsn not in self.allowed:
            return error(403, "FORBIDDEN", "Package is not allowed installation; first allow "
                         f"it to be installed by running: `emqx ctl plugins allow {name_vsn}`")
        if name_vsn in self.plugins:
            return error(400, "ALREADY_INSTALLED", f'"{filename}" is already installed')
        app = name_vsn.split("-", 1)[0]
        others = [nv for nv in self.plugins if nv.split("-", 1)[0] == app]
        if others:
            return error(400, "ALREADY_INSTALLED", f"{others} already installed")
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                handle = tar.extractfile(f"{name_vsn}/release.json")
                release = json.loads(handle.read() if handle else b"")
                names = tar.getnames()
        except (KeyError, tarfile.TarError, ValueError):
            return error(400, "BAD_PLUGIN_INFO", f"bad_info_file: {filename}")
        if f"{release.get('name')}-{release.get('rel_vsn')}" != name_vsn:
            return error(400, "BAD_PLUGIN_INFO", f"name_vsn_mismatch: {filename}")
        self.plugins[name_vsn] = {
            "release": release, "running": False,
            "fail_start": f"{name_vsn}/FAIL_START" in names,  # test-only marker
            "config": {} if any(n.endswith("priv/config_schema.avsc") for n in names) else None,
        }
        return ok()

    # GET/DELETE /plugins/{name}; PUT /plugins/{name}/start|stop -> 204 (ensure_action ignores
    # the outcome); GET/PUT /plugins/{name}/config -> 200 / 204, 400 BAD_CONFIG, 404 NOT_FOUND.
    def plugin(self, method: str, name_vsn: str, action: str | None,
               request: Request) -> Response:
        plugin = self.plugins.get(name_vsn)
        if action in ("start", "stop") and method == "PUT":
            if plugin is not None:
                plugin["running"] = action == "start" and not plugin["fail_start"]
            return ok()
        if plugin is None:
            return error(404, "NOT_FOUND", "Plugin Not Found")
        if action is None and method == "DELETE":
            del self.plugins[name_vsn]
            return ok()
        if action is None and method == "GET":
            return ok({**plugin["release"], "running_status": [
                {"node": NODE, "status": "running" if plugin["running"] else "stopped"}]})
        if action == "config" and plugin["config"] is None:
            return error(400, "BAD_CONFIG", "Failed to get plugin config")
        if action == "config" and method == "GET":
            return ok(plugin["config"])
        if action == "config" and method == "PUT":
            body = json.loads(request.body)
            unknown = sorted(set(body) - {"deny_users"})
            if unknown:
                return error(400, "BAD_CONFIG", f"unknown fields {unknown} for the plugin's "
                             "Avro schema")
            plugin["config"] = body
            return ok()
        return error(405, "METHOD_NOT_ALLOWED", method)

    # GET/PUT /configs/global_zone: {mqtt, force_gc, force_shutdown, flapping_detect};
    # PUT answers 200 with the updated roots, 400 UPDATE_FAILED.
    def global_zone(self, request: Request) -> Response:
        if request.method == "GET":
            return ok(self.zone)
        body = json.loads(request.body)
        for root, value in body.items():
            problem = _check(self.zone.get(root), value, root)
            if problem:
                return error(400, "UPDATE_FAILED", problem)
        self.zone.update(body)
        return ok({r: self.zone[r] for r in body})

    # GET/PUT /configs/{root} for alarm, sys_topics, sysmon, log (the whole root object).
    def root(self, name: str, request: Request) -> Response:
        if request.method == "GET":
            return ok(self.roots[name])
        body = json.loads(request.body)
        problem = _check(self.roots[name], body, name)
        if problem:
            return error(400, "UPDATE_FAILED", problem)
        self.roots[name] = body
        return ok(body)


def _check(schema: Any, value: Any, path: str) -> str:
    """hocon-style validation against the defaults' shape: unknown fields, wrong types."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f'{{"kind":"validation_error","path":"{path}","reason":"not_a_struct"}}'
        unknown = sorted(set(value) - set(schema))
        if unknown:
            return (f'{{"kind":"validation_error","path":"{path}","reason":"unknown_fields",'
                    f'"unknown":"{",".join(unknown)}"}}')
        return next((p for k in value if (p := _check(schema[k], value[k], f"{path}.{k}"))),
                    "")
    if schema is not None and type(schema) is not type(value):
        return (f'{{"kind":"validation_error","path":"{path}","reason":"unable_to_convert",'
                f'"value":{json.dumps(value)}}}')
    return ""


def digest(label: str) -> str:
    return "sha256:" + hashlib.sha256(label.encode()).hexdigest()


A, B = digest("0.1.0"), digest("0.2.0")


def image_tree(root: Path, vsn: str, *, fail_start: bool = False, schema: bool = False,
               release_name: str = NAME) -> Path:
    """An extracted plugin image holding the emqx-erlang template's package layout."""
    name_vsn = f"{NAME}-{vsn}"
    target = root / vsn / "plugin" / NAME
    target.mkdir(parents=True)
    release = {"name": release_name, "rel_vsn": vsn, "rel_apps": [f"{NAME}-{vsn}"],
               "description": "test plugin", "metadata_vsn": "0.1.0"}
    files = {f"{name_vsn}/release.json": json.dumps(release).encode(),
             f"{name_vsn}/README.md": b"test\n",
             f"{name_vsn}/{NAME}-{vsn}/ebin/{NAME}.app": f"{{application, {NAME}, []}}.\n"
             .encode()}
    if fail_start:
        files[f"{name_vsn}/FAIL_START"] = b""
    if schema:
        files[f"{name_vsn}/{NAME}-{vsn}/priv/config_schema.avsc"] = b"{}"
    with tarfile.open(target / f"{name_vsn}.tar.gz", "w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root / vsn


@pytest.fixture
def emqx() -> DocumentedEmqx:
    return DocumentedEmqx()


@pytest.fixture
def api(emqx: DocumentedEmqx) -> Iterator[ReplayServer]:
    with ReplayServer(emqx) as server:
        yield server


def secrets(tmp_path: Path, key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    (tmp_path / "secret").mkdir(exist_ok=True)
    (tmp_path / "secret" / "key").write_text(key + "\n")
    (tmp_path / "secret" / "secret").write_text(secret + "\n")
    return {"api_key_file": str(tmp_path / "secret" / "key"),
            "api_secret_file": str(tmp_path / "secret" / "secret")}


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "plugins"
    path.mkdir()
    return path


@pytest.fixture
def adapter(api: ReplayServer, tmp_path: Path, plugin_dir: Path) -> EmqxAdapter:
    return create({"api_url": api.url, **secrets(tmp_path)}, plugin_dir)


def calls(api: ReplayServer) -> list[str]:
    return [t.replace("/api/v5", "") for t in api.targets()]


def test_registry_and_options(api: ReplayServer, tmp_path: Path, plugin_dir: Path) -> None:
    made = create_adapter("emqx", {"api_url": api.url, **secrets(tmp_path)}, plugin_dir)
    assert made.name == "emqx" and made.plugin_change_class() is ChangeClass.PLUGIN_RELOAD
    with pytest.raises(AdapterError, match="api_secret_file"):
        create({"api_key_file": "/x"}, plugin_dir)
    with pytest.raises(AdapterError, match="unknown option"):
        create({**secrets(tmp_path), "api_secret": "inline"}, plugin_dir)


def test_list_parsing_reports_only_our_plugins(adapter: EmqxAdapter, emqx: DocumentedEmqx,
                                               tmp_path: Path) -> None:
    emqx.plugins["emqx_other-1.0.0"] = {"release": {
        "name": "emqx_other", "rel_vsn": "1.0.0", "rel_apps": ["emqx_other-1.0.0"],
        "description": "not ours"}, "running": True, "fail_start": False, "config": None}
    seen = adapter.observe()
    assert seen.reachable, seen.detail
    assert seen.plugins == {}
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    seen = adapter.observe()
    assert set(seen.plugins) == {NAME} and not seen.plugins[NAME].enabled


def test_package_is_checked_like_emqx_does(tmp_path: Path, adapter: EmqxAdapter,
                                           api: ReplayServer) -> None:
    with pytest.raises(AdapterError, match=r"expected deny_mallory-0\.1\.0"):
        adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0",
                                                   release_name="other"))
    with pytest.raises(AdapterError, match="snake_case"):
        read_package(tmp_path / "deny-mallory-0.1.0.tar.gz", "deny-mallory")
    assert api.targets() == []


def test_install_start_observe(adapter: EmqxAdapter, api: ReplayServer, emqx: DocumentedEmqx,
                               plugin_dir: Path, tmp_path: Path) -> None:
    path = adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    assert (path / f"{NAME}-0.1.0.tar.gz").is_file() and path.parent == plugin_dir / NAME
    adapter.enable(NAME, A, {})
    assert calls(api) == ["GET /plugins", "POST /plugins/install",
                          f"PUT /plugins/{NAME}-0.1.0/start", "GET /plugins"]
    assert emqx.plugins[f"{NAME}-0.1.0"]["running"]
    seen = adapter.observe().plugins[NAME]
    assert (seen.digest, seen.enabled, seen.settings) == (A, True, {})
    api.clear()
    adapter.enable(NAME, A, {})  # converged: nothing but a look
    assert calls(api) == ["GET /plugins"]


def test_upgrade_stops_and_uninstalls_old_then_installs_and_starts_new(
        adapter: EmqxAdapter, api: ReplayServer, emqx: DocumentedEmqx, tmp_path: Path) -> None:
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    adapter.install_plugin(NAME, B, image_tree(tmp_path / "img", "0.2.0"))
    adapter.enable(NAME, A, {})
    api.clear()
    adapter.enable(NAME, B, {})
    assert calls(api) == ["GET /plugins", f"PUT /plugins/{NAME}-0.1.0/stop",
                          f"DELETE /plugins/{NAME}-0.1.0", "POST /plugins/install",
                          f"PUT /plugins/{NAME}-0.2.0/start", "GET /plugins"]
    assert list(emqx.plugins) == [f"{NAME}-0.2.0"]
    assert adapter.observe().plugins[NAME].digest == B


def test_upgrade_whose_start_fails_rolls_back(adapter: EmqxAdapter, api: ReplayServer,
                                              emqx: DocumentedEmqx, tmp_path: Path) -> None:
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    adapter.install_plugin(NAME, B, image_tree(tmp_path / "img", "0.2.0", fail_start=True))
    adapter.enable(NAME, A, {})
    api.clear()
    with pytest.raises(AdapterError, match="did not start"):
        adapter.enable(NAME, B, {})
    assert calls(api) == [
        "GET /plugins", f"PUT /plugins/{NAME}-0.1.0/stop", f"DELETE /plugins/{NAME}-0.1.0",
        "POST /plugins/install", f"PUT /plugins/{NAME}-0.2.0/start", "GET /plugins",
        "GET /plugins", f"DELETE /plugins/{NAME}-0.2.0",
        "POST /plugins/install", f"PUT /plugins/{NAME}-0.1.0/start", "GET /plugins"]
    assert list(emqx.plugins) == [f"{NAME}-0.1.0"]
    assert emqx.plugins[f"{NAME}-0.1.0"]["running"]
    assert adapter.observe().plugins[NAME].digest == A


def test_refused_upload_says_how_to_allow_it_and_keeps_the_old_version(
        adapter: EmqxAdapter, emqx: DocumentedEmqx, tmp_path: Path) -> None:
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    new = adapter.install_plugin(NAME, B, image_tree(tmp_path / "img", "0.2.0"))
    adapter.enable(NAME, A, {})
    emqx.allowed = {f"{NAME}-0.1.0"}  # only the old version was allowed on the node
    with pytest.raises(AdapterError) as refused:
        adapter.enable(NAME, B, {})
    sha = hashlib.sha256((new / f"{NAME}-0.2.0.tar.gz").read_bytes()).hexdigest()
    message = str(refused.value)
    assert "HTTP 403 FORBIDDEN" in message and "Package is not allowed installation" in message
    assert f"emqx ctl plugins allow {NAME}-0.2.0" in message and f"sha256:{sha}" in message
    assert emqx.plugins[f"{NAME}-0.1.0"]["running"]


def test_uninstall(adapter: EmqxAdapter, api: ReplayServer, emqx: DocumentedEmqx,
                   tmp_path: Path) -> None:
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    adapter.enable(NAME, A, {})
    api.clear()
    adapter.disable(NAME)
    assert calls(api) == ["GET /plugins", f"PUT /plugins/{NAME}-0.1.0/stop",
                          f"DELETE /plugins/{NAME}-0.1.0"]
    assert emqx.plugins == {}
    seen = adapter.observe().plugins[NAME]
    assert (seen.enabled, seen.digest) == (False, None)


def test_plugin_settings_through_the_plugin_config_api(
        adapter: EmqxAdapter, api: ReplayServer, emqx: DocumentedEmqx, tmp_path: Path) -> None:
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    api.clear()
    with pytest.raises(AdapterError, match=r"config_schema\.avsc"):
        adapter.enable(NAME, A, {"deny_users": "mallory,eve"})
    assert api.targets() == []  # refused before any call
    adapter.install_plugin(NAME, B, image_tree(tmp_path / "img", "0.2.0", schema=True))
    adapter.enable(NAME, B, {"deny_users": "mallory,eve"})
    assert emqx.plugins[f"{NAME}-0.2.0"]["config"] == {"deny_users": "mallory,eve"}
    assert adapter.observe().plugins[NAME].settings == {"deny_users": "mallory,eve"}
    with pytest.raises(AdapterError, match="BAD_CONFIG"):
        adapter.enable(NAME, B, {"no_such_setting": "1"})


def test_config_update_and_read_back(adapter: EmqxAdapter, api: ReplayServer,
                                     emqx: DocumentedEmqx) -> None:
    desired = {"mqtt.max_inflight": "64", "sysmon.vm.long_schedule": "500ms"}
    assert adapter.validate_config(desired) == []
    assert adapter.classify("mqtt.max_inflight") is ChangeClass.HOT
    api.clear()
    adapter.apply_config(desired)
    assert [c for c in calls(api) if not c.startswith("GET")] == [
        "PUT /configs/global_zone", "PUT /configs/sysmon"]
    assert emqx.zone["mqtt"]["max_inflight"] == 64  # typed like the current value
    assert emqx.roots["sysmon"]["vm"]["long_schedule"] == "500ms"
    seen = adapter.observe().config
    assert seen["mqtt.max_inflight"] == "64" and seen["sysmon.vm.long_schedule"] == "500ms"
    assert seen["mqtt.retain_available"] == "true"
    adapter.apply_config({"mqtt.max_inflight": None})  # back to the value before the sidecar
    assert emqx.zone["mqtt"]["max_inflight"] == 32


def test_unknown_key_and_bad_value_carry_the_apis_message(adapter: EmqxAdapter,
                                                          emqx: DocumentedEmqx) -> None:
    with pytest.raises(AdapterError) as unknown:
        adapter.apply_config({"mqtt.no_such_key": "1"})
    assert "HTTP 400 UPDATE_FAILED" in str(unknown.value)
    assert '"reason":"unknown_fields","unknown":"no_such_key"' in str(unknown.value)
    with pytest.raises(AdapterError, match="unable_to_convert"):
        adapter.apply_config({"mqtt.max_inflight": "lots"})
    assert emqx.zone == DEFAULT_ZONE


def test_config_validation(adapter: EmqxAdapter) -> None:
    problems = adapter.validate_config({"node.cookie": "x", "listeners.tcp.default.bind": "1",
                                        "mqtt.max_inflight": "8"})
    assert [p.key for p in problems] == ["listeners.tcp.default.bind", "node.cookie"]
    assert "not managed" in problems[0].message
    assert "restart the pod" in problems[1].message
    assert adapter.classify("node.cookie") is ChangeClass.BROKER_RESTART


def test_bad_credentials_give_a_clear_error_without_secrets(
        api: ReplayServer, tmp_path: Path, plugin_dir: Path) -> None:
    adapter = create({"api_url": api.url, **secrets(tmp_path, secret="wrong-secret-93af")},
                     plugin_dir)
    seen = adapter.observe()
    assert not seen.reachable and "HTTP 401 BAD_API_KEY_OR_SECRET" in seen.detail
    assert "wrong-secret-93af" not in seen.detail and KEY not in seen.detail
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    with pytest.raises(AdapterError) as refused:
        adapter.enable(NAME, A, {})
    assert "wrong-secret-93af" not in str(refused.value)
    assert not adapter.health()


def test_connection_refused_is_broker_unavailable(tmp_path: Path, plugin_dir: Path) -> None:
    adapter = create({"api_url": f"http://127.0.0.1:{free_port()}", **secrets(tmp_path)},
                     plugin_dir)
    seen = adapter.observe()
    assert not seen.reachable and "did not answer" in seen.detail
    adapter.install_plugin(NAME, A, image_tree(tmp_path / "img", "0.1.0"))
    with pytest.raises(BrokerUnavailable):
        adapter.enable(NAME, A, {})


def test_reconciler_converges_then_resync_changes_nothing(
        adapter: EmqxAdapter, api: ReplayServer, emqx: DocumentedEmqx, tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "img", "0.1.0")
    documents = [
        Document("test", "broker.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                 "kind: BrokerConfig\nbroker: emqx\nconfig:\n  mqtt.max_inflight: '48'\n"),
        Document("test", f"plugin.{NAME}.yaml", "apiVersion: plugforge.dev/v1alpha1\n"
                 f"kind: PluginRelease\nname: {NAME}\n"
                 f"image: registry.test:5000/plugins/deny@{A}\n"),
    ]
    reconciler = Reconciler(adapter, lambda: documents, lambda _image: tree,
                            lambda p: ProbeResult(p.name, True, "accepted", "not run"))
    assert reconciler.reconcile("start").phase is Phase.APPLIED, reconciler.state.last_error
    assert emqx.plugins[f"{NAME}-0.1.0"]["running"] and emqx.zone["mqtt"]["max_inflight"] == 48
    api.clear()
    assert reconciler.reconcile("resync").phase is Phase.APPLIED
    assert [c for c in calls(api) if not c.startswith("GET")] == []
