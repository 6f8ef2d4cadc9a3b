"""HTTP/1.1 messages for the webhook endpoint: parse a request head, decide a body's framing,
decode a chunked body incrementally, write a response head.

Pure code over bytes, no sockets. Strict on purpose: the only clients are forges and
health probes, so anything a forge never sends (line folding, whitespace before a colon, bare
CR/LF or NUL in a value, HTTP/0.9, more than 100 header lines, a head over the size limit) is
refused with a 4xx instead of being interpreted, which also closes the usual request-smuggling
doors. Header values are ISO-8859-1 text, as ``http.client`` decodes them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

MAX_HEADERS = 100
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})(;[^\r\n]*)?\r?\n")
_MAX_CHUNK_LINE = 256
_MAX_TRAILER_LINE = 8192
_MAX_TRAILERS = 64
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")


class HttpError(Exception):
    """A request that is refused; ``status`` is the 4xx/5xx to answer with, then the connection
    ends (what is left of the request cannot be told apart from a next one)."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class HeadError(HttpError):
    """A malformed request head."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]

    def get(self, name: str) -> str | None:
        found = self.get_all(name)
        return found[0] if found else None

    def first_values(self) -> dict[str, str]:
        """The first value of each header name as sent (a repeated signature header must not
        win twice)."""
        out: dict[str, str] = {}
        for name, value in self.headers:
            out.setdefault(name, value)
        return out

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for v in self.get_all("Connection") for t in v.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def expects_continue(self) -> bool:
        return self.version == "HTTP/1.1" and any(
            v.strip().lower() == "100-continue" for v in self.get_all("Expect"))


def parse_head(head: bytes) -> RequestHead:
    """``head``: the bytes of a request up to and including the blank line (CRLF CRLF)."""
    lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    words = lines[0].split(b" ")
    if len(words) != 3 or not all(words):
        raise HeadError(400, f"malformed request line {lines[0][:80]!r}: expected "
                        "'METHOD /path HTTP/1.1'")
    method, target, version = words
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HeadError(400, f"malformed HTTP version {version[:20]!r}")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise HeadError(505, f"HTTP version {version.decode()} not supported: use HTTP/1.1")
    if not _TOKEN.fullmatch(method):
        raise HeadError(400, f"malformed method {method[:20]!r}")
    if not target.isascii() or any(c < 0x21 or c == 0x7F for c in target):
        raise HeadError(400, "malformed request target: expected printable ASCII")
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(431, f"too many header lines ({len(lines) - 1}): the limit is "
                        f"{MAX_HEADERS}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HeadError(400, f"malformed header line {line[:60]!r}: expected 'Name: value' "
                            "(no line folding, no space before the colon)")
        value = value.strip(b" \t")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HeadError(400, f"header {name.decode()}: CR, LF and NUL are not allowed in a "
                            "value")
        headers.append((name.decode("ascii"), value.decode("latin-1")))
    return RequestHead(method.decode("ascii"), target.decode("ascii"), version.decode("ascii"),
                       tuple(headers))


def too_large(limit: int) -> HttpError:
    return HttpError(413, f"body too large: the limit is {limit} bytes (GitHub's payload cap)")


def body_length(head: RequestHead, limit: int) -> int | None:
    """The announced body length, or None for a chunked body; refuses what cannot be read
    safely (conflicting or malformed framing, a length over ``limit``)."""
    lengths = {v.strip() for v in head.get_all("Content-Length")}
    encodings = head.get_all("Transfer-Encoding")
    if len(lengths) > 1:
        raise HttpError(400, "conflicting Content-Length headers")
    if encodings:
        if len(encodings) > 1 or encodings[0].strip().lower() != "chunked":
            raise HttpError(400, f"Transfer-Encoding: only 'chunked' is supported, found "
                            f"{encodings[0][:40]!r}")
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding: send one of them")
        return None
    if not lengths:
        raise HttpError(411, "a Content-Length (or chunked Transfer-Encoding) is required")
    value = lengths.pop()
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise HttpError(400, f"Content-Length: expected a non-negative integer, found "
                        f"{value[:40]!r}")
    if int(value) > limit:
        raise too_large(limit)
    return int(value)


class ChunkedBody:
    """Decodes a chunked body from the front of a buffer as bytes arrive; ``feed`` consumes
    what it can and returns the whole body once the last chunk and the trailers are in.
    Counted while decoded, so a body over ``limit`` is refused before it is held."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._total = 0
        self._remaining = 0  # of the current chunk's data
        self._after_data = False  # the CRLF after a chunk's data is due
        self._trailers: int | None = None  # trailer lines seen, once the last chunk came

    def feed(self, buf: bytearray) -> bytes | None:
        while True:
            if self._remaining:
                if not buf:
                    return None
                part = bytes(buf[:self._remaining])
                del buf[:len(part)]
                self._parts.append(part)
                self._remaining -= len(part)
                continue
            end = buf.find(b"\n")
            limit = _MAX_CHUNK_LINE if self._trailers is None else _MAX_TRAILER_LINE
            if end < 0 or end >= limit:
                if end >= limit or len(buf) >= limit:
                    raise HttpError(400, "malformed chunked body: "
                                    + ("bad chunk size line" if self._trailers is None
                                       else "too many or too long trailer lines"))
                return None
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            if self._after_data:
                if line not in (b"\r\n", b"\n"):
                    raise HttpError(400, "malformed chunked body: chunk not followed by CRLF")
                self._after_data = False
            elif self._trailers is not None:  # trailers: ignored
                if line in (b"\r\n", b"\n"):
                    return b"".join(self._parts)
                self._trailers += 1
                if self._trailers >= _MAX_TRAILERS:
                    raise HttpError(400, "malformed chunked body: too many or too long "
                                    "trailer lines")
            else:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise HttpError(400, "malformed chunked body: bad chunk size line")
                size = int(match.group(1), 16)
                if size == 0:
                    self._trailers = 0
                    continue
                self._total += size
                if self._total > self._limit:
                    raise too_large(self._limit)
                self._remaining = size
                self._after_data = True


_date: tuple[int, str] = (0, "")


def _http_date() -> str:
    # formatdate costs more than the rest of a response head; the header has 1 s resolution.
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True))
    return _date[1]


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}", "Server: plugforge-webhooks", f"Date: {_http_date()}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
