"""The builder ↔ sidecar ConfigMap contract: valid states parse, every invalid one is explained."""

from __future__ import annotations

import re

import pytest
import yaml

from plugforge import contract
from plugforge.contract import (
    BROKER_KEY,
    ContractError,
    Document,
    PluginRelease,
    Probe,
    Provenance,
    SecretKeyRef,
    parse_desired_state,
    plugin_key,
    render_plugin_release,
)

DIGEST = "sha256:" + "a" * 64
IMAGE = f"127.0.0.1:5000/plugins/deny-mallory@{DIGEST}"

BROKER_DOC = """\
apiVersion: plugforge.dev/v1alpha1
kind: BrokerConfig
broker: mosquitto
config:
  max_inflight_messages: "20"
"""

PLUGIN_DOC = f"""\
apiVersion: plugforge.dev/v1alpha1
kind: PluginRelease
name: deny_mallory
image: {IMAGE}
settings:
  deny_users: mallory,eve
probes:
  - {{name: mallory-refused, action: connect, username: mallory, expect: refused}}
  - {{name: forbidden, action: publish, username: alice, topic: forbidden/x, expect: refused}}
"""


def docs(**keys: str) -> list[Document]:
    return [Document("cm/plugins", key, text) for key, text in keys.items()]


def test_valid_state_parses() -> None:
    state = parse_desired_state(
        [Document("cm/broker", BROKER_KEY, BROKER_DOC),
         Document("cm/plugins", "plugin.deny_mallory.yaml", PLUGIN_DOC),
         Document("cm/plugins", "unrelated-key", "anything at all: [")])
    assert state.broker == "mosquitto"
    assert state.config == {"max_inflight_messages": "20"}
    (plugin,) = state.plugins
    assert plugin.name == "deny_mallory"
    assert plugin.digest == DIGEST
    assert plugin.enabled is True
    assert plugin.settings == {"deny_users": "mallory,eve"}
    assert plugin.probes[1] == Probe("forbidden", "publish", "alice", "refused",
                                     topic="forbidden/x")
    assert state.plugin("deny_mallory") is plugin


def test_hash_ignores_unrelated_keys_and_order() -> None:
    a = parse_desired_state(docs(**{"plugin.deny_mallory.yaml": PLUGIN_DOC, "x": "1"}))
    b = parse_desired_state(docs(**{"x": "2", "plugin.deny_mallory.yaml": PLUGIN_DOC}))
    c = parse_desired_state(docs(**{"plugin.deny_mallory.yaml": PLUGIN_DOC + "enabled: false\n"}))
    assert a.content_hash == b.content_hash != c.content_hash


def test_render_round_trips() -> None:
    release = PluginRelease(
        "deny_mallory", IMAGE, settings={"b": "2", "a": "1"},
        probes=(Probe("p", "connect", "mallory", "refused"),
                Probe("q", "publish", "alice", "accepted", SecretKeyRef("probe-creds", "alice"),
                      topic="ok/x")),
        source=Provenance(commit="abc123", build="deny-mallory-1"))
    text = render_plugin_release(release)
    assert text == render_plugin_release(release)
    assert "passwordFrom:\n    secret: probe-creds\n    key: alice\n" in text
    (parsed,) = parse_desired_state(docs(**{plugin_key("deny_mallory"): text})).plugins
    assert parsed == release


PROBE_DOC = PLUGIN_DOC.split("probes:")[0] + "probes:\n"


@pytest.mark.parametrize(("probe", "message"), [
    ("{name: p, action: connect, username: a, expect: accepted, password: hunter2-value}",
     "probes[0].password: inline probe passwords are refused"),
    ("{name: p, action: connect, username: a, expect: accepted, passwordFrom: creds}",
     "probes[0].passwordFrom: expected a mapping {secret, key}"),
    ("{name: p, action: connect, username: a, expect: accepted, "
     "passwordFrom: {secret: ../etc, key: k}}", "is not a Secret name"),
    ("{name: p, action: connect, username: a, expect: accepted, "
     "passwordFrom: {secret: s, key: ..}}", "is not a Secret key"),
    ("{name: p, action: connect, username: a, expect: accepted, "
     "passwordFrom: {secret: s, key: a/b}}", "is not a Secret key"),
    ("{name: p, action: connect, username: a, expect: accepted, "
     "passwordFrom: {secret: s}}", "passwordFrom: missing required field(s) key"),
])
def test_a_probe_password_is_only_a_secret_reference(probe: str, message: str) -> None:
    with pytest.raises(ContractError, match=re.escape(message)) as refused:
        parse_desired_state(docs(**{"plugin.deny_mallory.yaml": PROBE_DOC + f"  - {probe}\n"}))
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(("text", "message"), [
    ("a: [", "not valid YAML at line 1, column 5"),  # libyaml says line 2; the message does not
    ("a: !!python/object/apply:os.system [id]", "could not determine a constructor"),
    ("- a list", "expected a mapping, found a list"),
    (PLUGIN_DOC.replace("v1alpha1", "v2"), ".apiVersion: expected 'plugforge.dev/v1alpha1'"),
    (PLUGIN_DOC + "colour: blue\n", "unknown field(s) colour"),
    (PLUGIN_DOC.replace(f"image: {IMAGE}\n", ""), "missing required field(s) image"),
    (PLUGIN_DOC.replace(f"@{DIGEST}", ":latest"), "found tag ':latest' — pin by digest"),
    (PLUGIN_DOC.replace(DIGEST, "sha256:abc"), "pulled by digest only"),
    (PLUGIN_DOC + "enabled: 'yes'\n", ".enabled: expected true or false"),
    (PLUGIN_DOC.replace("mallory,eve", "3"),
     ".settings.deny_users: expected a string, found an integer"),
    (PLUGIN_DOC.replace("action: connect", "action: subscribe"), "expected connect or publish"),
    (PLUGIN_DOC.replace(", topic: forbidden/x", ""), "a publish probe needs a topic"),
    (PLUGIN_DOC.replace("name: forbidden", "name: mallory-refused"), "is used twice"),
])
def test_invalid_plugin_release_is_explained(text: str, message: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_desired_state(docs(**{"plugin.deny_mallory.yaml": text}))
    assert message in str(err.value)
    assert "cm/plugins/plugin.deny_mallory.yaml" in str(err.value)


def test_key_must_match_name() -> None:
    with pytest.raises(ContractError, match=r"the key must be 'plugin.deny_mallory.yaml'"):
        parse_desired_state(docs(**{"plugin.other.yaml": PLUGIN_DOC}))


def test_duplicate_plugin_across_sources() -> None:
    with pytest.raises(ContractError, match="also defined in"):
        parse_desired_state([Document("a", "plugin.deny_mallory.yaml", PLUGIN_DOC),
                             Document("b", "plugin.deny_mallory.yaml", PLUGIN_DOC)])


def test_broker_config_errors() -> None:
    with pytest.raises(ContractError, match="expected one of vernemq, hivemq"):
        parse_desired_state(docs(**{BROKER_KEY: BROKER_DOC.replace("mosquitto", "kafka")}))
    with pytest.raises(ContractError, match="exactly one source"):
        parse_desired_state([Document("a", BROKER_KEY, BROKER_DOC),
                             Document("b", BROKER_KEY, BROKER_DOC)])
    with pytest.raises(ContractError, match=r"\.config\.max_inflight_messages: expected a string"):
        parse_desired_state(docs(**{BROKER_KEY: BROKER_DOC.replace('"20"', "20")}))


def test_documents_are_parsed_by_libyaml_with_the_same_rules() -> None:
    # The sidecar parses on every change: libyaml's loader, safe, resolving as PyYAML's does.
    assert contract._FAST_LOADER.__name__ == "CSafeLoader"
    text = "a: 0o17\nb: 012\nc: yes\nd: 1_000\ne: &x [1]\nf: *x\n"
    assert yaml.load(text, Loader=contract._FAST_LOADER) == yaml.safe_load(text)  # noqa: S506
