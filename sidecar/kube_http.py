"""A small HTTP client for the Kubernetes API: JSON requests and streaming watches over urllib3.

The sidecar needs a few calls (list and watch ConfigMaps; create and patch Events). The official
``kubernetes`` package costs ~33 MB of RSS just to import, more than half the sidecar's memory
budget in API mode, so the sidecar speaks the API's plain JSON here instead. Failures become the
typed errors of ``sidecar.kube_errors``; a 403 names the RBAC verb and resource that is missing.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

from plugforge.pki import write_private
from sidecar.kube_config import ClusterConfig
from sidecar.kube_errors import (
    KubeApiError,
    KubeConfigError,
    KubeConnectionError,
    KubeGone,
    KubeWatchIdle,
)

log = logging.getLogger("plugforge.sidecar")

JsonObject = dict[str, Any]
MAX_EVENT_BYTES = 16 << 20  # one watch event; ConfigMaps are capped at 1 MiB


@dataclass(frozen=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK (ERROR events are raised as ``KubeApiError``)."""
    object: JsonObject

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


@dataclass(frozen=True)
class RbacRequest:
    """What RBAC checks for one API call: ``verb`` on ``resource`` (``group`` "" is core)."""
    verb: str
    resource: str
    group: str
    namespace: str | None

    def describe(self) -> str:
        resource = f"{self.resource}.{self.group}" if self.group else self.resource
        where = f" in namespace {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb!r} on {resource!r}{where}"


def rbac_request(method: str, path: str, query: Mapping[str, str] | None = None) -> RbacRequest:
    """The RBAC verb and resource of a request, e.g. GET .../configmaps?watch=1 -> watch."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    group, rest = "", parts[2:]
    if parts[:1] == ["apis"]:
        group, rest = (parts[1] if len(parts) > 1 else ""), parts[3:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watching = (query or {}).get("watch", "").lower() in ("1", "true")
    verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create",
            "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}.get(method.upper(), method.lower())
    return RbacRequest(verb, resource, group, namespace)


class KubeClient:
    """One apiserver; thread-safe (urllib3 pools connections per host)."""

    def __init__(self, config: ClusterConfig, *, connect_timeout: float = 10.0,
                 read_timeout: float = 30.0) -> None:
        self.config = config
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._connect_timeout = connect_timeout
        extra: dict[str, Any] = {}
        if config.tls_server_name:
            extra["server_hostname"] = config.tls_server_name
        if config.insecure_skip_tls_verify:
            extra["cert_reqs"] = "CERT_NONE"
        # Each watch holds a connection for minutes; one per ConfigMap plus Events.
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=8, block=False, retries=False,
                                         timeout=self._timeout, ssl_context=_ssl_context(config),
                                         **extra)

    def close(self) -> None:
        self._pool.clear()

    def get(self, path: str, query: Mapping[str, str] | None = None) -> JsonObject:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: JsonObject) -> JsonObject:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: JsonObject) -> JsonObject:
        return self.request("PATCH", path, body=body)

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                body: JsonObject | None = None) -> JsonObject:
        """One JSON call; a 2xx answer's object, else ``KubeApiError``."""
        response = self._send(method, path, query, body, self._timeout, stream=False)
        return _json_body(response.data, self._url(path))

    def watch(self, path: str, query: Mapping[str, str] | None = None, *,
              idle_timeout: float) -> Generator[WatchEvent, None, None]:
        """Stream a watch until the apiserver ends it.

        ``idle_timeout`` is the socket read timeout: a watch that sends nothing, not even a
        bookmark, for that long raises ``KubeConnectionError``. An ERROR event raises
        ``KubeApiError`` (``KubeGone`` for 410). Leaving the loop early closes the connection.
        """
        query = {**(query or {}), "watch": "true"}
        timeout = urllib3.Timeout(connect=self._connect_timeout, read=idle_timeout or None)
        response = self._send("GET", path, query, None, timeout, stream=True)
        url = self._url(path)
        try:
            for line in _lines(response, url):
                event = _parse_event(line, url)
                if event.type == "ERROR":
                    raise _status_error(event.object, 0, rbac_request("GET", path, query),
                                        self.config.server)
                yield event
        except urllib3.exceptions.ReadTimeoutError as e:
            raise KubeWatchIdle(f"watch {url}: nothing for {idle_timeout:g} s (read timed "
                                "out)") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeConnectionError(
                f"watch {url}: the connection failed: {_reason(e)}") from e
        finally:
            # A watch is never read to its end: close it rather than pool a busy socket.
            response.close()
            response.release_conn()

    # --- internals -------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.config.server + path

    def _send(self, method: str, path: str, query: Mapping[str, str] | None,
              body: JsonObject | None, timeout: urllib3.Timeout, *,
              stream: bool) -> urllib3.BaseHTTPResponse:
        url = self._url(path) + (f"?{urlencode(query)}" if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            headers = {"Accept": "application/json", "User-Agent": "plugforge-sidecar"}
            if payload is not None:
                # PATCH bodies here are JSON merge patches (RFC 7386).
                headers["Content-Type"] = ("application/merge-patch+json" if method == "PATCH"
                                           else "application/json")
            if self.config.token is not None:
                headers["Authorization"] = f"Bearer {self.config.token.get()}"
            log.debug("%s %s", method, url)
            try:
                response = self._pool.request(method, url, body=payload, headers=headers,
                                              timeout=timeout, preload_content=not stream,
                                              redirect=False)
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise _connection_error(e, self.config) from e
            if 200 <= response.status < 300:
                return response
            data = response.data if not stream else response.read(1 << 20)
            response.release_conn()
            token = self.config.token
            if response.status == 401 and attempt == 1 and token is not None and token.path:
                # A bound token may have rotated since the last read: read it again, once.
                token.invalidate()
                continue
            raise _status_error(_status_object(data), response.status,
                                rbac_request(method, path, query), self.config.server,
                                source=self.config.source)
        raise AssertionError("unreachable: the second attempt returns or raises")


def _ssl_context(config: ClusterConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file else None, cadata=config.ca_data)
    except (OSError, ssl.SSLError) as e:
        what = config.ca_file or "certificate-authority-data"
        raise KubeConfigError(f"{config.source}: cannot load the cluster CA {what}: {e}; "
                              "expected PEM certificates") from e
    if config.insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert is not None and config.client_key is not None:
        # ssl loads key pairs only from files: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="plugforge-kube-") as tmp:
            cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            for path, data in ((cert, config.client_cert), (key, config.client_key)):
                write_private(path, data)
            try:
                context.load_cert_chain(str(cert), str(key))
            except ssl.SSLError as e:
                raise KubeConfigError(
                    f"{config.source}: the client certificate and key do not load: {e}; "
                    "expected a PEM certificate and its matching unencrypted PEM key") from e
    return context


def _lines(response: urllib3.BaseHTTPResponse, url: str) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(64 << 10):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
        if len(buffer) > MAX_EVENT_BYTES:
            raise KubeConnectionError(
                f"watch {url}: one event exceeds {MAX_EVENT_BYTES} bytes; not a watch stream?")
    if buffer.strip():
        raise KubeConnectionError(f"watch {url}: the stream ended in the middle of an event")


def _parse_event(line: bytes, url: str) -> WatchEvent:
    try:
        event = json.loads(line)
    except ValueError as e:
        raise KubeConnectionError(f"watch {url}: an event is not JSON ({e}): "
                                  f"{line[:200]!r}") from e
    if not (isinstance(event, dict) and isinstance(event.get("type"), str)
            and isinstance(event.get("object"), dict)):
        raise KubeConnectionError(f"watch {url}: expected {{type, object}} events, found "
                                  f"{line[:200]!r}")
    return WatchEvent(event["type"], event["object"])


def _json_body(data: bytes, url: str) -> JsonObject:
    try:
        body = json.loads(data)
    except ValueError as e:
        raise KubeConnectionError(f"{url}: the answer is not JSON ({e}): {data[:200]!r}") from e
    if not isinstance(body, dict):
        raise KubeConnectionError(f"{url}: expected a JSON object, found {data[:200]!r}")
    return body


def _status_object(data: bytes) -> JsonObject:
    try:
        body = json.loads(data)
    except ValueError:
        return {"message": data[:300].decode(errors="replace")}
    return body if isinstance(body, dict) else {}


def _status_error(status: JsonObject, http_status: int, rbac: RbacRequest, server: str, *,
                  source: str = "") -> KubeApiError:
    """An apiserver Status object (an error answer or an ERROR event) as a typed error."""
    code = status.get("code")
    code = code if isinstance(code, int) else http_status
    reason = str(status.get("reason") or "")
    said = str(status.get("message") or reason or "no message")
    call = f"{rbac.verb} {rbac.resource}" + (f" in {rbac.namespace}" if rbac.namespace else "")
    if code == 403:
        message = (f"{call}: forbidden (HTTP 403): RBAC does not allow {rbac.describe()}; "
                   f"grant that verb on that resource to this identity in its Role (the "
                   f"sidecar's is manifests/sidecar/rbac.yaml). The apiserver said: {said}")
    elif code == 401:
        message = (f"{call}: the apiserver at {server} rejected the credentials of "
                   f"{source or 'this client'} (HTTP 401: {said}); the token is expired, "
                   "revoked or for another cluster")
    elif code == 410:
        return KubeGone(f"{call}: 410 Gone: {said}; list again", status=code, reason=reason)
    else:
        message = f"{call}: the apiserver answered HTTP {code} {reason}: {said}"
    return KubeApiError(message, status=code, reason=reason)


def _connection_error(e: Exception, config: ClusterConfig) -> KubeConnectionError:
    host = urlsplit(config.server).netloc
    reason = _reason(e)
    if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
        return KubeConnectionError(
            f"TLS with the apiserver {host} failed: {reason}; check the cluster CA in "
            f"{config.source or 'the configuration'}")
    return KubeConnectionError(f"cannot reach the apiserver {host}: {reason}")


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)
    return str(inner) if inner is not None else f"{type(e).__name__}: {e}"
