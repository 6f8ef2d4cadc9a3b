"""Rollout at fan-out: image pushed → every pod applied, for N = 1, 10, 50 broker pods.

Real components on this machine: the real kube-apiserver, registry, git server and builder;
N Pods created through the apiserver with the status a kubelet writes (Ready at 127.12.x.y),
and behind each pod IP a real mosquitto 2.0 (dynamic security) with a real sidecar (API mode,
gRPC over TLS + token, in this process — the last pod's as its own ``python -m sidecar``
process, whose RSS is read after the rollout; a supervisor restarts brokers like a kubelet).

Per N, once: a BrokerPlugin selecting the N pods (canary on: 1 pod, then waves of 25%) rolls
v1 out (warm-up: first pull on every pod), then a push of v2 is built, and we time from the
moment the builder records the build Succeeded (the image is pushed) to the moment the rollout
is Complete and every sidecar runs the v2 digest. One MQTT client per broker stays connected
during it: mosquitto loads plugins only at start, so a plugin change restarts each broker and
its clients reconnect (reported; hot config changes through dynsec keep clients, bench
``hot-swap``). Memory: the sidecar process's RSS (goal < 60 MB in API mode, as ``memory``),
the in-process sidecars' share of this process's RSS, and each mosquitto's RSS. Growth:
t = a·N^k fitted on the points (least squares in log-log). Quick mode: N = 1 and 10.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from builder_support import (  # noqa: E402
    Cluster,
    broker_plugin,
    fast_settings,
    install,
    scaffold_repo,
    templates_in_use,
    tenant_namespace,
    wait_for,
)
from grpc_support import SIDECAR_TOKEN  # noqa: E402
from mqtt_support import Client  # noqa: E402

from bench.report import Metric  # noqa: E402
from builder.app import Builder  # noqa: E402
from testbed.broker_pods import (  # noqa: E402
    BrokerPod,
    PodObjects,
    free_port_on,
    pod_ip,
    start_broker_pod,
)
from testbed.certs import make_ca  # noqa: E402
from testbed.gitserver import run_git, start_git_server  # noqa: E402
from testbed.kube import ControlPlane, start_control_plane  # noqa: E402
from testbed.registry import start_registry  # noqa: E402

GOAL_SECONDS_AT_50 = 10.0
PROBE_PASSWORD = "pw"  # noqa: S105  # the test brokers' probe user, mounted as a Secret key
CONFIGMAP = "mq-plugins"
PLUGIN = "gate"
PROBES = [{"name": "mallory-refused", "action": "connect", "username": "mallory",
           "expect": "refused"},
          {"name": "alice-accepted", "action": "connect", "username": "alice",
           "passwordFrom": {"secret": "probe-creds", "key": "alice"}, "expect": "accepted"}]


def rss_mb(pid: str | int = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fit_exponent(points: list[tuple[int, float]]) -> float:
    """k of t = a·N^k by least squares on log-log (nan with fewer than 2 points)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(max(t, 1e-6)) for _, t in points]
    if len(points) < 2:
        return math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)


def push_deny(repo: Path, url: str, users: str) -> str:
    path = next((repo / "src").glob("*.c"))
    text = path.read_text()
    start = text.index("#define DEFAULT_DENY_USERS")
    end = text.index("\n", start)
    path.write_text(text[:start] + f'#define DEFAULT_DENY_USERS "{users}"' + text[end:])
    run_git(repo, "commit", "-qam", f"deny {users}")
    run_git(repo, "push", "-q", url, "HEAD:main")
    return run_git(repo, "rev-parse", "HEAD")


def one_n(n: int, cp: ControlPlane, stage: dict[str, Any], work: Path) -> dict[str, float]:
    c = Cluster(cp, tenant_namespace(cp, f"fan{n}"))
    c.grant_sidecar_rights()
    c.create_configmap(CONFIGMAP, {})
    objects = PodObjects(cp, c.ns)
    ips = [pod_ip(i, subnet=12) for i in range(n)]
    port = free_port_on(ips)
    pair = stage["ca"].issue(f"sidecar-{c.ns}", sans=(f"*.{c.ns}.svc",))
    rss_before = rss_mb()
    rigs: list[BrokerPod] = []
    clients: list[Client] = []
    try:
        started = time.monotonic()
        for i, ip in enumerate(ips):
            name = f"mq-{i}"
            objects.create(name, {"app": "mq"}, statefulset="mq")
            rigs.append(start_broker_pod(
                name, ip, port, work / f"n{n}" / name, cp=cp, namespace=c.ns,
                configmap=CONFIGMAP, registry_ca=stage["registry"].ca.cert,
                token=SIDECAR_TOKEN, tls=(pair.cert, pair.key),
                probe_secrets={"probe-creds": {"alice": PROBE_PASSWORD}},
                ca=stage["ca"].cert, process=i == n - 1))
            objects.set_status(name, ip, True)
        print(f"    N={n}: {n} pods up in {time.monotonic() - started:.0f}s", flush=True)
        url = stage["git"].create_repo(f"{c.ns}/{PLUGIN}.git")
        repo = scaffold_repo(work / f"n{n}" / "src", "mosquitto-c", "mosquitto", PLUGIN, url)
        c.create("brokerplugins", broker_plugin(
            PLUGIN, url=url, repository=f"{stage['registry'].host}/plugins/{c.ns}-{PLUGIN}",
            configmap=None, probes=PROBES,
            target={"configMap": CONFIGMAP, "selector": {"matchLabels": {"app": "mq"}},
                    "sidecarPort": port,
                    "strategy": {"canary": {"count": 1, "probeTimeoutSeconds": 120},
                                 "waves": {"maxUnavailable": "25%",
                                           "podTimeoutSeconds": 120}}}))

        def status() -> dict[str, Any]:
            return dict(c.plugin(PLUGIN).get("status") or {})

        wait_for(lambda: (status().get("rollout") or {}).get("phase") == "Complete",
                 "v1 rolled out (warm-up)", timeout=600)
        clients = [Client(r.broker.port, "alice", password=PROBE_PASSWORD) for r in rigs]
        restarts = sum(r.supervisor.restarts for r in rigs)
        commit = push_deny(repo, url, "mallory,eve")

        def pushed() -> bool:
            latest = status().get("latestBuild") or {}
            return latest.get("commit") == commit and latest.get("phase") == "Succeeded"

        wait_for(pushed, "v2 built and pushed", timeout=300, interval=0.02)
        t0 = time.monotonic()
        digest = ""

        def applied() -> bool:
            nonlocal digest
            rollout = status().get("rollout") or {}
            digest = str(rollout.get("digest") or "")
            return rollout.get("commit") == commit and rollout.get("phase") == "Complete" and \
                all(r.plugin_digest(PLUGIN) == digest for r in rigs)

        wait_for(applied, "v2 on every pod", timeout=600, interval=0.02)
        seconds = time.monotonic() - t0
        rollout = status()["rollout"]
        return {"seconds": seconds, "waves": float(rollout.get("wave") or 0),
                "disconnects": float(sum(1 for cl in clients if cl.disconnected)),
                "restarts": float(sum(r.supervisor.restarts for r in rigs) - restarts),
                "sidecar_mb": (rss_mb() - rss_before) / max(1, n - 1),
                "process_mb": next(rss_mb(r.process.pid) for r in rigs if r.process),
                "mosquitto_mb": sum(rss_mb(r.broker.pid) for r in rigs) / n}
    finally:
        for client in clients:
            client.close()
        for rig in rigs:
            rig.stop()


def measure(workdir: Path, quick: bool, sizes: list[int] | None = None) -> list[Metric]:
    sizes = sizes or ([1, 10] if quick else [1, 10, 50])
    ca = make_ca(workdir / "ca")
    cp = start_control_plane(workdir / "kube")
    registry = start_registry(workdir / "registry", ca)
    git = start_git_server(workdir / "git")
    stage = {"ca": ca, "registry": registry, "git": git}
    results: dict[int, dict[str, float]] = {}
    try:
        install(cp)
        state = workdir / "builder"
        state.mkdir()
        (state / "sidecar.token").write_text(SIDECAR_TOKEN + "\n")
        with templates_in_use(workdir / "templates", slow_seconds=1):
            settings = fast_settings(cp, registry.ca.cert, "bench-rollout",
                                     f"bench-{uuid.uuid4().hex[:6]}", state,
                                     watch_namespace="default",
                                     sidecar_token_file=state / "sidecar.token",
                                     sidecar_ca=ca.cert).with_(watch_namespace=None)
            builder = Builder(settings)
            builder.start()
            try:
                wait_for(lambda: builder.leading, "the builder to lead")
                for n in sizes:
                    results[n] = one_n(n, cp, stage, workdir)
                    r = results[n]
                    print(f"    N={n}: pushed -> all applied {r['seconds']:.2f}s in "
                          f"{r['waves']:.0f} waves; disconnects {r['disconnects']:.0f}/{n}",
                          flush=True)
            finally:
                builder.stop()
    finally:
        git.stop()
        registry.stop()
        cp.stop()
    k = fit_exponent([(n, r["seconds"]) for n, r in results.items()])
    metrics = []
    for n, r in results.items():
        metrics.append(Metric(
            "rollout-scale", f"N={n}: image pushed -> all pods applied (canary on)", "s",
            r["seconds"], max_value=GOAL_SECONDS_AT_50 if n == 50 else None,
            note=f"{r['waves']:.0f} waves (canary 1, then 25%); mosquitto restarts for a "
                 f"plugin: {r['restarts']:.0f} restarts, {r['disconnects']:.0f} of {n} "
                 f"connected clients disconnected"))
        metrics.append(Metric(
            "rollout-scale", f"N={n}: sidecar RSS (own process) after the rollout", "MB",
            r["process_mb"], max_value=60,
            note=f"API mode, the last pod's sidecar; the others in-process add "
                 f"{r['sidecar_mb']:.1f} MB each to the bench; mosquitto "
                 f"{r['mosquitto_mb']:.1f} MB"))
    metrics.append(Metric("rollout-scale", "fitted growth t = a*N^k: k", "", k,
                          note="k <= 1: no worse than linear in the pods"))
    return metrics
