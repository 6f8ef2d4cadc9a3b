"""Webhook acknowledgement: 200 concurrent signed GitHub push deliveries (``--quick``: 50)
against the webhook endpoint running in its own process (``bench/webhooks_support.py``: the
builder's endpoint over 10 fixed plugins), sent by ``bench/webhook_ack.py``'s burst through
its Go load generator (``bench/webhook_load``, built on first use into ``$PLUGFORGE_CACHE``;
needs ``go`` >= 1.24): one connection per request, all released at once, so the figures are
the server's and not a Python client's thread starts.

Repetitions: one burst after one warm-up delivery, with a same-size burst of ``GET /healthz``
on the same server just before it as the baseline (HTTP plumbing without verification, parsing
or matching). Reported: p50/p99 acknowledgement latency, deliveries lost (sent minus
acknowledged with 2xx), builds queued after coalescing (ideal: one per plugin).
Goals: p99 < 50 ms; 0 lost.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench import webhook_ack
from bench.report import Metric
from bench.webhooks_support import SECRET, builds_requested, repo_urls

BENCH = "webhooks"
PLUGINS = 10
ROOT = Path(__file__).resolve().parent.parent


def measure(workdir: Path, quick: bool) -> list[Metric]:
    n = 50 if quick else 200
    log = open(workdir / "endpoint.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "bench.webhooks_support", str(PLUGINS)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the webhook endpoint did not start; see {workdir}/endpoint.log")
        port = int(line)
        r = webhook_ack.measure("127.0.0.1", port, n, repo_urls(PLUGINS), SECRET,
                                lambda: builds_requested(port), 2.0)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    base = f"GET /healthz x{n}"
    return [
        Metric(BENCH, f"{n} concurrent deliveries: ack p50", "ms", r["p50"] * 1e3,
               r["base_p50"] * 1e3, base, note=f"statuses {r['statuses']}"),
        Metric(BENCH, f"{n} concurrent deliveries: ack p99", "ms", r["p99"] * 1e3,
               r["base_p99"] * 1e3, base, max_value=50),
        Metric(BENCH, "deliveries lost", "", r["sent"] - r["acknowledged"], max_value=0),
        Metric(BENCH, "builds queued after coalescing", "", r["builds_queued"],
               note=f"ideal {PLUGINS}: one per plugin, for its newest commit"),
    ]
