"""Which mosquitto.conf options the sidecar manages, how each takes effect, and what is valid.

From mosquitto.conf(5) of mosquitto 2.0 (Debian 2.0.11): options marked "Reloaded on reload
signal" are applied live by rewriting the include file and sending SIGHUP (HOT); options marked
"Not reloaded" take effect only on a broker restart (BROKER_RESTART). Options that name files,
listeners, bridges or plugins are not managed through broker.yaml: listeners and files belong
to the pod spec, plugins to ``plugin.<name>.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sidecar.adapters.base import ChangeClass

Check = Callable[[str], str | None]  # None when valid, else what was expected


def _boolean(value: str) -> str | None:
    return None if value in ("true", "false") else "expected true or false"


def _count(value: str) -> str | None:
    return None if re.fullmatch(r"[0-9]{1,10}", value) and int(value) < 2**31 else (
        "expected a non-negative integer below 2^31")


def _range(low: int, high: int) -> Check:
    def check(value: str) -> str | None:
        if re.fullmatch(r"[0-9]{1,10}", value) and low <= int(value) <= high:
            return None
        return f"expected an integer from {low} to {high}"
    return check


def _memory(value: str) -> str | None:
    return None if re.fullmatch(r"[0-9]{1,12}", value) else "expected a number of bytes"


def _duration(value: str) -> str | None:
    # persistent_client_expiration: <n><h|d|w|m|y>
    return None if re.fullmatch(r"[1-9][0-9]{0,5}[hdwmy]", value) else (
        "expected a duration like 2h, 14d, 1w, 6m or 1y")


def _one_of(*allowed: str) -> Check:
    def check(value: str) -> str | None:
        words = value.split()
        if words and all(w in allowed for w in words):
            return None
        return f"expected space-separated values from {', '.join(allowed)}"
    return check


def _prefix(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_-]{1,50}", value) else (
        "expected 1-50 letters, digits, '_' or '-'")


def _timestamp_format(value: str) -> str | None:
    return None if value and "\n" not in value and len(value) < 100 else (
        "expected a strftime format on one line")


RELOADABLE: dict[str, Check] = {
    "allow_anonymous": _boolean,
    "allow_duplicate_messages": _boolean,
    "allow_zero_length_clientid": _boolean,
    "auto_id_prefix": _prefix,
    "autosave_interval": _count,
    "autosave_on_changes": _boolean,
    "check_retain_source": _boolean,
    "clientid_prefixes": _prefix,
    "connection_messages": _boolean,
    "log_timestamp": _boolean,
    "log_timestamp_format": _timestamp_format,
    "log_type": _one_of("debug", "error", "warning", "notice", "information", "subscribe",
                        "unsubscribe", "websockets", "none", "all"),
    "max_inflight_bytes": _count,
    "max_inflight_messages": _range(0, 65535),
    "max_keepalive": _range(0, 65535),
    "max_packet_size": _count,
    "max_queued_bytes": _count,
    "max_queued_messages": _count,
    "memory_limit": _memory,
    "message_size_limit": _range(0, 268435455),
    "persistent_client_expiration": _duration,
    "queue_qos0_messages": _boolean,
    "retain_available": _boolean,
    "set_tcp_nodelay": _boolean,
    "sys_interval": _count,
    "upgrade_outgoing_qos": _boolean,
}

RESTART_ONLY: dict[str, Check] = {
    "max_connections": lambda v: None if re.fullmatch(r"-1|[0-9]{1,9}", v) else (
        "expected -1 (no limit) or a non-negative integer"),
    "max_qos": _range(0, 2),
    "max_topic_alias": _range(0, 65535),
    "use_username_as_clientid": _boolean,
}

NOT_MANAGED = {
    "acl_file", "password_file", "psk_file", "pid_file", "user", "listener", "port",
    "bind_address", "bind_interface", "include_dir", "plugin", "auth_plugin", "persistence",
    "persistence_file", "persistence_location", "per_listener_settings", "log_dest",
    "protocol", "socket_domain", "http_dir", "mount_point",
}


def classify_option(key: str) -> ChangeClass:
    return ChangeClass.BROKER_RESTART if key in RESTART_ONLY else ChangeClass.HOT


def check_option(key: str, value: str) -> str | None:
    """None when mosquitto accepts ``key value`` in its config, else what it expects."""
    if "\n" in value or "\r" in value:
        return "expected a single line (a newline would inject config lines)"
    check = RELOADABLE.get(key) or RESTART_ONLY.get(key)
    if check is not None:
        problem = check(value)
        return None if problem is None else f"{problem}, found {value!r}"
    if key in NOT_MANAGED or key.startswith(("bridge_", "plugin_opt_", "auth_opt_")):
        return ("not managed through broker.yaml: listeners, files and persistence belong to "
                "the broker's own mosquitto.conf, plugins to plugin.<name>.yaml")
    return (f"unknown mosquitto option; expected one of {', '.join(sorted(RELOADABLE))} "
            f"(live) or {', '.join(sorted(RESTART_ONLY))} (restart), or a dynsec.* key")
