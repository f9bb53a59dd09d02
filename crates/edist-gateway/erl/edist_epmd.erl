%% edist_epmd: the `-epmd_module' that sends a stock OTP (25+) node's discovery to the local
%% edist gateway instead of epmd.
%%
%%   erl -epmd_module edist_epmd -start_epmd false -pa DIR [-edist_gateway HOST:PORT] ...
%%
%% The gateway's local control port (default 127.0.0.1:4370) speaks the EPMD wire protocol,
%% with one edist-specific meaning: PORT_PLEASE2_REQ carries the FULL node name ("b@hostB")
%% and the answer is the loopback port where that node, or the gateway impersonating it,
%% accepts distribution connections.
%%
%% * register_node/2,3: ALIVE2_REQ over a connection that stays open for the node's lifetime
%%   (owned by the `edist_epmd' process); closing it unregisters the node. When the gateway
%%   closes it, the process re-registers every 2 s, like erl_epmd does with epmd. The name sent
%%   is the FULL node name ("b@10.0.0.2", "b@host.example.com", "b@hostA"): OTP hands
%%   register_node/3 only the alive part, but calls listen_port_please(Name, Host) just before
%%   it with the host part net_kernel settled on (-name, -sname, or net_kernel:start/2), so the
%%   plug keeps that host. Nodes that do not listen (-dist_listen false, dynamic names) never
%%   register: the gateway learns them from their first outgoing handshake.
%% * After the registration answer the connection carries `{packet, 4}' frames of terms both
%%   ways: the plug says `{edist_plug, 1, NetTicktime}' and `{net_ticktime, T}' whenever the
%%   node's ticktime changes (net_kernel:set_net_ticktime/1), so the gateway judges the node's
%%   liveness by its real ticktime; the gateway says `{hold, Pid}' / `{release, Pid}': a process
%%   that sends more than its lane can carry soon is suspended (erlang:suspend_process/2,
%%   asynchronous) until its lane drained — only that process, not every sender to the node as
%%   OTP's busy_dist_port would. System processes are never held, and everything held is
%%   resumed when the connection closes (and by the runtime if this process dies).
%% * address_please/3: PORT_PLEASE2_REQ "Name@Host" on a fresh connection, short timeouts,
%%   answers {ok, Loopback, Port, 6} so that port_please is never called.
%% * names/0,1: NAMES_REQ.
%%
%% This module runs very early in boot: it uses only gen_tcp/inet, gen_server and plain term
%% handling (no `file').
-module(edist_epmd).
-behaviour(gen_server).

-export([start_link/0, register_node/2, register_node/3, listen_port_please/2,
         address_please/3, port_please/2, port_please/3, names/0, names/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, code_change/3]).
-export([held/0]).

-define(DEFAULT_GATEWAY, "127.0.0.1:4370").
%% Registration: connect and answer timeouts.
-define(REG_TIMEOUT, 2000).
%% Look-ups (address_please, port_please, names): whole exchange.
-define(LOOKUP_TIMEOUT, 1000).
%% Re-registration period after the gateway closed the registration socket.
-define(RETRY_MS, 2000).
%% Largest NAMES answer accepted.
-define(MAX_NAMES_BYTES, 1048576).
%% Send buffer of the distribution sockets (to the gateway, on loopback).
-define(DIST_SNDBUF, 131072).
%% Receive buffer of the distribution sockets: fixed, so the kernel's autotuning (up to
%% tcp_rmem's maximum, 32 MiB on some hosts) does not let a frozen node take tens of MiB
%% before its gateway sees that it stopped reading.
-define(DIST_RECBUF, 262144).
-define(ALIVE2_REQ, $x).
-define(ALIVE2_X_RESP, $v).
-define(ALIVE2_RESP, $y).
-define(PORT_PLEASE2_REQ, $z).
-define(PORT2_RESP, $w).
-define(NAMES_REQ, $n).

%% host: the host part given to listen_port_please/2, for the register_node call that follows.
-record(state, {socket = undefined, name, port, host,
                %% the ticktime last told to the gateway, and the processes held for it
                ticktime = undefined, held = #{}}).
%% How often the node's ticktime is looked at.
-define(TICKTIME_POLL_MS, 1000).
%% Registered processes never held, whatever the gateway says: the runtime's and OTP's own.
-define(NEVER_HOLD, [net_kernel, global_name_server, global_group, global_group_check, rex,
                     erl_epmd, edist_epmd, auth, code_server, init, application_controller,
                     kernel_sup, kernel_safe_sup, kernel_refc, user, user_drv, standard_error,
                     standard_error_sup, logger, logger_sup, logger_proxy, erts_code_purger,
                     file_server_2, inet_db, erl_signal_server, erl_prim_loader, pg,
                     socket_registry, timer_server, erpc, net_sup, erts_dirty_process_signal_handler,
                     erts_literal_area_collector, global_name_server_locker]).

%%% ---------------------------------------------------------------------------------------
%%% -epmd_module callbacks

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

register_node(Name, Port) ->
    register_node(Name, Port, inet_tcp).

register_node(Name, Port, _Driver) ->
    gen_server:call(?MODULE, {register, to_string(Name), Port}, infinity).

%% Called by inet_tcp_dist (and inet_tls_dist through it) in net_kernel's process right before
%% register_node/3, with the host part of the node name: the only place OTP tells an epmd module
%% the full name before the node is alive. Kept in the gen_server for register_node.
listen_port_please(_Name, Host) ->
    catch gen_server:call(?MODULE, {host, to_string(Host)}, ?REG_TIMEOUT),
    {ok, 0}.

address_please(Name, Host, Family) ->
    case lookup(full_name(Name, Host)) of
        {ok, Port} -> {ok, loopback(Family), Port, 6};
        error -> {error, nxdomain}
    end.

port_please(Name, Host) ->
    port_please(Name, Host, ?LOOKUP_TIMEOUT).

port_please(Name, Host, _Timeout) ->
    case lookup(full_name(Name, Host)) of
        {ok, Port} -> {port, Port, 6};
        error -> noport
    end.

names() ->
    names(local_host()).

names(Host) ->
    case is_local_host(Host) of
        true -> gateway_names();
        false -> {error, address}
    end.

%% The processes held for the gateway now.
held() ->
    gen_server:call(?MODULE, held).

%%% ---------------------------------------------------------------------------------------
%%% gen_server: owns the registration socket

init([]) ->
    %% Runs before net_kernel opens any distribution socket. Every distribution connection of
    %% a plugged node is a loopback one to its gateway: small kernel buffers keep what waits
    %% there (in order, in front of every small message) short, while the gateway's lanes hold
    %% the bulk. Options the user set are left alone.
    Bufs = [{sndbuf, ?DIST_SNDBUF}, {recbuf, ?DIST_RECBUF}],
    default_env(inet_dist_connect_options, Bufs),
    default_env(inet_dist_listen_options, Bufs),
    {ok, #state{}}.

default_env(Key, Value) ->
    case application:get_env(kernel, Key) of
        undefined -> application:set_env(kernel, Key, Value);
        {ok, _} -> ok
    end.

handle_call({host, Host}, _From, State) ->
    {reply, ok, State#state{host = Host}};
handle_call({register, Alive, Port}, _From, #state{socket = undefined, host = Host} = State) ->
    Name = registered_name(Alive, Host),
    case do_register(Name, Port) of
        {ok, Socket, Creation} ->
            {reply, {ok, Creation}, State#state{socket = Socket, name = Name, port = Port}};
        {error, duplicate_name} = Error ->
            {reply, Error, State};
        {error, Reason} ->
            log_unreachable(Reason),
            {reply, {error, {edist_gateway_unreachable, gateway_string(), Reason}}, State}
    end;
handle_call({register, _Name, _Port}, _From, State) ->
    {reply, {error, already_registered}, State};
handle_call(held, _From, #state{held = Held} = State) ->
    {reply, maps:keys(Held), State};
handle_call(_Request, _From, State) ->
    {reply, {error, badarg}, State}.

handle_cast(_Msg, State) ->
    {noreply, State}.

handle_info({tcp_closed, Socket}, #state{socket = Socket} = State) ->
    lost(State);
handle_info({tcp_error, Socket, _Reason}, #state{socket = Socket} = State) ->
    gen_tcp:close(Socket),
    lost(State);
handle_info({tcp, Socket, Data}, #state{socket = Socket} = State) ->
    case catch binary_to_term(Data, [safe]) of
        {hold, Pid} when is_pid(Pid) -> {noreply, hold(Pid, State)};
        {release, Pid} when is_pid(Pid) -> {noreply, release(Pid, State)};
        _ -> {noreply, State}
    end;
handle_info(check_ticktime, #state{socket = undefined} = State) ->
    {noreply, State};
handle_info(check_ticktime, State) ->
    %% Asked from another process: net_kernel may be calling this one (register_node).
    Me = self(),
    spawn(fun() -> Me ! {ticktime, catch net_kernel:get_net_ticktime()} end),
    erlang:send_after(?TICKTIME_POLL_MS, self(), check_ticktime),
    {noreply, State};
handle_info({ticktime, T0}, #state{socket = Socket, ticktime = Told} = State) ->
    case ticktime_seconds(T0) of
        T when is_integer(T), T =/= Told, Socket =/= undefined ->
            _ = gen_tcp:send(Socket, term_to_binary({net_ticktime, T})),
            {noreply, State#state{ticktime = T}};
        _ ->
            {noreply, State}
    end;
handle_info(reregister, #state{socket = undefined, name = Name, port = Port} = State)
  when Name =/= undefined ->
    case do_register(Name, Port) of
        {ok, Socket, _Creation} ->
            error_logger:info_msg("edist_epmd: registered ~ts again with the edist gateway at ~ts~n",
                                  [Name, gateway_string()]),
            {noreply, State#state{socket = Socket}};
        {error, _} ->
            erlang:send_after(?RETRY_MS, self(), reregister),
            {noreply, State}
    end;
handle_info(_Msg, State) ->
    {noreply, State}.

terminate(_Reason, #state{socket = undefined} = State) ->
    release_all(State),
    ok;
terminate(_Reason, #state{socket = Socket} = State) ->
    release_all(State),
    gen_tcp:close(Socket),
    ok.

code_change(_OldVsn, State, _Extra) ->
    {ok, State}.

%% The gateway's line after registration: {packet, 4} terms, and the plug's hello.
plug_line(Socket) ->
    T = case application:get_env(kernel, net_ticktime) of
            {ok, N} when is_integer(N), N > 0 -> N;
            _ -> 60
        end,
    case gen_tcp:send(Socket, term_to_binary({edist_plug, 1, T})) of
        ok ->
            erlang:send_after(?TICKTIME_POLL_MS, self(), check_ticktime),
            {ok, T};
        {error, _} = E ->
            E
    end.

ticktime_seconds(T) when is_integer(T), T > 0 -> T;
ticktime_seconds({ongoing_change_to, T}) when is_integer(T), T > 0 -> T;
ticktime_seconds(_) -> undefined.

hold(Pid, #state{held = Held} = State) ->
    case maps:is_key(Pid, Held) orelse not holdable(Pid) of
        true ->
            State;
        false ->
            case catch erlang:suspend_process(Pid, [asynchronous]) of
                true -> State#state{held = Held#{Pid => true}};
                _ -> State
            end
    end.

release(Pid, #state{held = Held} = State) ->
    case maps:take(Pid, Held) of
        {true, Rest} ->
            catch erlang:resume_process(Pid),
            State#state{held = Rest};
        error ->
            State
    end.

release_all(#state{held = Held} = State) ->
    _ = [catch erlang:resume_process(P) || P <- maps:keys(Held)],
    State#state{held = #{}}.

%% Only ordinary processes of this node: not the runtime's or OTP's own (by name), not a
%% distribution controller, not a process running at high or max priority.
holdable(Pid) when node(Pid) =:= node(), Pid =/= self() ->
    case erlang:process_info(Pid, [registered_name, priority]) of
        [{registered_name, Name}, {priority, Prio}] ->
            not lists:member(Name, ?NEVER_HOLD)
                andalso (Prio =:= normal orelse Prio =:= low)
                andalso not is_dist_controller(Pid);
        _ ->
            false
    end;
holdable(_) ->
    false.

is_dist_controller(Pid) ->
    case catch erlang:system_info(dist_ctrl) of
        L when is_list(L) -> lists:keymember(Pid, 2, L);
        _ -> true
    end.

lost(#state{name = Name} = State0) ->
    State = release_all(State0#state{ticktime = undefined}),
    error_logger:warning_msg("edist_epmd: the edist gateway at ~ts closed the registration of ~ts; "
                             "re-registering every ~b ms~n",
                             [gateway_string(), Name, ?RETRY_MS]),
    erlang:send_after(?RETRY_MS, self(), reregister),
    {noreply, State#state{socket = undefined}}.

log_unreachable(Reason) ->
    Line = io_lib:format("edist_epmd: cannot reach the edist gateway at ~ts: ~0p "
                         "(is `edist gateway` running?)~n",
                         [gateway_string(), Reason]),
    case boot_time_distribution() of
        true ->
            %% erl -sname/-name: net_kernel halts the VM right after this error, before the
            %% logger prints anything, so write straight to stderr.
            catch erlang:display_string(lists:flatten(Line)),
            ok;
        false ->
            error_logger:error_msg("~ts", [Line])
    end.

%% The name to register: the full node name when the host part is known (it always is with
%% inet_tcp_dist); else the alive part alone, which the gateway completes with its own host.
registered_name(Alive, Host) when is_list(Host), Host =/= "" ->
    case lists:member($@, Alive) of
        true -> Alive;
        false -> Alive ++ "@" ++ Host
    end;
registered_name(Alive, _) ->
    Alive.

%% Whether distribution is being started from the command line (net_kernel then halts the
%% node when registration fails) rather than by net_kernel:start/1 at run time.
boot_time_distribution() ->
    init:get_argument(sname) =/= error orelse init:get_argument(name) =/= error.

%%% ---------------------------------------------------------------------------------------
%%% Protocol

do_register(Name, Port) ->
    NameBin = unicode:characters_to_binary(Name),
    Req = <<?ALIVE2_REQ, Port:16, $M, 0, 6:16, 5:16,
            (byte_size(NameBin)):16, NameBin/binary, 0:16>>,
    case connect(?REG_TIMEOUT) of
        {ok, Socket} ->
            Deadline = deadline(?REG_TIMEOUT),
            Result = case gen_tcp:send(Socket, framed(Req)) of
                         ok -> read_alive_resp(Socket, Deadline);
                         {error, _} = E -> E
                     end,
            case Result of
                {ok, Creation} ->
                    case inet:setopts(Socket, [{active, true}, {packet, 4}]) of
                        ok ->
                            _ = plug_line(Socket),
                            {ok, Socket, Creation};
                        {error, _} = E2 ->
                            gen_tcp:close(Socket),
                            E2
                    end;
                {error, _} = E3 ->
                    gen_tcp:close(Socket),
                    E3
            end;
        {error, _} = E ->
            E
    end.

read_alive_resp(Socket, Deadline) ->
    case recv_exactly(Socket, 2, Deadline) of
        {ok, <<?ALIVE2_X_RESP, 0>>} ->
            case recv_exactly(Socket, 4, Deadline) of
                {ok, <<Creation:32>>} -> {ok, Creation};
                {error, _} = E -> E
            end;
        {ok, <<?ALIVE2_RESP, 0>>} ->
            case recv_exactly(Socket, 2, Deadline) of
                {ok, <<Creation:16>>} -> {ok, Creation};
                {error, _} = E -> E
            end;
        {ok, <<Tag, _Result>>} when Tag =:= ?ALIVE2_X_RESP; Tag =:= ?ALIVE2_RESP ->
            {error, duplicate_name};
        {ok, Other} ->
            {error, {bad_answer_from_gateway, Other}};
        {error, closed} ->
            {error, closed_by_gateway};
        {error, _} = E ->
            E
    end.

%% {ok, Port} | error
lookup(FullName) ->
    Bin = unicode:characters_to_binary(FullName),
    case is_binary(Bin) andalso Bin =/= <<>> andalso byte_size(Bin) < 1021 of
        true -> lookup_bin(Bin);
        false -> error
    end.

lookup_bin(Bin) ->
    Deadline = deadline(?LOOKUP_TIMEOUT),
    case connect(?LOOKUP_TIMEOUT) of
        {ok, Socket} ->
            Result = case gen_tcp:send(Socket, framed(<<?PORT_PLEASE2_REQ, Bin/binary>>)) of
                         ok ->
                             case recv_exactly(Socket, 2, Deadline) of
                                 {ok, <<?PORT2_RESP, 0>>} ->
                                     case recv_exactly(Socket, 2, Deadline) of
                                         {ok, <<Port:16>>} when Port > 0 -> {ok, Port};
                                         _ -> error
                                     end;
                                 _ ->
                                     error
                             end;
                         {error, _} ->
                             error
                     end,
            gen_tcp:close(Socket),
            Result;
        {error, _} ->
            error
    end.

gateway_names() ->
    Deadline = deadline(?LOOKUP_TIMEOUT),
    case connect(?LOOKUP_TIMEOUT) of
        {ok, Socket} ->
            Result = case gen_tcp:send(Socket, framed(<<?NAMES_REQ>>)) of
                         ok -> recv_all(Socket, Deadline, []);
                         {error, _} -> {error, address}
                     end,
            gen_tcp:close(Socket),
            case Result of
                {ok, <<_GatewayPort:32, Text/binary>>} -> {ok, parse_names(Text)};
                _ -> {error, address}
            end;
        {error, _} ->
            {error, address}
    end.

parse_names(Text) ->
    Lines = binary:split(Text, <<"\n">>, [global, trim_all]),
    lists:foldr(fun(Line, Acc) ->
                        case parse_names_line(Line) of
                            {ok, Entry} -> [Entry | Acc];
                            error -> Acc
                        end
                end, [], Lines).

parse_names_line(<<"name ", Rest/binary>>) ->
    case binary:matches(Rest, <<" at port ">>) of
        [] ->
            error;
        Matches ->
            {Pos, Len} = lists:last(Matches),
            Name = binary:part(Rest, 0, Pos),
            PortBin = binary:part(Rest, Pos + Len, byte_size(Rest) - Pos - Len),
            case catch binary_to_integer(PortBin) of
                Port when is_integer(Port), Port > 0, Port < 65536 ->
                    case unicode:characters_to_list(Name) of
                        NameStr when is_list(NameStr) -> {ok, {NameStr, Port}};
                        _ -> {ok, {binary_to_list(Name), Port}}
                    end;
                _ ->
                    error
            end
    end;
parse_names_line(_) ->
    error.

%%% ---------------------------------------------------------------------------------------
%%% Sockets

framed(Bin) ->
    [<<(byte_size(Bin)):16>>, Bin].

connect(Timeout) ->
    case gateway() of
        {ok, Host, Port} ->
            Family = case Host of
                         {_, _, _, _, _, _, _, _} -> [inet6];
                         _ -> []
                     end,
            gen_tcp:connect(Host, Port,
                            Family ++ [binary, {active, false}, {packet, raw}, {nodelay, true}],
                            Timeout);
        {error, _} = E ->
            E
    end.

deadline(Ms) ->
    erlang:monotonic_time(millisecond) + Ms.

remaining(Deadline) ->
    max(0, Deadline - erlang:monotonic_time(millisecond)).

recv_exactly(Socket, N, Deadline) ->
    gen_tcp:recv(Socket, N, remaining(Deadline)).

recv_all(Socket, Deadline, Acc) ->
    case gen_tcp:recv(Socket, 0, remaining(Deadline)) of
        {ok, Data} ->
            Acc1 = [Data | Acc],
            case iolist_size(Acc1) > ?MAX_NAMES_BYTES of
                true -> {error, too_large};
                false -> recv_all(Socket, Deadline, Acc1)
            end;
        {error, closed} ->
            {ok, iolist_to_binary(lists:reverse(Acc))};
        {error, _} = E ->
            E
    end.

%%% ---------------------------------------------------------------------------------------
%%% Names and addresses

%% The gateway address: -edist_gateway HOST:PORT (also [IPv6]:PORT), default 127.0.0.1:4370.
gateway() ->
    parse_gateway(gateway_string()).

gateway_string() ->
    case init:get_argument(edist_gateway) of
        {ok, [[Arg | _] | _]} -> Arg;
        _ -> ?DEFAULT_GATEWAY
    end.

parse_gateway(Str) ->
    Split = case Str of
                "[" ++ Rest ->
                    case string:split(Rest, "]:") of
                        [H, P] -> {H, P};
                        _ -> error
                    end;
                _ ->
                    case string:split(Str, ":", trailing) of
                        [H, P] -> {H, P};
                        _ -> error
                    end
            end,
    case Split of
        {HostStr, PortStr} when HostStr =/= "" ->
            case catch list_to_integer(PortStr) of
                Port when is_integer(Port), Port > 0, Port < 65536 ->
                    case inet:parse_address(HostStr) of
                        {ok, Ip} -> {ok, Ip, Port};
                        {error, _} -> {ok, HostStr, Port}
                    end;
                _ ->
                    {error, {bad_edist_gateway_argument, Str}}
            end;
        _ ->
            {error, {bad_edist_gateway_argument, Str}}
    end.

%% Where the gateway (or the node) accepts distribution connections for the given family.
loopback(inet6) -> {0, 0, 0, 0, 0, 16#ffff, 16#7f00, 1};
loopback(_) -> {127, 0, 0, 1}.

%% "Name@Host". Name may already be a full name. An IP address as Host (port_please/2 after an
%% address_please that returned only an address: never happens with this module) stands for
%% this host.
full_name(Name, Host) ->
    NameStr = to_string(Name),
    case lists:member($@, NameStr) of
        true -> NameStr;
        false -> NameStr ++ "@" ++ host_string(Host)
    end.

host_string(Host) when is_tuple(Host) -> local_host();
host_string(Host) -> to_string(Host).

local_host() ->
    case atom_to_list(node()) of
        "nonode@nohost" ->
            case inet:gethostname() of
                {ok, H} -> H;
                _ -> "localhost"
            end;
        Node ->
            case string:split(Node, "@") of
                [_, H] -> H;
                _ -> "localhost"
            end
    end.

is_local_host(Host) when is_tuple(Host) ->
    case Host of
        {127, _, _, _} -> true;
        {0, 0, 0, 0, 0, 0, 0, 1} -> true;
        {0, 0, 0, 0, 0, 16#ffff, 16#7f00, 1} -> true;
        _ -> false
    end;
is_local_host(Host) ->
    H = string:lowercase(to_string(Host)),
    case inet:parse_address(H) of
        {ok, Ip} ->
            is_local_host(Ip);
        {error, _} ->
            Mine = [local_host(), "localhost"
                    | case inet:gethostname() of
                          {ok, G} -> [G];
                          _ -> []
                      end],
            Short = fun(S) -> hd(string:split(S, ".")) end,
            lists:any(fun(M) ->
                              L = string:lowercase(M),
                              L =:= H orelse Short(L) =:= Short(H)
                      end, Mine)
    end.

to_string(A) when is_atom(A) -> atom_to_list(A);
to_string(B) when is_binary(B) -> unicode:characters_to_list(B);
to_string(L) when is_list(L) -> L.
