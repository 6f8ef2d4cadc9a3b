"""Rollout (``rollout: Automatic``): write this plugin's key of the target ConfigMap.

The document is ``plugforge.contract.render_plugin_release`` — the one contract with the
sidecars. The write uses optimistic concurrency (the resourceVersion read) and retries on 409,
so concurrent writers of other keys (other plugins, operators) are never overwritten. A
BrokerPlugin writes only the keys of a plugin name it owns in that ConfigMap
(``builder.rollout.ownership``): a repository cannot pick another plugin's key.

The BrokerPlugin is the source of truth for its keys: a direct edit of one is overwritten at
the builder's next write of it. Each write returns the keys it so reverted (told apart from the
builder's own earlier values by the fingerprints in ``plugforge.dev/written``), for the caller
to report once, as a Warning Event and a log line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from builder.build.pipeline import Outcome
from builder.errors import Conflict, KubeError, TargetMissing
from builder.kube import Kube
from builder.resources import PluginSpec
from builder.rollout import ownership
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


def write_release(kube: Kube, spec: PluginSpec, outcome: Outcome, build: str) -> list[str]:
    """Write ``plugin.<name>.yaml`` into ``spec.configmap``; the directly edited keys it
    reverted."""
    return write(kube, spec, release_for(spec, outcome, build))


def write(kube: Kube, spec: PluginSpec, release: PluginRelease) -> list[str]:
    """Write ``release`` as its key of ``spec.configmap`` (no-op if already equal); the
    directly edited keys it reverted."""
    key = plugin_key(release.name)
    text = render_plugin_release(release)

    def change(data: dict[str, str]) -> dict[str, str]:
        data[key] = text
        return data

    return update_data(kube, spec, release.name, change)


def restore(kube: Kube, spec: PluginSpec, release: PluginRelease) -> list[str]:
    """Write ``release`` back over a direct edit of its key only when it is exactly what the
    builder last wrote there (its fingerprint): under a canary strategy a different release,
    e.g. new settings in the spec, reaches the pods through its canary, never this way."""
    cm = kube.get_configmap(spec.namespace, spec.configmap) if spec.configmap else None
    if cm is None:
        return []
    key, text = plugin_key(release.name), render_plugin_release(release)
    recorded = ownership.written((cm.get("metadata") or {}).get("annotations") or {})
    if recorded.get(key) != ownership.fingerprint(text) or \
            (cm.get("data") or {}).get(key) == text:
        return []
    return write(kube, spec, release)


def reverted_note(spec: PluginSpec, keys: Sequence[str]) -> str:
    """What a Warning Event says of reverted keys (names only: values may hold secrets)."""
    return (f"{', '.join(keys)} in ConfigMap {spec.namespace}/{spec.configmap} had been edited "
            f"directly; written back from BrokerPlugin {spec.name}, which owns "
            f"{'it' if len(keys) == 1 else 'them'}: change the BrokerPlugin's spec instead")


def update_data(kube: Kube, spec: PluginSpec, name: str,
                change: Callable[[dict[str, str]], dict[str, str]]) -> list[str]:
    """Apply ``change`` (to plugin ``name``'s keys) to the target ConfigMap's data in one
    optimistic write, once ``spec``'s BrokerPlugin owns plugin ``name`` there; the keys of
    plugin ``name`` someone else had edited that this write overwrote."""
    if spec.configmap is None:
        raise ValueError(f"{spec.key} has no target.configMap to roll out to")
    for _ in range(MAX_CONFLICTS):
        cm = kube.get_configmap(spec.namespace, spec.configmap)
        data = dict((cm or {}).get("data") or {})
        annotations = dict(((cm or {}).get("metadata") or {}).get("annotations") or {})
        owners = ownership.owners(annotations)
        claimed = ownership.claim(
            owners, plugin_key(name), spec.name, plugin_key(name) in data,
            alive=lambda holder: kube.get_plugin(spec.namespace, holder) is not None,
            legacy=lambda: _owner_by_status(kube, spec, name),
            where=f"ConfigMap {spec.namespace}/{spec.configmap}")
        new = change(dict(data))
        # The plugin key only: per-pod canary keys are short-lived, and fingerprints of each
        # would crowd the annotations' 256 KiB in a rollout of a thousand pods.
        keys = [plugin_key(name)]
        recorded = ownership.written(annotations)
        wrote = ownership.record(recorded, new, keys)
        try:
            if cm is None:
                _refuse_recreating(kube, spec)
                kube.create_configmap(spec.namespace, spec.configmap, new,
                                      ownership.annotate_written(
                                          ownership.annotate({}, claimed), wrote))
                return []
            if new == data and claimed == owners and wrote == recorded:
                return []
            cm["data"] = new
            cm.setdefault("metadata", {})["annotations"] = ownership.annotate_written(
                ownership.annotate(annotations, claimed), wrote)
            kube.replace_configmap(cm)
            return ownership.reverted(data, new, recorded, keys)
        except Conflict:
            continue
    raise KubeError(f"ConfigMap {spec.namespace}/{spec.configmap} kept changing under us "
                    f"({MAX_CONFLICTS} conflicts); will retry")


def _refuse_recreating(kube: Kube, spec: PluginSpec) -> None:
    """A target this BrokerPlugin already rolled out to is not re-created with its key alone:
    the sidecars would read the missing keys of the other owners (broker config, other
    plugins) as "remove them". Missing, they keep their last good state instead."""
    obj = kube.get_plugin(spec.namespace, spec.name) or {}
    if (obj.get("status") or {}).get("currentTarget") == spec.configmap:
        raise TargetMissing(
            f"ConfigMap {spec.namespace}/{spec.configmap} was deleted after this plugin was "
            "rolled out to it; it is not re-created with this plugin's key alone (the sidecars "
            "would drop what others put there). Re-create it (e.g. kubectl apply of your broker "
            "manifests): this plugin's key is written again on the next resync")


def _owner_by_status(kube: Kube, spec: PluginSpec, name: str) -> str | None:
    """Who rolled plugin ``name`` out to this ConfigMap before owners were recorded: another
    BrokerPlugin of the namespace whose status says so (None: nobody)."""
    for obj in kube.list_plugins_in(spec.namespace):
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        target = ((obj.get("spec") or {}).get("target") or {}).get("configMap")
        if meta.get("name") != spec.name and target == spec.configmap and \
                status.get("currentPluginName") == name and status.get("currentImage"):
            return str(meta["name"])
    return None


# --- canary (spec.target.strategy.canary with spec.target.sidecars) ---------------------------


def _without_canaries(data: dict[str, str], name: str) -> dict[str, str]:
    suffix = "." + plugin_key(name)
    return {k: v for k, v in data.items()
            if not (k.startswith(CANARY_KEY_PREFIX) and k.endswith(suffix))}


def start_canary(kube: Kube, spec: PluginSpec, pods: Sequence[str],
                 release: PluginRelease) -> list[str]:
    """``release`` for ``pods`` only (their canary keys); the plugin key stays as it is."""
    text = render_plugin_release(release)

    def change(data: dict[str, str]) -> dict[str, str]:
        data = _without_canaries(data, release.name)
        data.update({canary_key(pod, release.name): text for pod in pods})
        return data

    return update_data(kube, spec, release.name, change)


def promote(kube: Kube, spec: PluginSpec, release: PluginRelease) -> list[str]:
    """Fan out: ``release`` as the plugin key and no canary keys, in one write (the canary
    pods see the same release, so they do not move)."""
    text = render_plugin_release(release)

    def change(data: dict[str, str]) -> dict[str, str]:
        data = _without_canaries(data, release.name)
        data[plugin_key(release.name)] = text
        return data

    return update_data(kube, spec, release.name, change)


def abort_canary(kube: Kube, spec: PluginSpec, name: str) -> list[str]:
    """Remove plugin ``name``'s canary keys: the canary pods return to the plugin key."""
    return update_data(kube, spec, name, lambda data: _without_canaries(data, name))


def expected_hashes(kube: Kube, spec: PluginSpec, pods: Sequence[str]) -> dict[str, str]:
    """The desired-state content hash each of ``pods`` computes from the target ConfigMap (the
    sidecar's ``desired_hash`` when this ConfigMap is all it reads)."""
    cm = kube.get_configmap(spec.namespace, spec.configmap or "") if spec.configmap else None
    if cm is None:
        return {}
    docs = [Document(f"configmap {spec.namespace}/{spec.configmap}", k, v)
            for k, v in (cm.get("data") or {}).items()]
    return {pod: content_hash(select_for_pod(docs, pod)) for pod in pods}
