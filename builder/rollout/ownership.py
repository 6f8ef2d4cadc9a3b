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

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping

from builder.errors import KeyConflict

OWNERS_ANNOTATION = "plugforge.dev/owners"


def owners(annotations: Mapping[str, str]) -> dict[str, str]:
    """The recorded owners (key -> BrokerPlugin name); anything unreadable counts as none."""
    return _string_map(annotations, OWNERS_ANNOTATION)


def _string_map(annotations: Mapping[str, str], name: str) -> dict[str, str]:
    """Annotation ``name`` as a JSON object of strings; anything unreadable counts as empty."""
    try:
        value = json.loads(annotations.get(name) or "{}")
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
    return _with_map(annotations, OWNERS_ANNOTATION, recorded)


def _with_map(annotations: Mapping[str, str], name: str,
              value: Mapping[str, str]) -> dict[str, str]:
    return {**annotations, name: json.dumps(dict(value), sort_keys=True, separators=(",", ":"))}


# --- what the builder wrote: a direct edit of an owned key is reverted, and said so ---------

WRITTEN_ANNOTATION = "plugforge.dev/written"
"""key -> fingerprint of the value the builder last wrote there (no values: they may be
settings a reader of annotations should not see)."""


def fingerprint(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def written(annotations: Mapping[str, str]) -> dict[str, str]:
    """The recorded fingerprints; anything unreadable counts as none (nothing is reported)."""
    return _string_map(annotations, WRITTEN_ANNOTATION)


def reverted(before: Mapping[str, str], after: Mapping[str, str],
             recorded: Mapping[str, str], keys: Iterable[str]) -> list[str]:
    """Of ``keys`` (one plugin's), those someone else changed or removed since the builder
    wrote them, which this write (``before`` -> ``after``) overwrites. A key with no record
    (written before records were kept) is never reported."""
    return sorted(k for k in keys if k in recorded and after.get(k) != before.get(k)
                  and (k not in before or fingerprint(before[k]) != recorded[k]))


def record(recorded: Mapping[str, str], after: Mapping[str, str],
           keys: Iterable[str]) -> dict[str, str]:
    """The records once ``after`` is written: ``keys`` (one plugin's) as written now."""
    new = dict(recorded)
    for k in keys:
        if k in after:
            new[k] = fingerprint(after[k])
        else:
            new.pop(k, None)
    return new


def annotate_written(annotations: Mapping[str, str],
                     recorded: Mapping[str, str]) -> dict[str, str]:
    return _with_map(annotations, WRITTEN_ANNOTATION, recorded)
