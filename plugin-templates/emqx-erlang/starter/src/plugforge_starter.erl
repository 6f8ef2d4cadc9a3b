%% plugforge_starter: EMQX 5 auth plugin.
%%
%% Policy: CONNECT is refused for usernames in `deny_users` (default "mallory");
%% PUBLISH to topics under forbidden/ is refused. The plugin only refuses: for
%% everything else it answers `ignore`, so EMQX's own authentication (e.g. its
%% password database: unknown users and wrong passwords are refused there) and
%% authorization sources decide. The hooks run at priority 1000, before EMQX's
%% authentication (970) and authorization (960), so a refusal here is final.
-module(plugforge_starter).

-export([hooks/0, register_hooks/0, unregister_hooks/0]).
-export([on_client_authenticate/2, on_client_authorize/4]).
-export([deny_users/0, is_denied_user/1, is_forbidden_topic/1]).

-define(APP, plugforge_starter).
%% From EMQX's emqx_hooks.hrl (not included: it is not available at build time).
-define(HP_HIGHEST, 1000).

%% Hook registrations as {HookPoint, {Module, Function, ExtraArgs}, Priority}.
-spec hooks() -> [{atom(), {module(), atom(), list()}, integer()}].
hooks() ->
    [{'client.authenticate', {?MODULE, on_client_authenticate, []}, ?HP_HIGHEST},
     {'client.authorize', {?MODULE, on_client_authorize, []}, ?HP_HIGHEST}].

-spec register_hooks() -> ok.
register_hooks() ->
    lists:foreach(fun({Point, MFA, Prio}) -> emqx_hooks:add(Point, MFA, Prio) end, hooks()).

-spec unregister_hooks() -> ok.
unregister_hooks() ->
    lists:foreach(fun({Point, {M, F, _}, _}) -> emqx_hooks:del(Point, {M, F}) end, hooks()).

%% 'client.authenticate' (fold hook): ClientInfo map, accumulated result.
-spec on_client_authenticate(map(), term()) -> ignore | {stop, {error, not_authorized}}.
on_client_authenticate(ClientInfo, _Acc) ->
    case maps:get(username, ClientInfo, undefined) of
        Username when is_binary(Username) -> authenticate(Username);
        _ -> ignore
    end.

authenticate(Username) ->
    case is_denied_user(Username) of
        true ->
            logger:notice("~s: refusing CONNECT of user ~s", [?APP, Username]),
            {stop, {error, not_authorized}};
        false ->
            ignore
    end.

%% 'client.authorize' (fold hook): ClientInfo, action, topic, accumulated result.
%% The action is a map with action_type (EMQX >= 5.1) or the atom publish/subscribe (5.0).
-spec on_client_authorize(map(), map() | atom(), binary(), term()) ->
    ignore | {stop, #{result := deny, from := atom()}}.
on_client_authorize(_ClientInfo, Action, Topic, _Acc) ->
    case is_publish(Action) andalso is_forbidden_topic(Topic) of
        true ->
            logger:notice("~s: refusing PUBLISH to ~s", [?APP, Topic]),
            {stop, #{result => deny, from => ?MODULE}};
        false ->
            ignore
    end.

is_publish(#{action_type := publish}) -> true;
is_publish(publish) -> true;
is_publish(_) -> false.

-spec is_forbidden_topic(binary()) -> boolean().
is_forbidden_topic(<<"forbidden/", _/binary>>) -> true;
is_forbidden_topic(_) -> false.

-spec is_denied_user(binary() | undefined) -> boolean().
is_denied_user(Username) when is_binary(Username) ->
    lists:member(Username, deny_users());
is_denied_user(_) ->
    false.

%% `deny_users` as binaries: from the plugin's config in EMQX (PUT
%% /api/v5/plugins/NAME-VSN/config {"deny_users": "a,b"}, EMQX 5.7+) when set,
%% else the application env. Accepts "a,b", <<"a,b">> or ["a", <<"b">>].
-spec deny_users() -> [binary()].
deny_users() ->
    case plugin_config() of
        #{<<"deny_users">> := Users} -> normalize(Users);
        _ -> normalize(application:get_env(?APP, deny_users, "mallory"))
    end.

%% EMQX keeps each plugin's config in a persistent_term (a cheap read on every
%% CONNECT); emqx_plugins is resolved at runtime, so outside EMQX (eunit) it is
%% absent and the application env applies.
plugin_config() ->
    case application:get_key(?APP, vsn) of
        {ok, Vsn} ->
            try emqx_plugins:get_config(atom_to_list(?APP) ++ "-" ++ Vsn) of
                {ok, Config} when is_map(Config) -> Config;
                _ -> #{}
            catch
                error:undef -> #{}
            end;
        undefined ->
            #{}
    end.

normalize(Value) when is_binary(Value) ->
    normalize(binary_to_list(Value));
normalize(Value) when is_list(Value) ->
    case io_lib:printable_unicode_list(Value) of
        true ->
            [unicode:characters_to_binary(string:trim(P))
             || P <- string:lexemes(Value, ","), string:trim(P) =/= ""];
        false ->
            lists:append([normalize(V) || V <- Value])
    end;
normalize(_) ->
    [].
