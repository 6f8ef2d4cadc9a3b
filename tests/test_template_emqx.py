"""emqx-erlang: scaffold with the CLI, build with the recipe, check the EMQX plugin package, and
load + start the packaged app in a real Erlang VM the way EMQX's plugin manager does.

EMQX cannot run here (not in the reachable registries), and its code (emqx, emqx_hooks) is not
available. What is proven: the build (OTP 25 + rebar3, eunit), the package layout and the
release.json fields EMQX 5 checks (name, rel_vsn, rel_apps, description; NAME-VSN agreeing),
and that the packaged app, extracted with erl_tar and started with
application:ensure_all_started/1 like emqx_plugins does, registers its two hooks and answers
them per the policy. The hook registry in these tests is a stand-in `emqx_hooks` module
written below (EMQX's own cannot run here); its fold follows EMQX's documented
stop/{stop, Acc}/{ok, Acc}/ignore convention. Not proven: a live EMQX installing the package.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from plugforge.cli import main

NAME, VSN = "deny_test", "0.1.0"
NAME_VSN = f"{NAME}-{VSN}"

pytestmark = pytest.mark.timeout(300)

# Stand-in for EMQX's emqx_hooks (EMQX cannot run here). Only add/3, del/2 and run_fold/3.
STAND_IN_HOOKS = r"""
-module(emqx_hooks).
-export([add/3, del/2, run_fold/3, hooks/0]).

hooks() -> persistent_term:get(?MODULE, []).

add(Point, {M, F, A}, Prio) ->
    persistent_term:put(?MODULE, hooks() ++ [{Point, {M, F, A}, Prio}]), ok.

del(Point, {M, F}) ->
    persistent_term:put(?MODULE, [H || {P, {M1, F1, _}, _} = H <- hooks(),
                                       not (P =:= Point andalso M1 =:= M andalso F1 =:= F)]),
    ok.

run_fold(Point, Args, Acc) ->
    Callbacks = lists:reverse(lists:keysort(3, [H || {P, _, _} = H <- hooks(), P =:= Point])),
    fold(Callbacks, Args, Acc).

fold([], _Args, Acc) -> Acc;
fold([{_, {M, F, Extra}, _} | Rest], Args, Acc) ->
    case apply(M, F, Args ++ [Acc] ++ Extra) of
        stop -> Acc;
        {stop, NewAcc} -> NewAcc;
        {ok, NewAcc} -> fold(Rest, Args, NewAcc);
        _ -> fold(Rest, Args, Acc)
    end.
"""


@dataclass
class Built:
    repo: Path
    package: Path
    artifact_dir: Path
    hooks_ebin: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("emqx-erlang")
    repo = root / "deny-test"
    assert main(["new", "--broker", "emqx", "deny-test", "--dir", str(repo)]) == 0
    work = root / "work"
    assert main(["build", "--local", str(repo), "--work-dir", str(work), "--quiet"]) == 0
    assert "All 3 tests passed" in (work / "build.log").read_text()
    hooks_src = root / "stand-in" / "emqx_hooks.erl"
    hooks_src.parent.mkdir()
    hooks_src.write_text(STAND_IN_HOOKS)
    subprocess.run(["erlc", "-o", str(hooks_src.parent), str(hooks_src)], check=True)
    artifact_dir = work / "artifact"
    return Built(repo=repo, package=artifact_dir / f"{NAME_VSN}.tar.gz", artifact_dir=artifact_dir,
                 hooks_ebin=hooks_src.parent)


def erl(paths: list[Path], expr: str) -> dict[str, str]:
    """Run ``expr`` in a fresh, real Erlang VM; collect its ``RESULT key value`` lines."""
    argv = ["erl", "-noshell"]
    for p in paths:
        argv += ["-pa", str(p)]
    result = subprocess.run([*argv, "-eval", expr, "-s", "init", "stop"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    return dict(ln.split(" ", 2)[1:] for ln in lines)


def test_artifact_is_the_plugin_package(built: Built) -> None:
    assert sorted(p.name for p in built.artifact_dir.iterdir()) == [f"{NAME_VSN}.tar.gz"]
    with tarfile.open(built.package) as tar:
        names = tar.getnames()
        info = json.load(tar.extractfile(f"{NAME_VSN}/release.json"))  # type: ignore[arg-type]
    for name in names:
        assert name.startswith(f"{NAME_VSN}/") and ".." not in name.split("/"), name
    assert f"{NAME_VSN}/{NAME_VSN}/ebin/{NAME}.app" in names
    assert f"{NAME_VSN}/{NAME_VSN}/ebin/{NAME}.beam" in names
    assert f"{NAME_VSN}/README.md" in names
    # The fields EMQX 5's plugin manager requires, and the NAME-VSN it checks them against.
    assert {"name", "rel_vsn", "rel_apps", "description"} <= set(info)
    assert f"{info['name']}-{info['rel_vsn']}" == NAME_VSN
    assert info["rel_apps"] == [NAME_VSN]
    assert info["description"]
    # EMQX splits NAME-VSN at the first '-', so the name must not contain one.
    assert "-" not in info["name"]
    assert re.fullmatch(r"\d+", info["built_on_otp_release"])


def test_same_commit_builds_the_same_bytes(built: Built, tmp_path: Path) -> None:
    # Entries carry the commit time and beams are compiled `deterministic`, so an unchanged
    # commit gives an unchanged package (and image digest).
    assert main(["build", "--local", str(built.repo), "--work-dir", str(tmp_path / "again"),
                 "--quiet"]) == 0
    again = tmp_path / "again" / "artifact" / built.package.name
    assert again.read_bytes() == built.package.read_bytes()
    with tarfile.open(built.package) as tar:
        info = json.load(tar.extractfile(f"{NAME_VSN}/release.json"))  # type: ignore[arg-type]
    head = subprocess.run(["git", "-C", str(built.repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert info["git_ref"] == head


def test_packaged_app_starts_and_registers_hooks_like_emqx_loads_it(built: Built,
                                                                    tmp_path: Path) -> None:
    install = tmp_path / "plugins"
    install.mkdir()
    # Mirrors emqx_plugins: extract the tarball into the plugins dir, add
    # NAME-VSN/APP-VSN/ebin to the code path, load every beam, application:load, then
    # application:ensure_all_started; stop and unload on disable.
    expr = f"""
    {{ok, Files}} = erl_tar:extract("{built.package}", [compressed, memory]),
    [begin P = filename:join("{install}", N), ok = filelib:ensure_dir(P),
           ok = file:write_file(P, B) end || {{N, B}} <- Files],
    Ebin = filename:join(["{install}", "{NAME_VSN}", "{NAME_VSN}", "ebin"]),
    true = code:add_patha(Ebin),
    [{{module, _}} = code:load_file(list_to_atom(filename:basename(F, ".beam")))
     || F <- filelib:wildcard(filename:join(Ebin, "*.beam"))],
    ok = application:load({NAME}),
    {{ok, Started}} = application:ensure_all_started({NAME}),
    io:format("RESULT started ~0p~n", [Started]),
    io:format("RESULT hooks ~0p~n", [emqx_hooks:hooks()]),
    C = fun(U) -> #{{clientid => <<"c">>, username => U, peerhost => {{127,0,0,1}}}} end,
    Auth = fun(U) -> emqx_hooks:run_fold('client.authenticate', [C(U)], ignore) end,
    Pub = #{{action_type => publish, qos => 1, retain => false}},
    Sub = #{{action_type => subscribe, qos => 1}},
    Authz = fun(A, T) -> emqx_hooks:run_fold('client.authorize', [C(<<"alice">>), A, T],
                                             #{{result => allow, from => default}}) end,
    io:format("RESULT auth_mallory ~0p~n", [Auth(<<"mallory">>)]),
    io:format("RESULT auth_alice ~0p~n", [Auth(<<"alice">>)]),
    io:format("RESULT auth_anonymous ~0p~n", [Auth(undefined)]),
    io:format("RESULT pub_forbidden ~0p~n", [Authz(Pub, <<"forbidden/x">>)]),
    io:format("RESULT pub_ok ~0p~n", [Authz(Pub, <<"ok/x">>)]),
    io:format("RESULT sub_forbidden ~0p~n", [Authz(Sub, <<"forbidden/#">>)]),
    application:set_env({NAME}, deny_users, "eve"),
    io:format("RESULT auth_eve ~0p~n", [Auth(<<"eve">>)]),
    io:format("RESULT auth_mallory_after ~0p~n", [Auth(<<"mallory">>)]),
    ok = application:stop({NAME}),
    io:format("RESULT hooks_after_stop ~0p~n", [emqx_hooks:hooks()]).
    """
    out = erl([built.hooks_ebin], expr)
    assert out["started"] == f"[{NAME}]"
    assert out["hooks"] == (
        f"[{{'client.authenticate',{{{NAME},on_client_authenticate,[]}},1000}},"
        f"{{'client.authorize',{{{NAME},on_client_authorize,[]}},1000}}]")
    assert out["auth_mallory"] == "{error,not_authorized}"
    assert out["auth_alice"] == "ok"
    # No username: ignored, so the accumulator (EMQX's default) stands.
    assert out["auth_anonymous"] == "ignore"
    assert out["pub_forbidden"] == f"#{{from => {NAME},result => deny}}"
    assert out["pub_ok"] == f"#{{from => {NAME},result => allow}}"
    assert out["sub_forbidden"] == f"#{{from => {NAME},result => allow}}"
    assert out["auth_eve"] == "{error,not_authorized}"
    assert out["auth_mallory_after"] == "ok"
    assert out["hooks_after_stop"] == "[]"
