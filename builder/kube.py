"""Thin adapter over the Kubernetes API: the only builder module that imports ``kubernetes``.

Objects go in and out as plain dicts (the JSON the apiserver speaks); every
``ApiException`` becomes one of the typed errors of ``builder.errors``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from builder.errors import Conflict, Forbidden, Gone, Invalid, KubeError, NotFound
from builder.secrets import Secret

GROUP = "plugforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLUGINS = "brokerplugins"
BUILDS = "pluginbuilds"
PLUGIN_LABEL = "plugforge.dev/plugin"
WATCH_IDLE_SECONDS = 90.0
LIST_PAGE = 500
"""Objects per list call (``Kube.pages``): bounds what one response holds in memory."""
"""As the sidecar's watch: the apiserver sends a bookmark about once a minute."""

Obj = dict[str, Any]
T = TypeVar("T")


def _call(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ApiException as e:
        raise _wrap(what, e) from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeError(f"{what}: apiserver unreachable: {e}") from e


def _wrap(what: str, e: ApiException) -> Exception:
    message = _status_message(e)
    status = e.status or 0
    if status == 404:
        return NotFound(f"{what}: not found ({message})")
    if status == 409:
        return Conflict(f"{what}: conflict ({message}); re-read and retry")
    if status == 403:
        return Forbidden(f"{what}: forbidden ({message}); grant the builder's service account "
                         "this right (see manifests/builder/README.md)")
    if status == 422:
        return Invalid(f"{what}: rejected by the apiserver: {message}")
    if status == 410:
        return Gone(f"{what}: resource version too old ({message}); relisting")
    return KubeError(f"{what}: HTTP {status}: {message}")


def _status_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return str(e.reason)
    return str(body.get("message") or e.reason) if isinstance(body, dict) else str(e.reason)


def api_client_from_kubeconfig(path: Path | None) -> client.ApiClient:
    """An API client for ``path`` (None: in-cluster service account)."""
    if path is None:
        config.load_incluster_config()
        return client.ApiClient()
    api: client.ApiClient = config.new_client_from_config(config_file=str(path))
    return api


class Kube:
    """The calls the builder makes, nothing more (which keeps the RBAC easy to audit)."""

    def __init__(self, api: client.ApiClient, watch_namespace: str | None = None) -> None:
        # The generated clients' annotations do not describe the dicts we pass: keep them Any.
        self.api: Any = api
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.watch_namespace = watch_namespace
        """List and watch only this namespace's BrokerPlugins and PluginBuilds (None: all)."""

    @classmethod
    def from_kubeconfig(cls, path: Path | None, watch_namespace: str | None = None) -> Kube:
        return cls(api_client_from_kubeconfig(path), watch_namespace)

    def _list_all(self, plural: str, **params: Any) -> Any:
        func, args = self._lister(plural)
        return func(*args, **params)

    def _lister(self, plural: str) -> tuple[Any, tuple[str, ...]]:
        """The generated list function (``watch.Watch`` reads its docstring) and its
        positional arguments for every object of ``plural`` the builder is scoped to."""
        if self.watch_namespace is None:
            return self.custom.list_cluster_custom_object, (GROUP, VERSION, plural)
        return (self.custom.list_namespaced_custom_object,
                (GROUP, VERSION, self.watch_namespace, plural))

    def close(self) -> None:
        self.api.close()

    # --- BrokerPlugins ------------------------------------------------------------------------

    def get_plugin(self, namespace: str, name: str) -> Obj | None:
        try:
            obj: Obj = _call(f"get brokerplugin {namespace}/{name}", lambda: self.custom.
                             get_namespaced_custom_object(GROUP, VERSION, namespace, PLUGINS,
                                                          name))
            return obj
        except NotFound:
            return None

    def list_plugins(self) -> tuple[list[Obj], str]:
        """All BrokerPlugins (of ``watch_namespace``, if set) and the list's resourceVersion
        (to watch from)."""
        return self._list_in_pages(PLUGINS)

    def pages(self, plural: str, limit: int = LIST_PAGE) -> Iterator[tuple[list[Obj], str]]:
        """Every object of ``plural`` the builder is scoped to, ``limit`` per page, each page
        with the list's resourceVersion (one consistent snapshot; ``Gone`` if it expired
        between pages). A caller that needs only part of each object (a key, a URL) never
        holds every object at once: 10,000 whole BrokerPlugins are ~250 MB of dicts."""
        token: str | None = None
        while True:
            result = _call(f"list {plural}", functools.partial(
                self._list_all, plural, limit=limit, **({"_continue": token} if token else {})))
            meta = result.get("metadata") or {}
            yield list(result.get("items", [])), str(meta["resourceVersion"])
            token = meta.get("continue")
            if not token:
                return

    def _list_in_pages(self, plural: str) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        version = ""
        for page, page_version in self.pages(plural):
            items.extend(page)
            version = page_version
        return items, version

    def list_plugins_in(self, namespace: str) -> list[Obj]:
        result = _call(f"list brokerplugins in {namespace}", lambda: self.custom.
                       list_namespaced_custom_object(GROUP, VERSION, namespace, PLUGINS))
        return list(result.get("items", []))

    def patch_plugin_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        body = {"status": dict(status)}
        return _call(f"patch brokerplugin {namespace}/{name} status", lambda: self.custom.
                     patch_namespaced_custom_object_status(
                         GROUP, VERSION, namespace, PLUGINS, name, body))

    # --- PluginBuilds -------------------------------------------------------------------------

    def list_builds(self, namespace: str, plugin: str | None = None) -> list[Obj]:
        """PluginBuilds in ``namespace`` (of ``plugin`` only, judged by ``spec.plugin``).

        Not by label: requests made by hand or by other tools may lack it, and label values
        are cut at 63 characters. By field (the CRD's ``selectableFields``): the apiserver
        filters, so a reconcile reads its plugin's builds, not every build of the namespace.
        """
        fields = {"field_selector": f"spec.plugin={plugin}"} if plugin is not None else {}
        result = _call(f"list pluginbuilds in {namespace}", lambda: self.custom.
                       list_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS,
                                                     **fields))
        items = list(result.get("items", []))
        if plugin is None:
            return items
        return [b for b in items if (b.get("spec") or {}).get("plugin") == plugin]

    def list_builds_rv(self) -> tuple[list[Obj], str]:
        return self._list_in_pages(BUILDS)

    def get_build(self, namespace: str, name: str) -> Obj | None:
        try:
            obj: Obj = _call(f"get pluginbuild {namespace}/{name}", lambda: self.custom.
                             get_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS,
                                                          name))
            return obj
        except NotFound:
            return None

    def create_build(self, namespace: str, body: Obj) -> Obj:
        """Create a PluginBuild; ``Conflict`` if the name exists (requests are idempotent)."""
        return _call(f"create pluginbuild in {namespace}", lambda: self.custom.
                     create_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS, body))

    def replace_build_status(self, build: Obj) -> Obj:
        """Write ``build['status']`` unless the build changed since it was read (Conflict)."""
        meta = build["metadata"]
        return _call(f"update pluginbuild {meta['namespace']}/{meta['name']} status", lambda: self.
                     custom.replace_namespaced_custom_object_status(
                         GROUP, VERSION, meta["namespace"], BUILDS, meta["name"], build))

    def delete_build(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            _call(f"delete pluginbuild {namespace}/{name}", lambda: self.custom.
                  delete_namespaced_custom_object(GROUP, VERSION, namespace, BUILDS, name))

    # --- watching -----------------------------------------------------------------------------

    def watch(self, plural: str, resource_version: str, timeout_seconds: int,
              idle_seconds: float = WATCH_IDLE_SECONDS) -> Iterator[tuple[str, Obj]]:
        """Events of ``plural`` after ``resource_version`` until the server ends the watch.

        Raises ``Gone`` when the version is too old: the caller relists. A watch that delivers
        nothing, not even a bookmark, for ``idle_seconds`` is presumed dead (a half-open
        connection behind a proxy) and raises ``KubeError``: the caller resumes it at once
        instead of waiting for the next resync. The socket read timeout is the watchdog.
        """
        func, args = self._lister(plural)
        yield from self._stream(plural, func, args, resource_version, timeout_seconds,
                                idle_seconds)

    def _stream(self, what: str, func: Any, args: tuple[str, ...], resource_version: str,
                timeout_seconds: int, idle_seconds: float) -> Iterator[tuple[str, Obj]]:
        w = watch.Watch()
        stream = w.stream(func, *args, resource_version=resource_version,
                          timeout_seconds=timeout_seconds, allow_watch_bookmarks=True,
                          _request_timeout=(10, idle_seconds))
        try:
            while True:
                try:
                    event = next(stream)
                except StopIteration:
                    return
                except ApiException as e:
                    raise _wrap(f"watch {what}", e) from e
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    raise KubeError(f"watch {what}: connection lost: {e}") from e
                obj = event["object"]
                if not isinstance(obj, dict):  # typed models (core API): plain JSON dicts
                    obj = self.api.sanitize_for_serialization(obj)
                yield str(event["type"]), dict(obj)
        finally:
            w.stop()

    # --- Pods (the broker pods of spec.target.selector; list and watch, per namespace) ------

    def list_pods_rv(self, namespace: str) -> tuple[list[Obj], str]:
        """Every Pod of ``namespace`` and the list's resourceVersion (to watch from)."""
        result = _call(f"list pods in {namespace}",
                       lambda: self.core.list_namespaced_pod(namespace))
        return ([dict(self.api.sanitize_for_serialization(p)) for p in result.items],
                str(result.metadata.resource_version))

    def watch_pods(self, namespace: str, resource_version: str, timeout_seconds: int,
                   idle_seconds: float = WATCH_IDLE_SECONDS) -> Iterator[tuple[str, Obj]]:
        """Pod events of ``namespace`` after ``resource_version`` (as ``watch``)."""
        yield from self._stream(f"pods in {namespace}", self.core.list_namespaced_pod,
                                (namespace,), resource_version, timeout_seconds, idle_seconds)

    # --- ConfigMaps and Secrets ---------------------------------------------------------------

    def get_configmap(self, namespace: str, name: str) -> Obj | None:
        try:
            cm = _call(f"get configmap {namespace}/{name}",
                       lambda: self.core.read_namespaced_config_map(name, namespace))
        except NotFound:
            return None
        return dict(self.api.sanitize_for_serialization(cm))

    def create_configmap(self, namespace: str, name: str, data: Mapping[str, str],
                         annotations: Mapping[str, str] | None = None) -> Obj:
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace,
                             "annotations": dict(annotations or {})}, "data": dict(data)}
        cm = _call(f"create configmap {namespace}/{name}",
                   lambda: self.core.create_namespaced_config_map(namespace, body))
        return dict(self.api.sanitize_for_serialization(cm))

    def replace_configmap(self, configmap: Obj) -> Obj:
        """Replace with the ``resourceVersion`` it was read at (Conflict if it moved since)."""
        meta = configmap["metadata"]
        cm = _call(f"update configmap {meta['namespace']}/{meta['name']}",
                   lambda: self.core.replace_namespaced_config_map(
                       meta["name"], meta["namespace"], configmap))
        return dict(self.api.sanitize_for_serialization(cm))

    def read_secret(self, namespace: str, name: str) -> Secret:
        """The Secret's type and data, base64-decoded. Never logged by any caller; use it
        through ``builder.secrets.check_use``."""
        secret = _call(f"get secret {namespace}/{name}",
                       lambda: self.core.read_namespaced_secret(name, namespace))
        return Secret(namespace, name, str(secret.type or "Opaque"),
                      {k: base64.b64decode(v) for k, v in (secret.data or {}).items()})

    # --- Events -------------------------------------------------------------------------------

    def emit_event(self, regarding: Obj, *, type_: str, reason: str, note: str, action: str,
                   now: str, reporter: str) -> None:
        meta = regarding["metadata"]
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name'][:200]}-",
                         "namespace": meta["namespace"]},
            "regarding": {"apiVersion": regarding.get("apiVersion", API_VERSION),
                          "kind": regarding.get("kind", "BrokerPlugin"),
                          "name": meta["name"], "namespace": meta["namespace"],
                          "uid": meta.get("uid"),
                          "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "note": note[:1024], "action": action,
            "eventTime": now, "reportingController": "plugforge.dev/builder",
            "reportingInstance": reporter[:128],
        }
        # Through the generic client: the typed one re-parses eventTime and drops microseconds,
        # which the apiserver's MicroTime then refuses.
        _call(f"create event in {meta['namespace']}",
              lambda: self.custom.create_namespaced_custom_object(
                  "events.k8s.io", "v1", meta["namespace"], "events", body))

    # --- Leases -------------------------------------------------------------------------------

    # Leases go through the generic client too: the typed one drops zero microseconds from
    # MicroTime fields, which the apiserver then refuses.

    def get_lease(self, namespace: str, name: str) -> Obj | None:
        try:
            lease: Obj = _call(f"get lease {namespace}/{name}", lambda: self.custom.
                               get_namespaced_custom_object(
                                   "coordination.k8s.io", "v1", namespace, "leases", name))
        except NotFound:
            return None
        return lease

    def create_lease(self, namespace: str, body: Obj) -> Obj:
        lease: Obj = _call(f"create lease {namespace}", lambda: self.custom.
                           create_namespaced_custom_object(
                               "coordination.k8s.io", "v1", namespace, "leases", body))
        return lease

    def replace_lease(self, body: Obj) -> Obj:
        meta = body["metadata"]
        lease: Obj = _call(f"update lease {meta['namespace']}/{meta['name']}", lambda: self.
                           custom.replace_namespaced_custom_object(
                               "coordination.k8s.io", "v1", meta["namespace"], "leases",
                               meta["name"], body))
        return lease

    # --- build Jobs and their pods (the kubernetes executor; the build namespace only) ------

    def create_job(self, namespace: str, body: Obj) -> Obj:
        job = _call(f"create job in {namespace}",
                    lambda: self.batch.create_namespaced_job(namespace, body))
        return dict(self.api.sanitize_for_serialization(job))

    def get_job(self, namespace: str, name: str) -> Obj | None:
        try:
            job = _call(f"get job {namespace}/{name}",
                        lambda: self.batch.read_namespaced_job(name, namespace))
        except NotFound:
            return None
        return dict(self.api.sanitize_for_serialization(job))

    def list_jobs(self, namespace: str, selector: str) -> list[Obj]:
        result = _call(f"list jobs in {namespace}", lambda: self.batch.list_namespaced_job(
            namespace, label_selector=selector))
        return [dict(self.api.sanitize_for_serialization(j)) for j in result.items]

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its pods; gone already is fine."""
        with contextlib.suppress(NotFound):
            _call(f"delete job {namespace}/{name}", lambda: self.batch.delete_namespaced_job(
                name, namespace, propagation_policy="Background"))

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        result = _call(f"list pods in {namespace}", lambda: self.core.list_namespaced_pod(
            namespace, label_selector=selector))
        return [dict(self.api.sanitize_for_serialization(p)) for p in result.items]

    def follow_pod_log(self, namespace: str, pod: str, container: str,
                       read_timeout: float) -> LogStream:
        """A container's log from its start, following it until the container ends.

        ``read_timeout`` bounds each wait for more output (a stalled kubelet stream)."""
        what = f"log of {namespace}/{pod}/{container}"
        resp = _call(what, lambda: self.core.read_namespaced_pod_log(
            pod, namespace, container=container, follow=True, _preload_content=False,
            _request_timeout=(10, read_timeout)))
        return LogStream(what, resp)

    def read_pod_log(self, namespace: str, pod: str, container: str, limit: int) -> bytes:
        """The first ``limit`` bytes of a container's log as it is now."""
        resp = _call(f"log of {namespace}/{pod}/{container}", lambda: self.core.
                     read_namespaced_pod_log(pod, namespace, container=container,
                                             limit_bytes=limit, _preload_content=False,
                                             _request_timeout=(10, 60)))
        return bytes(resp.data)


class LogStream:
    """A followed log: ``chunks()`` as they arrive; ``close()`` from another thread ends it."""

    def __init__(self, what: str, resp: Any) -> None:
        self._what, self._resp = what, resp

    def chunks(self) -> Iterator[bytes]:
        try:
            # stream(): each HTTP chunk as it arrives (read(n) would wait for n bytes).
            yield from (bytes(chunk) for chunk in self._resp.stream(65536))
        except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError) as e:
            # (AttributeError: urllib3 drops its file object when close() cuts a read short)
            raise KubeError(f"{self._what}: stream ended: {e}") from e
        finally:
            self._resp.release_conn()

    def close(self) -> None:
        with contextlib.suppress(OSError, urllib3.exceptions.HTTPError):
            self._resp.shutdown()  # unblocks a read waiting in another thread
        with contextlib.suppress(OSError, urllib3.exceptions.HTTPError):
            self._resp.close()


def load_documents(paths: list[Path]) -> list[Obj]:
    """Every YAML document of ``paths`` (files or directories, sorted), empty ones skipped."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.glob("*.yaml")) if path.is_dir() else [path])
    docs: list[Obj] = []
    for file in files:
        docs.extend(d for d in yaml.safe_load_all(file.read_text()) if d)
    return docs


def apply_documents(api: client.ApiClient, docs: list[Obj]) -> None:
    """Create each object, or replace it if it exists (enough for manifests and tests)."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    dyn = DynamicClient(api)
    for doc in docs:
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        namespace = doc["metadata"].get("namespace")
        try:
            existing = resource.get(name=doc["metadata"]["name"], namespace=namespace)
        except NotFoundError:
            resource.create(body=doc, namespace=namespace)
            continue
        body = {**doc, "metadata": {**doc["metadata"],
                                    "resourceVersion": existing.metadata.resourceVersion}}
        resource.replace(body=body, namespace=namespace)
