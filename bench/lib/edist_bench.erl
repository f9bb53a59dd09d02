%% edist_bench: the workload of `bench/run', the same code for plain OTP distribution, OTP TLS
%% distribution and edist.
%%
%% Node b (the far host) runs `edist_bench:serve()': a registered echo process (`bench_echo')
%% and a control process (`bench_ctl') that spawns counting sinks and byte samplers on request.
%% Node a runs `edist_bench:run(Scenario, BNode, OutFile, Opts)': it connects to b, warms up,
%% runs the scenario's phases, writes a JSON summary to OutFile and halts (status 0, or 1 on
%% error).
%%
%% Measurements:
%%   * ping RTT (on a): a process sends {ping, self(), T0} to {bench_echo, B}, waits for the
%%     pong, records now - T0 (microseconds), then waits for the next tick of its interval (a
%%     late pong skips the missed ticks; pings never overlap). T0 is taken before the send, so
%%     time the pinger spends suspended on a busy distribution channel counts. In loaded phases
%%     the pinger runs until the phase ends; a ping still unanswered then is counted with its
%%     age at that moment (a lower bound, reported as `censored').
%%   * delivered throughput (on a): each sender has its own sink on b; it sends {data, Bin}
%%     (the same random binary again and again) until the phase's deadline, then
%%     {sync, self(), Ref}; the sink answers with the bytes and messages it received.
%%     Rate = delivered payload / (time of the last sink's answer - phase start): whole
%%     messages that arrived, queues drained.
%%   * window goodput (hol, lossy): a sampler on b reads every 100 ms the bytes received on b's
%%     distribution socket from a (`recv_oct'; for edist the loopback socket from b's gateway)
%%     and sends them to a over the b -> a direction, which carries no bulk. Goodput = bytes
%%     received between phase start and deadline / duration. Both namespaces share one clock
%%     (os:system_time), so b's timestamps compare with a's.
%%   * `drain => false' (lossy): the phase ends at its deadline without waiting for the queues:
%%     senders are killed and a disconnects from b (dropping whatever is still queued), then
%%     reconnects for the next phase. Only the window goodput is reported then.
%%
%% MB means 10^6 bytes; message sizes are binary sizes (1 MB message = 1 MiB binary).
-module(edist_bench).

-export([serve/0, run/4]).
-export([any_host/2]).

-define(MIB, 1048576).
-define(SAMPLE_MS, 100).

%%% ---------------------------------------------------------------------------------------
%%% Node b

serve() ->
    register(bench_echo, spawn(fun echo/0)),
    register(bench_ctl, spawn(fun ctl/0)),
    io:format("bench: serving on ~s~n", [node()]),
    ok.

echo() ->
    receive
        {ping, From, T} -> From ! {pong, T};
        _ -> ok
    end,
    echo().

ctl() ->
    receive
        {new_sink, From, Ref} ->
            From ! {sink, Ref, spawn(fun() -> erlang:monitor_node(node(From), true), sink(0, 0) end)};
        {watch_recv, From, Ref} ->
            spawn(fun() -> erlang:monitor_node(node(From), true), sampler(From, Ref, 6000) end);
        _ -> ok
    end,
    ctl().

sink(Bytes, Msgs) ->
    receive
        {data, Bin} -> sink(Bytes + byte_size(Bin), Msgs + 1);
        {data, From, Bin} -> From ! {ack, self()}, sink(Bytes + byte_size(Bin), Msgs + 1);
        {sync, From, Ref} -> From ! {synced, Ref, Bytes, Msgs};
        {nodedown, _} -> ok
    end.

%% Reports {recv_oct, Ref, SystemMicros, Bytes} every SAMPLE_MS until told to stop, until a's
%% node goes down, or after Left samples (10 minutes).
sampler(From, Ref, Left) ->
    From ! {sampler, Ref, self()},
    sample_loop(From, Ref, Left).

sample_loop(_From, _Ref, 0) -> ok;
sample_loop(From, Ref, Left) ->
    From ! {recv_oct, Ref, os:system_time(microsecond), dist_recv_oct(node(From))},
    receive
        {stop, Ref} -> ok;
        {nodedown, _} -> ok
    after ?SAMPLE_MS -> sample_loop(From, Ref, Left - 1)
    end.

%% Bytes received so far on the distribution connection from Node: its port for TCP (plain OTP,
%% and edist's loopback connection from the gateway), the TCP port behind the TLS connection's
%% processes for inet_tls. -1 when not found.
dist_recv_oct(Node) ->
    case dist_socket(Node) of
        undefined -> -1;
        Port -> recv_oct(Port)
    end.

%% The TCP socket (port) of the distribution connection to Node: the controller itself for TCP,
%% for TLS the socket whose peer is the address net_kernel has for Node.
dist_socket(Node) ->
    case lists:keyfind(Node, 1, erlang:system_info(dist_ctrl)) of
        {_, Port} when is_port(Port) -> Port;
        {_, Pid} when is_pid(Pid) ->
            Peer = case net_kernel:node_info(Node) of
                       {ok, Info} -> element(2, proplists:get_value(address, Info));
                       _ -> undefined
                   end,
            case [P || P <- erlang:ports(), erlang:port_info(P, name) =:= {name, "tcp_inet"},
                       inet:peername(P) =:= {ok, Peer}] of
                [Port | _] -> Port;
                [] -> undefined
            end;
        false -> undefined
    end.

%% TCP_CONGESTION of a socket (getsockopt IPPROTO_TCP 6, option 13).
tcp_cc(undefined) -> unknown;
tcp_cc(Port) ->
    case inet:getopts(Port, [{raw, 6, 13, 16}]) of
        {ok, [{raw, 6, 13, Bin}]} -> hd(binary:split(Bin, <<0>>));
        _ -> unknown
    end.

recv_oct(Port) ->
    case inet:getstat(Port, [recv_oct]) of
        {ok, [{recv_oct, N}]} -> N;
        _ -> -1
    end.

%%% ---------------------------------------------------------------------------------------
%%% Node a

%% Opts: #{duration_ms, ping_interval_ms, phase_cap_ms, watch => [{Name, OsPid}]}.
run(Scenario, B, OutFile, Opts) ->
    put(bench_opts, Opts),
    Res = try
              T0 = now_us(),
              connect(B, maps:get(connect_timeout_ms, Opts, 60000)),
              ConnectUs = now_us() - T0,
              Dist = dist_info(B),
              warmup(B),
              R = scenario(Scenario, B, Opts),
              #{ok => true, scenario => Scenario, node => node(), peer => B, dist => Dist,
                connect_us => ConnectUs, results => R}
          catch C:E:St ->
                  Msg = io_lib:format("~p:~p~n~p", [C, E, St]),
                  io:format(standard_error, "bench: ~s~n", [Msg]),
                  #{ok => false, scenario => Scenario, error => unicode:characters_to_binary(Msg)}
          end,
    ok = file:write_file(OutFile, json(Res)),
    erlang:halt(case Res of #{ok := true} -> 0; _ -> 1 end).

connect(B, TimeoutMs) ->
    Deadline = now_us() + TimeoutMs * 1000,
    connect_loop(B, Deadline).

connect_loop(B, Deadline) ->
    case net_adm:ping(B) of
        pong -> ok;
        pang ->
            case now_us() > Deadline of
                true -> error({cannot_connect, B});
                false -> timer:sleep(200), connect_loop(B, Deadline)
            end
    end.

%% How a reaches b: the transport of the connection (tcp or tls) and the address it goes to.
dist_info(B) ->
    Ctrl = proplists:get_value(B, erlang:system_info(dist_ctrl)),
    {ok, Info} = net_kernel:node_info(B),
    Addr = proplists:get_value(address, Info),
    %% #net_address{address, host, protocol, family}
    {Ip, Port} = case element(2, Addr) of
                     {I, P} -> {I, P};
                     Other -> {Other, 0}
                 end,
    #{protocol => element(4, Addr),
      address => unicode:characters_to_binary(io_lib:format("~s:~p", [fmt_ip(Ip), Port])),
      controller => if is_port(Ctrl) -> port; is_pid(Ctrl) -> process; true -> unknown end,
      proto_dist => case init:get_argument(proto_dist) of
                        {ok, [[D | _] | _]} -> list_to_binary(D);
                        _ -> <<"inet_tcp">>
                    end,
      epmd_module => net_kernel:epmd_module(),
      tcp_congestion_control => tcp_cc(dist_socket(B)),
      otp_release => list_to_binary(erlang:system_info(otp_release))}.

fmt_ip(Ip) when is_tuple(Ip) -> inet:ntoa(Ip);
fmt_ip(Other) -> io_lib:format("~p", [Other]).

warmup(B) ->
    _ = [ping_once({bench_echo, B}) || _ <- lists:seq(1, 50)],
    Sink = new_sink(B),
    Bin = crypto:strong_rand_bytes(?MIB),
    Sink ! {data, Bin},
    Ref = make_ref(),
    Sink ! {sync, self(), Ref},
    receive {synced, Ref, _, _} -> ok after 120000 -> error(warmup_timeout) end.

%%% ---------------------------------------------------------------------------------------
%%% Scenarios

scenario(latency, B, Opts) ->
    D = maps:get(duration_ms, Opts, 5000),
    I = maps:get(ping_interval_ms, Opts, 1),
    #{idle => phase(B, #{senders => 0, size => 0, duration_ms => D, ping_interval_ms => I})};
scenario(throughput, B, Opts) ->
    D = maps:get(duration_ms, Opts, 5000),
    #{bulk_1mb => phase(B, #{senders => 1, size => ?MIB, duration_ms => D, ping_interval_ms => none}),
      small_100b => phase(B, #{senders => 4, size => 100, duration_ms => D, ping_interval_ms => none})};
scenario(S, B, Opts) when S =:= hol; S =:= lossy ->
    D = maps:get(duration_ms, Opts, 10000),
    I = maps:get(ping_interval_ms, Opts, 5),
    N = maps:get(senders, Opts, 2),
    P = fun(Senders, Size) -> phase(B, #{senders => Senders, size => Size, duration_ms => D, ping_interval_ms => I,
                                          sample_recv => true, drain => S =:= hol}) end,
    %% In this order: the 8 MB phase first, as in DESIGN.md.
    R8 = P(N, 8 * ?MIB),
    R64 = P(N, 64 * 1024),
    case S of
        hol ->
            %% Four senders of 1 MiB: more senders than bulk sizes, in between.
            R1 = P(4, ?MIB),
            %% Senders that wait for an ack per message (as gen_server:call users do): at most
            %% one message per sender in flight, so no buffer anywhere fills up for good.
            RA = phase(B, #{senders => N, size => 8 * ?MIB, duration_ms => D, ping_interval_ms => I,
                            sample_recv => true, acked => true}),
            #{bulk_8mb => R8, bulk_64kb => R64, bulk_1mib_x4 => R1, acked_8mb => RA};
        lossy ->
            #{bulk_8mb => R8, bulk_64kb => R64}
    end.

%% One measured phase: Senders processes sending Size-byte binaries to their own sinks on B for
%% duration_ms, and (unless ping_interval_ms is none) a pinger. With no senders, the pinger runs
%% for duration_ms alone.
phase(B, P0) ->
    P = maps:merge(maps:with([watch, phase_cap_ms], get(bench_opts)), P0),
    #{senders := N, size := Size, duration_ms := D, ping_interval_ms := I} = P,
    Drain = maps:get(drain, P, true),
    Cap = maps:get(phase_cap_ms, P, 120000),
    io:format("bench: phase: ~p senders x ~p bytes for ~p ms, ping every ~p ms~s~n",
              [N, Size, D, I, case Drain of true -> ""; false -> ", no drain" end]),
    Bin = crypto:strong_rand_bytes(max(Size, 1)),
    Sinks = [new_sink(B) || _ <- lists:seq(1, N)],
    Sampler = case maps:get(sample_recv, P, false) of
                  true -> start_sampler(B);
                  false -> none
              end,
    Parent = self(),
    erlang:garbage_collect(),
    Watch = [{a, self} | maps:get(watch, P, [])],
    Cpu0 = cpu_ms(Watch),
    Sys0 = os:system_time(microsecond),
    T0 = now_us(),
    Deadline = T0 + D * 1000,
    Pinger = case I of
                 none -> none;
                 _ ->
                     Tab = ets:new(bench_pings, [set, public]),
                     ets:insert(Tab, {pending, none}),
                     {spawn_link(fun() ->
                                         pinger({bench_echo, B}, I * 1000, Deadline, N =:= 0, Tab),
                                         Parent ! {pinger_done, self()}
                                 end), Tab}
             end,
    Acked = maps:get(acked, P, false),
    Ws = [spawn_link(fun() -> Parent ! {sent, self(), sender(S, Bin, Deadline, Size >= 65536, Acked)} end)
          || S <- Sinks],
    Sent = case Drain of
               true ->
                   CapAt = T0 + (D + Cap) * 1000,
                   [receive {sent, W, R} -> R
                    after max(0, (CapAt - now_us()) div 1000) -> error({phase_cap_exceeded, Cap})
                    end || W <- Ws];
               false ->
                   timer:sleep(max(0, (Deadline - now_us()) div 1000)),
                   none
           end,
    Rtts = case Pinger of
               none -> [];
               {PPid, PTab} ->
                   %% Alone, the pinger stops at the deadline by itself; else it is stopped now
                   %% (perhaps suspended in a send to a busy channel) and its last ping, if
                   %% unanswered, counts with its age.
                   case N of
                       0 -> receive {pinger_done, PPid} -> ok after (D + 130000) -> error(pinger_timeout) end;
                       _ -> ok
                   end,
                   ping_samples(PPid, PTab)
           end,
    Recv = case Sampler of
               none -> #{};
               _ -> window_goodput(Sampler, Sys0, Sys0 + D * 1000)
           end,
    T1 = now_us(),
    Cpu1 = cpu_ms(Watch),
    case Drain of
        true -> stop_sampler(B, Sampler);
        false -> disconnect(B, Ws)
    end,
    Base = #{senders => N, size => Size, duration_ms => D, ping_interval_ms => I, drain => Drain,
             wall_s => (T1 - T0) / 1.0e6,
             cpu_ms => maps:from_list([{K, V1 - V0} || {{K, V1}, {K, V0}} <- lists:zip(Cpu1, Cpu0),
                                                       V1 >= 0, V0 >= 0])},
    Bulk = case Sent of
               none -> #{};
               [] -> #{};
               _ ->
                   Bytes = lists:sum([By || {By, _, _, _} <- Sent]),
                   Msgs = lists:sum([M || {_, M, _, _} <- Sent]),
                   Queued = lists:sum([Q || {_, _, Q, _} <- Sent]),
                   Tend = lists:max([Te || {_, _, _, Te} <- Sent]),
                   Secs = (Tend - T0) / 1.0e6,
                   #{bytes => Bytes, msgs => Msgs, sent_msgs => Queued, secs => Secs,
                     mb_s => Bytes / 1.0e6 / Secs, msgs_s => Msgs / Secs,
                     drain_s => (Tend - Deadline) / 1.0e6}
           end,
    Ping = case Pinger of
               none -> #{};
               _ -> #{rtt_us => summary(Rtts)}
           end,
    maps:merge(maps:merge(Base, Bulk), maps:merge(Recv, Ping)).

new_sink(B) ->
    Ref = make_ref(),
    {bench_ctl, B} ! {new_sink, self(), Ref},
    receive {sink, Ref, Pid} -> Pid after 30000 -> error(no_sink) end.

start_sampler(B) ->
    Ref = make_ref(),
    {bench_ctl, B} ! {watch_recv, self(), Ref},
    Pid = receive {sampler, Ref, P} -> P after 30000 -> error(no_sampler) end,
    receive
        {recv_oct, Ref, T, N} when N >= 0 -> {Ref, Pid, {T, N}};
        {recv_oct, Ref, _, _} -> error(cannot_read_recv_oct_on_b)
    after 30000 -> error(no_sampler)
    end.

%% (Without this, it stops on a's nodedown or after 10 minutes.)
stop_sampler(_B, none) -> ok;
stop_sampler(_B, {Ref, Pid, _}) ->
    Pid ! {stop, Ref},
    flush_samples(Ref).

flush_samples(Ref) ->
    receive {recv_oct, Ref, _, _} -> flush_samples(Ref) after 0 -> ok end.

%% Bytes b received between system times From and To (linear between the 100 ms samples),
%% waiting up to 5 s for a sample at or after To.
window_goodput({Ref, _, First}, From, To) ->
    Samples = collect_samples(Ref, To, now_us() + 5000000, [First]),
    case bytes_at(From, Samples) of
        undefined -> #{window_error => <<"no byte samples around the phase start">>};
        B0 ->
            case bytes_at(To, Samples) of
                undefined -> #{window_error => <<"no byte sample after the deadline within 5 s">>};
                B1 ->
                    Secs = (To - From) / 1.0e6,
                    #{window_bytes => B1 - B0, window_s => Secs, window_mb_s => (B1 - B0) / 1.0e6 / Secs,
                      byte_samples => length(Samples)}
            end
    end.

collect_samples(Ref, To, Until, Acc) ->
    Done = case Acc of
               [{T, _} | _] -> T >= To;
               [] -> false
           end,
    Wait = case Done of
               true -> 0;
               false -> max(0, (Until - now_us()) div 1000)
           end,
    receive
        {recv_oct, Ref, T1, N} when N >= 0 -> collect_samples(Ref, To, Until, [{T1, N} | Acc])
    after Wait -> lists:reverse(Acc)
    end.

bytes_at(T, Samples) ->
    case {[S || {Ts, _} = S <- Samples, Ts =< T], [S || {Ts, _} = S <- Samples, Ts >= T]} of
        {[], _} -> undefined;
        {_, []} -> undefined;
        {Before, [{T2, N2} | _]} ->
            {T1, N1} = lists:last(Before),
            case T2 =:= T1 of
                true -> N1;
                false -> N1 + (N2 - N1) * (T - T1) / (T2 - T1)
            end
    end.

%% Ends a no-drain phase: kills the senders (blocked on a busy channel, perhaps), drops the
%% connection with whatever is still queued in it, and connects again.
disconnect(B, Ws) ->
    [begin unlink(W), exit(W, kill) end || W <- Ws],
    erlang:monitor_node(B, true),
    erlang:disconnect_node(B),
    receive {nodedown, B} -> ok after 10000 -> ok end,
    erlang:monitor_node(B, false),
    flush_all(),
    timer:sleep(500),
    connect(B, 60000),
    _ = [ping_once({bench_echo, B}) || _ <- lists:seq(1, 5)],
    ok.

flush_all() ->
    receive _ -> flush_all() after 0 -> ok end.

%% Sends until the deadline (checking the clock every message for large binaries, every 64 for
%% small ones), then syncs with the sink: {BytesReceived, MsgsReceived, MsgsSent, TimeSynced}.
sender(Sink, Bin, Deadline, Big, Acked) ->
    Sent = case Acked of
               true -> acked_loop(Sink, Bin, Deadline, 0);
               false -> send_loop(Sink, {data, Bin}, Deadline, case Big of true -> 1; false -> 64 end, 0)
           end,
    Ref = make_ref(),
    Sink ! {sync, self(), Ref},
    receive
        {synced, Ref, Bytes, Msgs} -> {Bytes, Msgs, Sent, now_us()}
    end.

acked_loop(Sink, Bin, Deadline, N) ->
    case now_us() >= Deadline of
        true -> N;
        false ->
            Sink ! {data, self(), Bin},
            receive {ack, Sink} -> ok end,
            acked_loop(Sink, Bin, Deadline, N + 1)
    end.

send_loop(Sink, Msg, Deadline, Every, N) ->
    case N rem Every =:= 0 andalso now_us() >= Deadline of
        true -> N;
        false ->
            Sink ! Msg,
            send_loop(Sink, Msg, Deadline, Every, N + 1)
    end.

%% Pings every Interval µs, until Deadline when alone, else until killed. Samples go to the
%% public table Tab as they come ({{rtt, Seq}, Micros}), with {pending, T0 | none}: the parent
%% reads them even while this process is suspended in a send to a busy channel.
pinger(Echo, Interval, Deadline, Alone, Tab) ->
    ping_loop(Echo, Interval, Deadline, not Alone, Tab, 0).

ping_loop(Echo, Interval, Deadline, UntilKilled, Tab, Seq) ->
    case not UntilKilled andalso now_us() >= Deadline of
        true -> ok;
        false ->
            T0 = now_us(),
            ets:insert(Tab, {pending, T0}),
            Echo ! {ping, self(), T0},
            receive
                {pong, T0} ->
                    Rtt = now_us() - T0,
                    ets:insert(Tab, [{{rtt, Seq}, Rtt}, {pending, none}]),
                    Wait = T0 + Interval - now_us(),
                    Wait > 0 andalso timer:sleep((Wait + 999) div 1000),
                    ping_loop(Echo, Interval, Deadline, UntilKilled, Tab, Seq + 1)
            after 600000 -> error(ping_timeout)
            end
    end.

%% Stops the pinger; its samples, with {censored, Age} for a ping unanswered now.
ping_samples(Pid, Tab) ->
    Now = now_us(),
    unlink(Pid),
    exit(Pid, kill),
    Rtts = [R || {{rtt, _}, R} <- ets:tab2list(Tab)],
    Pending = case ets:lookup(Tab, pending) of
                  [{pending, T0}] when is_integer(T0) -> [{censored, Now - T0}];
                  _ -> []
              end,
    ets:delete(Tab),
    Pending ++ Rtts.

ping_once(Echo) ->
    T0 = now_us(),
    Echo ! {ping, self(), T0},
    receive
        {pong, T0} -> now_us() - T0
    after 120000 -> error(ping_timeout)
    end.

%%% ---------------------------------------------------------------------------------------
%%% Helpers

%% OTP TLS distribution: the client checks the server certificate's name against the host part
%% of the node name (an IP address here), while the cluster certificates name gateways. The
%% chain is still verified against the cluster CA, both ways (verify_peer,
%% fail_if_no_peer_cert); only the name match is relaxed, by this ssl match_fun.
any_host(_ReferenceId, _PresentedId) -> true.

%% CPU time (user + system, ms) of each watched OS process: [{Name, Pid | self}] -> [{Name, Ms}]
%% (-1 when it cannot be read). All the bench's namespaces share one /proc.
cpu_ms(Watch) ->
    [{Name, proc_cpu_ms(Pid)} || {Name, Pid} <- Watch].

proc_cpu_ms(Pid) ->
    Path = case Pid of
               self -> "/proc/self/stat";
               _ -> "/proc/" ++ integer_to_list(Pid) ++ "/stat"
           end,
    try
        {ok, Stat} = file:read_file(Path),
        [_, Rest] = binary:split(Stat, <<") ">>),
        Fields = binary:split(Rest, <<" ">>, [global]),
        %% Fields 14 and 15 of stat(5) (utime, stime), in clock ticks of 10 ms.
        (binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields))) * 10
    catch _:_ -> -1
    end.

now_us() -> erlang:monotonic_time(microsecond).

%% n, censored, min, p50, p90, p99, p999, max, mean (nearest rank), in µs. A censored sample
%% counts with its age (a lower bound of its RTT).
summary([]) -> #{n => 0, censored => 0};
summary(Samples0) ->
    Censored = length([x || {censored, _} <- Samples0]),
    Samples = [case X of {censored, Age} -> Age; _ -> X end || X <- Samples0],
    S = list_to_tuple(lists:sort(Samples)),
    N = tuple_size(S),
    Pct = fun(P) -> element(max(1, min(N, ceil(P * N))), S) end,
    #{n => N, censored => Censored, min => element(1, S), p50 => Pct(0.5), p90 => Pct(0.9),
      p99 => Pct(0.99), p999 => Pct(0.999), max => element(N, S), mean => lists:sum(Samples) / N}.

%% A small JSON encoder: maps (keys sorted), lists, binaries as strings, atoms, numbers.
json(M) when is_map(M) ->
    Kvs = lists:sort([{key(K), V} || {K, V} <- maps:to_list(M)]),
    ["{", lists:join(",", [[json(K), ":", json(V)] || {K, V} <- Kvs]), "}"];
json(L) when is_list(L) -> ["[", lists:join(",", [json(X) || X <- L]), "]"];
json(true) -> "true";
json(false) -> "false";
json(undefined) -> "null";
json(none) -> "null";
json(A) when is_atom(A) -> json(atom_to_binary(A));
json(I) when is_integer(I) -> integer_to_list(I);
json(F) when is_float(F) -> float_to_list(F, [{decimals, 6}, compact]);
json(B) when is_binary(B) -> [$", [esc(C) || <<C>> <= B], $"];
json(T) -> json(unicode:characters_to_binary(io_lib:format("~p", [T]))).

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) when is_binary(K) -> K;
key(K) -> unicode:characters_to_binary(io_lib:format("~p", [K])).

esc($") -> "\\\"";
esc($\\) -> "\\\\";
esc($\n) -> "\\n";
esc(C) when C < 32 -> io_lib:format("\\u~4.16.0b", [C]);
esc(C) -> C.
