"""Which EMQX 5 config the sidecar manages, and how flat ``broker.yaml`` keys map onto it.

``broker.yaml`` keys are dotted HOCON paths (``mqtt.max_inflight``, ``sysmon.vm.long_schedule``,
``log.console.level``). EMQX's REST API updates config per root, at runtime (emqx_conf:update):

* ``GET/PUT /configs/global_zone`` for the zone roots (``mqtt``, ``force_gc``,
  ``force_shutdown``, ``flapping_detect``): the body maps each root to its whole object, and
  EMQX 5.8.9 requires all four roots in a PUT (``required_field`` otherwise);
* ``GET/PUT /configs/<root>`` for ``alarm``, ``sys_topics``, ``sysmon``, ``log`` (the whole
  root object; "deep config get is not supported").

All of these apply without a restart (HOT). ``node``, ``cluster`` and ``rpc`` are read-only at
runtime (EMQX reads them at boot), so they are BROKER_RESTART and refused with what to do
instead; listeners, authentication and the rest are not managed through broker.yaml.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sidecar.adapters.base import ChangeClass

ZONE_ROOTS = ("mqtt", "force_gc", "force_shutdown", "flapping_detect")
ROOTS = ("alarm", "sys_topics", "sysmon", "log")
RESTART_ROOTS = ("node", "cluster", "rpc")
_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")


def root_of(key: str) -> str:
    return key.split(".", 1)[0]


def classify(key: str) -> ChangeClass:
    return ChangeClass.BROKER_RESTART if root_of(key) in RESTART_ROOTS else ChangeClass.HOT


def check(key: str, value: str) -> str | None:
    """None when the sidecar may send ``key`` to EMQX; EMQX itself judges the value."""
    if not _KEY.match(key):
        return "expected a dotted EMQX config path such as mqtt.max_inflight"
    if any(c in value for c in "\r\n\0"):
        return "expected a single-line value"
    root = root_of(key)
    if root in RESTART_ROOTS:
        return (f"EMQX reads {root}.* only at boot (read-only over the REST API): set it in "
                "emqx.conf or EMQX_* environment variables and restart the pod")
    if root not in ZONE_ROOTS and root not in ROOTS:
        return (f"root {root!r} is not managed through broker.yaml; expected one of "
                f"{', '.join(ZONE_ROOTS + ROOTS)}")
    return None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"mqtt": {"max_inflight": 32}}`` -> ``{"mqtt.max_inflight": "32"}``."""
    flat: dict[str, str] = {}
    for name, value in tree.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = to_text(value)
    return flat


def to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def typed(text: str, current: Any) -> Any:
    """``text`` as the JSON type the current value has; the string itself when it does not
    parse (EMQX then answers with its own message, e.g. for ``infinity`` in an int field)."""
    if isinstance(current, bool):
        return {"true": True, "false": False}.get(text.lower(), text)
    if isinstance(current, int) and re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if isinstance(current, float) and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text):
        return float(text)
    if isinstance(current, list | dict):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def normalize(value: str) -> str:
    stripped = value.strip()
    return stripped.lower() if stripped.lower() in ("true", "false") else stripped


def updated(tree: Mapping[str, Any], changes: Mapping[str, str | None],
            originals: Mapping[str, str | None]) -> dict[str, Any]:
    """A copy of ``tree`` (root name -> object) with ``changes`` (full dotted keys) applied;
    None restores ``originals[key]`` (None there: the key was absent, so it is removed)."""
    result = copy.deepcopy(dict(tree))
    for key, value in changes.items():
        parts = key.split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        target = value if value is not None else originals.get(key)
        if target is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = typed(target, node.get(parts[-1]))
    return result


def roots(keys: Iterable[str]) -> set[str]:
    return {root_of(k) for k in keys}
