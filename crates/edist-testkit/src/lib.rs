//! Test support shared by the workspace's integration tests (dev-only, never published): a
//! private epmd and real `erl` nodes driven through a REPL, all killed when dropped; unique
//! names and free ports.

use anyhow::{bail, ensure, Context, Result};
use edist_node::epmd::EpmdClient;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{sleep, Instant};

/// Polls `f` every 20 ms until it holds, for at most 30 s.
pub async fn until(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Fails with install instructions when Erlang/OTP is missing.
pub fn require_erl() {
    let ok =
        std::process::Command::new("erl").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    assert!(ok, "these tests need a real Erlang/OTP 25+: install it (Debian: apt-get install erlang-base)");
}

/// The short host name as `erl -sname` sees it.
pub fn host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    h.trim().split('.').next().unwrap_or("localhost").to_string()
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// A private epmd on a free port (killed on drop), so tests neither need nor disturb 4369.
pub struct Epmd {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Epmd {
    /// Starts one (`epmd -port P`), retrying another port if that one was taken meanwhile.
    pub async fn start() -> Result<Epmd> {
        require_erl();
        for _ in 0..5 {
            let port = free_port()?;
            let mut child = Command::new("epmd")
                .args(["-port", &port.to_string(), "-relaxed_command_check"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("spawning epmd")?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break; // port taken; epmd exits with status 0
                }
                if EpmdClient::new(addr).with_timeout(Duration::from_secs(1)).names().await.is_ok() {
                    // Make sure it is *our* epmd that answered, not one already on that port.
                    if child.try_wait()?.is_none() {
                        return Ok(Epmd { child, port });
                    }
                    break;
                }
                sleep(Duration::from_millis(20)).await;
            }
        }
        bail!("could not start a private epmd")
    }

    /// Its address on loopback.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills it now (dropping does too).
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A real OTP node running `erl -sname ... -eval EVAL`.
pub struct Erl {
    child: Child,
    pub name: String,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Lines printed before the node reported ready.
    early: std::collections::VecDeque<String>,
}

impl Erl {
    /// Starts `erl`, runs `eval` (which must not block) and waits until it has finished.
    pub async fn start(epmd: &Epmd, sname: &str, cookie: &str, eval: &str) -> Result<Erl> {
        Self::start_with(epmd, sname, cookie, eval, &[]).await
    }

    /// The same, with more `erl` arguments (`extra`).
    pub async fn start_with(epmd: &Epmd, sname: &str, cookie: &str, eval: &str, extra: &[&str]) -> Result<Erl> {
        let mut cmd = Command::new("erl");
        cmd.args(["-sname", sname, "-setcookie", cookie, "-noshell", "-noinput"])
            .args(extra)
            .env("ERL_EPMD_PORT", epmd.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        // The node registers with epmd before -eval runs: wait for the eval to finish instead.
        let eval = if eval.is_empty() { String::new() } else { format!("{eval}, ") };
        cmd.args(["-eval", &format!("{eval}io:format(\"edist_ready~n\")")]);
        let mut child = cmd.spawn().context("spawning erl")?;
        let stdout = BufReader::new(child.stdout.take().context("erl stdout")?).lines();
        let mut erl = Erl { child, name: format!("{sname}@{}", host()), stdout, early: Default::default() };
        loop {
            let line = erl.next_line(Duration::from_secs(60)).await.with_context(|| format!("erl {sname} starting"))?;
            if line == "edist_ready" {
                break;
            }
            erl.early.push_back(line);
        }
        ensure!(EpmdClient::new(epmd.addr()).port_please(sname).await?.is_some(), "erl {sname} is not in epmd");
        Ok(erl)
    }

    /// Next line the node printed, within `within`.
    pub async fn line(&mut self, within: Duration) -> Result<String> {
        match self.early.pop_front() {
            Some(l) => Ok(l),
            None => self.next_line(within).await,
        }
    }

    async fn next_line(&mut self, within: Duration) -> Result<String> {
        match tokio::time::timeout(within, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => bail!("erl {} closed its stdout", self.name),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("erl {} printed nothing within {within:?}", self.name),
        }
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// An `-eval` that reads one Erlang expression per line from stdin and prints
/// `result <term>` (after printing `ready` once).
pub const REPL: &str = r#"Loop = fun L() ->
    case io:get_line("") of
        eof -> halt();
        Line ->
            R = try
                    {ok, Toks, _} = erl_scan:string(Line),
                    {ok, Exprs} = erl_parse:parse_exprs(Toks),
                    {value, V, _} = erl_eval:exprs(Exprs, []),
                    V
                catch C:E -> {caught, C, E}
                end,
            io:format("result ~0p~n", [R]),
            L()
    end
end,
io:format("ready~n"),
Loop()."#;
