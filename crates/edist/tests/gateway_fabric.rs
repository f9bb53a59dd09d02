//! Real BEAM nodes on separate "hosts" talking through `edist gateway`s over the QUIC fabric.
//!
//! A host is a network namespace (`edist-<pid>-<n>`) with `lo` up and a veth into a shared bridge
//! (itself in a namespace of its own), addressed 10.213.<cluster>.<host+1>/24. Each host runs one
//! `edist gateway` (built binary, control on the namespace's own 127.0.0.1:4370, fabric on its veth
//! address, every other gateway as a static peer) and BEAM nodes plugged into it with
//! `edist erl-flags`, listening on loopback only (`-kernel inet_dist_use_interface {127,0,0,1}`):
//! the only way between hosts is the fabric.
//!
//! Every process is killed and every namespace deleted on drop, panics included. Tests run one at a
//! time (two cores; the timing assertions and throughput figures need a quiet machine).
//! Set `EDIST_TEST_LOG` to change the gateways' `EDIST_LOG` (default `info,edist_gateway=debug`);
//! the logs of a failed test are printed and kept under `$CARGO_TARGET_TMPDIR/gateway-fabric/`
//! (those of passed tests too with `EDIST_TEST_KEEP=1`).

use edist_testkit as common;

use anyhow::{bail, ensure, Context, Result};
use common::{host, require_erl, unique, REPL};
use serde_json::Value;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

const EDIST: &str = env!("CARGO_BIN_EXE_edist");
/// Every host has its own loopback, so every gateway can use the default control address.
const CONTROL: &str = "127.0.0.1:4370";
const FABRIC_PORT: u16 = 4371;
const MB: usize = 1024 * 1024;

/// One test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ------------------------------------------------------------------------------------------------
// Erlang side: a helper module compiled once per test process, and a line REPL.

const HELPER_MODULE: &str = r#"
-module(edist_fabric_t).
-behaviour(gen_server).
-export([start_server/1, init/1, handle_call/3, handle_cast/2, handle_info/2]).
-export([wait/2, start_sink/0, bulk/2, watch_nodedown/1, order_sink/0, order_round/2, hold_round/3, held_sender/2]).

%% A key-value gen_server, started unlinked and registered as Name.
start_server(Name) ->
    {ok, Pid} = gen_server:start({local, Name}, ?MODULE, #{}, []),
    Pid.

init(State) -> {ok, State}.
handle_call({put, K, V}, _From, S) -> {reply, ok, S#{K => V}};
handle_call({get, K}, _From, S) -> {reply, maps:get(K, S, undefined), S};
handle_call(from, From, S) -> {reply, From, S}.
handle_cast(_Msg, S) -> {noreply, S}.
handle_info(_Msg, S) -> {noreply, S}.

%% Calls F every 20 ms until it returns {ok, X} (then X), or Ms have passed (then {timeout, Last}).
wait(F, Ms) -> wait(F, erlang:monotonic_time(millisecond) + Ms, undefined).
wait(F, Deadline, _) ->
    case F() of
        {ok, X} -> X;
        Other ->
            case erlang:monotonic_time(millisecond) >= Deadline of
                true -> {timeout, Other};
                false -> timer:sleep(20), wait(F, Deadline, Other)
            end
    end.

%% Registered as edist_sink: acknowledges a binary, sends it back, then sends its md5.
start_sink() ->
    register(edist_sink, spawn(fun sink/0)),
    ok.
sink() ->
    receive
        {From, Bin} when is_binary(Bin) ->
            From ! {edist_sink, got},
            From ! {edist_sink, echo, Bin},
            From ! {edist_sink, md5, erlang:md5(Bin)},
            sink()
    end.

%% Sends Bytes random bytes to edist_sink on Node and gets them back:
%% {TheirMd5Ok, EchoMd5Ok, EchoSize, MicrosThere, MicrosBack}.
bulk(Node, Bytes) ->
    Bin = crypto:strong_rand_bytes(Bytes),
    Md5 = erlang:md5(Bin),
    true = erlang:monitor_node(Node, true),
    T0 = erlang:monotonic_time(microsecond),
    {edist_sink, Node} ! {self(), Bin},
    receive {edist_sink, got} -> ok; {nodedown, Node} -> exit({nodedown, waiting_for_ack}) after 120000 -> exit(no_ack) end,
    T1 = erlang:monotonic_time(microsecond),
    Back = receive {edist_sink, echo, B} -> B; {nodedown, Node} -> exit({nodedown, waiting_for_echo}) after 120000 -> exit(no_echo) end,
    T2 = erlang:monotonic_time(microsecond),
    Theirs = receive {edist_sink, md5, M} -> M; {nodedown, Node} -> exit({nodedown, waiting_for_md5}) after 60000 -> exit(no_md5) end,
    erlang:monitor_node(Node, false),
    {Theirs =:= Md5, erlang:md5(Back) =:= Md5, byte_size(Back), T1 - T0, T2 - T1}.

%% Collects {order, Tag, N} and {order, Tag, N, Pad}: for each Tag, N must count up from 1.
%% {order_report, From} gets #{Tag => {LastN, OutOfOrder}}; {order_reset, From} forgets everything.
order_sink() -> spawn(fun() -> order_sink(#{}) end).
order_sink(S) ->
    receive
        {order, Tag, N} -> order_sink(order_note(S, Tag, N));
        {order, Tag, N, _Pad} -> order_sink(order_note(S, Tag, N));
        {order_report, From} -> From ! {order_report, S}, order_sink(S);
        {order_reset, From} -> From ! order_reset, order_sink(#{})
    end.
order_note(S, Tag, N) ->
    {Last, Bad} = maps:get(Tag, S, {0, 0}),
    S#{Tag => {N, case N =:= Last + 1 of true -> Bad; false -> Bad + 1 end}}.

%% One round against the order sink Sink on another node, on a connection the senders open:
%% sender s1 sends 20,000 numbered messages, s2..s4 2,000 each, a bulk sender alternates
%% 200 KB messages with small ones (all numbered), and two processes pass a counter back and
%% forth, each sending it to Sink before handing it over (causality across senders, as pg
%% relies on). Returns the sink's report once everything arrived (or {timeout, Report}).
order_round(Sink, Rounds) -> [order_round1(Sink) || _ <- lists:seq(1, Rounds)].
order_round1(Sink) ->
    Node = node(Sink),
    erlang:disconnect_node(Node),
    gone = wait(fun() -> case lists:member(Node, nodes()) of false -> {ok, gone}; true -> no end end, 5000),
    Me = self(),
    Seq = fun(Tag, Count) -> spawn(fun() -> [Sink ! {order, Tag, N} || N <- lists:seq(1, Count)], Me ! {done, Tag} end) end,
    Seq(s1, 20000), Seq(s2, 2000), Seq(s3, 2000), Seq(s4, 2000),
    Pad = binary:copy(<<7>>, 200000),
    spawn(fun() ->
                  [case N rem 2 of 0 -> Sink ! {order, bulk, N, Pad}; 1 -> Sink ! {order, bulk, N} end
                   || N <- lists:seq(1, 40)],
                  Me ! {done, bulk}
          end),
    Pong = spawn(fun() -> chain(Sink) end),
    spawn(fun() -> Pong ! {chain, 1, self()}, chain(Sink), Me ! {done, chain} end),
    [receive {done, T} -> ok after 60000 -> exit({not_done, T, (catch edist_epmd:held())}) end || T <- [s1, s2, s3, s4, bulk, chain]],
    Want = #{s1 => 20000, s2 => 2000, s3 => 2000, s4 => 2000, bulk => 40, chain => 400},
    R = wait(fun() ->
                     Sink ! {order_report, self()},
                     receive {order_report, S} ->
                             case maps:map(fun(T, W) -> element(1, maps:get(T, S, {0, 0})) >= W end, Want) of
                                 #{s1 := true, s2 := true, s3 := true, s4 := true, bulk := true, chain := true} -> {ok, S};
                                 _ -> S
                             end
                     end
             end, 30000),
    %% Before the next round's disconnect, which may drop what is still in flight.
    Sink ! {order_reset, self()},
    receive order_reset -> R after 5000 -> {no_reset, R} end.
%% Sends {order, chain, N} to Sink, then hands N + 1 to the other process, up to 400.
chain(Sink) ->
    receive
        {chain, N, _} when N > 400 -> ok;
        {chain, N, Other} ->
            Sink ! {order, chain, N},
            Other ! {chain, N + 1, self()},
            case N + 1 > 400 of true -> ok; false -> chain(Sink) end
    end.

%% Per-sender hold: a sender fires Count binaries of Size bytes at Sink (numbered, order-checked
%% there) while another process pings Sink's node every 5 ms. Returns
%% {SenderWasHeld, PingsWhileHeld, PingerEverHeld, Report}: whether the plug held the sender
%% (edist_epmd:held/0), how many pings came back while it was, whether the pinger was ever held,
%% and the sink's report once everything arrived.
hold_round(Sink, Count, Size) ->
    Me = self(),
    Bin = binary:copy(<<7>>, Size),
    Sender = spawn(fun() -> [Sink ! {order, held, N, Bin} || N <- lists:seq(1, Count)], Me ! sent end),
    Pinger = spawn(fun() -> pinger(node(Sink)) end),
    {Held, Pings, PingerHeld} = watch_hold(Sender, Pinger, false, 0, false),
    Pinger ! stop,
    Want = Count,
    R = wait(fun() ->
                     Sink ! {order_report, self()},
                     receive {order_report, S} ->
                             case maps:get(held, S, {0, 0}) of {Want, _} -> {ok, S}; _ -> S end
                     end
             end, 120000),
    Sink ! {order_reset, self()},
    receive order_reset -> ok after 5000 -> ok end,
    {Held, Pings, PingerHeld, R}.
watch_hold(Sender, Pinger, Held, Pings, PingerHeld) ->
    receive
        sent -> {Held, Pings, PingerHeld}
    after 5 ->
            H = edist_epmd:held(),
            SenderHeld = lists:member(Sender, H),
            Pinger ! {count, self()},
            P = receive {pings, X} -> X after 1000 -> 0 end,
            watch_hold(Sender, Pinger, Held orelse SenderHeld,
                       case SenderHeld of true -> Pings + P; false -> Pings end,
                       PingerHeld orelse lists:member(Pinger, H))
    end.
%% Pings rex on Node (a call that needs nothing registered by the test) every 5 ms; answers
%% {count, From} with the pings completed since the last count.
pinger(Node) -> pinger(Node, 0).
pinger(Node, N) ->
    receive
        stop -> ok;
        {count, From} -> From ! {pings, N}, pinger(Node, 0)
    after 5 ->
            _ = rpc:call(Node, erlang, node, [], 2000),
            pinger(Node, N + 1)
    end.

%% A sender of Count binaries of Size bytes to Sink (its pid put as `held'); returns the pid once
%% the plug holds it.
held_sender(Sink, {Count, Size}) ->
    Bin = binary:copy(<<7>>, Size),
    S = spawn(fun() -> [Sink ! {order, killed, N, Bin} || N <- lists:seq(1, Count)] end),
    put(held, S),
    wait(fun() -> case lists:member(S, edist_epmd:held()) of true -> {ok, S}; false -> no end end, 30000).

%% A process that prints "nodedown Node Reason SystemMicros" when Node goes down.
watch_nodedown(Node) ->
    Me = self(),
    spawn(fun() ->
                  ok = net_kernel:monitor_nodes(true, [nodedown_reason, {node_type, all}]),
                  Me ! {watching, self()},
                  receive
                      {nodedown, Node, Info} ->
                          Reason = proplists:get_value(nodedown_reason, Info),
                          io:format("nodedown ~s ~w ~b~n", [Node, Reason, os:system_time(microsecond)])
                  end
          end),
    receive {watching, _} -> ok end.
"#;

/// What every test needs from outside: the plug flags and the helper module.
struct Tools {
    /// `edist erl-flags` (default gateway address), split.
    flags: Vec<String>,
    /// Holds `edist_fabric_t.beam`.
    helper_dir: PathBuf,
}

fn tools() -> Result<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS.get_or_init(|| make_tools().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

fn make_tools() -> Result<Tools> {
    require_erl();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = std::process::Command::new(EDIST)
        .arg("erl-flags")
        .env("XDG_CACHE_HOME", tmp.join("edist-fabric-cache"))
        .output()
        .context("running edist erl-flags")?;
    ensure!(out.status.success(), "edist erl-flags: {}", String::from_utf8_lossy(&out.stderr));
    let flags: Vec<String> = String::from_utf8(out.stdout)?.split_whitespace().map(str::to_owned).collect();
    let helper_dir = tmp.join(format!("edist-fabric-erl-{}", std::process::id()));
    std::fs::create_dir_all(&helper_dir)?;
    let src = helper_dir.join("edist_fabric_t.erl");
    std::fs::write(&src, HELPER_MODULE)?;
    let out = std::process::Command::new("erlc").arg("-o").arg(&helper_dir).arg(&src).output().context("erlc")?;
    ensure!(
        out.status.success(),
        "erlc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Tools { flags, helper_dir })
}

/// An atom literal.
fn q(name: &str) -> String {
    format!("'{name}'")
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A real BEAM node evaluating expressions sent on its stdin (one per line).
struct Node {
    /// Full name, `alive@host`.
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Lines other than results, in order (see [`Node::event`]).
    events: VecDeque<String>,
}

impl Node {
    /// Spawns `cmd` (an `erl` command line without `-eval`) with the REPL and waits until it runs.
    async fn spawn(mut cmd: Command, name: String, stderr_log: &Path) -> Result<Node> {
        let log = std::fs::File::create(stderr_log)?;
        cmd.arg("-noshell")
            .arg("-eval")
            .arg(REPL)
            .env_remove("ERL_FLAGS")
            .env_remove("ERL_AFLAGS")
            .env_remove("ERL_ZFLAGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut node = Node { name, child, stdin, stdout, events: VecDeque::new() };
        loop {
            let line = node.line(Duration::from_secs(60)).await.with_context(|| format!("{} starting", node.name))?;
            if line == "ready" {
                return Ok(node);
            }
            node.events.push_back(line);
        }
    }

    async fn line(&mut self, within: Duration) -> Result<String> {
        match timeout(within, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => bail!("{} closed its stdout", self.name),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("{} printed nothing within {within:?}", self.name),
        }
    }

    /// Evaluates `expr` (Erlang expressions, no final dot); returns the printed result.
    async fn eval(&mut self, expr: &str) -> Result<String> {
        self.eval_within(expr, Duration::from_secs(60)).await
    }

    async fn eval_within(&mut self, expr: &str, within: Duration) -> Result<String> {
        let one_line = expr.replace('\n', " ");
        self.stdin.write_all(format!("{one_line}.\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left).await.with_context(|| format!("{} evaluating {expr}", self.name))?;
            match line.strip_prefix("result ") {
                Some(r) => return Ok(r.to_owned()),
                None => self.events.push_back(line),
            }
        }
    }

    /// The next printed line starting with `prefix` that is not a result.
    async fn event(&mut self, prefix: &str, within: Duration) -> Result<String> {
        if let Some(i) = self.events.iter().position(|l| l.starts_with(prefix)) {
            return self.events.remove(i).context("event");
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left).await.with_context(|| format!("{} waiting for {prefix:?}", self.name))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            self.events.push_back(line);
        }
    }

    /// Starts a process that prints the system time (µs) at which `node`'s nodedown arrives.
    async fn watch_nodedown(&mut self, node: &str) -> Result<()> {
        let r = self.eval(&format!("edist_fabric_t:watch_nodedown({})", q(node))).await?;
        ensure!(r == "ok", "watch_nodedown: {r}");
        Ok(())
    }

    /// The system time (µs) printed by the watcher of [`Node::watch_nodedown`].
    async fn nodedown_at(&mut self, node: &str, within: Duration) -> Result<i64> {
        Ok(self.nodedown(node, within).await?.1)
    }

    /// When (µs, system time) `node` went down for the process `watch_nodedown` started, and why.
    async fn nodedown(&mut self, node: &str, within: Duration) -> Result<(String, i64)> {
        let line = self.event(&format!("nodedown {node} "), within).await?;
        let mut words = line.rsplit(' ');
        let at = words.next().context("time")?.parse().with_context(|| line.clone())?;
        Ok((words.next().context("reason")?.to_string(), at))
    }

    /// SIGKILL; returns the system time (µs) just before the signal.
    async fn kill(&mut self) -> Result<i64> {
        let t = now_us();
        self.child.kill().await?;
        Ok(t)
    }
}

// ------------------------------------------------------------------------------------------------
// Hosts: network namespaces.

/// A network namespace of ours; killing what still runs in it and deleting it on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip").args(args).output().context("running ip")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

impl Netns {
    fn new() -> Result<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("edist-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `program` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever is still running in here was started by this test (`ip netns exec`): end it
        // by pid, so that the namespace really goes away.
        if let Ok(out) = std::process::Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("kill").args(["-KILL", pid]).stderr(Stdio::null()).status();
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// A host: a namespace with one gateway.
struct Host {
    idx: usize,
    gw_name: String,
    ip: Ipv4Addr,
    config: PathBuf,
    log: PathBuf,
    gateway: Option<Child>,
    /// Last: dropped after the gateway.
    ns: Netns,
}

impl Host {
    async fn start_gateway(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let level = std::env::var("EDIST_TEST_LOG").unwrap_or_else(|_| "info,edist_gateway=debug".into());
        let mut cmd = self.ns.command(EDIST);
        cmd.arg("gateway")
            .arg("--config")
            .arg(&self.config)
            .env("EDIST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        self.gateway = Some(cmd.spawn().context("spawning edist gateway")?);
        Ok(())
    }

    /// SIGKILL of the gateway; returns the system time (µs) just before the signal.
    async fn kill_gateway(&mut self) -> Result<i64> {
        let mut child = self.gateway.take().context("no gateway running")?;
        let t = now_us();
        child.kill().await?;
        Ok(t)
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`) to the gateway; for a stop, waits up to `within` for
    /// it to exit and returns its exit status. Also returns the system time (µs) just before.
    async fn signal_gateway(
        &mut self,
        signal: &str,
        within: Option<Duration>,
    ) -> Result<(Option<std::process::ExitStatus>, i64)> {
        // `ip netns exec` execs the program: the child is the gateway itself.
        let pid = self.gateway.as_ref().and_then(Child::id).context("no gateway running")?;
        let t = now_us();
        let ok = std::process::Command::new("kill").args(["-s", signal, &pid.to_string()]).status()?.success();
        ensure!(ok, "kill -s {signal} {pid}");
        let Some(within) = within else { return Ok((None, t)) };
        let mut child = self.gateway.take().context("no gateway running")?;
        let status = timeout(within, child.wait()).await.context("the gateway did not exit in time")??;
        Ok((Some(status), t))
    }

    /// `edist ARGS` inside this host's namespace: (success, stdout, stderr).
    async fn edist(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = self.ns.command(EDIST).args(args).output().await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
    }

    /// `edist status --json` of this host's gateway.
    async fn status(&self) -> Result<Value> {
        let out = self.ns.command(EDIST).args(["status", "--gateway", CONTROL, "--json"]).output().await?;
        ensure!(out.status.success(), "edist status on {}: {}", self.gw_name, String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The real distribution port of a local node, from the gateway's status.
    async fn local_port(&self, node: &str) -> Result<u16> {
        let st = self.status().await?;
        pairs(&st, "local_nodes")
            .into_iter()
            .find(|(n, _)| n == node)
            .and_then(|(_, p)| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .with_context(|| format!("{node} is not local to {}: {st}", self.gw_name))
    }
}

/// `[[name, x], ...]` under `key`.
fn pairs(st: &Value, key: &str) -> Vec<(String, Value)> {
    st.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| Some((p.get(0)?.as_str()?.to_owned(), p.get(1)?.clone()))).collect())
        .unwrap_or_default()
}

fn strings(st: &Value, key: &str) -> Vec<String> {
    st.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| Some(s.as_str()?.to_owned())).collect())
        .unwrap_or_default()
}

/// The names of the remote nodes in a status report.
fn remote_names(st: &Value) -> Vec<String> {
    let pairs = st.get("remote_nodes").and_then(Value::as_array).cloned().unwrap_or_default();
    pairs.iter().filter_map(|p| Some(p.get(0)?.as_str()?.to_owned())).collect()
}

/// How a test node is named, and its cookie.
struct Naming {
    /// `-sname` or `-name`.
    flag: &'static str,
    /// Its argument: `alive`, `alive@host` or `undefined` (`undefined@host`).
    arg: String,
    /// The node's full name; for a dynamic name, `undefined` until it has one.
    full: String,
    /// `-setcookie` (default: the cluster's, which every gateway has).
    cookie: Option<String>,
}

impl Naming {
    /// `-sname <prefix><unique>`: `...@<short host name>`, as every gateway's `host`.
    fn short(prefix: &str) -> Naming {
        let alive = unique(prefix);
        Naming { flag: "-sname", full: format!("{alive}@{}", host()), arg: alive, cookie: None }
    }

    /// `-sname <prefix><unique>@<host_part>`: a short name with a host part of its own.
    fn short_at(prefix: &str, host_part: &str) -> Naming {
        let full = format!("{}@{host_part}", unique(prefix));
        Naming { flag: "-sname", arg: full.clone(), full, cookie: None }
    }

    /// `-name <prefix><unique>@<host_part>`: a long name (an IP address or an FQDN).
    fn long(prefix: &str, host_part: &str) -> Naming {
        let full = format!("{}@{host_part}", unique(prefix));
        Naming { flag: "-name", arg: full.clone(), full, cookie: None }
    }

    /// A dynamic name (OTP 23+), given by the first node it connects to: `-sname undefined`,
    /// or with a host part, `-name undefined@<host_part>`.
    fn dynamic(long_host: Option<&str>) -> Naming {
        let (flag, arg) = match long_host {
            Some(h) => ("-name", format!("undefined@{h}")),
            None => ("-sname", "undefined".to_string()),
        };
        Naming { flag, arg, full: "undefined".into(), cookie: None }
    }

    fn cookie(mut self, cookie: &str) -> Naming {
        self.cookie = Some(cookie.to_string());
        self
    }
}

/// An atom as `~p` prints it: quoted unless it is a plain lower-case word.
fn printed(atom: &str) -> String {
    let plain = atom.starts_with(|c: char| c.is_ascii_lowercase())
        && atom.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
    if plain {
        atom.to_string()
    } else {
        q(atom)
    }
}

/// Changes to the default cluster of [`Cluster::start_with`].
#[derive(Default)]
struct Setup<'a> {
    /// Start the gateways this far apart, in host order.
    stagger: Duration,
    /// Hosts whose gateway certificate comes from a CA of its own (not the cluster's).
    foreign_ca: Option<&'a dyn Fn(usize) -> bool>,
    /// Extra `edist certs issue` arguments for host i's gateway.
    cert_args: Option<&'a dyn Fn(usize) -> Vec<String>>,
    /// Hosts whose gateway certificate expired yesterday.
    expired: Option<&'a dyn Fn(usize) -> bool>,
    /// Lines for the `[local]` table of host i.
    local: Option<&'a dyn Fn(usize) -> String>,
    /// Lines for the `[fabric]` table of host i.
    fabric: Option<&'a dyn Fn(usize) -> String>,
    /// Lines for host i's `[[peers]]` table of host j.
    peer: Option<&'a dyn Fn(usize, usize) -> String>,
    /// Tables at the end of host i's config.
    tail: Option<&'a dyn Fn(usize) -> String>,
    /// Not every gateway links to every other: do not wait for a full mesh.
    partial_mesh: bool,
    /// No `[[peers]]`: every gateway has `seeds = ["gateways.edist.test:PORT"]`, a name that
    /// each namespace's hosts file (`/etc/netns/NS/hosts`) resolves to all hosts' addresses.
    dns_seeds: bool,
    /// `[fabric] membership` with `link_idle_ms` of this many ms: no `[[peers]]`, gw-0 is
    /// everyone's only seed, and links come and go with traffic.
    membership: Option<u64>,
    /// `[fabric] transport` (default: `$EDIST_TEST_TRANSPORT`, else QUIC).
    transport: Option<&'a str>,
    /// `(n, r)`: host n is not on the bridge but behind host r, on a link of its own (a subnet
    /// only r routes to): nobody else can dial it, and it can dial only r. It dials r
    /// (`relay = true`) and reaches the others `via` r; r relays (`[fabric] relay`); the
    /// others reach it `via` r.
    behind: Option<(usize, usize)>,
}

/// The transport the namespace tests run on: `EDIST_TEST_TRANSPORT=tcp` runs them all over TLS
/// over TCP.
fn test_transport() -> String {
    std::env::var("EDIST_TEST_TRANSPORT").unwrap_or_else(|_| "quic".into())
}

/// Hosts on one bridge, each with a gateway that has all the others as peers.
struct Cluster {
    dir: PathBuf,
    cookie: String,
    passed: bool,
    hosts: Vec<Host>,
    /// Holds the bridge; deleted last.
    switch: Netns,
}

impl Cluster {
    async fn start(n: usize) -> Result<Cluster> {
        Self::start_staggered(n, Duration::ZERO).await
    }

    /// Starts the gateways `stagger` apart (in host order), as hosts booting at different times do.
    async fn start_staggered(n: usize, stagger: Duration) -> Result<Cluster> {
        Self::start_with(n, Setup { stagger, ..Setup::default() }).await
    }

    /// [`Cluster::start_staggered`] with the changes of `setup`.
    async fn start_with(n: usize, setup: Setup<'_>) -> Result<Cluster> {
        let stagger = setup.stagger;
        static SUBNET: AtomicU32 = AtomicU32::new(0);
        let subnet = (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("gateway-fabric")
            .join(format!("{}-{subnet}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let certs = dir.join("certs");
        let run_in = |dir: &Path, args: &[&str]| -> Result<()> {
            let out = std::process::Command::new(EDIST).args(args).arg("--dir").arg(dir).output()?;
            ensure!(out.status.success(), "edist {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            Ok(())
        };
        let run = |args: &[&str]| run_in(&certs, args);
        run(&["certs", "init"])?;
        let foreign = dir.join("foreign-certs");
        for i in 0..n {
            let name = format!("gw-{i}");
            let mut args = vec!["certs", "issue", name.as_str()];
            let extra = setup.cert_args.map(|f| f(i)).unwrap_or_default();
            args.extend(extra.iter().map(String::as_str));
            if setup.foreign_ca.is_some_and(|f| f(i)) {
                // Issued by a CA of its own; it still trusts the cluster's ca.pem, but the
                // cluster does not trust it.
                if !foreign.join("ca.pem").exists() {
                    run_in(&foreign, &["certs", "init"])?;
                }
                run_in(&foreign, &args)?;
                for ext in ["pem", "key"] {
                    std::fs::copy(foreign.join(format!("{name}.{ext}")), certs.join(format!("{name}.{ext}")))?;
                }
                continue;
            }
            run(&args)?;
            if setup.expired.is_some_and(|f| f(i)) {
                let now = time::OffsetDateTime::now_utc();
                let past = edist_gateway::pki::IssueOptions {
                    force: true,
                    not_before: Some(now - time::Duration::days(10)),
                    not_after: Some(now - time::Duration::days(1)),
                    ..Default::default()
                };
                edist_gateway::pki::issue(&certs, &name, 1, past)?;
            }
        }

        let switch = Netns::new()?;
        ip(&["-n", &switch.name, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch.name, "link", "set", "br0", "up"])?;
        let mut cluster =
            Cluster { dir: dir.clone(), cookie: unique("cookie"), passed: false, hosts: Vec::new(), switch };
        let hidden = Ipv4Addr::new(10, 214, subnet, 2);
        let ips: Vec<Ipv4Addr> = (0..n)
            .map(|i| match setup.behind {
                Some((b, _)) if b == i => hidden,
                _ => Ipv4Addr::new(10, 213, subnet, i as u8 + 1),
            })
            .collect();
        for (i, addr) in ips.iter().enumerate() {
            let ns = Netns::new()?;
            let port = format!("p{i}");
            let behind = setup.behind.filter(|(b, _)| *b == i);
            ip(&[
                "-n",
                &cluster.switch.name,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns.name,
            ])?;
            if behind.is_none() {
                ip(&["-n", &cluster.switch.name, "link", "set", &port, "master", "br0", "up"])?;
                ip(&["-n", &ns.name, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
                ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
            } else {
                ip(&["-n", &cluster.switch.name, "link", "del", &port])?;
            }
            let gw_name = format!("gw-{i}");
            // The relay also listens on its link to the hidden host.
            let listen = if setup.behind.is_some_and(|(_, r)| r == i) { Ipv4Addr::UNSPECIFIED } else { *addr };
            let mut toml = format!(
                "name = \"{gw_name}\"\ncookie = \"{}\"\n\n[local]\ncontrol = \"{CONTROL}\"\n{}\n\
                 [fabric]\nlisten = \"{listen}:{FABRIC_PORT}\"\ncerts = \"{}\"\n{}",
                cluster.cookie,
                setup.local.map(|f| f(i)).unwrap_or_default(),
                certs.display(),
                setup.fabric.map(|f| f(i)).unwrap_or_default()
            );
            if setup.dns_seeds {
                toml.push_str(&format!("seeds = [\"gateways.edist.test:{FABRIC_PORT}\"]\n"));
                let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
                hosts.extend(ips.iter().map(|a| format!("\n{a} gateways.edist.test")));
                let etc = Path::new("/etc/netns").join(&ns.name);
                std::fs::create_dir_all(&etc)?;
                std::fs::write(etc.join("hosts"), hosts + "\n")?;
            }
            let transport = setup.transport.map(str::to_owned).unwrap_or_else(test_transport);
            toml.push_str(&format!("transport = \"{transport}\"\n"));
            if let Some(idle) = setup.membership {
                let seed = ips[0];
                toml.push_str(&format!(
                    "membership = true\nlink_idle_ms = {idle}\nseeds = [\"{seed}:{FABRIC_PORT}\"]\n"
                ));
            }
            if setup.behind.is_some_and(|(_, r)| r == i) {
                toml.push_str("relay = true\n");
            }
            let named_peers = !setup.dns_seeds && setup.membership.is_none();
            for (j, other) in ips.iter().enumerate().filter(|(j, _)| *j != i && named_peers) {
                let entry = match setup.behind {
                    // The hidden host names its relay only, at the relay's address on their link.
                    Some((b, r)) if b == i && j == r => {
                        format!("addr = \"10.214.{subnet}.1:{FABRIC_PORT}\"\nrelay = true\n")
                    }
                    Some((b, r)) if b == i => format!("via = \"gw-{r}\"\n"),
                    Some((b, _)) if b == j && setup.behind.is_some_and(|(_, r)| r == i) => String::new(),
                    Some((b, r)) if b == j => format!("via = \"gw-{r}\"\n"),
                    _ => format!("addr = \"{other}:{FABRIC_PORT}\"\n"),
                };
                toml.push_str(&format!("\n[[peers]]\nname = \"gw-{j}\"\n{entry}"));
                toml.push_str(&setup.peer.map(|f| f(i, j)).unwrap_or_default());
            }
            toml.push_str(&setup.tail.map(|f| f(i)).unwrap_or_default());
            let config = dir.join(format!("{gw_name}.toml"));
            std::fs::write(&config, toml)?;
            let log = dir.join(format!("{gw_name}.log"));
            cluster.hosts.push(Host { idx: i, gw_name, ip: *addr, config, log, gateway: None, ns });
        }
        if let Some((b, r)) = setup.behind {
            // A link of their own between the hidden host and its relay.
            let (hb, hr) = (&cluster.hosts[b].ns.name, &cluster.hosts[r].ns.name);
            ip(&["-n", hr, "link", "add", "hide0", "type", "veth", "peer", "name", "eth0", "netns", hb])?;
            ip(&["-n", hr, "addr", "add", &format!("10.214.{subnet}.1/24"), "dev", "hide0"])?;
            ip(&["-n", hr, "link", "set", "hide0", "up"])?;
            ip(&["-n", hb, "addr", "add", &format!("{hidden}/24"), "dev", "eth0"])?;
            ip(&["-n", hb, "link", "set", "eth0", "up"])?;
        }
        for (i, h) in cluster.hosts.iter_mut().enumerate() {
            if i > 0 && !stagger.is_zero() {
                sleep(stagger).await;
            }
            h.start_gateway().await?;
        }
        if !setup.partial_mesh && setup.membership.is_none() && setup.behind.is_none() {
            cluster.wait_links().await?;
        }
        Ok(cluster)
    }

    /// Waits until every gateway has a link to every other one.
    async fn wait_links(&self) -> Result<()> {
        for h in &self.hosts {
            let mut want: Vec<String> =
                self.hosts.iter().filter(|o| o.idx != h.idx).map(|o| o.gw_name.clone()).collect();
            want.sort();
            let want = &want;
            self.wait(&format!("{} to link to {want:?}", h.gw_name), || async move {
                Ok(h.status().await.map(|st| strings(&st, "peers") == *want).unwrap_or(false))
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until `node` is local to host `at` and known to every other gateway as behind it.
    async fn wait_known(&self, node: &str, at: usize) -> Result<()> {
        for h in &self.hosts {
            self.wait_known_by(h.idx, node, at).await?;
        }
        Ok(())
    }

    /// Waits until host `by`'s gateway knows `node`: as local when `by == at`, else as behind
    /// host `at`'s gateway.
    async fn wait_known_by(&self, by: usize, node: &str, at: usize) -> Result<()> {
        let owner = self.host(at)?.gw_name.as_str();
        let h = self.host(by)?;
        self.wait(&format!("{} to know {node}", h.gw_name), || async move {
            let Ok(st) = h.status().await else { return Ok(false) };
            Ok(if by == at {
                pairs(&st, "local_nodes").iter().any(|(n, _)| n == node)
            } else {
                pairs(&st, "remote_nodes").iter().any(|(n, g)| n == node && g.as_str() == Some(owner))
            })
        })
        .await
    }

    async fn wait<F, Fut>(&self, what: &str, mut cond: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cond().await? {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// The peers host i's gateway has a link to.
    async fn peers(&self, i: usize) -> Result<Vec<String>> {
        Ok(strings(&self.host(i)?.status().await?, "peers"))
    }

    fn host(&self, i: usize) -> Result<&Host> {
        self.hosts.get(i).context("no such host")
    }

    /// A plugged-in BEAM node `<prefix><unique>` on host `i`, known to every gateway.
    async fn erl(&self, i: usize, prefix: &str, extra: &[&str]) -> Result<Node> {
        let node = self.erl_local(i, prefix, extra).await?;
        self.wait_known(&node.name, i).await?;
        Ok(node)
    }

    /// A plugged-in BEAM node on host `i` named as `naming` says, known to every gateway.
    async fn erl_named(&self, i: usize, naming: Naming, extra: &[&str]) -> Result<Node> {
        let node = self.erl_as(i, naming, extra).await?;
        self.wait_known(&node.name, i).await?;
        Ok(node)
    }

    /// A plugged-in BEAM node on host `i`, registered with its own gateway (others may refuse it).
    async fn erl_local(&self, i: usize, prefix: &str, extra: &[&str]) -> Result<Node> {
        self.erl_as(i, Naming::short(prefix), extra).await
    }

    /// A plugged-in BEAM node on host `i` named as `naming` says, registered with its gateway.
    async fn erl_as(&self, i: usize, naming: Naming, extra: &[&str]) -> Result<Node> {
        let node = self.erl_spawn(i, naming, extra).await?;
        let h = self.host(i)?;
        let name = node.name.as_str();
        self.wait(&format!("{name} to register on host {i}"), || async move {
            Ok(h.status().await.map(|st| pairs(&st, "local_nodes").iter().any(|(n, _)| n == name)).unwrap_or(false))
        })
        .await?;
        Ok(node)
    }

    /// A plugged-in BEAM node on host `i`, running; nothing waited for.
    async fn erl_spawn(&self, i: usize, naming: Naming, extra: &[&str]) -> Result<Node> {
        let t = tools()?;
        let h = self.host(i)?;
        let cookie = naming.cookie.as_deref().unwrap_or(&self.cookie);
        let mut cmd = h.ns.command("erl");
        cmd.args(&t.flags)
            .args(["-kernel", "inet_dist_use_interface", "{127,0,0,1}"])
            .args([naming.flag, &naming.arg, "-setcookie", cookie])
            .arg("-pa")
            .arg(&t.helper_dir)
            .args(extra)
            // Nothing may fall back to a real epmd.
            .env("ERL_EPMD_PORT", "1");
        if !naming.arg.is_ascii() {
            // A name such as `e@b1é` reaches the node as UTF-8, as with OTP's own tests.
            cmd.env("LC_ALL", "C.UTF-8");
        }
        let stem = if naming.full == "undefined" { unique("undefined") } else { naming.full.replace('.', "_") };
        let log = self.dir.join(format!("{stem}.stderr"));
        Node::spawn(cmd, naming.full, &log).await
    }

    /// Marks the test as passed: the logs are not printed and the directory goes away.
    fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.passed {
            if std::env::var_os("EDIST_TEST_KEEP").is_none() {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            return;
        }
        eprintln!("---- test failed: logs kept in {}", self.dir.display());
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for p in logs.iter().filter(|p| p.extension().is_some_and(|e| e == "log" || e == "stderr")) {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (last 80 of {} lines)", p.display(), lines.len());
            for l in lines.iter().skip(lines.len().saturating_sub(80)) {
                eprintln!("{l}");
            }
        }
    }
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Parses `{true,true,Size,UsThere,UsBack}` from `edist_fabric_t:bulk/2`; returns MB/s both ways.
fn bulk_result(r: &str, size: usize) -> Result<(f64, f64)> {
    let parts: Vec<&str> = r.trim_matches(|c| c == '{' || c == '}').split(',').collect();
    ensure!(parts.len() == 5, "bulk: {r}");
    ensure!(parts[0] == "true" && parts[1] == "true", "md5 mismatch: {r}");
    ensure!(parts[2] == size.to_string(), "size: {r}");
    let rate = |us: &str| -> Result<f64> { Ok(size as f64 / MB as f64 / (us.parse::<f64>()? / 1e6)) };
    Ok((rate(parts[3])?, rate(parts[4])?))
}

// ------------------------------------------------------------------------------------------------
// Tests

/// Host B's gateway starts a moment after host A's: A's first dial goes nowhere (B is not bound
/// yet) and is retried by QUIC, while B's dial to A makes the link. A connection relayed as soon
/// as the link is up must survive whatever the gateways then do about the second link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_survives_the_gateways_link_setup() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_staggered(2, Duration::from_millis(200)).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let b = cluster.erl(1, "b", &[]).await?;
    let qb = q(&b.name);
    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    // Proving an absence takes a while: QUIC retries a lost Initial after ~1 s, and a dial
    // gives up after 3 s (HELLO_TIMEOUT).
    assert_eq!(
        a.eval(&format!(
            "true = erlang:monitor_node({qb}, true), \
             receive {{nodedown, {qb}}} -> nodedown after 4000 -> still_connected end"
        ))
        .await?,
        "still_connected",
        "the relayed connection a -> b was torn down while nobody touched it"
    );
    assert_eq!(a.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, b.name);
    cluster.passed();
    Ok(())
}

/// Erlang's ordering guarantee through two gateways, on connections the senders open (so the
/// first messages are queued and encoded while the connection is set up): every sender's
/// numbered messages arrive in order, a bulk sender's small messages stay behind its large
/// ones, and a counter passed between two processes reaches the far node in causal order
/// (small messages of different senders keep one FIFO, as `pg` relies on).
/// `EDIST_ORDER_ROUNDS` rounds (default 5; the issue's acceptance run is 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_per_pair_and_for_small_messages_on_connections_senders_open() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let rounds: u32 = std::env::var("EDIST_ORDER_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    assert_eq!(b.eval("register(order_sink, edist_fabric_t:order_sink())").await?, "true");
    let qb = q(&b.name);
    let out = a
        .eval_within(
            &format!(
                "Sink = rpc:call({qb}, erlang, whereis, [order_sink]), \
                 [case R of #{{}} -> [{{T, Bad}} || {{T, {{_, Bad}}}} <- maps:to_list(R), Bad > 0]; Other -> Other end \
                  || R <- edist_fabric_t:order_round(Sink, {rounds})]"
            ),
            Duration::from_secs(30 * rounds as u64 + 30),
        )
        .await?;
    let want = format!("[{}]", vec!["[]"; rounds as usize].join(","));
    assert_eq!(out, want, "out-of-order messages by sender, per round (a tuple: the round did not complete)");
    Ok(())
}

/// Per-sender backpressure over a slow link (host 0 sends at 20 Mbit): a fire-and-forget bulk
/// sender is held by its node's plug once its bytes queued in the gateway pass its share, while
/// another process's calls keep crossing (it is never held); held senders go again when their
/// lane drains, and everything arrives in order. A gateway killed while a sender is held leaves
/// no process suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_sender_is_held_alone_and_released() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2).await?;
    let ns = cluster.host(0)?.ns.name.clone();
    let shaped = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "20mbit"])
        .args(["burst", "64kb", "latency", "100ms"])
        .status()?;
    ensure!(shaped.success(), "tc tbf on host 0");
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    assert_eq!(b.eval("register(order_sink, edist_fabric_t:order_sink())").await?, "true");
    let qb = q(&b.name);
    a.eval(&format!("put(sink, rpc:call({qb}, erlang, whereis, [order_sink]))")).await?;
    // 24 MiB at 20 Mbit: about 10 s.
    let out = a.eval_within("edist_fabric_t:hold_round(get(sink), 24, 1048576)", Duration::from_secs(150)).await?;
    let (held, pings, pinger_held, report) = {
        let t = out.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or_default();
        let mut it = t.splitn(4, ',');
        (
            it.next().unwrap_or(""),
            it.next().unwrap_or("0").parse::<u32>()?,
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        )
    };
    assert_eq!(held, "true", "the bulk sender was never held: {out}");
    assert_eq!(pinger_held, "false", "the small sender was held: {out}");
    // (Counted only at the 5 ms samples that saw the sender held: on a loaded machine its holds
    // are shorter and fewer, 14 once in CI.)
    assert!(pings >= 10, "only {pings} calls crossed while the bulk sender was held: {out}");
    assert_eq!(report, "#{held => {24,0}}", "the held sender's messages arrived, in order");
    assert_eq!(a.eval("edist_epmd:held()").await?, "[]", "nothing stays held");

    // A held sender, then its gateway dies: the plug lets it go.
    let pid = a.eval_within("edist_fabric_t:held_sender(get(sink), {400, 1048576})", Duration::from_secs(40)).await?;
    ensure!(pid.starts_with('<'), "no sender was held: {pid}");
    cluster.hosts[0].kill_gateway().await?;
    let after = a
        .eval(
            "edist_fabric_t:wait(fun() -> case {edist_epmd:held(), process_info(get(held), status)} of \
             {[], {status, S}} when S =/= suspended -> {ok, released}; {[], undefined} -> {ok, released}; \
             Other -> Other end end, 5000)",
        )
        .await?;
    assert_eq!(after, "released");
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_rpc_gen_server_links_monitors_global_pg_hidden() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let (an, bn) = (a.name.clone(), b.name.clone());
    let (qa, qb) = (q(&an), q(&bn));

    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    assert_eq!(a.eval("nodes()").await?, format!("[{bn}]"));

    // rpc and erpc, both ways.
    assert_eq!(a.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, bn);
    assert_eq!(a.eval(&format!("rpc:call({qb}, lists, seq, [1, 5])")).await?, "[1,2,3,4,5]");
    assert_eq!(b.eval(&format!("rpc:call({qa}, erlang, node, [])")).await?, an);
    assert_eq!(a.eval(&format!("erpc:call({qb}, erlang, node, [])")).await?, bn);
    assert_eq!(a.eval(&format!("erpc:call({qb}, fun() -> {{node(), 6 * 7}} end)")).await?, format!("{{{bn},42}}"));
    assert_eq!(
        a.eval(&format!(
            "try erpc:call({qb}, erlang, error, [oops]) catch error:{{exception, R, _}} -> {{caught, R}} end"
        ))
        .await?,
        "{caught,oops}"
    );

    // gen_server:call to the other host; the reply comes back through an alias.
    let pid = b.eval("edist_fabric_t:start_server(kv)").await?;
    assert!(pid.starts_with('<'), "{pid}");
    assert_eq!(a.eval(&format!("gen_server:call({{kv, {qb}}}, {{put, k, <<\"v\">>}})")).await?, "ok");
    assert_eq!(a.eval(&format!("gen_server:call({{kv, {qb}}}, {{get, k}})")).await?, "<<\"v\">>");
    assert_eq!(
        a.eval(&format!(
            "case gen_server:call({{kv, {qb}}}, from) of {{P, [alias | R]}} when P =:= self(), is_reference(R) -> alias; \
             Other -> Other end"
        ))
        .await?,
        "alias"
    );
    assert_eq!(
        a.eval(&format!("try gen_server:call({{nokv, {qb}}}, x, 5000) catch exit:{{noproc, _}} -> noproc end")).await?,
        "noproc"
    );

    // spawn_link / spawn_monitor across hosts; links with trap_exit.
    // (The -eval process traps exits already; say so anyway.)
    a.eval("process_flag(trap_exit, true)").await?;
    assert_eq!(
        a.eval(&format!(
            "P = spawn_link({qb}, timer, sleep, [infinity]), N = node(P), true = exit(P, because), \
             receive {{'EXIT', P, R}} -> {{N, R}} after 5000 -> timeout end"
        ))
        .await?,
        format!("{{{bn},because}}")
    );
    assert_eq!(
        a.eval(&format!(
            "P = spawn_link({qb}, erlang, exit, [from_b]), receive {{'EXIT', P, R}} -> {{node(P), R}} after 5000 -> timeout end"
        ))
        .await?,
        format!("{{{bn},from_b}}")
    );
    // A process on b linked to one on a, trapping exits, hears a's death.
    assert_eq!(
        a.eval(&format!(
            "Me = self(), L = spawn(fun() -> receive stop -> exit(stopped_on_a) end end), \
             spawn({qb}, fun() -> process_flag(trap_exit, true), link(L), Me ! linked, \
                                  receive {{'EXIT', L, R}} -> Me ! {{on_b, node(), R}} end end), \
             receive linked -> ok end, L ! stop, \
             receive {{on_b, N, R}} -> {{N, R}} after 5000 -> timeout end"
        ))
        .await?,
        format!("{{{bn},stopped_on_a}}")
    );
    assert_eq!(
        a.eval(&format!(
            "{{P, M}} = spawn_monitor({qb}, erlang, exit, [mon_reason]), \
             receive {{'DOWN', M, process, P, R}} -> {{node(P), R}} after 5000 -> timeout end"
        ))
        .await?,
        format!("{{{bn},mon_reason}}")
    );
    assert_eq!(
        a.eval(&format!(
            "P = spawn({qb}, timer, sleep, [infinity]), M = monitor(process, P), exit(P, kill), \
             receive {{'DOWN', M, process, P, R}} -> R after 5000 -> timeout end"
        ))
        .await?,
        "killed"
    );

    // Monitor by registered name, with the DOWN reason.
    assert_eq!(b.eval("register(victim, spawn(fun() -> receive {die, R} -> exit(R) end end))").await?, "true");
    assert_eq!(
        a.eval(&format!(
            "M = erlang:monitor(process, {{victim, {qb}}}), {{victim, {qb}}} ! {{die, custom_reason}}, \
             receive {{'DOWN', M, process, Who, Why}} -> {{Who, Why}} after 5000 -> timeout end"
        ))
        .await?,
        format!("{{{{victim,{bn}}},custom_reason}}")
    );
    assert_eq!(
        a.eval(&format!(
            "M = erlang:monitor(process, {{nobody, {qb}}}), \
             receive {{'DOWN', M, process, _, Why}} -> Why after 5000 -> timeout end"
        ))
        .await?,
        "noproc"
    );

    // global: registered on a, found and used from b.
    let gname = unique("g");
    assert_eq!(a.eval(&format!("global:register_name({gname}, self())")).await?, "yes");
    assert_eq!(b.eval(&format!("global:sync(), node(global:whereis_name({gname}))")).await?, an);
    assert_eq!(b.eval(&format!("global:send({gname}, {{hi, node()}}), ok")).await?, "ok");
    assert_eq!(a.eval("receive {hi, N} -> N after 5000 -> timeout end").await?, bn);

    // pg: joined on b, seen on a.
    assert_eq!(b.eval("{ok, _} = pg:start_link(), pg:join(fabric_group, self())").await?, "ok");
    assert_eq!(a.eval("{ok, _} = pg:start_link(), ok").await?, "ok");
    assert_eq!(
        a.eval(
            "edist_fabric_t:wait(fun() -> case pg:get_members(fabric_group) of [] -> []; \
             Ms -> {ok, [node(P) || P <- Ms]} end end, 10000)"
        )
        .await?,
        format!("[{bn}]")
    );

    // A hidden node on host 0 reaches b on host 1.
    let mut h = cluster.erl(0, "h", &["-hidden"]).await?;
    let hn = h.name.clone();
    assert_eq!(h.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    assert_eq!(h.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, bn);
    assert_eq!(h.eval("{nodes(), nodes(hidden)}").await?, format!("{{[],[{bn}]}}"));
    assert_eq!(
        b.eval(&format!("{{lists:member({}, nodes(hidden)), lists:member({}, nodes())}}", q(&hn), q(&hn))).await?,
        "{true,false}"
    );
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beams_listen_on_loopback_only_and_the_fabric_is_the_way_in() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let qb = q(&b.name);
    let b_ip = cluster.host(1)?.ip;
    let b_tuple = format!("{{{}}}", b_ip.octets().map(|o| o.to_string()).join(","));
    let port = cluster.host(1)?.local_port(&b.name).await?;

    // b's real distribution port answers on b's loopback ...
    assert_eq!(b.eval(&format!("element(1, gen_tcp:connect({{127,0,0,1}}, {port}, [], 2000))")).await?, "ok");
    // ... but not on host B's veth address, although host B is reachable from host A over TCP.
    assert_eq!(
        a.eval(&format!("gen_tcp:connect({b_tuple}, {port}, [], 2000)")).await?,
        "{error,econnrefused}",
        "b's distribution port is reachable from host A"
    );
    // (The listener belongs to b's REPL process, which lives on.)
    let open =
        b.eval(&format!("{{ok, L}} = gen_tcp:listen(0, [{{ip, {b_tuple}}}]), {{ok, P}} = inet:port(L), P")).await?;
    assert_eq!(a.eval(&format!("element(1, gen_tcp:connect({b_tuple}, {open}, [], 2000))")).await?, "ok");

    // Through the fabric it works, and a's connection to b is to a loopback port of host A
    // (the gateway impersonating b).
    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    let addr = a.eval(&format!("proplists:get_value(address, element(2, net_kernel:node_info({qb})))")).await?;
    let st = cluster.host(0)?.status().await?;
    let imp = pairs(&st, "impersonated")
        .into_iter()
        .find(|(n, _)| *n == b.name)
        .and_then(|(_, p)| p.as_u64())
        .with_context(|| format!("gw-0 does not impersonate b: {st}"))?;
    assert!(addr.contains(&format!("{{{{127,0,0,1}},{imp}}}")), "{addr} (impersonator port {imp})");
    assert_ne!(u64::from(port), imp);
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodedown_after_a_beam_or_a_gateway_dies_and_reconnect_after_restart() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let mut b2 = cluster.erl(1, "b2x", &[]).await?;
    let (bn, b2n) = (b.name.clone(), b2.name.clone());
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&bn))).await?, "pong");
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b2n))).await?, "pong");

    // The BEAM of b dies.
    a.watch_nodedown(&bn).await?;
    let killed = b.kill().await?;
    let seen = a.nodedown_at(&bn, Duration::from_secs(10)).await?;
    let beam_delay = seen - killed;
    assert!(beam_delay > 0, "nodedown arrived {:.1} ms before the kill", ms(-beam_delay));
    eprintln!("fabric: nodedown on a {:.1} ms after SIGKILL of b's BEAM", ms(beam_delay));
    assert!(beam_delay < 1_000_000, "nodedown took {:.1} ms", ms(beam_delay));

    // Host B's gateway dies (b2 lives on).
    a.watch_nodedown(&b2n).await?;
    let killed = cluster.hosts[1].kill_gateway().await?;
    let seen = a.nodedown_at(&b2n, Duration::from_secs(10)).await?;
    let gw_delay = seen - killed;
    assert!(gw_delay > 0, "nodedown arrived {:.1} ms before the kill", ms(-gw_delay));
    eprintln!("fabric: nodedown on a {:.1} ms after SIGKILL of host B's gateway", ms(gw_delay));
    assert!(gw_delay < 2_000_000, "nodedown took {:.1} ms (the fabric promises 2 s)", ms(gw_delay));
    assert_eq!(a.eval("nodes()").await?, "[]");
    // Host A's gateway forgets the dead gateway's nodes (and all its links to it).
    let h0 = cluster.host(0)?;
    cluster
        .wait("gw-0 to forget gw-1", || async {
            let st = h0.status().await?;
            Ok(pairs(&st, "remote_nodes").is_empty() && strings(&st, "peers").is_empty())
        })
        .await?;

    // The gateway comes back; b2's plug registers again; a reaches b2 again, and b2 reaches a.
    cluster.hosts[1].start_gateway().await?;
    let t0 = Instant::now();
    cluster.wait_links().await?;
    cluster.wait_known(&b2n, 1).await?;
    eprintln!("fabric: b2 known to both gateways again {:?} after the gateway restart", t0.elapsed());
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b2n))).await?, "pong");
    assert_eq!(b2.eval(&format!("rpc:call({}, erlang, node, [])", q(&a.name))).await?, a.name);
    // A fresh node on the restarted host works too.
    let mut c = cluster.erl(1, "c", &[]).await?;
    assert_eq!(c.eval(&format!("net_adm:ping({})", q(&a.name))).await?, "pong");
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_global_connects_transitively() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let mut c = cluster.erl(2, "c", &[]).await?;
    let (bn, cn) = (b.name.clone(), c.name.clone());
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&bn))).await?, "pong");
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&cn))).await?, "pong");
    // b and c never pinged each other: global connects them, possibly from both ends at once.
    let connected = |other: &str| {
        format!(
            "edist_fabric_t:wait(fun() -> global:sync(), case lists:member({0}, nodes()) of true -> {{ok, true}}; \
             false -> nodes() end end, 15000)",
            q(other)
        )
    };
    assert_eq!(b.eval(&connected(&cn)).await?, "true");
    assert_eq!(c.eval(&connected(&bn)).await?, "true");
    assert_eq!(b.eval(&format!("rpc:call({}, erlang, node, [])", q(&cn))).await?, cn);
    assert_eq!(c.eval(&format!("erpc:call({}, erlang, node, [])", q(&bn))).await?, bn);
    let gname = unique("g");
    assert_eq!(c.eval(&format!("global:register_name({gname}, self())")).await?, "yes");
    for n in [&mut a, &mut b] {
        assert_eq!(n.eval(&format!("global:sync(), node(global:whereis_name({gname}))")).await?, cn);
    }
    // Every gateway relays to both others.
    for h in &cluster.hosts {
        let st = h.status().await?;
        assert_eq!(strings(&st, "peers").len(), 2, "{st}");
    }
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elixir_node_takes_part() -> Result<()> {
    let have_elixir = std::process::Command::new("elixir")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_elixir {
        eprintln!("elixir is not installed (apt-get install -y elixir): skipped");
        return Ok(());
    }
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut x = cluster.erl(1, "x", &[]).await?;
    let xn = x.name.clone();
    assert!(x.eval("edist_fabric_t:start_server(kv)").await?.starts_with('<'));
    assert_eq!(x.eval("gen_server:call(kv, {put, k, 42})").await?, "ok");

    let t = tools()?;
    let e = unique("e");
    let script = format!(
        r#"t = :"{xn}"
IO.puts("ping #{{inspect(Node.ping(t))}}")
IO.puts("node #{{inspect(:rpc.call(t, :erlang, :node, []))}}")
IO.puts("reverse #{{inspect(:rpc.call(t, :lists, :reverse, [[1, 2, 3]]))}}")
IO.puts("genserver #{{inspect(GenServer.call({{:kv, t}}, {{:get, :k}}))}}")
IO.puts("back #{{inspect(:rpc.call(t, :rpc, :call, [node(), String, :upcase, ["abc"]]))}}")
"#
    );
    let mut cmd = cluster.host(0)?.ns.command("elixir");
    cmd.arg("--erl")
        .arg(format!(
            "{} -kernel inet_dist_use_interface {{127,0,0,1}} -pa {}",
            t.flags.join(" "),
            t.helper_dir.display()
        ))
        .args(["--sname", &e, "--cookie", &cluster.cookie, "-e", &script])
        .env("ERL_EPMD_PORT", "1")
        .env_remove("ERL_FLAGS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("spawning elixir")?;
    let (mut out, mut err) = (child.stdout.take().context("stdout")?, child.stderr.take().context("stderr")?);
    let (mut o, mut e_) = (Vec::new(), Vec::new());
    let status = timeout(Duration::from_secs(60), async {
        let (r1, r2) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e_));
        r1?;
        r2?;
        child.wait().await
    })
    .await
    .context("elixir still running after 60 s")??;
    let text = format!("{}{}", String::from_utf8_lossy(&o), String::from_utf8_lossy(&e_));
    assert!(status.success(), "{text}");
    let line = |k: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{k} "))).unwrap_or("<missing>").to_owned();
    assert_eq!(line("ping"), ":pong", "{text}");
    assert_eq!(line("node"), format!(":{xn}"), "{text}");
    assert_eq!(line("reverse"), "[3, 2, 1]", "{text}");
    assert_eq!(line("genserver"), "42", "{text}");
    assert_eq!(line("back"), "\"ABC\"", "{text}");
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_both_ways_fabric_and_plain_otp() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 100 * MB;
    let cluster = Cluster::start(2).await?;

    // Through the fabric.
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    assert_eq!(b.eval("edist_fabric_t:start_sink()").await?, "ok");
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b.name))).await?, "pong");
    let r = a.eval_within(&format!("edist_fabric_t:bulk({}, {SIZE})", q(&b.name)), Duration::from_secs(300)).await?;
    let (f_there, f_back) = bulk_result(&r, SIZE)?;
    drop((a, b));

    // Plain OTP between the same two namespaces: epmd in each, nodes on the veth addresses.
    let t = tools()?;
    let mut epmds = Vec::new();
    for h in &cluster.hosts {
        let mut cmd = h.ns.command("epmd");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        epmds.push(cmd.spawn().context("spawning epmd")?);
        cluster
            .wait(&format!("epmd on {}", h.gw_name), || async move {
                Ok(h.ns.command("epmd").arg("-names").output().await.map(|o| o.status.success()).unwrap_or(false))
            })
            .await?;
    }
    let plain = |i: usize, prefix: &str| -> Result<(Command, String)> {
        let h = cluster.host(i)?;
        let name = format!("{}@{}", unique(prefix), h.ip);
        let mut cmd = h.ns.command("erl");
        cmd.args(["-name", &name, "-setcookie", &cluster.cookie, "-start_epmd", "false", "-pa"]).arg(&t.helper_dir);
        Ok((cmd, name))
    };
    let (cmd, name) = plain(0, "p")?;
    let mut p = Node::spawn(cmd, name, &cluster.dir.join("p.stderr")).await?;
    let (cmd, name) = plain(1, "q")?;
    let mut pq = Node::spawn(cmd, name, &cluster.dir.join("q.stderr")).await?;
    assert_eq!(pq.eval("edist_fabric_t:start_sink()").await?, "ok");
    assert_eq!(p.eval(&format!("net_adm:ping({})", q(&pq.name))).await?, "pong");
    let r = p.eval_within(&format!("edist_fabric_t:bulk({}, {SIZE})", q(&pq.name)), Duration::from_secs(300)).await?;
    let (p_there, p_back) = bulk_result(&r, SIZE)?;
    eprintln!(
        "100 MB message, a->b then echoed b->a: edist fabric {f_there:.0} / {f_back:.0} MB/s; \
         plain OTP over the veth {p_there:.0} / {p_back:.0} MB/s{}",
        if cfg!(debug_assertions) { " (edist gateways are a debug build)" } else { "" }
    );
    drop((p, pq, epmds));
    cluster.passed();
    Ok(())
}

/// A gateway nobody can dial (host 2 sits on a link of its own behind host 1, whose gateway
/// relays for it): host 0's nodes still know its nodes and reach them through the relay, both
/// ways, a 20 MB message included (its lanes are forwarded too), and host 2's own policy holds
/// for host 0's nodes (its config gives gw-0 a role that may spawn only `erlang:node/0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_be_dialled_is_reached_through_a_relay() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 20 * MB;
    let peer = |i, j| if i == 2 && j == 0 { "role = \"narrow\"\n".to_string() } else { String::new() };
    // A new role starts from `device`'s rules; this one is trusted but for spawns.
    let tail = |i| {
        if i == 2 {
            "\n[roles.narrow]\nbase = \"trusted\"\nspawn = [\"erlang:node/0\"]\n".to_string()
        } else {
            String::new()
        }
    };
    let setup = Setup { behind: Some((2, 1)), peer: Some(&peer), tail: Some(&tail), ..Setup::default() };
    let cluster = Cluster::start_with(3, setup).await?;
    // gw-2 has its link to the relay only; gw-0 has no route to it at all.
    for (i, want) in [(0, vec!["gw-1"]), (1, vec!["gw-0", "gw-2"]), (2, vec!["gw-1"])] {
        let (c, want) = (&cluster, &want);
        cluster
            .wait(&format!("gw-{i}'s links {want:?}"), || async move {
                Ok(c.peers(i).await.map(|p| p == *want).unwrap_or(false))
            })
            .await?;
    }
    let hidden = cluster.host(2)?.ip.to_string();
    let route = cluster.host(0)?.ns.command("ip").args(["route", "get", &hidden]).output().await?;
    ensure!(!route.status.success(), "host 0 has a route to the hidden host {hidden}");
    // `erl` waits until every gateway knows the node: gw-0 learns n's through the relay.
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut n = cluster.erl(2, "n", &[]).await?;
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&n.name))).await?, "pong");
    assert_eq!(n.eval(&format!("rpc:call({}, erlang, node, [])", q(&a.name))).await?, a.name);
    assert_eq!(n.eval("edist_fabric_t:start_sink()").await?, "ok");
    let r = a.eval_within(&format!("edist_fabric_t:bulk({}, {SIZE})", q(&n.name)), Duration::from_secs(120)).await?;
    let (there, back) = bulk_result(&r, SIZE)?;
    eprintln!("relay: 20 MB a->n {there:.0} MB/s, back {back:.0} MB/s");
    // gw-2's policy for gw-0's nodes, though they come through gw-1: only erlang:node/0.
    assert_eq!(a.eval(&format!("rpc:call({}, erlang, node, [])", q(&n.name))).await?, n.name);
    let r = a.eval(&format!("rpc:call({}, os, cmd, [\"id\"])", q(&n.name))).await?;
    ensure!(r == "{badrpc,{'EXIT',edist_refused}}", "os:cmd from gw-0's node through the relay: {r}");
    let st = cluster.host(2)?.status().await?;
    ensure!(refusals(&st).iter().any(|(peer, _, n)| peer == "gw-0" && *n > 0), "refusals at gw-2: {st}");
    cluster.passed();
    Ok(())
}

/// The TLS-over-TCP transport carries what QUIC does: ping, rpc both ways, a 20 MB message there
/// and back (checked), and a frozen gateway is nodedown within 2 s (keep-alives over the TCP
/// link, as QUIC's). The whole suite also runs over it with `EDIST_TEST_TRANSPORT=tcp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_over_tcp_carries_the_cluster() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const SIZE: usize = 20 * MB;
    let mut cluster = Cluster::start_with(2, Setup { transport: Some("tcp"), ..Setup::default() }).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b.name))).await?, "pong");
    assert_eq!(b.eval(&format!("rpc:call({}, erlang, node, [])", q(&a.name))).await?, a.name);
    assert_eq!(b.eval("edist_fabric_t:start_sink()").await?, "ok");
    let r = a.eval_within(&format!("edist_fabric_t:bulk({}, {SIZE})", q(&b.name)), Duration::from_secs(120)).await?;
    let (there, back) = bulk_result(&r, SIZE)?;
    eprintln!("tcp: 20 MB a->b {there:.0} MB/s, back {back:.0} MB/s");
    let st = cluster.host(0)?.status().await?;
    ensure!(strings(&st, "peers") == ["gw-1"], "gw-0: {st}");
    // The gateway freezes (SIGSTOP: no FIN, no RST, just silence): its keep-alives stop and
    // the link is declared dead after the idle timeout.
    a.watch_nodedown(&b.name).await?;
    let pid = cluster.hosts[1].gateway.as_ref().and_then(|g| g.id()).context("gw-1 not running")?;
    let stopped = now_us();
    ensure!(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status()?.success());
    let seen = a.nodedown_at(&b.name, Duration::from_secs(10)).await?;
    eprintln!("tcp: nodedown on a {:.1} ms after SIGSTOP of host B's gateway", ms(seen - stopped));
    assert!(seen - stopped > 1_000_000, "nodedown after {:.1} ms: before the idle timeout", ms(seen - stopped));
    assert!(seen - stopped < 2_000_000, "nodedown took {:.1} ms", ms(seen - stopped));
    cluster.hosts[1].kill_gateway().await?;
    cluster.passed();
    Ok(())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// Node a on host 0, connected to "stalled" and "lively" on host 1 (to be stopped, and not);
/// with the OS pid of the first, for `kill`.
async fn stalled_and_lively(cluster: &Cluster) -> Result<(Node, Node, Node, String)> {
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b1 = cluster.erl(1, "stalled", &[]).await?;
    let b2 = cluster.erl(1, "lively", &[]).await?;
    for b in [&b1, &b2] {
        assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b.name))).await?, "pong");
    }
    let os_pid = b1.eval("os:getpid()").await?.trim_matches('"').to_string();
    Ok((a, b1, b2, os_pid))
}

/// A node that stops reading (SIGSTOP) slows only the senders towards it, and the gateways
/// buffer little for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_slows_only_its_own_senders_and_memory_stays_bounded() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let (mut a, b1, b2, os_pid) = stalled_and_lively(&cluster).await?;
    let (qb1, qb2) = (q(&b1.name), q(&b2.name));
    let gw_pids: Vec<u32> = (0..2)
        .map(|i| cluster.host(i).ok().and_then(|h| h.gateway.as_ref()).and_then(|c| c.id()).context("gateway pid"))
        .collect::<Result<_>>()?;
    let rss_before: Vec<u64> = gw_pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
    // b1 stops reading (SIGSTOP) while a pushes 400 MB at it.
    ensure!(std::process::Command::new("kill").args(["-STOP", &os_pid]).status()?.success());
    a.eval(&format!(
        "register(flood, spawn(fun() -> B = binary:copy(<<1>>, 1 bsl 20), \
           [{{sink, {qb1}}} ! {{N, B}} || N <- lists:seq(1, 400)] end)), ok"
    ))
    .await?;
    // The flood soon blocks (its connection is busy); b2 keeps answering promptly meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = a.eval("element(2, erlang:process_info(whereis(flood), status))").await?;
        if st == "suspended" {
            break;
        }
        ensure!(Instant::now() < deadline, "the flood towards a stopped node never blocked ({st})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(a.eval(&format!("rpc:call({qb2}, erlang, node, [])")).await?, b2.name);
        ensure!(t.elapsed() < Duration::from_secs(1), "rpc to the lively node took {:?}", t.elapsed());
    }
    let _ = std::process::Command::new("kill").args(["-CONT", &os_pid]).status();
    for (i, (pid, before)) in gw_pids.iter().zip(rss_before).enumerate() {
        let grown = rss_kib(*pid)?.saturating_sub(before);
        eprintln!("fabric: gateway {i} RSS grew by {grown} KiB while 400 MB were pushed at a stopped node");
        ensure!(grown < 128 * 1024, "gateway {i} buffered {grown} KiB for a stalled receiver");
    }
    cluster.passed();
    Ok(())
}

/// A node that hangs up on a far node that stopped reading ends its relay, although its gateway
/// does not read from it meanwhile (the relay is paused, as OTP's busy distribution port towards
/// a frozen node): the gateway looks for the hang-up every 500 ms. Both gateways show the state
/// in `edist status` until then: the frozen node as stalled at its gateway, the relay as paused
/// at the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_while_the_relay_is_paused_ends_it() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let (mut a, b1, b2, os_pid) = stalled_and_lively(&cluster).await?;
    let (qb1, qb2) = (q(&b1.name), q(&b2.name));
    let signal = |sig: &str| std::process::Command::new("kill").args([sig, &os_pid]).status();
    let count = |st: &Value, what: &str| {
        st["metrics"]["traffic"].as_array().map_or(0, |t| t.iter().map(|p| p[what].as_u64().unwrap_or(0)).sum::<u64>())
    };
    // a's end of its connection to b1: the queue of its distribution port, and the bytes its
    // socket has not handed to a's gateway yet (`ss` in a's host).
    let ctrl = format!("element(2, lists:keyfind({qb1}, 1, erlang:system_info(dist_ctrl)))");
    let queue = format!("element(2, erlang:port_info({ctrl}, queue_size))");
    let sport = a.eval(&format!("element(2, element(2, inet:sockname({ctrl})))")).await?;
    let ns = cluster.host(0)?.ns.name.clone();
    let unsent = || -> Result<String> {
        let filter = format!("sport = :{sport}");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "ss", "-Htn", "state", "established", &filter])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).unwrap_or("?").to_string())
    };
    for attempt in 1.. {
        ensure!(signal("-STOP")?.success());
        // 8 MB: more than the kernel's buffers towards b1 take, so its gateway waits on b1 and
        // says so; less than a's gateway reads before it hears (its relay budget is 32 MB). One
        // message per process: a sender the plug holds back has sent its message already.
        a.eval(&format!(
            "B = binary:copy(<<1>>, 1 bsl 20), [spawn(fun() -> {{sink, {qb1}}} ! {{N, B}} end) || N <- lists:seq(1, 8)], ok"
        ))
        .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (stalled, paused) = (
                count(&cluster.host(1)?.status().await?, "stalled"),
                count(&cluster.host(0)?.status().await?, "paused"),
            );
            if (stalled, paused) == (1, 1) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "stalled at b's gateway {stalled}, paused at a's {paused} (want 1 and 1)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The case under test: all of the flood is with a's gateway, so a's hang-up reaches it
        // (a hang-up queued behind bytes a paused gateway does not read waits for them, as it
        // would in front of a frozen node over one OTP connection). On a busy machine the
        // pause can come before a's gateway read it all: b1 then reads, and the flood goes again.
        let t = Instant::now();
        let (mut q, mut u) = (a.eval(&queue).await?, unsent()?);
        while (q.as_str(), u.as_str()) != ("0", "0") && t.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (q, u) = (a.eval(&queue).await?, unsent()?);
        }
        if (q.as_str(), u.as_str()) == ("0", "0") {
            break;
        }
        ensure!(attempt < 3, "a still holds some of the flood: {q} bytes in its port, {u} in its socket");
        eprintln!(
            "fabric: paused before a's gateway read the whole flood ({q} bytes in a's port, {u} in its socket): again"
        );
        ensure!(signal("-CONT")?.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&cluster.host(0)?.status().await?, "paused") != 0 || a.eval(&queue).await? != "0" {
            ensure!(Instant::now() < deadline, "b1 did not catch up after it went on");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // b2, behind the same gateways, is not held up meanwhile.
    assert_eq!(a.eval(&format!("rpc:call({qb2}, erlang, node, [])")).await?, b2.name);
    assert_eq!(a.eval(&format!("erlang:disconnect_node({qb1})")).await?, "true");
    let hung_up = Instant::now();
    loop {
        let st = cluster.host(0)?.status().await?;
        if (st["relays_open"].as_u64(), count(&st, "paused")) == (Some(1), 0) {
            break;
        }
        // What a sent had its chance to reach b1 first: bulk lanes that b1 does not read take
        // up to CLOSE_DRAIN (5 s) to be given up, and their writers as long again.
        ensure!(
            hung_up.elapsed() < Duration::from_secs(15),
            "relay to the stopped node still open: {}",
            st["relays_open"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("fabric: relay paused towards a stopped node ended {:?} after its node hung up", hung_up.elapsed());
    let _ = signal("-CONT");
    cluster.passed();
    Ok(())
}

/// Ticks cross the fabric as they would one OTP connection: between nodes with `net_ticktime`
/// 4 s, an idle relayed connection stays up for three times that on the nodes' own ticks alone
/// (each gateway relays its node's ticks as a small control frame and ticks its node only with
/// those), and no distribution packet moves. A node that hangs (SIGSTOP) stops ticking, so
/// the far node's tick timer sees the silence as OTP would and reports `net_tick_timeout`
/// within 1.25 ticktimes of the hang, before the 1.5 of erl_distribution_SUITE's
/// `monitor_nodes_nodedown_reason`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_cross_and_a_hung_node_is_noticed_as_over_one_connection() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let local = |_| "net_ticktime = 4\n".to_string();
    let cluster = Cluster::start_with(2, Setup { local: Some(&local), ..Setup::default() }).await?;
    let tick = ["-kernel", "net_ticktime", "4"];
    let mut a = cluster.erl(0, "a", &tick).await?;
    let mut b = cluster.erl(1, "b", &tick).await?;
    let qb = q(&b.name);
    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    a.watch_nodedown(&b.name).await?;
    // What follows a new connection (global's sync) settles first.
    sleep(Duration::from_secs(3)).await;
    let totals = |st: &Value| (st["bytes_in"].as_u64().unwrap_or(0), st["bytes_out"].as_u64().unwrap_or(0));
    let before = [totals(&cluster.host(0)?.status().await?), totals(&cluster.host(1)?.status().await?)];
    sleep(Duration::from_secs(12)).await;
    let after = [totals(&cluster.host(0)?.status().await?), totals(&cluster.host(1)?.status().await?)];
    assert_eq!(before, after, "relayed bytes (in, out) per gateway moved on an idle connection");
    assert_eq!(a.eval(&format!("nodes() =:= [{qb}]")).await?, "true", "the idle connection went down");
    ensure!(a.events.iter().all(|l| !l.starts_with("nodedown")), "nodedown on an idle connection: {:?}", a.events);

    let os_pid = b.eval("os:getpid()").await?.trim_matches('"').to_string();
    ensure!(std::process::Command::new("kill").args(["-STOP", &os_pid]).status()?.success());
    let stopped = now_us();
    let seen = a.nodedown(&b.name, Duration::from_secs(30)).await;
    let _ = std::process::Command::new("kill").args(["-CONT", &os_pid]).status();
    let (reason, at) = seen?;
    let delay = at - stopped;
    eprintln!("fabric: nodedown ({reason}) {:.1} ms after the far node hung (net_ticktime 4 s)", ms(delay));
    // As over one OTP connection: the far node's own tick timer decides, on the hung node's
    // last tick, so the reason is OTP's and it comes within 1.25 ticktimes (plus a margin).
    assert_eq!(reason, "net_tick_timeout");
    assert!(delay < 5_800_000, "a hung node was noticed only after {:.1} ms", ms(delay));
    cluster.passed();
    Ok(())
}

/// `net_kernel:set_net_ticktime/1` at run time takes effect across the fabric: the gateways keep
/// the default (60 s) in their config, the nodes switch to 4 s, and a hung node is then noticed
/// by its peer after about that, with OTP's reason — not after the configured minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticktime_changed_at_run_time_takes_effect_across_the_fabric() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let qb = q(&b.name);
    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    for n in [&mut a, &mut b] {
        // No transition period: the new ticktime holds at once.
        assert_eq!(n.eval("net_kernel:set_net_ticktime(4, 0)").await?, "change_initiated");
    }
    a.watch_nodedown(&b.name).await?;
    // The plugs report the new ticktime within a second or two; the connection stays up.
    sleep(Duration::from_secs(8)).await;
    assert_eq!(a.eval(&format!("nodes() =:= [{qb}]")).await?, "true", "the connection went down");
    let os_pid = b.eval("os:getpid()").await?.trim_matches('"').to_string();
    ensure!(std::process::Command::new("kill").args(["-STOP", &os_pid]).status()?.success());
    let stopped = now_us();
    let seen = a.nodedown(&b.name, Duration::from_secs(40)).await;
    let _ = std::process::Command::new("kill").args(["-CONT", &os_pid]).status();
    let (reason, at) = seen?;
    let delay = at - stopped;
    eprintln!("fabric: nodedown ({reason}) {:.1} ms after the far node hung (ticktime 4 s set at run time)", ms(delay));
    assert_eq!(reason, "net_tick_timeout");
    // With the configured 60 s the gateway would have waited 30 s before telling the far side.
    assert!(delay < 15_000_000, "a hung node was noticed only after {:.1} ms", ms(delay));
    cluster.passed();
    Ok(())
}

/// A node that ticks too slowly for its peer is disconnected by the peer, as over one OTP
/// connection (erl_distribution_SUITE `tick_change`): b keeps `net_ticktime` 24 s (it writes
/// every 6 s when idle), a has 2 s (it counts a peer silent for 2 s as gone). The gateways
/// tell each other their nodes' ticktimes, so b's gateway judges b's silence by a's ticktime
/// and a's gateway stops ticking towards a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ticking_too_slowly_for_its_peer_is_disconnected_as_in_otp() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &["-kernel", "net_ticktime", "2"]).await?;
    let b = cluster.erl(1, "b", &["-kernel", "net_ticktime", "24"]).await?;
    let qb = q(&b.name);
    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    a.watch_nodedown(&b.name).await?;
    let watched = now_us();
    // Without the far ticktime, a's gateway would tick towards a for ever (b is not hung).
    let (reason, at) = a.nodedown(&b.name, Duration::from_secs(30)).await?;
    eprintln!("fabric: nodedown ({reason}) {:.1} ms after watching (ticktimes 2 s and 24 s)", ms(at - watched));
    assert_eq!(reason, "net_tick_timeout");
    cluster.passed();
    Ok(())
}

/// No gateway names another: each finds the others through one DNS name (a hosts file in each
/// namespace) that resolves to every gateway's address, skips itself, and links to whoever
/// answers with a cluster certificate. The nodes then reach each other as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_find_each_other_through_a_dns_seed() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(3, Setup { dns_seeds: true, ..Setup::default() }).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let b = cluster.erl(1, "b", &[]).await?;
    let mut c = cluster.erl(2, "c", &[]).await?;
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b.name))).await?, "pong");
    assert_eq!(c.eval(&format!("rpc:call({}, erlang, node, [])", q(&a.name))).await?, a.name);
    // Seeds are dialled again every 2 s, but not an address that already has a link (nor our
    // own): the links that came up stay the only ones.
    let ups = |st: &Value| -> u64 {
        st.pointer("/metrics/link_events")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|e| e[1] == "up").filter_map(|e| e[2].as_u64()).sum())
            .unwrap_or(0)
    };
    // (Over TCP, a link a seed dialled in to us shows its source port, not its listening one,
    // so the first seed round after it may dial that gateway once more; wait that round out.)
    sleep(Duration::from_millis(2500)).await;
    let mut before = Vec::new();
    for i in 0..3 {
        let st = cluster.host(i)?.status().await?;
        ensure!(strings(&st, "peers").len() == 2, "gw-{i}: {st}");
        before.push(ups(&st));
    }
    sleep(Duration::from_secs(5)).await;
    for (i, n) in before.iter().enumerate() {
        let st = cluster.host(i)?.status().await?;
        ensure!((2..=4).contains(n) && ups(&st) == *n, "gw-{i}: links up {n}, then {}: {st}", ups(&st));
    }
    cluster.passed();
    Ok(())
}

/// Membership instead of a mesh: four gateways whose only seed is gw-0 learn of each other
/// and of every node through SWIM, with no link between them; a link opens when two nodes
/// connect, only between their two gateways, closes once it has carried nothing for the idle
/// time (the registry stays), and opens again on the next connection. A gateway killed is
/// declared dead by the others and its nodes are forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_spreads_the_registry_and_links_open_on_traffic_and_close_when_idle() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_with(4, Setup { membership: Some(1500), ..Setup::default() }).await?;
    // `erl` waits until every gateway knows the node: the registry spread without links.
    let mut a = cluster.erl(0, "a", &[]).await?;
    let b = cluster.erl(1, "b", &[]).await?;
    let mut c = cluster.erl(2, "c", &[]).await?;
    let d = cluster.erl(3, "d", &[]).await?;
    for i in 0..4 {
        ensure!(
            cluster.peers(i).await?.is_empty(),
            "gw-{i} has links before any traffic: {:?}",
            cluster.peers(i).await?
        );
    }
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b.name))).await?, "pong");
    ensure!(
        cluster.peers(0).await? == ["gw-1"] && cluster.peers(1).await? == ["gw-0"],
        "{:?} {:?}",
        cluster.peers(0).await?,
        cluster.peers(1).await?
    );
    ensure!(cluster.peers(2).await?.is_empty() && cluster.peers(3).await?.is_empty(), "links between idle gateways");
    assert_eq!(c.eval(&format!("rpc:call({}, erlang, node, [])", q(&d.name))).await?, d.name);
    ensure!(cluster.peers(2).await? == ["gw-3"], "gw-2: {:?}", cluster.peers(2).await?);

    // The nodes disconnect: the link carries nothing and closes; the registry stays.
    let t = Instant::now();
    assert_eq!(a.eval(&format!("erlang:disconnect_node({})", q(&b.name))).await?, "true");
    cluster
        .wait("gw-0's idle link to close", || async {
            Ok(cluster.peers(0).await?.is_empty() && cluster.peers(1).await?.is_empty())
        })
        .await?;
    eprintln!("idle link closed {:.1} s after the disconnect (link_idle_ms 1500)", t.elapsed().as_secs_f64());
    ensure!(t.elapsed() >= Duration::from_millis(1400), "the link closed before its idle time");
    ensure!(cluster.peers(2).await? == ["gw-3"], "gw-2's link, still in use, closed too");
    let known = remote_names(&cluster.host(0)?.status().await?);
    ensure!(known.contains(&b.name), "gw-0 forgot {} with the link: {known:?}", b.name);
    // The next connection opens it again.
    assert_eq!(a.eval(&format!("rpc:call({}, erlang, node, [])", q(&b.name))).await?, b.name);
    ensure!(cluster.peers(0).await? == ["gw-1"], "gw-0: {:?}", cluster.peers(0).await?);

    // gw-3 dies: membership tells the others, who forget d.
    let t = Instant::now();
    cluster.hosts[3].kill_gateway().await?;
    for i in 0..3 {
        let (h, d) = (cluster.host(i)?, &d.name);
        cluster
            .wait(&format!("gw-{i} to forget {d}"), || async move {
                let st = h.status().await?;
                Ok(!remote_names(&st).contains(d))
            })
            .await?;
    }
    eprintln!("gw-3 declared dead everywhere {:.1} s after SIGKILL", t.elapsed().as_secs_f64());
    cluster.passed();
    Ok(())
}

/// With membership, a node's registration reaches the other gateways a little after the node is
/// up (a gossiped digest, then a pull). A lookup in that window is asked of the fabric instead
/// of failing: each round starts c (host 2), a (host 0) and b (host 1) without waiting for any
/// gateway but their own to know them, then a pings b at once — and c, which `global` then
/// connects to b transitively — and a registers a global name that c must see right after.
/// A name nobody has still fails, and fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_do_not_fail_while_membership_spreads_the_registry() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Links close 300 ms after their last relayed connection: each round starts without any,
    // so nothing but membership tells a gateway about another's new node.
    let cluster = Cluster::start_with(3, Setup { membership: Some(300), ..Setup::default() }).await?;
    // Membership has converged once a node of every host is known everywhere.
    let mut canaries = vec![];
    for i in 0..3 {
        canaries.push(cluster.erl(i, "k", &[]).await?);
    }
    for round in 0..4 {
        cluster
            .wait("the links of the last round to close", || async {
                for i in 0..3 {
                    if !cluster.peers(i).await?.is_empty() {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await?;
        let c = cluster.erl_as(2, Naming::short("c"), &[]).await?;
        let mut a = cluster.erl_as(0, Naming::short("a"), &[]).await?;
        let b = cluster.erl_as(1, Naming::short("b"), &[]).await?;
        let (qb, qc) = (q(&b.name), q(&c.name));
        let known = remote_names(&cluster.host(0)?.status().await?).contains(&b.name);
        let (r, ms) = timed_result(&a.eval(&timed(&format!("net_adm:ping({qb})"))).await?)?;
        eprintln!("round {round}: ping from a to b, just started: {r} after {ms} ms (gw-0 knew b before: {known})");
        ensure!(r == "pong", "round {round}: a could not reach b, up on host 1: {r}");
        assert_eq!(a.eval(&format!("net_adm:ping({qc})")).await?, "pong", "round {round}");
        // global on a syncs with b and c, which it makes connect to each other: c dials b, as
        // new to gw-2 as it was to gw-0. Had that failed, c would drop a (global prevents
        // overlapping partitions) and not see the name a registers.
        assert_eq!(a.eval("global:sync()").await?, "ok", "round {round}");
        let g = unique("g");
        assert_eq!(a.eval(&format!("global:register_name({g}, self())")).await?, "yes", "round {round}");
        let mut c = c;
        let seen =
            c.eval(&format!("case global:whereis_name({g}) of undefined -> undefined; P -> node(P) end")).await?;
        ensure!(seen == printed(&a.name), "round {round}: c sees {g} at {seen}, not at {}", a.name);
        // b is connected to c (global connected them), and a to both.
        // (global connects them in the background: give it a few seconds on a loaded machine.)
        let both = format!(
            "edist_fabric_t:wait(fun() -> N = nodes(), case lists:member({qb}, N) andalso lists:member({}, N) of \
             true -> {{ok, lists:sort(N)}}; false -> global:sync(), no end end, 10000)",
            q(&a.name)
        );
        let nodes = c.eval(&both).await?;
        ensure!(nodes.contains(&printed(&b.name)) && nodes.contains(&printed(&a.name)), "round {round}: c has {nodes}");
        drop((a, b, c));
    }
    // A node that is nowhere: pang, without waiting out the bound.
    let k = &mut canaries[0];
    let (r, ms) = timed_result(&k.eval(&timed(&format!("net_adm:ping({})", q(&format!("nobody@{}", host()))))).await?)?;
    eprintln!("ping of a node that is nowhere: {r} after {ms} ms");
    ensure!(r == "pang" && ms < 500, "ping of a node that is nowhere: {r} after {ms} ms");
    cluster.passed();
    Ok(())
}

/// The fabric port under attack: host 2's gateway has an expired certificate, and from host
/// 1's namespace come a QUIC client without a certificate and one that completes TLS (with a
/// valid certificate) but never says hello. Each is refused and counted at gw-0, while the
/// relayed connection between host 0 and host 1 carries on undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_anonymous_and_half_open_fabric_peers_are_refused_while_traffic_flows() -> Result<()> {
    let _serial = SERIAL.lock().await;
    if test_transport() != "quic" {
        eprintln!("skipped: its probes speak QUIC (they run in the QUIC pass of the suite)");
        return Ok(());
    }
    let expired = |i| i == 2;
    let setup = Setup { expired: Some(&expired), partial_mesh: true, ..Setup::default() };
    let cluster = Cluster::start_with(3, setup).await?;
    let (h0, h1, h2) = (cluster.host(0)?, cluster.host(1)?, cluster.host(2)?);
    cluster
        .wait("gw-0 and gw-1 to link", || async {
            Ok(h0.status().await.map(|st| strings(&st, "peers") == ["gw-1"]).unwrap_or(false))
        })
        .await?;
    let mut srv = cluster.erl_local(0, "srv", &[]).await?;
    let mut good = cluster.erl_local(1, "good", &[]).await?;
    cluster.wait_known_by(0, &good.name, 1).await?;
    let stale = cluster.erl_local(2, "stale", &[]).await?;
    let qs = q(&srv.name);
    assert_eq!(good.eval(&format!("net_adm:ping({qs})")).await?, "pong");
    good.watch_nodedown(&srv.name).await?;
    assert_eq!(srv.eval(&format!("net_adm:ping({})", q(&stale.name))).await?, "pang");

    let fabric = format!("{}:{FABRIC_PORT}", h0.ip);
    let certs = cluster.dir.join("certs");
    let probe = |kind: &str| {
        let mut cmd = h1.ns.command(&std::env::current_exe().unwrap_or_default().to_string_lossy());
        cmd.args(["--exact", "fabric_probe", "--ignored", "--nocapture", "--test-threads=1"])
            .env("EDIST_PROBE", kind)
            .env("EDIST_PROBE_ADDR", &fabric)
            .env("EDIST_PROBE_CERTS", &certs);
        cmd.output()
    };
    let nocert = probe("nocert").await?;
    let out = String::from_utf8_lossy(&nocert.stdout);
    ensure!(out.contains("probe: refused"), "a client without a certificate: {out}");
    let silent = probe("silent").await?;
    let out = String::from_utf8_lossy(&silent.stdout);
    ensure!(out.contains("probe: closed with code 4"), "a silent client: {out}");
    eprintln!(
        "fabric: {}",
        out.lines().filter_map(|l| l.split_once("probe: ").map(|x| x.1)).collect::<Vec<_>>().join("; ")
    );

    // Meanwhile and after: the relayed connection carries on.
    for i in 0..20 {
        let r = good.eval(&format!("rpc:call({qs}, erlang, node, [])")).await?;
        ensure!(r == srv.name, "rpc {i} after the attacks: {r}");
    }
    ensure!(good.events.iter().all(|l| !l.starts_with("nodedown")), "nodedown during the attacks: {:?}", good.events);
    let st0 = h0.status().await?;
    ensure!(strings(&st0, "peers") == ["gw-1"], "gw-0 linked to an expired or anonymous peer: {st0}");
    let r0 = refusals(&st0);
    let handshake_refusals = |ip: &Ipv4Addr| {
        let ip = ip.to_string();
        r0.iter().filter(|(p, r, _)| *p == ip && r == "handshake").map(|(_, _, n)| n).sum::<u64>()
    };
    ensure!(handshake_refusals(&h2.ip) > 0, "the expired gateway was not refused: {st0}");
    ensure!(handshake_refusals(&h1.ip) >= 2, "the probes were not both refused: {st0}");
    let log = std::fs::read_to_string(&h0.log)?;
    ensure!(log.contains("peer sent no certificates"), "no log line for the anonymous client");
    cluster.passed();
    Ok(())
}

/// Not a test on its own: the QUIC client that
/// `expired_anonymous_and_half_open_fabric_peers_are_refused_while_traffic_flows` runs inside a
/// host's namespace. `EDIST_PROBE=nocert` dials without a client certificate;
/// `EDIST_PROBE=silent` completes TLS as gw-1 and then says nothing.
#[tokio::test]
#[ignore = "run by the hostile fabric peer test, in a network namespace"]
async fn fabric_probe() -> Result<()> {
    use edist_gateway::fabric::identity::{crypto_provider, TlsIdentity};
    use edist_gateway::fabric::options::QuicOptions;
    use edist_gateway::fabric::quic;
    use edist_gateway::fabric::tls::ALPN;
    let Ok(kind) = std::env::var("EDIST_PROBE") else { return Ok(()) };
    let addr: std::net::SocketAddr = std::env::var("EDIST_PROBE_ADDR")?.parse()?;
    let certs = PathBuf::from(std::env::var("EDIST_PROBE_CERTS")?);
    let opts = QuicOptions::default();
    let any: std::net::SocketAddr = "0.0.0.0:0".parse()?;
    match kind.as_str() {
        "nocert" => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in edist_gateway::pki::load_certs(&certs.join(edist_gateway::pki::CA_CERT_FILE))? {
                roots.add(ca)?;
            }
            let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![ALPN.to_vec()];
            let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
            cfg.transport_config(Arc::new(quic::transport_config(&opts)?));
            let client = quinn::Endpoint::client(any)?;
            match timeout(Duration::from_secs(10), quic::dial_with_config(&client, cfg, addr, "gw-0", "gw-1")).await? {
                Ok(_) => println!("probe: linked without a certificate"),
                Err(e) => println!("probe: refused: {e}"),
            }
        }
        "silent" => {
            let id = TlsIdentity::load(&certs, "gw-1")?;
            let ep = quic::endpoint(any, &id, &opts)?;
            let conn = ep.connect(addr, "gw-0")?.await?;
            match timeout(Duration::from_secs(10), conn.closed()).await? {
                quinn::ConnectionError::ApplicationClosed(c) => println!("probe: closed with code {}", c.error_code),
                other => println!("probe: {other}"),
            }
        }
        other => bail!("unknown probe {other}"),
    }
    Ok(())
}

/// Host 1's gateway has the `device` role (from its certificate; host 0's config sets the
/// role's atom budget to 2000 and messages to 1 MiB); host 2's is trusted. Every attack of the
/// device node is refused at host 0's gateway — fast where Erlang would wait, logged, counted —
/// while its allowed traffic, and host 2's, flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_peer_is_held_to_its_role_and_limits() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // The role comes with host 1's certificate (`edist certs issue --role device`).
    let cert_args = |i| if i == 1 { vec!["--role".to_string(), "device".into()] } else { vec![] };
    let tail = |i| match i {
        0 => "\n[roles.device]\natom_budget = 2000\nmax_message = 1048576\n".into(),
        _ => String::new(),
    };
    let cluster =
        Cluster::start_with(3, Setup { cert_args: Some(&cert_args), tail: Some(&tail), ..Setup::default() }).await?;
    let mut srv = cluster.erl(0, "srv", &[]).await?;
    let mut dev = cluster.erl(1, "dev", &["+t", "4000000"]).await?;
    let mut other = cluster.erl(2, "other", &[]).await?;
    let qs = q(&srv.name);
    let r = srv
        .eval(
            "edist_fabric_t:start_server(kv), \
             register(cnt, spawn(fun L() -> receive {From, Id, _} -> From ! {cnt, Id}, L() end end)), \
             element(1, {ok, erlang:system_info(atom_count)})",
        )
        .await?;
    ensure!(r == "ok", "{r}");
    let atoms0: i64 = srv.eval("erlang:system_info(atom_count)").await?.parse()?;

    // Code execution: refused at once with an error, not a timeout.
    let t = Instant::now();
    let r = dev.eval(&format!("rpc:call({qs}, os, cmd, [\"id\"])")).await?;
    ensure!(r == "{badrpc,{'EXIT',edist_refused}}", "rpc:call os:cmd from a device: {r}");
    let r = dev.eval(&format!("catch erpc:call({qs}, erlang, halt, [])")).await?;
    ensure!(r.contains("edist_refused"), "erpc:call from a device: {r}");
    // A gen_server:call to a denied name fails fast too (its monitor is answered noproc).
    let r = dev.eval(&format!("catch gen_server:call({{init, {qs}}}, get_arguments, 10000)")).await?;
    ensure!(r.contains("noproc"), "gen_server:call to init from a device: {r}");
    ensure!(t.elapsed() < Duration::from_secs(5), "refusals took {:?}", t.elapsed());
    // Allowed: calls and sends to other registered names.
    assert_eq!(dev.eval(&format!("gen_server:call({{kv, {qs}}}, {{put, k, 42}})")).await?, "ok");
    assert_eq!(srv.eval("gen_server:call(kv, {get, k})").await?, "42");
    // Remote kill: refused, the process lives.
    ensure!(dev.eval("register(inbox, self())").await? == "true");
    let r = srv.eval(&format!("{{inbox, {}}} ! {{kv, whereis(kv)}}", q(&dev.name))).await?;
    ensure!(r.starts_with("{kv,"), "{r}");
    let r = dev.eval("receive {kv, P} -> exit(P, kill), ok after 5000 -> timeout end").await?;
    ensure!(r == "ok", "{r}");
    sleep(Duration::from_millis(300)).await;
    assert_eq!(srv.eval("is_pid(whereis(kv))").await?, "true");

    // Size, depth: refused; the message after them arrives.
    let r = dev
        .eval(&format!(
            "C = {{cnt, {qs}}}, C ! {{self(), big, binary:copy(<<7>>, 2000000)}}, \
             C ! {{self(), deep, lists:foldl(fun(_, A) -> [A] end, x, lists:seq(1, 200))}}, \
             C ! {{self(), small, x}}, \
             receive {{cnt, Id}} -> Id after 10000 -> timeout end"
        ))
        .await?;
    ensure!(r == "small", "first answer after the big and deep messages: {r}");

    // Atoms: 1,000 pass, then a million more are cut off at the budget.
    let r = dev
        .eval(&format!(
            "[{{kv, {qs}}} ! {{atoms, [list_to_atom(\"edist_a_\" ++ integer_to_list(I * 10 + J)) || J <- lists:seq(0, 9)]}} \
             || I <- lists:seq(0, 99)], ok"
        ))
        .await?;
    ensure!(r == "ok", "{r}");
    let r = dev
        .eval_within(
            &format!(
                "[{{kv, {qs}}} ! {{atoms, [list_to_atom(\"edist_b_\" ++ integer_to_list(I * 10000 + J)) || J <- lists:seq(0, 9999)]}} \
                 || I <- lists:seq(0, 99)], gen_server:call({{kv, {qs}}}, {{get, k}})"
            ),
            Duration::from_secs(120),
        )
        .await?;
    ensure!(r == "42", "{r}");
    let atoms1: i64 = srv.eval("erlang:system_info(atom_count)").await?.parse()?;
    ensure!(atoms1 - atoms0 >= 1000, "the allowed atoms did not arrive: {atoms0} -> {atoms1}");
    ensure!(atoms1 - atoms0 <= 2000 + 50, "atom table grew by {} (budget 2000)", atoms1 - atoms0);

    // Garbage on the fabric port (random datagrams, and ones that look like QUIC v1 Initials)
    // from the device's host: dropped, nobody else notices.
    let gw0 = cluster.host(0)?.ip.octets();
    let r = dev
        .eval(&format!(
            "{{ok, S}} = gen_udp:open(0, [binary]), A = {{{},{},{},{}}}, \
             [gen_udp:send(S, A, {FABRIC_PORT}, rand:bytes(1200)) || _ <- lists:seq(1, 3000)], \
             [gen_udp:send(S, A, {FABRIC_PORT}, <<16#C3, 1:32, 8, (rand:bytes(1194))/binary>>) || _ <- lists:seq(1, 3000)], \
             gen_udp:close(S)",
            gw0[0], gw0[1], gw0[2], gw0[3]
        ))
        .await?;
    ensure!(r == "ok", "{r}");

    // Refusals are counted by reason for the device's gateway only.
    let st = cluster.host(0)?.status().await?;
    let refusals = refusals(&st);
    for reason in ["spawn", "name", "signal", "size", "depth", "atoms"] {
        ensure!(refusals.iter().any(|(p, r, n)| p == "gw-1" && r == reason && *n >= 1), "no {reason} refusal: {st}");
    }
    ensure!(!refusals.iter().any(|(p, _, _)| p == "gw-2"), "the trusted peer was refused: {st}");
    let log = std::fs::read_to_string(&cluster.host(0)?.log)?;
    ensure!(log.contains("refused spawn of os:cmd/1"), "no log line for the refused rpc");

    // The trusted peer's node, meanwhile, may do everything.
    assert_eq!(other.eval(&format!("rpc:call({qs}, erlang, node, [])")).await?, srv.name);
    assert_eq!(other.eval(&format!("net_adm:ping({qs})")).await?, "pong");
    cluster.passed();
    Ok(())
}

/// [`metrics.refusals`] of a gateway's status: (peer, reason, count).
fn refusals(st: &Value) -> Vec<(String, String, u64)> {
    st.pointer("/metrics/refusals")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| Some((t.get(0)?.as_str()?.into(), t.get(1)?.as_str()?.into(), t.get(2)?.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The issue-16 acceptance test: host 1's gateway has the **built-in** `device` role (from its
/// certificate), host 0's config adds only an allow-list of one registered name (`kv`); host 2
/// is trusted. The device pings, calls and sends to `kv`, and uses a pid it was handed; it
/// cannot kill (link or exit), disconnect, register or lock global names, run code (rpc, erpc,
/// spawn, code_server, raw rex), hijack a group leader or stop the node; its atom flood stops
/// at the budget without locking its gateway out (a new node behind it still connects). The
/// server's `global:sync()` and the trusted node keep working; every refusal is answered fast
/// and shows in the log and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_device_role_pings_and_calls_and_can_do_nothing_else() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cert_args = |i| if i == 1 { vec!["--role".to_string(), "device".into()] } else { vec![] };
    let tail = |i| match i {
        0 => "\n[roles.device]\nallow_names = [\"kv\"]\n".into(),
        _ => String::new(),
    };
    let cluster =
        Cluster::start_with(3, Setup { cert_args: Some(&cert_args), tail: Some(&tail), ..Setup::default() }).await?;
    let mut srv = cluster.erl(0, "srv", &[]).await?;
    let mut dev = cluster.erl(1, "dev", &["+t", "4000000"]).await?;
    let mut other = cluster.erl(2, "other", &[]).await?;
    let (qs, qd, qo) = (q(&srv.name), q(&dev.name), q(&other.name));
    let r = srv.eval("edist_fabric_t:start_server(kv), ok").await?;
    ensure!(r == "ok", "{r}");
    // `{Result, Ms}` of `timed(...)`, the result itself possibly a tuple.
    let fast = |what: &str, r: &str, limit_ms: u64| -> Result<String> {
        let inner = r.strip_prefix('{').and_then(|r| r.strip_suffix('}')).with_context(|| r.to_string())?;
        let (res, ms) = inner.rsplit_once(',').with_context(|| r.to_string())?;
        let ms: u64 = ms.parse().with_context(|| r.to_string())?;
        ensure!(ms < limit_ms, "{what} took {ms} ms: {res}");
        Ok(res.to_string())
    };
    // The trusted node and the server, and global between them.
    assert_eq!(other.eval(&format!("net_adm:ping({qs})")).await?, "pong");
    assert_eq!(other.eval("global:register_name(edist_other, self())").await?, "yes");
    let r = srv.eval(&timed("global:sync()")).await?;
    ensure!(fast("the server's global:sync()", &r, 5000)? == "ok", "{r}");

    // Ping works, fast; the device is a hidden node for the server, and the server for it.
    let r = dev.eval(&timed(&format!("net_adm:ping({qs})"))).await?;
    ensure!(fast("ping from the device", &r, 3000)? == "pong", "{r}");
    let r = srv.eval(&format!("{{lists:member({qd}, nodes()), lists:member({qd}, nodes(hidden))}}")).await?;
    ensure!(r == "{false,true}", "the device is not hidden for the server: {r}");
    let r = dev.eval(&format!("{{lists:member({qs}, nodes()), lists:member({qs}, nodes(hidden))}}")).await?;
    ensure!(r == "{false,true}", "the server is not hidden for the device: {r}");

    // Calls and sends to the allowed name.
    assert_eq!(dev.eval(&format!("gen_server:call({{kv, {qs}}}, {{put, k, 42}})")).await?, "ok");
    assert_eq!(dev.eval(&format!("{{kv, {qs}}} ! {{note, 1}}")).await?, "{note,1}");
    assert_eq!(srv.eval("gen_server:call(kv, {get, k})").await?, "42");
    // A pid the server hands over is a capability: the device calls it directly.
    ensure!(dev.eval("register(inbox, self())").await? == "true");
    let r = srv.eval(&format!("{{inbox, {qd}}} ! {{kv, whereis(kv)}}")).await?;
    ensure!(r.starts_with("{kv,"), "{r}");
    let r = dev.eval("receive {kv, P} -> put(kv, P), ok after 5000 -> timeout end").await?;
    ensure!(r == "ok", "{r}");
    assert_eq!(dev.eval("gen_server:call(get(kv), {get, k})").await?, "42");
    let kv0 = srv.eval("whereis(kv)").await?;

    // Kill: by exit/2, by a link then a crash. The link is answered at once, as a link to a
    // process that is not there.
    ensure!(dev.eval("exit(get(kv), kill)").await? == "true");
    let r = dev
        .eval(&timed(
            "P = get(kv), Me = self(), \
             spawn(fun() -> process_flag(trap_exit, true), link(P), \
                            Me ! {linked, receive {'EXIT', P, X} -> X after 5000 -> timeout end} end), \
             receive {linked, X} -> X after 6000 -> none end",
        ))
        .await?;
    ensure!(fast("a refused link", &r, 2000)? == "noproc", "{r}");
    let r = dev.eval("P = get(kv), spawn(fun() -> catch link(P), exit(boom) end), ok").await?;
    ensure!(r == "ok", "{r}");
    sleep(Duration::from_millis(500)).await;
    ensure!(srv.eval("whereis(kv)").await? == kv0, "kv was killed or restarted");

    // Disconnect a trusted node through net_kernel: refused at once.
    for req in [format!("{{disconnect, {qo}}}"), "{connect, normal, 'x@nowhere'}".to_string()] {
        let r = dev.eval(&timed(&format!("catch gen_server:call({{net_kernel, {qs}}}, {req}, 10000)"))).await?;
        ensure!(fast("a net_kernel request", &r, 2000)?.contains("edist_refused"), "{req}: {r}");
    }
    let r = dev.eval(&format!("{{net_kernel, {qs}}} ! {{self(), registered_send, kv, x}}, ok")).await?;
    ensure!(r == "ok", "{r}");
    assert_eq!(srv.eval(&format!("lists:member({qo}, nodes())")).await?, "true");

    // Global: the device's registration stays on its side, it cannot lock on the server, and
    // the server's global:sync() does not wait for it.
    assert_eq!(dev.eval("global:register_name(edist_dev, self())").await?, "yes");
    // (`true` on the device: global counts a node that does not answer as not objecting.)
    let r = dev.eval(&timed(&format!("catch global:set_lock({{edist_lock, self()}}, [{qs}], 0)"))).await?;
    fast("a global lock from the device", &r, 10_000)?;
    // Had the device's lock been taken here, a requester of ours could not have it.
    assert_eq!(srv.eval("global:set_lock({edist_lock, self()}, [node()], 0)").await?, "true");
    assert_eq!(srv.eval("global:del_lock({edist_lock, self()}, [node()])").await?, "true");
    let r = dev.eval(&format!("{{global_name_server, {qs}}} ! {{register, edist_raw, self(), x}}, ok")).await?;
    ensure!(r == "ok", "{r}");
    let r = srv.eval(&timed("global:sync()")).await?;
    ensure!(fast("the server's global:sync()", &r, 5000)? == "ok", "{r}");
    assert_eq!(
        srv.eval("{global:whereis_name(edist_dev), global:whereis_name(edist_raw)}").await?,
        "{undefined,undefined}"
    );
    ensure!(srv.eval("is_pid(global:whereis_name(edist_other))").await? == "true", "global between trusted nodes");

    // Code: rpc, erpc, spawn, code_server, raw rex — refused, fast, and nothing ran.
    let file = cluster.dir.join("pwned");
    let touch = format!("\"touch {}\"", file.display());
    let r = dev.eval(&timed(&format!("rpc:call({qs}, os, cmd, [{touch}])"))).await?;
    ensure!(fast("rpc", &r, 2000)? == "{badrpc,{'EXIT',edist_refused}}", "{r}");
    let r = dev.eval(&timed(&format!("catch erpc:call({qs}, os, cmd, [{touch}])"))).await?;
    ensure!(fast("erpc", &r, 2000)?.contains("edist_refused"), "{r}");
    let r = dev.eval(&timed(&format!("catch spawn({qs}, os, cmd, [{touch}])"))).await?;
    fast("spawn/4", &r, 2000)?;
    let r = dev.eval(&timed(&format!("catch spawn({qs}, fun() -> os:cmd({touch}) end)"))).await?;
    fast("spawn/2", &r, 2000)?;
    let r = dev
        .eval(&timed(&format!("catch gen_server:call({{code_server, {qs}}}, {{ensure_loaded, os}}, 10000)")))
        .await?;
    ensure!(fast("code_server", &r, 2000)?.contains("noproc"), "{r}");
    let r = dev
        .eval(&format!(
            "{{rex, {qs}}} ! {{self(), {{call, os, cmd, [{touch}], group_leader()}}}}, \
             receive {{rex, X}} -> X after 1000 -> no_answer end"
        ))
        .await?;
    ensure!(r == "no_answer", "raw rex: {r}");
    sleep(Duration::from_millis(300)).await;
    ensure!(!file.exists(), "a command ran on the server");

    // Refused traffic costs only itself: 90,000 refused messages ahead of it on the same
    // ordered lane, each refused and counted, and a call behind them still passes. That
    // refusals are not charged to the role's rates is the ingress unit test's
    // (`rates_delay_what_passes_and_refusals_do_not_count`); here the time is printed, not
    // bounded tightly: in a debug build on a slow VM a refused message costs 33-89 µs end to
    // end (3.0 s alone, 6.6-8.0 s in CI runs), as much as charging it would (100 µs at the
    // built-in role's 10,000 messages/s), so no bound tells the two apart on every machine.
    let refused_from_gw1 =
        |st: &Value| refusals(st).iter().filter(|(p, _, _)| p == "gw-1").map(|(_, _, n)| *n).sum::<u64>();
    let before = refused_from_gw1(&cluster.host(0)?.status().await?);
    let r = dev
        .eval(&timed(&format!(
            "[{{rex, {qs}}} ! {{junk, I}} || I <- lists:seq(1, 90000)], gen_server:call({{kv, {qs}}}, {{get, k}}, 30000)"
        )))
        .await?;
    let (_, ms) = r.trim_end_matches('}').rsplit_once(',').context("timed")?;
    eprintln!("device: a call behind 90,000 refused messages took {ms} ms");
    ensure!(fast("a call behind 90,000 refused messages", &r, 30_000)? == "42", "{r}");
    let counted = refused_from_gw1(&cluster.host(0)?.status().await?).saturating_sub(before);
    eprintln!("device: {counted} refusals counted for the flood");
    ensure!(counted >= 90_000, "{counted} refusals counted for 90,000 refused messages");

    // Group leader, stopping the node.
    let gl0 = srv.eval("element(2, process_info(whereis(kv), group_leader))").await?;
    ensure!(dev.eval("group_leader(self(), get(kv))").await? == "true");
    for stop in [
        format!("{{init, {qs}}} ! {{stop, stop}}"),
        format!("rpc:call({qs}, init, stop, [])"),
        format!("catch erpc:call({qs}, erlang, halt, [])"),
    ] {
        dev.eval(&stop).await?;
    }
    sleep(Duration::from_millis(1000)).await;
    ensure!(srv.eval("element(2, process_info(whereis(kv), group_leader))").await? == gl0, "group leader changed");
    assert_eq!(srv.eval("node()").await?, srv.name);

    // An atom flood: 12,000 messages of one new atom each, then a million more atoms, cut at
    // the budget (10,000, the built-in's); refusals stay fast, and a new node behind the
    // device's gateway still connects.
    let atoms0: i64 = srv.eval("erlang:system_info(atom_count)").await?.parse()?;
    let r = dev
        .eval_within(
            &format!(
                "[{{kv, {qs}}} ! {{one, list_to_atom(\"edist_g_\" ++ integer_to_list(I))}} || I <- lists:seq(1, 12000)], \
                 [{{kv, {qs}}} ! {{atoms, [list_to_atom(\"edist_f_\" ++ integer_to_list(I * 10000 + J)) || J <- lists:seq(0, 9999)]}} \
                 || I <- lists:seq(0, 99)], gen_server:call({{kv, {qs}}}, {{get, k}})"
            ),
            Duration::from_secs(120),
        )
        .await?;
    ensure!(r == "42", "{r}");
    let atoms1: i64 = srv.eval("erlang:system_info(atom_count)").await?.parse()?;
    ensure!(atoms1 - atoms0 <= 10_000 + 100, "atom table grew by {} (budget 10000)", atoms1 - atoms0);
    let r = dev.eval(&timed(&format!("catch gen_server:call({{init, {qs}}}, x, 10000)"))).await?;
    ensure!(fast("a denied call after the flood", &r, 2000)?.contains("noproc"), "{r}");
    let r = dev
        .eval(&timed(&format!(
            "catch gen_server:call({{kv, {qs}}}, {{put, list_to_atom(\"edist_zz_new\"), 1}}, 10000)"
        )))
        .await?;
    ensure!(fast("a call with a new atom after the flood", &r, 2000)?.contains("edist_refused"), "{r}");
    let mut dev2 = cluster.erl(1, "devtwo", &[]).await?;
    let r = dev2.eval(&timed(&format!("net_adm:ping({qs})"))).await?;
    ensure!(fast("ping from a new device node after the flood", &r, 3000)? == "pong", "{r}");
    assert_eq!(dev2.eval(&format!("gen_server:call({{kv, {qs}}}, {{get, k}})")).await?, "42");
    // A connection the server dials is hidden both ways too (the other leg of the handshake).
    let mut dev3 = cluster.erl(1, "devthree", &[]).await?;
    let q3 = q(&dev3.name);
    assert_eq!(srv.eval(&format!("net_adm:ping({q3})")).await?, "pong");
    let r = srv.eval(&format!("{{lists:member({q3}, nodes()), lists:member({q3}, nodes(hidden))}}")).await?;
    ensure!(r == "{false,true}", "a device the server dialled is not hidden for it: {r}");
    let r = dev3.eval(&format!("{{lists:member({qs}, nodes()), lists:member({qs}, nodes(hidden))}}")).await?;
    ensure!(r == "{false,true}", "the server that dialled is not hidden for the device: {r}");
    assert_eq!(dev3.eval(&format!("gen_server:call({{kv, {qs}}}, {{get, k}})")).await?, "42");

    // Throughout: the trusted node, and global on the server.
    assert_eq!(other.eval(&format!("rpc:call({qs}, erlang, node, [])")).await?, srv.name);
    assert_eq!(other.eval(&format!("net_adm:ping({qs})")).await?, "pong");
    let r = srv.eval(&timed("global:sync()")).await?;
    ensure!(fast("the server's global:sync() at the end", &r, 5000)? == "ok", "{r}");
    assert_eq!(srv.eval("whereis(kv)").await?, kv0);

    // Each kind of refusal is counted for the device's gateway, and logged (the first of each
    // target at once); the budget left shows in the status.
    let st = cluster.host(0)?.status().await?;
    let refusals = refusals(&st);
    for reason in ["service", "name", "spawn", "link", "signal", "atoms"] {
        ensure!(refusals.iter().any(|(p, r, n)| p == "gw-1" && r == reason && *n >= 1), "no {reason} refusal: {st}");
    }
    ensure!(!refusals.iter().any(|(p, _, _)| p == "gw-2"), "the trusted peer was refused: {st}");
    let left = st
        .get("policy")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|p| p.get("peer").and_then(Value::as_str) == Some("gw-1")))
        .and_then(|p| p.get("atoms_left"))
        .and_then(Value::as_u64);
    ensure!(left == Some(0), "atoms left for gw-1: {left:?} in {st}");
    let log = std::fs::read_to_string(&cluster.host(0)?.log)?;
    for line in [
        "refused request to net_kernel other than net_adm:ping's is_auth",
        "refused spawn of os:cmd/1",
        "refused spawn of erlang:apply/2",
        "refused send to registered name rex",
        "refused monitor of registered name code_server",
        "refused link to a process that did not link to the peer",
        "refused exit2 signal",
        "refused group_leader signal",
        "registered name global_name_server",
        "refused atom budget of 10000 used up",
    ] {
        ensure!(log.contains(line), "no log line {line:?}");
    }
    cluster.passed();
    Ok(())
}

/// Host 1's certificate grants only `good*@*`: its gateway's announcement of another name is
/// refused everywhere, while its good node works. Host 0 revokes host 2's certificate: no link,
/// and host 2's nodes cannot reach host 0's. Host 3's certificate is from another CA: nobody
/// links to it, and the refusals are counted by its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_certificate_grant_and_revoked_certificates_are_refused() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cert_args = |i| if i == 1 { vec!["--nodes".to_string(), "good*@*".into()] } else { vec![] };
    let fabric = |i| if i == 0 { "revoked = [\"gw-2\"]\n".to_string() } else { String::new() };
    let foreign = |i| i == 3;
    let setup = Setup {
        cert_args: Some(&cert_args),
        fabric: Some(&fabric),
        foreign_ca: Some(&foreign),
        partial_mesh: true,
        ..Setup::default()
    };
    let cluster = Cluster::start_with(4, setup).await?;
    let (h0, h1, h2) = (cluster.host(0)?, cluster.host(1)?, cluster.host(2)?);
    cluster
        .wait("gw-1 to link to gw-0 and gw-2", || async {
            Ok(h1.status().await.map(|st| strings(&st, "peers") == ["gw-0", "gw-2"]).unwrap_or(false))
        })
        .await?;
    let mut srv = cluster.erl_local(0, "srv", &[]).await?;
    let good = cluster.erl_local(1, "good", &[]).await?;
    cluster.wait_known_by(0, &good.name, 1).await?;
    let evil = cluster.erl_local(1, "evil", &[]).await?;
    let far = cluster.erl_local(2, "far", &[]).await?;
    let alien = cluster.erl_local(3, "alien", &[]).await?;
    assert_eq!(srv.eval(&format!("net_adm:ping({})", q(&alien.name))).await?, "pang");
    assert_eq!(srv.eval(&format!("net_adm:ping({})", q(&good.name))).await?, "pong");
    assert_eq!(srv.eval(&format!("net_adm:ping({})", q(&evil.name))).await?, "pang");
    assert_eq!(srv.eval(&format!("net_adm:ping({})", q(&far.name))).await?, "pang");
    let st0 = h0.status().await?;
    ensure!(strings(&st0, "peers") == ["gw-1"], "gw-0 links to a revoked gateway: {st0}");
    ensure!(!pairs(&st0, "remote_nodes").iter().any(|(n, _)| *n == evil.name), "gw-0 knows {}: {st0}", evil.name);
    let r0 = refusals(&st0);
    ensure!(r0.iter().any(|(p, r, _)| p == "gw-1" && r == "name_claim"), "no name_claim refusal: {st0}");
    ensure!(r0.iter().any(|(p, r, _)| p == "gw-2" && r == "revoked"), "no revoked refusal: {st0}");
    let h3_ip = cluster.host(3)?.ip.to_string();
    ensure!(r0.iter().any(|(p, r, _)| *p == h3_ip && r == "handshake"), "no handshake refusal of {h3_ip}: {st0}");
    ensure!(strings(&cluster.host(3)?.status().await?, "peers").is_empty(), "the foreign gateway got a link");
    // gw-2 (not revoking anyone) refuses the ungranted name too.
    let st2 = h2.status().await?;
    ensure!(!pairs(&st2, "remote_nodes").iter().any(|(n, _)| *n == evil.name), "gw-2 knows {}", evil.name);
    ensure!(refusals(&st2).iter().any(|(p, r, _)| p == "gw-1" && r == "name_claim"), "gw-2: {st2}");
    let log = std::fs::read_to_string(&h0.log)?;
    ensure!(log.contains("outside its node-name grant"), "no log line for the refused announcement");
    cluster.passed();
    Ok(())
}

/// 10 GB from a to a consumer that reads only half the time (its BEAM is stopped and continued
/// every 50 ms): both gateways' memory stays within the configured bounds all along. Long
/// (about a minute or two): `cargo test -p edist --test gateway_fabric -- --ignored ten_gigabytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 10 GB through the gateways"]
async fn ten_gigabytes_to_a_slow_consumer_stay_within_the_memory_bound() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "slow", &[]).await?;
    let qb = q(&b.name);
    let r = b
        .eval(
            "register(sink, spawn(fun L() -> receive {From, done} -> From ! {sink, done}, L(); \
             {_, Bin} when is_binary(Bin) -> L() end end)), ok",
        )
        .await?;
    ensure!(r == "ok", "{r}");
    let os_pid = b.eval("os:getpid()").await?.trim_matches('"').to_string();
    let gw_pids: Vec<u32> = (0..2)
        .map(|i| cluster.host(i).ok().and_then(|h| h.gateway.as_ref()).and_then(|c| c.id()).context("gateway pid"))
        .collect::<Result<_>>()?;
    let rss0: Vec<u64> = gw_pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;
    // The slow consumer: stopped half of every 100 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let duty = {
        let (stop, pid) = (stop.clone(), os_pid.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::process::Command::new("kill").args(["-STOP", &pid]).status();
                sleep(Duration::from_millis(50)).await;
                let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
                sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Peak RSS of each gateway, sampled every 100 ms.
    let peaks = std::sync::Arc::new(std::sync::Mutex::new(rss0.clone()));
    let sampler = {
        let (stop, peaks, pids) = (stop.clone(), peaks.clone(), gw_pids.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, p) in pids.iter().enumerate() {
                    if let (Ok(r), Ok(mut pk)) = (rss_kib(*p), peaks.lock()) {
                        pk[i] = pk[i].max(r);
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let t = Instant::now();
    let r = a
        .eval_within(
            &format!(
                "B = binary:copy(<<7>>, 1 bsl 20), [{{sink, {qb}}} ! {{self(), B}} || _ <- lists:seq(1, 10240)], \
                 {{sink, {qb}}} ! {{self(), done}}, receive {{sink, done}} -> ok after 600000 -> timeout end"
            ),
            Duration::from_secs(900),
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let _ = duty.await;
    let _ = sampler.await;
    let _ = std::process::Command::new("kill").args(["-CONT", &os_pid]).status();
    ensure!(r? == "ok", "the transfer did not complete");
    let secs = t.elapsed().as_secs_f64();
    let peaks = peaks.lock().map(|p| p.clone()).unwrap_or_default();
    for (i, (peak, before)) in peaks.iter().zip(&rss0).enumerate() {
        let grown = peak.saturating_sub(*before);
        eprintln!(
            "fabric: 10 GiB in {secs:.1} s ({:.0} MB/s) to a half-stopped consumer: gateway {i} RSS {before} KiB -> peak {peak} KiB (+{grown} KiB)",
            10240.0 * 1.048576 / secs
        );
        // relay_buffer (32 MiB) + QUIC windows + the merger: well under 128 MiB.
        ensure!(grown < 128 * 1024, "gateway {i} grew by {grown} KiB");
    }
    cluster.passed();
    Ok(())
}

/// Names as OTP has them cross hosts: long names with an IP address or an FQDN as host part,
/// and a short name whose host part is not the gateway's host, are registered, announced and
/// shown (`edist status`) as the nodes have them, and nodes on the other host reach them under
/// those names: ping, rpc and erpc, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_and_host_parts_of_their_own_cross_hosts() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let (ip0, ip1) = (cluster.host(0)?.ip.to_string(), cluster.host(1)?.ip.to_string());
    let mut a = cluster.erl_named(0, Naming::long("a", &ip0), &[]).await?;
    let mut b = cluster.erl_named(1, Naming::long("b", &ip1), &[]).await?;
    let f = cluster.erl_named(1, Naming::long("f", "node.example.com"), &[]).await?;
    let mut s = cluster.erl_named(0, Naming::short("s"), &[]).await?;
    let mut c = cluster.erl_named(1, Naming::short_at("c", "elsewhere"), &[]).await?;
    ensure!(b.name.ends_with(&format!("@{ip1}")) && c.name.ends_with("@elsewhere"), "{} {}", b.name, c.name);

    // The registry under the names the nodes have, on both gateways.
    let (st0, st1) = (cluster.host(0)?.status().await?, cluster.host(1)?.status().await?);
    for n in [&b.name, &f.name, &c.name] {
        ensure!(pairs(&st1, "local_nodes").iter().any(|(x, _)| x == n), "gw-1 does not list {n}: {st1}");
        ensure!(
            pairs(&st0, "remote_nodes").iter().any(|(x, g)| x == n && g.as_str() == Some("gw-1")),
            "gw-0 does not list {n} behind gw-1: {st0}"
        );
    }
    ensure!(pairs(&st0, "local_nodes").iter().any(|(x, _)| *x == a.name), "gw-0 does not list {}: {st0}", a.name);

    let (qa, qb, qf, qc) = (q(&a.name), q(&b.name), q(&f.name), q(&c.name));
    assert_eq!(a.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    assert_eq!(a.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, printed(&b.name));
    assert_eq!(b.eval(&format!("rpc:call({qa}, erlang, node, [])")).await?, printed(&a.name));
    assert_eq!(a.eval(&format!("net_adm:ping({qf})")).await?, "pong");
    assert_eq!(a.eval(&format!("erpc:call({qf}, erlang, node, [])")).await?, printed(&f.name));
    assert_eq!(a.eval("lists:sort(nodes())").await?, {
        let mut n = [printed(&b.name), printed(&f.name)];
        n.sort();
        format!("[{}]", n.join(","))
    });
    assert_eq!(s.eval(&format!("net_adm:ping({qc})")).await?, "pong");
    assert_eq!(s.eval(&format!("rpc:call({qc}, erlang, node, [])")).await?, printed(&c.name));
    // And the node with a host part of its own dials out.
    let qs = q(&s.name);
    assert_eq!(c.eval(&format!("erlang:disconnect_node({qs})")).await?, "true");
    assert_eq!(c.eval(&format!("net_adm:ping({qs})")).await?, "pong");
    // A host part beyond ASCII (`b1é`, legal in OTP: erl_distribution_SUITE hostnames): names
    // are latin1 in the handshake, one byte a character, both ways.
    let mut e = cluster.erl_named(1, Naming::short_at("e", "b1é"), &[]).await?;
    let codes = |n: &str| format!("list_to_atom({:?})", n.chars().map(u32::from).collect::<Vec<_>>());
    assert_eq!(s.eval(&format!("net_adm:ping({})", codes(&e.name))).await?, "pong");
    assert_eq!(
        s.eval(&format!(
            "atom_to_list(rpc:call({}, erlang, node, [])) =:= {:?}",
            codes(&e.name),
            e.name.chars().map(u32::from).collect::<Vec<_>>()
        ))
        .await?,
        "true"
    );
    assert_eq!(e.eval(&format!("erlang:disconnect_node({qs})")).await?, "true");
    assert_eq!(e.eval(&format!("net_adm:ping({qs})")).await?, "pong");
    cluster.passed();
    Ok(())
}

/// Nodes that register no port connect out through the fabric: one started with
/// `-dist_listen false`, and dynamic names (OTP 23+: `-sname undefined`, `-name undefined@IP`),
/// which the gateway names as the node they dial would. While connected they are listed as
/// `outbound_only` by their gateway and known to the other one, the far node reaches them back
/// over their connection, and they are forgotten when their last connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_do_not_listen_connect_out() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let (ip0, ip1) = (cluster.host(0)?.ip.to_string(), cluster.host(1)?.ip.to_string());
    let (h0, h1) = (cluster.host(0)?, cluster.host(1)?);
    let mut b = cluster.erl(1, "b", &[]).await?;
    let mut bl = cluster.erl_named(1, Naming::long("bl", &ip1), &[]).await?;
    let (qb, qbl) = (q(&b.name), q(&bl.name));
    let outbound_only = |st: &Value| strings(st, "outbound_only");

    // -dist_listen false: no registration, yet it connects out.
    let mut n = cluster.erl_spawn(0, Naming::short("n"), &["-dist_listen", "false"]).await?;
    let qn = q(&n.name);
    assert_eq!(n.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    assert_eq!(n.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, printed(&b.name));
    assert_eq!(b.eval(&format!("rpc:call({qn}, erlang, node, [])")).await?, printed(&n.name));
    // As with OTP, a node that does not listen is hidden.
    assert_eq!(b.eval(&format!("{{lists:member({qn}, nodes(hidden)), nodes()}}")).await?, "{true,[]}");
    let st0 = h0.status().await?;
    ensure!(outbound_only(&st0) == [n.name.clone()], "gw-0 does not list {} as outbound only: {st0}", n.name);
    ensure!(!pairs(&st0, "local_nodes").iter().any(|(x, _)| *x == n.name), "{} has no port: {st0}", n.name);
    cluster.wait_known_by(1, &n.name, 0).await?;
    assert_eq!(n.eval(&format!("erlang:disconnect_node({qb})")).await?, "true");
    cluster
        .wait(&format!("{} to be forgotten", n.name), || async {
            let (st0, st1) = (h0.status().await?, h1.status().await?);
            Ok(outbound_only(&st0).is_empty() && !remote_names(&st1).contains(&n.name))
        })
        .await?;
    // Nobody can dial it (it has no listener), as with OTP.
    assert_eq!(b.eval(&format!("net_adm:ping({qn})")).await?, "pang");

    // A dynamic short name: named by the gateway in its first handshake. (Until it has a name,
    // OTP connects it only on an explicit connect_node, not automatically.)
    let mut d = cluster.erl_spawn(0, Naming::dynamic(None), &[]).await?;
    assert_eq!(d.eval("node()").await?, "nonode@nohost");
    assert_eq!(d.eval(&format!("net_kernel:connect_node({qb})")).await?, "true");
    let dn = d.eval("atom_to_list(node())").await?.trim_matches('"').to_string();
    ensure!(dn.ends_with(&format!("@{}", host())) && !dn.starts_with("undefined@"), "dynamic name {dn}");
    assert_eq!(d.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, printed(&b.name));
    assert_eq!(b.eval(&format!("rpc:call({}, erlang, node, [])", q(&dn))).await?, printed(&dn));
    ensure!(outbound_only(&h0.status().await?).contains(&dn), "gw-0 does not list {dn}");
    cluster.wait_known_by(1, &dn, 0).await?;
    // Disconnected, it has no name; connecting again it gets the same one back, as OTP's
    // net_kernel gives it (erl_distribution_SUITE dyn_node_name).
    assert_eq!(d.eval(&format!("net_kernel:disconnect({qb})")).await?, "true");
    cluster
        .wait(&format!("{dn} to be forgotten"), || async { Ok(!outbound_only(&h0.status().await?).contains(&dn)) })
        .await?;
    assert_eq!(d.eval("node()").await?, "nonode@nohost");
    assert_eq!(d.eval(&format!("net_kernel:connect_node({qb})")).await?, "true");
    assert_eq!(d.eval("atom_to_list(node())").await?, format!("{dn:?}"), "the name given again");
    assert_eq!(b.eval(&format!("rpc:call({}, erlang, node, [])", q(&dn))).await?, printed(&dn));

    // A dynamic long name, with the host part given.
    let mut dl = cluster.erl_spawn(0, Naming::dynamic(Some(&ip0)), &[]).await?;
    assert_eq!(dl.eval(&format!("net_kernel:connect_node({qbl})")).await?, "true");
    let dln = dl.eval("atom_to_list(node())").await?.trim_matches('"').to_string();
    ensure!(dln.ends_with(&format!("@{ip0}")) && !dln.starts_with("undefined@"), "dynamic name {dln}");
    assert_eq!(bl.eval(&format!("rpc:call({}, erlang, node, [])", q(&dln))).await?, printed(&dln));
    cluster.passed();
    Ok(())
}

/// `{Result, Millis}` of evaluating `expr` on a node.
fn timed(expr: &str) -> String {
    format!(
        "T0 = erlang:monotonic_time(millisecond), R = begin {expr} end, {{R, erlang:monotonic_time(millisecond) - T0}}"
    )
}

/// Parses `{Result,Millis}`.
fn timed_result(r: &str) -> Result<(String, u64)> {
    let (res, ms) = r.trim_matches(|c| c == '{' || c == '}').rsplit_once(',').with_context(|| r.to_string())?;
    Ok((res.to_string(), ms.parse().with_context(|| r.to_string())?))
}

/// A node whose cookie for a far node is neither its gateway's nor the far node's is refused at
/// once, as OTP refuses a wrong cookie: `pang` (and `nodedown` for a monitor) well within a
/// second, both when it dials and when it is dialled, and the gateways log the refusal in OTP's
/// words and count it. A per-node cookie set to the gateway's (`erlang:set_cookie(Node,
/// Cookie)`) makes it work; one of any other value is refused like a wrong cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_other_than_the_gateways_is_refused_at_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let mut w = cluster.erl_named(0, Naming::short("w").cookie("not_the_gateways"), &[]).await?;
    let (qb, qw) = (q(&b.name), q(&w.name));
    let fast = Duration::from_millis(2000);
    let refused = |r: &str, what: &str| -> Result<()> {
        let (res, ms) = timed_result(r)?;
        ensure!(res != "pong" && res != "ok", "{what}: {r}");
        ensure!(Duration::from_millis(ms) < fast, "{what} took {ms} ms: {r}");
        eprintln!("{what}: {res} after {ms} ms");
        Ok(())
    };

    // w dials b.
    refused(&w.eval(&timed(&format!("net_adm:ping({qb})"))).await?, "ping from the wrong cookie")?;
    let r = w
        .eval(&timed(&format!(
            "erlang:monitor_node({qb}, true), receive {{nodedown, {qb}}} -> nodedown after 7000 -> no_nodedown end"
        )))
        .await?;
    refused(&r, "monitor_node from the wrong cookie")?;
    ensure!(r.starts_with("{nodedown,"), "{r}");
    // b dials w: w's gateway dials w with its own cookie, and w refuses it; b's gateway hears so.
    let bad1 = handshakes_with(&cluster.host(1)?.status().await?, "bad_cookie");
    refused(&b.eval(&timed(&format!("net_adm:ping({qw})"))).await?, "ping to the wrong cookie")?;
    let st1 = cluster.host(1)?.status().await?;
    ensure!(handshakes_with(&st1, "bad_cookie") > bad1, "gw-1 counted no bad_cookie: {st1}");
    let log = std::fs::read_to_string(&cluster.host(0)?.log)?;
    ensure!(
        log.contains(&format!("Connection attempt from node {} rejected. Invalid challenge reply.", w.name)),
        "gw-0 did not log the refusal"
    );
    let st0 = cluster.host(0)?.status().await?;
    let bad_cookie = st0
        .pointer("/metrics/handshakes")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|h| h.get(2).and_then(Value::as_str) == Some("bad_cookie")));
    ensure!(bad_cookie, "no bad_cookie handshake counted: {st0}");

    // A per-node cookie for b equal to the gateway's cookie: w reaches b.
    assert_eq!(w.eval(&format!("erlang:set_cookie({qb}, {})", q(&cluster.cookie))).await?, "true");
    assert_eq!(w.eval(&format!("net_adm:ping({qb})")).await?, "pong");
    assert_eq!(w.eval(&format!("rpc:call({qb}, erlang, node, [])")).await?, printed(&b.name));

    // A node with the gateway's cookie but another per-node cookie for b: refused at once.
    let mut g = cluster.erl(0, "g", &[]).await?;
    assert_eq!(g.eval(&format!("erlang:set_cookie({qb}, other_cookie)")).await?, "true");
    refused(&g.eval(&timed(&format!("net_adm:ping({qb})"))).await?, "ping with another per-node cookie")?;
    cluster.passed();
    Ok(())
}

/// Starts a process on `node` that keeps every `nodeup` it sees (`net_kernel:monitor_nodes/1`).
async fn watch_nodeups(node: &mut Node) -> Result<()> {
    let r = node
        .eval(
            "P = spawn(fun() -> net_kernel:monitor_nodes(true), \
               (fun L(Ups) -> receive {nodeup, N} -> L([N | Ups]); \
                 {ups, From} -> From ! {ups, lists:reverse(Ups)}, L(Ups) end end)([]) end), \
             register(edist_test_ups, P)",
        )
        .await?;
    ensure!(r == "true", "{r}");
    Ok(())
}

/// The `nodeup`s `node` has seen since [`watch_nodeups`].
async fn nodeups(node: &mut Node) -> Result<String> {
    node.eval("edist_test_ups ! {ups, self()}, receive {ups, U} -> U after 5000 -> timeout end").await
}

/// How many relayed handshakes a gateway counted with `outcome` (any peer, either direction).
fn handshakes_with(st: &Value, outcome: &str) -> u64 {
    st.pointer("/metrics/handshakes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|h| h.get(2).and_then(Value::as_str) == Some(outcome))
                .filter_map(|h| h.get(3).and_then(Value::as_u64))
                .sum()
        })
        .unwrap_or(0)
}

/// Cookies other than the gateways' work across hosts as in OTP: two nodes connect iff the cookie
/// each uses for the other is the same — `-setcookie C` on one and `erlang:set_cookie(Node, C)`
/// on the other (OTP's `differing_cookies`), or a per-connection cookie given on the command
/// line, `-setcookie Node C` (`connection_cookie`, `cmdline_setcookie_2`) — and a mismatch is
/// refused at once both ways, with no `nodeup` on either side, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_agreeing_on_a_cookie_other_than_the_gateways_connect_as_in_otp() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2).await?;

    // (a) a runs with -setcookie shared_c; c (on the gateways' cookie) sets it for a.
    let mut a = cluster.erl_named(0, Naming::short("ca").cookie("shared_c"), &[]).await?;
    let mut c = cluster.erl(1, "cc", &[]).await?;
    let (qa, qc) = (q(&a.name), q(&c.name));
    assert_eq!(c.eval(&format!("erlang:set_cookie({qa}, shared_c)")).await?, "true");
    assert_eq!(c.eval(&format!("net_adm:ping({qa})")).await?, "pong");
    assert_eq!(c.eval(&format!("rpc:call({qa}, erlang, node, [])")).await?, printed(&a.name));
    assert_eq!(a.eval(&format!("rpc:call({qc}, erlang, node, [])")).await?, printed(&c.name));
    // Messages both ways on the connection.
    a.eval("register(inbox, self())").await?;
    c.eval(&format!("{{inbox, {qa}}} ! {{hello, node()}}")).await?;
    assert_eq!(a.eval("receive {hello, N} -> N after 5000 -> timeout end").await?, printed(&c.name));
    // Again, a dialling this time (its own cookie for c is shared_c).
    assert_eq!(c.eval(&format!("erlang:disconnect_node({qa})")).await?, "true");
    let r = a
        .eval(&format!(
            "(fun W(0) -> gone; W(N) -> case lists:member({qc}, nodes()) of true -> timer:sleep(50), W(N - 1); \
             false -> gone end end)(100), net_adm:ping({qc})"
        ))
        .await?;
    assert_eq!(r, "pong", "a dialling c");
    assert_eq!(a.eval(&format!("rpc:call({qc}, erlang, node, [])")).await?, printed(&c.name));

    // (b) A per-connection cookie on the command line: p is on the gateways' cookie but uses
    // conn_c for q; q's own cookie is yet another, and it sets conn_c for p.
    let qn = Naming::short("pq").cookie("q_own");
    let q_name = qn.full.clone();
    let mut p = cluster.erl(0, "pp", &["-setcookie", &q_name, "conn_c"]).await?;
    let mut qq = cluster.erl_named(1, qn, &[]).await?;
    let (qp, qq_) = (q(&p.name), q(&q_name));
    assert_eq!(p.eval(&format!("erlang:get_cookie({qq_})")).await?, "conn_c");
    assert_eq!(qq.eval(&format!("erlang:set_cookie({qp}, conn_c)")).await?, "true");
    assert_eq!(p.eval(&format!("net_adm:ping({qq_})")).await?, "pong");
    assert_eq!(qq.eval(&format!("rpc:call({qp}, erlang, node, [])")).await?, printed(&p.name));
    // p still reaches c on the gateways' cookie, and q does not reach c with its own.
    assert_eq!(p.eval(&format!("net_adm:ping({qc})")).await?, "pong");
    assert_eq!(qq.eval(&format!("net_adm:ping({qc})")).await?, "pang");

    // (c) Mismatch: m and n each use a cookie of their own for the other. Refused at once,
    // both ways, no nodeup anywhere, counted by both gateways.
    let mut m = cluster.erl_named(0, Naming::short("mm").cookie("m_c"), &[]).await?;
    let mut n = cluster.erl_named(1, Naming::short("nn").cookie("n_c"), &[]).await?;
    let (qm, qn_) = (q(&m.name), q(&n.name));
    watch_nodeups(&mut m).await?;
    watch_nodeups(&mut n).await?;
    let bad0 = handshakes_with(&cluster.host(0)?.status().await?, "bad_cookie");
    let bad1 = handshakes_with(&cluster.host(1)?.status().await?, "bad_cookie");
    for (who, r) in [
        ("m dialling n", m.eval(&timed(&format!("net_adm:ping({qn_})"))).await?),
        ("n dialling m", n.eval(&timed(&format!("net_adm:ping({qm})"))).await?),
    ] {
        let (res, ms) = timed_result(&r)?;
        ensure!(res == "pang", "{who}: {r}");
        ensure!(ms < 2000, "{who} took {ms} ms");
    }
    assert_eq!(nodeups(&mut m).await?, "[]", "m saw a nodeup");
    assert_eq!(nodeups(&mut n).await?, "[]", "n saw a nodeup");
    assert_eq!(m.eval("nodes(connected)").await?, "[]");
    assert_eq!(n.eval("nodes(connected)").await?, "[]");
    let (st0, st1) = (cluster.host(0)?.status().await?, cluster.host(1)?.status().await?);
    // Each dial is refused by the far node: both gateways count it, the dialler's as a refusal.
    ensure!(handshakes_with(&st0, "bad_cookie") >= bad0 + 2, "gw-0 counted no bad_cookie: {st0}");
    ensure!(handshakes_with(&st1, "bad_cookie") >= bad1 + 2, "gw-1 counted no bad_cookie: {st1}");
    ensure!(refused_for(&st0, "local", "bad_cookie") >= 1, "gw-0 counted no refusal: {st0}");
    ensure!(refused_for(&st1, "local", "bad_cookie") >= 1, "gw-1 counted no refusal: {st1}");
    // The refusing node logs it, as OTP does (on its standard output).
    let line =
        n.event(&format!("** Connection attempt from node {} rejected.", m.name), Duration::from_secs(5)).await?;
    ensure!(line.contains("Invalid challenge reply"), "{line}");
    // Agreeing on a cookie now, they connect.
    assert_eq!(m.eval(&format!("erlang:set_cookie({qn_}, n_c)")).await?, "true");
    assert_eq!(m.eval(&format!("net_adm:ping({qn_})")).await?, "pong");
    cluster.passed();
    Ok(())
}

/// The serial of the certificate `peer` presented on host `st`'s links to it (all the same).
fn link_serials(st: &Value, peer: &str) -> Vec<String> {
    let links = st.get("links").and_then(Value::as_array).cloned().unwrap_or_default();
    links
        .iter()
        .filter(|l| l.get("peer").and_then(Value::as_str) == Some(peer))
        .filter_map(|l| Some(l.get("serial")?.as_str()?.to_owned()))
        .collect()
}

/// SIGTERM stops a gateway in order: it exits 0, its peer hears a clean close (the far node sees
/// nodedown at once, not after the idle timeout), and its local nodes are told (their plug sees
/// the registration end, their connections to remote nodes close). Back up, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_gateway_in_order() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2).await?;
    let mut a = cluster.erl(0, "a", &[]).await?;
    let mut b = cluster.erl(1, "b", &[]).await?;
    let (an, bn) = (a.name.clone(), b.name.clone());
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&bn))).await?, "pong");
    a.watch_nodedown(&bn).await?;
    b.watch_nodedown(&an).await?;

    let (status, t) = cluster.hosts[0].signal_gateway("TERM", Some(Duration::from_secs(10))).await?;
    let status = status.context("exit status")?;
    ensure!(status.success(), "the gateway's exit: {status}");
    let far = b.nodedown_at(&an, Duration::from_secs(10)).await? - t;
    let near = a.nodedown_at(&bn, Duration::from_secs(10)).await? - t;
    eprintln!("fabric: after SIGTERM of gw-0, nodedown on b in {:.1} ms, on a in {:.1} ms", ms(far), ms(near));
    // The idle timeout is 1.5 s: well under it, the peer was told rather than left to notice.
    ensure!(far < 1_000_000, "the far node saw nodedown only after {:.1} ms", ms(far));
    ensure!(near < 1_000_000, "the local node saw nodedown only after {:.1} ms", ms(near));
    let told = a.event("edist_epmd: the edist gateway", Duration::from_secs(5)).await?;
    ensure!(told.contains("closed the registration"), "{told}");
    let h1 = cluster.host(1)?;
    cluster.wait("gw-1 to forget a", || async { Ok(!remote_names(&h1.status().await?).contains(&an)) }).await?;
    let log1 = std::fs::read_to_string(&h1.log)?;
    ensure!(log1.contains("gateway link down: the peer gateway shut down"), "gw-1 did not see a clean close");
    let log0 = std::fs::read_to_string(&cluster.host(0)?.log)?;
    ensure!(log0.contains("stop requested") && log0.contains("gateway stopped"), "gw-0 did not log its stop");

    // Back up: a registers again (its plug retries every 2 s) and reaches b.
    cluster.hosts[0].start_gateway().await?;
    cluster.wait_links().await?;
    cluster.wait_known(&an, 0).await?;
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&bn))).await?, "pong");
    cluster.passed();
    Ok(())
}

/// `edist certs renew` + `edist reload`: the renewed certificate is served to links set up
/// after the reload while the links and relayed connections up stay up; revoking a peer by its
/// serial and reloading closes its link and drops its nodes; a broken config is refused and the
/// gateway runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_a_renewed_certificate_and_drops_a_revoked_peer() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3).await?;
    // Revoking gw-2 on gw-0 only splits a from c while b sees both: OTP 25's `global` then
    // tells b to drop one of them (prevent_overlapping_partitions), a or c as its messages
    // race. The test is about what the gateways keep up, so that is turned off.
    let partial = ["-kernel", "prevent_overlapping_partitions", "false"];
    let mut a = cluster.erl(0, "a", &partial).await?;
    let b = cluster.erl(1, "b", &partial).await?;
    let c = cluster.erl(2, "c", &partial).await?;
    let (bn, cn) = (b.name.clone(), c.name.clone());
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&bn))).await?, "pong");
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&cn))).await?, "pong");
    a.watch_nodedown(&bn).await?;
    a.watch_nodedown(&cn).await?;
    // A dial sent before its peer listened completes a second later (QUIC retransmits its first
    // packet), as another link: wait until gw-0's links to gw-1 stay the same for over a
    // second, or a dial still under way would meet the renewed certificate below. (A second
    // link that carries a connection stays until that ends.)
    let mut old = Vec::new();
    for _ in 0..15 {
        let before = link_serials(&cluster.host(0)?.status().await?, "gw-1");
        sleep(Duration::from_millis(1200)).await;
        old = link_serials(&cluster.host(0)?.status().await?, "gw-1");
        if !old.is_empty() && old == before {
            break;
        }
    }
    ensure!(!old.is_empty(), "no link from gw-0 to gw-1");

    // Renew gw-1's certificate on the "CA machine" (the test) and reload gw-1.
    let certs = cluster.dir.join("certs");
    let out = std::process::Command::new(EDIST)
        .args(["certs", "renew", "gw-1", "--days", "30", "--dir"])
        .arg(&certs)
        .output()?;
    ensure!(out.status.success(), "certs renew: {}", String::from_utf8_lossy(&out.stderr));
    let (ok, stdout, stderr) = cluster.host(1)?.edist(&["reload", "--gateway", CONTROL, "--json"]).await?;
    ensure!(ok, "edist reload: {stderr}");
    let r: Value = serde_json::from_str(&stdout)?;
    ensure!(r["report"]["certificate_changed"] == true, "{r}");
    let new = r["report"]["certificate"].as_str().context("serial")?.to_string();
    ensure!(!old.contains(&new), "the serial did not change: {r}");

    // Links up stay up (same certificate), and so do the connections on them.
    let st0 = cluster.host(0)?.status().await?;
    ensure!(link_serials(&st0, "gw-1") == old, "gw-0's link to gw-1 changed: {st0}");
    assert_eq!(a.eval(&format!("rpc:call({}, erlang, node, [])", q(&bn))).await?, bn);
    // A link set up now sees the renewed certificate: restart gw-2, whose links are new.
    cluster.hosts[2].signal_gateway("TERM", Some(Duration::from_secs(10))).await?;
    let _ = a.nodedown_at(&cn, Duration::from_secs(10)).await?;
    cluster.hosts[2].start_gateway().await?;
    cluster.wait_links().await?;
    let h2 = cluster.host(2)?;
    cluster
        .wait("gw-2's link to gw-1 to show the renewed certificate", || async {
            Ok(link_serials(&h2.status().await?, "gw-1").iter().all(|s| *s == new))
        })
        .await?;
    cluster.wait_known(&cn, 2).await?;

    // Revoke gw-2 by the serial it presents, on gw-0 only, and reload gw-0.
    let h0 = cluster.host(0)?;
    let serial2 = link_serials(&h0.status().await?, "gw-2").pop().context("no link from gw-0 to gw-2")?;
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&cn))).await?, "pong");
    a.watch_nodedown(&cn).await?;
    let toml = std::fs::read_to_string(&h0.config)?;
    std::fs::write(&h0.config, toml.replacen("[fabric]\n", &format!("[fabric]\nrevoked = [\"{serial2}\"]\n"), 1))?;
    let (ok, stdout, stderr) = h0.edist(&["reload", "--gateway", CONTROL, "--json"]).await?;
    ensure!(ok, "edist reload: {stderr}");
    let r: Value = serde_json::from_str(&stdout)?;
    ensure!(r["report"]["revoked"] == serde_json::json!(["gw-2"]), "{r}");
    let _ = a.nodedown_at(&cn, Duration::from_secs(5)).await?;
    sleep(Duration::from_secs(2)).await; // gw-2 keeps dialling: each link is refused.
    let st0 = h0.status().await?;
    ensure!(strings(&st0, "peers") == ["gw-1"], "gw-0 links to a revoked peer: {st0}");
    ensure!(!remote_names(&st0).contains(&cn), "gw-0 still knows {cn}: {st0}");
    ensure!(refusals(&st0).iter().any(|(p, r, _)| p == "gw-2" && r == "revoked"), "no revoked refusal: {st0}");
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&cn))).await?, "pang");

    // A config that does not parse: the reload fails, the gateway runs on as it was.
    let h1 = cluster.host(1)?;
    let good = std::fs::read_to_string(&h1.config)?;
    std::fs::write(&h1.config, "[fabric\n")?;
    let (ok, _, stderr) = h1.edist(&["reload", "--gateway", CONTROL]).await?;
    ensure!(!ok && stderr.contains("reload failed"), "a broken config was taken: {stderr}");
    std::fs::write(&h1.config, good)?;

    // Through all of it a stayed connected to b.
    ensure!(a.event(&format!("nodedown {bn} "), Duration::from_millis(100)).await.is_err(), "a lost b");
    assert_eq!(a.eval(&format!("lists:member({}, nodes())", q(&bn))).await?, "true");
    cluster.passed();
    Ok(())
}

/// With membership, `edist status` lists every member and its state before any link is up,
/// then the links traffic opened and why, and the role of each peer; a dead gateway turns
/// suspect, then down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_members_their_state_links_and_roles() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let setup = Setup { membership: Some(30_000), ..Setup::default() };
    let mut cluster = Cluster::start_with(3, setup).await?;
    let member = |st: &Value, name: &str| -> Option<(String, bool)> {
        let m = st.get("members")?.as_array()?.iter().find(|m| m["name"] == name)?.clone();
        Some((m["state"].as_str()?.to_string(), m["linked"].as_bool()?))
    };
    let h0 = cluster.host(0)?;
    cluster
        .wait("gw-0 to see gw-1 and gw-2 alive", || async {
            // (Its control port may not be up yet on a loaded machine.)
            let Ok(st) = h0.status().await else { return Ok(false) };
            Ok(["gw-1", "gw-2"].iter().all(|g| member(&st, g).is_some_and(|(s, _)| s == "alive")))
        })
        .await?;
    let (ok, text, _) = h0.edist(&["status", "--gateway", CONTROL]).await?;
    ensure!(ok && text.contains("membership:") && text.contains("alive"), "{text}");

    let mut a = cluster.erl(0, "a", &[]).await?;
    let b = cluster.erl(1, "b", &[]).await?;
    assert_eq!(a.eval(&format!("net_adm:ping({})", q(&b.name))).await?, "pong");
    // (On a loaded machine SWIM may suspect a member for a moment: wait for alive again.)
    cluster
        .wait("gw-0 to see gw-1 alive and linked", || async {
            Ok(member(&h0.status().await?, "gw-1") == Some(("alive".into(), true)))
        })
        .await?;
    let st = h0.status().await?;
    let links = st["links"].as_array().context("links")?;
    ensure!(
        links.iter().any(|l| l["peer"] == "gw-1" && (l["why"] == "traffic" || l["why"] == "accepted")),
        "no link to gw-1 opened for traffic: {st}"
    );
    let roles = st["roles"].as_array().context("roles")?;
    ensure!(
        roles.iter().any(|r| r["peer"] == "gw-1" && r["role"] == "trusted" && r["from"] == "default"),
        "no role for gw-1: {st}"
    );
    let (_, text, _) = h0.edist(&["status", "--gateway", CONTROL]).await?;
    ensure!(text.contains("role trusted (default)") && text.contains("dialled"), "{text}");

    // gw-2 dies without a word: suspect first (or down at once), then down.
    cluster.hosts[2].kill_gateway().await?;
    let h0 = cluster.host(0)?;
    cluster
        .wait("gw-0 to see gw-2 go down", || async {
            Ok(member(&h0.status().await?, "gw-2").is_some_and(|(s, _)| s == "down"))
        })
        .await?;
    cluster.passed();
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Devices without a gateway (`edist_device_dist`, `[devices]`).

/// `edist_device_dist.beam`, compiled from the source `edist erl-flags --device-source` ships.
fn device_connector_dir() -> Result<&'static PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let make = || -> Result<PathBuf> {
        let out = std::process::Command::new(EDIST).args(["erl-flags", "--device-source"]).output()?;
        ensure!(out.status.success(), "edist erl-flags --device-source: {}", String::from_utf8_lossy(&out.stderr));
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("edist-device-erl-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let src = dir.join("edist_device_dist.erl");
        std::fs::write(&src, out.stdout)?;
        let out = std::process::Command::new("erlc").arg("-o").arg(&dir).arg(&src).output().context("erlc")?;
        ensure!(out.status.success(), "erlc: {}", String::from_utf8_lossy(&out.stdout));
        Ok(dir)
    };
    DIR.get_or_init(|| make().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// A device's "host": a namespace whose only link goes to host `hub` (10.215.<subnet>.0/24, no
/// default route), running no gateway and no edist binary.
struct DeviceHost {
    /// The hub's address on their link.
    hub_ip: Ipv4Addr,
    ip: Ipv4Addr,
    ns: Netns,
}

impl Cluster {
    fn device_host(&self, hub: usize) -> Result<DeviceHost> {
        let subnet = self.host(hub)?.ip.octets()[2];
        let (hub_ip, dev_ip) = (Ipv4Addr::new(10, 215, subnet, 1), Ipv4Addr::new(10, 215, subnet, 2));
        let ns = Netns::new()?;
        let hn = &self.host(hub)?.ns.name;
        ip(&["-n", hn, "link", "add", "dev0", "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
        ip(&["-n", hn, "addr", "add", &format!("{hub_ip}/24"), "dev", "dev0"])?;
        ip(&["-n", hn, "link", "set", "dev0", "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &format!("{dev_ip}/24"), "dev", "eth0"])?;
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
        Ok(DeviceHost { hub_ip, ip: dev_ip, ns })
    }

    /// Issues a device certificate for node `name` (files `certs/<name>.pem`, `.key`).
    fn device_cert(&self, name: &str) -> Result<()> {
        let out = std::process::Command::new(EDIST)
            .args(["certs", "issue", "--device", name, "--dir"])
            .arg(self.dir.join("certs"))
            .output()?;
        ensure!(out.status.success(), "edist certs issue --device: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// A device BEAM `name` in `dev`'s namespace with the connector only, dialling the hub on
    /// their link; `certfile`: the certificate of that name unless given.
    async fn device_beam(&self, dev: &DeviceHost, name: &str, cert_of: Option<&str>) -> Result<Node> {
        let t = tools()?;
        let certs = self.dir.join("certs");
        let cert = cert_of.unwrap_or(name);
        let env = format!(
            "[{{hubs,[{{\"gw-0\",\"{}\",4372}}]}},{{cacertfile,\"{}\"}},{{certfile,\"{}\"}},{{keyfile,\"{}\"}}]",
            dev.hub_ip,
            certs.join("ca.pem").display(),
            certs.join(format!("{cert}.pem")).display(),
            certs.join(format!("{cert}.key")).display()
        );
        let mut cmd = dev.ns.command("erl");
        cmd.args(["-proto_dist", "edist_device", "-start_epmd", "false", "-sname", name, "-setcookie", &self.cookie])
            .arg("-pa")
            .arg(device_connector_dir()?)
            .arg("-pa")
            .arg(&t.helper_dir)
            .args(["-kernel", "edist_device", &env])
            .env("ERL_EPMD_PORT", "1");
        Node::spawn(cmd, name.to_string(), &self.dir.join(format!("{}.stderr", name.replace('.', "_")))).await
    }
}

/// Whether `ip route get ADDR` in namespace `ns` finds a route.
fn routes(ns: &str, addr: Ipv4Addr) -> Result<bool> {
    let out = std::process::Command::new("ip").args(["-n", ns, "route", "get", &addr.to_string()]).output()?;
    Ok(out.status.success())
}

/// Refusals by the device hub of `who` for `reason`.
fn refused_for(st: &Value, who: &str, reason: &str) -> u64 {
    refusals(st).iter().filter(|(p, r, _)| p == who && r == reason).map(|(_, _, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_gateway_reaches_the_cluster_through_its_hub() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let tail = |i| match i {
        // A short idle timeout: a silent device is found out below.
        0 => "\n[devices]\nlisten = \"0.0.0.0:4372\"\nidle_timeout_ms = 2000\n".to_string(),
        _ => String::new(),
    };
    let mut cluster = Cluster::start_with(3, Setup { tail: Some(&tail), ..Setup::default() }).await?;
    let dev_host = cluster.device_host(0)?;
    let dname = format!("{}@board", unique("dev"));
    let other = format!("{}@board", unique("devb"));
    cluster.device_cert(&dname)?;
    cluster.device_cert(&other)?;

    // The device's namespace reaches its hub only; the other hosts cannot reach it at all.
    ensure!(routes(&dev_host.ns.name, dev_host.hub_ip)?, "the device cannot route to its hub");
    for h in 1..3 {
        let host = cluster.host(h)?;
        ensure!(!routes(&host.ns.name, dev_host.ip)?, "host {h} routes to the device");
        ensure!(!routes(&dev_host.ns.name, host.ip)?, "the device routes to host {h}");
    }

    let mut n0 = cluster.erl(0, "hubnode", &[]).await?;
    let mut n1 = cluster.erl(1, "n1", &[]).await?;
    let mut n2 = cluster.erl(2, "n2", &[]).await?;
    assert_eq!(n1.eval("edist_fabric_t:start_server(kv), ok").await?, "ok");
    let mut dev = cluster.device_beam(&dev_host, &dname, None).await?;
    cluster.wait_known(&dname, 0).await?;
    // Nothing of edist but the connector runs there, and nothing listens.
    let pids = std::process::Command::new("ip").args(["netns", "pids", &dev_host.ns.name]).output()?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        ensure!(!comm.contains("edist"), "an edist process runs on the device's host: {comm}");
    }
    let ss = std::process::Command::new("ip").args(["netns", "exec", &dev_host.ns.name, "ss", "-Htln"]).output()?;
    ensure!(String::from_utf8_lossy(&ss.stdout).trim().is_empty(), "the device listens: {:?}", ss.stdout);

    let (q0, q1, q2, qd) = (q(&n0.name), q(&n1.name), q(&n2.name), q(&dname));
    // The device reaches nodes on every host...
    for qn in [&q0, &q1, &q2] {
        assert_eq!(dev.eval(&format!("net_adm:ping({qn})")).await?, "pong", "device -> {qn}");
    }
    assert_eq!(dev.eval(&format!("gen_server:call({{kv, {q1}}}, {{put, k, 42}})")).await?, "ok");
    assert_eq!(n1.eval("gen_server:call(kv, {get, k})").await?, "42");
    // ...and they reach it: ping, rpc (the hub relays; the device's answers pass its role).
    for n in [&mut n0, &mut n1, &mut n2] {
        assert_eq!(n.eval(&format!("net_adm:ping({qd})")).await?, "pong", "{} -> device", n.name);
        assert_eq!(n.eval(&format!("rpc:call({qd}, erlang, node, [])")).await?, printed(&dname));
    }
    // Links: a node on another host links to a process of the device; its exit arrives.
    let r = dev.eval("register(devproc, spawn(fun() -> receive stop -> exit(bye) end end)), ok").await?;
    ensure!(r == "ok", "{r}");
    for n in [&mut n1, &mut n2] {
        let r = n
            .eval(&format!(
                "process_flag(trap_exit, true), P = rpc:call({qd}, erlang, whereis, [devproc]), link(P), put(devproc, P), ok"
            ))
            .await?;
        ensure!(r == "ok", "{r}");
    }
    // A link is a signal on its way: the device has both before its process goes.
    let r = dev
        .eval(
            "W = fun W(0) -> timeout; W(N) -> case process_info(whereis(devproc), links) of \
             {links, [_, _]} -> ok; _ -> timer:sleep(10), W(N - 1) end end, W(500)",
        )
        .await?;
    ensure!(r == "ok", "the device's process was not linked from both hosts: {r}");
    assert_eq!(dev.eval("devproc ! stop, ok").await?, "ok");
    for n in [&mut n1, &mut n2] {
        let r = n.eval("P = get(devproc), receive {'EXIT', P, R} -> R after 5000 -> timeout end").await?;
        ensure!(r == "bye", "{}: the device's process exit: {r}", n.name);
    }

    // The device role's refusals: no rpc into the nodes, no kill, no link to a process that
    // did not link to it; refused at the hub and counted under the device's name.
    let r = dev.eval(&format!("rpc:call({q1}, os, getpid, [])")).await?;
    ensure!(r.contains("edist_refused"), "rpc from the device: {r}");
    // A pid handed to the device is a capability (it calls it), not a licence to kill.
    ensure!(dev.eval("register(inbox, self())").await? == "true");
    let kv = n1.eval("whereis(kv)").await?;
    let r = n1.eval(&format!("{{inbox, {qd}}} ! {{kv, whereis(kv)}}")).await?;
    ensure!(r.starts_with("{kv,"), "{r}");
    let r = dev.eval("receive {kv, P} -> put(kv, P), ok after 5000 -> timeout end").await?;
    ensure!(r == "ok", "{r}");
    assert_eq!(dev.eval("gen_server:call(get(kv), {get, k})").await?, "42");
    ensure!(dev.eval("exit(get(kv), kill)").await? == "true");
    let r = dev
        .eval(
            "P = get(kv), Me = self(), \
             spawn(fun() -> process_flag(trap_exit, true), link(P), \
                            Me ! {linked, receive {'EXIT', P, X} -> X after 5000 -> timeout end} end), \
             receive {linked, X} -> X after 6000 -> none end",
        )
        .await?;
    ensure!(r == "noproc", "a link from the device: {r}");
    sleep(Duration::from_millis(500)).await;
    assert_eq!(n1.eval("whereis(kv)").await?, kv, "kv was killed by the device");
    let st0 = cluster.host(0)?.status().await?;
    for reason in ["spawn", "signal", "link"] {
        ensure!(refused_for(&st0, &dname, reason) > 0, "no {reason} refusal counted for the device: {st0}");
    }
    ensure!(strings(&st0, "devices") == [dname.clone()], "devices: {st0}");

    // A device presenting another device's certificate under its own name is refused.
    let wrong = format!("{}@board", unique("devc"));
    let mut bad = cluster.device_beam(&dev_host, &wrong, Some(&other)).await?;
    let h0 = cluster.host(0)?;
    cluster
        .wait("the hub to refuse the wrong name", || async {
            Ok(refused_for(&h0.status().await?, &other, "device_name") > 0)
        })
        .await?;
    assert_eq!(bad.eval(&format!("net_adm:ping({q1})")).await?, "pang");
    let info = bad.eval("maps:get(last_error, edist_device_dist:info())").await?;
    ensure!(info.contains("refused"), "the wrong device was not told: {info}");
    ensure!(!remote_names(&cluster.host(1)?.status().await?).contains(&wrong), "gw-1 knows {wrong}");
    drop(bad);

    // The hub restarts: the device reconnects by itself, and everyone reaches it again.
    n1.watch_nodedown(&dname).await?;
    n2.watch_nodedown(&dname).await?;
    cluster.hosts[0].kill_gateway().await?;
    for n in [&mut n1, &mut n2] {
        n.nodedown_at(&dname, Duration::from_secs(10)).await?;
    }
    for h in 1..3 {
        let host = cluster.host(h)?;
        let d = dname.as_str();
        cluster
            .wait(&format!("gw-{h} to forget the device"), || async move {
                Ok(!remote_names(&host.status().await?).iter().any(|n| n == d))
            })
            .await?;
    }
    cluster.hosts[0].start_gateway().await?;
    cluster.wait_links().await?;
    cluster.wait_known(&dname, 0).await?;
    let r = dev.eval("maps:get(reconnects, edist_device_dist:info()) > 0").await?;
    ensure!(r == "true", "the device did not reconnect: {r}");
    assert_eq!(n2.eval(&format!("net_adm:ping({qd})")).await?, "pong");
    assert_eq!(dev.eval(&format!("net_adm:ping({q1})")).await?, "pong");

    // The device goes silent (its BEAM stopped, as a board behind a NAT that forgot it): the hub
    // closes it after the idle timeout (2 s here), and everyone sees nodedown; it comes back
    // by itself when it runs again.
    n1.watch_nodedown(&dname).await?;
    let pid = dev.child.id().context("the device's BEAM has no pid")?;
    let stopped = now_us();
    ensure!(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status()?.success());
    let at = n1.nodedown_at(&dname, Duration::from_secs(10)).await;
    ensure!(std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status()?.success());
    let at = at?;
    eprintln!("device: nodedown {:.1} ms after the device went silent (idle timeout 2 s)", ms(at - stopped));
    ensure!(at - stopped < 4_000_000, "a silent device was let go after {:.1} ms", ms(at - stopped));
    cluster.wait_known(&dname, 0).await?;
    let mut back = false;
    for _ in 0..50 {
        if n2.eval(&format!("net_adm:ping({qd})")).await? == "pong" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(back, "the device was not reached again after it ran again");
    assert_eq!(dev.eval(&format!("net_adm:ping({q1})")).await?, "pong");

    // The device's BEAM dies: nodedown everywhere within 2 s.
    n1.watch_nodedown(&dname).await?;
    n2.watch_nodedown(&dname).await?;
    let killed = dev.kill().await?;
    for n in [&mut n1, &mut n2] {
        let at = n.nodedown_at(&dname, Duration::from_secs(10)).await?;
        eprintln!("device: nodedown on {} {:.1} ms after SIGKILL of the device's BEAM", n.name, ms(at - killed));
        ensure!(at - killed < 2_000_000, "nodedown on {} took {:.1} ms", n.name, ms(at - killed));
    }
    cluster.passed();
    Ok(())
}
