"""The builder's Prometheus metrics and the small HTTP server that exposes them.

``/metrics`` (text format) and ``/healthz`` on their own port (``--metrics-address``), apart from
the webhook and gRPC ports, so scraping never competes with deliveries.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from plugforge.prometheus import Histogram, metric


class BuildMetrics:
    """Build outcomes and durations; ``record`` is called once per finished build attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: Counter[tuple[str, str]] = Counter()
        self._cache_hits = 0
        self.duration = Histogram("plugforge_builder_build_duration_seconds",
                                  "Wall-clock time of a build attempt, fetch to push.",
                                  (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))

    def record(self, result: str, reason: str, seconds: float, cache_hit: bool = False) -> None:
        with self._lock:
            self._results[(result, reason)] += 1
            self._cache_hits += int(cache_hit)
        self.duration.observe(seconds)

    def render(self, leading: bool, queued: int) -> str:
        with self._lock:
            results: dict[tuple[tuple[str, str], ...], float] = {
                (("result", r), ("reason", why)): float(n)
                for (r, why), n in sorted(self._results.items())}
            hits = float(self._cache_hits)
        lines = metric("plugforge_builder_builds_total", "counter",
                       "Finished build attempts by result and reason.", results)
        lines += metric("plugforge_builder_cache_hits_total", "counter",
                        "Builds served from the content-key cache (compiler not run).",
                        {(): hits})
        lines += self.duration.render()
        lines += metric("plugforge_builder_leader", "gauge",
                        "1 while this replica holds the Lease and runs builds.",
                        {(): float(leading)})
        lines += metric("plugforge_builder_queue_depth", "gauge",
                        "Plugins waiting for a build worker.", {(): float(queued)})
        return "\n".join(lines) + "\n"


def serve_metrics(host: str, port: int, render: Callable[[], str]) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/healthz`` in a daemon thread; ``shutdown()`` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, kind = render().encode(), "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                body, kind = b"ok\n", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the decision log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
