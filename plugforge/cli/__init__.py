"""The ``plugforge`` command line.

Each subcommand is a module in this package exposing ``register(subparsers)``, which adds its
parser and sets ``run`` (``(argparse.Namespace) -> int``) as the parser default. Adding a
subcommand means adding a module and listing it in ``SUBCOMMANDS``.

Exit codes: 0 success, 1 the requested operation failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from plugforge.cli import (
    api_secrets,
    build,
    builds,
    init,
    logs,
    new,
    push,
    rollout,
    signing_keys,
    status,
    toolchains,
    trigger,
    verify,
)

SUBCOMMANDS: tuple[ModuleType, ...] = (new, init, build, push, trigger, builds, logs, rollout,
                                       status, api_secrets, signing_keys, verify, toolchains)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plugforge",
        description="Build MQTT broker auth plugins from Git and hot-load them into brokers.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
