"""``plugforge builds [--plugin P]``: PluginBuilds, oldest first."""

from __future__ import annotations

import argparse
from typing import Any

from plugforge.cli import _common as c
from plugforge.v1 import build_pb2 as pb

PHASES = ("Pending", "Running", "Succeeded", "Failed")
PAGE = 100


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "builds", help="list builds",
        description="List PluginBuilds (oldest first), optionally of one plugin or phase.")
    p.add_argument("--plugin", default="", help="only builds of this BrokerPlugin")
    p.add_argument("--phase", choices=PHASES, help="only builds in this phase")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    c.add_connection_flags(p)
    c.add_output_flag(p)
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def run(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise c.CliError(f"--limit: expected 0 (all) or more, found {args.limit}", c.EXIT_USAGE)
    stub = c.stub(args)
    phase = pb.BuildPhase.Value(f"BUILD_PHASE_{args.phase.upper()}") if args.phase else \
        pb.BUILD_PHASE_UNSPECIFIED
    builds: list[pb.Build] = []
    token = ""
    while True:
        size = min(PAGE, args.limit - len(builds)) if args.limit else PAGE
        request = pb.ListBuildsRequest(namespace=args.namespace, plugin=args.plugin,
                                       phase=phase, page_size=size, page_token=token)
        response = c.call(lambda r=request: stub.ListBuilds(r, timeout=args.timeout),  # type: ignore[misc]
                          "list builds")
        builds.extend(response.builds)
        token = response.next_page_token
        if not token or (args.limit and len(builds) >= args.limit):
            break
    if args.output != "table":
        c.emit([c.to_dict(b) for b in builds], args.output)
        return c.EXIT_OK
    c.table(("NAME", "PLUGIN", "PHASE", "TRIGGER", "COMMIT", "DIGEST", "REASON", "CREATED"),
            [(b.name, b.plugin, c.enum_name(pb.BuildPhase.Name(b.phase), "BUILD_PHASE_"),
              c.enum_name(pb.TriggerType.Name(b.trigger_type), "TRIGGER_TYPE_")
              + (f" ({b.trigger_user})" if b.trigger_user else ""),
              b.commit[:12] or "-", c.short_digest(b.digest), b.reason or "-",
              b.created_at or "-") for b in builds])
    return c.EXIT_OK
