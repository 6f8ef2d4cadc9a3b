"""The desired-state contract between the builder and the sidecars: what a target ConfigMap holds.

A broker's sidecar watches one or more ConfigMaps (mounted directories, or through the API).
Each ConfigMap key is one YAML document:

``broker.yaml`` (kind ``BrokerConfig``, written by operators; at most one across all sources)::

    apiVersion: plugforge.dev/v1alpha1
    kind: BrokerConfig
    broker: mosquitto            # the adapter this state is for; a sidecar refuses another broker
    config:                      # runtime settings the broker can change live (adapter-checked)
      max_inflight_messages: "20"

``plugin.<name>.yaml`` (kind ``PluginRelease``, one per plugin; the builder writes its own key
and leaves every other key alone)::

    apiVersion: plugforge.dev/v1alpha1
    kind: PluginRelease
    name: deny_mallory           # the name the broker knows the plugin by
    image: registry.example:5000/plugins/deny-mallory@sha256:<64 hex>   # digest required
    enabled: true                # default true
    settings:                    # string map handed to the plugin the broker's native way
      deny_users: mallory,eve
    probes:                      # optional post-load smoke tests; a failing probe rolls back
      - {name: mallory-refused, action: connect, username: mallory, expect: refused}
      - {name: forbidden-publish, action: publish, username: alice, topic: forbidden/x,
         expect: refused, passwordFrom: {secret: probe-credentials, key: alice}}
    source: {commit: <sha>, build: <PluginBuild name>, repository: <git url>}  # provenance

A probe's password is never in a document: ``passwordFrom`` names a key of a Secret mounted
into the sidecar, read at probe time from ``<--probe-secrets-dir>/<secret>/<key>``; an inline
``password`` is refused.

``canary.<pod>.plugin.<name>.yaml`` (a ``PluginRelease``, written by the builder during a canary
rollout): on the pod named ``<pod>`` it replaces ``plugin.<name>.yaml``; every other pod ignores
it, so only the canary applies the new release (``select_for_pod``, before parsing).

Keys that match neither form are ignored (a ConfigMap may carry unrelated data); every document
of a known form is validated strictly: unknown fields, wrong types, tags instead of digests and
duplicate plugin names reject the whole state, with the path of the bad value in the message.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from plugforge.oci.errors import InvalidReference
from plugforge.oci.reference import require_digest

API_VERSION = "plugforge.dev/v1alpha1"
BROKER_KEY = "broker.yaml"
PLUGIN_KEY_PREFIX = "plugin."
PLUGIN_KEY_SUFFIX = ".yaml"
# libyaml when PyYAML was built with it (the wheels are), else the same rules in Python.
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
CANARY_KEY_PREFIX = "canary."
BROKERS = ("vernemq", "hivemq", "emqx", "mosquitto", "rabbitmq")

PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
# A DNS-1123 subdomain (Secret names) and a Secret data key, as the apiserver checks them.
SECRET_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
INLINE_PROBE_CREDENTIAL_REFUSAL = (
    "inline probe passwords are refused (they would be readable in the BrokerPlugin, the "
    "ConfigMap and its history); name a key of a Secret mounted into the sidecar instead: "
    "passwordFrom: {secret: NAME, key: KEY}")
_SETTING_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")

Expectation = Literal["accepted", "refused"]
ProbeAction = Literal["connect", "publish"]


class ContractError(ValueError):
    """The desired state is invalid; ``str()`` names the document and field and says why."""


def plugin_key(name: str) -> str:
    """The ConfigMap key holding plugin ``name``'s release."""
    return f"{PLUGIN_KEY_PREFIX}{name}{PLUGIN_KEY_SUFFIX}"


def canary_key(pod: str, name: str) -> str:
    """The ConfigMap key holding plugin ``name``'s canary release for pod ``pod`` only."""
    return f"{CANARY_KEY_PREFIX}{pod}.{plugin_key(name)}"


def select_for_pod(documents: Iterable[Document], pod: str) -> list[Document]:
    """The documents as pod ``pod`` sees them: its canary releases replace the plugin keys they
    name; canary keys of other pods (or all of them, when ``pod`` is empty) are dropped."""
    docs = list(documents)
    prefix = f"{CANARY_KEY_PREFIX}{pod}." if pod else None
    overrides: dict[str, Document] = {}
    for doc in docs:
        if prefix and doc.key.startswith(prefix) and _is_plugin_key(doc.key[len(prefix):]):
            key = doc.key[len(prefix):]
            overrides[key] = Document(doc.origin, key, doc.text)
    kept = [d for d in docs
            if not d.key.startswith(CANARY_KEY_PREFIX) and d.key not in overrides]
    return kept + list(overrides.values())


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Secret mounted into the sidecar (``<probe secrets dir>/<secret>/<key>``):
    the contract names a probe's password, never holds it."""

    secret: str
    key: str


@dataclass(frozen=True)
class Probe:
    name: str
    action: ProbeAction
    username: str
    expect: Expectation
    password_from: SecretKeyRef | None = None
    topic: str = ""


@dataclass(frozen=True)
class Provenance:
    commit: str = ""
    build: str = ""
    repository: str = ""


@dataclass(frozen=True)
class PluginRelease:
    name: str
    image: str  # repository@sha256:digest
    enabled: bool = True
    settings: Mapping[str, str] = field(default_factory=dict)
    probes: tuple[Probe, ...] = ()
    source: Provenance = Provenance()

    @property
    def digest(self) -> str:
        return self.image.rpartition("@")[2]


@dataclass(frozen=True)
class Document:
    """One ConfigMap key as read from a source (``origin`` names the ConfigMap or directory)."""

    origin: str
    key: str
    text: str


@dataclass(frozen=True)
class DesiredState:
    broker: str | None
    config: Mapping[str, str]
    plugins: tuple[PluginRelease, ...]
    content_hash: str

    def plugin(self, name: str) -> PluginRelease | None:
        return next((p for p in self.plugins if p.name == name), None)


def parse_desired_state(documents: Iterable[Document]) -> DesiredState:
    """Validate and merge every known document; raise ``ContractError`` on the first problem."""
    docs = sorted(documents, key=lambda d: (d.key, d.origin))
    broker_docs = [d for d in docs if d.key == BROKER_KEY]
    plugin_docs = [d for d in docs if _is_plugin_key(d.key)]
    if len(broker_docs) > 1:
        raise ContractError(
            f"{BROKER_KEY} appears in {', '.join(d.origin for d in broker_docs)}; "
            "exactly one source may hold the broker config")

    broker: str | None = None
    config: dict[str, str] = {}
    if broker_docs:
        broker, parsed = _parse_broker_config(broker_docs[0])
        config = dict(parsed)  # the cached result stays unchanged

    plugins: list[PluginRelease] = []
    seen: dict[str, str] = {}
    for doc in plugin_docs:
        release = _parse_plugin_release(doc)
        where = f"{doc.origin}/{doc.key}"
        if release.name in seen:
            raise ContractError(
                f"{where}: plugin {release.name!r} is also defined in {seen[release.name]}; "
                "plugin names must be unique")
        seen[release.name] = where
        plugins.append(release)

    return DesiredState(broker, config, tuple(plugins), content_hash(docs))


def content_hash(documents: Iterable[Document]) -> str:
    """A stable hash of the documents of known form: equal hash, nothing to do."""
    digest = hashlib.sha256()
    for doc in sorted(documents, key=lambda d: (d.key, d.origin)):
        if doc.key == BROKER_KEY or _is_plugin_key(doc.key):
            for part in (doc.key, doc.text):
                data = part.encode()
                digest.update(len(data).to_bytes(8, "big") + data)
    return "sha256:" + digest.hexdigest()


def render_plugin_release(release: PluginRelease) -> str:
    """The YAML document for ``plugin_key(release.name)``, deterministic for equal input."""
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "PluginRelease",
        "name": release.name,
        "image": release.image,
        "enabled": release.enabled,
    }
    if release.settings:
        body["settings"] = dict(sorted(release.settings.items()))
    if release.probes:
        body["probes"] = [_render_probe(p) for p in release.probes]
    source = {k: v for k, v in vars(release.source).items() if v}
    if source:
        body["source"] = source
    return yaml.safe_dump(body, sort_keys=False)


def require_digest_ref(image: str, where: str = "image") -> str:
    """Return ``image`` if it is ``registry/repository@sha256:<64 hex>``, else explain why not."""
    try:
        ref = require_digest(image)
    except InvalidReference as e:
        raise ContractError(
            f"{where}: {e}; plugins are pulled by digest only (a tag can change under you)"
        ) from e
    if ref.tag is not None:
        raise ContractError(f"{where}: {image!r} has both a tag and a digest; keep only the digest")
    return image


# --- parsing --------------------------------------------------------------------------------


def _is_plugin_key(key: str) -> bool:
    return key.startswith(PLUGIN_KEY_PREFIX) and key.endswith(PLUGIN_KEY_SUFFIX)


def _load(doc: Document, kind: str) -> dict[str, Any]:
    where = f"{doc.origin}/{doc.key}"
    try:
        # libyaml's parser: ~10x the pure-Python one, and the sidecar parses on every change.
        data = yaml.load(doc.text, Loader=_FAST_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise ContractError(f"{where}: not valid YAML{_yaml_problem(doc.text, e)}") from e
    if not isinstance(data, dict):
        raise ContractError(f"{where}: expected a mapping, found {_type(data)}")
    if data.get("apiVersion") != API_VERSION:
        raise ContractError(
            f"{where}: .apiVersion: expected {API_VERSION!r}, found {data.get('apiVersion')!r}")
    if data.get("kind") != kind:
        raise ContractError(f"{where}: .kind: expected {kind!r}, found {data.get('kind')!r}")
    return data


def _yaml_problem(text: str, error: yaml.YAMLError) -> str:
    """" at line L, column C: what" for refused YAML, from the pure-Python parser: libyaml's
    marks point less exactly (an unclosed ``[`` is reported on the line after it)."""
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as e:
        error = e
    mark = getattr(error, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{at}: {getattr(error, 'problem', error)}"


def _check_fields(data: Mapping[str, Any], where: str, required: set[str],
                  optional: set[str]) -> None:
    unknown = sorted(set(data) - required - optional)
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ContractError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {allowed}")
    missing = sorted(required - set(data))
    if missing:
        raise ContractError(f"{where}: missing required field(s) {', '.join(missing)}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ContractError(f"{where}: expected a string, found {_type(value)} {value!r}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ContractError(f"{where}: expected a mapping of strings, found {_type(value)}")
    result = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _SETTING_KEY.match(key):
            raise ContractError(f"{where}: key {key!r} is not a valid setting name")
        # Quote numbers and booleans in YAML: "20", "true". Silent coercion hides typos.
        result[key] = _string(item, f"{where}.{key}")
    return result


# Parsed per document text (documents are immutable values): a resync or an edit of one key
# re-parses only what changed, not every release of a 1,000-key ConfigMap. One broker.yaml
# matters at a time (it may be large); releases are small.
@functools.lru_cache(maxsize=4)
def _parse_broker_config(doc: Document) -> tuple[str, dict[str, str]]:
    where = f"{doc.origin}/{doc.key}"
    data = _load(doc, "BrokerConfig")
    _check_fields(data, where, {"apiVersion", "kind", "broker"}, {"config"})
    broker = _string(data["broker"], f"{where}: .broker")
    if broker not in BROKERS:
        raise ContractError(
            f"{where}: .broker: expected one of {', '.join(BROKERS)}, found {broker!r}")
    return broker, _string_map(data.get("config"), f"{where}: .config")


@functools.lru_cache(maxsize=8192)
def _parse_plugin_release(doc: Document) -> PluginRelease:
    where = f"{doc.origin}/{doc.key}"
    data = _load(doc, "PluginRelease")
    _check_fields(data, where, {"apiVersion", "kind", "name", "image"},
                  {"enabled", "settings", "probes", "source"})
    name = _string(data["name"], f"{where}: .name")
    if not PLUGIN_NAME.match(name):
        raise ContractError(
            f"{where}: .name: {name!r} must match {PLUGIN_NAME.pattern} "
            "(lowercase letter first; letters, digits, '_' and '-'; at most 63)")
    if doc.key != plugin_key(name):
        raise ContractError(
            f"{where}: the key must be {plugin_key(name)!r} for plugin {name!r}")
    image = require_digest_ref(_string(data["image"], f"{where}: .image"), f"{where}: .image")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ContractError(f"{where}: .enabled: expected true or false, found {enabled!r}")
    probes = _parse_probes(data.get("probes"), f"{where}: .probes")
    source = _parse_source(data.get("source"), f"{where}: .source")
    return PluginRelease(name, image, enabled, _string_map(data.get("settings"),
                                                           f"{where}: .settings"),
                         probes, source)


def _render_probe(probe: Probe) -> dict[str, Any]:
    body: dict[str, Any] = {"name": probe.name, "action": probe.action,
                            "username": probe.username, "expect": probe.expect}
    if probe.password_from is not None:
        body["passwordFrom"] = vars(probe.password_from)
    if probe.topic:
        body["topic"] = probe.topic
    return body


def parse_secret_key_ref(value: Any, where: str) -> SecretKeyRef:
    """``{secret: NAME, key: KEY}``, both safe as one path segment each (no '/', '.', '..')."""
    if not isinstance(value, dict):
        raise ContractError(f"{where}: expected a mapping {{secret, key}}, found {_type(value)}")
    _check_fields(value, where, {"secret", "key"}, set())
    secret = _string(value["secret"], f"{where}.secret")
    key = _string(value["key"], f"{where}.key")
    if not SECRET_NAME.match(secret):
        raise ContractError(f"{where}.secret: {secret!r} is not a Secret name "
                            "(lowercase letters, digits, '-' and '.'; at most 253)")
    if not SECRET_KEY.match(key) or key in (".", ".."):
        raise ContractError(f"{where}.key: {key!r} is not a Secret key "
                            "(letters, digits, '-', '_' and '.'; at most 253)")
    return SecretKeyRef(secret, key)


def _parse_probes(value: Any, where: str) -> tuple[Probe, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ContractError(f"{where}: expected a list, found {_type(value)}")
    probes = []
    names: set[str] = set()
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ContractError(f"{at}: expected a mapping, found {_type(item)}")
        if "password" in item:  # the value is not repeated: it is what must stay unseen
            raise ContractError(f"{at}.password: {INLINE_PROBE_CREDENTIAL_REFUSAL}")
        _check_fields(item, at, {"name", "action", "username", "expect"},
                      {"passwordFrom", "topic"})
        password_from = (parse_secret_key_ref(item["passwordFrom"], f"{at}.passwordFrom")
                         if "passwordFrom" in item else None)
        fields = {k: _string(v, f"{at}.{k}") for k, v in item.items() if k != "passwordFrom"}
        if fields["action"] not in ("connect", "publish"):
            raise ContractError(
                f"{at}.action: expected connect or publish, found {fields['action']!r}")
        if fields["expect"] not in ("accepted", "refused"):
            raise ContractError(
                f"{at}.expect: expected accepted or refused, found {fields['expect']!r}")
        if fields["action"] == "publish" and not fields.get("topic"):
            raise ContractError(f"{at}.topic: a publish probe needs a topic")
        if fields["name"] in names:
            raise ContractError(f"{at}.name: probe name {fields['name']!r} is used twice")
        names.add(fields["name"])
        probes.append(Probe(**fields, password_from=password_from))  # type: ignore[arg-type]
    return tuple(probes)


def _parse_source(value: Any, where: str) -> Provenance:
    if value is None:
        return Provenance()
    if not isinstance(value, dict):
        raise ContractError(f"{where}: expected a mapping, found {_type(value)}")
    _check_fields(value, where, set(), {"commit", "build", "repository"})
    return Provenance(**{k: _string(v, f"{where}.{k}") for k, v in value.items()})


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "nothing"}.get(
        type(value), type(value).__name__)
