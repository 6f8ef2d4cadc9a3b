"""The builder with 100 / 1,000 / 10,000 BrokerPlugins in a real kube-apiserver, as curves.

State measured: **idle** — every plugin's status is already current (observedGeneration,
lastRequest = (generation, the ref's commit), currentImage, Built/Ready/Webhook conditions),
one Succeeded PluginBuild each, and its release already in its target ConfigMap, so a
reconcile decides "nothing to do" after doing all its reads (no builds run). Layout, per N:
10 tenant namespaces with the builder's tenant RBAC, one webhook Secret each, one ConfigMap per
50 plugins (a broker cluster), one git repository per namespace on the real git server (a
monorepo: plugin i builds ``plugins/p<i>``).

The builder runs as its own process (``python -m bench.builder_scale --serve``: the real
``builder.app.Builder`` with its webhook endpoint, as the builder identity with the shipped
RBAC); its ``Controller.reconcile`` is wrapped to record when each key finished. Figures:
- start → every plugin reconciled (process start, Lease, list, N reconciles), and the builder
  process's CPU seconds until then;
- RSS after that (VmRSS) and the peak (VmHWM);
- a full resync (list + N reconciles, each re-resolving its ref as at a period's expiry): wall
  seconds and builder CPU seconds;
- event → reconcile: a BrokerPlugin annotation patch → that key's reconcile finished (p50, p99
  of 20); baseline: the same patch → seen by a plain watch of this process (the apiserver's
  own delivery);
- one push matched and acked: a signed GitHub push for one plugin's path, sequentially, dial
  → 202 with that plugin queued (p50, p99 of 100; 40 in --quick). Each queued push becomes a
  PluginBuild of an unknown commit that fails UnknownRef a second later: the background load.
Goals at 10,000: RSS < 300 MB, full reconcile < 60 s, push acked p99 < 50 ms. The growth
exponent k fits time ∝ N^k between the smallest and largest N (1 = linear).
--quick: N = 100, 1,000.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from builder_support import install, tenant_namespace  # noqa: E402
from webhooks_support import Commit, Push, encode, github_headers, github_push  # noqa: E402

from bench.report import Metric, summarize  # noqa: E402
from builder.controller import build_name  # noqa: E402
from builder.resources import parse_plugin, rfc3339, set_condition  # noqa: E402
from builder.rollout import ownership  # noqa: E402
from builder.rollout.configmap import current_release  # noqa: E402
from plugforge.contract import plugin_key, render_plugin_release  # noqa: E402
from testbed.gitserver import GitServer, run_git, start_git_server  # noqa: E402
from testbed.kube import ControlPlane, start_control_plane  # noqa: E402

NAMESPACES = 10
PER_CONFIGMAP = 50
SECRET_NAME = "github-hook"  # noqa: S105 - a Secret's name
WEBHOOK_SECRET = "b3f1" * 16
IMAGE_REPO = "registry.invalid/plugins"
GOAL_RSS_MB = 300.0
GOAL_RECONCILE_S = 60.0
GOAL_ACK_P99_MS = 50.0
Obj = dict[str, Any]


# --- the builder process ----------------------------------------------------------------------


class Recorder:
    """When each key's latest reconcile started and ended (monotonic), for the parent's waits."""

    def __init__(self, real: Callable[[str], float | None]) -> None:
        self.real = real
        self.started: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.cond = threading.Condition()

    def reconcile(self, key: str) -> float | None:
        begin = time.monotonic()
        try:
            return self.real(key)
        finally:
            with self.cond:
                self.started[key], self.done[key] = begin, time.monotonic()
                self.cond.notify_all()

    def wait_all(self, n: int, after: float, timeout: float) -> Obj:
        def since() -> list[float]:
            return [self.done[k] for k, t in self.started.items() if t >= after]

        with self.cond:
            self.cond.wait_for(lambda: len(since()) >= n, timeout)
            ends = since()
        return {"count": len(ends), "last": max(ends, default=math.nan)}

    def wait_key(self, key: str, after: float, timeout: float) -> Obj:
        with self.cond:
            ok = self.cond.wait_for(lambda: self.started.get(key, -1.0) >= after, timeout)
            return {"end": self.done[key] if ok else math.nan,
                    "took": self.done[key] - self.started[key] if ok else math.nan}

    def profile(self, keys: Sequence[str]) -> Obj:
        """cProfile of reconciles run here, one after another (``BENCH_PROFILE=1``)."""
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        t0 = time.monotonic()
        for key in keys:
            prof.runcall(self.real, key)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
        return {"seconds": time.monotonic() - t0, "stats": out.getvalue()}


def serve(config: Path) -> None:
    """Child process: the real builder, its reconciles recorded; commands on stdin."""
    import logging

    from builder.app import Builder
    from builder.controller import _enqueue_for
    from builder.kube import PLUGINS
    from builder.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    cfg = json.loads(config.read_text())
    settings = Settings(
        kubeconfig=Path(cfg["kubeconfig"]), lease_name="bench", identity="bench-builder",
        state_dir=Path(cfg["state_dir"]), workers=2, resync_seconds=3600.0,
        webhook_address=("127.0.0.1", 0), lease_duration_seconds=15, lease_renew_seconds=5,
        executor="process", allow_process_executor=True)  # measures reconciles, not builds
    builder = Builder(settings)
    recorder = Recorder(builder.controller.reconcile)
    builder.controller.reconcile = recorder.reconcile  # type: ignore[method-assign]
    builder.start()
    while builder.webhook_url is None:
        time.sleep(0.01)
    print(json.dumps({"webhook": builder.webhook_url}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        after, timeout = float(cmd.get("after", 0.0)), float(cmd.get("timeout", 600))
        if cmd["op"] == "resync":  # the resync loop's body, as when the period expires
            builder.controller.resolved.clear()
            reply: Obj = {"at": time.monotonic()}
            items, _ = builder.kube.list_plugins()
            for obj in items:
                _enqueue_for(builder.controller.queue, PLUGINS, obj)
        elif cmd["op"] == "wait_all":
            reply = recorder.wait_all(int(cmd["n"]), after, timeout)
        elif cmd["op"] == "wait_key":
            reply = recorder.wait_key(str(cmd["key"]), after, timeout)
        elif cmd["op"] == "profile":
            reply = recorder.profile(cmd["keys"])
        else:
            break
        print(json.dumps(reply), flush=True)
    builder.stop()


class BuilderProcess:
    def __init__(self, cp: ControlPlane, work: Path) -> None:
        config = work / "builder.json"
        config.write_text(json.dumps({"kubeconfig": str(cp.kubeconfig("builder")),
                                      "state_dir": str(work / "state")}))
        self.log = open(work / "builder.log", "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.builder_scale", "--serve", str(config)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.webhook = str(self._read()["webhook"])

    def _read(self) -> Obj:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the builder process ended (exit {self.proc.wait()}); see "
                               f"{self.log.name}")
        reply: Obj = json.loads(line)
        return reply

    def ask(self, **cmd: Any) -> Obj:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def status_kib(self, field: str) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
        return math.nan

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- populating the apiserver -----------------------------------------------------------------


class Api:
    """Keep-alive HTTPS to the apiserver as admin, one connection per thread (setup only)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.ctx = ssl.create_default_context(cafile=str(cp.ca.cert))
        self.local = threading.local()
        self.token = cp.identities["admin"].token

    def call(self, method: str, path: str, body: Obj | None = None,
             content_type: str = "application/json") -> Obj:
        for attempt in range(5):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPSConnection(
                    self.cp.host, self.cp.port, context=self.ctx, timeout=60)
            try:
                conn.request(method, path, body=json.dumps(body) if body is not None else None,
                             headers={"Authorization": f"Bearer {self.token}",
                                      "Content-Type": content_type})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                time.sleep(0.2 * (attempt + 1))
                continue
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
            out: Obj = json.loads(data or b"{}")
            return out
        raise RuntimeError(f"{method} {path}: apiserver unreachable")


def _parallel(fn: Callable[[Any], object], items: Iterable[Any], threads: int = 6) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, items):
            pass


class Layout:
    """Where plugin i lives and what its idle state is."""

    def __init__(self, n: int, namespaces: Sequence[str], repos: Sequence[str],
                 commits: Sequence[str]) -> None:
        self.n = n
        self.namespaces = namespaces
        self.repos = repos
        self.commits = commits

    def ns(self, i: int) -> int:
        return i % len(self.namespaces)

    def name(self, i: int) -> str:
        return f"p{i:05d}"

    def key(self, i: int) -> str:
        return f"{self.namespaces[self.ns(i)]}/{self.name(i)}"

    def configmap(self, i: int) -> str:
        return f"brokers-{(i // len(self.namespaces)) // PER_CONFIGMAP:03d}"

    def plugin(self, i: int) -> Obj:
        return {
            "apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
            "metadata": {"name": self.name(i), "namespace": self.namespaces[self.ns(i)]},
            "spec": {"broker": "mosquitto",
                     "source": {"git": {"url": self.repos[self.ns(i)], "ref": "main",
                                        "path": f"plugins/{self.name(i)}"}},
                     "image": {"repository": f"{IMAGE_REPO}/{self.name(i)}"},
                     "target": {"configMap": self.configmap(i)},
                     "webhook": {"secretRef": {"name": SECRET_NAME}}},
        }

    def image(self, i: int) -> str:
        return f"{IMAGE_REPO}/{self.name(i)}@sha256:{i:064x}"

    def build(self, i: int) -> str:
        return build_name(self.name(i), 1, self.commits[self.ns(i)])

    def release_text(self, i: int) -> str:
        spec = parse_plugin({**self.plugin(i), "metadata": {
            **self.plugin(i)["metadata"], "uid": "x", "generation": 1}})
        return render_plugin_release(current_release(
            spec, self.name(i), self.image(i), self.commits[self.ns(i)], self.build(i)))

    def status(self, i: int) -> Obj:
        commit, stamp = self.commits[self.ns(i)], rfc3339(_now())
        ns = self.namespaces[self.ns(i)]
        conditions: list[Obj] = []
        for kind, reason, message in (
                ("Built", "BuildSucceeded", f"{self.build(i)}: {self.image(i)}"),
                ("Ready", "RolledOut", f"{self.image(i)} written to ConfigMap "
                                       f"{self.configmap(i)}"),
                ("Webhook", "SecretReady", f"deliveries signed with Secret {ns}/{SECRET_NAME} "
                                           "key 'secret' (webhook.secretRef) are accepted")):
            conditions = set_condition(conditions, kind, "True", reason, message, stamp, 1)
        return {"observedGeneration": 1, "conditions": conditions,
                "lastRequest": {"generation": 1, "commit": commit},
                "latestBuild": {"name": self.build(i), "phase": "Succeeded", "commit": commit,
                                "image": self.image(i), "digest": self.image(i).split("@")[1],
                                "finishedAt": stamp},
                "currentImage": self.image(i), "currentCommit": commit,
                "currentBuild": self.build(i), "currentTarget": self.configmap(i),
                "currentPluginName": self.name(i)}


def _now() -> Any:
    from datetime import UTC, datetime
    return datetime.now(UTC)


def populate(api: Api, layout: Layout) -> None:
    """Secrets, ConfigMaps with every release, BrokerPlugins with current status, builds."""
    group = "/apis/plugforge.dev/v1alpha1/namespaces"
    for ns in layout.namespaces:
        api.call("POST", f"/api/v1/namespaces/{ns}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET_NAME}, "stringData": {"secret": WEBHOOK_SECRET}})
    configmaps: dict[tuple[str, str], list[int]] = {}
    for i in range(layout.n):
        configmaps.setdefault((layout.namespaces[layout.ns(i)], layout.configmap(i)),
                              []).append(i)

    def make_configmap(item: tuple[tuple[str, str], list[int]]) -> None:
        (ns, name), members = item
        owners = {plugin_key(layout.name(i)): layout.name(i) for i in members}
        data = {plugin_key(layout.name(i)): layout.release_text(i) for i in members}
        # As the builder leaves it: owners and the fingerprints of its own writes recorded.
        annotations = ownership.annotate_written(ownership.annotate({}, owners), {
            key: ownership.fingerprint(text) for key, text in data.items()})
        api.call("POST", f"/api/v1/namespaces/{ns}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "annotations": annotations}, "data": data})

    _parallel(make_configmap, configmaps.items())

    def make_plugin(i: int) -> None:
        ns, name = layout.namespaces[layout.ns(i)], layout.name(i)
        created = api.call("POST", f"{group}/{ns}/brokerplugins", layout.plugin(i))
        api.call("PATCH", f"{group}/{ns}/brokerplugins/{name}/status",
                 {"status": layout.status(i)}, "application/merge-patch+json")
        build = api.call("POST", f"{group}/{ns}/pluginbuilds", {
            "apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
            "metadata": {"name": layout.build(i), "labels": {"plugforge.dev/plugin": name},
                         "ownerReferences": [{
                             "apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
                             "name": name, "uid": created["metadata"]["uid"]}]},
            "spec": {"plugin": name, "pluginGeneration": 1,
                     "commit": layout.commits[layout.ns(i)],
                     "trigger": {"type": "ResourceChange", "user": "plugforge-builder"}}})
        stamp = rfc3339(_now())
        api.call("PATCH", f"{group}/{ns}/pluginbuilds/{build['metadata']['name']}/status",
                 {"status": {"phase": "Succeeded", "reason": "BuildSucceeded",
                             "commit": layout.commits[layout.ns(i)], "image": layout.image(i),
                             "digest": layout.image(i).split("@")[1], "startedAt": stamp,
                             "finishedAt": stamp, "attempts": 1}},
                 "application/merge-patch+json")

    _parallel(make_plugin, range(layout.n))


def make_repos(git: GitServer, work: Path, count: int) -> tuple[list[str], list[str]]:
    urls, commits = [], []
    for r in range(count):
        url = git.create_repo(f"tenant{r}/plugins.git")
        repo = work / f"repo{r}"
        repo.mkdir(parents=True)
        run_git(repo, "init", "-q", "-b", "main")
        (repo / "README").write_text(f"tenant {r}\n")
        run_git(repo, "add", "README")
        run_git(repo, "-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-q", "-m",
                "init")
        run_git(repo, "push", "-q", url, "main")
        urls.append(url)
        commits.append(run_git(repo, "rev-parse", "HEAD").strip())
    return urls, commits


# --- measuring ---------------------------------------------------------------------------------


class EventWatch:
    """A plain watch on BrokerPlugins (raw HTTP, this process): when each ``bench/touch``
    annotation arrived. The baseline for event → reconcile: the apiserver's own delivery."""

    def __init__(self, api: Api) -> None:
        self.arrivals: dict[str, float] = {}
        self.cond = threading.Condition()
        version = api.call("GET", "/apis/plugforge.dev/v1alpha1/brokerplugins?limit=1")[
            "metadata"]["resourceVersion"]
        self.conn = http.client.HTTPSConnection(api.cp.host, api.cp.port, context=api.ctx,
                                                timeout=600)
        self.conn.request("GET", "/apis/plugforge.dev/v1alpha1/brokerplugins?watch=1&"
                          f"resourceVersion={version}&allowWatchBookmarks=true",
                          headers={"Authorization": f"Bearer {api.token}"})
        self.resp = self.conn.getresponse()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                now = time.monotonic()
                obj = json.loads(line).get("object") or {}
                touch = ((obj.get("metadata") or {}).get("annotations") or {}).get("bench/touch")
                if touch is not None:
                    with self.cond:
                        self.arrivals.setdefault(touch, now)
                        self.cond.notify_all()
        except (OSError, ValueError, http.client.HTTPException, AttributeError):
            return  # AttributeError: http.client, when ``close`` ends the read under it

    def wait(self, touch: str, timeout: float = 60.0) -> float:
        with self.cond:
            self.cond.wait_for(lambda: touch in self.arrivals, timeout)
            return self.arrivals.get(touch, math.nan)

    def close(self) -> None:
        self.conn.close()


def push_ack(url: str, layout: Layout, i: int, n: int) -> tuple[float, bool]:
    """One signed push touching plugin i's path; (seconds, plugin i queued)."""
    parts = urllib.parse.urlsplit(layout.repos[layout.ns(i)])
    owner, repo = parts.path.strip("/").removesuffix(".git").split("/", 1)
    after = f"{0xbe00000 + n:040x}"
    push = Push(host=parts.netloc, owner=owner, repo=repo, ref="refs/heads/main",
                before=layout.commits[layout.ns(i)], after=after, scheme=parts.scheme,
                commits=[Commit(after, modified=[f"plugins/{layout.name(i)}/src/plugin.c"])])
    body = encode(github_push(push))
    headers = github_headers(body, WEBHOOK_SECRET.encode(), delivery=f"scale-{n}-{time.time_ns()}")
    target = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
    try:
        conn.request("POST", "/webhooks/github", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - started
    queued = [q["plugin"] for q in json.loads(data or b"{}").get("queued", [])]
    return seconds, resp.status == 202 and layout.key(i) in queued


def healthz(url: str) -> float:
    target = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    finally:
        conn.close()
    return time.perf_counter() - started


def measure_n(workdir: Path, n: int, pushes: int) -> dict[str, float]:
    work = workdir / f"n{n}"
    work.mkdir(parents=True)
    cp = start_control_plane(work / "kube")
    git = start_git_server(work / "git")
    builder: BuilderProcess | None = None
    try:
        install(cp)
        namespaces = [tenant_namespace(cp, prefix=f"scale{k}") for k in range(NAMESPACES)]
        repos, commits = make_repos(git, work / "repos", NAMESPACES)
        layout = Layout(n, namespaces, repos, commits)
        api = Api(cp)
        t = time.monotonic()
        populate(api, layout)
        print(f"    N={n}: populated in {time.monotonic() - t:.0f}s", flush=True)

        builder = BuilderProcess(cp, work)
        reply = builder.ask(op="wait_all", n=n, after=builder.started, timeout=900)
        start_s = float(reply["last"]) - builder.started
        if int(reply["count"]) < n:
            start_s = math.nan
        start_cpu = builder.cpu_seconds()
        time.sleep(1.0)
        rss = builder.status_kib("VmRSS") / 1024
        peak = builder.status_kib("VmHWM") / 1024

        cpu = builder.cpu_seconds()
        at = float(builder.ask(op="resync")["at"])
        reply = builder.ask(op="wait_all", n=n, after=at, timeout=900)
        resync_s = float(reply["last"]) - at if int(reply["count"]) >= n else math.nan
        resync_cpu = builder.cpu_seconds() - cpu

        rng = random.Random(n)
        event, delivered, took = [], [], []
        watch = EventWatch(api)
        for k in range(20):
            i = rng.randrange(n)
            ns, name = layout.namespaces[layout.ns(i)], layout.name(i)
            t = time.monotonic()
            api.call("PATCH", f"/apis/plugforge.dev/v1alpha1/namespaces/{ns}/brokerplugins/"
                     f"{name}", {"metadata": {"annotations": {"bench/touch": f"t{k}"}}},
                     "application/merge-patch+json")
            reply = builder.ask(op="wait_key", key=layout.key(i), after=t, timeout=60)
            event.append(float(reply["end"]) - t)
            took.append(float(reply["took"]))
            delivered.append(watch.wait(f"t{k}") - t)
        watch.close()
        if os.environ.get("BENCH_PROFILE"):
            keys = [layout.key(rng.randrange(n)) for _ in range(30)]
            prof = builder.ask(op="profile", keys=keys)
            print(f"30 reconciles in {prof['seconds']:.2f}s\n{prof['stats']}", flush=True)
        health = [healthz(builder.webhook) for _ in range(20)]
        acks, matched = [], 0
        for k in range(pushes):
            seconds, ok = push_ack(builder.webhook, layout, rng.randrange(n), k)
            acks.append(seconds)
            matched += ok
        return {"start": start_s, "start_cpu": start_cpu, "rss": rss, "peak": peak,
                "resync": resync_s, "resync_cpu": resync_cpu,
                "event_p50": summarize(event).p50, "event_p99": summarize(event).p99,
                "watch_p50": summarize(delivered).p50, "took_p50": summarize(took).p50,
                "ack_p50": summarize(acks).p50, "ack_p99": summarize(acks).p99,
                "health_p50": summarize(health).p50, "matched": matched, "pushes": pushes}
    finally:
        if builder is not None:
            builder.stop()
        git.stop()
        cp.stop()


def growth(points: Sequence[tuple[int, float]]) -> float:
    """k in value ∝ N^k, from the first and last point (NaN if either is missing)."""
    (n0, v0), (n1, v1) = points[0], points[-1]
    if not (v0 > 0 and v1 > 0) or n0 == n1:
        return math.nan
    return math.log(v1 / v0) / math.log(n1 / n0)


ROWS: tuple[tuple[str, str, str, float, float | None], ...] = (
    # key, metric, unit, scale, goal at 10,000 (in the unit)
    ("start", "start → every plugin reconciled", "s", 1.0, GOAL_RECONCILE_S),
    ("start_cpu", "  builder CPU until then", "s", 1.0, None),
    ("rss", "RSS after start", "MB", 1.0, GOAL_RSS_MB),
    ("peak", "peak RSS (VmHWM)", "MB", 1.0, None),
    ("resync", "full resync (list + N reconciles)", "s", 1.0, None),
    ("resync_cpu", "full resync, builder CPU", "s", 1.0, None),
    ("event_p50", "event → reconcile p50", "ms", 1e3, None),
    ("event_p99", "event → reconcile p99", "ms", 1e3, None),
    ("watch_p50", "  baseline: event → a plain watch p50", "ms", 1e3, None),
    ("took_p50", "  of which the reconcile itself p50", "ms", 1e3, None),
    ("ack_p50", "push matched + acked p50", "ms", 1e3, None),
    ("ack_p99", "push matched + acked p99", "ms", 1e3, GOAL_ACK_P99_MS),
)


def curve_table(results: dict[int, dict[str, float]]) -> str:
    sizes = sorted(results)
    header = ["metric", *[f"N={n:,}" for n in sizes], "growth k", "goal at 10,000"]
    rows = [header]
    for key, label, unit, scale, goal in ROWS:
        values = [results[n][key] * scale for n in sizes]
        rows.append([f"{label} ({unit})", *[f"{v:.3g}" if v < 1000 else f"{v:,.0f}"
                                            for v in values],
                     f"{growth(list(zip(sizes, values, strict=True))):.2f}",
                     f"< {goal:g} {unit}" if goal is not None else "—"])
    rows.append(["pushes matched", *[f"{results[n]['matched']:.0f}/{results[n]['pushes']:.0f}"
                                     for n in sizes], "", ""])
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def measure(workdir: Path, quick: bool) -> list[Metric]:
    sizes = (100, 1000) if quick else (100, 1000, 10000)
    results = {n: measure_n(workdir, n, 40 if quick else 100) for n in sizes}
    print(curve_table(results), flush=True)
    largest = max(sizes)
    metrics = []
    for key, label, unit, scale, goal in ROWS:
        for n in sizes:
            metrics.append(Metric("builder-scale", f"{label}, N={n}", unit,
                                  results[n][key] * scale,
                                  max_value=goal if n == 10000 else None))
        points = [(n, results[n][key]) for n in sizes]
        metrics.append(Metric("builder-scale", f"{label}: growth k (N^k, {sizes[0]}→{largest})",
                              "", growth(points)))
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="*")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    import tempfile
    with tempfile.TemporaryDirectory(prefix="plugforge-builder-scale-") as tmp:
        sizes = args.sizes or ((100, 1000) if args.quick else (100, 1000, 10000))
        results = {n: measure_n(Path(tmp), n, 40 if args.quick else 100) for n in sizes}
        print(curve_table(results))


if __name__ == "__main__":
    main()
