"""The webhook HTTP endpoint: ``POST /webhooks/{github,gitea,gitlab}`` on its own port.

One asyncio event loop (stdlib, in a thread of its own) holds every connection; the handler
(verification, parsing, matching, offer: short CPU work, but a plugin-list refresh may wait on
the apiserver) runs in a small pre-started thread pool, so a slow apiserver never stalls the
loop. Measured against the earlier thread-per-connection server under a burst of 200
concurrent deliveries (bench/webhooks.py): starting a thread and parsing headers with
``email`` per connection cost more than the handler itself.

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
import json
import logging
import re
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from builder.webhooks.handler import Response, WebhookHandler
from builder.webhooks.http11 import HeadError, RequestHead, parse_head, response_head
from builder.webhooks.signatures import Forge

log = logging.getLogger("plugforge.webhooks")

MAX_BODY = 25 * 1024 * 1024  # what GitHub caps payloads at
MAX_HEAD = 64 * 1024
ROUTES = {f"/webhooks/{forge.value}": forge for forge in Forge}
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})(;[^\r\n]*)?\r?\n")
_READ_SIZE = 256 * 1024
_LINGER_SECONDS = 2.0  # reading what a refused client still sends, so it sees our answer
_LINGER_BYTES = 1024 * 1024
_T = TypeVar("_T")
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


class _Budget:
    """A counting budget of bytes, used from the event loop only; ``take`` waits up to a
    timeout."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._cond = asyncio.Condition()

    async def take(self, amount: int, timeout: float) -> bool:
        if self._free >= amount:
            self._free -= amount
            return True
        try:
            async with asyncio.timeout(timeout), self._cond:
                await self._cond.wait_for(lambda: self._free >= amount)
        except TimeoutError:
            return False
        self._free -= amount
        return True

    async def give(self, amount: int) -> None:
        self._free += amount
        async with self._cond:
            self._cond.notify_all()


class _Refused(Exception):
    """Answer ``status`` with ``message`` and end the connection."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class _Gone(Exception):
    """The client went away or stalled: close without an answer."""


def _too_large(limit: int) -> _Refused:
    return _Refused(413, f"body too large: the limit is {limit} bytes (GitHub's payload cap)")


def _framing(head: RequestHead, limit: int) -> int | None:
    """The announced body length, or None for chunked; refuses what cannot be read safely."""
    lengths = {v.strip() for v in head.get_all("Content-Length")}
    encoding = head.get("Transfer-Encoding")
    if len(lengths) > 1:
        raise _Refused(400, "conflicting Content-Length headers")
    if encoding is not None:
        if encoding.strip().lower() != "chunked" or len(head.get_all("Transfer-Encoding")) > 1:
            raise _Refused(400, f"Transfer-Encoding: only 'chunked' is supported, found "
                           f"{encoding[:40]!r}")
        if lengths:
            raise _Refused(400, "both Content-Length and Transfer-Encoding: send one of them")
        return None
    if not lengths:
        raise _Refused(411, "a Content-Length (or chunked Transfer-Encoding) is required")
    value = lengths.pop()
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise _Refused(400, f"Content-Length: expected a non-negative integer, found "
                       f"{value[:40]!r}")
    if int(value) > limit:
        raise _too_large(limit)
    return int(value)


class _Connection:
    def __init__(self, server: WebhookServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer

    async def serve(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.settings.read_timeout):
                    raw = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return  # closed or silent between requests: nothing to answer
            except asyncio.LimitOverrunError:
                await self._refuse(_Refused(431, f"request head too large: the limit is "
                                                 f"{MAX_HEAD} bytes"))
                return
            try:
                head = parse_head(raw)
            except HeadError as e:
                await self._refuse(_Refused(e.status, str(e)))
                return
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %s", head.method, head.target, head.version)
            try:
                keep_alive = await self._respond(head)
            except _Refused as e:
                await self._refuse(e, head.method)
                return
            except _Gone:
                return
            if not keep_alive:
                return

    async def _respond(self, head: RequestHead) -> bool:
        """Answer one request; True if the connection may carry another."""
        path = head.path
        has_body = bool(head.get_all("Content-Length") or head.get_all("Transfer-Encoding"))
        if head.method == "POST":
            forge = ROUTES.get(path)
            if forge is None:
                raise _Refused(404, f"no webhook endpoint at this path; use one of "
                               f"{', '.join(sorted(ROUTES))}")
            return await self._post(head, forge)
        if head.method == "GET":
            if path == "/healthz":
                response = Response(200, {"status": "ok"})
            elif path == "/webhooks/stats":
                response = Response(200, self.server.stats())
            else:
                response = Response(405 if path in ROUTES else 404,
                                    {"error": "webhooks are POST requests"})
            # A GET with a body: its unread body must not be taken for the next request.
            await self._send(response, close=has_body or not head.keep_alive)
            return not has_body and head.keep_alive
        if head.method in _NOT_ALLOWED:
            raise _Refused(405, "method not allowed: webhooks are POST requests")
        raise _Refused(501, f"method {head.method[:20]!r} not implemented: webhooks are POST "
                       "requests")

    async def _post(self, head: RequestHead, forge: Forge) -> bool:
        settings = self.settings
        length = _framing(head, settings.max_body)
        reserve = settings.max_body if length is None else length
        budget = self.server.budget
        if not await budget.take(reserve, settings.admission_timeout):
            raise _Refused(429, "too many deliveries in flight; retry shortly",
                           (("Retry-After", "5"),))
        try:
            if head.expects_continue:
                self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if length is None:
                body = await self._read_chunked(settings.max_body)
            else:
                body = await self._read_exactly(length)
            loop = asyncio.get_running_loop()
            try:
                response = await loop.run_in_executor(
                    self.server.pool, self.server.app.handle, forge, head.first_values(), body)
            except Exception:
                log.exception("webhook handler failed")
                response = Response(500, {"error": "internal error (see the builder log)"})
        finally:
            await budget.give(reserve)
        await self._send(response, close=not head.keep_alive)
        return head.keep_alive

    # --- bodies -------------------------------------------------------------------------------

    async def _read(self, awaitable: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                return await awaitable
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as e:
            raise _Gone() from e
        except asyncio.LimitOverrunError as e:
            raise _Refused(400, "malformed chunked body: line too long") from e

    async def _read_exactly(self, length: int) -> bytes:
        parts: list[bytes] = []
        remaining = length
        while remaining:
            # Bounded reads, so a slow but steady large delivery is not cut by the timeout.
            part: bytes = await self._read(self.reader.read(min(remaining, _READ_SIZE)))
            if not part:
                raise _Gone()
            parts.append(part)
            remaining -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_chunked(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line: bytes = await self._read(self.reader.readuntil(b"\n"))
            match = _CHUNK_SIZE.fullmatch(line) if len(line) <= 256 else None
            if not match:
                raise _Refused(400, "malformed chunked body: bad chunk size line")
            size = int(match.group(1), 16)
            if size == 0:
                break
            total += size
            if total > limit:
                raise _too_large(limit)
            parts.append(await self._read_exactly(size))
            if await self._read(self.reader.readuntil(b"\n")) not in (b"\r\n", b"\n"):
                raise _Refused(400, "malformed chunked body: chunk not followed by CRLF")
        for _ in range(64):  # trailers, ignored
            line = await self._read(self.reader.readuntil(b"\n"))
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)
            if len(line) > 8192:
                break
        raise _Refused(400, "malformed chunked body: too many or too long trailer lines")

    # --- responses ----------------------------------------------------------------------------

    async def _send(self, response: Response, close: bool, method: str = "") -> None:
        payload = json.dumps(response.body, sort_keys=True).encode() + b"\n"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                   *response.headers]
        if close:
            headers.append(("Connection", "close"))
        self.writer.write(response_head(response.status, headers))
        if method != "HEAD":
            self.writer.write(payload)
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                await self.writer.drain()
        except (TimeoutError, ConnectionError) as e:
            raise _Gone() from e

    async def _refuse(self, refusal: _Refused, method: str = "") -> None:
        """Answer and end the connection. What the client still sends is read and dropped for
        a moment: closing with unread data resets the connection, and the client could lose
        the answer."""
        try:
            await self._send(Response(refusal.status, {"error": str(refusal)}, refusal.headers),
                             close=True, method=method)
            if self.writer.can_write_eof():
                self.writer.write_eof()
            discarded = 0
            async with asyncio.timeout(_LINGER_SECONDS):
                while discarded < _LINGER_BYTES:
                    data = await self.reader.read(_READ_SIZE)
                    if not data:
                        break
                    discarded += len(data)
        except (_Gone, TimeoutError, ConnectionError, OSError):
            pass


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
        self.budget = _Budget(self.settings.memory_budget)
        self._open = 0
        self._writers: set[asyncio.StreamWriter] = set()
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
        server = await asyncio.start_server(self._accept, sock=self._socket, limit=MAX_HEAD,
                                            backlog=self._backlog)
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        async with asyncio.timeout(5):
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.settings.max_connections:
            # Over the connection cap: drop it rather than hold state without bound.
            writer.transport.abort()
            return
        self._open += 1
        self._writers.add(writer)
        try:
            await _Connection(self, reader, writer).serve()
        except Exception:
            log.exception("webhook connection failed")
        finally:
            self._open -= 1
            self._writers.discard(writer)
            writer.close()
