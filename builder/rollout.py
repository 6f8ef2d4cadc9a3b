"""Rollout (``rollout: Automatic``): write this plugin's key of the target ConfigMap.

The document is ``plugforge.contract.render_plugin_release`` — the one contract with the
sidecars. The write uses optimistic concurrency (the resourceVersion read) and retries on 409,
so concurrent writers of other keys (other plugins, operators) are never overwritten.
"""

from __future__ import annotations

from builder.errors import Conflict, KubeError
from builder.kube import Kube
from builder.pipeline import Outcome
from builder.resources import PluginSpec
from plugforge.contract import PluginRelease, Provenance, plugin_key, render_plugin_release

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
