"""The plugforge demo: start the embedded testbed and show where everything listens.

Run through ``scripts/demo``, which installs what it needs first. The full flow (build a plugin
from Git, roll it out, apply ConfigMap edits live) grows here as the builder and sidecar land.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from testbed.certs import make_ca
from testbed.gitserver import start_git_server
from testbed.kube import start_control_plane
from testbed.registry import start_registry


def _step(message: str) -> float:
    print(f"==> {message}", flush=True)
    return time.monotonic()


def _done(started: float) -> None:
    print(f"    ready in {time.monotonic() - started:.1f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    parser.add_argument("--once", action="store_true",
                        help="stop everything right after printing where it listens")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plugforge-demo-")))
        ca = make_ca(workdir / "ca")

        t = _step("Starting Kubernetes control plane (kube-apiserver + etcd)")
        cp = start_control_plane(workdir / "kube")
        stack.callback(cp.stop)
        _done(t)

        t = _step("Starting OCI registry (TLS)")
        registry = start_registry(workdir / "registry", ca)
        stack.callback(registry.stop)
        _done(t)

        t = _step("Starting Git server (smart HTTP)")
        git = start_git_server(workdir / "git")
        stack.callback(git.stop)
        _done(t)

        rows = [
            ("Kubernetes API", cp.url, f"KUBECONFIG={cp.kubeconfig('admin')}"),
            ("OCI registry", registry.url, f"CA: {ca.cert}"),
            ("Git server", git.url, "repositories: create with git init --bare under "
             f"{git.root}"),
        ]
        width = max(len(r[0]) for r in rows)
        print()
        for name, url, note in rows:
            print(f"  {name:<{width}}  {url:<28}  {note}")
        print()
        if args.once:
            return 0
        print("Everything runs until you press Ctrl-C; then it is stopped and removed.")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nStopping.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
