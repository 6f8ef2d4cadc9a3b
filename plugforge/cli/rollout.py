"""``plugforge rollout <plugin> [--watch]``: what every broker pod runs for a plugin.

Readable at fifty pods: a summary line (wave, how many pods are current, updating, failed,
not Ready), then only the pods that are not current once there are more than ``ALL_PODS_UP_TO``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from plugforge.cli import _common as c
from plugforge.v1 import build_pb2 as pb

ALL_PODS_UP_TO = 10
"""Tables list every pod up to this many; beyond, only the pods not current."""
IN_PROGRESS = ("Canary", "Rolling")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "rollout", help="show a plugin's rollout across broker pods",
        description="Show the release a plugin should run and, per broker pod, the digest its "
                    "sidecar reports running. With --watch, refresh until the rollout settles "
                    "(no canary running, every pod current); exit 0 when it settled Ready, 1 "
                    "when it was rolled back, failed, or --watch-timeout passed.")
    p.add_argument("plugin", help="BrokerPlugin name")
    p.add_argument("-w", "--watch", action="store_true", help="refresh until settled")
    p.add_argument("--interval", type=float, default=1.0, help="refresh period (seconds)")
    p.add_argument("--watch-timeout", type=float, default=600.0,
                   help="give up watching after this long (seconds, default %(default)s)")
    c.add_connection_flags(p)
    c.add_output_flag(p)
    p.set_defaults(run=lambda args: c.run_safely(run, args))


def fetch(stub: Any, args: argparse.Namespace) -> pb.Rollout:
    rollout: pb.Rollout = c.call(lambda: stub.GetRollout(pb.GetRolloutRequest(
        namespace=args.namespace, plugin=args.plugin), timeout=args.timeout).rollout,
        f"rollout {args.plugin}")
    return rollout


def settled(r: pb.Rollout) -> bool:
    return r.phase not in IN_PROGRESS and r.pods_ready == r.pods_total


def state_of(p: pb.PodRollout) -> str:
    return c.enum_name(pb.PodState.Name(p.state), "POD_STATE_")


def summary(r: pb.Rollout) -> str:
    """One line: the wave and how many pods stand where."""
    counts: dict[str, int] = {}
    for p in r.pods:
        counts[state_of(p)] = counts.get(state_of(p), 0) + 1
    others = ", ".join(f"{n} {s.lower().replace('notready', 'not ready')}"
                       for s, n in sorted(counts.items())
                       if s not in ("Current", "Disabled"))
    wave = f" wave {r.wave}/{max(r.wave, r.waves)}" if r.phase in IN_PROGRESS and r.wave else ""
    return (f"rollout {r.phase}{wave}"
            + (f" (canary {c.short_digest(r.canary_digest)})" if r.canary_digest else "")
            + f"  pods ready {r.pods_ready}/{r.pods_total}" + (f" ({others})" if others else "")
            + f"  Ready={'True' if r.ready else 'False'}" + (f" {r.reason}" if r.reason else ""))


def show(r: pb.Rollout, output: str) -> None:
    if output != "table":
        c.emit(c.to_dict(r), output)
        return
    print(f"{r.namespace}/{r.plugin} ({r.plugin_name}): {r.desired_image or 'nothing rolled out'}"
          f"  commit {r.commit[:12] or '-'}  build {r.build or '-'}")
    print(summary(r))
    if r.message and not r.ready:
        print(f"  {r.message[:600]}")
    pods = list(r.pods)
    if len(pods) > ALL_PODS_UP_TO:
        pods = [p for p in pods if state_of(p) not in ("Current", "Disabled")]
    if pods:
        c.table(("POD", "STATE", "CANARY", "DESIRED", "RUNNING", "SIDECAR", "LAST ERROR"),
                [(p.pod, state_of(p), "yes" if p.canary else "no",
                  c.short_digest(p.desired_digest), c.short_digest(p.running_digest),
                  p.sidecar_phase or "-", (p.last_error.splitlines() or ["-"])[0][:80])
                 for p in pods])
    if len(pods) < len(r.pods):
        print(f"({len(r.pods) - len(pods)} more pods current, not listed)")


def run(args: argparse.Namespace) -> int:
    stub = c.stub(args)
    rollout = fetch(stub, args)
    if not args.watch:
        show(rollout, args.output)
        return c.EXIT_OK
    deadline = time.monotonic() + args.watch_timeout
    last = ""
    with c.spinner(f"rollout {args.plugin}") as say:
        while not settled(rollout) and time.monotonic() < deadline:
            line = summary(rollout)
            say(line)
            if line != last and not sys.stdout.isatty() and args.output == "table":
                print(line, flush=True)  # a log of the progress, one line per change
            last = line
            time.sleep(args.interval)
            rollout = fetch(stub, args)
    show(rollout, args.output)
    if not settled(rollout):
        print(f"rollout {args.plugin} did not settle within {args.watch_timeout:g}s",
              file=sys.stderr)
        return c.EXIT_FAILED
    return c.EXIT_OK if rollout.ready else c.EXIT_FAILED
