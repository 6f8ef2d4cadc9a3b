"""HTTP/1.1 message heads for the webhook endpoint: parse a request head, write a response head.

Pure functions over bytes, no sockets. Strict on purpose: the only clients are forges and
health probes, so anything a forge never sends (line folding, whitespace before a colon, bare
CR/LF or NUL in a value, HTTP/0.9, more than 100 header lines, a head over the size limit) is
refused with a 4xx instead of being interpreted, which also closes the usual request-smuggling
doors. Header values are ISO-8859-1 text, as ``http.client`` decodes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

MAX_HEADERS = 100
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")


class HeadError(Exception):
    """A request head that is refused; ``status`` is the 4xx/5xx to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}", "Server: plugforge-webhooks",
             f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
