"""HTTP to one registry: TLS, the auth handshake (basic or bearer token) and error mapping.

Status codes become typed errors here, so ``registry.py`` speaks only the distribution API.
Authorization headers are only ever sent to the registry host itself (and the bearer token
realm), never logged, and never quoted in error messages.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3

from plugforge.oci.auth import Challenge, Credentials, parse_www_authenticate
from plugforge.oci.errors import (
    ContentRefused,
    PermanentRegistryError,
    RegistryError,
    TransientRegistryError,
)

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """System roots plus the private CA (a private registry may use a public token realm).

    Shared while the bundle file is unchanged: building one costs ~20 ms (the system store is
    parsed), which every pull and every signature would pay for a fresh client.
    """
    if ca_bundle is None:
        return _context(None, 0, 0)
    try:
        st = ca_bundle.stat()
        return _context(str(ca_bundle), st.st_mtime_ns, st.st_size)
    except (OSError, ssl.SSLError) as e:
        raise PermanentRegistryError(
            f"cannot load CA bundle {ca_bundle}: {e}; expected a PEM certificate file"
        ) from e


@functools.lru_cache(maxsize=8)
def _context(ca_file: str | None, _mtime_ns: int, _size: int) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


class Transport:
    def __init__(self, registry: str, *, credentials: Credentials | None, ca_bundle: Path | None,
                 insecure_http: bool, timeout: float) -> None:
        self.registry = registry
        self.scheme = "http" if insecure_http else "https"
        self._credentials = credentials
        self._authorization: str | None = None
        context = tls_context(ca_bundle)
        self._pool = urllib3.PoolManager(
            # Signature and attestation tags are read at once: keep both connections.
            maxsize=2,
            ssl_context=context,
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            # No automatic retries: callers own the backoff policy. Redirects are followed;
            # urllib3 drops Authorization when a redirect leaves the host.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
        )

    def url(self, path_or_url: str) -> str:
        return urljoin(f"{self.scheme}://{self.registry}/", path_or_url)

    def close(self) -> None:
        self._pool.clear()

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scope: str,
        what: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        not_found_ok: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """Send one request, answering one auth challenge; map failures to typed errors.

        ``what`` describes the operation for error messages ("pull manifest team/x@sha256:...").
        With ``not_found_ok`` a 404 is returned instead of raised. The body is not read: use
        ``read_limited`` or stream it, then ``release``.
        """
        url = self.url(path_or_url)
        response = self._send(method, url, headers, body)
        if response.status == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            release(response)
            self._authenticate(challenge, scope, what)
            response = self._send(method, url, headers, body)
            if response.status == 401:
                release(response)
                who = f"user {self._credentials.username!r}" if self._credentials else "anonymous"
                raise PermanentRegistryError(
                    f"{what}: registry {self.registry} refused the credentials of {who} "
                    "(HTTP 401); check the username/password in the registry secret"
                )
        if response.status in ok or (not_found_ok and response.status == 404):
            return response
        detail = _error_detail(response)
        release(response)
        if response.status in _RETRYABLE_STATUS:
            raise TransientRegistryError(
                f"{what}: registry {self.registry} answered HTTP {response.status}{detail}; "
                "retry later"
            )
        if response.status == 403:
            raise PermanentRegistryError(
                f"{what}: registry {self.registry} denied access (HTTP 403){detail}; grant the "
                "account access to this repository"
            )
        raise PermanentRegistryError(
            f"{what}: registry {self.registry} answered HTTP {response.status}{detail}, "
            f"expected {' or '.join(map(str, ok))}"
        )

    def _send(self, method: str, url: str, headers: Mapping[str, str] | None,
              body: bytes | None) -> urllib3.BaseHTTPResponse:
        all_headers = {"User-Agent": "plugforge", **(headers or {})}
        if self._authorization and urlsplit(url).netloc == self.registry:
            all_headers["Authorization"] = self._authorization
        log.debug("%s %s", method, url)
        try:
            return self._pool.request(method, url, headers=all_headers, body=body,
                                      preload_content=False, redirect=True)
        except urllib3.exceptions.HTTPError as e:
            if _certificate_rejected(e):
                raise PermanentRegistryError(
                    f"TLS with {urlsplit(url).netloc} failed: {_reason(e)}; if the registry uses "
                    "a private CA, pass its certificate as the CA bundle"
                ) from e
            raise TransientRegistryError(
                f"cannot reach registry at {urlsplit(url).netloc}: {_reason(e)}; retry later"
            ) from e

    def _authenticate(self, header: str, scope: str, what: str) -> None:
        if not header:
            raise PermanentRegistryError(
                f"{what}: registry {self.registry} answered 401 without a WWW-Authenticate header"
            )
        challenge = parse_www_authenticate(header)
        if challenge.scheme == "basic":
            if self._credentials is None:
                raise PermanentRegistryError(
                    f"{what}: registry {self.registry} requires credentials and none are "
                    "configured; provide a dockerconfigjson entry for this registry"
                )
            self._authorization = self._credentials.basic_header()
        elif challenge.scheme == "bearer":
            self._authorization = "Bearer " + self._fetch_token(challenge, scope, what)
        else:
            raise PermanentRegistryError(
                f"{what}: registry {self.registry} asks for auth scheme {challenge.scheme!r}; "
                "supported are Basic and Bearer"
            )

    def _fetch_token(self, challenge: Challenge, scope: str, what: str) -> str:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise PermanentRegistryError(
                f"{what}: bearer challenge from {self.registry} has no usable realm URL "
                f"({realm!r})"
            )
        if parts.scheme == "http" and self.scheme != "http":
            raise PermanentRegistryError(
                f"{what}: token realm {realm} is plain HTTP; refusing to send credentials "
                "without TLS (opt in with insecure_http only for test registries)"
            )
        query = {k: v for k, v in (("service", challenge.params.get("service")),
                                   ("scope", challenge.params.get("scope", scope))) if v}
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        headers = {"User-Agent": "plugforge"}
        if self._credentials is not None:
            headers["Authorization"] = self._credentials.basic_header()
        try:
            response = self._pool.request("GET", url, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as e:
            raise TransientRegistryError(
                f"{what}: cannot reach token service {parts.netloc}: {_reason(e)}; retry later"
            ) from e
        if response.status in _RETRYABLE_STATUS:
            raise TransientRegistryError(
                f"{what}: token service {parts.netloc} answered HTTP {response.status}; retry later"
            )
        if response.status != 200:
            raise PermanentRegistryError(
                f"{what}: token service {parts.netloc} refused a token for scope "
                f"{query.get('scope')!r} (HTTP {response.status}); check the registry credentials"
            )
        try:
            doc = json.loads(response.data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise PermanentRegistryError(
                f"{what}: token service {parts.netloc} answered without a 'token' field"
            )
        return token


def release(response: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back; unread bodies are dropped with the connection, not read."""
    response.close()
    response.release_conn()


def read_limited(response: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes; releases the connection."""
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in response.stream(65536):
            total += len(chunk)
            if total > limit:
                raise ContentRefused(
                    f"{what}: response is larger than the {limit} byte limit; refusing it"
                )
            chunks.append(chunk)
    except urllib3.exceptions.HTTPError as e:
        raise TransientRegistryError(f"{what}: connection broke while reading: {_reason(e)}") from e
    finally:
        release(response)
    return b"".join(chunks)


def _error_detail(response: urllib3.BaseHTTPResponse) -> str:
    """The registry's ``errors[0].code: message``, bounded, or empty."""
    try:
        body = response.read(8192)
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f" ({first.get('code')}: {str(first.get('message'))[:200]})"
    except (ValueError, AttributeError, IndexError, TypeError, RegistryError,
            urllib3.exceptions.HTTPError):
        return ""


def _certificate_rejected(error: BaseException) -> bool:
    """True when TLS failed on certificate verification (a setup problem, not a blip)."""
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__,
                        *current.args])
    return False


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error)
