"""Files adapters keep on the volume shared with the broker, written so a crash leaves no half.

Every write is a temp file or directory next to the target, renamed into place: the broker (or
the next sidecar start) sees the old content or the new, never a mix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sidecar.adapters.base import AdapterError

DIGEST_DIR = re.compile(r"[0-9a-f]{64}")
"""The name of a version directory: the image digest's hex."""


def digest_hex(name: str, digest: str) -> str:
    """``sha256:<hex>`` → ``<hex>``, the version directory of plugin ``name``."""
    hex_digest = digest.removeprefix("sha256:")
    if not DIGEST_DIR.fullmatch(hex_digest):
        raise AdapterError(f"plugin {name!r}: expected a sha256 digest, found {digest!r}")
    return hex_digest


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` (fsynced), readable by the broker's user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_version_dir(target: Path, digest: str, fill: Callable[[Path], object]) -> Path:
    """Create the content-addressed directory ``target`` with ``fill(staging)``.

    A digest's directory never changes once it exists, so an existing one is returned as is.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest.removeprefix('sha256:')[:12]}.",
                                    dir=target.parent))
    try:
        fill(staging)
        # mkdtemp makes it 0700; the broker container (another uid) must read it.
        os.chmod(staging, 0o755)  # noqa: S103
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_record(path: Path) -> dict[str, Any]:
    """The adapter's own record of what it enabled (``plugins``) and replaced (``originals``)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as e:
        raise AdapterError(f"cannot read the adapter's record {path}: {e}") from e
    if not isinstance(data, dict):
        raise AdapterError(f"the adapter's record {path} is not a JSON object")
    data.setdefault("plugins", {})
    data.setdefault("originals", {})
    return data


def save_record(path: Path, record: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(record, sort_keys=True, indent=1), mode=0o600)
