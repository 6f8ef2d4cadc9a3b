"""Resident memory: the sidecar (``python -m sidecar --source files``, its own process) beside
the real configmap-reload (built from ``shared/peers/``), both watching the same
atomic-writer directory against a real mosquitto 2.0 with dynamic security.

- idle RSS: VmRSS 3 s after the initial apply (goal < 40 MB for file mode);
- after 10,000 applies (``--quick``: 1,000), each update waited for (the broker's answer to the
  sidecar's admin call) before the next, debounce 0, so every update is one apply: RSS 3 s
  after the last, and the growth from apply 1,000 (``--quick``: 100) to the end, which leaves
  out one-time warm-up (lazily imported code paths, allocator arenas). Goal: growth <= 1 MB.
The peer's RSS is read at the same moments. API mode's idle RSS is reported by ``api-mode``
(it has the apiserver running). VmRSS includes the interpreter: a bare ``python3 -c`` with
nothing imported is measured too, as the floor any Python sidecar pays.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.propagation_support import (
    ADMIN,
    DynsecResponses,
    WebhookReceiver,
    peer,
    rss_kib,
    start_dynsec_broker,
)
from bench.report import Metric
from bench.sidecar_latency import config_for, start_sidecar
from testbed.configmap_dir import ConfigMapDir
from testbed.procs import free_port

BENCH = "memory"
SETTLE = 3.0


def measure(workdir: Path, quick: bool) -> list[Metric]:
    applies = 1_000 if quick else 10_000
    checkpoint = applies // 10
    the_peer = peer()
    broker = start_dynsec_broker(workdir / "broker", ("set_tcp_nodelay true",))
    cm = ConfigMapDir(workdir / "cm")
    cm.update(config_for(-1))
    receiver = WebhookReceiver()
    responses = DynsecResponses(broker.host, broker.port, *ADMIN)
    peer_log = open(workdir / "peer.log", "wb")  # noqa: SIM115 - closed below
    peer_proc = subprocess.Popen([str(the_peer.binary), f"--volume-dir={cm.path}",
                                  f"--webhook-url={receiver.url}",
                                  f"--web.listen-address=127.0.0.1:{free_port()}"],
                                 stdout=peer_log, stderr=subprocess.STDOUT)
    sidecar = start_sidecar(broker, workdir / "sidecar", 0.0,
                            ["--source", "files", "--config-dir", str(cm.path)])
    try:
        if not responses.arrivals.wait_after(0.0, 60):
            raise RuntimeError(f"the sidecar made no initial apply; see {workdir}/sidecar")
        time.sleep(SETTLE)
        idle = rss_kib(sidecar.pid), rss_kib(peer_proc.pid)
        floor = _bare_python_rss()
        at_checkpoint = (0, 0)
        started = time.monotonic()
        for i in range(applies):
            t0 = time.monotonic()
            cm.update(config_for(i))
            if not responses.arrivals.wait_after(t0, 30):
                raise RuntimeError(f"update {i}: no apply within 30 s")
            if i + 1 == checkpoint:
                at_checkpoint = rss_kib(sidecar.pid), rss_kib(peer_proc.pid)
        elapsed = time.monotonic() - started
        time.sleep(SETTLE)
        after = rss_kib(sidecar.pid), rss_kib(peer_proc.pid)
        webhooks = receiver.arrivals.count()
    finally:
        for proc in (sidecar, peer_proc):
            proc.terminate()
            proc.wait(10)
        peer_log.close()
        responses.close()
        receiver.stop()
        broker.stop()

    def mb(kib: int) -> float:
        return kib * 1024 / 1e6

    name = the_peer.label
    return [
        Metric(BENCH, "sidecar idle RSS, file mode", "MB", mb(idle[0]), mb(idle[1]), name,
               max_value=40, note=f"bare python3 interpreter: {mb(floor):.1f} MB"),
        Metric(BENCH, f"sidecar RSS after {applies:,} applies", "MB", mb(after[0]),
               mb(after[1]), name,
               note=f"{applies:,} applies in {elapsed:.0f}s; peer got {webhooks:,} webhooks"),
        Metric(BENCH, f"RSS growth, apply {checkpoint:,} -> {applies:,}", "MB",
               mb(after[0] - at_checkpoint[0]), mb(after[1] - at_checkpoint[1]), name,
               max_value=1.0),
    ]


def _bare_python_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(1.0)
        return rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
