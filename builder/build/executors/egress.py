"""Egress for builds that declare dependency caches: an allowlisting HTTPS (CONNECT) proxy that
listens *inside* the build's own network namespace.

A build container runs with ``--network=none``: loopback only, no route, no DNS. For a build
with caches the builder opens a listener on that namespace's loopback (``PROXY_URL``: a thread
enters the namespace with ``setns``, creates the socket and leaves; the socket stays there) and
serves it from the builder's own namespace. So the build reaches exactly one thing, this proxy,
and the proxy lets through only TLS tunnels to port 443 of the registries its caches need
(``REGISTRIES``), resolving the names itself. Everything else gets a 403 naming the host and
the reason, and a line in the build log. No bridge, gateway address or firewall rule exists
that a build could misuse, and the allowlist comes from the recipe's ``caches`` (a closed set
of names), so a recipe cannot widen it.

Entering another namespace needs CAP_SYS_ADMIN: the builder runs as root (rootful podman).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import re
import selectors
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.build.recipe_errors import ExecutorFailed

REGISTRIES: dict[str, tuple[str, ...]] = {
    # Maven 3's built-in central repository, and its older name some POMs still use.
    "maven": ("repo.maven.apache.org", "repo1.maven.org"),
    # rebar3: packages and the registry on repo.hex.pm, the Hex API on hex.pm, rebar3's own
    # builds (plugins, `rebar3 local upgrade`) on builds.hex.pm.
    "rebar3": ("repo.hex.pm", "hex.pm", "builds.hex.pm"),
}
PORT = 443
PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"

_HEAD_LIMIT = 8192
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^({_LABEL}\.)*{_LABEL}$")
_CLONE_NEWNET = 0x40000000
_LOGGED_LINES = 100  # per build: a build that loops on connections cannot flood its log
log = logging.getLogger(__name__)


def allowed_hosts(caches: Iterable[str]) -> frozenset[str]:
    """Every registry host the recipe's caches need (unknown cache names add none)."""
    return frozenset(host for cache in caches for host in REGISTRIES.get(cache, ()))


def proxy_env(caches: Sequence[str]) -> dict[str, str]:
    """The usual proxy variables (rebar3, curl, git read them) for a build with caches; Maven
    reads ``java_proxy_options()`` instead."""
    if not caches:
        return {}
    return {name: PROXY_URL for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}


def java_proxy_options() -> str:
    """``-D`` options pointing Java's HTTP(S) clients (Maven's transport) at the proxy."""
    return " ".join(f"-D{scheme}.{key}={value}" for scheme in ("https", "http")
                    for key, value in (("proxyHost", "127.0.0.1"), ("proxyPort", PROXY_PORT)))


@dataclass(frozen=True)
class Decision:
    target: str
    """What the build asked for (``host:port`` of a CONNECT, or the request line), printable."""
    host: str
    allowed: bool
    reason: str


def decide(head: bytes, allowed: frozenset[str]) -> Decision:
    """Judge a request's head (bytes up to the blank line). Pure."""
    line = head.split(b"\r\n", 1)[0].decode("ascii", errors="replace")
    shown = "".join(c if c.isprintable() else "?" for c in line)[:200]
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Decision(shown, "", False, "not an HTTP/1.x request")
    method, target, _ = parts
    if method != "CONNECT":
        return Decision(shown, "", False, "only HTTPS tunnels (CONNECT) to the dependency "
                                          "registries are allowed, not plain HTTP")
    host, colon, port = target.rpartition(":")
    host = host.lower()
    shown = "".join(c if c.isprintable() else "?" for c in target)[:200]
    if not colon or not port.isdigit() or not _HOST.match(host):
        return Decision(shown, "", False, "expected CONNECT <registry host name>:443 "
                                          "(names only: the proxy resolves them)")
    if host not in allowed:
        registries = ", ".join(sorted(allowed)) or "none"
        return Decision(shown, host, False, f"{host} is not a dependency registry of this "
                                            f"recipe's caches (allowed: {registries})")
    if int(port) != PORT:
        return Decision(shown, host, False, f"only port {PORT} is allowed")
    return Decision(shown, host, True, "dependency registry")


def usable_address(address: str) -> bool:
    """False for addresses that would reach this machine or its link, whatever DNS says."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """The host's addresses, by this machine's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Limits:
    """Per build."""

    connections: int = 16
    """Open tunnels per build at once; more are refused (503) until one closes."""
    idle_seconds: float = 60.0
    """A tunnel with no bytes either way for this long is closed (and a request head must
    arrive within it)."""
    connect_seconds: float = 15.0


DEFAULT_LIMITS = Limits()


def listen_in(netns: Path, port: int = PROXY_PORT) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` of the network namespace ``netns`` (e.g.
    ``/proc/<pid>/ns/net``). Only a throwaway thread changes namespace (setns is per thread)."""
    result: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if int(libc.setns(fd, _CLONE_NEWNET)) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            result.append(socket.create_server(("127.0.0.1", port), backlog=64))
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    thread = threading.Thread(target=enter, name="egress-setns")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise ExecutorFailed(
            f"cannot open the build's dependency proxy in its network namespace {netns}: "
            f"{result[0]} (entering a container's namespace needs root: run the builder as "
            f"root with rootful podman, or use --executor kubernetes)") from result[0]
    return result[0]


class BuildProxy:
    """One build's proxy: serves ``listener`` until ``close()``; logs to ``log_path``."""

    def __init__(self, build: str, listener: socket.socket, allowed: frozenset[str],
                 log_path: Path, limits: Limits = DEFAULT_LIMITS,
                 resolver: Resolver = resolve) -> None:
        self.build = build
        self._listener = listener
        self._allowed = allowed
        self._log_path = log_path
        self._limits = limits
        self._resolve = resolver
        self._slots = threading.BoundedSemaphore(limits.connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._lines = 0
        self.tunnels: list[str] = []
        """Every tunnel opened, as ``host:443``."""
        self.refused: list[str] = []
        """The first requests not served, as ``refused|failed <target>: <reason>``."""
        listener.settimeout(0.5)  # accept wakes to notice close()
        self._thread = threading.Thread(target=self._accept, name=f"egress-{build}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        _shut(self._listener)  # wakes the accept at once (Linux)
        self._thread.join()
        self._listener.close()
        with self._lock:
            for sock in self._open:
                _shut(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                # Read what it sent (briefly): closing with unread data would reset the
                # connection and lose the answer.
                conn.settimeout(0.5)
                with contextlib.suppress(OSError, ValueError):
                    _read_head(conn)
                self._refuse(conn, 503, "Service Unavailable", "?", "more than "
                             f"{self._limits.connections} connections at once")
                conn.close()
                continue
            conn.settimeout(self._limits.idle_seconds)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        self._track(conn)
        try:
            head, rest = _read_head(conn)
            decision = decide(head, self._allowed)
            if not decision.allowed:
                self._refuse(conn, 403, "Forbidden", decision.target, decision.reason)
                return
            connected = self._connect(decision.host)
            if isinstance(connected, str):
                self._refuse(conn, 502, "Bad Gateway", decision.target, connected)
                return
            upstream = connected
            self._track(upstream)
            address = upstream.getpeername()[0]
            with self._lock:
                self.tunnels.append(f"{decision.host}:{PORT}")
            self._note(f"[egress] tunnel to {decision.host}:{PORT} ({address})")
            log.debug("decision=egress-tunnel build=%s host=%s", self.build, decision.host)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            _relay(conn, upstream, self._limits.idle_seconds)
        except (OSError, ValueError) as e:
            log.debug("egress connection of build %s ended: %s", self.build, e)
        finally:
            self._slots.release()  # before closing: a client that sees EOF may come again
            for sock in (conn, upstream):
                if sock is not None:
                    self._untrack(sock)

    def _connect(self, host: str) -> socket.socket | str:
        """A connection to ``host``:443, or why there is none."""
        try:
            resolved = self._resolve(host, PORT)
        except OSError as e:
            return f"the builder cannot resolve {host}: {e}"
        addresses = [a for a in resolved if usable_address(a)]
        if not addresses:
            return f"{host} resolves to no usable address ({', '.join(resolved)})"
        errors = []
        for address in addresses:
            try:
                sock = socket.create_connection((address, PORT), self._limits.connect_seconds)
            except OSError as e:
                errors.append(f"{address}: {e}")
                continue
            sock.settimeout(self._limits.idle_seconds)
            return sock
        return f"cannot connect to {host}:{PORT} ({'; '.join(errors)})"

    def _refuse(self, conn: socket.socket, code: int, phrase: str, target: str,
                reason: str) -> None:
        verb = "failed" if code == 502 else "refused"
        text = f"plugforge egress: {verb} {target}: {reason}"
        with self._lock:
            if len(self.refused) < _LOGGED_LINES:
                self.refused.append(f"{verb} {target}: {reason}")
        if self._note(f"[egress] {verb} {target}: {reason}"):  # the same cap on both logs
            log.warning("decision=egress-%s build=%s target=%s reason=%s", verb, self.build,
                        target, reason)
        # The status line carries the reason too: Maven and rebar3 print only that line.
        body = (text + "\n").encode()
        status = f"HTTP/1.1 {code} {phrase} ({text})"[:400].encode("ascii", errors="replace")
        with contextlib.suppress(OSError):
            conn.sendall(status + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def _note(self, line: str) -> bool:
        """A line in the build log: the first ``_LOGGED_LINES``, then one saying that was all.
        False when this one is not written."""
        with self._lock:
            self._lines += 1
            if self._lines > _LOGGED_LINES + 1:
                return False
            if self._lines == _LOGGED_LINES + 1:
                line = "[egress] further connections are not logged"
            with open(self._log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            return self._lines <= _LOGGED_LINES

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        sock.close()


def _read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """The request head (up to the blank line) and whatever the client sent after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _HEAD_LIMIT:
            raise ValueError("request head too long")
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("closed before a full request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _relay(a: socket.socket, b: socket.socket, idle: float) -> None:
    """Copy bytes both ways until either side closes or nothing moves for ``idle`` seconds."""
    with selectors.DefaultSelector() as sel:
        for sock, other in ((a, b), (b, a)):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, (sock, other))
        while True:
            ready = sel.select(idle)
            if not ready:
                return  # idle
            for key, _ in ready:
                sock, target = key.data
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                target.setblocking(True)
                target.settimeout(idle)
                try:
                    target.sendall(data)
                finally:
                    target.setblocking(False)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
