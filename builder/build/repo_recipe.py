"""A recipe kept in the plugin's own repository: ``.plugforge/recipe.yaml``.

Two forms, told apart by the ``template`` key:

- an **overlay**: ``template: <built-in template>`` plus any of ``description``, ``metadata``
  (``name``/``version``, each ``{file, pattern}`` or ``{value}``), ``extraArgs`` (per tool,
  appended to each template step running that tool: compiler flags, include paths),
  ``build`` (replaces the template's steps; programs from the template's ``tools``),
  ``artifacts`` and ``timeoutSeconds``; everything else comes from the template;
- a **complete recipe**: the same fields as a template's ``recipe.yaml``; its toolchain and
  tools must be ones a built-in template of its broker uses.

Either is merged into one document and validated by ``recipe_schema.parse_recipe``, so the
errors are the templates' errors, naming this file and the field. The file is untrusted input
(it arrives with a push): it is size-capped, must be a regular file, and runs only where builds
are isolated (``require_isolation``).

``resolve`` is the one rule for which recipe builds a tree, shared by ``plugforge build
--local`` and the builder: the repository's recipe, else the named template, else the broker's
default template when the tree has its layout, else a layout ``builder.build.layouts``
recognises, else one error saying what to add.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from builder.build import layouts, toolchains
from builder.build import recipe as recipes
from builder.build.recipe_errors import MetadataError
from builder.build.recipe_schema import API_VERSION, KIND, Recipe, parse_recipe
from plugforge.contract import PLUGIN_NAME

REPO_RECIPE = ".plugforge/recipe.yaml"
MAX_RECIPE_BYTES = 64 * 1024
OVERLAY_KEYS = ("apiVersion", "kind", "template", "description", "metadata", "extraArgs",
                "build", "artifacts", "timeoutSeconds")
# A complete recipe names its toolchain under one of these (the key is being renamed).
ISOLATED_EXECUTORS = frozenset({"container", "kubernetes"})

EXAMPLE = f"""add {REPO_RECIPE}, for example:
  apiVersion: {API_VERSION}
  kind: {KIND}
  template: mosquitto-c
  metadata:
    name: {{value: my_plugin}}
    version: {{file: VERSION, pattern: '^(\\S+)'}}
  extraArgs: {{gcc: [-I., -DMY_FLAG]}}
  build:
    - argv: [gcc, -O2, -fPIC, -shared, -o, "{{name}}.so", src/my_plugin.c]
  artifacts:
    - path: "{{name}}.so"
(or run `plugforge init` in the repository to write the recipe it infers)"""


@dataclass(frozen=True)
class Resolved:
    """The recipe that builds a tree, and where it came from."""

    recipe: Recipe
    template: str
    """The built-in template it starts from; empty for a complete repository recipe."""
    recipe_bytes: bytes
    """Everything that defines the build (content key, provenance): the template's recipe
    bytes, then the repository's recipe bytes, if any."""
    origin: str
    """For logs: ``template mosquitto-c``, ``.plugforge/recipe.yaml over template ...``."""
    from_repository: bool
    """True when the repository's own recipe file decides the steps: untrusted."""


def resolve(source_dir: Path, *, broker: str | None = None,
            template: str | None = None) -> Resolved:
    """Which recipe builds ``source_dir`` (see the module docstring for the order)."""
    raw = read_repo_recipe(source_dir)
    if raw is not None:
        resolved = parse_repo_recipe(raw, origin=REPO_RECIPE)
        if broker is not None and resolved.recipe.broker != broker:
            raise recipes.RecipeError(
                f"{REPO_RECIPE} builds a {resolved.recipe.broker} plugin, but the build is for "
                f"broker {broker!r}; fix the recipe's template/broker or the plugin's broker")
        return resolved
    if template:
        return _template(template)
    if broker is not None:
        default = _template(recipes.default_template(broker))
        if _has_layout(source_dir, default.recipe):
            return default
    found = [d for d in layouts.detect(source_dir) if broker is None or d.broker == broker]
    if len(found) == 1:
        merged = parse_repo_recipe(yaml.safe_dump(found[0].recipe, sort_keys=False).encode(),
                                   origin=f"layout ({found[0].why})")
        return Resolved(merged.recipe, merged.template, merged.recipe_bytes,
                        f"inferred: {found[0].why}", from_repository=False)
    if len(found) > 1:
        raise recipes.RecipeError(
            f"{source_dir} matches more than one layout ("
            + "; ".join(d.why for d in found) + f"); say which: {EXAMPLE}")
    for_broker = f" for broker {broker!r}" if broker else " (pass --template or --broker)"
    raise recipes.RecipeError(
        f"cannot tell how to build {source_dir}{for_broker}: no {REPO_RECIPE} and no layout "
        f"a template recognises; {EXAMPLE}")


def for_checkout(tree: Path, *, broker: str, template: str | None,
                 executor: str) -> Resolved | None:
    """The builder's question after checking out a commit: does something other than the
    template chosen before the fetch build it? The repository's recipe (only where builds are
    isolated: ``require_isolation``), or a recognised layout; None: that template."""
    resolved = resolve(tree, broker=broker, template=template or None)
    if not resolved.from_repository and resolved.origin.startswith("template "):
        return None
    require_isolation(resolved, executor)
    return resolved


def read_repo_recipe(source_dir: Path) -> bytes | None:
    """The bytes of ``source_dir/.plugforge/recipe.yaml``, None when there is none."""
    path = source_dir / REPO_RECIPE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or path.parent.is_symlink() or not path.is_file():
        raise recipes.RecipeError(f"{REPO_RECIPE} must be a regular file in the repository "
                                  "(a symlink or directory is refused)")
    with path.open("rb") as f:
        data = f.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise recipes.RecipeError(f"{REPO_RECIPE} is larger than {MAX_RECIPE_BYTES} bytes")
    return data


def parse_repo_recipe(raw: bytes, *, origin: str = REPO_RECIPE) -> Resolved:
    """Validate a repository recipe (overlay or complete) into the recipe it means."""
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise recipes.RecipeError(f"{origin}: not UTF-8 text ({e.reason})") from e
    except yaml.YAMLError as e:
        raise recipes.RecipeError(f"{origin}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise recipes.RecipeError(f"{origin}: expected a mapping with 'template: NAME' or a "
                                  f"complete recipe, found {type(data).__name__}")
    brokers = recipes.broker_templates()
    if "template" not in data:
        recipe = parse_recipe(data, brokers=brokers.keys(), origin=origin)
        _check_toolchain(data, recipe, brokers, origin)
        return Resolved(recipe, "", raw, f"{origin} (complete recipe)", from_repository=True)
    merged, base = _overlay(data, origin)
    recipe = parse_recipe(merged, brokers=brokers.keys(), origin=origin)
    return Resolved(recipe, base.template, base.recipe_bytes + b"\n---\n" + raw,
                    f"{origin} over template {base.template}", from_repository=True)


def require_isolation(resolved: Resolved, executor: str) -> None:
    """Refuse to run a repository's own steps with an executor that does not isolate them."""
    if resolved.from_repository and executor not in ISOLATED_EXECUTORS:
        raise recipes.RecipeError(
            f"{resolved.origin}: a repository's recipe runs only in isolated builds "
            f"(executor {' or '.join(sorted(ISOLATED_EXECUTORS))}); this builder uses the "
            f"{executor!r} executor, whose steps could read the builder's credentials")


def check_release_name(name: str, resolved: Resolved) -> str:
    """The built plugin's name is also its ConfigMap release's name and its image directory
    (``/plugin/<name>/``): it must be one the contract accepts, said here rather than by a
    sidecar refusing the release later."""
    if not PLUGIN_NAME.match(name):
        raise MetadataError(
            f"plugin name {name!r} (from {resolved.origin}) cannot name a release: expected "
            f"{PLUGIN_NAME.pattern} (lower case); set metadata.name to one, e.g. "
            f"{{value: {_release_name(name)}}}")
    return name


def _release_name(name: str) -> str:
    clean = re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_-")
    return clean if clean[:1].isalpha() else f"plugin_{clean}"


def _template(name: str) -> Resolved:
    tdir = recipes.template_dir(name)
    return Resolved(recipes.load_recipe(tdir), name, (tdir / recipes.RECIPE_FILE).read_bytes(),
                    f"template {name}", from_repository=False)


def _has_layout(source_dir: Path, recipe: Recipe) -> bool:
    """The template can read the tree's name and version: one file per metadata glob, and
    its pattern matches there (a pom.xml alone does not make a tree the template's)."""
    for source in (recipe.name_source, recipe.version_source):
        if source.pattern is None:
            continue
        # Regular files only, read capped: the tree is untrusted (a link to /dev/zero...).
        files = [p for p in source_dir.glob(source.file) if p.is_file() and not p.is_symlink()]
        if len(files) != 1:
            return False
        with files[0].open("rb") as f:
            head = f.read(MAX_RECIPE_BYTES * 4).decode("utf-8", errors="replace")
        if not source.pattern.search(head):
            return False
    return True


def _overlay(data: dict[Any, Any], origin: str) -> tuple[dict[str, Any], Resolved]:
    for key in data:
        if key not in OVERLAY_KEYS:
            raise recipes.RecipeError(
                f"{origin}: {key}: unknown key {key!r} in a recipe with 'template' (allowed: "
                f"{', '.join(OVERLAY_KEYS)}; for other fields write a complete recipe)")
    name = data["template"]
    if not isinstance(name, str):
        raise recipes.RecipeError(f"{origin}: template: expected a template name, found "
                                  f"{type(name).__name__} {name!r}")
    try:
        base = _template(name)
    except recipes.RecipeError as e:
        raise recipes.RecipeError(f"{origin}: template: {e}") from e
    merged: dict[str, Any] = copy.deepcopy(yaml.safe_load(base.recipe_bytes))
    for key in ("apiVersion", "kind"):
        if key in data:
            merged[key] = data[key]
    for key in ("description", "build", "artifacts", "timeoutSeconds"):
        if key in data:
            merged[key] = data[key]
    if "metadata" in data:
        meta = data["metadata"]
        if not isinstance(meta, dict) or not set(meta) <= {"name", "version"}:
            raise recipes.RecipeError(f"{origin}: metadata: expected a mapping with 'name' "
                                      f"and/or 'version', found {meta!r}")
        merged["metadata"] = {**merged["metadata"], **meta}
    tools = tuple(merged.get("tools", []))
    if "build" in data and isinstance(data["build"], list):
        for i, step in enumerate(data["build"]):
            argv = step.get("argv") if isinstance(step, dict) else None
            if isinstance(argv, list) and argv and isinstance(argv[0], str) \
                    and argv[0] not in tools:
                raise recipes.RecipeError(
                    f"{origin}: build[{i}].argv[0]: {argv[0]!r} is not a tool of template "
                    f"{name}'s toolchain (it provides: {', '.join(tools)}); use one of those, "
                    "or a template whose toolchain has it")
    if "extraArgs" in data:
        _append_extra_args(merged, data["extraArgs"], tools, origin)
    return merged, base


def _append_extra_args(merged: dict[str, Any], extra: object, tools: tuple[str, ...],
                       origin: str) -> None:
    if not isinstance(extra, dict):
        raise recipes.RecipeError(f"{origin}: extraArgs: expected a mapping of tool -> list of "
                                  f"arguments, found {type(extra).__name__} {extra!r}")
    for tool, args in extra.items():
        where = f"{origin}: extraArgs.{tool}"
        if tool not in tools:
            raise recipes.RecipeError(f"{where}: {tool!r} is not a tool of the template's "
                                      f"toolchain (it provides: {', '.join(tools)})")
        if not isinstance(args, list) or not all(isinstance(a, str) and "\x00" not in a
                                                 for a in args):
            raise recipes.RecipeError(f"{where}: expected a list of strings (one argument "
                                      f"each, no shell), found {args!r}")
        steps = [s for s in merged.get("build", [])
                 if isinstance(s, dict) and isinstance(s.get("argv"), list)
                 and s["argv"][:1] == [tool]]
        if not steps:
            raise recipes.RecipeError(f"{where}: no build step runs {tool!r}")
        for step in steps:
            step["argv"] = [*step["argv"], *args]


def _check_toolchain(data: Mapping[str, Any], recipe: Recipe, brokers: Mapping[str, str],
                     origin: str) -> None:
    """A complete recipe may use only a toolchain the builder provides, and only its tools."""
    root = recipes.templates_root()
    if "toolchain" in data:  # a named toolchain: its image declares its tools
        name = str(data["toolchain"])
        try:
            text = toolchains.containerfile(root, name).read_text()
        except recipes.RecipeError as e:
            raise recipes.RecipeError(f"{origin}: toolchain: {e} (known: "
                                      f"{', '.join(toolchains.names(root))})") from e
        provided = sorted(toolchains.declared_tools(text))
        what = f"toolchain {name}"
    else:  # the toolchain images the templates of this broker use, and their tools
        known = [doc for doc in _template_docs(root) if doc.get("broker") == recipe.broker]
        provided = sorted({str(t) for doc in known for t in doc.get("tools", [])})
        what = f"any {recipe.broker} toolchain"
    for i, tool in enumerate(recipe.tools):
        if tool not in provided:
            raise recipes.RecipeError(
                f"{origin}: tools[{i}]: {tool!r} is not provided by {what} (it provides: "
                f"{', '.join(provided) or 'nothing'}); use one of those")


def _template_docs(root: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(root.glob(f"*/{recipes.RECIPE_FILE}")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict):
            docs.append(doc)
    return docs
