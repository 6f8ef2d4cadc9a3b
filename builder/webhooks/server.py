"""The webhook HTTP endpoint: ``POST /webhooks/{github,gitea,gitlab}`` on its own port.

stdlib ``ThreadingHTTPServer``: no new dependency, and the work per request is short and
CPU-bound (one HMAC per distinct secret, a JSON parse, a dict lookup; the build itself is
asynchronous), so a thread per connection with socket timeouts is enough, and it fits a
builder whose other I/O (the kubernetes client) is synchronous too. The parts a thread
server lacks are added here: a cap on connections, a cap on body bytes held in memory at
once, and timeouts against slow senders.

Bodies: a ``Content-Length`` over the limit gets 413 before a byte of the body is read (also
in answer to ``Expect: 100-continue``); chunked bodies are counted while read and cut at the
limit; both end the connection, so an unread body is never parsed as a next request.
Client input never produces a 5xx; a 5xx means a bug or an unavailable apiserver.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from builder.webhooks.handler import Response, WebhookHandler
from builder.webhooks.signatures import Forge

log = logging.getLogger("plugforge.webhooks")

MAX_BODY = 25 * 1024 * 1024  # what GitHub caps payloads at
ROUTES = {f"/webhooks/{forge.value}": forge for forge in Forge}
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,8})(;[^\r\n]*)?\r?\n$")


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0
    max_body: int = MAX_BODY
    # Bytes of request bodies held in memory at once, across connections.
    memory_budget: int = 4 * MAX_BODY
    max_connections: int = 512
    # Seconds a connection may stay silent mid-request before it is dropped.
    read_timeout: float = 15.0
    # Seconds a request waits for memory budget before it gets 429.
    admission_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_body < 1:
            raise ValueError(f"webhook max_body: expected at least 1 byte, found {self.max_body}")
        if self.memory_budget < self.max_body:
            raise ValueError(f"webhook memory_budget ({self.memory_budget}) must be at least "
                             f"max_body ({self.max_body}), or no large delivery could be read")


class _Budget:
    """A counting budget of bytes; ``take`` waits up to a timeout."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._cond = threading.Condition()

    def take(self, amount: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._free >= amount, timeout) and self._take(
                amount)

    def _take(self, amount: int) -> bool:
        self._free -= amount
        return True

    def give(self, amount: int) -> None:
        with self._cond:
            self._free += amount
            self._cond.notify_all()


class _BodyRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WebhookHTTPServer
    server_version = "plugforge-webhooks"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.settings.read_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # --- routing ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        forge = ROUTES.get(self.path.split("?", 1)[0])
        if forge is None:
            self._reject(404, f"no webhook endpoint at this path; use one of "
                         f"{', '.join(sorted(ROUTES))}")
            return
        settings = self.server.settings
        reserve = self._reservation(settings)
        if reserve is None:
            return
        if not self.server.budget.take(reserve, settings.admission_timeout):
            self._reject(429, "too many deliveries in flight; retry shortly", close=True,
                         headers=(("Retry-After", "5"),))
            return
        try:
            try:
                body = self._read_body(settings.max_body)
            except _BodyRejected as e:
                self._reject(e.status, str(e), close=True)
                return
            except (TimeoutError, ConnectionError):
                self.close_connection = True
                return
            try:
                response = self.server.app.handle(forge, self._header_map(), body)
            except Exception:
                log.exception("webhook handler failed")
                response = Response(500, {"error": "internal error (see the builder log)"})
            self._send(response)
        finally:
            self.server.budget.give(reserve)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(Response(200, {"status": "ok"}))
        elif path == "/webhooks/stats":
            self._send(Response(200, self.server.stats()))
        else:
            self._reject(405 if path in ROUTES else 404, "webhooks are POST requests")

    def _not_allowed(self) -> None:
        self._reject(405, "method not allowed: webhooks are POST requests", close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _not_allowed

    def _header_map(self) -> dict[str, str]:
        """The first value of each header (a repeated signature header must not win twice)."""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            headers.setdefault(name, value)
        return headers

    # --- bodies -------------------------------------------------------------------------------

    def _content_length(self) -> int | None:
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return None
        if len(set(v.strip() for v in values)) != 1:
            raise _BodyRejected(400, "conflicting Content-Length headers")
        value = values[0].strip()
        if not value.isdigit() or len(value) > 18:
            raise _BodyRejected(400, f"Content-Length: expected a non-negative integer, found "
                                f"{value[:40]!r}")
        return int(value)

    def _reservation(self, settings: ServerSettings) -> int | None:
        """Bytes to reserve for this body, or None after answering (oversized or malformed)."""
        try:
            length = self._content_length()
            chunked = self._chunked()
        except _BodyRejected as e:
            self._reject(e.status, str(e), close=True)
            return None
        if chunked and length is not None:
            self._reject(400, "both Content-Length and Transfer-Encoding: send one of them",
                         close=True)
            return None
        if length is None and not chunked:
            self._reject(411, "a Content-Length (or chunked Transfer-Encoding) is required",
                         close=True)
            return None
        if length is not None and length > settings.max_body:
            self._too_large(settings.max_body)
            return None
        return settings.max_body if length is None else length

    def _chunked(self) -> bool:
        value = self.headers.get("Transfer-Encoding")
        if value is None:
            return False
        if value.strip().lower() != "chunked":
            raise _BodyRejected(400, f"Transfer-Encoding: only 'chunked' is supported, found "
                                f"{value[:40]!r}")
        return True

    def _too_large(self, limit: int) -> None:
        self._reject(413, f"body too large: the limit is {limit} bytes (GitHub's payload cap)",
                     close=True)

    def handle_expect_100(self) -> bool:
        # Answer an oversized announced body before the client sends it.
        try:
            length = self._content_length()
        except _BodyRejected:
            return super().handle_expect_100()  # do_POST reports it
        if length is not None and length > self.server.settings.max_body:
            self._too_large(self.server.settings.max_body)
            return False
        return super().handle_expect_100()

    def _read_body(self, limit: int) -> bytes:
        length = self._content_length()
        if length is not None:
            body = self.rfile.read(length)
            if len(body) != length:
                raise ConnectionError("client closed the connection mid-body")
            return body
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(256)
            match = _CHUNK_SIZE.match(line)
            if not match:
                if not line:
                    raise ConnectionError("client closed the connection mid-body")
                raise _BodyRejected(400, "malformed chunked body: bad chunk size line")
            size = int(match.group(1), 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise _BodyRejected(413, f"body too large: the limit is {limit} bytes "
                                    "(GitHub's payload cap)")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client closed the connection mid-body")
            parts.append(chunk)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BodyRejected(400, "malformed chunked body: chunk not followed by CRLF")
        for _ in range(64):  # trailers, ignored
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                break
        else:
            raise _BodyRejected(400, "malformed chunked body: too many trailer lines")
        return b"".join(parts)

    # --- responses ----------------------------------------------------------------------------

    def _reject(self, status: int, message: str, close: bool = False,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        if close:
            self.close_connection = True
        self._send(Response(status, {"error": message}, headers))

    def _send(self, response: Response) -> None:
        payload = json.dumps(response.body, sort_keys=True).encode() + b"\n"
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (TimeoutError, ConnectionError):
            self.close_connection = True


class WebhookHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many forges deliver at once after an outage; a deep accept queue keeps them waiting
    # instead of refused.
    request_queue_size = 256

    def __init__(self, app: WebhookHandler, settings: ServerSettings,
                 extra_stats: Any = None) -> None:
        self.app = app
        self.settings = settings
        self.budget = _Budget(settings.memory_budget)
        self._connections = threading.BoundedSemaphore(settings.max_connections)
        self._extra_stats = extra_stats
        super().__init__((settings.host, settings.port), _Handler)

    def stats(self) -> dict[str, Any]:
        snapshot = self.app.stats.snapshot()
        if self._extra_stats is not None:
            snapshot.update(self._extra_stats())
        return snapshot

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            # Over the connection cap: drop it rather than grow threads without bound.
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("webhook connection from %s failed", client_address[0])


class WebhookServer:
    """The endpoint running in a background thread."""

    def __init__(self, app: WebhookHandler, settings: ServerSettings | None = None,
                 extra_stats: Any = None) -> None:
        self.settings = settings or ServerSettings()
        self.httpd = WebhookHTTPServer(app, self.settings, extra_stats)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="webhooks",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
