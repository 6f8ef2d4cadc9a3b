"""A content-addressed image cache: ``<cache>/images/sha256-<hex>/`` per manifest digest.

An entry directory appears only by an atomic rename after every blob was verified and the
layers were safely extracted, so its presence means "complete and verified"; a digest that
is present is never fetched again. Work in progress lives in ``<cache>/tmp/`` and is never
read; leftovers of crashed pulls older than ``STALE_AFTER_SECONDS`` are removed. An entry's
mtime is refreshed on every use, so ``prune_least_recent`` can bound the cache by recency.

Entry layout: ``rootfs/`` (the extracted image tree), ``manifest.json``, ``config.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from plugforge.oci.errors import ContentRefused, PullAbandoned
from plugforge.oci.extract import ExtractLimits, extract_layers, remove_tree
from plugforge.oci.manifest import ImageManifest, parse_manifest
from plugforge.oci.reference import DIGEST_RE, ImageRef, require_digest, validate_digest
from plugforge.oci.registry import MAX_BLOB_BYTES, RegistryClient

MAX_CONFIG_BYTES = 1024 * 1024
STALE_AFTER_SECONDS = 24 * 3600


def cached_image(cache_dir: Path, digest: str) -> Path | None:
    """The extracted tree for ``digest`` if it is in the cache, else None."""
    tree = _entry(cache_dir, digest) / "rootfs"
    return tree if tree.is_dir() else None


def pull_image(client: RegistryClient, ref: ImageRef | str, cache_dir: Path, *,
               limits: ExtractLimits | None = None,
               max_blob_bytes: int = MAX_BLOB_BYTES,
               abandon: Callable[[], bool] = lambda: False) -> Path:
    """The verified, extracted tree of the image pinned by ``ref`` (which needs a digest).
    ``abandon()`` True (asked per downloaded chunk and before extracting) raises
    ``PullAbandoned`` and leaves nothing behind."""
    pinned = require_digest(ref)
    digest = str(pinned.digest)
    present = cached_image(cache_dir, digest)
    if present is not None:
        _touch(present.parent)
        return present
    tmp_root = cache_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    prune_partial(cache_dir)
    work = Path(tempfile.mkdtemp(prefix="pull-", dir=tmp_root))
    try:
        manifest_bytes, manifest = client.pull_manifest(pinned)
        (work / "manifest.json").write_bytes(manifest_bytes)
        config_path = work / "config.json"
        client.fetch_blob(pinned.repository, manifest.config, config_path,
                          max_bytes=MAX_CONFIG_BYTES)
        diff_ids = _diff_ids(config_path.read_bytes())
        layer_paths = []
        for index, layer in enumerate(manifest.layers):
            path = work / f"layer-{index}"
            client.fetch_blob(pinned.repository, layer, path, max_bytes=max_blob_bytes,
                              abandon=abandon)
            layer_paths.append(path)
        if abandon():
            raise PullAbandoned(f"pull of {pinned} abandoned before extraction")
        extract_layers(layer_paths, work / "rootfs", limits=limits, diff_ids=diff_ids)
        for path in layer_paths:
            path.unlink()
        entry = _entry(cache_dir, digest)
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(work, entry)
        except OSError:
            if cached_image(cache_dir, digest) is None:
                raise
            # A concurrent pull of the same digest finished first; its entry is equivalent.
        _touch(entry)
    finally:
        remove_tree(work)
    return entry / "rootfs"


def prune_least_recent(cache_dir: Path, keep: int, max_bytes: int | None = None,
                       protect: frozenset[str] = frozenset()) -> list[Path]:
    """Remove least recently used entries until at most ``keep`` remain and (with
    ``max_bytes``) they hold at most that many bytes; returns what was removed. The most recent
    entry and the digests in ``protect`` always stay, even over the bounds.

    Safe while a caller holds an older tree only if it copied what it needed (the sidecar's
    adapters copy plugins into their own version directories before the next pull).
    """
    images = cache_dir / "images"
    if keep < 1:
        raise ValueError("keep at least one cache entry")
    try:
        entries = sorted(((e.stat().st_mtime_ns, e) for e in images.iterdir()), reverse=True)
    except FileNotFoundError:
        return []
    kept = 0
    total = 0
    doomed_entries = []
    for index, (_, entry) in enumerate(entries):
        size = tree_bytes(entry) if max_bytes is not None else 0
        protected = index == 0 or entry.name.replace("-", ":", 1) in protect
        if protected or (kept < keep and (max_bytes is None or total + size <= max_bytes)):
            kept += 1
            total += size
        else:
            doomed_entries.append(entry)
    removed = []
    for entry in doomed_entries:
        # Renamed out of images/ first: a concurrent reader never sees a half-removed tree.
        doomed = cache_dir / "tmp" / f"prune-{entry.name}-{os.getpid()}"
        doomed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(entry, doomed)
        except OSError:
            continue  # gone already, or in use by another process's rename
        remove_tree(doomed)
        removed.append(entry)
    return removed


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (symlinks not followed)."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _touch(entry: Path) -> None:
    with contextlib.suppress(OSError):  # recency is a hint; a read-only cache still serves
        os.utime(entry)


def cached_manifest(tree: Path) -> ImageManifest:
    """The manifest stored beside an extracted tree returned by ``pull_image``."""
    return parse_manifest((tree.parent / "manifest.json").read_bytes())


def _entry(cache_dir: Path, digest: str) -> Path:
    return cache_dir / "images" / validate_digest(digest).replace(":", "-")


def _diff_ids(config: bytes) -> list[str]:
    try:
        doc = json.loads(config)
        diff_ids = doc["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as e:
        raise ContentRefused(
            f"image config has no rootfs.diff_ids ({e!r}); expected an OCI image config"
        ) from e
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and DIGEST_RE.match(d) for d in diff_ids
    ):
        raise ContentRefused("image config rootfs.diff_ids must be sha256 digests")
    return diff_ids


def prune_partial(cache_dir: Path, now: float | None = None) -> None:
    """Remove work dirs of pulls that crashed more than ``STALE_AFTER_SECONDS`` ago."""
    cutoff = (time.time() if now is None else now) - STALE_AFTER_SECONDS
    tmp_root = cache_dir / "tmp"
    if not tmp_root.is_dir():
        return
    for child in tmp_root.iterdir():
        try:
            if child.lstat().st_mtime < cutoff:
                remove_tree(child)
        except OSError:
            pass  # another process removed or is using it; pruning is best effort
