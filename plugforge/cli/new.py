"""``plugforge new``: scaffold a plugin repository from a template."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from builder.build.recipe import BuildError, default_template, load_recipe, template_dir
from builder.build.scaffold import ScaffoldError, plugin_names, scaffold


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "new", help="create a plugin repository from a template",
        description="Create a new Git repository (branch main) with a working starter plugin.")
    p.add_argument("name", help="plugin name, e.g. deny-test (lowercase, digits, '-', '_')")
    p.add_argument("--broker", required=True,
                   help="target broker (mosquitto, vernemq, emqx, hivemq, rabbitmq)")
    p.add_argument("--template", help="template name (default: the broker's default template)")
    p.add_argument("--dir", type=Path, help="where to create the repository (default: ./NAME)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        plugin_names(args.name)
        template = args.template or default_template(args.broker)
        tdir = template_dir(template)
        recipe = load_recipe(tdir)
    except (BuildError, ScaffoldError) as e:
        print(f"plugforge new: {e}", file=sys.stderr)
        return 2
    if recipe.broker != args.broker:
        print(f"plugforge new: template {template!r} is for {recipe.broker}, not {args.broker}",
              file=sys.stderr)
        return 2
    dest: Path = args.dir if args.dir is not None else Path(args.name)
    try:
        scaffold(tdir, template, args.broker, args.name, dest)
    except ScaffoldError as e:
        print(f"plugforge new: {e}", file=sys.stderr)
        return 1
    print(f"created {dest} from template {template} ({recipe.description})")
    print(f"next: edit it, then `plugforge build --local {dest}`; see {tdir / 'README.md'}")
    return 0
