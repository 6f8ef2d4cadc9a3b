"""A small real HTTP server on 127.0.0.1 whose answers come from a Python function.

For brokers that cannot run on these machines (VerneMQ, EMQX): the function replays recorded
responses or implements documented API shapes. The adapters under test speak real HTTP over a
real socket to it, so connection handling, headers, status codes and bodies are exercised as
they would be against the broker. Every request is logged in ``requests`` so a test can prove
which admin calls were (or were not) made.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass(frozen=True)
class Request:
    method: str
    path: str           # percent-decoded path without the query
    query: str          # the raw query string (still percent-encoded)
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def target(self) -> str:
        return self.path + (f"?{unquote(self.query)}" if self.query else "")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


class ReplayServer:
    """``with ReplayServer(handler) as server: server.url`` -> http://127.0.0.1:PORT."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def targets(self) -> list[str]:
        """``METHOD target`` of every request so far, in order."""
        with self._lock:
            return [f"{r.method} {r.target}" for r in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _record(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(request)
        return self.handler(request)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                request = Request(self.command, unquote(path), query,
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    response = server._record(request)
                except Exception as e:  # the test's handler is broken: say so loudly
                    response = Response(599, f"replay handler failed: {e!r}".encode())
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass  # requests are kept in ``server.requests`` instead

        return _Handler
