"""The sidecar's trust policy: which keys, and optionally which repositories, sources and refs.

A YAML (or JSON) file, mounted from a ConfigMap::

    apiVersion: plugforge.dev/v1
    kind: TrustPolicy
    keys:                       # any one of them verifies; two during a key rotation
    - name: plugforge-2026-12
      publicKey: |
        -----BEGIN PUBLIC KEY-----
        ...
      validUntil: "2027-06-30T00:00:00Z"   # optional: not trusted after this instant
    repositories: ["registry.example.com/plugins/*"]   # optional globs on registry/repository
    sources: ["https://git.example.com/team/*"]        # optional globs on provenance source URL
    refs: ["refs/heads/main", "refs/tags/v*"]          # optional globs on provenance ref
    requireProvenance: true     # default: true when sources or refs are set

Without a timestamp authority the signing time is unknown, so ``validUntil`` bounds when the
sidecar still trusts a key, not when an image was signed.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from plugforge.signing.errors import KeyFileError, VerificationFailed
from plugforge.signing.keys import PublicKey, load_public_keys

API_VERSION = "plugforge.dev/v1"
KIND = "TrustPolicy"
_FIELDS = {"apiVersion", "kind", "keys", "repositories", "sources", "refs", "requireProvenance"}
_KEY_FIELDS = {"name", "publicKey", "validUntil"}


@dataclass(frozen=True)
class TrustedKey:
    key: PublicKey
    valid_until: dt.datetime | None = None

    def trusted_at(self, now: dt.datetime) -> bool:
        return self.valid_until is None or now < self.valid_until


@dataclass(frozen=True)
class TrustPolicy:
    keys: tuple[TrustedKey, ...]
    repositories: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    require_provenance: bool = False
    fingerprint: str = ""
    """sha256 of the policy text: a verification remembered under it is still valid."""

    def keys_at(self, now: dt.datetime) -> list[PublicKey]:
        return [k.key for k in self.keys if k.trusted_at(now)]

    def allows_repository(self, name: str) -> bool:
        return not self.repositories or _matches(name, self.repositories)

    def allows_source(self, url: str, ref: str) -> bool:
        return (not self.sources or _matches(url, self.sources)) and \
            (not self.refs or _matches(ref, self.refs))


def _matches(value: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def policy_for_keys(keys: Sequence[PublicKey]) -> TrustPolicy:
    """A policy trusting ``keys`` and nothing else (the CLI's ``verify --key``)."""
    return TrustPolicy(tuple(TrustedKey(k) for k in keys),
                       fingerprint="keys:" + ",".join(k.key_id for k in keys))


def parse_policy(text: bytes, where: str = "trust policy") -> TrustPolicy:
    """``VerificationFailed('TrustPolicyInvalid', ...)`` names the bad field."""
    def bad(message: str) -> VerificationFailed:
        return VerificationFailed("TrustPolicyInvalid", f"{where}: {message}")

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise bad("expected a mapping with apiVersion, kind and keys")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise bad(f"unknown field(s) {sorted(unknown)}; expected some of {sorted(_FIELDS)}")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise bad(f"expected apiVersion {API_VERSION!r} and kind {KIND!r}, found "
                  f"{doc.get('apiVersion')!r} and {doc.get('kind')!r}")
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise bad("keys: expected a non-empty list of {name, publicKey[, validUntil]}")
    keys = [key for index, item in enumerate(raw_keys)
            for key in _parse_key(item, f"keys[{index}]", bad)]
    globs = {name: _strings(doc.get(name, []), name, bad)
             for name in ("repositories", "sources", "refs")}
    require = doc.get("requireProvenance", bool(globs["sources"] or globs["refs"]))
    if not isinstance(require, bool):
        raise bad(f"requireProvenance: expected true or false, found {require!r}")
    if not require and (globs["sources"] or globs["refs"]):
        raise bad("requireProvenance: false cannot be combined with sources or refs "
                  "(they are checked against the provenance)")
    return TrustPolicy(tuple(keys), globs["repositories"], globs["sources"], globs["refs"],
                       require, hashlib.sha256(text).hexdigest())


def _parse_key(item: Any, where: str, bad: Any) -> list[TrustedKey]:
    if not isinstance(item, dict) or "publicKey" not in item or set(item) - _KEY_FIELDS:
        raise bad(f"{where}: expected {{name, publicKey[, validUntil]}}, found "
                  f"{sorted(item) if isinstance(item, dict) else type(item).__name__}")
    name, pem = item.get("name", ""), item["publicKey"]
    if not isinstance(name, str) or not isinstance(pem, str):
        raise bad(f"{where}: name and publicKey must be strings")
    valid_until = item.get("validUntil")
    until: dt.datetime | None = None
    if valid_until is not None:
        try:
            until = valid_until if isinstance(valid_until, dt.datetime) else \
                dt.datetime.fromisoformat(str(valid_until).replace("Z", "+00:00"))
        except ValueError as e:
            raise bad(f"{where}.validUntil: expected an RFC 3339 time, found "
                      f"{valid_until!r}") from e
        if until.tzinfo is None:
            raise bad(f"{where}.validUntil: {valid_until!r} has no time zone; end it with Z")
    try:
        public = load_public_keys(pem.encode(), f"{where}.publicKey", name)
    except KeyFileError as e:
        raise bad(str(e)) from e
    return [TrustedKey(k, until) for k in public]


def _strings(value: Any, name: str, bad: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad(f"{name}: expected a list of non-empty strings (globs), found {value!r}")
    return tuple(value)


def render_policy(keys: Sequence[tuple[str, bytes]], *, sources: Sequence[str] = (),
                  refs: Sequence[str] = (), require_provenance: bool = True) -> str:
    """A policy document for ``(name, public PEM)`` pairs (``plugforge signing-keys``)."""
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION, "kind": KIND,
        "keys": [{"name": name, "publicKey": pem.decode()} for name, pem in keys],
        "requireProvenance": require_provenance}
    if sources:
        doc["sources"] = list(sources)
    if refs:
        doc["refs"] = list(refs)
    return yaml.safe_dump(doc, sort_keys=False)
