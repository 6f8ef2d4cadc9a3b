"""The webhook HTTP endpoint: ``POST /webhooks/{github,gitea,gitlab}`` on its own port.

One asyncio event loop (stdlib, in a thread of its own) holds every connection
(``transport.py``: an ``asyncio.Protocol`` per connection); the handler (verification,
parsing, matching, offer: short CPU work, but a plugin-list refresh may wait on the apiserver)
runs in a small pre-started thread pool, so a slow apiserver never stalls the loop. Measured
under a burst of 200 deliveries (bench/webhooks.py, 5 interleaved runs): running it inline on
the loop would answer sooner (ack p99 36 ms instead of 42, p50 26 instead of 34: no thread
handoff), but only a provider that can tell its plugin list is cached could allow that.

Limits: a cap on open connections (over it, a new connection is closed at once), a budget of
body bytes held in memory at once (a delivery waits for it, then gets 429), and timeouts
against slow senders: a request head must arrive within ``read_timeout``, and a body may not
stall longer than that between reads. Heads are parsed strictly (http11.py).

Bodies: a ``Content-Length`` over the limit gets 413 before a byte of the body is read (also
in answer to ``Expect: 100-continue``); chunked bodies are counted while read and cut at the
limit; both end the connection, so an unread body is never parsed as a next request.
Client input never produces a 5xx; a 5xx means a bug or an unavailable apiserver.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from builder.webhooks.handler import Response, WebhookHandler
from builder.webhooks.http11 import HttpError, RequestHead
from builder.webhooks.signatures import Forge
from builder.webhooks.transport import Budget, Connection

log = logging.getLogger("plugforge.webhooks")

MAX_BODY = 25 * 1024 * 1024  # what GitHub caps payloads at
ROUTES = {f"/webhooks/{forge.value}": forge for forge in Forge}
# /webhooks/<forge>/<namespace>/<plugin>: one BrokerPlugin's receiver, checked against that
# plugin's secret only (one HMAC per request, whatever the number of secrets in the cluster).
_PLUGIN_PATH = re.compile(r"^(/webhooks/[a-z]+)/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)/"
                          r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$")


def plugin_route(path: str) -> tuple[str, str | None]:
    """(the forge's route, ``namespace/name`` of a per-plugin receiver path or None)."""
    match = _PLUGIN_PATH.match(path)
    return (match[1], f"{match[2]}/{match[4]}") if match else (path, None)
_NOT_ALLOWED = frozenset({"PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT"})


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0
    max_body: int = MAX_BODY
    # Bytes of request bodies held in memory at once, across connections.
    memory_budget: int = 4 * MAX_BODY
    max_connections: int = 512
    # Seconds a request head may take to arrive, and a body may stall between reads.
    read_timeout: float = 15.0
    # Seconds a request waits for memory budget before it gets 429.
    admission_timeout: float = 5.0
    # Threads running the handler (which may wait on the apiserver for the plugin list).
    handler_threads: int = 4

    def __post_init__(self) -> None:
        if self.max_body < 1:
            raise ValueError(f"webhook max_body: expected at least 1 byte, found {self.max_body}")
        if self.memory_budget < self.max_body:
            raise ValueError(f"webhook memory_budget ({self.memory_budget}) must be at least "
                             f"max_body ({self.max_body}), or no large delivery could be read")
        if self.max_connections < 1 or self.handler_threads < 1:
            raise ValueError(f"webhook max_connections ({self.max_connections}) and "
                             f"handler_threads ({self.handler_threads}) must be at least 1")


class WebhookServer:
    """The endpoint: an event loop in a background thread, the handler in a thread pool."""

    def __init__(self, app: WebhookHandler, settings: ServerSettings | None = None,
                 extra_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.app = app
        self.settings = settings or ServerSettings()
        self._extra_stats = extra_stats
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        # Bound here, so a busy port fails the caller and the port is known before start().
        # A deep accept queue keeps a burst of forges (after an outage) waiting, not refused.
        self._backlog = max(256, self.settings.max_connections)
        self._socket = socket.create_server((self.settings.host, self.settings.port),
                                            family=family, backlog=self._backlog)
        self.pool = ThreadPoolExecutor(self.settings.handler_threads,
                                       thread_name_prefix="webhook-handler")
        self.budget = Budget(self.settings.memory_budget)
        self.connections: set[Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        snapshot = self.app.stats.snapshot()
        if self._extra_stats is not None:
            snapshot.update(self._extra_stats())
        return snapshot

    # --- requests (called by transport.Connection on the loop) ------------------------------

    def route(self, head: RequestHead) -> Response | Forge:
        path = head.path
        if head.method == "POST":
            forge = ROUTES.get(plugin_route(path)[0])
            if forge is None:
                raise HttpError(404, f"no webhook endpoint at this path; use one of "
                                f"{', '.join(sorted(ROUTES))}, optionally followed by "
                                "/<namespace>/<BrokerPlugin>")
            return forge
        if head.method == "GET":
            if path == "/healthz":
                return Response(200, {"status": "ok"})
            if path == "/webhooks/stats":
                return Response(200, self.stats())
            return Response(405 if path in ROUTES else 404,
                            {"error": "webhooks are POST requests"})
        if head.method in _NOT_ALLOWED:
            raise HttpError(405, "method not allowed: webhooks are POST requests")
        raise HttpError(501, f"method {head.method[:20]!r} not implemented: webhooks are POST "
                        "requests")

    def deliver(self, forge: Forge, head: RequestHead, body: bytes
                ) -> Response | Future[Response]:
        return self.pool.submit(self._handle, forge, head.first_values(), body,
                                plugin_route(head.path)[1])

    def _handle(self, forge: Forge, headers: Mapping[str, str], body: bytes,
                plugin: str | None = None) -> Response:
        try:
            return self.app.handle(forge, headers, body, plugin)
        except Exception:
            log.exception("webhook handler failed")
            return Response(500, {"error": "internal error (see the builder log)"})

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> WebhookServer:
        # Start every handler thread now, not during the first burst.
        barrier = threading.Barrier(self.settings.handler_threads + 1)
        for _ in range(self.settings.handler_threads):
            self.pool.submit(barrier.wait, 10)
        barrier.wait(10)
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None:
            raise RuntimeError(f"the webhook endpoint failed to start: {self._failure}"
                               ) from self._failure
        return self

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout=10)
        self._socket.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to start(); the thread must not die silently
            self._failure = e
            log.exception("webhook endpoint failed")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await self._loop.create_server(lambda: Connection(self), sock=self._socket,
                                                backlog=self._backlog)
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for connection in list(self.connections):
            connection.abort()
        async with asyncio.timeout(5):
            await server.wait_closed()
