"""Which broker.yaml keys the RabbitMQ adapter manages, how each takes effect, what is valid.

Users and permissions of RabbitMQ's internal database, live (HOT: the next login or
authorization check sees them; they matter where the plugin's chain or the management UI uses
the internal backend)::

    user.<name>.password: "<password>"        # write-only; creates the user
    user.<name>.tags: "management,monitoring"  # sorted, comma separated ("" = no tags)
    permission.<user>.<configure|write|read>: "<regex>"        # in the adapter's vhost
    topic_permission.<user>.<write|read>: "<regex>"            # on the adapter's exchange

Live through the node's application env (``rabbitmqctl eval application:set_env``): the
``mqtt.*`` keys in ``LIVE_APP_ENV``. Each was verified on RabbitMQ 3.10.8 to apply to the next
MQTT connection with the node running (rabbit_mqtt reads them per connection); a change is lost
when the node restarts, and the sidecar's resync sets it again.

Every other ``rabbitmq.conf`` key (listeners, ``mqtt.retained_message_store``, ``auth_backends``
...) is read only at node start: it belongs in rabbitmq.conf, and validation refuses it here
rather than stage a change the node would not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sidecar.adapters.base import ChangeClass

# key -> (application, env key, kind); kind says how the value is typed in the node.
LIVE_APP_ENV: dict[str, tuple[str, str, str]] = {
    "mqtt.vhost": ("rabbitmq_mqtt", "vhost", "binary"),
    "mqtt.exchange": ("rabbitmq_mqtt", "exchange", "binary"),
    "mqtt.allow_anonymous": ("rabbitmq_mqtt", "allow_anonymous", "boolean"),
}
# rabbitmq.conf keys that are only read at node start (the mqtt schema of 3.10 and the core).
RESTART_PREFIXES = ("mqtt.", "listeners.", "management.", "log.", "auth_backends",
                    "auth_mechanisms", "default_", "loopback_users", "ssl_options.",
                    "cluster_formation.", "vm_memory_high_watermark", "disk_free_limit")
USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY = re.compile(r"^(user|permission|topic_permission)\.(.+)\.([a-z]+)$")
FIELDS = {"user": ("password", "tags"), "permission": ("configure", "write", "read"),
          "topic_permission": ("write", "read")}


@dataclass(frozen=True)
class ManagedKey:
    kind: str   # user | permission | topic_permission
    user: str
    field: str


def parse_key(key: str) -> ManagedKey | None:
    match = _KEY.match(key)
    if not match:
        return None
    return ManagedKey(match.group(1), match.group(2), match.group(3))


def check(key: str, value: str) -> str | None:
    """None when RabbitMQ would accept ``key: value`` live, else what is expected instead."""
    if key in LIVE_APP_ENV:
        kind = LIVE_APP_ENV[key][2]
        if kind == "boolean" and value not in ("true", "false"):
            return f"expected true or false, found {value!r}"
        if kind == "binary" and not value:
            return "expected a non-empty string"
        return None
    parsed = parse_key(key)
    if parsed is None:
        if key.startswith("auth_backends"):
            return ("the adapter sets auth_backends itself: the enabled auth plugins are the "
                    "whole chain (a refusal must not fall through to another backend)")
        if key.startswith(RESTART_PREFIXES):
            return ("read only when the node starts (not changeable live): set it in "
                    "rabbitmq.conf; live keys are " + ", ".join(sorted(LIVE_APP_ENV))
                    + ", user.*, permission.*, topic_permission.*")
        return ("unknown key; expected user.<name>.password|tags, "
                "permission.<user>.configure|write|read, topic_permission.<user>.write|read "
                "or one of " + ", ".join(sorted(LIVE_APP_ENV)))
    if parsed.field not in FIELDS[parsed.kind]:
        return (f"{parsed.kind} keys end in one of {', '.join(FIELDS[parsed.kind])}, found "
                f"{parsed.field!r}")
    if not USER_NAME.match(parsed.user):
        return f"user names are 1-64 of [A-Za-z0-9_.@-], found {parsed.user!r}"
    if parsed.field == "password":
        return None if value else "expected a non-empty password"
    if parsed.field == "tags":
        bad = [t for t in split_tags(value) if not TAG.match(t)]
        return f"tags are [A-Za-z0-9_-]+, found {bad}" if bad else None
    try:
        # RabbitMQ matches with Erlang's re (PCRE); Python's syntax covers the common subset,
        # and the node itself rejects anything else with invalid_regexp when applied.
        re.compile(value)
    except re.error as e:
        return f"expected a regular expression, found {value!r} ({e})"
    return None


def classify(key: str) -> ChangeClass:
    if key in LIVE_APP_ENV or parse_key(key) is not None:
        return ChangeClass.HOT
    return ChangeClass.BROKER_RESTART


def split_tags(value: str) -> list[str]:
    return sorted({t.strip() for t in value.split(",") if t.strip()})


def normalize(key: str, value: str) -> str:
    parsed = parse_key(key)
    if parsed is not None and parsed.field == "tags":
        return ",".join(split_tags(value))
    return value


def is_write_only(key: str) -> bool:
    parsed = parse_key(key)
    return parsed is not None and parsed.field == "password"
