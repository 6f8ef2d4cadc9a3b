"""Who owns a plugin's key in a shared ConfigMap (pure).

The plugin name comes from the plugin's repository, so a repository could otherwise pick the
key another BrokerPlugin writes and replace that plugin in every broker reading the ConfigMap.
The first BrokerPlugin to write ``plugin.<name>.yaml`` owns it: the ConfigMap's
``plugforge.dev/owners`` annotation maps keys to BrokerPlugin names, written in the same
optimistic update as the data. Another BrokerPlugin building the same plugin name gets a
``Conflict`` condition and writes nothing, until the owner is deleted. A key written before
owners were recorded belongs to the BrokerPlugin whose status says it rolled it out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from builder.errors import KeyConflict

OWNERS_ANNOTATION = "plugforge.dev/owners"


def owners(annotations: Mapping[str, str]) -> dict[str, str]:
    """The recorded owners (key -> BrokerPlugin name); anything unreadable counts as none."""
    try:
        value = json.loads(annotations.get(OWNERS_ANNOTATION) or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def claim(recorded: Mapping[str, str], key: str, plugin: str, present: bool, *,
          alive: Callable[[str], bool], legacy: Callable[[], str | None],
          where: str) -> dict[str, str]:
    """The owners after BrokerPlugin ``plugin`` writes ``key``; ``KeyConflict`` if another
    BrokerPlugin that still exists owns it. ``present``: the key has a value now."""
    holder = recorded.get(key) or (legacy() if present else None)
    if holder and holder != plugin and alive(holder):
        raise KeyConflict(
            f"{where}: key {key!r} belongs to BrokerPlugin {holder!r}, and {plugin!r} builds a "
            "plugin of the same name; nothing was written. Give the plugin another name in its "
            "repository, or target another ConfigMap")
    return {**recorded, key: plugin}


def annotate(annotations: Mapping[str, str], recorded: Mapping[str, str]) -> dict[str, str]:
    return {**annotations,
            OWNERS_ANNOTATION: json.dumps(dict(recorded), sort_keys=True, separators=(",", ":"))}
