"""The Erlang expressions the RabbitMQ adapter evaluates on the node (``rabbitmqctl eval``).

Each returns one map, which ``Cli.eval_json`` decodes. Inputs are validated atoms and byte-list
binaries only (``rabbitmq_cli.atom`` / ``erl_binary``).

Fresh code is checked the way the VM itself sees it: for every module of a plugin that is
loaded, ``Module:module_info(md5)`` (the code that runs) must equal ``beam_lib:md5`` of the same
module inside the plugin's ``.ez`` in the node's plugins dir (the archive the adapter put there).
A disable + enable that left an old module in memory shows up as ``stale``.

Why the old code survives a disable + enable under load, and how ``after_enable`` settles it:
``rabbitmq-plugins disable --online`` stops the application but leaves the old version's
expanded ``ebin`` on the code path. While clients publish, the node calls the backend module
(still named in ``auth_backends`` and in every open MQTT connection's state) between the
disable and the enable; the code server then loads it again from that old ``ebin``. The enable
adds the new ``ebin`` behind the old one and starts the application, which loads nothing that
is already loaded: the old code keeps running, and ``code:which`` still names the old dir.
So after every enable the code is put in order explicitly (``Settle``): every module of the
archive whose loaded MD5 differs is loaded from the archive's own bytes (``code:load_binary``,
after a soft purge of any older code), then every other version's ``ebin`` of the plugin leaves
the code path and the new one is on it. Loading replaces the current code atomically: a call in
flight finishes in the old code, the next call runs the new, so no login or publish ever finds
the module missing, and no connection process is killed (only soft purges, retried while a
call is in flight).
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

# Put the code of application App in order after an enable: every module of the archive loaded
# from the archive's bytes, then only the archive's version on the code path. Answers a list of
# problems (empty: settled). The path changes only once every module loaded: between a disable
# and an enable, RabbitMQ deletes the plugin's modules and the node reloads them from the path
# on the next call, so an old version's ebin must stay until a good one replaces it, and an
# archive that fails leaves the path (the enable put it first): the calls during the rollback's
# disable must find the old version, not a module that does not load.
# ``Purged``: a soft purge that finds a call still running in older code is retried
# (50 x 100 ms); a hard purge would kill that process: a client's connection.
_PURGED = r"""
Purged = fun Purged(M, Tries) ->
    case code:soft_purge(M) of
        true -> true;
        false when Tries > 0 -> timer:sleep(100), Purged(M, Tries - 1);
        false -> false
    end
end,
"""
_SETTLE = _PURGED + r"""
Settle = fun(App, File) ->
    Prefix = atom_to_list(App) ++ "-",
    OtherVersion = fun(Dir) ->
        Base = filename:basename(filename:dirname(Dir)),
        filename:basename(Dir) =:= "ebin" andalso lists:prefix(Prefix, Base) andalso
            case lists:nthtail(length(Prefix), Base) of
                [C | _] when C >= $0, C =< $9 -> true;
                _ -> false
            end
    end,
    Load = fun(Ebin, N, Bin, M, Md5) ->
        case code:is_loaded(M) =/= false andalso M:module_info(md5) =:= Md5 of
            true -> ok;
            false ->
                case Purged(M, 50) of
                    false -> iolist_to_binary(io_lib:format(
                                 "~0p: a call still runs its older code", [M]));
                    true ->
                        Beam = filename:join(Ebin, filename:basename(N)),
                        case code:load_binary(M, Beam, Bin) of
                            {module, M} -> code:soft_purge(M), ok;
                            {error, R} -> iolist_to_binary(io_lib:format("~0p: ~0p", [M, R]))
                        end
                end
        end
    end,
    case Ez(File) of
        none -> [<<"the archive is not in any plugins dir">>];
        Path ->
            case zip:extract(Path, [memory]) of
                {error, R} -> [iolist_to_binary(io_lib:format("~0p", [R]))];
                {ok, Entries} ->
                    Beams = [{N, Bin, beam_lib:md5(Bin)}
                             || {N, Bin} <- Entries, filename:extension(N) =:= ".beam"],
                    Unreadable = [iolist_to_binary(io_lib:format("~s: ~0p", [N, R]))
                                  || {N, _, {error, _, R}} <- Beams],
                    {ok, Expand} = application:get_env(rabbit, plugins_expand_dir),
                    Top = case [hd(filename:split(N)) || {N, _} <- Entries,
                                filename:basename(N) =:= atom_to_list(App) ++ ".app"] of
                              [T | _] -> T;
                              [] -> atom_to_list(App)
                          end,
                    Ebin = filename:join([Expand, Top, "ebin"]),
                    Failed = case Unreadable of
                        [] -> [P || {N, Bin, {ok, {M, Md5}}} <- Beams,
                                    P <- [Load(Ebin, N, Bin, M, Md5)], P =/= ok];
                        _ -> Unreadable
                    end,
                    case Failed of
                        [] ->
                            [code:del_path(D) || D <- code:get_path(), D =/= Ebin,
                                                 OtherVersion(D)],
                            case lists:member(Ebin, code:get_path()) of
                                true -> ok;
                                false -> code:add_patha(Ebin)
                            end,
                            [];
                        _ ->
                            % RabbitMQ's enable put this ebin first on the path: off it, so
                            % the calls during the rollback's disable load the old version.
                            code:del_path(Ebin),
                            Failed
                    end
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


def before_disable(name: str) -> str:
    """Wait until no call runs older code of the plugin's modules; answers ``ok`` and the
    modules still busy. ``rabbitmq-plugins disable`` soft-purges each module once, deletes it
    and asserts it is gone: under load, a connection still inside an older version (left by the
    previous enable's hot load) makes that assertion crash the disable."""
    app = atom(name)
    return _PRELUDE + _PURGED + rf"""
Mods = case application:get_key({app}, modules) of {{ok, Ms}} -> Ms; undefined -> [] end,
Busy = [atom_to_binary(M) || M <- Mods, not Purged(M, 50)],
#{{ok => Busy =:= [], busy => Busy}}
"""


def after_enable(name: str, file: str, settings: Mapping[str, str],
                 unset: Sequence[str]) -> str:
    """Settle the enabled plugin's code (``Settle``: the archive's modules loaded, only its
    ``ebin`` on the path), check that it runs the archive's code, then set its settings; answers
    ``ok`` and whether the plugin is an auth backend (exports user_login_authentication/2)."""
    app = atom(name)
    sets = _pairs(settings)
    unsets = erl_list([atom(k) for k in sorted(unset)])
    return _PRELUDE + _SETTLE + rf"""
Unsettled = case lists:member({app}, rabbit_plugins:active()) of
    true -> Settle({app}, {erl_binary(file)});
    false -> []
end,
Mods = case application:get_key({app}, modules) of {{ok, Ms}} -> Ms; undefined -> [] end,
Broken = Unsettled ++ [iolist_to_binary(io_lib:format("~0p: ~0p", [M, R]))
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
