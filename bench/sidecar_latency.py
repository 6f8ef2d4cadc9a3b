"""How fast does the sidecar turn a ConfigMap change into a broker admin call, and how much
memory does it hold while idle?

The sidecar runs as its own process (``python -m sidecar``) against a real mosquitto 2.0 with
the dynamic-security plugin. Each update changes one dynsec role ACL; the sidecar's resulting
admin command is answered by the broker on ``$CONTROL/dynamic-security/v1/response``, which
this script also subscribes to (as the dynsec admin). Latency = from the ``..data`` symlink swap
(file mode) or the ConfigMap write returning (API mode, real kube-apiserver) to that response
arriving: read desired state, hash, validate, observe, plan, apply.

Repetitions: --updates (default 200) sequential updates per mode after 5 warm-ups. --debounce
defaults to 0 (the pipeline itself; the sidecar's default debounce of 0.2 s adds to it).
Baseline: the same admin command sent directly (what the broker itself costs).
Idle RSS: VmRSS of the sidecar process 3 s after its last apply. API mode needs the kube
harness (PLUGFORGE_KUBE_HARNESS, built by scripts/test); skip it with --no-api.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))  # bench.report when run as a script

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from sidecar_support import ADMIN, broker_yaml, start_dynsec_broker  # noqa: E402

from bench.report import Metric  # noqa: E402
from sidecar.adapters.mosquitto_dynsec import DynsecAdmin  # noqa: E402
from testbed.configmap_dir import ConfigMapDir  # noqa: E402
from testbed.mosquitto import Mosquitto  # noqa: E402

RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"


def percentile(samples: Sequence[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan


class ResponseWatch:
    """Subscribes to dynsec responses; ``wait_for_add(after)`` returns when an addRoleACL
    response arrives after ``after`` (monotonic)."""

    def __init__(self, broker: Mosquitto) -> None:
        self._cond = threading.Condition()
        self._arrivals: list[float] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watch")
        self.c.username_pw_set(*ADMIN)
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe(RESPONSE_TOPIC, qos=0)
        if not subscribed.wait(10):
            raise RuntimeError("bench could not subscribe to the dynsec response topic")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        responses = json.loads(msg.payload).get("responses", [])
        if any(r.get("command") == "addRoleACL" for r in responses):
            with self._cond:
                self._arrivals.append(now)
                self._cond.notify_all()

    def wait_for_add(self, after: float, timeout: float = 30.0) -> float:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(t >= after for t in self._arrivals), timeout)
            if not ok:
                raise RuntimeError(f"no admin call within {timeout}s of an update")
            arrival = next(t for t in self._arrivals if t >= after)
            self._arrivals = [t for t in self._arrivals if t > arrival]
            return arrival - after

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def config_for(i: int) -> dict[str, str]:
    return {"broker.yaml": broker_yaml({
        "dynsec.role.bench.acls": f"publishClientSend bench/{i} allow"})}


def start_sidecar(broker: Mosquitto, work: Path, debounce: float,
                  source_args: list[str], env: dict[str, str] | None = None,
                  launcher: Sequence[str] = ("-m", "sidecar")) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    password_file = work / "dynsec-password"
    password_file.write_text(ADMIN[1])
    password_file.chmod(0o600)
    argv = [sys.executable, *launcher, "--broker", "mosquitto", *source_args,
            "--adapter-opt", f"host={broker.host}", "--adapter-opt", f"port={broker.port}",
            "--adapter-opt", f"conf_dir={broker.include_dir}",
            "--adapter-opt", f"config_path={broker.conf_path}",
            "--adapter-opt", f"dynsec_username={ADMIN[0]}",
            "--adapter-opt", f"dynsec_password_file={password_file}",
            "--plugin-dir", str(work / "plugins"), "--cache-dir", str(work / "cache"),
            "--http-address", "127.0.0.1:0", "--debounce", str(debounce),
            "--resync-interval", "3600", "--log-level", "WARNING",
            "--allow-unsigned-images"]  # config changes only; images: bench/signing.py
    log = open(work / "sidecar.log", "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def timed_updates(update: Callable[[int], None], watch: ResponseWatch, n: int,
            offset: int) -> list[float]:
    latencies = []
    for i in range(offset, offset + n):
        t0 = time.monotonic()
        update(i)
        latencies.append(watch.wait_for_add(t0))
    return latencies


def run_mode(name: str, broker: Mosquitto, work: Path, updates: int, debounce: float,
             update: Callable[[int], None], source_args: list[str],
             env: dict[str, str] | None = None) -> tuple[list[float], int]:
    watch = ResponseWatch(broker)
    proc = start_sidecar(broker, work, debounce, source_args, env)
    try:
        watch.wait_for_add(0.0, timeout=60)  # the initial apply
        timed_updates(update, watch, 5, 1_000_000)  # warm-up
        samples = timed_updates(update, watch, updates, 0)
        time.sleep(3)
        return samples, rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)
        watch.close()
        print(f"  {name}: done ({len(samples) if 'samples' in locals() else 0} updates)",
              file=sys.stderr)


def baseline(broker: Mosquitto, n: int) -> list[float]:
    admin = DynsecAdmin(broker.host, broker.port, *ADMIN)
    admin.call([{"command": "createRole", "rolename": "baseline"}])
    samples = []
    for i in range(n):
        t0 = time.monotonic()
        admin.call([{"command": "addRoleACL", "rolename": "baseline",
                     "acltype": "publishClientSend", "topic": f"b/{i}", "allow": True}])
        samples.append(time.monotonic() - t0)
    admin.close()
    return samples


Row = tuple[str, list[float], int | None]  # name, latencies (s), idle RSS (KiB)


def collect(root: Path, updates: int, debounce: float, with_api: bool) -> list[Row]:
    rows: list[Row] = []
    # Without TCP_NODELAY the broker's back-to-back responses to this script's watcher wait
    # for its delayed ACKs (~40 ms), which would be measured as sidecar latency.
    broker = start_dynsec_broker(root / "broker", ("set_tcp_nodelay true",))
    try:
        rows.append(("direct dynsec call (baseline)", baseline(broker, updates), None))
        cm = ConfigMapDir(root / "cm")
        cm.update(config_for(-1))
        samples, rss = run_mode("file mode", broker, root / "file", updates, debounce,
                                lambda i: cm.update(config_for(i)),
                                ["--source", "files", "--config-dir", str(cm.path)])
        rows.append(("file mode: ..data swap -> admin call", samples, rss))
        if with_api:
            rows.append(api_mode(broker, root, updates, debounce))
    finally:
        broker.stop()
    return rows


def measure(workdir: Path, quick: bool) -> list[Metric]:
    """For ``bench/run``: p50/p99 per mode against the direct admin call, and idle RSS."""
    from testbed.kube import harness_binary
    from testbed.procs import ServerFailed
    try:
        harness_binary()
        with_api = True
    except ServerFailed:
        with_api = False  # no kube-apiserver harness here: file mode only
    rows = collect(workdir, 30 if quick else 200, 0.0, with_api)
    base = rows[0][1]
    metrics = []
    for name, samples, rss in rows[1:]:
        mode = name.split(":")[0]
        for p in (50, 99):
            metrics.append(Metric(
                "sidecar", f"{mode}: change -> admin call p{p}", "ms",
                percentile(samples, p) * 1e3, baseline=percentile(base, p) * 1e3,
                baseline_name="direct dynsec call", max_value=100.0 if p == 50 else 250.0,
                note=f"{len(samples)} sequential updates, debounce 0"))
        # Same goals as bench/memory.py (issue 10): < 40 MB in file mode, < 60 MB in API mode.
        metrics.append(Metric("sidecar", f"{mode}: idle RSS", "MB", (rss or 0) * 1024 / 1e6,
                              max_value=40.0 if mode == "file mode" else 60.0))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--debounce", type=float, default=0.0)
    parser.add_argument("--no-api", action="store_true", help="skip API mode")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        rows = collect(Path(tmp), args.updates, args.debounce, not args.no_api)
    print(f"\nsidecar latency, {args.updates} sequential updates, debounce {args.debounce:g}s")
    print(f"{'measurement':<44} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'idle RSS MiB':>13}")
    for name, values, idle in rows:
        p50, p99 = percentile(values, 50) * 1e3, percentile(values, 99) * 1e3
        mean = sum(values) / len(values) * 1e3
        shown = f"{idle / 1024:.1f}" if idle else "-"
        print(f"{name:<44} {p50:8.1f} {p99:8.1f} {mean:8.1f} {shown:>13}")
    return 0


def api_mode(broker: Mosquitto, root: Path, updates: int, debounce: float) -> Row:
    from kubernetes import client

    from builder.kube import api_client_from_kubeconfig, apply_documents, load_documents
    from testbed.kube import start_control_plane
    cp = start_control_plane(root / "kube")
    try:
        api = api_client_from_kubeconfig(cp.kubeconfig("admin"))
        apply_documents(api, load_documents([ROOT / "manifests" / "sidecar" / "rbac.yaml"]))
        core = client.CoreV1Api(api)

        def put(i: int) -> None:
            body = client.V1ConfigMap(metadata=client.V1ObjectMeta(
                name="bench", namespace="default"), data=config_for(i))
            if i == -1:
                core.create_namespaced_config_map("default", body)
            else:
                core.replace_namespaced_config_map("bench", "default", body)

        put(-1)
        samples, rss = run_mode("API mode", broker, root / "api", updates, debounce,
                                put, ["--source", "api", "--configmap", "bench",
                                      "--namespace", "default",
                                      "--kubeconfig", str(cp.kubeconfig("sidecar"))])
        return "API mode: ConfigMap write -> admin call", samples, rss
    finally:
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
