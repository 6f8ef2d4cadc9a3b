-module(plugforge_starter_app).
-behaviour(application).

-export([start/2, stop/1]).

start(_Type, _Args) ->
    {ok, Sup} = plugforge_starter_sup:start_link(),
    ok = plugforge_starter:register_hooks(),
    {ok, Sup}.

stop(_State) ->
    plugforge_starter:unregister_hooks().
