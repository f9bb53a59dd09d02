-module(hello_edist_app).
-behaviour(application).
-export([start/2, stop/1, hello/1]).

start(_Type, _Args) -> hello_edist_sup:start_link().
stop(_State) -> ok.

%% What the test calls over rpc: proves the code of the release answers.
hello(Who) -> {hello, Who, node()}.
