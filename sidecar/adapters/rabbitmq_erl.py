"""The Erlang expressions the RabbitMQ adapter evaluates on the node (``rabbitmqctl eval``).

Each returns one map, which ``Cli.eval_json`` decodes. Inputs are validated atoms and byte-list
binaries only (``rabbitmq_cli.atom`` / ``erl_binary``).

Fresh code is checked the way the VM itself sees it: for every module of a plugin that is
loaded, ``Module:module_info(md5)`` (the code that runs) must equal ``beam_lib:md5`` of the same
module inside the plugin's ``.ez`` in the node's plugins dir (the archive the adapter put there).
A disable + enable that left an old module in memory shows up as ``stale``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sidecar.adapters.rabbitmq_cli import atom, erl_binary, erl_list

# Fun definitions shared by the expressions.
_PRELUDE = r"""
Str = fun(V) when is_binary(V) -> V;
         (V) when is_atom(V) -> atom_to_binary(V);
         (V) when is_integer(V) -> integer_to_binary(V);
         (V) when is_list(V) ->
             case io_lib:printable_unicode_list(V) of
                 true -> unicode:characters_to_binary(V);
                 false -> iolist_to_binary(io_lib:format("~0p", [V]))
             end;
         (V) -> iolist_to_binary(io_lib:format("~0p", [V]))
      end,
Ez = fun(File) ->
         {ok, Dirs} = application:get_env(rabbit, plugins_dir),
         case [P || D <- string:lexemes(Dirs, ":"),
                    P <- [unicode:characters_to_list(filename:join(D, File))],
                    filelib:is_regular(P)] of
             [P | _] -> P;
             [] -> none
         end
     end,
Stale = fun(File) ->
            case Ez(File) of
                none -> [<<"the archive is not in any plugins dir">>];
                Path ->
                    case zip:extract(Path, [memory]) of
                        {ok, Entries} ->
                            [Problem || {N, Bin} <- Entries, filename:extension(N) =:= ".beam",
                                        Problem <- [case beam_lib:md5(Bin) of
                                            {ok, {M, Md5}} ->
                                                case code:is_loaded(M) =/= false andalso
                                                         M:module_info(md5) =/= Md5 of
                                                    true -> atom_to_binary(M);
                                                    false -> ok
                                                end;
                                            {error, _, R} -> iolist_to_binary(
                                                io_lib:format("~s: ~0p", [N, R]))
                                        end],
                                        Problem =/= ok];
                        {error, R} -> [iolist_to_binary(io_lib:format("~0p", [R]))]
                    end
            end
        end,
"""


def observe(plugins: Mapping[str, tuple[str, Sequence[str]]],
            env: Mapping[str, tuple[str, str]], vhost: str) -> str:
    """State of the node: ``plugins`` name -> (archive file, setting keys); ``env`` broker.yaml
    key -> (application, env key); internal users, and permissions in ``vhost``."""
    plugin_terms = erl_list([
        "{" + ",".join((atom(name), erl_binary(file), erl_list([atom(k) for k in keys])))
        + "}" for name, (file, keys) in sorted(plugins.items())])
    env_terms = erl_list([
        "{" + ",".join((erl_binary(key), atom(app), atom(env_key))) + "}"
        for key, (app, env_key) in sorted(env.items())])
    return _PRELUDE + rf"""
Active = rabbit_plugins:active(),
Plugin = fun({{App, File, Keys}}) ->
    On = lists:member(App, Active),
    Vsn = case application:get_key(App, vsn) of {{ok, V}} -> Str(V); undefined -> null end,
    {{atom_to_binary(App), #{{active => On, vsn => Vsn,
        stale => case On of true -> Stale(File); false -> [] end,
        settings => maps:from_list([{{atom_to_binary(K), Str(V)}} || K <- Keys,
                                   {{ok, V}} <- [application:get_env(App, K)]])}}}}
end,
Pid = os:getpid(),
AB = application:get_env(rabbit, auth_backends, []),
VHost = {erl_binary(vhost)},
Rows = fun(F) -> try [maps:from_list(P) || P <- F(VHost)] catch _:_ -> [] end end,
#{{pid => list_to_binary(Pid),
  stat => case file:read_file("/proc/" ++ Pid ++ "/stat") of {{ok, S}} -> S; _ -> <<>> end,
  running => rabbit:is_running(),
  plugins_dir => Str(application:get_env(rabbit, plugins_dir, "")),
  enabled_plugins_file => Str(application:get_env(rabbit, enabled_plugins_file, "")),
  auth_backends => [Str(B) || B <- AB],
  auth_backends_term => iolist_to_binary(io_lib:format("~0p", [AB])),
  plugins => maps:from_list(lists:map(Plugin, {plugin_terms})),
  users => [#{{name => internal_user:get_username(U),
              tags => [atom_to_binary(T) || T <- internal_user:get_tags(U)],
              has_password => internal_user:get_password_hash(U) =/= <<>>}}
            || U <- rabbit_auth_backend_internal:all_users()],
  permissions => Rows(fun rabbit_auth_backend_internal:list_vhost_permissions/1),
  topic_permissions => Rows(fun rabbit_auth_backend_internal:list_vhost_topic_permissions/1),
  env => maps:from_list([{{K, case application:get_env(App, E) of {{ok, V}} -> Str(V);
                                   undefined -> null end}} || {{K, App, E}} <- {env_terms}])}}
"""


def after_enable(name: str, file: str, settings: Mapping[str, str],
                 unset: Sequence[str]) -> str:
    """Check that the enabled plugin runs the archive's code, then set its settings; answers
    ``ok`` and whether the plugin is an auth backend (exports user_login_authentication/2)."""
    app = atom(name)
    sets = _pairs(settings)
    unsets = erl_list([atom(k) for k in sorted(unset)])
    return _PRELUDE + rf"""
Mods = case application:get_key({app}, modules) of {{ok, Ms}} -> Ms; undefined -> [] end,
Broken = [iolist_to_binary(io_lib:format("~0p: ~0p", [M, R]))
          || M <- Mods, {{error, R}} <- [code:ensure_loaded(M)]],
Old = Stale({erl_binary(file)}),
case {{lists:member({app}, rabbit_plugins:active()), Broken, Old}} of
    {{true, [], []}} ->
        [application:set_env({app}, K, V) || {{K, V}} <- {sets}],
        [application:unset_env({app}, K) || K <- {unsets}],
        #{{ok => true, auth => erlang:function_exported({app}, user_login_authentication, 2)}};
    {{false, _, _}} -> #{{ok => false, error => <<"the plugin is not running after enable">>}};
    _ -> #{{ok => false, error => iolist_to_binary(io_lib:format(
              "modules that do not load: ~0p; modules still running old code: ~0p",
              [Broken, Old]))}}
end
"""


def set_settings(name: str, settings: Mapping[str, str], unset: Sequence[str]) -> str:
    app = atom(name)
    sets = _pairs(settings)
    unsets = erl_list([atom(k) for k in sorted(unset)])
    return (f"[application:set_env({app}, K, V) || {{K, V}} <- {sets}], "
            f"[application:unset_env({app}, K) || K <- {unsets}], #{{ok => true}}")


def set_auth_backends(term: str) -> str:
    """``term``: an Erlang list of backends (validated by the caller)."""
    return f"application:set_env(rabbit, auth_backends, {term}), #{{ok => true}}"


def set_env(values: Mapping[tuple[str, str], tuple[str, str] | None]) -> str:
    """(app, key) -> (kind, value) to set, or None to unset."""
    parts = []
    for (app, key), typed in sorted(values.items()):
        if typed is None:
            parts.append(f"application:unset_env({atom(app)}, {atom(key)})")
            continue
        kind, value = typed
        if kind == "boolean" and value not in ("true", "false"):
            raise ValueError(f"{app}.{key}: expected true or false, found {value!r}")
        literal = value if kind == "boolean" else erl_binary(value)
        parts.append(f"application:set_env({atom(app)}, {atom(key)}, {literal})")
    return ", ".join([*parts, "#{ok => true}"])


ACTING_USER = "plugforge-sidecar"


def manage(calls: Sequence[tuple[str, str]]) -> str:
    """Run ``calls`` (description, Erlang call on rabbit_auth_backend_internal) in order and stop
    at the first that fails; answers ``errors`` (empty when all succeeded). Descriptions must not
    hold secrets: they end up in error messages."""
    funs = erl_list(["{" + erl_binary(what) + ", fun() -> " + call + " end}"
                     for what, call in calls])
    return rf"""
Do = fun(What, F) ->
         try F() of
             {{error, R}} -> [iolist_to_binary(io_lib:format("~s: ~0p", [What, R]))];
             _ -> []
         catch C:R -> [iolist_to_binary(io_lib:format("~s: ~0p ~0p", [What, C, R]))]
         end
     end,
Errors = lists:foldl(fun({{What, F}}, []) -> Do(What, F); (_, Errs) -> Errs end, [], {funs}),
#{{ok => Errors =:= [], errors => Errors}}
"""


def internal(function: str, *args: str) -> str:
    """A call of rabbit_auth_backend_internal:``function`` with literal ``args`` and the acting
    user appended (every changing function of 3.10 takes one)."""
    return (f"rabbit_auth_backend_internal:{atom(function)}("
            + ",".join([*args, erl_binary(ACTING_USER)]) + ")")


def tags(values: Sequence[str]) -> str:
    """Tag atoms (validated [A-Za-z0-9_-] by the caller's config check)."""
    return erl_list([f"binary_to_atom({erl_binary(t)})" for t in values])


def _pairs(settings: Mapping[str, str]) -> str:
    return erl_list(["{" + atom(k) + "," + erl_binary(v) + "}"
                     for k, v in sorted(settings.items())])
