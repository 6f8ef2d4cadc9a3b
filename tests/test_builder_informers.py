"""The controller's PluginBuild store (builder/informers.py) and the push index
(builder/webhooks/matching.py): what the builder-scale fixes rest on."""

from __future__ import annotations

import random
import threading
from typing import Any

from builder_support import Cluster, install, tenant_namespace, wait_for

from builder.informers import BuildStore, slim
from builder.kube import Kube
from builder.rollout import ownership
from builder.target_cache import TargetCache
from builder.webhooks import matching
from builder.webhooks.events import PushEvent
from builder.webhooks.matching import PluginSource
from builder.webhooks.signatures import Forge
from testbed.kube import ControlPlane

Obj = dict[str, Any]


def _build(name: str, plugin: str, version: int, phase: str = "Pending", **status: Any) -> Obj:
    return {"apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
            "metadata": {"name": name, "namespace": "t", "resourceVersion": str(version),
                         "managedFields": [{"manager": "x"}], "annotations": {"a": "b"}},
            "spec": {"plugin": plugin}, "status": {"phase": phase, **status}}


def test_the_store_keeps_the_newest_version_and_no_deleted_build() -> None:
    store = BuildStore(None, lambda key: None, 60)  # type: ignore[arg-type]  # no I/O here
    store.put(_build("b1", "p", 5))
    store.put(_build("b1", "p", 4, phase="Running"))  # an older delivery arrives late
    [kept] = store.builds("t", "p")
    assert kept["status"]["phase"] == "Pending" and kept["metadata"]["resourceVersion"] == "5"
    assert "managedFields" not in kept["metadata"] and "annotations" not in kept["metadata"]

    kept["status"]["phase"] = "Changed by a caller"  # callers get copies
    assert store.builds("t", "p")[0]["status"]["phase"] == "Pending"

    store.drop("t", "b1", 7)
    store.put(_build("b1", "p", 6, phase="Succeeded"))  # a write's result after its deletion
    assert store.builds("t", "p") == [], "a deleted build does not come back"
    store.put(_build("b1", "p", 9))  # created again under the same name, later
    assert len(store.builds("t", "p")) == 1


def test_finished_builds_are_kept_without_their_log_tail() -> None:
    assert "logTail" not in slim(_build("b", "p", 1, "Succeeded", logTail="x" * 16000))["status"]
    assert "logTail" not in slim(_build("b", "p", 1, "Failed", logTail="x"))["status"]
    # A Pending (retrying) build is written back by the controller: kept whole.
    assert slim(_build("b", "p", 1, "Pending", logTail="x"))["status"]["logTail"] == "x"


def test_the_store_follows_the_apiserver_and_queues_after_storing(
        control_plane: ControlPlane) -> None:
    """Over the real apiserver: listed once, then every event is in the store before its
    plugin's key is queued (a reconcile it causes sees at least that event)."""
    install(control_plane)
    ns = tenant_namespace(control_plane, prefix="informer")
    cluster = Cluster(control_plane, ns)
    # This namespace only: the apiserver is shared with other tests' builds.
    kube = Kube.from_kubeconfig(control_plane.kubeconfig("builder"), watch_namespace=ns)
    seen: list[tuple[str, list[str]]] = []
    store: BuildStore

    def on_change(key: str) -> None:
        namespace, _, plugin = key.partition("/")
        seen.append((key, sorted(b["metadata"]["name"] for b in store.builds(namespace,
                                                                             plugin))))

    store = BuildStore(kube, on_change, 60)

    def body(name: str, plugin: str) -> Obj:
        return {"apiVersion": "plugforge.dev/v1alpha1", "kind": "PluginBuild",
                "metadata": {"name": name},
                "spec": {"plugin": plugin, "trigger": {"type": "Manual"}}}

    cluster.create("pluginbuilds", body("before", "a"))
    stop = threading.Event()
    runner = threading.Thread(target=store.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_for(lambda: store.synced.is_set() or None, "the first list")
        assert [b["metadata"]["name"] for b in store.builds(ns, "a")] == ["before"]
        cluster.create("pluginbuilds", body("after", "a"))
        cluster.create("pluginbuilds", body("other", "b"))
        wait_for(lambda: len(store) == 3 or None, "the watch events")
        assert (f"{ns}/a", ["after", "before"]) in seen
        assert (f"{ns}/b", ["other"]) in seen
        code, out = control_plane.request(
            "DELETE", f"/apis/plugforge.dev/v1alpha1/namespaces/{ns}/pluginbuilds/before")
        assert code == 200, out
        wait_for(lambda: [b["metadata"]["name"] for b in store.builds(ns, "a")] == ["after"]
                 or None, "the deletion")
        assert seen[-1] == (f"{ns}/a", ["after"])
    finally:
        stop.set()
        kube.close()


# --- the push index --------------------------------------------------------------------------


def _push(repo: str, ref: str, changed: list[str] | None) -> PushEvent:
    return PushEvent(forge=Forge.GITHUB, event="push", delivery="d", ref=ref, before="0" * 40,
                     after="a" * 40, repository_urls=(repo,), pusher="x", compare_url="",
                     changed_files=frozenset(changed) if changed is not None else None)


def _plugins(n: int, rng: random.Random) -> list[PluginSource]:
    paths = [".", "", "/", "plugins/a", "plugins/a/b", "plugins/ab", "plugins/b", "/plugins/b/",
             "docs", "x/y/z"]
    return [PluginSource(namespace="t", name=f"p{i}", uid=str(i),
                         url=rng.choice(["https://git.test/t/mono.git", "git@git.test:T/Mono",
                                         "https://git.test/t/other.git", "not a url"]),
                         ref=rng.choice(["main", "refs/heads/main", "dev", "v1"]),
                         path=rng.choice(paths) + (f"/p{i % 7}" if rng.random() < 0.3 else ""),
                         revision=rng.choice([None, None, None, "c" * 40]),
                         enabled=rng.random() < 0.9, secret=None)
            for i in range(n)]


def test_the_indexed_plan_decides_as_the_plain_one() -> None:
    rng = random.Random(7)  # noqa: S311 - test data, not secrets
    plugins = _plugins(400, rng)
    index = matching.index_plugins(plugins)
    for _ in range(200):
        changed = None if rng.random() < 0.1 else [
            rng.choice(["plugins/a/x.c", "plugins/ab", "plugins/b/p3/y", "docs/r.md", "/x/y/z",
                        "x/y/z/p1/q", "README", "plugins/a/b/p2/s.c"])
            for _ in range(rng.randrange(0, 4))]
        event = _push("https://git.test/t/mono", rng.choice(["refs/heads/main",
                                                              "refs/tags/v1"]), changed)
        allowed = frozenset(i for i in range(len(plugins)) if rng.random() < 0.8)
        plain = matching.plan(event, [plugins[i] for i in sorted(allowed)])
        indexed = matching.plan_indexed(event, plugins, index, allowed)
        untouched = [d for d in plain if d.reason.startswith("no changed file")]
        if len(untouched) > matching.LISTED_UNTOUCHED:
            assert indexed.untouched == len(untouched)
            plain = [d for d in plain if d not in untouched]
        else:
            assert indexed.untouched == 0
        assert indexed.decisions == plain


def test_a_push_reads_only_the_plugins_under_its_paths() -> None:
    """A monorepo of 10,000 plugins: one push decides on the one plugin it touched."""
    plugins = [PluginSource(namespace="t", name=f"p{i}", uid=str(i),
                            url="https://git.test/t/mono.git", ref="main",
                            path=f"plugins/p{i}", revision=None, enabled=True, secret=None)
               for i in range(10_000)]
    index = matching.index_plugins(plugins)
    decided: list[str] = []
    real = matching._decide

    def counting(event: PushEvent, pushed: Any, plugin: PluginSource) -> Any:
        decided.append(plugin.name)
        return real(event, pushed, plugin)

    matching._decide = counting
    try:
        planned = matching.plan_indexed(
            _push("https://git.test/t/mono.git", "refs/heads/main",
                  ["plugins/p4321/src/plugin.c"]),
            plugins, index, frozenset(range(10_000)))
    finally:
        matching._decide = real
    assert [d.plugin.name for d in planned.decisions if d.build] == ["p4321"]
    assert decided == ["p4321"]
    assert planned.untouched == 9_999


# --- target ConfigMaps: one read per ConfigMap per few seconds, for "nothing to write" -------


def test_a_target_configmap_is_read_once_per_ttl_by_its_plugins() -> None:
    now = [100.0]
    reads: list[str] = []
    text = "plugin: release\n"
    annotations = ownership.annotate_written(
        ownership.annotate({}, {"plugin.a.yaml": "a"}),
        {"plugin.a.yaml": ownership.fingerprint(text)})

    def read(namespace: str, name: str) -> Obj | None:
        reads.append(name)
        if name == "absent":
            return None
        return {"metadata": {"annotations": annotations},
                "data": {"plugin.a.yaml": text, "plugin.b.yaml": "x"}}

    cache = TargetCache(read, ttl=5.0, clock=lambda: now[0])
    for _ in range(50):  # a sweep over the plugins of one ConfigMap
        target = cache.get("t", "brokers")
        assert target is not None
        assert target.holds("plugin.a.yaml", text, "a")
        assert cache.get("t", "absent") is None
    assert reads == ["brokers", "absent"]
    assert target is not None
    assert not target.holds("plugin.a.yaml", text + "edited", "a"), "another release"
    assert not target.holds("plugin.a.yaml", text, "b"), "owned by another BrokerPlugin"
    assert not target.holds("plugin.b.yaml", "x", "b"), "not recorded as the builder's write"
    now[0] += 5.0
    cache.get("t", "brokers")
    cache.forget("t", "brokers")
    cache.get("t", "brokers")
    assert reads == ["brokers", "absent", "brokers", "brokers"]
