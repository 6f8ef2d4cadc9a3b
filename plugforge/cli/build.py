"""``plugforge build --local``: build a plugin tree with its template's recipe, on this machine."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from builder.build.recipe import (
    BuildError,
    RecipeError,
    default_template,
    load_recipe,
    run_recipe,
    template_dir,
)
from builder.build.scaffold import PROJECT_FILE, ScaffoldError, read_project_file


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "build", help="build a plugin",
        description="Build a plugin source tree with its template's recipe. The template comes "
                    f"from --template, --broker, or the tree's {PROJECT_FILE}.")
    p.add_argument("--local", type=Path, required=True, metavar="DIR",
                   help="plugin source tree to build on this machine")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--template", help="template whose recipe to use")
    which.add_argument("--broker", help="use this broker's default template")
    p.add_argument("--work-dir", type=Path,
                   help="empty directory for the build (default: a new temporary directory)")
    p.add_argument("--timeout", type=float, help="override the recipe's timeoutSeconds")
    p.add_argument("--quiet", action="store_true", help="do not echo the build output")
    p.set_defaults(run=run)


def _template_name(args: argparse.Namespace) -> str:
    if args.template:
        return str(args.template)
    if args.broker:
        return default_template(args.broker)
    project = read_project_file(args.local)
    if "template" in project:
        return project["template"]
    raise RecipeError(f"cannot tell which template builds {args.local}: pass --template or "
                      f"--broker (or add {PROJECT_FILE} with 'template: NAME')")


def run(args: argparse.Namespace) -> int:
    source: Path = args.local
    if not source.is_dir():
        print(f"plugforge build: {source} is not a directory", file=sys.stderr)
        return 2
    try:
        name = _template_name(args)
        recipe = load_recipe(template_dir(name))
    except (BuildError, ScaffoldError) as e:
        print(f"plugforge build: {e}", file=sys.stderr)
        return 2
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="plugforge-build-"))
    print(f"==> template {name}: {recipe.description}", flush=True)
    print(f"==> work dir {work}", flush=True)
    try:
        result = run_recipe(recipe, source, work, log=None if args.quiet else sys.stdout,
                            timeout=args.timeout)
    except BuildError as e:
        print(f"plugforge build: {e.reason}: {e}", file=sys.stderr)
        print(f"full log: {work / 'build.log'}", file=sys.stderr)
        return 1
    files = sorted(p.relative_to(result.artifact_dir).as_posix()
                   for p in result.artifact_dir.rglob("*") if p.is_file())
    print(f"==> built {result.name} {result.version} in {result.duration:.1f}s")
    print(f"artifact: {result.artifact_dir}  (becomes /plugin/{result.name}/ in the image)")
    for f in files:
        print(f"  {f}")
    print(f"log: {result.log_path}")
    return 0

