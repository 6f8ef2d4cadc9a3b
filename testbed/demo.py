"""The plugforge demo: the three user flows on a real control plane, registry, git server and
real brokers, start to finish, without any input.

Run through ``scripts/demo``, which installs what it needs first. It starts an embedded
kube-apiserver (plugforge's manifests/ applied to it), an OCI registry, a Git server, the
builder with its webhook endpoint, and per broker one "pod" (the broker process plus the
sidecar). Then, per broker: (1) a BrokerPlugin pointing at a Git repo becomes an enforced
plugin, (2) a signed GitHub push webhook rebuilds and rolls out a changed policy, a broken push
is refused and the old plugin kept, (3) ConfigMap edits reach the running broker and a broken
edit is rejected. It prints a summary table and removes everything it started. The flows are
the same code the end-to-end tests run (``testbed/e2e.py``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from testbed.certs import make_ca
from testbed.e2e import RIGS, Results, Stage, run_all
from testbed.gitserver import start_git_server
from testbed.kube import start_control_plane
from testbed.registry import start_registry

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def _started(what: str, started: float) -> None:
    say(f"  {what} ready in {time.monotonic() - started:.1f}s")


def summary(results: list[Results]) -> str:
    """One table: a row per measurement, a column per broker."""
    brokers = [r.broker for r in results]
    keys: list[tuple[str, str]] = []
    values: dict[tuple[str, str, str], str] = {}
    for r in results:
        for flow, what, value in r.rows:
            if (flow, what) not in keys:
                keys.append((flow, what))
            values[(flow, what, r.broker)] = value
    header = ["flow", "measurement", *brokers]
    rows = [[flow, what, *(values.get((flow, what, b), "-") for b in brokers)]
            for flow, what in keys]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


NEXT_STEPS = """\
Run the same thing on your own cluster (details: README.md, "Run it on your cluster"):
  1. build and push the images (R = your registry):
       podman build -f containers/builder.Containerfile -t R/plugforge/builder:0.1.0 .
       podman build -f containers/sidecar.Containerfile -t R/plugforge/sidecar:0.1.0 .
  2. point the overlay at them:    edit images: in manifests/overlays/mosquitto/kustomization.yaml
  3. install plugforge + a broker: kubectl apply --server-side -k manifests/overlays/mosquitto
  4. API certificates + tokens:    plugforge api-secrets --broker-namespace default
  5. signing key + trust policy:   plugforge signing-keys --broker-namespace default
  6. scaffold a plugin repo:       plugforge new --broker mosquitto deny-test; push it to your forge
  7. edit the BrokerPlugin (manifests/overlays/mosquitto/brokerplugin.yaml) to name that repo,
     add the webhook https://<host>/webhooks/github with the github-webhook Secret's value."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", choices=["all", *RIGS], default="all",
                        help="run the flows on one broker only (default: all: hivemq, "
                             "rabbitmq, mosquitto, emqx, then vernemq)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="copy the servers' logs here before cleaning up")
    parser.add_argument("--cluster", action="store_true",
                        help="run the flows as pods on a real node (kubelet, containerd; "
                             "testbed/node_demo.py) instead of processes, builds as Jobs; "
                             "slower (images, pod starts, the kubelet's sync)")
    args = parser.parse_args(argv)
    if args.cluster:
        return _cluster(args.broker)
    brokers = ["hivemq", "rabbitmq", "mosquitto", "emqx", "vernemq"] if args.broker == "all" \
        else [args.broker]

    results: list[Results] = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plugforge-demo-")))
        if args.keep_logs:
            stack.callback(_keep_logs, workdir, args.keep_logs)
        # Component logs go to a file; the terminal shows the demo's steps.
        logging.basicConfig(filename=workdir / "components.log", level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        say("Starting the testbed")
        ca = make_ca(workdir / "ca")
        t = time.monotonic()
        cp = start_control_plane(workdir / "kube")
        stack.callback(_stopping("Kubernetes API", cp.stop))
        _started(f"Kubernetes API (kube-apiserver + etcd) at {cp.url}", t)
        t = time.monotonic()
        registry = start_registry(workdir / "registry", ca)
        stack.callback(_stopping("registry", registry.stop))
        _started(f"OCI registry (TLS) at {registry.url}", t)
        t = time.monotonic()
        git = start_git_server(workdir / "git")
        stack.callback(_stopping("git server", git.stop))
        _started(f"Git server at {git.url}", t)
        t = time.monotonic()
        stage = Stage(cp, registry, git, workdir / "stage", say).start()
        stack.callback(_stopping("builder and webhook endpoint", stage.stop))
        _started("manifests/base applied; builder (leader) and webhook endpoint "
                 f"{stage.hooks.url}/webhooks/github", t)

        for broker in brokers:
            t = time.monotonic()
            say(f"Starting a {broker} pod: the broker and the plugforge sidecar")
            rig = RIGS[broker](stage, workdir / broker).start()
            stack.callback(_stopping(f"{broker} pod (sidecar, broker)", rig.stop))
            _started(f"{broker} (pid {rig.pid()}, MQTT on 127.0.0.1:{rig.port}) with its "
                     f"sidecar in {rig.mode} mode", t)
            results.append(run_all(stage, rig, say))
            say(f"All flows passed on {broker}")
        say("Stopping everything and removing the work directory")
    print()
    print(summary(results))
    print()
    print(f"Done in {time.monotonic() - _T0:.0f}s; nothing left running.")
    print()
    print(NEXT_STEPS)
    return 0


def _cluster(broker: str) -> int:
    from testbed import node_demo  # the real node's pieces, only in this mode

    if broker != "all" and broker not in node_demo.BROKERS:
        say(f"--cluster runs {', '.join(node_demo.BROKERS)}; {broker} pods are not in it yet")
        return 2
    logging.basicConfig(level=logging.WARNING)
    results = node_demo.run(list(node_demo.BROKERS) if broker == "all" else [broker], say)
    print()
    print(summary(results))
    print()
    print(f"Done in {time.monotonic() - _T0:.0f}s; the node and everything on it removed.")
    return 0


def _stopping(what: str, stop: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        started = time.monotonic()
        stop()
        say(f"  stopped {what} in {time.monotonic() - started:.1f}s")
    return run


def _keep_logs(workdir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in workdir.rglob("*.log"):
        shutil.copy(log, dest / f"{log.parent.name}-{log.name}")


if __name__ == "__main__":
    raise SystemExit(main())
