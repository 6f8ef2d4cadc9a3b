%% plugforge_starter: EMQX 5 auth plugin.
%%
%% Policy: CONNECT is refused for usernames in the `deny_users` application env
%% (default "mallory"); PUBLISH to topics under forbidden/ is refused; everything
%% else is allowed. Both callbacks decide (`{stop, ...}`) so EMQX's own
%% authenticators/authorizers are not consulted; `ignore` lets them decide
%% (as done for clients without a username).
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
-spec on_client_authenticate(map(), term()) -> ignore | {stop, ok | {error, not_authorized}}.
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
            {stop, ok}
    end.

%% 'client.authorize' (fold hook): ClientInfo, action, topic, accumulated result.
%% The action is a map with action_type (EMQX >= 5.1) or the atom publish/subscribe (5.0).
-spec on_client_authorize(map(), map() | atom(), binary(), term()) ->
    {stop, #{result := allow | deny, from := atom()}}.
on_client_authorize(_ClientInfo, Action, Topic, _Acc) ->
    case is_publish(Action) andalso is_forbidden_topic(Topic) of
        true ->
            logger:notice("~s: refusing PUBLISH to ~s", [?APP, Topic]),
            {stop, #{result => deny, from => ?MODULE}};
        false ->
            {stop, #{result => allow, from => ?MODULE}}
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

%% The `deny_users` env as binaries; accepts "a,b", <<"a,b">> or ["a", <<"b">>].
-spec deny_users() -> [binary()].
deny_users() ->
    normalize(application:get_env(?APP, deny_users, "mallory")).

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
