"""``python -m builder.webhooks``: run the webhook endpoint on its own (the builder embeds it)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from builder.kube import Kube
from builder.webhooks.server import ServerSettings
from builder.webhooks.service import WebhookSettings, start_with_kube


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m builder.webhooks", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="kubeconfig of the builder identity (default: in-cluster)")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a service endpoint
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--quiet-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kube = Kube.from_kubeconfig(args.kubeconfig)
    hooks = start_with_kube(kube, WebhookSettings(
        server=ServerSettings(host=args.host, port=args.port), quiet_seconds=args.quiet_seconds))
    print(f"listening on {hooks.server.settings.host}:{hooks.server.port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    hooks.stop()
    kube.close()


if __name__ == "__main__":
    main()
