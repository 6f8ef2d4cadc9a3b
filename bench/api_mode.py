"""API mode end to end: a ConfigMap written to a real kube-apiserver -> the change applied in the
broker, through ``python -m sidecar --source api`` (the sidecar's watch, read, validate,
observe, plan, apply) against a real mosquitto 2.0 with dynamic security.

Latency = the ConfigMap ``replace`` returning -> the broker's answer to the sidecar's admin call
(``bench/sidecar_latency.py`` does the driving; this module reports it). Repetitions: 100
sequential updates (``--quick``: 20) after 5 untimed warm-ups, default debounce (0.2 s).
Goal: p99 < 1 s. Also reports the sidecar's idle RSS in API mode (3 s after its last apply; goal
< 60 MB) under "memory", since the apiserver is already running here.

Contrast, documented rather than simulated: a mounted ConfigMap reaches the pod's files after up
to the kubelet's sync period (``syncFrequency``, default 1 min) plus its ConfigMap cache's
propagation delay (watch by default; with the TTL cache strategy the TTL, default 1 min): about
60-120 s with default settings, before any file watcher can react.
"""

from __future__ import annotations

from pathlib import Path

from bench.propagation_support import start_dynsec_broker
from bench.report import Metric, summarize
from bench.sidecar_latency import api_mode

DEBOUNCE = 0.2  # the sidecar's default
KUBELET_NOTE = ("a mounted ConfigMap instead: kubelet syncFrequency (default 60 s) + cache "
                "propagation (watch, or TTL default 60 s) = up to ~60-120 s, documented")


def measure(workdir: Path, quick: bool) -> list[Metric]:
    updates = 20 if quick else 100
    broker = start_dynsec_broker(workdir / "broker", ("set_tcp_nodelay true",))
    try:
        _, samples, rss = api_mode(broker, workdir, updates, DEBOUNCE)
    finally:
        broker.stop()
    s = summarize(samples)
    return [
        Metric("api mode", "ConfigMap write -> applied: p50", "ms", s.p50 * 1e3,
               note=f"{updates} updates, debounce {DEBOUNCE:g}s; {KUBELET_NOTE}"),
        Metric("api mode", "ConfigMap write -> applied: p99", "ms", s.p99 * 1e3,
               max_value=1000),
        Metric("memory", "sidecar idle RSS, API mode", "MB", (rss or 0) * 1024 / 1e6,
               max_value=60, note="VmRSS 3 s after the last apply; the sidecar's own "
               "urllib3 watch (sidecar/kube_http.py), not the kubernetes package"),
    ]
