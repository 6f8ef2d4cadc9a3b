"""``plugforge trigger <plugin>``: request a build (a Pending PluginBuild, trigger Manual)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from plugforge.cli import _common as c
from plugforge.cli.logs import follow_logs
from plugforge.v1 import build_pb2 as pb


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "trigger", help="request a build of a plugin",
        description="Ask the builder to build a BrokerPlugin now (its ref's tip, or --commit). "
                    "Prints the PluginBuild's name. Exit 0 when requested (with --wait or "
                    "--follow: when it succeeded), 1 when refused or the build failed.")
    p.add_argument("plugin", help="BrokerPlugin name")
    p.add_argument("--commit", default="", help="commit to build (7-40 hex digits)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="wait until the build finishes")
    mode.add_argument("-f", "--follow", action="store_true",
                      help="stream the build's log until it finishes")
    c.add_connection_flags(p)
    c.add_output_flag(p)
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def run(args: argparse.Namespace) -> int:
    stub = c.stub(args)
    response = c.call(lambda: stub.TriggerBuild(pb.TriggerBuildRequest(
        namespace=args.namespace, plugin=args.plugin, commit=args.commit),
        timeout=args.timeout), f"trigger {args.plugin}")
    build = response.build
    if args.output != "table":
        c.emit(c.to_dict(build), args.output)
    else:
        print(build.name)
    if args.follow:
        return follow_logs(stub, args.namespace, build.name, args.timeout)
    if args.wait:
        return wait_build(stub, args.namespace, build.name, args.timeout)
    return c.EXIT_OK


def wait_build(stub: Any, namespace: str, name: str, timeout: float) -> int:
    with c.spinner(f"build {name}: Pending") as say:
        while True:
            build = c.call(lambda: stub.GetBuild(pb.GetBuildRequest(
                namespace=namespace, name=name), timeout=timeout).build, f"get {name}")
            phase = c.enum_name(pb.BuildPhase.Name(build.phase), "BUILD_PHASE_")
            say(f"build {name}: {phase}")
            if build.phase in (pb.BUILD_PHASE_SUCCEEDED, pb.BUILD_PHASE_FAILED):
                break
            time.sleep(0.5)
    if build.phase == pb.BUILD_PHASE_SUCCEEDED:
        print(f"{name} succeeded: {build.image}", file=sys.stderr)
        return c.EXIT_OK
    print(f"{name} failed ({build.reason}): {build.message}", file=sys.stderr)
    return c.EXIT_FAILED
