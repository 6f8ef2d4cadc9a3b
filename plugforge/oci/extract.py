"""Safe extraction of layer tars: refuse anything that could write outside the destination.

Layers are unpacked into a private temp directory next to ``dest`` and renamed into place
only when every entry passed, so a refused layer installs nothing. Refused (``UnsafeLayer``):

- absolute names, ``..`` components, whiteouts (``.wh.*``; plugforge images have one layer);
- device, FIFO and other special entries;
- symlinks with absolute targets, or whose target resolves outside the tree (checked with
  the real filesystem after all entries are written, so symlink chains cannot sneak out);
- hardlinks to anything but a regular file already extracted inside the tree;
- entries written *through* a symlink or a file (every parent must be a real directory);
- entries, totals or counts over ``ExtractLimits``; a layer whose uncompressed digest is
  not the config's ``diff_id``.

Set-id and sticky bits and group/other write bits are *stripped*, not refused: modes become
``mode & 0o755`` (directories also get ``u+rwx``). Ownership is not preserved: files belong
to the extracting user.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from plugforge.oci.errors import DigestMismatch, UnsafeLayer


@dataclass(frozen=True)
class ExtractLimits:
    max_entry_bytes: int = 256 * 1024 * 1024
    """Largest single file."""
    max_total_bytes: int = 1024 * 1024 * 1024
    """Sum of all file sizes over all layers."""
    max_entries: int = 20_000
    """Number of entries (files, dirs, links) over all layers."""


@dataclass
class _State:
    root: Path
    limits: ExtractLimits
    entries: int = 0
    total: int = 0
    dir_modes: dict[Path, int] = field(default_factory=dict)
    symlinks: list[tuple[str, Path]] = field(default_factory=list)


def extract_layers(layers: Sequence[Path], dest: Path, *, limits: ExtractLimits | None = None,
                   diff_ids: Sequence[str] | None = None) -> None:
    """Unpack ``layers`` (gzipped or plain tars, in order) into the new directory ``dest``."""
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"extraction destination {dest} already exists; it must be new")
    if diff_ids is not None and len(diff_ids) != len(layers):
        raise DigestMismatch(
            f"image config lists {len(diff_ids)} diff_ids for {len(layers)} layers"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    state = _State(tmp, limits or ExtractLimits())
    try:
        for index, layer in enumerate(layers):
            found = _extract_one(layer, state)
            if diff_ids is not None and found != diff_ids[index]:
                raise DigestMismatch(
                    f"layer {index} uncompresses to digest {found}, but the image config says "
                    f"{diff_ids[index]}; the image is inconsistent — rebuild and push it again"
                )
        _check_symlinks(state)
        for directory, mode in sorted(state.dir_modes.items(), reverse=True):
            directory.chmod(mode)
        tmp.chmod(0o755)
        os.rename(tmp, dest)
    except BaseException:
        remove_tree(tmp)
        raise


def remove_tree(path: Path) -> None:
    """Delete an extracted tree (directory modes always keep ``u+rwx``, so this works)."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _LimitedHashingReader:
    """The uncompressed stream: counts bytes (bounding decompression bombs) and hashes them."""

    def __init__(self, raw: _Readable, limit: int, layer: Path) -> None:
        self._raw, self._limit, self._layer = raw, limit, layer
        self.read_bytes = 0
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            raise UnsafeLayer(self._layer.name,
                              f"uncompresses to more than {self._limit} bytes")
        self.hasher.update(data)
        return data


def _extract_one(layer: Path, state: _State) -> str:
    limits = state.limits
    # Tar headers and padding need at most ~1 KiB per entry beyond the file contents.
    ceiling = limits.max_total_bytes + 1024 * (limits.max_entries + 64) + (1 << 20)
    with layer.open("rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        raw: _Readable = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
        reader = _LimitedHashingReader(raw, ceiling, layer)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    _apply(member, tar, state)
            while reader.read(1 << 20):
                pass  # the digest covers the end-of-archive padding too
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise UnsafeLayer(layer.name, f"not a readable tar archive ({e})") from e
    return "sha256:" + reader.hasher.hexdigest()


def _apply(member: tarfile.TarInfo, tar: tarfile.TarFile, state: _State) -> None:
    name = member.name
    relative = _safe_relative(name, name)
    state.entries += 1
    if state.entries > state.limits.max_entries:
        raise UnsafeLayer(name, f"more than {state.limits.max_entries} entries")
    if relative and relative.split("/")[-1].startswith(".wh."):
        raise UnsafeLayer(name, "whiteout entries are not supported (single-layer images only)")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeLayer(name, "device and FIFO entries are not allowed")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeLayer(name, f"unsupported entry type {member.type!r}")
    if not relative:
        if member.isdir():
            return  # "./": the root itself
        raise UnsafeLayer(name, "a non-directory entry cannot replace the root")
    target = _prepare_parents(state, relative, name)
    existing = _lstat(target)
    if member.isdir():
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            target.unlink()
            existing = None
        if existing is None:
            target.mkdir(0o700)
        state.dir_modes[target] = (member.mode & 0o755) | 0o700
        return
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise UnsafeLayer(name, "replaces a directory with a non-directory")
        target.unlink()
    if member.isreg():
        _write_file(member, tar, state, target)
    elif member.issym():
        if os.path.isabs(member.linkname):
            raise UnsafeLayer(name, f"symlink to absolute path {member.linkname!r}")
        lexical = os.path.normpath(os.path.join(os.path.dirname(relative), member.linkname))
        if lexical == ".." or lexical.startswith("../"):
            raise UnsafeLayer(name, f"symlink target {member.linkname!r} is outside the image")
        os.symlink(member.linkname, target)
        state.symlinks.append((name, target))
    else:
        source_relative = _safe_relative(member.linkname, name)
        source = _prepare_parents(state, source_relative, name, create=False)
        source_stat = _lstat(source)
        if source_stat is None or not stat.S_ISREG(source_stat.st_mode):
            raise UnsafeLayer(name, f"hardlink target {member.linkname!r} is not an extracted "
                                    "regular file")
        os.link(source, target, follow_symlinks=False)


def _write_file(member: tarfile.TarInfo, tar: tarfile.TarFile, state: _State,
                target: Path) -> None:
    limits = state.limits
    if member.size > limits.max_entry_bytes:
        raise UnsafeLayer(member.name, f"{member.size} bytes, over the {limits.max_entry_bytes} "
                                       "byte limit per file")
    state.total += member.size
    if state.total > limits.max_total_bytes:
        raise UnsafeLayer(member.name, f"total size passes the {limits.max_total_bytes} byte limit")
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeLayer(member.name, "file entry has no data")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
        os.fchmod(out.fileno(), member.mode & 0o755)


def _safe_relative(name: str, entry: str) -> str:
    """``name`` as a clean relative path ("" for the root); refuse absolute and ``..``."""
    if name.startswith("/"):
        raise UnsafeLayer(entry, f"absolute path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(entry, f"path {name!r} has a '..' component")
    return "/".join(parts)


def _prepare_parents(state: _State, relative: str, entry: str, create: bool = True) -> Path:
    """The path for ``relative``, with every parent a real directory (created if missing)."""
    current = state.root
    for part in relative.split("/")[:-1]:
        current = current / part
        st = _lstat(current)
        if st is None and create:
            current.mkdir(0o700)
            state.dir_modes.setdefault(current, 0o755)
        elif st is None or not stat.S_ISDIR(st.st_mode):
            raise UnsafeLayer(entry, f"parent {current.relative_to(state.root)} is not a real "
                                     "directory (writing through symlinks is refused)")
    return current / relative.split("/")[-1]


def _check_symlinks(state: _State) -> None:
    root = os.path.realpath(state.root)
    for entry, link in state.symlinks:
        resolved = os.path.realpath(link)
        if resolved != root and not resolved.startswith(root + os.sep):
            raise UnsafeLayer(entry, f"symlink resolves outside the image "
                                     f"(to {os.readlink(link)!r})")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None
