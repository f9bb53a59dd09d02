//! The edist_epmd plug with real `erl` nodes against the gateway's control server
//! (`StaticDirectory`), without any epmd daemon. The flags come from the built
//! `edist erl-flags`.

use edist_testkit as common;

use anyhow::{bail, ensure, Context, Result};
use common::{host, require_erl, unique, REPL};
use edist_gateway::local::control::{self, LocalDirectory, StaticDirectory};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// A control server on a free loopback port.
struct Gateway {
    addr: SocketAddr,
    dir: Arc<StaticDirectory>,
    task: JoinHandle<()>,
}

impl Gateway {
    async fn start() -> Result<Gateway> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    async fn start_on(addr: SocketAddr) -> Result<Gateway> {
        // Retry: a gateway just stopped on this address may still hold the port for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
            }
        };
        let addr = listener.local_addr()?;
        let dir = Arc::new(StaticDirectory::new(host()));
        let task = tokio::spawn(control::serve(listener, dir.clone()));
        Ok(Gateway { addr, dir, task })
    }

    async fn wait_until(&self, what: &str, cond: impl Fn(&StaticDirectory) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(&self.dir) {
            ensure!(Instant::now() < deadline, "timed out waiting until {what}; names: {:?}", self.dir.names());
            sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("edist-plug-cache")
}

/// Runs the built `edist erl-flags` with `args`; returns (status ok, stdout, stderr).
fn run_erl_flags(args: &[&str], path: Option<&str>) -> Result<(bool, String, String)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edist"));
    cmd.arg("erl-flags").args(args).env("XDG_CACHE_HOME", cache_dir());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().context("running edist erl-flags")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The flags for a gateway at `addr`, as `$(edist erl-flags --gateway ...)` gives them.
fn erl_flags(addr: SocketAddr) -> Result<Vec<String>> {
    let (ok, out, err) = run_erl_flags(&["--gateway", &addr.to_string()], None)?;
    ensure!(ok, "edist erl-flags failed: {err}");
    ensure!(out.lines().count() == 1, "expected one line, got {out:?}");
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

fn erl_command(flags: &[String], sname: &str, cookie: &str) -> Command {
    let mut cmd = Command::new("erl");
    cmd.args(["-sname", sname, "-setcookie", cookie, "-noshell"])
        .args(flags)
        // Make sure nothing falls back to a real epmd: there is none on this port.
        .env("ERL_EPMD_PORT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A real `erl` node that evaluates the expressions it is sent, one per line.
struct Node {
    child: Child,
    full_name: String,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Node {
    async fn start(flags: &[String], sname: &str, cookie: &str) -> Result<Node> {
        let mut child = erl_command(flags, sname, cookie).arg("-eval").arg(REPL).spawn().context("spawning erl")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut node = Node { child, full_name: format!("{sname}@{}", host()), stdin, stdout };
        let line = node.line(Duration::from_secs(30)).await.with_context(|| format!("{sname} starting"))?;
        ensure!(line == "ready", "{sname} printed {line:?} instead of ready");
        Ok(node)
    }

    async fn line(&mut self, within: Duration) -> Result<String> {
        match timeout(within, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => bail!("{} closed its stdout", self.full_name),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("{} printed nothing within {within:?}", self.full_name),
        }
    }

    /// Evaluates `expr` (an Erlang expression, without the final dot); returns the printed result.
    async fn eval(&mut self, expr: &str) -> Result<String> {
        self.stdin.write_all(format!("{expr}.\n").as_bytes()).await?;
        self.stdin.flush().await?;
        loop {
            let line = self.line(Duration::from_secs(30)).await.with_context(|| format!("evaluating {expr}"))?;
            if let Some(r) = line.strip_prefix("result ") {
                return Ok(r.to_owned());
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Runs a command that is expected to stop by itself; returns (exit ok, stdout + stderr, time).
async fn run_to_exit(mut cmd: Command, within: Duration) -> Result<(bool, String, Duration)> {
    cmd.stdin(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let status = timeout(within, async {
        let (r1, r2) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
        r1?;
        r2?;
        child.wait().await
    })
    .await
    .with_context(|| format!("still running after {within:?}"))??;
    let elapsed = t0.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&o), String::from_utf8_lossy(&e));
    Ok((status.success(), text, elapsed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_register_ping_list_and_unregister() -> Result<()> {
    require_erl();
    let gw = Gateway::start().await?;
    let flags = erl_flags(gw.addr)?;
    let cookie = unique("cookie");
    let (a_name, b_name) = (unique("a"), unique("b"));
    let mut b = Node::start(&flags, &b_name, &cookie).await?;
    let mut a = Node::start(&flags, &a_name, &cookie).await?;
    let (a_full, b_full) = (a.full_name.clone(), b.full_name.clone());

    // Both registered, with their real listen ports.
    let a_port = gw.dir.resolve(&a_full).context("a not registered")?;
    let b_port = gw.dir.resolve(&b_full).context("b not registered")?;
    let names = gw.dir.names();
    assert!(names.contains(&(a_name.clone(), a_port)) && names.contains(&(b_name.clone(), b_port)), "{names:?}");
    assert_eq!(b.eval("erlang:node()").await?, b_full.clone());

    // a reaches b: address_please resolved through the plug to b's real port.
    assert_eq!(a.eval(&format!("net_adm:ping('{b_full}')")).await?, "pong");
    assert_eq!(a.eval(&format!("rpc:call('{b_full}', erlang, node, [])")).await?, b_full.clone());
    let addr = a.eval(&format!("proplists:get_value(address, element(2, net_kernel:node_info('{b_full}')))")).await?;
    assert!(addr.contains(&format!("{{{{127,0,0,1}},{b_port}}}")), "{addr}");
    // Unknown nodes are pang, quickly.
    let t0 = Instant::now();
    assert_eq!(a.eval(&format!("net_adm:ping('nobody{}@{}')", std::process::id(), host())).await?, "pang");
    assert!(t0.elapsed() < Duration::from_secs(3), "pang took {:?}", t0.elapsed());

    // net_adm:names() lists both through NAMES_REQ.
    let listed = a.eval("net_adm:names()").await?;
    assert!(listed.starts_with("{ok,"), "{listed}");
    assert!(listed.contains(&format!("{{\"{a_name}\",{a_port}}}")), "{listed}");
    assert!(listed.contains(&format!("{{\"{b_name}\",{b_port}}}")), "{listed}");

    // Killing b's OS process unregisters it.
    assert!(b.pid().is_some());
    b.kill().await?;
    gw.wait_until("b is unregistered", |d| d.resolve(&b_full).is_none()).await?;
    assert!(gw.dir.resolve(&a_full).is_some());
    // and a sees it go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.eval("nodes()").await? != "[]" {
        ensure!(Instant::now() < deadline, "a still connected to b");
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.eval(&format!("net_adm:ping('{b_full}')")).await?, "pang");

    // Stopping a normally unregisters it too.
    a.stdin.write_all(b"init:stop().\n").await?;
    a.stdin.flush().await?;
    gw.wait_until("a is unregistered", |d| d.resolve(&a_full).is_none()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_again_after_a_gateway_restart() -> Result<()> {
    require_erl();
    let gw = Gateway::start().await?;
    let addr = gw.addr;
    let flags = erl_flags(addr)?;
    let mut a = Node::start(&flags, &unique("a"), &unique("cookie")).await?;
    let port = gw.dir.resolve(&a.full_name).context("a not registered")?;
    drop(gw);
    let gw = Gateway::start_on(addr).await?;
    // The plug retries every 2 s.
    gw.wait_until("a is registered again", |d| d.resolve(&a.full_name) == Some(port)).await?;
    // The node itself never noticed.
    assert_eq!(a.eval("erlang:node()").await?, a.full_name);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_name_is_refused() -> Result<()> {
    require_erl();
    let gw = Gateway::start().await?;
    let flags = erl_flags(gw.addr)?;
    let cookie = unique("cookie");
    let name = unique("dup");
    let first = Node::start(&flags, &name, &cookie).await?;
    let port = gw.dir.resolve(&first.full_name).context("first not registered")?;

    let mut cmd = erl_command(&flags, &name, &cookie);
    cmd.args(["-eval", "io:format(\"second node started~n\"), halt()."]);
    let (ok, out, took) = run_to_exit(cmd, Duration::from_secs(20)).await?;
    eprintln!("duplicate: erl exited after {took:?}:\n{out}");
    assert!(!ok, "the second node started: {out}");
    assert!(out.contains(&format!("the name {} seems to be in use by another Erlang node", first.full_name)), "{out}");
    assert!(!out.contains("second node started"), "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The first keeps its registration.
    assert_eq!(gw.dir.resolve(&first.full_name), Some(port));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gateway_fails_fast_with_a_clear_error() -> Result<()> {
    require_erl();
    // A port nobody listens on.
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port()?).parse()?;
    let flags = erl_flags(addr)?;
    let mut cmd = erl_command(&flags, &unique("c"), "cookie");
    cmd.args(["-eval", "io:format(\"c started~n\"), halt()."]);
    let (ok, out, took) = run_to_exit(cmd, Duration::from_secs(20)).await?;
    eprintln!("no gateway: erl exited after {took:?}:\n{out}");
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("edist_epmd: cannot reach the edist gateway at {addr}: econnrefused")), "{out}");
    assert!(!out.contains("c started"), "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_gateway_fails_within_the_timeout() -> Result<()> {
    require_erl();
    // Accepts (the kernel's backlog does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = silent.local_addr()?;
    let flags = erl_flags(addr)?;
    let mut cmd = erl_command(&flags, &unique("s"), "cookie");
    cmd.args(["-eval", "io:format(\"s started~n\"), halt()."]);
    let (ok, out, took) = run_to_exit(cmd, Duration::from_secs(20)).await?;
    eprintln!("silent gateway: erl exited after {took:?}:\n{out}");
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("edist_epmd: cannot reach the edist gateway at {addr}: timeout")), "{out}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(silent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elixir_node_pings_through_the_plug() -> Result<()> {
    require_erl();
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
    let gw = Gateway::start().await?;
    let flags = erl_flags(gw.addr)?;
    let cookie = unique("cookie");
    let a = Node::start(&flags, &unique("a"), &cookie).await?;
    let e_name = unique("e");
    let mut cmd = Command::new("elixir");
    cmd.args(["--erl", &flags.join(" "), "--sname", &e_name, "--cookie", &cookie, "-e"])
        .arg(format!("IO.inspect Node.ping(:\"{}\")", a.full_name))
        .env("ERL_EPMD_PORT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (ok, out, _) = run_to_exit(cmd, Duration::from_secs(60)).await?;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), ":pong", "{out}");
    Ok(())
}

#[test]
fn erl_flags_line() -> Result<()> {
    require_erl();
    let (ok, default, err) = run_erl_flags(&[], None)?;
    assert!(ok, "{err}");
    let default = default.trim_end_matches('\n');
    assert!(!default.contains('\n'));
    let dir = cache_dir().join("edist");
    let rest = default.strip_prefix("-epmd_module edist_epmd -start_epmd false -pa ").context(default.to_owned())?;
    assert!(rest.starts_with(&dir.display().to_string()), "{rest}");
    assert!(!rest.contains(' '), "{rest}");
    assert!(PathBuf::from(rest).join("edist_epmd.beam").is_file());

    // The default address is left out; others are passed; the cache is reused.
    let (_, explicit_default, _) = run_erl_flags(&["--gateway", "127.0.0.1:4370"], None)?;
    assert_eq!(explicit_default.trim_end(), default);
    let (_, other, _) = run_erl_flags(&["--gateway", "127.0.0.1:5999"], None)?;
    assert_eq!(other.trim_end(), format!("{default} -edist_gateway 127.0.0.1:5999"));

    let (ok, out, err) = run_erl_flags(&["--gateway", "nonsense"], None)?;
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("HOST:PORT"), "{err}");

    // Without erlc: a clear error. (An empty cache, so that it has to compile.)
    let empty = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("edist-empty-path");
    std::fs::create_dir_all(&empty)?;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edist"));
    cmd.args(["erl-flags"])
        .env("PATH", &empty)
        .env("XDG_CACHE_HOME", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("edist-no-erlc-cache"));
    let out = cmd.output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("`erlc` was not found") && err.contains("apt-get install erlang-base"), "{err}");
    Ok(())
}
