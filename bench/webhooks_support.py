"""``python -m bench.webhooks_support PLUGINS``: the webhook endpoint in its own process, as the
builder runs it, over a fixed list of PLUGINS plugins following
``https://git.example/bench/plugin-<i>.git`` at main (secret ``SECRET``); build requests are
counted where they are handed off (``GET /webhooks/stats``). Prints the port, then serves until
SIGTERM."""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
from collections.abc import Sequence

from builder.webhooks import service
from builder.webhooks.matching import PluginSource, SecretRef

SECRET = b"bench-secret"


def repo_urls(plugins: int) -> list[str]:
    return [f"https://git.example/bench/plugin-{i}.git" for i in range(plugins)]


class FixedPlugins:
    def __init__(self, plugins: int) -> None:
        self._plugins = [PluginSource("bench", f"plugin-{i}", f"uid-{i}", url, "main", ".", None,
                                      True, SecretRef("bench", "hook", "secret"))
                         for i, url in enumerate(repo_urls(plugins))]

    def plugins(self) -> Sequence[PluginSource]:
        return self._plugins

    def secret(self, ref: SecretRef) -> bytes | None:
        return SECRET


def builds_requested(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/webhooks/stats")
        return int(json.loads(conn.getresponse().read()).get("builds_requested", 0))
    finally:
        conn.close()


def main(argv: Sequence[str]) -> None:
    handed: list[object] = []
    hooks = service.start(FixedPlugins(int(argv[0])), handed.append,
                          service.WebhookSettings(quiet_seconds=1.0))
    print(hooks.server.port, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    hooks.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
