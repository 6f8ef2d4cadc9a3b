"""The benchmarks' Go programs, each built once per source version into
``$PLUGFORGE_CACHE/go-bin`` with the ``go`` on PATH (bench/run puts one there: scripts/lib.sh
fetches a toolchain when the machine has none recent enough): the load generator
``bench/webhook_load``, and the peers kept unmodified under ``shared/peers/`` (configmap-reload).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from testbed.shared import SHARED

BENCH = Path(__file__).resolve().parent


def go_program(name: str) -> Path:
    """``bench/<name>`` built, or the cached build of the same sources."""
    return _build(BENCH / name, name)


def peer_program(name: str) -> Path:
    """``shared/peers/<name>`` built as it is (the folder is read-only; nothing is written
    into it: its go.sum pins the modules, and the binary goes to the cache)."""
    source = SHARED / "peers" / name
    if not (source / "go.mod").is_file():
        raise FileNotFoundError(f"{source} is missing: shared/ must sit beside the project root "
                                f"({SHARED.parent}), as it does in CI")
    return _build(source, name)


def _build(source: Path, name: str) -> Path:
    files = sorted(f for f in source.iterdir() if f.is_file())
    key = hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()
    cache = Path(os.environ.get("PLUGFORGE_CACHE") or Path.home() / ".cache" / "plugforge")
    binary = cache / "go-bin" / f"{name}-{key[:12]}"
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"{name} is a Go program: expected `go` (>= 1.24) on PATH, "
                           "found none; run bench/run, which installs one")
    print(f"building {name} from {source} (first run of this version only)", file=sys.stderr)
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_suffix(".tmp")
    built = subprocess.run([go, "build", "-trimpath", "-o", str(tmp), "."], cwd=source,
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"})
    if built.returncode != 0:
        raise RuntimeError(f"building {name} failed (go build exit {built.returncode}):"
                           f"\n{built.stderr.strip()}")
    tmp.replace(binary)
    return binary
