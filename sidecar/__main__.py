"""``python -m sidecar --broker mosquitto --config-dir D [--config-dir D2] ...``"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from sidecar.adapters.base import AdapterError
from sidecar.app import Sidecar
from sidecar.desired import SourceError
from sidecar.kube_errors import KubeError
from sidecar.settings import Settings, SettingsError, api_credentials_present, parse_args
from sidecar.state import ApplyEvent


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        sidecar = _build(settings)
        sidecar.start()
        grpc_server = None
        if settings.grpc_address:  # imported only then: grpc costs memory
            from sidecar.grpc_service import serve_configured
            grpc_server = serve_configured(sidecar, settings)
    except (AdapterError, KubeError, SourceError, SettingsError) as e:
        # A setup problem (missing mount, bad kubeconfig, unreadable token): say which, exit 2.
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop.wait()
    if grpc_server is not None:
        grpc_server.stop(grace=2)
    sidecar.stop()
    return 0


def _build(settings: Settings) -> Sidecar:
    sinks: list[Callable[[ApplyEvent], None]] = []
    if settings.pod_name and settings.pod_namespace and api_credentials_present(settings):
        # Imported only where used: file mode without pod identity never needs the API client.
        from sidecar.events import kubernetes_event_sink
        sink = kubernetes_event_sink(settings)
        if sink is not None:
            sinks.append(sink)
    return Sidecar(settings, event_sinks=sinks)


if __name__ == "__main__":
    sys.exit(main())
