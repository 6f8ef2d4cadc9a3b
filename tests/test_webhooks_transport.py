"""The webhook endpoint's HTTP/1.1 transport over raw sockets: keep-alive, pipelining, HEAD,
strict heads, timeouts, the connection cap, the memory budget, handler failures, shutdown.
(Deliveries and body limits are in test_webhooks_server.py; the pure cases of the head parser
and the chunked decoder are at the end of this module.)"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence

import pytest
from test_webhooks_server import PLUGINS, SECRET, Collector, StaticPlugins, a_push, raw
from webhooks_support import encode, github_headers, github_push

from builder.webhooks import service
from builder.webhooks.http11 import ChunkedBody, HeadError, HttpError, parse_head
from builder.webhooks.matching import PluginSource, SecretRef
from builder.webhooks.server import ServerSettings


@pytest.fixture(scope="module")
def hooks() -> Iterator[service.Webhooks]:
    running = service.start(StaticPlugins(PLUGINS, {"acme-hook": SECRET}), Collector(),
                            service.WebhookSettings(server=ServerSettings(
                                max_body=64 * 1024, memory_budget=64 * 1024 * 8,
                                read_timeout=0.5, max_connections=8), quiet_seconds=0.3))
    yield running
    running.stop()


class Responses:
    """Responses read one by one from a kept-alive connection (pipelined ones may arrive in
    one segment)."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.data = b""

    def next(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.data:
            chunk = self.s.recv(65536)
            assert chunk, f"connection closed mid-response: {self.data!r}"
            self.data += chunk
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(self.data) < length:
            self.data += self.s.recv(65536)
        body, self.data = self.data[:length], self.data[length:]
        return head, body


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_keep_alive_carries_several_requests(hooks: service.Webhooks) -> None:
    body = encode(github_push(a_push()))
    post = (b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, SECRET).items()).encode()
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        # Pipelined: both requests in one write; answered in order.
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post)
        responses = Responses(s)
        head, out = responses.next()
        assert head.startswith(b"HTTP/1.1 200") and json.loads(out) == {"status": "ok"}
        assert b"Connection: close" not in head
        head, out = responses.next()
        assert head.startswith(b"HTTP/1.1 202"), head
        assert json.loads(out)["status"] == "accepted"
        s.sendall(b"GET /webhooks/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, out = responses.next()
        assert responses.data == b"" and b"Connection: close" in head
        assert json.loads(out)["pushes"] >= 1
        assert closed(s)


def test_http_1_0_closes_unless_kept_alive(hooks: service.Webhooks) -> None:
    answer = raw(hooks, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        responses = Responses(s)
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        responses.next()
        s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, _ = responses.next()
        assert head.startswith(b"HTTP/1.1 200")


def test_head_and_other_methods_get_405_without_a_body(hooks: service.Webhooks) -> None:
    answer = raw(hooks, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 405") and b"Content-Length: " in head and body == b""
    answer = raw(hooks, b"BREW /webhooks/github HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 501") and b"not implemented" in answer


def test_a_get_with_a_body_closes_the_connection(hooks: service.Webhooks) -> None:
    # Else "GET /healthz" would be read as the start of the next request.
    answer = raw(hooks, b"GET /healthz HTTP/1.1\r\nContent-Length: 13\r\n\r\nGET /healthz ")
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


@pytest.mark.parametrize(("request_bytes", "status", "complaint"), [
    (b"GET /healthz\r\n\r\n", b"400", b"malformed request line"),
    (b"GET  /healthz HTTP/1.1\r\n\r\n", b"400", b"malformed request line"),
    (b"GET /healthz HTTP/2.0\r\n\r\n", b"505", b"not supported"),
    (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", b"400", b"malformed header line"),
    (b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", b"400", b"no line folding"),
    (b"GET /healthz HTTP/1.1\r\nX-A: a\rb\r\n\r\n", b"400", b"CR, LF and NUL"),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n", b"431", b"too many header"),
    (b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n", b"431", b"too large"),
])
def test_malformed_heads_are_refused(hooks: service.Webhooks, request_bytes: bytes,
                                     status: bytes, complaint: bytes) -> None:
    answer = raw(hooks, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert complaint in answer and b"Connection: close" in answer


def test_a_head_trickled_slowly_is_cut_at_the_read_timeout(hooks: service.Webhooks) -> None:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
                s.sendall(bytes([byte]))  # each byte well within the timeout; the head is not
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed(s)
    assert time.monotonic() - start < 3


def test_an_idle_kept_alive_connection_is_closed(hooks: service.Webhooks) -> None:
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        Responses(s).next()
        start = time.monotonic()
        assert closed(s)
        assert time.monotonic() - start < 3


def test_connections_over_the_cap_are_dropped_and_others_served(
        hooks: service.Webhooks) -> None:
    cap = hooks.server.settings.max_connections
    held = [socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5)
            for _ in range(cap)]
    try:
        for s in held:  # one byte each: the server has accepted them all
            s.sendall(b"G")
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as extra:
            assert closed(extra)
    finally:
        for s in held:
            s.close()
    time.sleep(0.1)
    assert raw(hooks, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200")


class BrokenPlugins:
    def plugins(self) -> Sequence[PluginSource]:
        raise RuntimeError("a bug in the provider")

    def secret(self, ref: SecretRef) -> bytes | None:
        return None


def test_a_failing_handler_is_a_500_and_the_server_stays_up() -> None:
    running = service.start(BrokenPlugins(), Collector(), service.WebhookSettings())
    try:
        body = encode(github_push(a_push()))
        head = "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, SECRET).items())
        request = (b"POST /webhooks/github HTTP/1.1\r\nConnection: close\r\n" + head.encode()
                   + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for _ in range(2):
            answer = raw(running, request)
            assert answer.startswith(b"HTTP/1.1 500") and b"internal error" in answer
        assert raw(running, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200")
    finally:
        running.stop()


class SlowPlugins(StaticPlugins):
    """A plugin list that takes a while, like a refresh from a slow apiserver."""

    def plugins(self) -> Sequence[PluginSource]:
        time.sleep(1.5)
        return super().plugins()


def test_a_slow_plugin_list_does_not_stall_other_connections() -> None:
    running = service.start(SlowPlugins(PLUGINS, {"acme-hook": SECRET}), Collector(),
                            service.WebhookSettings())
    try:
        body = encode(github_push(a_push()))
        head = "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, SECRET).items())
        waiting = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
        waiting.sendall(b"POST /webhooks/github HTTP/1.1\r\nConnection: close\r\n"
                        + head.encode() + b"Content-Length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)
        time.sleep(0.2)  # the delivery is in the handler now
        start = time.monotonic()
        assert raw(running, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200")
        assert time.monotonic() - start < 0.5, "the health check waited for the handler"
        with waiting:
            assert Responses(waiting).next()[0].startswith(b"HTTP/1.1 202")
    finally:
        running.stop()


def test_stop_ends_open_connections_promptly() -> None:
    running = service.start(StaticPlugins(PLUGINS, {}), Collector(), service.WebhookSettings())
    s = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # an unfinished head
        time.sleep(0.1)
        start = time.monotonic()
        running.stop()
        assert time.monotonic() - start < 3
        assert closed(s)
    finally:
        s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.server.port), timeout=1).close()


def signed_post(connection: str = "keep-alive") -> bytes:
    body = encode(github_push(a_push()))
    return (b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nConnection: " + connection.encode()
            + b"\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in github_headers(body, SECRET).items()).encode()
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_requests_pipelined_behind_a_delivery_wait_and_are_answered_in_order(
        hooks: service.Webhooks) -> None:
    # ~90 KB of requests arrive while the delivery is in the handler: more than the connection
    # buffers before it pauses reading; all are answered once it resumes.
    gets = 2000
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        s.sendall(signed_post() + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * gets
                  + b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
        responses = Responses(s)
        assert responses.next()[0].startswith(b"HTTP/1.1 202")
        for _ in range(gets + 1):
            head, out = responses.next()
            assert head.startswith(b"HTTP/1.1 200") and json.loads(out) == {"status": "ok"}
        assert responses.data == b"" and closed(s)


def test_a_body_trickled_steadily_is_read_but_a_stalled_one_is_cut(
        hooks: service.Webhooks) -> None:
    timeout = hooks.server.settings.read_timeout
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        s.sendall(b"POST /webhooks/github HTTP/1.1\r\nContent-Length: 6\r\n\r\n")
        for byte in b"{}    ":  # longer than the timeout in all, each gap well within it
            time.sleep(timeout / 2.5)
            s.sendall(bytes([byte]))
        assert Responses(s).next()[0].startswith(b"HTTP/1.1 401")  # read whole, then judged
    with socket.create_connection(("127.0.0.1", hooks.server.port), timeout=5) as s:
        s.sendall(b"POST /webhooks/github HTTP/1.1\r\nContent-Length: 6\r\n\r\n{")
        start = time.monotonic()
        assert closed(s)
        assert timeout * 0.8 < time.monotonic() - start < 3


def test_a_client_that_does_not_read_its_answers_is_dropped(hooks: service.Webhooks) -> None:
    # Pipelined requests whose answers fill the socket buffers: the server stops reading while
    # its answers wait, and gives up after the read timeout.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(0.5)
    s.connect(("127.0.0.1", hooks.server.port))
    deadline = time.monotonic() + 5
    with s:
        while True:
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n" * 2000)
            except (BrokenPipeError, ConnectionResetError):
                break
            except TimeoutError:
                pass  # every buffer is full: the server stopped reading
            assert time.monotonic() < deadline, "the server still holds the connection"


def test_a_delivery_waiting_for_memory_is_admitted_once_memory_frees() -> None:
    running = service.start(StaticPlugins(PLUGINS, {"acme-hook": SECRET}), Collector(),
                            service.WebhookSettings(server=ServerSettings(
                                max_body=64 * 1024, memory_budget=64 * 1024,
                                admission_timeout=5)))
    try:
        hog = socket.create_connection(("127.0.0.1", running.server.port), timeout=5)
        # Announces a body as large as the whole budget and never sends it.
        hog.sendall(b"POST /webhooks/github HTTP/1.1\r\nContent-Length: 65536\r\n\r\n")
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", running.server.port), timeout=5) as s:
            s.sendall(signed_post("close"))
            time.sleep(0.3)
            start = time.monotonic()
            hog.close()  # its reservation is returned, and the waiting delivery admitted
            assert Responses(s).next()[0].startswith(b"HTTP/1.1 202")
            assert time.monotonic() - start < 2
    finally:
        running.stop()


def test_parse_head_keeps_the_first_value_per_name_and_latin1_values() -> None:
    head = parse_head(b"POST /webhooks/github?x=1 HTTP/1.1\r\nX-Sig: a\r\nx-sig: b\r\n"
                      b"X-Sig: c\r\nX-Name:  caf\xe9 \r\n\r\n")
    assert (head.method, head.path, head.version) == ("POST", "/webhooks/github", "HTTP/1.1")
    assert head.first_values() == {"X-Sig": "a", "x-sig": "b", "X-Name": "café"}
    assert head.get("X-SIG") == "a" and head.get_all("x-sig") == ["a", "b", "c"]
    assert head.keep_alive and not head.expects_continue
    with pytest.raises(HeadError) as e:
        parse_head(b"POST / HTTP/1.1\r\nX-A: \x00\r\n\r\n")
    assert e.value.status == 400


def test_chunked_body_decodes_byte_by_byte_with_extensions_and_trailers() -> None:
    wire = b"4;name=x\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT"
    decoder, buf, fed = ChunkedBody(limit=100), bytearray(), 0
    body = None
    while body is None:
        buf.append(wire[fed])
        fed += 1
        body = decoder.feed(buf)
    assert body == b"Wikipedia in\r\n\r\nchunks." and wire[fed:] == b"NEXT" and not buf
    whole = bytearray(wire)
    assert ChunkedBody(limit=100).feed(whole) == body and whole == b"NEXT"


@pytest.mark.parametrize(("wire", "status", "complaint"), [
    (b"5\r\nhello\r\n5\r\nworld\r\n", 413, "body too large"),
    (b"zz\r\n", 400, "bad chunk size line"),
    (b"1" * 300, 400, "bad chunk size line"),
    (b"2\r\nhiX\r\n", 400, "not followed by CRLF"),
    (b"0\r\n" + b"X-T: 1\r\n" * 64, 400, "trailer lines"),
])
def test_chunked_body_limits(wire: bytes, status: int, complaint: str) -> None:
    with pytest.raises(HttpError) as e:
        ChunkedBody(limit=8).feed(bytearray(wire))
    assert e.value.status == status and complaint in str(e.value)
