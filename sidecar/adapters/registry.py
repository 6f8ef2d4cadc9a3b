"""Adapters by broker name. Adding a broker = one module with ``create`` + one line here."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from sidecar.adapters.base import AdapterError, BrokerAdapter

ADAPTERS: dict[str, str] = {
    "mosquitto": "sidecar.adapters.mosquitto",
    "vernemq": "sidecar.adapters.vernemq",
    "emqx": "sidecar.adapters.emqx",
    "hivemq": "sidecar.adapters.hivemq",
    "rabbitmq": "sidecar.adapters.rabbitmq",
}


def probe_mqtt_version(broker: str) -> str:
    """The MQTT version probes use with ``broker``: "5" unless its adapter module says otherwise
    in ``PROBE_MQTT_VERSION``."""
    module_name = ADAPTERS.get(broker)
    if module_name is None:
        return "5"
    return str(getattr(importlib.import_module(module_name), "PROBE_MQTT_VERSION", "5"))


def create_adapter(broker: str, options: Mapping[str, str], plugin_dir: Path) -> BrokerAdapter:
    """The adapter for ``broker``, configured from ``--adapter-opt`` key/values."""
    module_name = ADAPTERS.get(broker)
    if module_name is None:
        raise AdapterError(f"no adapter for broker {broker!r}; available: "
                           f"{', '.join(sorted(ADAPTERS))}")
    module = importlib.import_module(module_name)
    return cast(BrokerAdapter, module.create(options, plugin_dir))
