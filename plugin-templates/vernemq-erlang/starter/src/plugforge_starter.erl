%% plugforge_starter: VerneMQ auth plugin.
%%
%% Policy: CONNECT is refused for usernames in the `deny_users` application env
%% (default "mallory"); PUBLISH to topics under forbidden/ is refused. For everything
%% else the hooks answer `next`: the other plugins (vmq_passwd, vmq_acl, ...) decide,
%% and a client nobody admits is refused. `ok` would admit without asking them: a
%% deny-list plugin that answered `ok` would let in every user it does not deny,
%% with any password or none. Answer `ok` only where this plugin really authenticates.
-module(plugforge_starter).

-export([auth_on_register/5, auth_on_publish/6, auth_on_subscribe/3,
         auth_on_register_m5/6, auth_on_publish_m5/7, auth_on_subscribe_m5/4]).
-export([deny_users/0, is_denied_user/1, is_forbidden_topic/1]).

-define(APP, plugforge_starter).

%% MQTT 3.1.1 hooks ------------------------------------------------------------

-spec auth_on_register(term(), term(), binary() | undefined, term(), term()) ->
    next | {error, invalid_credentials}.
auth_on_register(_Peer, _SubscriberId, undefined, _Password, _CleanSession) ->
    next;
auth_on_register(_Peer, _SubscriberId, UserName, _Password, _CleanSession) ->
    case is_denied_user(UserName) of
        true ->
            logger:notice("~s: refusing CONNECT of user ~s", [?APP, UserName]),
            {error, invalid_credentials};
        false ->
            next
    end.

-spec auth_on_publish(term(), term(), 0..2, [binary()], binary(), term()) ->
    next | {error, not_authorized}.
auth_on_publish(_UserName, _SubscriberId, _QoS, Topic, _Payload, _IsRetain) ->
    check_publish(Topic).

-spec auth_on_subscribe(term(), term(), [{[binary()], term()}]) -> next.
auth_on_subscribe(_UserName, _SubscriberId, _Topics) ->
    next.

%% MQTT 5 hooks ---------------------------------------------------------------

-spec auth_on_register_m5(term(), term(), binary() | undefined, term(), term(), map()) ->
    next | {error, #{reason_code := not_authorized}}.
auth_on_register_m5(Peer, SubscriberId, UserName, Password, CleanStart, _Properties) ->
    case auth_on_register(Peer, SubscriberId, UserName, Password, CleanStart) of
        {error, _} -> {error, #{reason_code => not_authorized}};
        Other -> Other
    end.

-spec auth_on_publish_m5(term(), term(), 0..2, [binary()], binary(), term(), map()) ->
    next | {error, #{reason_code := not_authorized}}.
auth_on_publish_m5(_UserName, _SubscriberId, _QoS, Topic, _Payload, _IsRetain, _Properties) ->
    case check_publish(Topic) of
        next -> next;
        {error, Reason} -> {error, #{reason_code => Reason}}
    end.

-spec auth_on_subscribe_m5(term(), term(), [{[binary()], term()}], map()) -> next.
auth_on_subscribe_m5(_UserName, _SubscriberId, _Topics, _Properties) ->
    next.

%% Policy ----------------------------------------------------------------------

-spec check_publish([binary()]) -> next | {error, not_authorized}.
check_publish(Topic) ->
    case is_forbidden_topic(Topic) of
        true ->
            logger:notice("~s: refusing PUBLISH to ~s", [?APP, join_topic(Topic)]),
            {error, not_authorized};
        false ->
            next
    end.

%% VerneMQ passes topics as lists of levels: <<"forbidden/x">> is [<<"forbidden">>, <<"x">>].
-spec is_forbidden_topic([binary()]) -> boolean().
is_forbidden_topic([<<"forbidden">>, _ | _]) -> true;
is_forbidden_topic(_) -> false.

-spec is_denied_user(binary() | undefined) -> boolean().
is_denied_user(undefined) -> false;
is_denied_user(UserName) when is_binary(UserName) ->
    lists:member(UserName, deny_users()).

%% The `deny_users` env as binaries; accepts "a,b", <<"a,b">> or ["a", <<"b">>].
-spec deny_users() -> [binary()].
deny_users() ->
    normalize(application:get_env(?APP, deny_users, "mallory")).

-spec normalize(term()) -> [binary()].
normalize(Value) when is_binary(Value) ->
    normalize(binary_to_list(Value));
normalize(Value) when is_list(Value) ->
    case io_lib:printable_unicode_list(Value) of
        true ->
            Parts = string:lexemes(Value, ","),
            [unicode:characters_to_binary(string:trim(P)) || P <- Parts, string:trim(P) =/= ""];
        false ->
            lists:append([normalize(V) || V <- Value])
    end;
normalize(_) ->
    [].

-spec join_topic([binary()]) -> binary().
join_topic(Levels) ->
    iolist_to_binary(lists:join(<<"/">>, Levels)).
