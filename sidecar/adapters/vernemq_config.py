"""Which VerneMQ settings change live (``vmq-admin set``), and what values they take.

``vmq-admin set`` only accepts keys on clique's config whitelist; vmq_server registers these
in ``vmq_config_cli:register_config_/0`` (VerneMQ source, apps/vmq_server).
``tests/test_adapter_vernemq.py`` checks every key here against a live 2.0.1 node (``show``
and ``set`` of its own value): ``allow_multiple_sessions`` and ``message_size_limit`` are not
2.0.1 keys (the node answers "Invalid config keys"); ``max_message_size`` is;
``queue_deliver_mode`` is "not settable"; ``persistent_client_expiration`` is set as a duration
(``1h``) but shown in seconds (``3600``), so the sidecar could never read back what it set:
both stay in vernemq.conf. Everything else in
vernemq.conf is read once at node start: ``set listener.max_connections=5`` is refused
(seen on a live node: "Translation for 'vmq_server.listeners' expected to find setting ..."), and an
unknown name gives "Unknown variable". Those keys are BROKER_RESTART and the sidecar does not
manage them (see ``restart_problem``). Plugins that ship a cuttlefish schema and whitelist their
own keys can be added with the ``extra_live_keys`` adapter option.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from sidecar.adapters.base import ChangeClass

Check = Callable[[str], str | None]

KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


def _on_off(value: str) -> str | None:
    return None if value in ("on", "off") else "expected on or off (VerneMQ's enum)"


def _integer(value: str) -> str | None:
    return None if re.fullmatch(r"[0-9]{1,10}", value) else "expected a non-negative integer"


def _one_of(*allowed: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in allowed else f"expected one of {', '.join(allowed)}"
    return check


def _any(_value: str) -> str | None:
    return None


LIVE: dict[str, Check] = {
    "allow_anonymous": _on_off,
    "allow_register_during_netsplit": _on_off,
    "allow_publish_during_netsplit": _on_off,
    "allow_subscribe_during_netsplit": _on_off,
    "allow_unsubscribe_during_netsplit": _on_off,
    "queue_type": _one_of("fifo", "lifo"),
    "retry_interval": _integer,
    "max_client_id_size": _integer,
    "max_inflight_messages": _integer,
    "max_online_messages": _integer,
    "max_offline_messages": _integer,
    "max_message_rate": _integer,
    "max_message_size": _integer,
    "upgrade_outgoing_qos": _on_off,
    "systree_enabled": _on_off,
    "systree_interval": _integer,
    "graphite_enabled": _on_off,
    "graphite_host": _any,
    "graphite_port": _integer,
    "graphite_interval": _integer,
}


class LiveKeys:
    """vmq_server's live keys plus the ones an operator declared for plugins."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.checks: dict[str, Check] = dict(LIVE)
        for key in extra:
            self.checks.setdefault(key, _any)

    def __contains__(self, key: object) -> bool:
        return key in self.checks

    def classify(self, key: str) -> ChangeClass:
        return ChangeClass.HOT if key in self.checks else ChangeClass.BROKER_RESTART

    def check(self, key: str, value: str) -> str | None:
        """None when ``key=value`` may be sent to ``vmq-admin set``, else what is expected."""
        if not KEY.match(key):
            return "expected a vernemq.conf key (lower-case words joined by dots)"
        if not value or any(c in value for c in "\r\n\0"):
            return "expected a non-empty value on one line"
        check = self.checks.get(key)
        if check is None:
            return restart_problem(key, self.checks)
        problem = check(value)
        return None if problem is None else f"{problem}, found {value!r}"


def restart_problem(key: str, live: Iterable[str]) -> str:
    return (f"VerneMQ cannot change {key!r} on a running node (`vmq-admin set` accepts only "
            "whitelisted keys; others are read from vernemq.conf at start): set it in the "
            "broker's vernemq.conf / DOCKER_VERNEMQ_* environment and restart the pod. Keys "
            f"this sidecar sets live: {', '.join(sorted(live))} (more with --adapter-opt "
            "extra_live_keys=... for plugins that whitelist their own)")
