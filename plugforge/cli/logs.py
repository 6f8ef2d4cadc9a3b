"""``plugforge logs [-f] <build>``: a build's full log (following a running one with -f)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from plugforge.cli import _common as c
from plugforge.v1 import build_pb2 as pb


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "logs", help="show a build's log",
        description="Print a PluginBuild's log. With -f, keep printing while the build runs; "
                    "the exit code is then the build's: 0 succeeded, 1 failed.")
    p.add_argument("build", help="PluginBuild name (see 'plugforge builds')")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the build ends")
    c.add_connection_flags(p)
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def run(args: argparse.Namespace) -> int:
    stub = c.stub(args)
    if args.follow:
        return follow_logs(stub, args.namespace, args.build, args.timeout)
    stream = stub.StreamBuildLogs(pb.StreamBuildLogsRequest(
        namespace=args.namespace, name=args.build, follow=False), timeout=args.timeout)
    c.call(lambda: [sys.stdout.write(chunk.text) for chunk in stream], f"logs {args.build}")
    return c.EXIT_OK


def follow_logs(stub: Any, namespace: str, name: str, timeout: float) -> int:
    """Stream until the build ends; 0 if it succeeded, 1 otherwise."""
    stream = stub.StreamBuildLogs(pb.StreamBuildLogsRequest(
        namespace=namespace, name=name, follow=True))
    phase = pb.BUILD_PHASE_UNSPECIFIED

    def consume() -> None:
        nonlocal phase
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            phase = chunk.phase

    c.call(consume, f"logs {name}")
    if phase not in (pb.BUILD_PHASE_SUCCEEDED, pb.BUILD_PHASE_FAILED):
        build = c.call(lambda: stub.GetBuild(pb.GetBuildRequest(
            namespace=namespace, name=name), timeout=timeout).build, f"get {name}")
        phase = build.phase
    label = c.enum_name(pb.BuildPhase.Name(phase), "BUILD_PHASE_")
    print(f"-- {name}: {label}", file=sys.stderr)
    return c.EXIT_OK if phase == pb.BUILD_PHASE_SUCCEEDED else c.EXIT_FAILED
