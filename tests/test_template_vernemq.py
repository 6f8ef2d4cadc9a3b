"""vernemq-erlang: scaffold with the CLI, build with the recipe (rebar3 compile + eunit), enable
the artifact on a live VerneMQ 2.0.1 node (the ``vernemq`` fixture) exactly as the recipe lays it
out, and check its hooks both in a plain erl and through real MQTT clients with passwords.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from vernemq_support import accepted, app_plugins, publish_outcome, reset

from plugforge.cli import main
from testbed.vernemq import VerneMQ

NAME = "deny_test"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vernemq-erlang")


@pytest.fixture(scope="module")
def artifact(root: Path) -> Path:
    repo = root / "deny-test"
    assert main(["new", "--broker", "vernemq", "deny-test", "--dir", str(repo)]) == 0
    assert (repo / "src" / f"{NAME}.app.src").is_file()
    assert (repo / "src" / f"{NAME}.erl").is_file()
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    # The recipe's eunit step ran the starter's own tests as part of the build.
    assert "All 4 tests passed" in (work / "build.log").read_text()
    return work / "artifact"


def erl(ebin: Path, expr: str) -> str:
    """Evaluate ``expr`` (must print its result) in a fresh, real Erlang VM."""
    result = subprocess.run(["erl", "-noshell", "-pa", str(ebin), "-eval", expr,
                             "-s", "init", "stop"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def app_hooks(ebin: Path) -> list[tuple[str, str, int]]:
    out = erl(ebin, f"{{ok, [{{application, {NAME}, Props}}]}} ="
                    f" file:consult(\"{ebin}/{NAME}.app\"),"
                    " Env = proplists:get_value(env, Props),"
                    " [io:format(\"~s ~s ~b~n\", [M, F, A])"
                    "  || {M, F, A, _} <- proplists:get_value(vmq_plugin_hooks, Env)].")
    return [(m, f, int(a)) for m, f, a in (line.split() for line in out.splitlines())]


def node_hook_arities(node: VerneMQ) -> dict[str, int]:
    """Hook name -> arity, as the live node lists the stock plugins' hooks."""
    text = node.admin("plugin", "show")
    return {f: int(a) for f, a in re.findall(r"\b\w+:(auth_on_\w+)/(\d+)", text)}


def test_artifact_is_a_dir_with_ebin_the_node_enables(artifact: Path, vernemq: VerneMQ) -> None:
    files = sorted(p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file())
    assert files == [f"ebin/{NAME}.app", f"ebin/{NAME}.beam"]
    reset(vernemq)
    try:
        assert vernemq.admin("plugin", "enable", f"--name={NAME}",
                             f"--path={artifact}").strip() == "Done"
        assert NAME in app_plugins(vernemq)
        # Enabled by hand it comes after vmq_passwd/vmq_acl, which decide first (the sidecar
        # puts it first); moved behind it, the policy holds with real passwords.
        assert accepted(vernemq, "mallory")
        for stock in ("vmq_passwd", "vmq_acl"):
            vernemq.admin("plugin", "disable", f"--name={stock}")
            vernemq.admin("plugin", "enable", f"--name={stock}")
        assert app_plugins(vernemq)[0] == NAME
        assert not accepted(vernemq, "mallory") and accepted(vernemq, "alice")
        assert not accepted(vernemq, "nosuchuser", "x")
        assert not accepted(vernemq, "alice", "")  # `next`: vmq_passwd wants a password
        assert publish_outcome(vernemq, "alice", "forbidden/x") == "puback 135"
        assert publish_outcome(vernemq, "alice", "ok/x") == "puback 0"
    finally:
        reset(vernemq)
    no_ebin = artifact.parent / "no-ebin"
    no_ebin.mkdir(exist_ok=True)
    out = vernemq.admin("plugin", "enable", f"--name={NAME}", f"--path={no_ebin}")
    assert "plugin_not_found" in out  # printed with exit code 0


def test_same_commit_builds_the_same_bytes(artifact: Path, root: Path) -> None:
    # Beams are compiled `deterministic` (no build paths inside), so rebuilding an unchanged
    # commit in another work dir gives identical files (and an identical image digest).
    work = root / "again"
    assert main(["build", "--local", str(root / "deny-test"), "--work-dir", str(work),
                 "--quiet"]) == 0
    for f in artifact.rglob("*"):
        if f.is_file():
            assert (work / "artifact" / f.relative_to(artifact)).read_bytes() == f.read_bytes()


def test_app_file_names_the_app_as_the_plugin_dir(artifact: Path) -> None:
    # `--name` must equal the application in `--path` (a mismatch crashed VerneMQ 2.0.1's
    # plugin manager in the recording): the app, the dir under /plugin and the name agree.
    out = erl(artifact / "ebin",
              f"{{ok, [{{application, App, Props}}]}} ="
              f" file:consult(\"{artifact}/ebin/{NAME}.app\"),"
              " io:format(\"~s ~s ~w~n\", [App, proplists:get_value(vsn, Props),"
              " proplists:get_value(modules, Props)]).")
    assert out.split() == [NAME, "0.1.0", f"[{NAME}]"]


def test_hooks_match_what_vernemq_calls(artifact: Path, vernemq: VerneMQ) -> None:
    hooks = app_hooks(artifact / "ebin")
    recorded = node_hook_arities(vernemq)
    names = {f for _, f, _ in hooks}
    assert names == {"auth_on_register", "auth_on_publish", "auth_on_subscribe",
                     "auth_on_register_m5", "auth_on_publish_m5", "auth_on_subscribe_m5"}
    for module, function, arity in hooks:
        assert module == NAME
        assert recorded[function] == arity, \
            f"{function}/{arity} but VerneMQ calls /{recorded.get(function)}"
    exports = erl(artifact / "ebin", f"io:format(\"~w\", [{NAME}:module_info(exports)]).")
    for _, function, arity in hooks:
        assert f"{{{function},{arity}}}" in exports


HOOK_CALLS = """
Sid = {"", <<"c1">>}, Peer = {{127,0,0,1}, 5555},
R = [
 {register_mallory, deny_test:auth_on_register(Peer, Sid, <<"mallory">>, <<"pw">>, true)},
 {register_alice, deny_test:auth_on_register(Peer, Sid, <<"alice">>, <<"pw">>, true)},
 {register_anonymous, deny_test:auth_on_register(Peer, Sid, undefined, undefined, true)},
 {register_m5_mallory, deny_test:auth_on_register_m5(Peer, Sid, <<"mallory">>, <<>>, true, #{})},
 {register_m5_alice, deny_test:auth_on_register_m5(Peer, Sid, <<"alice">>, <<>>, true, #{})},
 {publish_forbidden, deny_test:auth_on_publish(<<"alice">>, Sid, 1, [<<"forbidden">>, <<"x">>],
                                                <<"p">>, false)},
 {publish_ok, deny_test:auth_on_publish(<<"alice">>, Sid, 1, [<<"ok">>, <<"x">>], <<"p">>, false)},
 {publish_m5_forbidden, deny_test:auth_on_publish_m5(<<"alice">>, Sid, 0,
                                                      [<<"forbidden">>, <<"a">>, <<"b">>],
                                                      <<>>, false, #{})},
 {subscribe_forbidden, deny_test:auth_on_subscribe(<<"alice">>, Sid,
                                                    [{[<<"forbidden">>, <<"#">>], 1}])}
],
[io:format("RESULT ~w ~0p~n", [K, V]) || {K, V} <- R].
"""


def results(output: str) -> dict[str, str]:
    """``RESULT key value`` lines; the VM's own log lines are interleaved and ignored."""
    return dict(line.split(" ", 2)[1:] for line in output.splitlines()
                if line.startswith("RESULT "))


def test_hooks_apply_the_policy_in_a_real_vm(artifact: Path) -> None:
    out = results(erl(artifact / "ebin", f"application:load({NAME}), " + HOOK_CALLS))
    # `next` for what a deny-list does not decide: vmq_passwd / vmq_acl decide then.
    assert out["register_mallory"] == "{error,invalid_credentials}"
    assert out["register_alice"] == "next"
    assert out["register_anonymous"] == "next"
    assert out["register_m5_mallory"] == "{error,#{reason_code => not_authorized}}"
    assert out["register_m5_alice"] == "next"
    assert out["publish_forbidden"] == "{error,not_authorized}"
    assert out["publish_ok"] == "next"
    assert out["publish_m5_forbidden"] == "{error,#{reason_code => not_authorized}}"
    assert out["subscribe_forbidden"] == "next"


def test_deny_users_comes_from_application_env(artifact: Path) -> None:
    setup = (f"application:load({NAME}), "
             f"application:set_env({NAME}, deny_users, \"eve, trudy\"), ")
    expr = setup + ("Sid = {\"\", <<\"c\">>}, "
                    "[io:format(\"RESULT ~s ~0p~n\","
                    "  [U, deny_test:auth_on_register(p, Sid, U, <<>>, true)])"
                    " || U <- [<<\"eve\">>, <<\"trudy\">>, <<\"mallory\">>]].")
    out = results(erl(artifact / "ebin", expr))
    assert out == {"eve": "{error,invalid_credentials}", "trudy": "{error,invalid_credentials}",
                   "mallory": "next"}
