"""``python -m builder`` serves the push webhooks and Prometheus metrics itself (real apiserver)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from builder_support import ROOT, install, wait_for
from webhooks_support import github_headers

from builder.metrics import BuildMetrics
from builder.settings import SettingsError, parse_settings
from testbed.kube import ControlPlane
from testbed.procs import free_port


def _post(port: int, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/webhooks/github", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_builder_process_serves_webhooks_and_metrics(control_plane: ControlPlane,
                                                     tmp_path: Path) -> None:
    install(control_plane)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "builder.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "--kubeconfig",
             str(control_plane.kubeconfig("builder")), "--lease-name", "webhook-wiring",
             "--state-dir", str(tmp_path / "state"), "--webhook-address", f"127.0.0.1:{port}",
             "--metrics-address", f"127.0.0.1:{metrics_port}",
             "--executor", "process", "--allow-process-executor"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        ping = b'{"zen": "Keep it logically awesome.", "hook_id": 1}'

        def answered() -> int | None:
            try:
                return _post(port, ping, github_headers(ping, None, event="ping"))
            except OSError:
                return None

        # Signatures are checked before anything else, pings included: no plugin's secret
        # verifies these deliveries, so the builder's endpoint refuses both.
        assert wait_for(answered, "the builder's webhook endpoint", timeout=30) == 401
        push = b'{"ref": "refs/heads/main"}'
        assert _post(port, push, github_headers(push, b"not-the-secret")) == 401

        def leading() -> str | None:
            text = _get(metrics_port, "/metrics")
            return text if "plugforge_builder_leader 1" in text else None

        text = wait_for(leading, "the only replica to lead", timeout=30)
        assert "# TYPE plugforge_builder_build_duration_seconds histogram" in text
        assert _get(metrics_port, "/healthz") == "ok\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    assert "serving push webhooks on http://127.0.0.1:" in log.read_text()


@pytest.mark.parametrize("value", ["8080", "host:", ":80", "host:99999", "host:http"])
def test_bad_webhook_address_is_explained(value: str) -> None:
    with pytest.raises(SettingsError, match="expected HOST:PORT"):
        parse_settings([], {"PLUGFORGE_BUILDER_WEBHOOK_ADDRESS": value})
    with pytest.raises(SettingsError, match=r"--metrics-address .*expected HOST:PORT"):
        parse_settings(["--metrics-address", value], {})
    assert parse_settings(["--webhook-address", "[::1]:8080"], {}).webhook_address == (
        "::1", 8080)


def test_build_metrics_render() -> None:
    metrics = BuildMetrics()
    metrics.record("succeeded", "Built", 1.7)
    metrics.record("succeeded", "CacheHit", 0.2, cache_hit=True)
    metrics.record("failed", "BuildFailed", 0.4)
    text = metrics.render(leading=False, queued=3)
    assert 'plugforge_builder_builds_total{result="failed",reason="BuildFailed"} 1' in text
    assert 'plugforge_builder_builds_total{result="succeeded",reason="CacheHit"} 1' in text
    assert "plugforge_builder_cache_hits_total 1" in text
    assert 'plugforge_builder_build_duration_seconds_bucket{le="0.25"} 1' in text
    assert 'plugforge_builder_build_duration_seconds_bucket{le="+Inf"} 3' in text
    assert "plugforge_builder_leader 0" in text
    assert "plugforge_builder_queue_depth 3" in text
