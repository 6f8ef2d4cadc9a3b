"""Parse a verified delivery into a typed push, a ping, or an ignored event with its reason.

Strict about what we use: wrong types or missing required fields raise ``PayloadError`` naming
the field, what was expected and what was found (the server answers 400). Lenient about what we
do not use: forges add fields to their payloads over time, so unknown keys are not an error.
The body may be JSON or (GitHub's other content type) ``application/x-www-form-urlencoded`` with
exactly one field, ``payload``.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from builder.webhooks.signatures import Forge, _get

ZERO_SHA = re.compile(r"^0+$")
_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")
# Delivery ids are GUIDs (GitHub, Gitea) or UUIDs (GitLab); the PluginBuild records up to 128.
_DELIVERY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# GitHub may truncate the commit list; below this many commits it has never been observed to,
# so a shorter list is trusted as the complete set of changed files.
GITHUB_COMMITS_TRUSTED = 20

JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded",)


class PayloadError(ValueError):
    """The delivery is not a well-formed event of its forge (HTTP 400, or 415 for the type)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PushEvent:
    forge: Forge
    event: str
    delivery: str
    repository_urls: tuple[str, ...]
    ref: str
    before: str
    after: str
    pusher: str
    compare_url: str
    # None when the forge did not send a complete list (truncated or absent): rebuild anyway.
    changed_files: frozenset[str] | None

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref.startswith("refs/tags/") else None


@dataclass(frozen=True)
class Ping:
    forge: Forge
    event: str
    delivery: str


@dataclass(frozen=True)
class Ignored:
    forge: Forge
    event: str
    delivery: str
    reason: str


Parsed = PushEvent | Ping | Ignored


# --- headers ----------------------------------------------------------------------------------

_EVENT_HEADERS = {
    Forge.GITHUB: ("X-GitHub-Event",),
    Forge.GITEA: ("X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event", "X-GitHub-Event"),
    Forge.GITLAB: ("X-Gitlab-Event",),
}
_DELIVERY_HEADERS = {
    Forge.GITHUB: ("X-GitHub-Delivery",),
    Forge.GITEA: ("X-Gitea-Delivery", "X-Forgejo-Delivery", "X-Gogs-Delivery",
                  "X-GitHub-Delivery"),
    # Idempotency-Key (GitLab >= 17.4) stays the same when GitLab retries; the event UUID is the
    # older header.
    Forge.GITLAB: ("Idempotency-Key", "X-Gitlab-Event-UUID"),
}


def _first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = _get(headers, name)
        if value is not None:
            return name, value.strip()
    return None


def delivery_id(forge: Forge, headers: Mapping[str, str]) -> str:
    """The delivery id ('' when the forge sent none); PayloadError when it is malformed."""
    found = _first_header(headers, _DELIVERY_HEADERS[forge])
    if found is None:
        return ""
    name, value = found
    if not _DELIVERY.match(value):
        raise PayloadError(f"header {name}: expected a delivery id of 1-128 letters, digits, "
                           f"'.', '_', ':' or '-', found {_preview(value)}")
    return value


def event_name(forge: Forge, headers: Mapping[str, str]) -> str:
    found = _first_header(headers, _EVENT_HEADERS[forge])
    if found is None or not found[1]:
        names = " or ".join(_EVENT_HEADERS[forge])
        raise PayloadError(f"missing event header: expected {names} (is this a {forge.value} "
                           "webhook pointed at the right endpoint?)")
    name, value = found
    if len(value) > 64 or not value.isprintable():
        raise PayloadError(f"header {name}: expected an event name of at most 64 printable "
                           f"characters, found {_preview(value)}")
    return value


# --- body -------------------------------------------------------------------------------------


def decode_body(content_type: str | None, body: bytes) -> Any:
    """The JSON document of a JSON or form-encoded delivery."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in JSON_TYPES:
        return _loads(body, "the body")
    if media in FORM_TYPES:
        try:
            text = body.decode("ascii")
            fields = urllib.parse.parse_qs(text, keep_blank_values=True, strict_parsing=True,
                                           max_num_fields=16, errors="strict")
        except (UnicodeDecodeError, ValueError) as e:
            raise PayloadError("form-encoded body: expected 'payload=<url-encoded JSON>', "
                               f"found an undecodable form ({e})") from e
        extra = sorted(set(fields) - {"payload"})
        if extra:
            raise PayloadError("form-encoded body: expected the single field 'payload', found "
                               f"unexpected field(s) {', '.join(map(_preview, extra[:5]))}")
        values = fields.get("payload", [])
        if len(values) != 1:
            raise PayloadError("form-encoded body: expected exactly one 'payload' field, found "
                               f"{len(values)}")
        return _loads(values[0].encode("utf-8"), "the 'payload' field")
    raise PayloadError(f"Content-Type: expected application/json or "
                       f"application/x-www-form-urlencoded, found {_preview(media or 'none')}",
                       status=415)


def _loads(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PayloadError(f"{where}: expected UTF-8 JSON, found invalid UTF-8 at byte "
                           f"{e.start}") from e
    except json.JSONDecodeError as e:
        raise PayloadError(f"{where}: malformed JSON at line {e.lineno} column {e.colno}: "
                           f"{e.msg}") from e
    except RecursionError as e:
        raise PayloadError(f"{where}: JSON nested too deeply") from e


# --- typed access -----------------------------------------------------------------------------


def _preview(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _get_field(obj: Mapping[str, Any], key: str, path: str, required: bool) -> Any:
    if key not in obj:
        if required:
            raise PayloadError(f"{path}{key}: required field is missing")
        return None
    return obj[key]


def _typed(value: Any, kind: type, expected: str, where: str, nullable: bool) -> Any:
    if value is None and nullable:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise PayloadError(f"{where}: expected {expected}, found {_type_name(value)}")
    return value


def _str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value: str = _typed(_get_field(obj, key, path, True), str, "a string", path + key, False)
    return value


def _opt_str(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value: str | None = _typed(_get_field(obj, key, path, False), str, "a string", path + key,
                               True)
    return value


def _obj(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    value: dict[str, Any] = _typed(_get_field(obj, key, path, True), dict, "an object",
                                   path + key, False)
    return value


def _opt_obj(obj: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value: dict[str, Any] | None = _typed(_get_field(obj, key, path, False), dict, "an object",
                                          path + key, True)
    return value


def _list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value: list[Any] = _typed(_get_field(obj, key, path, True), list, "an array", path + key,
                              False)
    return value


def _opt_list(obj: Mapping[str, Any], key: str, path: str) -> list[Any] | None:
    value: list[Any] | None = _typed(_get_field(obj, key, path, False), list, "an array",
                                     path + key, True)
    return value


def _sha(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = _str(obj, key, path)
    if not _SHA1.match(value):
        raise PayloadError(f"{path}{key}: expected a 40-character hex commit id, found "
                           f"{_preview(value)}")
    return value.lower()


def _root(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise PayloadError(f"payload: expected a JSON object, found {_type_name(doc)}")
    return doc


def _changed_files(commits: list[Any], path: str) -> frozenset[str] | None:
    files: set[str] = set()
    complete = True
    for i, commit in enumerate(commits):
        where = f"{path}[{i}]"
        if not isinstance(commit, dict):
            raise PayloadError(f"{where}: expected an object, found {_type_name(commit)}")
        for key in ("added", "modified", "removed"):
            entries = _opt_list(commit, key, f"{where}.")
            if entries is None:
                complete = False  # older Gitea versions leave the lists out
                continue
            for j, entry in enumerate(entries):
                if not isinstance(entry, str):
                    raise PayloadError(f"{where}.{key}[{j}]: expected a file path string, "
                                       f"found {_type_name(entry)}")
                files.add(entry)
    return frozenset(files) if complete else None


def _urls(obj: Mapping[str, Any], keys: tuple[str, ...], path: str) -> tuple[str, ...]:
    urls = []
    for key in keys:
        value = _opt_str(obj, key, path)
        if value:
            urls.append(value)
    if not urls:
        raise PayloadError(f"{path.rstrip('.')}: expected at least one of "
                           f"{', '.join(keys)}, found none")
    return tuple(urls)


def _name(obj: Mapping[str, Any] | None, keys: tuple[str, ...], path: str) -> str:
    if obj is None:
        return ""
    for key in keys:
        value = _opt_str(obj, key, path)
        if value:
            return value[:256]
    return ""


def _ref_kind_reason(ref: str) -> str | None:
    if ref.startswith(("refs/heads/", "refs/tags/")) and len(ref) > len("refs/tags/"):
        return None
    return f"ref {_preview(ref)} is neither a branch (refs/heads/...) nor a tag (refs/tags/...)"


# --- per forge --------------------------------------------------------------------------------


def _github_like(forge: Forge, event: str, delivery: str, doc: dict[str, Any]) -> Parsed:
    """GitHub, and Gitea/Forgejo, whose push payload follows GitHub's shape."""
    ref = _str(doc, "ref", "")
    before = _sha(doc, "before", "")
    after = _sha(doc, "after", "")
    repo = _obj(doc, "repository", "")
    urls = _urls(repo, ("clone_url", "ssh_url", "html_url", "git_url", "url"), "repository.")
    commits = _list(doc, "commits", "")
    files = _changed_files(commits, "commits")
    deleted = _typed(doc.get("deleted"), bool, "a boolean", "deleted", True) or False
    pusher = _opt_obj(doc, "pusher", "")
    sender = _opt_obj(doc, "sender", "")
    who = (_name(pusher, ("name", "login", "username"), "pusher.")
           or _name(sender, ("login", "username"), "sender."))
    compare = _opt_str(doc, "compare" if forge is Forge.GITHUB else "compare_url", "") or ""
    if deleted or ZERO_SHA.match(after):
        return Ignored(forge, event, delivery, f"{ref} was deleted: nothing to build")
    reason = _ref_kind_reason(ref)
    if reason:
        return Ignored(forge, event, delivery, reason)
    if files is not None and (not commits or (forge is Forge.GITHUB
                                              and len(commits) >= GITHUB_COMMITS_TRUSTED)):
        # No commit list (a new tag on an existing commit) or a possibly truncated one: the
        # files changed are unknown, so the path filter must not skip the build.
        files = None
    return PushEvent(forge, event, delivery, urls, ref, before, after, who, compare[:2048], files)


def _gitlab(event: str, delivery: str, doc: dict[str, Any]) -> Parsed:
    kind = _str(doc, "object_kind", "")
    if kind not in ("push", "tag_push"):
        return Ignored(Forge.GITLAB, event, delivery,
                       f"object_kind {_preview(kind)} is not a push")
    ref = _str(doc, "ref", "")
    before = _sha(doc, "before", "")
    after = _sha(doc, "after", "")
    project = _obj(doc, "project", "")
    urls = _urls(project, ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url"),
                 "project.")
    commits = _list(doc, "commits", "")
    files = _changed_files(commits, "commits")
    total = _typed(doc.get("total_commits_count"), int, "an integer", "total_commits_count",
                   True)
    total = len(commits) if total is None else total
    who = _name(doc, ("user_username", "user_name"), "")
    if ZERO_SHA.match(after):
        return Ignored(Forge.GITLAB, event, delivery, f"{ref} was deleted: nothing to build")
    reason = _ref_kind_reason(ref)
    if reason:
        return Ignored(Forge.GITLAB, event, delivery, reason)
    if not commits or total > len(commits):
        files = None  # GitLab lists at most 20 commits
    web = _opt_str(project, "web_url", "project.")
    compare = f"{web.rstrip('/')}/-/compare/{before}...{after}" if web else ""
    return PushEvent(Forge.GITLAB, event, delivery, urls, ref, before, after, who,
                     compare[:2048], files)


def parse(forge: Forge, headers: Mapping[str, str], body: bytes) -> Parsed:
    """Turn a delivery whose signature was already verified into an event."""
    event = event_name(forge, headers)
    delivery = delivery_id(forge, headers)
    if forge is Forge.GITLAB:
        if event not in ("Push Hook", "Tag Push Hook", "System Hook"):
            return Ignored(forge, event, delivery, f"event {_preview(event)} is not a push")
        return _gitlab(event, delivery, _root(decode_body(_get(headers, "Content-Type"), body)))
    if event == "ping":
        return Ping(forge, event, delivery)
    if event != "push":
        return Ignored(forge, event, delivery, f"event {_preview(event)} is not a push")
    doc = _root(decode_body(_get(headers, "Content-Type"), body))
    return _github_like(forge, event, delivery, doc)
