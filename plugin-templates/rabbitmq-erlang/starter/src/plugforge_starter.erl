%% plugforge_starter: a RabbitMQ authentication + authorization backend.
%%
%% Policy: refuse login for the usernames in the `deny_users` setting (comma separated, default
%% "mallory"); refuse publishing to topics under forbidden/ (MQTT publishes become routing keys
%% on the topic exchange with '.' for '/', so forbidden/x is checked as forbidden.x); allow
%% everything else. This sample checks no passwords: a real backend verifies credentials in
%% user_login_authentication/2.
%%
%% Selected with `auth_backends.1 = plugforge_starter` in rabbitmq.conf, or at runtime with
%% `rabbitmqctl eval 'application:set_env(rabbit, auth_backends, [plugforge_starter]).'`.
-module(plugforge_starter).

-behaviour(rabbit_authn_backend).
-behaviour(rabbit_authz_backend).

-include_lib("rabbit_common/include/rabbit.hrl").

-export([user_login_authentication/2, user_login_authorization/2,
         check_vhost_access/3, check_resource_access/4, check_topic_access/4,
         state_can_expire/0, update_state/2]).
%% Pure policy helpers, exported for tests and reuse.
-export([parse_users/1, may_publish/1]).

-define(APP, plugforge_starter).
-define(FORBIDDEN_PREFIX, <<"forbidden.">>).

%% --- rabbit_authn_backend --------------------------------------------------------------------

user_login_authentication(Username, _AuthProps) ->
    case check_user(Username) of
        ok -> {ok, #auth_user{username = Username, tags = [], impl = none}};
        Refusal -> Refusal
    end.

%% --- rabbit_authz_backend --------------------------------------------------------------------

%% Called when this module only authorizes ({AuthN, plugforge_starter} in auth_backends).
user_login_authorization(Username, _AuthProps) ->
    case check_user(Username) of
        ok -> {ok, none};
        Refusal -> Refusal
    end.

check_vhost_access(#auth_user{}, _VHost, _AuthzData) ->
    true.

check_resource_access(#auth_user{}, #resource{}, _Permission, _AuthzContext) ->
    true.

check_topic_access(#auth_user{}, #resource{kind = topic}, write, #{routing_key := RoutingKey}) ->
    may_publish(RoutingKey);
check_topic_access(#auth_user{}, #resource{}, _Permission, _Context) ->
    true.

state_can_expire() ->
    false.

update_state(AuthUser, _NewState) ->
    {ok, AuthUser}.

%% --- policy ----------------------------------------------------------------------------------

may_publish(<<"forbidden.", _/binary>>) -> false;
may_publish(RoutingKey) when is_binary(RoutingKey) -> true.

%% The setting is read on every login so a changed application env applies immediately. An
%% unreadable setting refuses everybody (with the reason in the log) rather than let denied
%% users in.
check_user(Username) ->
    case parse_users(application:get_env(?APP, deny_users, "mallory")) of
        {ok, Denied} ->
            case lists:member(Username, Denied) of
                true -> {refused, "user '~ts' is denied by ~s", [Username, ?APP]};
                false -> ok
            end;
        {error, Reason} ->
            logger:error("~s: ~ts", [?APP, Reason]),
            {error, Reason}
    end.

%% "a, b,c" (string or binary) -> {ok, [<<"a">>, <<"b">>, <<"c">>]}.
parse_users(Value) when is_binary(Value) ->
    parse_users(unicode:characters_to_list(Value));
parse_users(Value) when is_list(Value) ->
    case io_lib:printable_unicode_list(Value) of
        true ->
            Names = [string:trim(N) || N <- string:split(Value, ",", all)],
            {ok, [unicode:characters_to_binary(N) || N <- Names, N =/= ""]};
        false ->
            {error, bad_setting(Value)}
    end;
parse_users(Value) ->
    {error, bad_setting(Value)}.

bad_setting(Value) ->
    lists:flatten(io_lib:format(
        "setting deny_users must be a comma-separated string such as \"mallory,eve\", "
        "found ~0p; fix it with application:set_env(~s, deny_users, \"...\")", [Value, ?APP])).
