"""``plugforge build --local``: build a plugin tree with its template's recipe, on this machine."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from builder.build import repo_recipe, toolchains
from builder.build.executors import Executor
from builder.build.executors.container import ContainerExecutor
from builder.build.executors.process import ProcessExecutor
from builder.build.executors.select import default_cache_root
from builder.build.recipe import BuildError, run_recipe
from builder.build.scaffold import PROJECT_FILE, ScaffoldError, read_project_file
from plugforge.cli import push
from plugforge.cli._common import CliError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "build", help="build a plugin",
        description=f"Build a plugin source tree. The recipe is the tree's "
                    f"{repo_recipe.REPO_RECIPE}, else --template, the template in its "
                    f"{PROJECT_FILE}, --broker's default template when the tree has its layout, "
                    "or the recipe a recognised layout implies (`plugforge init` writes it).")
    p.add_argument("--local", type=Path, required=True, metavar="DIR",
                   help="plugin source tree to build on this machine")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--template", help="template whose recipe to use")
    which.add_argument("--broker", help="use this broker's default template")
    p.add_argument("--work-dir", type=Path,
                   help="empty directory for the build (default: a new temporary directory)")
    p.add_argument("--timeout", type=float, help="override the recipe's timeoutSeconds")
    p.add_argument("--quiet", action="store_true", help="do not echo the build output")
    p.add_argument("--push", metavar="REPO",
                   help="then pack and push the build as the builder would (`plugforge push`)")
    p.add_argument("--source", metavar="URL",
                   help="repository URL recorded in the image (default: the tree's git remote "
                        "'origin'); the BrokerPlugin's source.git.url gives the builder's digest")
    p.add_argument("--executor", choices=("container", "process"),
                   help="container: in the recipe's toolchain image with podman (the default "
                        "when that image is in podman's store: `plugforge toolchains build`); "
                        "process: as your own processes, with your files in reach")
    p.add_argument("--toolchain-image", metavar="REF",
                   help="run the container executor in this image instead of the newest "
                        f"localhost/{toolchains.REPOSITORY_PREFIX}<toolchain>")
    push.add_registry_flags(p)
    p.set_defaults(run=run)


def _executor(args: argparse.Namespace, toolchain: str) -> tuple[Executor, str]:
    """The executor and toolchain image for this build (see ``--executor``)."""
    if args.executor == "process":
        return ProcessExecutor(default_cache_root()), ""
    container = ContainerExecutor(default_cache_root())
    image = args.toolchain_image or (container.local_image(
        f"localhost/{toolchains.REPOSITORY_PREFIX}{toolchain}") if toolchain else None)
    if image:
        return container, image
    missing = f"no toolchain image for {toolchain!r} in podman's store" if toolchain else \
        "the recipe names no toolchain"
    if args.executor == "container":
        raise BuildError(f"--executor container: {missing}; build it with `plugforge "
                         f"toolchains build {toolchain}` or pass --toolchain-image REF")
    print(f"==> WARNING: {missing}: building with the process executor, as you, with your "
          f"files in reach; isolate builds with `plugforge toolchains build {toolchain}`",
          file=sys.stderr, flush=True)
    return ProcessExecutor(default_cache_root()), ""


def _resolve(args: argparse.Namespace) -> repo_recipe.Resolved:
    template = args.template
    if not template and not args.broker:
        template = read_project_file(args.local).get("template")
    return repo_recipe.resolve(args.local, broker=args.broker, template=template)


def _origin_url(tree: Path) -> str:
    """The tree's git remote ``origin`` (what a BrokerPlugin would name), or empty."""
    try:
        out = subprocess.run(["git", "-C", str(tree), "remote", "get-url", "origin"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return public_url(out.stdout.strip()) if out.returncode == 0 else ""


def public_url(url: str) -> str:
    """``url`` without user or token (``https://user:token@host/x`` → ``https://host/x``): it is
    written into the image, and a BrokerPlugin's URL carries none (credentials are Secrets)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url


def run(args: argparse.Namespace) -> int:
    source: Path = args.local
    if not source.is_dir():
        print(f"plugforge build: {source} is not a directory", file=sys.stderr)
        return 2
    try:
        resolved = _resolve(args)
    except (BuildError, ScaffoldError) as e:
        print(f"plugforge build: {e}", file=sys.stderr)
        return 2
    recipe = resolved.recipe
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="plugforge-build-"))
    print(f"==> recipe: {resolved.origin}: {recipe.description}", flush=True)
    print(f"==> work dir {work}", flush=True)
    try:
        executor, image = _executor(args, recipe.toolchain)
        print(f"==> {executor.name} executor{f' in {image}' if image else ''}", flush=True)
        result = run_recipe(recipe, source, work, log=None if args.quiet else sys.stdout,
                            timeout=args.timeout, executor=executor, toolchain_image=image,
                            build_name=f"local-{uuid.uuid4().hex[:12]}")
        repo_recipe.check_release_name(result.name, resolved)
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
    push.write_record(work, push.BuildRecord(
        result.name, result.version, recipe.broker,
        public_url(args.source) if args.source is not None else _origin_url(source)))
    if args.push:
        try:
            print(push.push_build(work, args.push, docker_config=args.docker_config,
                                  ca_file=args.registry_ca, plain_http=args.plain_http))
        except CliError as e:
            print(f"plugforge build: {e}", file=sys.stderr)
            return e.code
    return 0

