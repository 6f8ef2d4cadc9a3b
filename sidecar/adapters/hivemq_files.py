"""HiveMQ extension folders on the shared volume: checks, plugin settings, restart-mode staging.

A plugin version is an unmodified HiveMQ extension folder (``<id>-<version>.jar``,
``hivemq-extension.xml``, ``conf/config.properties``), kept in ``<plugin_dir>/<name>/<hex>/``.
Its settings file is the extension's own ``conf/config.properties``: the sidecar writes the
desired settings there (Java properties), or puts the image's own file back when the desired
settings are empty (a copy is kept next to it at install).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.adapters.base import AdapterError
from sidecar.adapters.files import write_atomic

SETTINGS = Path("conf") / "config.properties"
IMAGE_SETTINGS = ".plugforge-image-config.properties"
MARKER = ".plugforge-digest"
DISABLED = "DISABLED"
OURS = "disabled by the plugforge sidecar\n"
_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_extension(folder: Path, name: str) -> None:
    """Refuse an image whose ``plugin/<name>/`` is not a HiveMQ extension folder."""
    jars = sorted(p.name for p in folder.glob("*.jar") if p.is_file())
    if not jars or not (folder / "hivemq-extension.xml").is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise AdapterError(
            f"plugin {name!r}: expected a HiveMQ extension folder in the image's plugin/{name}/ "
            f"(at least one .jar and hivemq-extension.xml), found {found}")


def keep_image_settings(folder: Path) -> None:
    image = folder / SETTINGS
    if image.is_file():
        shutil.copyfile(image, folder / IMAGE_SETTINGS)


def check_settings(name: str, settings: Mapping[str, str]) -> None:
    for key, value in settings.items():
        if not _KEY.match(key) or "\n" in value or "\r" in value:
            raise AdapterError(f"plugin {name!r} setting {key!r}: keys must be [A-Za-z0-9_.-]+ "
                               "and values one line (they go into conf/config.properties)")


def write_settings(folder: Path, settings: Mapping[str, str]) -> None:
    """The desired settings, or the image's own file when there are none."""
    target = folder / SETTINGS
    if settings:
        write_atomic(target, "# written by the plugforge sidecar\n" + "".join(
            f"{key}={_escape(value)}\n" for key, value in sorted(settings.items())))
    elif (folder / IMAGE_SETTINGS).is_file():
        write_atomic(target, (folder / IMAGE_SETTINGS).read_text())
    else:
        target.unlink(missing_ok=True)


def read_settings(folder: Path) -> dict[str, str]:
    """What ``write_settings`` wrote: {} while the image's own file is in place."""
    target = folder / SETTINGS
    try:
        text = target.read_text()
    except FileNotFoundError:
        return {}
    image = folder / IMAGE_SETTINGS
    if image.is_file() and image.read_text() == text:
        return {}
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, sep, value = line.partition("=")
            if sep:
                settings[key.strip()] = value.strip().replace("\\\\", "\\")
    return settings


def _escape(value: str) -> str:
    # Properties.load treats a backslash as an escape and drops leading blanks.
    escaped = value.replace("\\", "\\\\")
    return "\\" + escaped if escaped.startswith((" ", "\t")) else escaped


# --- restart mode: the extension folder HiveMQ loads at start ---------------------------------

@dataclass(frozen=True)
class Staged:
    """What the sidecar put into ``extensions/<name>/`` and whether HiveMQ runs it."""

    digest: str
    previous: str      # the digest the folder held before (still running until a restart)
    written: float     # when the folder was put in place
    disabled: bool     # a DISABLED marker is present
    disabled_by_us: bool
    disabled_at: float


def read_staged(folder: Path) -> Staged | None:
    marker = folder / MARKER
    try:
        fields = dict(line.partition("=")[::2] for line in marker.read_text().splitlines())
        written = marker.stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None
    disabled = folder / DISABLED
    try:
        by_us = disabled.read_text() == OURS
        disabled_at = disabled.stat().st_mtime
        present = True
    except FileNotFoundError:
        by_us, disabled_at, present = False, 0.0, False
    return Staged(fields.get("digest", ""), fields.get("previous", ""), written, present, by_us,
                  disabled_at)


def stage_extension(version_dir: Path, extensions_dir: Path, name: str, digest: str,
                    previous: str, settings: Mapping[str, str]) -> None:
    """Put a copy of ``version_dir`` at ``extensions/<name>/`` (HiveMQ never sees half a folder:
    the copy is made beside it, disabled, and swapped in with renames)."""
    dest = extensions_dir / name
    staging = extensions_dir / f".plugforge-staging-{name}"
    old = extensions_dir / f".plugforge-old-{name}"
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    # A HiveMQ starting right now skips a folder with DISABLED in it.
    (staging / DISABLED).write_text(OURS)
    shutil.copytree(version_dir, staging, dirs_exist_ok=True, symlinks=True)
    write_settings(staging, settings)
    write_atomic(staging / MARKER, f"digest={digest}\nprevious={previous}\n")
    if dest.exists():
        (dest / DISABLED).write_text(OURS)
        os.rename(dest, old)
    (staging / DISABLED).unlink()
    os.rename(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


def disable_extension(folder: Path) -> None:
    if folder.is_dir() and not (folder / DISABLED).exists():
        write_atomic(folder / DISABLED, OURS)
