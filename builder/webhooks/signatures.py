"""Is a delivery authentic? One check per forge, all constant-time, none of them raising.

GitHub signs the raw body with HMAC-SHA256 (``X-Hub-Signature-256: sha256=<hex>``); Gitea and
Forgejo send the bare hex digest (``X-Gitea-Signature``, ``X-Forgejo-Signature``; recent versions
also the GitHub header); GitLab echoes the configured token (``X-Gitlab-Token``). A malformed or
missing header is simply "not verified": the caller answers 401 without saying why in detail,
so that nothing about the secret leaks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from enum import Enum


class Forge(Enum):
    GITHUB = "github"
    GITEA = "gitea"
    GITLAB = "gitlab"


# A hex SHA-256 is 64 characters; anything much longer is not a signature, and refusing it early
# keeps hostile headers from costing more than a length check.
_MAX_HEADER = 256


def hmac_hex(secret: bytes, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``body`` under ``secret`` (what a forge would send)."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def github_header(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for ``body``."""
    return "sha256=" + hmac_hex(secret, body)


def _get(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup over any mapping (http.server's is, a dict is not)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _hex_matches(given: str | None, expected_hex: str) -> bool:
    if given is None or len(given) > _MAX_HEADER:
        return False
    candidate = given.strip().lower()
    try:
        candidate.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(candidate.encode("ascii"), expected_hex.encode("ascii"))


def _github(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    header = _get(headers, "X-Hub-Signature-256")
    if header is None or len(header) > _MAX_HEADER:
        return False
    scheme, sep, digest = header.strip().partition("=")
    if not sep or scheme.lower() != "sha256":
        return False
    return _hex_matches(digest, hmac_hex(secret, body))


def _gitea(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    expected = hmac_hex(secret, body)
    for name in ("X-Gitea-Signature", "X-Forgejo-Signature"):
        given = _get(headers, name)
        if given is not None:
            return _hex_matches(given, expected)
    # Gitea >= 1.20 and Forgejo also send the GitHub-style header; accept it when it is the
    # only one present.
    return _github(headers, body, secret)


def _gitlab(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    given = _get(headers, "X-Gitlab-Token")
    if given is None or len(given) > 4096:
        return False
    try:
        given_bytes = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given_bytes, secret)


def verify(forge: Forge, headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """True if ``body`` with ``headers`` was sent by someone who knows ``secret``.

    An empty secret never verifies anything: an unconfigured Secret must not open the door.
    """
    if not secret:
        return False
    if forge is Forge.GITHUB:
        return _github(headers, body, secret)
    if forge is Forge.GITEA:
        return _gitea(headers, body, secret)
    return _gitlab(headers, body, secret)


def has_credentials(forge: Forge, headers: Mapping[str, str]) -> bool:
    """Whether the delivery carries any signature/token header at all (for the log line only)."""
    names = {
        Forge.GITHUB: ("X-Hub-Signature-256",),
        Forge.GITEA: ("X-Gitea-Signature", "X-Forgejo-Signature", "X-Hub-Signature-256"),
        Forge.GITLAB: ("X-Gitlab-Token",),
    }[forge]
    return any(_get(headers, n) is not None for n in names)
