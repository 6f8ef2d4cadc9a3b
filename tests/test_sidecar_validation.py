"""Untrusted ConfigMap values against the mosquitto adapter's validation (property-based):
never an exception, only precise problems; whatever passes cannot inject config lines."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.adapters import mosquitto_dynsec as dynsec
from sidecar.adapters.mosquitto import MosquittoAdapter, MosquittoSettings
from sidecar.adapters.mosquitto_options import RELOADABLE, RESTART_ONLY

ADAPTER = MosquittoAdapter(MosquittoSettings(
    "127.0.0.1", 1883, None, Path("/nonexistent/mosquitto.conf"), Path("/nonexistent/conf.d"),
    Path("/nonexistent/plugins"), dynsec_username="admin", dynsec_password="unused"))

KEYS = st.one_of(st.sampled_from(sorted(RELOADABLE) + sorted(RESTART_ONLY)),
                 st.sampled_from(["dynsec.role.r.acls", "dynsec.client.u.roles",
                                  "dynsec.client.u.password",
                                  "dynsec.default_acl.subscribe"]),
                 st.text(max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(KEYS, st.text(max_size=60), max_size=6))
def test_validation_never_raises_and_accepted_values_are_one_line(config: dict[str, str]) -> None:
    problems = ADAPTER.validate_config(config)
    refused = {p.key for p in problems}
    for problem in problems:
        assert problem.key in config and problem.message
    for key, value in config.items():
        if key not in refused and not key.startswith("dynsec."):  # dynsec values go as JSON
            assert "\n" not in value and "\r" not in value
            ADAPTER.normalize(key, value)  # accepted values always normalize


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(dynsec.ACL_TYPES),
                          st.text(alphabet=st.characters(blacklist_characters=" ;"),
                                  min_size=1, max_size=20),
                          st.booleans(), st.integers(-5, 5)), max_size=5))
def test_acl_format_round_trips(acls: list[tuple[str, str, bool, int]]) -> None:
    text = dynsec.format_acls(acls)
    assert dynsec.parse_acls(text) == sorted(acls)
    commands = dynsec.commands_for({"dynsec.role.r.acls": text}, {})
    assert commands[0] == {"command": "createRole", "rolename": "r"}
    assert len(commands) == 1 + len(set(acls))


def test_examples_of_refusals() -> None:
    problems = {p.key: p.message for p in ADAPTER.validate_config({
        "max_qos": "3", "listener": "1884", "dynsec.role.r.acls": "subscribe x allow",
        "allow_anonymous": "yes", "log_type": "all\ninclude_dir /etc"})}
    assert problems["max_qos"] == "expected an integer from 0 to 2, found '3'"
    assert "not managed through broker.yaml" in problems["listener"]
    assert "aclType one of publishClientSend" in problems["dynsec.role.r.acls"]
    assert problems["allow_anonymous"] == "expected true or false, found 'yes'"
    assert "single line" in problems["log_type"]
