"""What the builder's scale curves showed growing too fast, pinned by counting calls (no timing):
see bench/builder_scale.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from builder_support import Cluster, broker_plugin, install, tenant_namespace, wait_for
from webhooks_support import Commit, Push, encode, github_headers, github_push

from builder.errors import NotFound
from builder.kube import PLUGINS, Kube
from builder.resolving import ResolveCache
from builder.secret_cache import SecretCache
from builder.secrets import Secret
from builder.webhooks.dedupe import BuildRequest, DeliveryCache, Offer
from builder.webhooks.handler import WebhookHandler
from builder.webhooks.matching import PluginSource, SecretRef
from builder.webhooks.plugins import KubePlugins
from builder.webhooks.signatures import Forge
from testbed.kube import ControlPlane

Obj = dict[str, Any]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plugins_of_one_source_share_a_fetch() -> None:
    clock = Clock()
    cache = ResolveCache(max_age=270.0, share_seconds=5.0, clock=clock)
    fetches: list[str] = []

    def fetch() -> str:
        fetches.append("x")
        return "c1"

    source = ("tenant", "https://git.test/mono.git", "main", None, None)
    for i in range(1000):
        assert cache.resolve(f"tenant/p{i}", 1, source, fetch) == "c1"
    assert len(fetches) == 1, "one fetch per source in a sweep, not one per plugin"

    other = ("other-tenant", "https://git.test/mono.git", "main", None, None)
    cache.resolve("other-tenant/p0", 1, other, fetch)
    assert len(fetches) == 2, "another tenant's mirror and credentials: its own fetch"


def test_a_resync_sweep_of_settled_plugins_fetches_each_source_once() -> None:
    clock = Clock()
    cache = ResolveCache(max_age=270.0, share_seconds=5.0, clock=clock)
    fetches: list[str] = []

    def fetch() -> str:
        fetches.append("x")
        return f"c{len(fetches)}"

    source = ("t", "https://git.test/mono.git", "main", None, None)
    for sweep in range(3):  # a sweep of 10,000 plugins takes longer than share_seconds
        for i in range(300):
            clock.now += 0.5
            assert cache.resolve(f"t/p{i}", 1, source, fetch, settled=True) == f"c{sweep + 1}"
        clock.now += 270  # the period expires
    assert len(fetches) == 3, "one fetch per source per period for settled plugins"


def test_spec_change_fetches_and_shared_results_age_out() -> None:
    clock = Clock()
    cache = ResolveCache(max_age=270.0, share_seconds=5.0, clock=clock)
    tips = iter(["c1", "c2", "c3", "c4"])
    fetches: list[str] = []

    def fetch() -> str:
        fetches.append("x")
        return next(tips)

    source = ("t", "https://git.test/r.git", "main", None, None)
    assert cache.resolve("t/a", 1, source, fetch) == "c1"
    assert cache.resolve("t/a", 1, source, fetch) == "c1"
    assert cache.resolve("t/a", 2, source, fetch) == "c2", "a new generation fetches"
    clock.now += 6  # past share_seconds: a new plugin sees a fresh tip, not one 6 s old
    assert cache.resolve("t/b", 1, source, fetch) == "c3"
    assert cache.resolve("t/a", 2, source, fetch) == "c2", "its own result is kept a period"
    clock.now += 270
    assert cache.resolve("t/a", 2, source, fetch) == "c4"
    assert cache.resolve("t/b", 1, source, fetch) == "c4", "shares the fresher result"
    assert len(fetches) == 4


# --- the webhook endpoint: one secret look-up per Secret, not per plugin -------------------------


class CountingPlugins:
    """Plugins as the endpoint's provider hands them out (one list object until it changes)."""

    def __init__(self, plugins: list[PluginSource], secrets: dict[str, bytes]) -> None:
        self.list = plugins
        self.secrets = secrets
        self.secret_calls = 0

    def plugins(self) -> Sequence[PluginSource]:
        return self.list

    def secret(self, ref: SecretRef) -> bytes | None:
        self.secret_calls += 1
        return self.secrets.get(ref.name)


def _plugins(n: int, tenants: int) -> list[PluginSource]:
    return [PluginSource(namespace=f"t{i % tenants}", name=f"p{i}", uid=str(i),
                         url=f"https://git.test/t{i % tenants}/mono.git", ref="main",
                         path=f"plugins/p{i}", revision=None, enabled=True,
                         secret=SecretRef(f"t{i % tenants}", f"hook{i % tenants}", "secret"))
            for i in range(n)]


def test_a_delivery_looks_up_each_secret_once_not_each_plugin() -> None:
    secrets = {f"hook{t}": f"tenant-{t}-webhook-secret-value".encode() for t in range(10)}
    provider = CountingPlugins(_plugins(2000, 10), secrets)
    offers: list[BuildRequest] = []

    def offer(request: BuildRequest) -> Offer:
        offers.append(request)
        return Offer.QUEUED

    handler = WebhookHandler(provider, DeliveryCache(lambda: 0.0, ttl=60), offer)
    push = Push(host="git.test", owner="t3", repo="mono", ref="refs/heads/main", before="0" * 40,
                after="a" * 40, commits=[Commit("a" * 40, modified=["plugins/p13/src/x.c"])])
    body = encode(github_push(push))
    response = handler.handle(Forge.GITHUB, github_headers(body, secrets["hook3"]), body)
    assert response.status == 202, response.body
    assert [q["plugin"] for q in response.body["queued"]] == ["t3/p13"]
    assert provider.secret_calls == 10, "one look-up per webhook Secret, not per plugin"
    assert [r.plugin_key for r in offers] == ["t3/p13"]

    unsigned = handler.handle(Forge.GITHUB, github_headers(body, b"not-any-tenant-secret"), body)
    assert unsigned.status == 401
    assert provider.secret_calls == 20


def test_followed_plugins_cost_no_list_per_delivery(control_plane: ControlPlane) -> None:
    """Over the real apiserver: once the watch has listed, deliveries list nothing, and a new
    BrokerPlugin arrives through the watch."""
    install(control_plane)
    ns = tenant_namespace(control_plane, prefix="scale")
    kube = Kube.from_kubeconfig(control_plane.kubeconfig("builder"))
    lists = 0
    real_pages = kube.pages

    def counting_pages(plural: str, limit: int = 500) -> Iterator[tuple[list[Obj], str]]:
        nonlocal lists
        lists += 1
        return real_pages(plural, limit)

    kube.pages = counting_pages  # type: ignore[method-assign]
    provider = KubePlugins(kube, time.monotonic, max_age=0.0)
    stop = threading.Event()
    follower = threading.Thread(target=provider.follow, args=(stop,), daemon=True)
    follower.start()
    try:
        wait_for(lambda: provider._watched is not None, "the first list")
        listed = lists
        cluster = Cluster(control_plane, ns)
        cluster.create("brokerplugins", broker_plugin("followed", url="https://git.test/x.git",
                                                      repository="r.test/x"))
        wait_for(lambda: provider.plugin(f"{ns}/followed") is not None, "the watch event")
        for _ in range(50):
            assert any(p.key == f"{ns}/followed" for p in provider.plugins())
        assert provider.plugin(f"{ns}/absent") is None
        assert lists == listed, "deliveries read the followed list, they do not list again"
    finally:
        stop.set()
        kube.close()


def test_lists_come_in_pages(control_plane: ControlPlane) -> None:
    """Over the real apiserver: ``Kube.pages`` splits a list, one resourceVersion for all."""
    install(control_plane)
    ns = tenant_namespace(control_plane, prefix="pages")
    cluster = Cluster(control_plane, ns)
    for i in range(7):
        cluster.create("brokerplugins", broker_plugin(f"paged-{i}", url="https://git.test/x.git",
                                                      repository="r.test/x"))
    kube = Kube.from_kubeconfig(control_plane.kubeconfig("builder"), watch_namespace=ns)
    try:
        pages = list(kube.pages(PLUGINS, limit=3))
        assert [len(items) for items, _ in pages] == [3, 3, 1]
        assert len({version for _, version in pages}) == 1
        items, _ = kube.list_plugins()
        assert sorted(o["metadata"]["name"] for o in items) == [f"paged-{i}" for i in range(7)]
    finally:
        kube.close()


def test_a_shared_webhook_secret_is_read_once_per_ttl() -> None:
    clock = Clock()
    reads: list[tuple[str, str]] = []

    def read(namespace: str, name: str) -> Secret:
        reads.append((namespace, name))
        if name == "absent":
            raise NotFound(f"secret {namespace}/{name}")
        return Secret(namespace, name, "Opaque", {"secret": b"x" * 32})

    cache = SecretCache(read, ttl=10.0, clock=clock)
    for _ in range(1000):  # a resync over a tenant's plugins
        assert cache.read("t", "hook").data["secret"] == b"x" * 32
        with pytest.raises(NotFound):
            cache.read("t", "absent")
    assert reads == [("t", "hook"), ("t", "absent")]
    clock.now += 10  # a rotated or created Secret shows within the ttl
    cache.read("t", "hook")
    assert len(reads) == 3
