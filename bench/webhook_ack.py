"""How fast are webhook deliveries acknowledged, and how many builds does a burst queue?

Sends N signed GitHub push deliveries at once (default 200), spread over P plugins (default 10)
as chains of pushes (each push's ``before`` is the previous one's ``after``), and reports:
acknowledged count, p50/p99 acknowledgement latency, and how many builds were queued after
coalescing (ideally P: one per plugin, for its newest commit). Baseline, same concurrency and
server: ``GET /healthz`` (HTTP plumbing with no verification, parsing or matching).

The burst is sent by ``bench/webhook_load`` (Go, built once into ``$PLUGFORGE_CACHE/go-bin``):
one goroutine and one connection per request, all parked on a barrier and released together;
latency runs from before the dial to the last byte of the response. Python prepares the exact
request bytes. (A burst of 200 Python threads measured mostly itself: GIL and thread starts
put its ``/healthz`` p99 at 100-600 ms on 2 cores.)

Targets:
  --url URL --secret S --repo-prefix URL   a running endpoint (e.g. ``python -m builder.webhooks``)
                                           whose plugins follow ``<repo-prefix><i>`` at main;
                                           queued builds are read from ``GET /webhooks/stats``.
  (default)                                an in-process endpoint over fixed plugins; build
                                           requests are counted where they are handed off.
  --kube                                   an in-process endpoint over a real kube-apiserver
                                           (testbed; PLUGFORGE_KUBE_HARNESS): plugins and their
                                           webhook Secret read as the builder identity, build
                                           requests created as PluginBuilds and counted there.

Repetitions: one burst after one warm-up delivery. Goal: p99 well under GitHub's 10 s limit.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # realistic payloads shared with the tests

from webhooks_support import Commit, Push, encode, github_headers, github_push  # noqa: E402

from bench.go_programs import go_program  # noqa: E402

GOAL_P99_SECONDS = 10.0  # GitHub's delivery timeout


def _post(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
          method: str = "POST") -> tuple[int, float]:
    """One request from Python: the warm-up delivery (the burst goes through the Go client)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - start
    except OSError:
        return 0, time.perf_counter() - start
    finally:
        conn.close()


def raw_request(host: str, port: int, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> bytes:
    """The HTTP/1.1 request bytes ``http.client`` would send (one request per connection)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items() if k.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def burst(host: str, port: int, requests: Sequence[bytes],
          timeout: float = 30.0) -> list[tuple[int, float]]:
    """Send every request on its own connection, all released at once; (status, seconds) each,
    status 0 when no response came."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as plan:
        json.dump({"address": f"{host}:{port}", "timeout": timeout,
                   "requests": [base64.b64encode(r).decode() for r in requests]}, plan)
        plan.flush()
        out = subprocess.run([str(go_program("webhook_load")), plan.name], capture_output=True,
                             text=True, timeout=timeout + 60)
    if out.returncode != 0:
        raise RuntimeError(f"bench/webhook_load failed (exit {out.returncode}): "
                           f"{out.stderr.strip()}")
    results: list[dict[str, Any]] = json.loads(out.stdout)["results"]
    return [(int(r["status"]), float(r["seconds"])) for r in results]


def _deliveries(n: int, repo_urls: Sequence[str], secret: bytes
                ) -> list[tuple[bytes, dict[str, str]]]:
    """N pushes round-robin over the repos, each repo's pushes chained."""
    heads = {url: "0" * 39 + "1" for url in repo_urls}
    out = []
    for i in range(n):
        url = repo_urls[i % len(repo_urls)]
        parts = urllib.parse.urlsplit(url)
        owner, repo = parts.path.strip("/").removesuffix(".git").split("/", 1)
        after = f"{i + 2:040x}"
        push = Push(host=parts.netloc, owner=owner, repo=repo, ref="refs/heads/main",
                    before=heads[url], after=after, scheme=parts.scheme,
                    commits=[Commit(after, modified=["src/plugin.c"])])
        heads[url] = after
        body = encode(github_push(push))
        out.append((body, github_headers(body, secret, delivery=f"bench-{i}-{time.time_ns()}")))
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(host: str, port: int, n: int, repo_urls: Sequence[str], secret: bytes,
            queued_builds: Callable[[], int], settle: float) -> dict[str, Any]:
    deliveries = _deliveries(n + 1, repo_urls, secret)
    warm = deliveries.pop(0)  # the first of its chain: the burst continues from it
    _post(host, port, "/webhooks/github", *warm)
    time.sleep(settle)
    before = queued_builds()
    baseline = burst(host, port, [raw_request(host, port, "GET", "/healthz")] * n)
    results = burst(host, port, [raw_request(host, port, "POST", "/webhooks/github", *d)
                                 for d in deliveries])
    time.sleep(settle)
    acked = [t for code, t in results if 200 <= code < 300]
    base = [t for code, t in baseline if code == 200]
    return {
        "sent": n, "acknowledged": len(acked),
        "statuses": sorted({code for code, _ in results}),
        "p50": statistics.median(acked) if acked else float("nan"),
        "p99": _pct(acked, 0.99) if acked else float("nan"),
        "base_p50": statistics.median(base) if base else float("nan"),
        "base_p99": _pct(base, 0.99) if base else float("nan"),
        "plugins": len(repo_urls), "builds_queued": queued_builds() - before,
    }


def report(r: dict[str, Any], target: str) -> None:
    print(f"webhook_ack: {r['sent']} concurrent signed GitHub push deliveries over "
          f"{r['plugins']} plugins ({target})")
    print(f"{'metric':<28}{'median':>10}{'p99':>10}{'ratio p99':>11}{'goal':>10}")
    print(f"{'healthz (baseline)':<28}{r['base_p50'] * 1e3:>8.1f}ms{r['base_p99'] * 1e3:>8.1f}ms"
          f"{'1.0':>11}{'':>10}")
    ratio = r["p99"] / r["base_p99"] if r["base_p99"] else float("nan")
    print(f"{'push acknowledged':<28}{r['p50'] * 1e3:>8.1f}ms{r['p99'] * 1e3:>8.1f}ms"
          f"{ratio:>11.1f}{'<' + str(GOAL_P99_SECONDS) + 's':>10}")
    print(f"acknowledged: {r['acknowledged']}/{r['sent']} (statuses {r['statuses']})")
    print(f"builds queued after coalescing: {r['builds_queued']} "
          f"(ideal: {r['plugins']}, one per plugin for its newest commit)")


def _local(args: argparse.Namespace) -> None:
    from builder.webhooks import service
    from builder.webhooks.matching import PluginSource, SecretRef

    secret = b"bench-secret"
    urls = [f"https://git.example/bench/plugin-{i}.git" for i in range(args.plugins)]
    plugins = [PluginSource("bench", f"plugin-{i}", f"uid-{i}", url, "main", ".", None, True,
                            SecretRef("bench", "hook", "secret")) for i, url in enumerate(urls)]
    handed: list[Any] = []

    class Fixed:
        def plugins(self) -> Sequence[PluginSource]:
            return plugins

        def secret(self, ref: SecretRef) -> bytes | None:
            return secret

    hooks = service.start(Fixed(), handed.append,
                          service.WebhookSettings(quiet_seconds=args.quiet))
    try:
        r = measure("127.0.0.1", hooks.server.port, args.n, urls, secret,
                    lambda: len(handed), args.quiet + 1.0)
    finally:
        hooks.stop()
    report(r, "in-process endpoint, fixed plugin list")


def _kube(args: argparse.Namespace) -> None:
    from builder_support import install, tenant_namespace

    from builder.kube import Kube
    from builder.webhooks import service
    from testbed.kube import start_control_plane

    secret = "bench-secret"  # noqa: S105 - made up for this run
    with tempfile.TemporaryDirectory() as tmp:
        cp = start_control_plane(Path(tmp) / "kube")
        try:
            install(cp)
            ns = tenant_namespace(cp, "bench")
            import base64
            code, out = cp.request("POST", f"/api/v1/namespaces/{ns}/secrets", body={
                "metadata": {"name": "hook"},
                "data": {"secret": base64.b64encode(secret.encode()).decode()}})
            assert code == 201, out
            urls = [f"https://git.example/bench/plugin-{i}.git" for i in range(args.plugins)]
            for i, url in enumerate(urls):
                code, out = cp.request(
                    "POST", f"/apis/plugforge.dev/v1alpha1/namespaces/{ns}/brokerplugins",
                    body={"apiVersion": "plugforge.dev/v1alpha1", "kind": "BrokerPlugin",
                          "metadata": {"name": f"plugin-{i}"},
                          "spec": {"broker": "mosquitto",
                                   "source": {"git": {"url": url, "ref": "main"}},
                                   "image": {"repository": "registry.example/plugins/p"},
                                   "webhook": {"secretRef": {"name": "hook"}}}})
                assert code == 201, out

            def count() -> int:
                _, out = cp.request(
                    "GET", f"/apis/plugforge.dev/v1alpha1/namespaces/{ns}/pluginbuilds")
                items: list[dict[str, Any]] = out.get("items", [])  # type: ignore[assignment]
                return len([b for b in items if b["spec"]["trigger"]["type"] == "Webhook"])

            kube = Kube.from_kubeconfig(cp.kubeconfig("builder"))
            hooks = service.start_with_kube(kube, service.WebhookSettings(
                quiet_seconds=args.quiet))
            try:
                r = measure("127.0.0.1", hooks.server.port, args.n, urls, secret.encode(),
                            count, args.quiet + 3.0)
            finally:
                hooks.stop()
                kube.close()
            report(r, "in-process endpoint, real kube-apiserver, PluginBuilds counted")
        finally:
            cp.stop()


def _remote(args: argparse.Namespace) -> None:
    parts = urllib.parse.urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    urls = [f"{args.repo_prefix}{i}" for i in range(args.plugins)]

    def count() -> int:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/webhooks/stats")
        stats = json.loads(conn.getresponse().read())
        conn.close()
        return int(stats.get("builds_requested", 0))

    r = measure(host, port, args.n, urls, args.secret.encode(), count, args.quiet + 2.0)
    report(r, f"running endpoint {args.url}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=200, help="concurrent deliveries (default 200)")
    p.add_argument("--plugins", type=int, default=10, help="plugins/repositories (default 10)")
    p.add_argument("--quiet", type=float, default=1.0, help="coalescing window of the endpoint")
    p.add_argument("--kube", action="store_true", help="real kube-apiserver (testbed)")
    p.add_argument("--url", help="a running endpoint, e.g. http://127.0.0.1:8443")
    p.add_argument("--secret", default="", help="webhook secret of the running endpoint")
    p.add_argument("--repo-prefix", default="", help="repository URL prefix (with --url)")
    args = p.parse_args(argv)
    if args.url:
        _remote(args)
    elif args.kube:
        _kube(args)
    else:
        _local(args)


if __name__ == "__main__":
    main()
