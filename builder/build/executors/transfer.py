"""One-time URLs through which a build pod fetches its source and returns its result.

A build pod holds no credential. The builder serves the workspace as a tarball on one URL and
takes the result tarball on another; each URL carries a random token that works once, for one
direction, until a deadline, and the builder made it (nothing in it comes from the plugin).
Uploads are base64: busybox wget, the pod's only HTTP client, sends ``strlen`` of the body as
its Content-Length, so a raw tarball (full of NULs) would be cut at its first zero byte.
Tokens are never logged: the server logs method and outcome only. Uploads past ``max_bytes``
are refused before they are read. The result is extracted by ``extract_result``, which refuses
path escapes, links through links, devices and oversized trees (symlinks themselves are kept:
``artifacts.collect`` judges where they point).

Dependency caches ride along: ``pack_workspace`` puts the tenant's caches under ``cache/<name>/``
of the source tarball, and ``merge_cache`` adds what a build returned to them (see there for what
a build can and cannot do to its tenant's cache).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

from builder.build.recipe_errors import ArtifactError

log = logging.getLogger(__name__)

PATH_PREFIX = "/v1/transfer/"
MAX_MEMBERS = 200_000


@dataclass
class Receipt:
    """What became of a one-time upload URL: set once, when the upload ended either way."""

    dest: Path
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    size: int = 0


@dataclass
class _Slot:
    method: str  # GET: serve ``path``; POST: write into ``receipt.dest``
    expires: float  # time.monotonic()
    path: Path | None = None
    receipt: Receipt | None = None


class TransferServer:
    """Plain HTTP on ``bind``; pods reach it as ``http://{advertise}:{port}``.

    Plain HTTP on purpose: the pod's fetcher is a static busybox whose TLS client does not
    verify certificates. The NetworkPolicy lets only build pods reach this port; a token is
    useless after its one use.
    """

    def __init__(self, bind: tuple[str, int], advertise: str, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 60  # seconds per socket read: a stalled peer does not hold a thread

            def do_GET(self) -> None:
                owner._get(self)

            def do_POST(self) -> None:
                owner._post(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the request line holds the token: never logged

        self._server = ThreadingHTTPServer(bind, Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        host = f"[{advertise}]" if ":" in advertise else advertise
        self.base_url = f"http://{host}:{self.port}{PATH_PREFIX}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="build-transfers", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def offer(self, path: Path, ttl: float) -> str:
        """A URL that serves ``path`` once, within ``ttl`` seconds."""
        return self._add(_Slot("GET", time.monotonic() + ttl, path=path))

    def expect(self, dest: Path, ttl: float) -> tuple[str, Receipt]:
        """A URL that accepts one upload (at most ``max_bytes``) into ``dest``."""
        receipt = Receipt(dest)
        return self._add(_Slot("POST", time.monotonic() + ttl, receipt=receipt)), receipt

    def revoke(self, url: str) -> None:
        """Forget a URL that was not used (the build ended another way)."""
        with self._lock:
            self._slots.pop(_key(url.rsplit("/", 1)[-1]), None)

    def _add(self, slot: _Slot) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            for key in [k for k, s in self._slots.items() if s.expires < now]:
                del self._slots[key]
            self._slots[_key(token)] = slot
        return self.base_url + token

    def _take(self, handler: BaseHTTPRequestHandler, method: str) -> _Slot | None:
        """The slot the request names, removed (single use), or None after a 404 reply."""
        token = handler.path[len(PATH_PREFIX):] if handler.path.startswith(PATH_PREFIX) else ""
        with self._lock:
            slot = self._slots.get(_key(token))
            if slot is not None and slot.method == method:
                del self._slots[_key(token)]
            else:
                slot = None
        if slot is None or slot.expires < time.monotonic():
            log.warning("build transfer: %s of an unknown, used or expired URL refused", method)
            handler.send_error(404, "no such transfer (unknown, already used or expired)")
            return None
        return slot

    def _get(self, handler: BaseHTTPRequestHandler) -> None:
        slot = self._take(handler, "GET")
        if slot is None or slot.path is None:
            return
        size = slot.path.stat().st_size
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-tar")
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        with slot.path.open("rb") as f:
            shutil.copyfileobj(f, handler.wfile, 1 << 20)
        log.info("build transfer: served the source tarball (%d bytes)", size)

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        slot = self._take(handler, "POST")
        if slot is None or slot.receipt is None:
            return
        receipt = slot.receipt
        status, message = 204, ""
        try:
            self._store(handler, receipt.dest)
            receipt.size = receipt.dest.stat().st_size
        except _Refused as e:
            status, message = e.status, e.message
            receipt.error = message
        except OSError as e:
            status, message = 400, f"the upload broke off: {e}"
            receipt.error = message
        # Done before the reply: the pod's exit (which the executor sees) follows the reply.
        receipt.done.set()
        log.info("build transfer: result upload %s (%d bytes)",
                 "refused" if receipt.error else "received", receipt.size)
        with contextlib.suppress(OSError):
            if status == 204:
                handler.send_response(204)
                handler.end_headers()
            else:
                handler.send_error(status, message)

    def _store(self, handler: BaseHTTPRequestHandler, dest: Path) -> None:
        try:
            length = int(handler.headers.get("Content-Length", ""))
        except ValueError:
            raise _Refused(411, "the upload has no Content-Length") from None
        if length < 0 or length > self.max_bytes * 4 // 3 + length // 76 + 4:
            raise _Refused(413, f"the result is {length} bytes of base64; at most "
                                f"{self.max_bytes} bytes of content are accepted")
        encoded = dest.with_name(dest.name + ".b64")
        try:
            _receive(handler, encoded, length)
            with encoded.open("rb") as src, dest.open("wb") as out:
                base64.decode(src, out)
        except binascii.Error as e:
            raise _Refused(400, f"the upload is not base64: {e}") from e
        finally:
            encoded.unlink(missing_ok=True)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _receive(handler: BaseHTTPRequestHandler, dest: Path, length: int) -> None:
    left = length
    with dest.open("wb") as f:
        while left > 0:
            chunk = handler.rfile.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"connection closed with {left} of {length} bytes missing")
            f.write(chunk)
            left -= len(chunk)


def _key(token: str) -> str:
    # Looked up by hash: the comparison never touches the token's own bytes.
    return hashlib.sha256(token.encode()).hexdigest()


def pack_workspace(workspace: Path, dest: Path,
                   caches: Mapping[str, Path | None] | None = None) -> None:
    """``workspace`` as ``src/`` of an uncompressed tarball (links stay links), plus the empty
    ``home/`` and ``tmp/`` the steps use and ``cache/<name>/`` per cache: the directory's
    contents, or empty for None; owners are not recorded, modification times are (the pod
    tells what a build added by them)."""

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def empty_dir(name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(workspace, arcname="src", filter=anonymous)
        for name in ("home", "tmp"):
            empty_dir(name)
        if caches:
            empty_dir("cache")
        for name, directory in sorted((caches or {}).items()):
            if directory is None:
                empty_dir(f"cache/{name}")
            else:
                tar.add(directory, arcname=f"cache/{name}", filter=anonymous)


def tree_size(directory: Path) -> int:
    """Bytes of the regular files under ``directory`` (0 if it does not exist)."""
    total = 0
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


@dataclass(frozen=True)
class CacheMerge:
    added: int
    """Files added to the tenant's caches."""
    kept: int
    """Files the build returned that the caches already had: left as they were."""


def merge_cache(tar_path: Path, caches: Mapping[str, Path], max_bytes: int) -> CacheMerge:
    """Add the files of a build's cache tarball (``<name>/<path>`` per cache) to ``caches``.

    What a build can do to its tenant's cache, through this function only and only after it
    succeeded: add files that are not there yet. What it cannot: change or remove a file that
    is there (an existing name is never overwritten: the link that adds a file fails if the
    name exists, so concurrent builds cannot race one in either); write outside the cache
    (the tarball is unpacked by ``extract_result``, with its checks, into a staging directory
    first); add a symlink, device, fifo or hard link to anything outside (refused, and then
    nothing of the tarball is added); add to a cache the recipe does not name; reach another
    tenant's or another toolchain's cache (``caches`` holds this build's only). It can fill
    its own cache with junk up to ``max_bytes`` per build, and a later build of the same
    tenant uses it: caches are per tenant because a tenant can only poison its own.
    """
    if not caches:
        return CacheMerge(0, 0)
    roots = dict(caches)
    # Beside the caches (one tenant, one toolchain): same filesystem, so adding is a link.
    staging = next(iter(roots.values())).parent / f".incoming-{secrets.token_hex(8)}"
    staging.mkdir(parents=True)
    try:
        extract_result(tar_path, staging, max_bytes)
        for parent, dirs, files in os.walk(staging):
            for name in [*dirs, *files]:
                path = Path(parent, name)
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    raise ArtifactError(f"the build's cache holds "
                                        f"{path.relative_to(staging)!s}, not a plain file or "
                                        "directory: caches take files only")
        for entry in staging.iterdir():
            if entry.name not in roots or not entry.is_dir():
                raise ArtifactError(f"the build returned {entry.name!r} as a cache; its recipe "
                                    f"names {', '.join(sorted(roots))}")
        added = kept = 0
        for name, directory in sorted(roots.items()):
            incoming = staging / name
            if not incoming.is_dir():
                continue
            directory.mkdir(parents=True, exist_ok=True)
            for parent, _dirs, files in os.walk(incoming):
                rel = Path(parent).relative_to(incoming)
                target_dir = _cache_subdir(directory, rel)
                for file in files:
                    try:
                        os.link(Path(parent, file), target_dir / file)
                        added += 1
                    except FileExistsError:
                        kept += 1
        return CacheMerge(added, kept)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cache_subdir(root: Path, rel: Path) -> Path:
    """``root/rel``, made if missing; refused if any part of it is not a real directory."""
    current = root
    for part in rel.parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir()
        if current.is_symlink() or not current.is_dir():
            raise ArtifactError(f"the cache has {current} as something other than a "
                                "directory; not adding below it")
    return current


def extract_result(tar_path: Path, dest: Path, max_bytes: int) -> list[str]:
    """Unpack the pod's result tarball into the empty directory ``dest``.

    Refused (``ArtifactError``): absolute names, ``..``, a member below a symlink, duplicates,
    devices, sparse files, more than ``MAX_MEMBERS`` entries or ``max_bytes`` of content.
    Hard links become copies of a file already unpacked. Returns notes on skipped fifos.
    """
    try:
        with tarfile.open(tar_path, "r:") as tar:
            return _extract(tar, dest.resolve(), max_bytes)
    except tarfile.TarError as e:
        raise ArtifactError(f"the build's result is not a readable tar archive: {e}") from e


def _extract(tar: tarfile.TarFile, root: Path, max_bytes: int) -> list[str]:
    notes: list[str] = []
    seen: dict[str, Path] = {}
    total = 0
    for count, member in enumerate(tar, 1):
        if count > MAX_MEMBERS:
            raise ArtifactError(f"the build's result has over {MAX_MEMBERS} entries")
        rel = _member_path(member.name)
        if rel is None:
            continue  # the archive's root "."
        target = _target(root, rel, member.name)
        if rel in seen or os.path.lexists(target):
            raise ArtifactError(f"the build's result names {member.name!r} twice")
        if member.isdir():
            target.mkdir(mode=0o755)
        elif member.issym():
            target.symlink_to(member.linkname)
        elif member.islnk():
            linked = seen.get(_member_path(member.linkname) or "")
            if linked is None or not linked.is_file() or linked.is_symlink():
                raise ArtifactError(f"hard link {member.name!r} -> {member.linkname!r} "
                                    "does not name a file earlier in the result")
            shutil.copyfile(linked, target)
            target.chmod(linked.stat().st_mode & 0o755)
        elif member.isfile() and not member.issparse():
            total += member.size
            if total > max_bytes:
                raise ArtifactError(f"the build's result unpacks to over {max_bytes} bytes")
            _write_file(tar, member, target)
        elif member.isfifo():
            notes.append(f"skipped fifo {member.name!r} in the build's result")
            continue
        else:
            raise ArtifactError(f"the build's result holds {member.name!r}, a "
                                f"{_kind(member)}: only files, directories and links are "
                                "accepted")
        seen[rel] = target
    return notes


def _member_path(name: str) -> str | None:
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or any("\0" in p for p in parts):
        raise ArtifactError(f"the build's result names {name!r}, outside its tree")
    return "/".join(parts) or None


def _target(root: Path, rel: str, shown: str) -> Path:
    target = root / rel
    # The parent must be a real directory of ours: a member below a symlink would write
    # wherever the link points.
    parent = target.parent
    if parent.resolve() != parent or not (parent == root or root in parent.parents):
        raise ArtifactError(f"the build's result places {shown!r} below a symlink")
    if not parent.is_dir():
        raise ArtifactError(f"the build's result places {shown!r} in a missing directory")
    return target


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        raise ArtifactError(f"cannot read {member.name!r} from the build's result")
    mode = 0o755 if member.mode & 0o111 else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with source, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "device file"
    if member.issparse():
        return "sparse file"
    return f"tar entry of type {member.type!r}"


def clear(directory: Path) -> None:
    """Empty ``directory`` (links are removed, never followed)."""
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
