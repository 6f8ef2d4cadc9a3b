"""``plugforge new``: copy a template's starter into a fresh Git repository, named for the plugin.

Starter files use three placeholders, in contents and in paths: ``plugforge_starter``
(snake_case), ``plugforge-starter`` (kebab-case) and ``PlugforgeStarter`` (CamelCase).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

STARTER_DIR = "starter"
# Written into every new repo so `plugforge build --local DIR` knows which template to use.
PROJECT_FILE = "plugforge.yaml"

_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,40}$")
_PLACEHOLDERS = ("plugforge_starter", "plugforge-starter", "PlugforgeStarter")


class ScaffoldError(Exception):
    """The name, template or destination is unusable; nothing was created."""


@dataclass(frozen=True)
class Names:
    snake: str
    kebab: str
    camel: str


def plugin_names(name: str) -> Names:
    """The three spellings of ``name``; raises ``ScaffoldError`` if ``name`` is not valid."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"plugin name {name!r} is invalid: expected 2-41 characters of lowercase letters, "
            "digits, '-' or '_', starting with a letter (for example 'deny-test')")
    parts = re.split(r"[-_]", name)
    if any(not p for p in parts):
        raise ScaffoldError(f"plugin name {name!r} is invalid: '-'/'_' must separate words "
                            "(no leading, trailing or doubled separators)")
    return Names(snake="_".join(parts), kebab="-".join(parts),
                 camel="".join(p[:1].upper() + p[1:] for p in parts))


def substitute(text: str, names: Names) -> str:
    for placeholder, value in zip(_PLACEHOLDERS, (names.snake, names.kebab, names.camel),
                                  strict=True):
        text = text.replace(placeholder, value)
    return text


def scaffold(template: Path, template_name: str, broker: str, name: str, dest: Path) -> Path:
    """Create ``dest`` as a new Git repo (branch ``main``) holding the named starter; return it."""
    names = plugin_names(name)
    starter = template / STARTER_DIR
    if not starter.is_dir():
        raise ScaffoldError(f"template {template_name!r} has no {STARTER_DIR}/ directory "
                            f"(expected {starter})")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ScaffoldError(f"{dest} already exists and is not an empty directory; "
                            "choose another --dir or remove it")
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(starter.rglob("*")):
        rel = path.relative_to(starter)
        target = dest / substitute(rel.as_posix(), names)
        if path.is_symlink():
            raise ScaffoldError(f"starter file {path} is a symlink; templates hold plain files")
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        try:
            target.write_text(substitute(data.decode("utf-8"), names))
        except UnicodeDecodeError:
            target.write_bytes(data)  # binary files are copied as they are
        shutil.copymode(path, target)
    (dest / PROJECT_FILE).write_text(yaml.safe_dump(
        {"template": template_name, "broker": broker, "name": names.snake}, sort_keys=False))
    _git_init(dest, f"Scaffold {name} from {template_name}")
    return dest


def read_project_file(source: Path) -> dict[str, str]:
    """``plugforge.yaml`` of a scaffolded repo, or {} if there is none."""
    path = source / PROJECT_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ScaffoldError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ScaffoldError(f"{path}: expected a mapping with 'template' and 'broker'")
    return {str(k): str(v) for k, v in data.items()}


def _git_init(dest: Path, message: str) -> None:
    identity: list[str] = []
    if _git(dest, "config", "--get", "user.email", check=False).returncode != 0:
        # No identity configured (CI, containers): commit as plugforge rather than fail.
        identity = ["-c", "user.name=plugforge", "-c", "user.email=plugforge@localhost"]
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, *identity, "commit", "-q", "--no-gpg-sign", "-m", message)


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScaffoldError(f"git {' '.join(args)} failed in {cwd}: {e}") from e
    if check and result.returncode != 0:
        raise ScaffoldError(f"git {' '.join(args)} failed in {cwd} (exit {result.returncode}): "
                            f"{result.stderr.strip()}")
    return result
