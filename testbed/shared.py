"""Where ``shared/`` (material from outside the project, e.g. recorded broker responses) lives.

It sits beside the project root (``../shared``) on developer machines and in CI; a missing one
is reported with that fact rather than as a bare file-not-found deep in a test.
"""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_fixture(name: str) -> Path:
    """``shared/fixtures/<name>``, which must exist."""
    path = SHARED / "fixtures" / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is missing: shared/ must sit beside the project root "
            f"({SHARED.parent}), as it does in CI; clone the project next to it")
    return path
