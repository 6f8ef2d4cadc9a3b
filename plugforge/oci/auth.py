"""Registry credentials (from a dockerconfigjson Secret) and ``WWW-Authenticate`` challenges."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from plugforge.oci.errors import PermanentRegistryError


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge; ``scheme`` is lowercase."""

    scheme: str
    params: dict[str, str]


def credentials_from_dockerconfigjson(data: bytes, registry: str) -> Credentials | None:
    """Credentials for ``registry`` (``host[:port]``) from a ``.dockerconfigjson``; None if absent.

    Keys may be written as ``host``, ``host:port`` or ``https://host/v1/``: only the host part
    is compared. Errors never quote the secret's content.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PermanentRegistryError(
            f"dockerconfigjson is not valid JSON (line {getattr(e, 'lineno', '?')}); expected "
            '{"auths": {"<host>": {"auth": "<base64 user:password>"}}}'
        ) from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise PermanentRegistryError(
            'dockerconfigjson has no "auths" object; expected '
            '{"auths": {"<host>": {"auth": "<base64 user:password>"}}}'
        )
    for key, entry in auths.items():
        if _host_of(str(key)) != registry.lower():
            continue
        if not isinstance(entry, dict):
            raise PermanentRegistryError(f"dockerconfigjson auths[{key!r}] must be an object")
        return _entry_credentials(str(key), entry)
    return None


def _entry_credentials(key: str, entry: dict[str, object]) -> Credentials:
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credentials(username, password)
    encoded = entry.get("auth")
    if not isinstance(encoded, str):
        raise PermanentRegistryError(
            f"dockerconfigjson auths[{key!r}] has neither 'auth' nor 'username'/'password'"
        )
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise PermanentRegistryError(
            f"dockerconfigjson auths[{key!r}].auth is not base64 of 'user:password'"
        ) from None
    user, colon, secret = decoded.partition(":")
    if not colon or not user:
        raise PermanentRegistryError(
            f"dockerconfigjson auths[{key!r}].auth decodes to no 'user:password' pair"
        )
    return Credentials(user, secret)


def _host_of(key: str) -> str:
    if "://" in key:
        return urlsplit(key).netloc.lower()
    return key.split("/", 1)[0].lower()


_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf'\s*({_TCHARS})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TCHARS}))\s*(?:,|$)')


def parse_www_authenticate(header: str) -> Challenge:
    """Parse e.g. ``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"``.

    Only the first challenge is read: registries send one.
    """
    match = re.match(rf"\s*({_TCHARS})(?:\s+|$)", header)
    if match is None:
        raise PermanentRegistryError(
            f"cannot parse WWW-Authenticate header {header!r}: expected '<scheme> key=value,...'"
        )
    params: dict[str, str] = {}
    position = match.end()
    while position < len(header):
        param = _PARAM_RE.match(header, position)
        if param is None:
            break  # a second challenge or trailing junk: the first one is complete
        quoted, bare = param.group(2), param.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[param.group(1).lower()] = value
        position = param.end()
    return Challenge(match.group(1).lower(), params)
