#!/usr/bin/env escript
%% Pack the compiled app as an EMQX 5 plugin package:
%%   _build/emqx_plugin/NAME-VSN.tar.gz holding
%%     NAME-VSN/release.json            (name, rel_vsn, rel_apps, description, ...)
%%     NAME-VSN/README.md               (if present)
%%     NAME-VSN/NAME-VSN/ebin/...       (the app; priv/ too if present)
%% EMQX extracts it into its plugins dir and loads NAME-VSN/NAME-VSN/ebin.
%% Usage: escript scripts/emqx_package.escript NAME VSN
-mode(compile).

main([Name, Vsn]) ->
    try
        package(Name, Vsn)
    catch
        throw:{fail, Fmt, Args} ->
            io:format(standard_error, "emqx_package: " ++ Fmt ++ "~n", Args),
            halt(1)
    end;
main(_) ->
    io:format(standard_error, "usage: emqx_package.escript NAME VSN~n", []),
    halt(2).

package(Name, Vsn) ->
    LibDir = filename:join(["_build", "default", "lib", Name]),
    AppFile = filename:join([LibDir, "ebin", Name ++ ".app"]),
    Props = case file:consult(AppFile) of
        {ok, [{application, _, P}]} -> P;
        Other -> fail("cannot read ~s (run rebar3 compile first): ~p", [AppFile, Other])
    end,
    case proplists:get_value(vsn, Props) of
        Vsn -> ok;
        AppVsn -> fail("vsn ~p in ~s differs from the requested ~s", [AppVsn, AppFile, Vsn])
    end,
    case lists:member($-, Name) of
        true -> fail("EMQX splits NAME-VSN at the first '-': ~s must not contain '-'", [Name]);
        false -> ok
    end,
    NameVsn = Name ++ "-" ++ Vsn,
    {GitRef, CommitTime} = git_head(),
    Extra = case file:consult("emqx_plugin.config") of
        {ok, Terms} -> Terms;
        {error, enoent} -> [];
        {error, Reason} -> fail("emqx_plugin.config: ~p", [Reason])
    end,
    Info = maps:merge(
             maps:from_list([{K, to_json_value(V)} || {K, V} <- Extra]),
             #{name => bin(Name),
               rel_vsn => bin(Vsn),
               rel_apps => [bin(NameVsn)],
               description => bin(proplists:get_value(description, Props, Name)),
               metadata_vsn => <<"0.1.0">>,
               built_on_otp_release => bin(erlang:system_info(otp_release)),
               git_ref => GitRef,
               git_commit_or_build_date => date_of(CommitTime),
               with_config_schema => false}),
    Files = [{NameVsn ++ "/release.json", iolist_to_binary([json(Info), "\n"])}]
        ++ readme(NameVsn)
        ++ tree(filename:join(LibDir, "ebin"), NameVsn ++ "/" ++ NameVsn ++ "/ebin")
        ++ tree(filename:join(LibDir, "priv"), NameVsn ++ "/" ++ NameVsn ++ "/priv"),
    OutDir = filename:join("_build", "emqx_plugin"),
    Tar = filename:join(OutDir, NameVsn ++ ".tar.gz"),
    ok = filelib:ensure_dir(Tar),
    write_tar(Tar, Files, CommitTime),
    {ok, Bin} = file:read_file(Tar),
    Sha = << <<(hex(N))>> || <<N:4>> <= crypto_sha256(Bin) >>,
    ok = file:write_file(filename:join(OutDir, NameVsn ++ ".sha256"), Sha),
    io:format("packed ~s (~b files)~n", [Tar, length(Files)]).

%% Same source, same bytes: entries carry the commit time, not the build time.
write_tar(Tar, Files, MTime) ->
    {ok, T} = erl_tar:open(Tar, [write, compressed]),
    [ok = erl_tar:add(T, Bin, Name, [{mtime, MTime}, {atime, MTime}, {ctime, MTime},
                                      {uid, 0}, {gid, 0}])
     || {Name, Bin} <- Files],
    ok = erl_tar:close(T).

%% {CommitSha, CommitUnixTime} of HEAD, or {<<"unknown">>, 0} outside a Git checkout.
git_head() ->
    case os:find_executable("git") of
        false -> {<<"unknown">>, 0};
        Git ->
            Port = open_port({spawn_executable, Git},
                             [{args, ["log", "-1", "--format=%H %ct"]}, exit_status,
                              stderr_to_stdout, binary]),
            case collect(Port, <<>>) of
                {0, Out} ->
                    case string:lexemes(string:trim(Out), " ") of
                        [Sha, Time] -> {Sha, binary_to_integer(Time)};
                        _ -> {<<"unknown">>, 0}
                    end;
                _ -> {<<"unknown">>, 0}
            end
    end.

collect(Port, Acc) ->
    receive
        {Port, {data, D}} -> collect(Port, <<Acc/binary, D/binary>>);
        {Port, {exit_status, S}} -> {S, Acc}
    after 30000 -> {timeout, Acc}
    end.

readme(NameVsn) ->
    case file:read_file("README.md") of
        {ok, Bin} -> [{NameVsn ++ "/README.md", Bin}];
        {error, _} -> []
    end.

%% [{NameInTar, Binary}] for every regular file under Dir (resolved, sorted).
tree(Dir, Prefix) ->
    case filelib:is_dir(Dir) of
        false -> [];
        true ->
            Rel = lists:sort(filelib:wildcard("**", Dir)),
            [{Prefix ++ "/" ++ F, read(filename:join(Dir, F))}
             || F <- Rel, filelib:is_regular(filename:join(Dir, F))]
    end.

read(Path) ->
    {ok, Bin} = file:read_file(Path),
    Bin.

%% crypto may be missing from a minimal OTP; sha256 is only informational.
crypto_sha256(Bin) ->
    try crypto:hash(sha256, Bin)
    catch error:undef -> erlang:md5(Bin)
    end.

hex(N) when N < 10 -> $0 + N;
hex(N) -> $a + N - 10.

date_of(UnixTime) ->
    {{Y, M, D}, _} = calendar:system_time_to_universal_time(UnixTime, second),
    bin(io_lib:format("~4..0b-~2..0b-~2..0b", [Y, M, D])).

fail(Fmt, Args) -> throw({fail, Fmt, Args}).

bin(X) when is_binary(X) -> X;
bin(X) when is_atom(X) -> atom_to_binary(X, utf8);
bin(X) -> unicode:characters_to_binary(X).

%% Config terms -> JSON-able terms: strings become binaries, proplists become maps.
to_json_value(V) when is_binary(V); is_boolean(V); is_number(V) -> V;
to_json_value(V) when is_atom(V) -> bin(V);
to_json_value([{_, _} | _] = L) -> maps:from_list([{K, to_json_value(X)} || {K, X} <- L]);
to_json_value(V) when is_list(V) ->
    case io_lib:printable_unicode_list(V) of
        true -> bin(V);
        false -> [to_json_value(X) || X <- V]
    end.

%% A small JSON writer (OTP 25 has no json module); keys sorted for stable output.
json(M) when is_map(M) ->
    Pairs = [[json(bin(K)), ": ", json(V)] || {K, V} <- lists:sort(maps:to_list(M))],
    ["{", lists:join(", ", Pairs), "}"];
json(L) when is_list(L) -> ["[", lists:join(", ", [json(X) || X <- L]), "]"];
json(true) -> "true";
json(false) -> "false";
json(N) when is_integer(N) -> integer_to_list(N);
json(B) when is_binary(B) -> [$", escape(B), $"].

escape(B) ->
    [case C of
         $" -> "\\\"";
         $\\ -> "\\\\";
         $\n -> "\\n";
         $\r -> "\\r";
         $\t -> "\\t";
         C when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
         C -> <<C/utf8>>
     end || <<C/utf8>> <= B].
