#!/usr/bin/env escript
%% -*- erlang -*-
%% Builds _build/<app>-<vsn>.ez, the archive `rabbitmq-plugins` loads, from src/ and priv/.
%%
%% Compiles against the rabbit_common headers of the RabbitMQ installed here, found under
%% $RABBITMQ_HOME/plugins (default: the newest /usr/lib/rabbitmq/lib/rabbitmq_server-*).
%% The output is reproducible: deterministic beams, sorted entries, fixed timestamps.
%%
%% Usage: escript build.escript
-mode(compile).

-define(FIXED_TIME, {{2024, 1, 1}, {0, 0, 0}}).

main([]) ->
    try build() of
        Ez -> io:format("built ~s~n", [Ez])
    catch
        throw:{build_error, Message} ->
            io:format(standard_error, "build.escript: ~ts~n", [Message]),
            halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: escript build.escript~n", []),
    halt(2).

build() ->
    {App, AppProps} = read_app_src(),
    Vsn = proplists:get_value(vsn, AppProps),
    Name = atom_to_list(App) ++ "-" ++ Vsn,
    RabbitCommon = rabbit_common_dir(),
    io:format("compiling ~s against ~s~n", [Name, RabbitCommon]),
    %% include_lib("rabbit_common/...") resolves through the code path.
    true = code:add_patha(filename:join(RabbitCommon, "ebin")),
    Stage = filename:join(["_build", "stage", Name]),
    ok = del_dir(filename:join("_build", "stage")),
    Ebin = filename:join(Stage, "ebin"),
    ok = filelib:ensure_dir(filename:join(Ebin, "x")),
    Modules = [compile_module(Src, Ebin) || Src <- lists:sort(filelib:wildcard("src/*.erl"))],
    AppFile = {application, App, lists:keystore(modules, 1, AppProps, {modules, Modules})},
    ok = file:write_file(filename:join(Ebin, atom_to_list(App) ++ ".app"),
                         io_lib:format("~p.~n", [AppFile])),
    copy_priv(Stage),
    Ez = filename:join("_build", Name ++ ".ez"),
    zip_stage(Name, Ez),
    Ez.

read_app_src() ->
    case filelib:wildcard("src/*.app.src") of
        [File] ->
            case file:consult(File) of
                {ok, [{application, App, Props}]} when is_atom(App), is_list(Props) ->
                    case proplists:get_value(vsn, Props) of
                        Vsn when is_list(Vsn), Vsn =/= "" -> {App, Props};
                        Other -> fail("~s: expected {vsn, \"x.y.z\"}, found ~p", [File, Other])
                    end;
                {ok, Other} ->
                    fail("~s: expected one {application, Name, [...]} term, found ~p",
                         [File, Other]);
                {error, Reason} ->
                    fail("~s: ~s", [File, file:format_error(Reason)])
            end;
        Found ->
            fail("expected exactly one src/*.app.src, found ~p", [Found])
    end.

rabbit_common_dir() ->
    Home = case os:getenv("RABBITMQ_HOME") of
               false -> newest("/usr/lib/rabbitmq/lib/rabbitmq_server-*");
               Dir -> Dir
           end,
    case newest(filename:join([Home, "plugins", "rabbit_common-*"])) of
        false -> fail("no rabbit_common-* under ~s/plugins: install RabbitMQ (Debian: "
                      "rabbitmq-server) or set RABBITMQ_HOME to its directory", [Home]);
        Dir2 -> Dir2
    end.

newest(Pattern) ->
    Sorted = lists:sort(fun(A, B) -> version_key(A) =< version_key(B) end,
                        filelib:wildcard(Pattern)),
    case Sorted of
        [] when Pattern =:= "/usr/lib/rabbitmq/lib/rabbitmq_server-*" ->
            fail("RabbitMQ is not installed here (no ~s); install the Debian package "
                 "rabbitmq-server or set RABBITMQ_HOME", [Pattern]);
        [] -> false;
        _ -> lists:last(Sorted)
    end.

%% "rabbit_common-3.10.8" -> [3, 10, 8], so 3.10 sorts after 3.9.
version_key(Path) ->
    Vsn = lists:last(string:split(filename:basename(Path), "-", trailing)),
    [case string:to_integer(P) of {N, _} when is_integer(N) -> N; _ -> 0 end
     || P <- string:split(Vsn, ".", all)].

compile_module(Src, Ebin) ->
    Opts = [deterministic, return_errors, return_warnings, warnings_as_errors,
            {outdir, Ebin}, {i, "include"}],
    case compile:file(Src, Opts) of
        {ok, Module, Warnings} ->
            print_diagnostics(Warnings, "warning"),
            Module;
        {error, Errors, Warnings} ->
            print_diagnostics(Errors, "error"),
            print_diagnostics(Warnings, "warning"),
            fail("compiling ~s failed", [Src])
    end.

print_diagnostics(Diagnostics, Kind) ->
    [io:format(standard_error, "~s:~s: ~s: ~ts~n",
               [File, location(Loc), Kind, Mod:format_error(Desc)])
     || {File, Entries} <- Diagnostics, {Loc, Mod, Desc} <- Entries],
    ok.

location({Line, Column}) -> io_lib:format("~p:~p", [Line, Column]);
location(Line) -> io_lib:format("~p", [Line]).

copy_priv(Stage) ->
    Files = [F || F <- filelib:wildcard("priv/**"), filelib:is_regular(F)],
    lists:foreach(fun(F) ->
                          Dest = filename:join(Stage, F),
                          ok = filelib:ensure_dir(Dest),
                          {ok, _} = file:copy(F, Dest)
                  end, Files).

%% Entries in sorted order with one fixed timestamp: the same tree gives the same bytes.
zip_stage(Name, Ez) ->
    StageRoot = filename:join("_build", "stage"),
    Entries = lists:sort([F || F <- filelib:wildcard(Name ++ "/**", StageRoot),
                               filelib:is_regular(filename:join(StageRoot, F))]),
    lists:foreach(fun(F) ->
                          ok = file:change_time(filename:join(StageRoot, F), ?FIXED_TIME)
                  end, Entries),
    _ = file:delete(Ez),
    case zip:create(Ez, Entries, [{cwd, StageRoot}]) of
        {ok, _} -> ok;
        {error, Reason} -> fail("writing ~s: ~p", [Ez, Reason])
    end.

del_dir(Dir) ->
    case file:del_dir_r(Dir) of
        ok -> ok;
        {error, enoent} -> ok;
        {error, Reason} -> fail("cannot remove ~s: ~p", [Dir, Reason])
    end.

fail(Format, Args) ->
    throw({build_error, lists:flatten(io_lib:format(Format, Args))}).
