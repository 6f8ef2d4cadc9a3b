"""scripts/lockfile.py: the lock's two parts, and the check scripts/test runs against pyproject."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfile", ROOT / "scripts" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lockfile = _load()

RUNTIME = """\
pyyaml==6.0.4 \\
    --hash=sha256:aa
    # via
    #   -c /tmp/x/all.txt
    #   plugforge (pyproject.toml)
"""
ALL = RUNTIME.replace("    #   -c /tmp/x/all.txt\n", "") + """\
ruff==0.17.6 \\
    --hash=sha256:bb
    # via plugforge (pyproject.toml)
"""


def test_merge_puts_the_runtime_first_and_drops_temp_paths() -> None:
    text = lockfile.merge(RUNTIME, ALL)
    runtime, dev = text.split(lockfile.DEV_MARKER)
    assert "pyyaml==6.0.4" in runtime and "ruff" not in runtime
    assert "ruff==0.17.6" in dev and "/tmp/" not in text
    assert lockfile.pins(text) == {"pyyaml": "6.0.4", "ruff": "0.17.6"}


def test_merge_refuses_resolutions_that_disagree() -> None:
    with pytest.raises(SystemExit, match="disagree on pyyaml"):
        lockfile.merge(RUNTIME, ALL.replace("6.0.4", "6.0.3"))


def test_check_names_each_unmet_requirement() -> None:
    pyproject = {"project": {"dependencies": ["PyYAML>=7", "paho-mqtt>=2"],
                             "optional-dependencies": {"dev": ["ruff>=0.6"]}}}
    assert lockfile.unmet(pyproject, lockfile.merge(RUNTIME, ALL)) == [
        "PyYAML==6.0.4 does not satisfy 'PyYAML>=7'", "paho-mqtt is not in the lock"]


def test_the_committed_lock_satisfies_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert lockfile.unmet(pyproject, (ROOT / "requirements.lock").read_text()) == []
