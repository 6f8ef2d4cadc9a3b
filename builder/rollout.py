"""Rollout (``rollout: Automatic``): write this plugin's key of the target ConfigMap.

The document is ``plugforge.contract.render_plugin_release`` — the one contract with the
sidecars. The write uses optimistic concurrency (the resourceVersion read) and retries on 409,
so concurrent writers of other keys (other plugins, operators) are never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from builder.errors import Conflict, KubeError
from builder.kube import Kube
from builder.pipeline import Outcome
from builder.resources import PluginSpec
from plugforge.contract import (
    CANARY_KEY_PREFIX,
    Document,
    PluginRelease,
    Provenance,
    canary_key,
    content_hash,
    plugin_key,
    render_plugin_release,
    select_for_pod,
)

MAX_CONFLICTS = 10


def release_for(spec: PluginSpec, outcome: Outcome, build: str) -> PluginRelease:
    return current_release(spec, outcome.plugin_name or spec.name, outcome.image,
                           outcome.commit, build)


def current_release(spec: PluginSpec, plugin_name: str, image: str, commit: str,
                    build: str) -> PluginRelease:
    """The release for an image already built, with the spec's current enabled/settings/probes."""
    return PluginRelease(
        name=plugin_name, image=image, enabled=spec.enabled, settings=dict(spec.settings),
        probes=spec.probes,
        source=Provenance(commit=commit, build=build, repository=spec.source.url))


def write_release(kube: Kube, spec: PluginSpec, outcome: Outcome, build: str) -> str:
    """Write ``plugin.<name>.yaml`` into ``spec.configmap``; return the key written."""
    return write(kube, spec, release_for(spec, outcome, build))


def write(kube: Kube, spec: PluginSpec, release: PluginRelease) -> str:
    """Write ``release`` as its key of ``spec.configmap`` (no-op if already equal)."""
    if spec.configmap is None:
        raise ValueError(f"{spec.key} has no target.configMap to roll out to")
    key = plugin_key(release.name)
    text = render_plugin_release(release)
    for _ in range(MAX_CONFLICTS):
        cm = kube.get_configmap(spec.namespace, spec.configmap)
        try:
            if cm is None:
                kube.create_configmap(spec.namespace, spec.configmap, {key: text})
                return key
            data = dict(cm.get("data") or {})
            if data.get(key) == text:
                return key
            data[key] = text
            cm["data"] = data
            kube.replace_configmap(cm)
            return key
        except Conflict:
            continue
    raise KubeError(f"ConfigMap {spec.namespace}/{spec.configmap} kept changing under us "
                    f"({MAX_CONFLICTS} conflicts); will retry")


# --- canary (spec.target.strategy.canary with spec.target.sidecars) ---------------------------


def update_data(kube: Kube, spec: PluginSpec,
                change: Callable[[dict[str, str]], dict[str, str]]) -> None:
    """Apply ``change`` to the target ConfigMap's data in one optimistic write."""
    if spec.configmap is None:
        raise ValueError(f"{spec.key} has no target.configMap to roll out to")
    for _ in range(MAX_CONFLICTS):
        cm = kube.get_configmap(spec.namespace, spec.configmap)
        try:
            if cm is None:
                kube.create_configmap(spec.namespace, spec.configmap, change({}))
                return
            data = dict(cm.get("data") or {})
            new = change(dict(data))
            if new == data:
                return
            cm["data"] = new
            kube.replace_configmap(cm)
            return
        except Conflict:
            continue
    raise KubeError(f"ConfigMap {spec.namespace}/{spec.configmap} kept changing under us "
                    f"({MAX_CONFLICTS} conflicts); will retry")


def _without_canaries(data: dict[str, str], name: str) -> dict[str, str]:
    suffix = "." + plugin_key(name)
    return {k: v for k, v in data.items()
            if not (k.startswith(CANARY_KEY_PREFIX) and k.endswith(suffix))}


def start_canary(kube: Kube, spec: PluginSpec, pods: Sequence[str],
                 release: PluginRelease) -> None:
    """``release`` for ``pods`` only (their canary keys); the plugin key stays as it is."""
    text = render_plugin_release(release)

    def change(data: dict[str, str]) -> dict[str, str]:
        data = _without_canaries(data, release.name)
        data.update({canary_key(pod, release.name): text for pod in pods})
        return data

    update_data(kube, spec, change)


def promote(kube: Kube, spec: PluginSpec, release: PluginRelease) -> None:
    """Fan out: ``release`` as the plugin key and no canary keys, in one write (the canary
    pods see the same release, so they do not move)."""
    text = render_plugin_release(release)

    def change(data: dict[str, str]) -> dict[str, str]:
        data = _without_canaries(data, release.name)
        data[plugin_key(release.name)] = text
        return data

    update_data(kube, spec, change)


def abort_canary(kube: Kube, spec: PluginSpec, name: str) -> None:
    """Remove plugin ``name``'s canary keys: the canary pods return to the plugin key."""
    update_data(kube, spec, lambda data: _without_canaries(data, name))


def expected_hashes(kube: Kube, spec: PluginSpec, pods: Sequence[str]) -> dict[str, str]:
    """The desired-state content hash each of ``pods`` computes from the target ConfigMap (the
    sidecar's ``desired_hash`` when this ConfigMap is all it reads)."""
    cm = kube.get_configmap(spec.namespace, spec.configmap or "") if spec.configmap else None
    if cm is None:
        return {}
    docs = [Document(f"configmap {spec.namespace}/{spec.configmap}", k, v)
            for k, v in (cm.get("data") or {}).items()]
    return {pod: content_hash(select_for_pod(docs, pod)) for pod in pods}
