"""Collect build outputs into the artifact dir without ever reading outside the source tree.

A build is untrusted: it can leave symlinks to ``/etc`` or to the runner's secrets in its
output. Every file is resolved and must lie inside the source dir; the copies are plain files
(no symlinks survive into the image).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from builder.build.recipe_errors import ArtifactError


def inside(root: Path, candidate: Path) -> bool:
    """True if ``candidate`` (already resolved) is ``root`` or below it."""
    return candidate == root or root in candidate.parents


def collect(source_root: Path, rel_path: str, artifact_root: Path, rel_to: str) -> list[Path]:
    """Copy ``rel_path`` (file, or a directory's contents) into ``artifact_root/rel_to``.

    Returns the destination files. Paths were checked for ``..`` when the recipe was loaded;
    this checks where they *resolve* to, which catches symlinks.
    """
    root = source_root.resolve()
    out_root = artifact_root.resolve()
    target = _resolve_inside(root, root / rel_path, rel_path)
    dest_dir = (out_root / rel_to).resolve()
    if not inside(out_root, dest_dir):
        raise ArtifactError(f"artifact destination {rel_to!r} resolves outside the artifact dir")
    if target.is_dir():
        return _copy_tree(root, target, dest_dir, rel_path, set())
    if not target.is_file():
        raise ArtifactError(f"artifact {rel_path!r} is neither a file nor a directory")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (root / rel_path).name
    shutil.copyfile(target, dest)
    _copy_mode(target, dest)
    return [dest]


def _resolve_inside(root: Path, path: Path, shown: str) -> Path:
    if not os.path.lexists(path):
        raise ArtifactError(
            f"artifact {shown!r} was not produced by the build (expected it at {path}); "
            "check the build log and the recipe's artifacts list")
    resolved = path.resolve()
    if not inside(root, resolved):
        raise ArtifactError(
            f"artifact {shown!r} resolves to {resolved}, outside the source tree; artifacts must "
            "be built inside the tree (symlinks pointing out of it are refused)")
    return resolved


def _copy_tree(root: Path, src: Path, dest: Path, shown: str, seen: set[Path]) -> list[Path]:
    if src in seen:
        raise ArtifactError(f"artifact {shown!r} contains a symlink loop at {src}")
    seen = seen | {src}
    dest.mkdir(parents=True, exist_ok=True)
    copied: list[Path] = []
    for entry in sorted(src.iterdir()):
        shown_entry = f"{shown}/{entry.name}"
        real = _resolve_inside(root, entry, shown_entry)
        if real.is_dir():
            copied += _copy_tree(root, real, dest / entry.name, shown_entry, seen)
        elif real.is_file():
            shutil.copyfile(real, dest / entry.name)
            _copy_mode(real, dest / entry.name)
            copied.append(dest / entry.name)
        # Sockets, fifos and devices are not plugin files: skip them silently.
    return copied


def _copy_mode(src: Path, dest: Path) -> None:
    executable = src.stat().st_mode & 0o111
    dest.chmod(0o755 if executable else 0o644)
