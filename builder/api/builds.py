"""The BuildService's operations as plain functions over the Kubernetes adapter.

No gRPC here (``builder/api/grpc_service.py`` converts messages and maps the errors below):
``ApiInvalid`` → INVALID_ARGUMENT, ``NotFound`` → NOT_FOUND, ``Forbidden`` → PERMISSION_DENIED,
``KubeError`` → UNAVAILABLE.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from builder.errors import BuilderError, NotFound
from builder.kube import API_VERSION, PLUGIN_LABEL, Kube
from builder.resources import FINISHED, PHASES

Obj = dict[str, Any]
MAX_PAGE = 500
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class ApiInvalid(BuilderError):
    """A request the API refuses as given."""

    reason = "InvalidArgument"


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value or ""):
        raise ApiInvalid(f"{what}: expected a Kubernetes object name (lowercase letters, digits, "
                         f"'-' and '.'), found {value!r}")
    return value


def trigger(kube: Kube, namespace: str, plugin: str, commit: str, user: str) -> Obj:
    """Create a Pending PluginBuild (trigger Manual, ``user``) for ``plugin``; return it."""
    check_name("namespace", namespace)
    check_name("plugin", plugin)
    if commit and not _COMMIT.match(commit):
        raise ApiInvalid(f"commit: expected 7 to 40 lowercase hex digits, found {commit!r}")
    obj = kube.get_plugin(namespace, plugin)
    if obj is None:
        raise NotFound(f"BrokerPlugin {namespace}/{plugin} not found")
    meta = obj["metadata"]
    body: Obj = {
        "apiVersion": API_VERSION, "kind": "PluginBuild",
        "metadata": {
            "name": f"{plugin[:200]}-manual-{uuid.uuid4().hex[:8]}", "namespace": namespace,
            "labels": {PLUGIN_LABEL: plugin[:63].rstrip("-_.")},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "BrokerPlugin",
                                 "name": plugin, "uid": meta["uid"],
                                 "blockOwnerDeletion": False}],
        },
        "spec": {"plugin": plugin, "trigger": {"type": "Manual", "user": user[:253]},
                 **({"commit": commit} if commit else {})},
    }
    return kube.create_build(namespace, body)


def get(kube: Kube, namespace: str, name: str) -> Obj:
    check_name("namespace", namespace)
    check_name("build", name)
    obj = kube.get_build(namespace, name)
    if obj is None:
        raise NotFound(f"PluginBuild {namespace}/{name} not found")
    return obj


def phase_of(build: Obj) -> str:
    return str((build.get("status") or {}).get("phase") or "Pending")


def order_key(build: Obj) -> str:
    meta = build.get("metadata") or {}
    return f"{meta.get('creationTimestamp', '')}/{meta.get('name', '')}"


def paginate(builds: Sequence[Obj], page_size: int, page_token: str) -> tuple[list[Obj], str]:
    """Oldest first; the token is the position key of the last item returned, so builds
    created or deleted between pages neither repeat nor shift the next page."""
    if page_size < 0:
        raise ApiInvalid(f"page_size: expected 0 (default) to {MAX_PAGE}, found {page_size}")
    size = min(page_size or MAX_PAGE, MAX_PAGE)
    after = ""
    if page_token:
        try:
            after = base64.b64decode(page_token.encode(), altchars=b"-_",
                                     validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ApiInvalid("page_token: not a token this API returned; start again without "
                             "one") from None
    items = sorted(builds, key=order_key)
    remaining = [b for b in items if order_key(b) > after]
    page = remaining[:size]
    more = len(remaining) > size
    token = base64.urlsafe_b64encode(order_key(page[-1]).encode()).decode() if more else ""
    return page, token


def list_page(kube: Kube, namespace: str, plugin: str, phase: str, page_size: int,
              page_token: str) -> tuple[list[Obj], str]:
    check_name("namespace", namespace)
    if plugin:
        check_name("plugin", plugin)
    if phase and phase not in PHASES:
        raise ApiInvalid(f"phase: expected one of {', '.join(PHASES)}, found {phase!r}")
    builds = kube.list_builds(namespace, plugin or None)
    if phase:
        builds = [b for b in builds if phase_of(b) == phase]
    return paginate(builds, page_size, page_token)


def stream_log(log_path: Path, fetch: Callable[[], Obj], follow: bool,
               stop: threading.Event | None = None, poll_seconds: float = 0.2,
               ) -> Iterator[tuple[str, str]]:
    """``(text, phase)`` chunks of whole lines of the build's log file.

    Replays the file; with ``follow`` keeps reading while the build is Pending or Running and
    ends after the last lines written before it finished. A build whose log is not on this
    replica's disk (pruned, or built by another replica) replays its ``status.logTail``.
    """
    build = fetch()
    phase = phase_of(build)
    if not log_path.exists() and (phase in FINISHED or not follow):
        tail = str((build.get("status") or {}).get("logTail") or "")
        if tail:
            note = "(full log not on this builder; the last lines recorded on the build:)\n"
            yield note + tail.rstrip("\n") + "\n", phase
        return
    position = 0
    pending = ""
    last_check = 0.0
    while True:
        finished = phase in FINISHED
        text = _read_from(log_path, position)
        position += len(text.encode())
        pending += text
        if finished and pending and not pending.endswith("\n"):
            pending += "\n"
        lines, _, pending = pending.rpartition("\n")
        if lines:
            yield lines + "\n", phase
        if finished or not follow:
            if pending:
                yield pending + "\n", phase
            return
        if stop is not None and stop.wait(poll_seconds):
            return
        if stop is None:
            time.sleep(poll_seconds)
        if time.monotonic() - last_check >= poll_seconds:
            last_check = time.monotonic()
            phase = phase_of(fetch())


def _read_from(path: Path, position: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(position)
            data = f.read()
    except FileNotFoundError:
        return ""
    # Cut at the last complete UTF-8 sequence; the rest is read next time.
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode()
        except UnicodeDecodeError:
            continue
    return data.decode(errors="replace")
