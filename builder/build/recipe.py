"""Recipe runner: turn a plugin source tree into the files of ``/plugin/<name>/``.

A template's ``recipe.yaml`` says which tools a build needs, how to read the plugin's name and
version from the tree, which commands build it and which outputs make up the plugin. The same
runner serves ``plugforge build --local`` and the in-cluster builder.

Public API::

    template_dir(name) -> Path                 # plugin-templates/<name>
    load_recipe(template_dir) -> Recipe        # RecipeError on any invalid field
    run_recipe(recipe, source_dir, work_dir, log=..., timeout=...) -> BuildResult
    broker_templates() -> dict[str, str]       # broker -> default template (index.yaml)

Errors all derive from ``BuildError`` and carry a ``reason`` for Kubernetes conditions.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from builder.build import artifacts
from builder.build.executors import BuildJob, BuildStep, Executor
from builder.build.executors.process import ProcessExecutor
from builder.build.recipe_errors import (
    ArtifactError,
    BuildError,
    BuildFailed,
    BuildTimeout,
    MetadataError,
    RecipeError,
    ToolMissing,
)
from builder.build.recipe_schema import ArtifactSpec, MetadataSource, Recipe, Step, parse_recipe

__all__ = [
    "ArtifactError", "ArtifactSpec", "BuildError", "BuildFailed", "BuildResult", "BuildTimeout",
    "MetadataError", "MetadataSource", "Recipe", "RecipeError", "Step", "ToolMissing",
    "broker_templates", "default_template", "load_recipe", "run_recipe", "template_dir",
    "templates_root",
]

# Overrides where templates are found (e.g. a builder image that ships them elsewhere).
TEMPLATES_ENV = "PLUGFORGE_TEMPLATES"
CACHE_ENV = "PLUGFORGE_CACHE"
RECIPE_FILE = "recipe.yaml"
INDEX_FILE = "index.yaml"

_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Names become a directory under /plugin/ and part of file names: keep them boring.
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PLUGIN_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$")
_PLACEHOLDER = re.compile(r"\{(name|version)\}")


@dataclass(frozen=True)
class BuildResult:
    name: str
    version: str
    artifact_dir: Path
    """Files laid out exactly as they will be under ``/plugin/<name>/`` in the image."""
    log_path: Path
    duration: float
    """Wall-clock seconds from copying the source to the last artifact."""


def templates_root() -> Path:
    """``$PLUGFORGE_TEMPLATES`` or the repository's ``plugin-templates/``."""
    override = os.environ.get(TEMPLATES_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "plugin-templates"


def broker_templates() -> dict[str, str]:
    """Broker name -> default template, from ``plugin-templates/index.yaml``.

    This mapping is the only place a new broker is registered.
    """
    index = templates_root() / INDEX_FILE
    try:
        data = yaml.safe_load(index.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"cannot read the template index {index}: {e}") from e
    brokers = data.get("brokers") if isinstance(data, dict) else None
    if not isinstance(brokers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in brokers.items()):
        raise RecipeError(f"{index}: expected 'brokers:' mapping broker name -> template name")
    return dict(brokers)


def default_template(broker: str) -> str:
    mapping = broker_templates()
    if broker not in mapping:
        raise RecipeError(f"unknown broker {broker!r}; expected one of "
                          f"{', '.join(sorted(mapping))}")
    return mapping[broker]


def template_dir(name: str) -> Path:
    """The directory of template ``name``; refuses anything that is not a plain name."""
    if "/" in name or "\\" in name or ".." in name or not _TEMPLATE_NAME.match(name):
        raise RecipeError(f"template name {name!r} is invalid: expected a plain name like "
                          "'mosquitto-c' (lowercase letters, digits, '.', '_', '-'; "
                          "no '/' or '..')")
    root = templates_root()
    path = root / name
    if not (path / RECIPE_FILE).is_file():
        known = sorted(p.name for p in root.iterdir() if (p / RECIPE_FILE).is_file()) \
            if root.is_dir() else []
        raise RecipeError(f"no template {name!r} in {root} (expected {path / RECIPE_FILE}); "
                          f"available: {', '.join(known) or 'none'}")
    return path


def load_recipe(template_dir: Path) -> Recipe:
    """Read and strictly validate ``template_dir/recipe.yaml``."""
    path = template_dir / RECIPE_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RecipeError(f"cannot read recipe {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    return parse_recipe(data, brokers=broker_templates().keys(), origin=str(path))


def run_recipe(recipe: Recipe, source_dir: Path, work_dir: Path, *, log: TextIO | None = None,
               timeout: float | None = None, cache_root: Path | None = None,
               executor: Executor | None = None, build_name: str = "local",
               tenant: str = "local", toolchain_image: str = "") -> BuildResult:
    """Build ``source_dir`` with ``recipe`` inside ``work_dir`` (created; must be empty).

    The source is copied to ``work_dir/src`` first, so the caller's tree is never written; the
    ``executor`` (default: the ``process`` executor, for development) runs the steps there.
    ``timeout`` overrides the recipe's ``timeoutSeconds``; ``cache_root`` defaults to
    ``$PLUGFORGE_CACHE`` (or ``~/.cache/plugforge``) and only matters for recipes with caches.
    ``toolchain_image``: the recipe's toolchain pinned by digest (``builder.build.toolchains.
    resolve``), for executors that run steps in it; the ``process`` executor ignores it.
    Layout of ``work_dir``: ``src/``, ``artifact/``, ``build.log`` (and what the executor adds).
    """
    started = time.monotonic()
    limit = float(timeout) if timeout is not None else recipe.timeout_seconds
    if not source_dir.is_dir():
        raise BuildError(f"source dir {source_dir} does not exist or is not a directory")
    work_dir.mkdir(parents=True, exist_ok=True)
    if any(work_dir.iterdir()):
        raise BuildError(f"work dir {work_dir} must be empty; pass a fresh directory per build")
    src, out = work_dir / "src", work_dir / "artifact"
    out.mkdir()
    log_path = work_dir / "build.log"
    log_path.touch()

    if executor is None:
        executor = ProcessExecutor(_cache_root(cache_root))
    # symlinks=True: a link in the tree stays a link and is judged when artifacts are collected.
    shutil.copytree(source_dir, src, symlinks=True)
    name = _read_metadata(src, recipe.name_source, "name", _PLUGIN_NAME)
    version = _read_metadata(src, recipe.version_source, "version", _PLUGIN_VERSION)
    values = {"name": name, "version": version}
    job = BuildJob(
        name=build_name, tenant=tenant, toolchain_image=toolchain_image,
        steps=tuple(BuildStep(tuple(_interpolate(a, values) for a in step.argv),
                              {k: _interpolate(v, values) for k, v in step.env.items()})
                    for step in recipe.build),
        caches=recipe.caches, timeout=limit, tools=recipe.tools)
    if log is not None:
        log.write(f"==> building {name} {version} ({recipe.broker}) in {src} "
                  f"[{executor.name} executor]\n")
    executor.run(job, src, log_path, log)

    copied: list[Path] = []
    for spec in recipe.artifacts:
        copied += artifacts.collect(src, _interpolate(spec.path, values), out,
                                    _interpolate(spec.to, values))
    if not copied:
        raise ArtifactError("the recipe's artifacts matched no files; nothing to pack")
    return BuildResult(name=name, version=version, artifact_dir=out, log_path=log_path,
                       duration=time.monotonic() - started)


def _cache_root(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "plugforge"


def _interpolate(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _read_metadata(src: Path, source: MetadataSource, what: str, valid: re.Pattern[str]) -> str:
    if source.pattern is None:
        if not valid.match(source.value):
            raise MetadataError(f"plugin {what} {source.value!r} (metadata.{what}.value) is not "
                                f"allowed: expected to match {valid.pattern}")
        return source.value
    root = src.resolve()
    matches = sorted(glob.glob(source.file, root_dir=root))
    if len(matches) != 1:
        found = ", ".join(matches) if matches else "no file"
        raise MetadataError(f"plugin {what}: expected exactly one file matching {source.file!r} "
                            f"in the source tree, found {found}")
    path = (root / matches[0]).resolve()
    if not artifacts.inside(root, path) or not path.is_file():
        raise MetadataError(f"plugin {what}: {matches[0]!r} is not a regular file inside the "
                            "source tree")
    match = source.pattern.search(path.read_text(errors="replace"))
    if match is None:
        raise MetadataError(f"plugin {what}: pattern {source.pattern.pattern!r} found nothing in "
                            f"{matches[0]}; the file must declare the plugin's {what}")
    value = match.group(1)
    if not valid.match(value):
        raise MetadataError(f"plugin {what} {value!r} (from {matches[0]}) is not allowed: expected "
                            f"to match {valid.pattern}")
    return value
