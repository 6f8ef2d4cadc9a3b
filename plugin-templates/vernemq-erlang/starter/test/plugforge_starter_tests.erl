%% Unit tests of the hooks, run by `rebar3 eunit` (part of the plugforge build).
-module(plugforge_starter_tests).
-include_lib("eunit/include/eunit.hrl").

-define(M, plugforge_starter).
-define(SID, {"", <<"client-1">>}).

with_env(Value, Fun) ->
    application:load(plugforge_starter),
    Old = application:get_env(plugforge_starter, deny_users),
    application:set_env(plugforge_starter, deny_users, Value),
    try Fun() after
        case Old of
            {ok, V} -> application:set_env(plugforge_starter, deny_users, V);
            undefined -> application:unset_env(plugforge_starter, deny_users)
        end
    end.

register_test() ->
    with_env("mallory", fun() ->
        ?assertEqual({error, invalid_credentials},
                     ?M:auth_on_register({{127,0,0,1}, 1}, ?SID, <<"mallory">>, <<"pw">>, true)),
        %% Not denied: `next`, so vmq_passwd (or another plugin) checks the password.
        ?assertEqual(next, ?M:auth_on_register({{127,0,0,1}, 1}, ?SID, <<"alice">>, <<"pw">>, true)),
        ?assertEqual(next, ?M:auth_on_register({{127,0,0,1}, 1}, ?SID, undefined, undefined, true)),
        ?assertEqual({error, #{reason_code => not_authorized}},
                     ?M:auth_on_register_m5({{127,0,0,1}, 1}, ?SID, <<"mallory">>, <<>>, true, #{}))
    end).

deny_users_setting_test() ->
    with_env("eve, trudy", fun() ->
        ?assertEqual([<<"eve">>, <<"trudy">>], ?M:deny_users()),
        ?assertEqual(next, ?M:auth_on_register(peer, ?SID, <<"mallory">>, <<>>, true))
    end),
    with_env([<<"eve">>, "bob"], fun() -> ?assertEqual([<<"eve">>, <<"bob">>], ?M:deny_users()) end).

publish_test() ->
    ?assertEqual({error, not_authorized},
                 ?M:auth_on_publish(<<"alice">>, ?SID, 1, [<<"forbidden">>, <<"x">>], <<"p">>, false)),
    ?assertEqual(next, ?M:auth_on_publish(<<"alice">>, ?SID, 1, [<<"ok">>, <<"x">>], <<"p">>, false)),
    ?assertEqual(next, ?M:auth_on_publish(<<"alice">>, ?SID, 1, [<<"forbidden">>], <<"p">>, false)),
    ?assertEqual({error, #{reason_code => not_authorized}},
                 ?M:auth_on_publish_m5(<<"a">>, ?SID, 0, [<<"forbidden">>, <<"x">>], <<>>, false, #{})).

subscribe_test() ->
    ?assertEqual(next, ?M:auth_on_subscribe(<<"alice">>, ?SID, [{[<<"forbidden">>, <<"#">>], 0}])),
    ?assertEqual(next, ?M:auth_on_subscribe_m5(<<"alice">>, ?SID, [{[<<"a">>], {0, #{}}}], #{})).
