"""HTTP: ``/healthz`` (the loop is alive), ``/readyz`` (fail closed), ``/metrics``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[], tuple[int, str, str]]  # status, content type, body


class HttpServer:
    def __init__(self, address: str, routes: dict[str, Route]) -> None:
        host, _, port = address.rpartition(":")
        routes_ = routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes_.get(self.path.split("?", 1)[0])
                if route is None:
                    status, ctype, body = 404, "text/plain", "not found\n"
                else:
                    status, ctype, body = route()
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass  # probes every few seconds would drown the decision log

        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="http")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
