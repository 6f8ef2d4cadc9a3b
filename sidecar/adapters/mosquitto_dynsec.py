"""Live clients, roles and ACLs through mosquitto's dynamic-security plugin.

broker.yaml keys with the ``dynsec.`` prefix (all HOT, applied on ``$CONTROL/dynamic-security/v1``
without touching mosquitto.conf)::

    dynsec.default_acl.<publishClientSend|publishClientReceive|subscribe|unsubscribe>: allow|deny
    dynsec.role.<role>.acls: "<aclType> <topic> <allow|deny> [priority]; ..."  # higher first
    dynsec.client.<username>.roles: "<role>,<role>"                   # creates the client
    dynsec.client.<username>.password: "<password>"                   # write-only

Removing a key from broker.yaml undoes it: the role or client is deleted, default ACL access
goes back to mosquitto's default.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sidecar.adapters.base import WRITE_ONLY, AdapterError, BrokerUnavailable

PREFIX = "dynsec."
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ACCESS_TYPES = ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")
DEFAULT_ACCESS = {"publishClientSend": "deny", "publishClientReceive": "allow",
                  "subscribe": "deny", "unsubscribe": "allow"}
ACL_TYPES = ("publishClientSend", "publishClientReceive", "subscribeLiteral",
             "subscribePattern", "unsubscribeLiteral", "unsubscribePattern")
_NAME = r"[A-Za-z0-9_.@-]{1,64}"
_KEY = re.compile(rf"^dynsec\.(?:(default_acl)\.(\w+)|(role|client)\.({_NAME})\.(\w+))$")


@dataclass(frozen=True)
class DynsecKey:
    kind: str      # default_acl | role | client
    name: str      # access type, role name or username
    field: str     # "" for default_acl; acls | roles | password


# parse_key and parse_acls are pure and run for every dynsec key at each validate, plan and
# resync: 1,000 keys cost milliseconds a resync. Cached on the key and value strings, bounded
# (2,048 entries, well under 1 MB) so a sidecar that sees many distinct values stays flat.
@functools.lru_cache(maxsize=2048)
def parse_key(key: str) -> DynsecKey | None:
    match = _KEY.match(key)
    if not match:
        return None
    if match.group(1):
        return DynsecKey("default_acl", match.group(2), "")
    return DynsecKey(match.group(3), match.group(4), match.group(5))


def check(key: str, value: str) -> str | None:
    """None when the dynsec plugin would accept ``key: value``, else what it expects."""
    parsed = parse_key(key)
    if parsed is None:
        return ("unknown dynsec key; expected dynsec.default_acl.<type>, dynsec.role.<name>.acls, "
                "dynsec.client.<user>.roles or dynsec.client.<user>.password")
    if parsed.kind == "default_acl":
        if parsed.name not in ACCESS_TYPES:
            return f"expected an access type from {', '.join(ACCESS_TYPES)}"
        return None if value in ("allow", "deny") else f"expected allow or deny, found {value!r}"
    if parsed.kind == "role":
        if parsed.field != "acls":
            return "a role has one field: acls"
        try:
            parse_acls(value)
        except ValueError as e:
            return str(e)
        return None
    if parsed.field == "roles":
        bad = [r for r in split_roles(value) if not re.fullmatch(_NAME, r)]
        return f"invalid role name(s) {bad}" if bad else None
    if parsed.field == "password":
        return None if value else "expected a non-empty password"
    return "a client has two fields: roles and password"


Acl = tuple[str, str, bool, int]  # aclType, topic, allow, priority


def parse_acls(value: str) -> list[Acl]:
    return list(_parse_acls(value))  # a copy: callers may change their list


@functools.lru_cache(maxsize=2048)
def _parse_acls(value: str) -> tuple[Acl, ...]:
    acls = []
    # Only ASCII spaces separate fields: any other character may be part of a topic.
    for entry in filter(None, (e.strip(" ") for e in value.split(";"))):
        parts = [p for p in entry.split(" ") if p]
        if len(parts) not in (3, 4) or parts[0] not in ACL_TYPES or \
                parts[2] not in ("allow", "deny") or (
                len(parts) == 4 and not re.fullmatch(r"-?[0-9]{1,6}", parts[3])):
            raise ValueError(
                f"ACL {entry!r}: expected '<aclType> <topic> <allow|deny> [priority]' with "
                f"aclType one of {', '.join(ACL_TYPES)}")
        priority = int(parts[3]) if len(parts) == 4 else 0
        acls.append((parts[0], parts[1], parts[2] == "allow", priority))
    return tuple(sorted(acls))


def format_acls(acls: list[Acl]) -> str:
    return "; ".join(f"{t} {topic} {'allow' if allow else 'deny'}"
                     + (f" {priority}" if priority else "")
                     for t, topic, allow, priority in sorted(acls))


def split_roles(value: str) -> list[str]:
    return sorted(r.strip() for r in value.split(",") if r.strip())


def observe(admin: DynsecAdmin) -> dict[str, str]:
    """The dynsec state as broker.yaml keys (passwords excepted: dynsec never returns them)."""
    return state_from(request_state(admin).wait())


def request_state(admin: DynsecAdmin) -> Reply:
    """Ask for the dynsec state now; ``state_from(reply.wait())`` reads it later."""
    return admin.send([
        {"command": "getDefaultACLAccess"},
        {"command": "listRoles", "verbose": True, "count": -1, "offset": 0},
        {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
    ])


def state_from(replies: list[dict[str, Any]]) -> dict[str, str]:
    state: dict[str, str] = {}
    for entry in replies[0].get("data", {}).get("acls", []):
        state[f"dynsec.default_acl.{entry['acltype']}"] = "allow" if entry["allow"] else "deny"
    for role in replies[1].get("data", {}).get("roles", []):
        acls = [(a["acltype"], a["topic"], bool(a["allow"]), int(a.get("priority", 0)))
                for a in role.get("acls", [])]
        state[f"dynsec.role.{role['rolename']}.acls"] = format_acls(acls)
    for client in replies[2].get("data", {}).get("clients", []):
        roles = sorted(r["rolename"] for r in client.get("roles", []))
        state[f"dynsec.client.{client['username']}.roles"] = ",".join(roles)
        state[f"dynsec.client.{client['username']}.password"] = WRITE_ONLY
    return state


def commands_for(changes: Mapping[str, str | None], current: Mapping[str, str]
                 ) -> list[dict[str, Any]]:
    """The dynsec commands that move ``current`` to ``changes``; roles before the clients that
    use them, deletions of clients before deletions of roles."""
    role_cmds: list[dict[str, Any]] = []
    client_cmds: list[dict[str, Any]] = []
    default_cmds: list[dict[str, Any]] = []
    delete_clients: list[dict[str, Any]] = []
    delete_roles: list[dict[str, Any]] = []
    clients_known = {k.split(".")[2] for k in current if k.startswith("dynsec.client.")}
    for key, value in sorted(changes.items()):
        parsed = parse_key(key)
        if parsed is None:
            raise AdapterError(f"config.{key}: not a dynsec key")
        if parsed.kind == "default_acl":
            access = value if value is not None else DEFAULT_ACCESS[parsed.name]
            default_cmds.append({"command": "setDefaultACLAccess", "acls": [
                {"acltype": parsed.name, "allow": access == "allow"}]})
        elif parsed.kind == "role":
            if value is None:
                delete_roles.append({"command": "deleteRole", "rolename": parsed.name})
                continue
            old = current.get(key)
            if old is None:
                role_cmds.append({"command": "createRole", "rolename": parsed.name})
            old_acls = set(parse_acls(old)) if old else set()
            new_acls = set(parse_acls(value))
            for acltype, topic, _, _ in sorted(old_acls - new_acls):
                role_cmds.append({"command": "removeRoleACL", "rolename": parsed.name,
                                  "acltype": acltype, "topic": topic})
            for acltype, topic, allow, priority in sorted(new_acls - old_acls):
                role_cmds.append({"command": "addRoleACL", "rolename": parsed.name,
                                  "acltype": acltype, "topic": topic, "allow": allow,
                                  "priority": priority})
        elif parsed.field == "password":
            if value is None:
                delete_clients.append({"command": "deleteClient", "username": parsed.name})
            elif parsed.name in clients_known:
                client_cmds.append({"command": "setClientPassword", "username": parsed.name,
                                    "password": value})
            else:
                client_cmds.insert(0, {"command": "createClient", "username": parsed.name,
                                       "password": value})
                clients_known.add(parsed.name)
        else:  # client roles
            old_roles = set(split_roles(current.get(key, "")))
            new_roles = set(split_roles(value or ""))
            if parsed.name not in clients_known:
                client_cmds.insert(0, {"command": "createClient", "username": parsed.name})
                clients_known.add(parsed.name)
            for role in sorted(old_roles - new_roles):
                client_cmds.append({"command": "removeClientRole", "username": parsed.name,
                                    "rolename": role})
            for role in sorted(new_roles - old_roles):
                client_cmds.append({"command": "addClientRole", "username": parsed.name,
                                    "rolename": role})
    return role_cmds + client_cmds + default_cmds + delete_clients + delete_roles


class DynsecAdmin:
    """A persistent admin connection to ``$CONTROL/dynamic-security/v1``."""

    def __init__(self, host: str, port: int, username: str, password: str,
                 timeout: float = 5.0) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._username, self._password = username, password
        self._client: mqtt.Client | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Reply] = {}
        self._lost = threading.Event()  # the connection dropped: reconnect and resubscribe
        self.calls = 0  # admin round trips, for tests and metrics

    def call(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; raise AdapterError naming the first refused one."""
        return self.send(commands).wait()

    def send(self, commands: list[dict[str, Any]]) -> Reply:
        """Send ``commands`` in one message now and return at once: the broker answers while
        the caller does other work, ``wait`` then collects the answer."""
        tag = uuid.uuid4().hex
        reply = Reply(self, commands, tag)
        if not commands:
            reply.deliver([])
            return reply
        with self._lock:
            client = self._connected()
            for i, command in enumerate(commands):
                command["correlationData"] = f"{tag}:{i}"
            self._pending[tag] = reply
            self.calls += 1
            # QoS 0: the response is the acknowledgement. With QoS 1 the broker's PUBACK and its
            # response leave back to back, and Nagle holds the second until the first is
            # ACKed (a delayed ACK: ~40 ms per call on Linux).
            info = client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=0)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._pending.pop(tag, None)
                self._drop()
                raise BrokerUnavailable(f"cannot send to mosquitto at {self._host}:"
                                        f"{self._port}: {mqtt.error_string(info.rc)}")
        return reply

    def unanswered(self, tag: str) -> BrokerUnavailable:
        """A reply did not come in time: the connection is started over at the next call."""
        with self._lock:
            self._pending.pop(tag, None)
            self._drop()
        return BrokerUnavailable(f"dynamic-security did not answer within {self._timeout}s on "
                                 f"{self._host}:{self._port} (is the plugin loaded?)")

    @property
    def timeout(self) -> float:
        return self._timeout

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connected(self) -> mqtt.Client:
        if self._client is not None and self._client.is_connected() and not self._lost.is_set():
            return self._client
        self._drop()
        self._lost.clear()
        # No paho reconnects: its loop thread would sleep up to 1 s in its reconnect wait, and
        # _drop's loop_stop waits for that thread (~0.9 s added to every apply after a broker
        # restart); a dropped connection is started over here anyway.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plugforge-sidecar-"
                             f"{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)
        client.username_pw_set(self._username, self._password)
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: subscribed.set()
        # A reconnect needs our subscription again: start over instead.
        client.on_disconnect = lambda *_: self._lost.set()
        try:
            client.connect(self._host, self._port, keepalive=30)
        except OSError as e:
            raise BrokerUnavailable(f"cannot connect to mosquitto at {self._host}:"
                                    f"{self._port}: {e}") from e
        client.loop_start()
        result, _ = client.subscribe(RESPONSE_TOPIC, qos=0)
        if result != mqtt.MQTT_ERR_SUCCESS or not subscribed.wait(self._timeout):
            client.loop_stop()
            client.disconnect()
            raise BrokerUnavailable(
                f"mosquitto at {self._host}:{self._port} did not let the sidecar subscribe to "
                f"{RESPONSE_TOPIC}: check the dynsec admin credentials")
        self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        if not responses:
            return
        tag = str(responses[0].get("correlationData", "")).rsplit(":", 1)[0]
        reply = self._pending.pop(tag, None)
        if reply is not None:
            reply.deliver(responses)


class Reply:
    """The broker's answer to one message of commands, on its way."""

    def __init__(self, admin: DynsecAdmin, commands: list[dict[str, Any]], tag: str) -> None:
        self._admin, self._commands, self._tag = admin, commands, tag
        self._done = threading.Event()
        self._responses: list[dict[str, Any]] = []

    def deliver(self, responses: list[dict[str, Any]]) -> None:
        self._responses = responses
        self._done.set()

    def wait(self) -> list[dict[str, Any]]:
        """The responses in command order; AdapterError names the first refused command."""
        if not self._done.wait(self._admin.timeout):
            raise self._admin.unanswered(self._tag)
        responses = sorted(self._responses, key=lambda r: int(
            str(r.get("correlationData", ":0")).rsplit(":", 1)[1]))
        for command, response in zip(self._commands, responses, strict=False):
            if response.get("error"):
                safe = {k: v for k, v in command.items()
                        if k not in ("password", "correlationData")}
                raise AdapterError(
                    f"dynamic-security refused {json.dumps(safe, sort_keys=True)}: "
                    f"{response['error']}")
        return responses
