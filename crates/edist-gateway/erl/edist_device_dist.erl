%% edist_device_dist: an Erlang-only distribution carrier for devices that cannot run an edist
%% gateway (GRiSP-class boards, one BEAM and nothing else). Started with
%%
%%     -proto_dist edist_device -setcookie HUB_COOKIE
%%     -kernel edist_device '[{hubs, [{"gw-hub", "hub.example.com", 4372}]}, {certs_dir, "/etc/edist"}]'
%%
%% the node listens on no socket: it dials a hub gateway over TLS 1.3 (OTP ssl) with its device
%% certificate (`edist certs issue --device NAME`; mutual TLS, the cluster CA) and keeps one
%% control connection to it. The hub makes the device a node of its host, announced to the
%% whole cluster. Every distribution connection is a TLS connection of its own to the hub:
%%
%%   * dialled by the device (setup/5): the first frame names the node it wants, then the
%%     standard handshake and distribution packets follow;
%%   * to the device (another node dials it): the hub asks over the control connection, and the
%%     device opens a TLS connection answering that request (an `accept` that dials out).
%%
%% Frames (a u16 length first, OTP's {packet, 2}): see crates/edist-gateway/src/device/proto.rs.
%% Several hubs may be given: the control connection takes the first that answers and moves on
%% when it fails; it reconnects by itself with exponential backoff (with jitter). A connection
%% the hub refuses (a name the certificate does not grant) is retried slowly and logged.
%%
%% It follows OTP's "How to implement an alternative carrier" (ERTS User's Guide) with one
%% process per connection as distribution controller (erlang:dist_ctrl_*), the model of
%% gen_tcp_dist.erl, and works with OTP 25 and later. docs/devices.md has the whole story.
-module(edist_device_dist).

-export([listen/1, listen/2, accept/1, accept_connection/5, setup/5, close/1, select/1,
         address/0, address/1, is_node_name/1, setopts/2, getopts/2]).
-export([info/0]).
%% Internal.
-export([control_init/3]).

-include_lib("kernel/include/net_address.hrl").
-include_lib("kernel/include/dist_util.hrl").

-define(LINK, edist_device_link).
-define(MAGIC, "EDC1").
-define(CONNECT_TIMEOUT, 5000).
-define(BACKOFF_MIN, 250).
-define(BACKOFF_MAX, 8000).
%% Before the hub's welcome says otherwise.
-define(IDLE_DEFAULT, 15000).
-define(HANDSHAKE_LIMIT, 60000).
-define(ACTIVE_N, 32).

%% ------------------------------------------------------------------------------------------
%% The carrier API (called by net_kernel).

listen(Name) ->
    listen(Name, host_part()).

%% No socket: a control process that keeps the hub connection. The node's creation is its own
%% (the hub takes what the device says), so distribution starts even when no hub is reachable.
listen(Name, Host) ->
    case whereis(?LINK) of
        undefined -> ok;
        Old -> Old ! stop
    end,
    Node = to_list(Name) ++ "@" ++ to_list(Host),
    Creation = 3 + rand:uniform(16#fffffff0),
    Pid = spawn(?MODULE, control_init, [Node, Creation, self()]),
    Address = #net_address{address = {{127, 0, 0, 1}, 0}, host = to_list(Host),
                           protocol = tcp, family = inet},
    {ok, {Pid, Address, Creation}}.

%% net_kernel links to the accept process: the control process is it, and never crashes.
accept(Link) ->
    Link ! {kernel, self()},
    link(Link),
    Link.

accept_connection(AcceptPid, Ctrl, MyNode, Allowed, SetupTime) ->
    Kernel = self(),
    spawn_opt(fun() -> do_accept(Kernel, AcceptPid, Ctrl, MyNode, Allowed, SetupTime) end,
              [link, {priority, max}]).

setup(Node, Type, MyNode, _LongOrShortNames, SetupTime) ->
    Kernel = self(),
    spawn_opt(fun() -> do_setup(Kernel, Node, Type, MyNode, SetupTime) end,
              [link, {priority, max}]).

close(Link) ->
    Link ! stop,
    ok.

select(Node) ->
    length(string:split(atom_to_list(Node), "@", all)) =:= 2.

is_node_name(Node) when is_atom(Node) -> select(Node);
is_node_name(_) -> false.

address() ->
    address(host_part()).

address(Host) ->
    #net_address{address = {{127, 0, 0, 1}, 0}, host = to_list(Host), protocol = tcp, family = inet}.

setopts(_Listen, _Opts) -> {error, enotsup}.
getopts(_Listen, _Opts) -> {error, enotsup}.

%% What the connector is doing: the hub it is connected to (or not), since when, reconnects.
info() ->
    case whereis(?LINK) of
        undefined -> #{running => false};
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! {info, self(), Ref},
            receive
                {Ref, Info} -> demonitor(Ref, [flush]), Info;
                {'DOWN', Ref, _, _, _} -> #{running => false}
            after 5000 -> demonitor(Ref, [flush]), #{running => timeout}
            end
    end.

%% ------------------------------------------------------------------------------------------
%% Connections.

do_setup(Kernel, Node, Type, MyNode, SetupTime) ->
    Timer = dist_util:start_timer(SetupTime),
    case hub() of
        {ok, Hub, Conf} ->
            case connect(Hub, Conf) of
                {ok, S} ->
                    case ssl:send(S, [?MAGIC, 2, atom_to_binary(Node, utf8)]) of
                        ok ->
                            Ctrl = spawn_ctrl(S),
                            ok = call(Ctrl, {supervisor, self()}),
                            HSData = (hs_data(Ctrl, Kernel, Timer))#hs_data{
                                       other_node = Node, this_node = MyNode,
                                       other_version = 6, request_type = Type},
                            dist_util:handshake_we_started(HSData);
                        _ ->
                            ?shutdown(Node)
                    end;
                _ ->
                    ?shutdown(Node)
            end;
        _ ->
            ?shutdown(Node)
    end.

do_accept(Kernel, AcceptPid, Ctrl, MyNode, Allowed, SetupTime) ->
    receive
        {AcceptPid, controller} ->
            Timer = dist_util:start_timer(SetupTime),
            ok = call(Ctrl, {supervisor, self()}),
            HSData = (hs_data(Ctrl, Kernel, Timer))#hs_data{this_node = MyNode, allowed = Allowed},
            dist_util:handshake_other_started(HSData)
    end.

hs_data(Ctrl, Kernel, Timer) ->
    #hs_data{
       kernel_pid = Kernel,
       socket = Ctrl,
       timer = Timer,
       this_flags = 0,
       f_send = fun(C, Packet) -> call(C, {send, Packet}) end,
       f_recv = fun(C, Len, Timeout) ->
                        case call(C, {recv, Len, Timeout}) of
                            {ok, Bin} when is_binary(Bin) -> {ok, binary_to_list(Bin)};
                            Other -> Other
                        end
                end,
       f_setopts_pre_nodeup = fun(_) -> ok end,
       f_setopts_post_nodeup = fun(_) -> ok end,
       f_getll = fun(C) -> {ok, C} end,
       f_address = fun(_C, Node) ->
                           [_, Host] = string:split(atom_to_list(Node), "@"),
                           #net_address{address = {{127, 0, 0, 1}, 0}, host = Host,
                                        protocol = tcp, family = inet}
                   end,
       f_handshake_complete = fun(C, Node, DHandle) ->
                                      call(C, {handshake_complete, Node, DHandle})
                              end,
       mf_tick = fun(C) -> C ! tick end,
       mf_getstat = fun(C) -> call(C, getstat) end,
       mf_setopts = fun(_, _) -> {error, enotsup} end,
       mf_getopts = fun(_, _) -> {error, enotsup} end}.

call(Pid, Req) ->
    Ref = monitor(process, Pid),
    Pid ! {Ref, self(), Req},
    receive
        {Ref, Reply} -> demonitor(Ref, [flush]), Reply;
        {'DOWN', Ref, _, _, Reason} -> {error, Reason}
    end.

%% The distribution controller of one connection: owns the TLS socket; serves the handshake's
%% sends and receives, then moves packets between the socket and the runtime.
spawn_ctrl(S) ->
    Ctrl = spawn_opt(fun() -> receive {owner, S} -> ctrl_handshake(S) end end,
                     [{priority, max}]),
    ok = ssl:controlling_process(S, Ctrl),
    Ctrl ! {owner, S},
    Ctrl.

ctrl_handshake(S) ->
    receive
        {Ref, From, {send, Packet}} ->
            From ! {Ref, ssl:send(S, Packet)},
            ctrl_handshake(S);
        {Ref, From, {recv, _Len, Timeout}} ->
            From ! {Ref, ssl:recv(S, 0, Timeout)},
            ctrl_handshake(S);
        {Ref, From, {supervisor, Pid}} ->
            link(Pid),
            From ! {Ref, ok},
            ctrl_handshake(S);
        {Ref, From, getstat} ->
            From ! {Ref, {ok, 0, 0, 0}},
            ctrl_handshake(S);
        {Ref, From, {handshake_complete, _Node, DHandle}} ->
            From ! {Ref, ok},
            ok = ssl:setopts(S, [{packet, 4}, {active, ?ACTIVE_N}]),
            ok = erlang:dist_ctrl_get_data_notification(DHandle),
            ctrl_run(S, DHandle);
        tick ->
            ctrl_handshake(S)
    after ?HANDSHAKE_LIMIT ->
        exit(handshake_timeout)
    end.

ctrl_run(S, DHandle) ->
    receive
        dist_data ->
            send_all(S, DHandle),
            ok = erlang:dist_ctrl_get_data_notification(DHandle),
            ctrl_run(S, DHandle);
        {ssl, S, Data} ->
            ok = erlang:dist_ctrl_put_data(DHandle, Data),
            ctrl_run(S, DHandle);
        {ssl_passive, S} ->
            ok = ssl:setopts(S, [{active, ?ACTIVE_N}]),
            ctrl_run(S, DHandle);
        {ssl_closed, S} ->
            exit(connection_closed);
        {ssl_error, S, Reason} ->
            exit({ssl_error, Reason});
        tick ->
            %% The runtime sent nothing since the last tick: an empty packet.
            case ssl:send(S, <<>>) of
                ok -> ctrl_run(S, DHandle);
                {error, Reason} -> exit({send_failed, Reason})
            end;
        {Ref, From, getstat} ->
            {ok, In, Out, Pending} = erlang:dist_get_stat(DHandle),
            Pend = case Pending of true -> 1; false -> 0; N when is_integer(N) -> N end,
            From ! {Ref, {ok, In, Out, Pend}},
            ctrl_run(S, DHandle);
        {Ref, From, _} ->
            From ! {Ref, {error, enotsup}},
            ctrl_run(S, DHandle)
    end.

send_all(S, DHandle) ->
    case erlang:dist_ctrl_get_data(DHandle) of
        none -> ok;
        Data ->
            case ssl:send(S, Data) of
                ok -> send_all(S, DHandle);
                {error, Reason} -> exit({send_failed, Reason})
            end
    end.

%% ------------------------------------------------------------------------------------------
%% The control connection.

-record(c, {node, creation, kernel, conf, sock, hub, connected_at, hubs = [], backoff = ?BACKOFF_MIN,
            idle = ?IDLE_DEFAULT, last_rx = 0, reconnects = 0, last_error}).

control_init(Node, Creation, _NetKernel) ->
    register(?LINK, self()),
    %% Never a crash: net_kernel is linked to this process and would stop with it.
    process_flag(trap_exit, true),
    self() ! connect,
    erlang:send_after(1000, self(), beat),
    control_loop(#c{node = Node, creation = Creation}).

control_loop(C) ->
    Msg = receive M -> M end,
    C1 = try control(Msg, C)
         catch Class:Reason:Stack ->
                 logger:error("edist_device: ~p:~p in ~p~n~p", [Class, Reason, Msg, Stack]),
                 C
         end,
    case C1 of
        stop -> ok;
        _ -> control_loop(C1)
    end.

control(stop, C) ->
    catch ssl:close(C#c.sock),
    stop;
control({kernel, Kernel}, C) ->
    C#c{kernel = Kernel};
control(connect, C = #c{sock = undefined}) ->
    try_connect(C);
control(connect, C) ->
    C;
control(beat, C) ->
    erlang:send_after(max(100, C#c.idle div 3), self(), beat),
    case C#c.sock of
        undefined -> C;
        S ->
            case now_ms() - C#c.last_rx > C#c.idle of
                true ->
                    logger:warning("edist_device: hub ~s silent for ~b ms: reconnecting",
                                   [hub_name(C#c.hub), C#c.idle]),
                    disconnected(C, silent);
                false ->
                    _ = ssl:send(S, <<3>>),
                    C
            end
    end;
control({ssl, S, <<2, Id:64>>}, C = #c{sock = S}) ->
    Link = self(),
    {Hub, Conf} = {C#c.hub, C#c.conf},
    spawn(fun() -> answer(Link, Id, Hub, Conf) end),
    C#c{last_rx = now_ms()};
control({ssl, S, <<3>>}, C = #c{sock = S}) ->
    C#c{last_rx = now_ms()};
control({ssl, S, _Other}, C = #c{sock = S}) ->
    C#c{last_rx = now_ms()};
control({ssl_closed, S}, C = #c{sock = S}) ->
    logger:notice("edist_device: connection to hub ~s closed", [hub_name(C#c.hub)]),
    disconnected(C, closed);
control({ssl_error, S, Reason}, C = #c{sock = S}) ->
    disconnected(C, Reason);
control({answered, Ctrl}, C = #c{kernel = Kernel}) when is_pid(Kernel) ->
    Kernel ! {accept, self(), Ctrl, inet, tcp},
    C;
control({answered, Ctrl}, C) ->
    exit(Ctrl, kill),
    C;
control({Kernel, controller, Pid}, C = #c{kernel = Kernel}) ->
    Pid ! {self(), controller},
    C;
control({Kernel, unsupported_protocol}, C = #c{kernel = Kernel}) ->
    C;
control({hub, From, Ref}, C) ->
    Reply = case C#c.sock of
                undefined -> {error, not_connected};
                _ -> {ok, C#c.hub, C#c.conf}
            end,
    From ! {Ref, Reply},
    C;
control({info, From, Ref}, C) ->
    From ! {Ref, #{running => true, node => C#c.node, creation => C#c.creation,
                   connected => C#c.sock =/= undefined, hub => C#c.hub,
                   connected_at => C#c.connected_at, reconnects => C#c.reconnects,
                   last_error => C#c.last_error}},
    C;
control({'EXIT', _, _}, C) ->
    C;
control(_, C) ->
    C.

disconnected(C, Why) ->
    catch ssl:close(C#c.sock),
    C1 = C#c{sock = undefined, last_error = Why, reconnects = C#c.reconnects + 1},
    retry(C1).

retry(C) ->
    Wait = C#c.backoff,
    %% Jitter: a hub's restart does not bring back every device at the same instant.
    erlang:send_after(Wait div 2 + rand:uniform(Wait), self(), connect),
    C#c{backoff = min(Wait * 2, maps:get(backoff_max_ms, C#c.conf, ?BACKOFF_MAX))}.

try_connect(C0) ->
    case ensure_ssl() of
        false ->
            erlang:send_after(200, self(), connect),
            C0;
        true ->
            C = case C0#c.conf of undefined -> C0#c{conf = conf(C0#c.node)}; _ -> C0 end,
            Hubs = case C#c.hubs of [] -> maps:get(hubs, C#c.conf, []); H -> H end,
            case Hubs of
                [] ->
                    logger:error("edist_device: no hubs configured (kernel env edist_device)"),
                    retry(C#c{last_error = no_hubs});
                [Hub | Rest] ->
                    case hello(Hub, C) of
                        {ok, S, Idle} ->
                            logger:notice("edist_device: ~s connected to hub ~s", [C#c.node, hub_name(Hub)]),
                            ok = ssl:setopts(S, [{active, true}]),
                            C#c{sock = S, hub = Hub, hubs = Rest, backoff = ?BACKOFF_MIN, idle = Idle,
                                last_rx = now_ms(), connected_at = erlang:system_time(millisecond)};
                        {error, Why} ->
                            logger:warning("edist_device: hub ~s: ~p", [hub_name(Hub), Why]),
                            retry(C#c{hubs = Rest, last_error = Why})
                    end
            end
    end.

hello(Hub, C) ->
    case connect(Hub, C#c.conf) of
        {ok, S} ->
            Name = list_to_binary(C#c.node),
            case ssl:send(S, [?MAGIC, 1, <<(C#c.creation):32>>, Name]) of
                ok ->
                    case ssl:recv(S, 0, ?CONNECT_TIMEOUT) of
                        {ok, <<1, Idle:32>>} ->
                            {ok, S, Idle};
                        {ok, <<0, Why/binary>>} ->
                            ssl:close(S),
                            {error, {refused, Why}};
                        Other ->
                            ssl:close(S),
                            {error, Other}
                    end;
                Error ->
                    ssl:close(S),
                    Error
            end;
        Error ->
            Error
    end.

%% A node dialled the device: a TLS connection answering the hub's request `Id`, handed to
%% net_kernel as an accepted connection.
answer(Link, Id, Hub, Conf) ->
    case connect(Hub, Conf) of
        {ok, S} ->
            case ssl:send(S, [?MAGIC, 3, <<Id:64>>]) of
                ok ->
                    Ctrl = spawn_ctrl(S),
                    Link ! {answered, Ctrl};
                _ ->
                    ssl:close(S)
            end;
        _ ->
            ok
    end.

hub() ->
    case whereis(?LINK) of
        undefined -> {error, not_started};
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! {hub, self(), Ref},
            receive
                {Ref, Reply} -> demonitor(Ref, [flush]), Reply;
                {'DOWN', Ref, _, _, _} -> {error, not_started}
            after ?CONNECT_TIMEOUT -> demonitor(Ref, [flush]), {error, timeout}
            end
    end.

connect({Sni, Host, Port}, Conf) ->
    Opts = [binary, {active, false}, {packet, 2}, {nodelay, true}, {keepalive, true},
            {versions, ['tlsv1.3']}, {verify, verify_peer},
            {server_name_indication, to_list(Sni)},
            {cacertfile, maps:get(cacertfile, Conf)},
            {certfile, maps:get(certfile, Conf)},
            {keyfile, maps:get(keyfile, Conf)}],
    try ssl:connect(to_host(Host), Port, Opts, ?CONNECT_TIMEOUT)
    catch _:Reason -> {error, Reason}
    end.

%% The configuration: kernel env `edist_device` (a proplist or map), or the term in the file
%% given by `-edist_device_config FILE`. Keys: hubs ([{GatewayName, Host, Port}]), certs_dir
%% (default for the three files: DIR/NODE.pem, DIR/NODE.key, DIR/ca.pem), certfile, keyfile,
%% cacertfile, backoff_max_ms.
conf(Node) ->
    Env = case application:get_env(kernel, edist_device) of
              {ok, E} -> to_map(E);
              undefined -> #{}
          end,
    File = case init:get_argument(edist_device_config) of
               {ok, [[Path | _] | _]} ->
                   case file:consult(Path) of
                       {ok, [T | _]} -> to_map(T);
                       Error -> logger:error("edist_device: ~s: ~p", [Path, Error]), #{}
                   end;
               _ -> #{}
           end,
    Conf = maps:merge(File, Env),
    Dir = to_list(maps:get(certs_dir, Conf, ".")),
    Defaults = #{certfile => filename:join(Dir, Node ++ ".pem"),
                 keyfile => filename:join(Dir, Node ++ ".key"),
                 cacertfile => filename:join(Dir, "ca.pem")},
    maps:merge(Defaults, Conf).

to_map(M) when is_map(M) -> M;
to_map(L) when is_list(L) -> maps:from_list(L).

%% ssl is started by the release, or here once kernel and stdlib run (never from inside
%% kernel's own start: the application controller would wait for itself).
ensure_ssl() ->
    Running = try application:which_applications(1000) catch _:_ -> [] end,
    case lists:keymember(ssl, 1, Running) of
        true -> true;
        false ->
            case lists:keymember(kernel, 1, Running) andalso lists:keymember(stdlib, 1, Running) of
                true ->
                    case application:ensure_all_started(ssl) of
                        {ok, _} -> true;
                        _ -> false
                    end;
                false -> false
            end
    end.

hub_name(undefined) -> "none";
hub_name({Sni, Host, Port}) -> io_lib:format("~s (~s:~p)", [to_list(Sni), host_text(Host), Port]).

host_text(H) when is_tuple(H) -> inet:ntoa(H);
host_text(H) -> to_list(H).

to_host(H) when is_tuple(H) -> H;
to_host(H) -> to_list(H).

host_part() ->
    [_, H] = string:split(atom_to_list(node()), "@"),
    H.

now_ms() -> erlang:monotonic_time(millisecond).

to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) when is_list(L) -> L.
