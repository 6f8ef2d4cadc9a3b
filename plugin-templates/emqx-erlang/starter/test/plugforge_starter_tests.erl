%% Unit tests of the hook callbacks, run by `rebar3 eunit` (part of the plugforge build).
-module(plugforge_starter_tests).
-include_lib("eunit/include/eunit.hrl").

-define(M, plugforge_starter).

client(Username) -> #{clientid => <<"c1">>, username => Username, peerhost => {127, 0, 0, 1}}.

authenticate_test() ->
    ?assertEqual({stop, {error, not_authorized}},
                 ?M:on_client_authenticate(client(<<"mallory">>), ignore)),
    %% Not ours to admit: EMQX's own authentication decides.
    ?assertEqual(ignore, ?M:on_client_authenticate(client(<<"alice">>), ignore)),
    ?assertEqual(ignore, ?M:on_client_authenticate(client(undefined), ignore)).

authorize_test() ->
    Deny = {stop, #{result => deny, from => ?M}},
    Pub = #{action_type => publish, qos => 1, retain => false},
    Sub = #{action_type => subscribe, qos => 0},
    C = client(<<"alice">>),
    ?assertEqual(Deny, ?M:on_client_authorize(C, Pub, <<"forbidden/x">>, #{result => allow})),
    ?assertEqual(ignore, ?M:on_client_authorize(C, Pub, <<"ok/x">>, #{result => allow})),
    ?assertEqual(ignore, ?M:on_client_authorize(C, Sub, <<"forbidden/#">>, #{result => allow})),
    ?assertEqual(Deny, ?M:on_client_authorize(C, publish, <<"forbidden/y">>, allow)).

hooks_test() ->
    ?assertEqual([{'client.authenticate', {?M, on_client_authenticate, []}, 1000},
                  {'client.authorize', {?M, on_client_authorize, []}, 1000}],
                 ?M:hooks()).
