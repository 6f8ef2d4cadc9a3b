"""Canary releases in the shared ConfigMap: only the named pod's sidecar sees them."""

from __future__ import annotations

from plugforge.contract import (
    Document,
    PluginRelease,
    canary_key,
    content_hash,
    parse_desired_state,
    plugin_key,
    render_plugin_release,
    select_for_pod,
)

OLD = "registry.test:5000/plugins/deny@sha256:" + "1" * 64
NEW = "registry.test:5000/plugins/deny@sha256:" + "2" * 64


def docs() -> list[Document]:
    return [
        Document("cm", plugin_key("deny"), render_plugin_release(PluginRelease("deny", OLD))),
        Document("cm", canary_key("mq-0", "deny"), render_plugin_release(
            PluginRelease("deny", NEW))),
    ]


def test_canary_pod_gets_the_new_release() -> None:
    state = parse_desired_state(select_for_pod(docs(), "mq-0"))
    assert [p.image for p in state.plugins] == [NEW]


def test_other_pods_are_untouched_even_in_their_hash() -> None:
    others = select_for_pod(docs(), "mq-1")
    assert [p.image for p in parse_desired_state(others).plugins] == [OLD]
    before = [docs()[0]]  # the ConfigMap before the builder added the canary key
    assert content_hash(others) == content_hash(before)  # no apply, no restart on mq-1


def test_without_a_pod_name_canary_keys_are_ignored() -> None:
    assert [p.image for p in parse_desired_state(select_for_pod(docs(), "")).plugins] == [OLD]
