"""The VerneMQ adapter's own reading of a plugin directory (``sidecar.adapters.vernemq_app``):
the ``.app`` term and the beams' export tables, on beams compiled by the real ``erlc``."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from sidecar.adapters.base import AdapterError
from sidecar.adapters.vernemq_app import Atom, beam_exports, check_plugin, parse_term

MODULE = """-module(p).
-export([auth_on_register/5, helper/0]).
auth_on_register(_, _, _, _, _) -> next.
helper() -> ok.
"""


def plugin(tmp_path: Path, app: str) -> Path:
    ebin = tmp_path / "p" / "ebin"
    ebin.mkdir(parents=True)
    (tmp_path / "p.erl").write_text(MODULE)
    subprocess.run(["erlc", "-o", str(ebin), str(tmp_path / "p.erl")], check=True)
    (ebin / "p.app").write_text(app)
    return ebin.parent


def test_terms_of_an_app_file() -> None:
    term = parse_term('%% comment\n{application, p, [{vsn, "1.0"}, {env, [{\'q-a\', <<"x">>},'
                      " {n, -3}]}]}.\n")
    assert term == (Atom("application"), Atom("p"),
                    [(Atom("vsn"), "1.0"), (Atom("env"), [(Atom("q-a"), ["x"]), (Atom("n"), -3)])])
    with pytest.raises(ValueError, match="dot"):
        parse_term("{application, p, []}")


def test_exports_come_from_the_beam(tmp_path: Path) -> None:
    root = plugin(tmp_path, "{application, p, []}.\n")
    beam = root / "ebin" / "p.beam"
    assert beam_exports(beam) >= {("auth_on_register", 5), ("helper", 0)}
    data = beam.read_bytes()
    for cut in range(0, len(data), 37):  # a truncated beam: its exports or ValueError, no crash
        beam.write_bytes(data[:cut])
        with contextlib.suppress(ValueError):
            assert beam_exports(beam) <= {("auth_on_register", 5), ("helper", 0),
                                          ("module_info", 0), ("module_info", 1)}


@pytest.mark.parametrize("hook", ["{p, auth_on_register, 5, []}", "{p, auth_on_register, 5}",
                                  "{auth_on_register, p, auth_on_register, 5}"])
def test_a_well_formed_plugin_passes(tmp_path: Path, hook: str) -> None:
    root = plugin(tmp_path, f"{{application, p, [{{modules, [p]}}, {{env, [{{deny_users, "
                            f"\"mallory\"}}, {{vmq_plugin_hooks, [{hook}]}}]}}]}}.\n")
    spec = check_plugin(root, "p")
    assert [h.name for h in spec.hooks] == ["auth_on_register"]
    assert spec.env_keys == ("deny_users",)


@pytest.mark.parametrize(("app", "expected"), [
    ("{application, p, [{modules, [p, gone]}]}.\n", "gone without a .beam"),
    ("{application, p, [{modules, [p]}, {env, [{vmq_plugin_hooks, [{q, f, 1, []}]}]}]}.\n",
     "names module q, which is not in ebin"),
    ("{application, p, [{modules, [p]}, {env, [{vmq_plugin_hooks, "
     "[{p, auth_on_register, 6, []}]}]}]}.\n", "p:auth_on_register/6"),
    ("{application, p, [{env, [{vmq_plugin_hooks, [bad]}]}]}.\n", "not {Module, Function"),
    ("{application, other, []}.\n", "crashes its plugin manager"),
    ("{application, p, [\n", "not an Erlang term"),
])
def test_what_the_node_would_trip_over_is_refused(tmp_path: Path, app: str,
                                                  expected: str) -> None:
    root = plugin(tmp_path, app)
    with pytest.raises(AdapterError) as refused:
        check_plugin(root, "p")
    assert expected in str(refused.value)
