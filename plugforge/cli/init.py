"""``plugforge init [DIR]``: write the recipe an existing plugin repository's layout implies.

Reads the tree (``builder.build.layouts``), writes ``.plugforge/recipe.yaml`` for the one layout
it recognises, validates it as a build would, and prints it for the user to read and commit.
Nothing is overwritten; an unrecognised or ambiguous tree is one error saying what to add.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from builder.build import layouts, repo_recipe
from builder.build.recipe import BuildError
from plugforge.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE

HEADER = """\
# Written by `plugforge init` from this repository's layout ({why}).
# Read it, adjust it (name/version, flags, steps, artifacts) and commit it: plugforge and the
# builder build this repository with it (plugin-templates/README.md, "Bring your own plugin").
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "init", help="write the recipe an existing plugin repository needs",
        description=f"Recognise an existing plugin repository's layout and write "
                    f"{repo_recipe.REPO_RECIPE} for it (nothing is overwritten).")
    p.add_argument("dir", type=Path, nargs="?", default=Path("."), metavar="DIR",
                   help="the repository (default: the current directory)")
    p.add_argument("--broker", help="only consider layouts of this broker")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if not root.is_dir():
        print(f"plugforge init: {root} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    target = root / repo_recipe.REPO_RECIPE
    if target.parent.is_symlink() or (target.parent.exists() and not target.parent.is_dir()):
        print(f"plugforge init: {target.parent} is not a directory of the repository",
              file=sys.stderr)
        return EXIT_FAILED
    if target.exists() or target.is_symlink():
        print(f"plugforge init: {target} already exists; edit it, or remove it to infer anew",
              file=sys.stderr)
        return EXIT_FAILED
    found = [d for d in layouts.detect(root) if args.broker is None or d.broker == args.broker]
    if len(found) != 1:
        what = ("matches more than one layout: " + "; ".join(d.why for d in found)
                if found else "has no layout plugforge recognises")
        print(f"plugforge init: {root} {what}; {repo_recipe.EXAMPLE}", file=sys.stderr)
        return EXIT_FAILED
    layout = found[0]
    text = HEADER.format(why=layout.why) + yaml.safe_dump(layout.recipe, sort_keys=False,
                                                          width=96, default_flow_style=None)
    try:
        repo_recipe.parse_repo_recipe(text.encode(), origin=repo_recipe.REPO_RECIPE)
    except BuildError as e:  # a rule produced something the schema refuses: say so, write nothing
        print(f"plugforge init: the inferred recipe is invalid ({e}); write it by hand",
              file=sys.stderr)
        return EXIT_FAILED
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    print(f"==> {layout.broker} plugin ({layout.why}); wrote {target}:")
    print(text, end="")
    return EXIT_OK
