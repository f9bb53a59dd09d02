//! `edist demo`: a two-host cluster on one machine, on embedded defaults.
//!
//! Two gateways ("hosts" A and B, on loopback, with a throw-away cluster CA), a stock OTP node on
//! each, plugged in with the flags `edist erl-flags` prints. Node a pings node b, calls it with
//! rpc, and sends it a 50 MB binary that comes back; all of it crosses the QUIC fabric between
//! the gateways. Then everything is shut down.

use crate::erl_flags;
use anyhow::{bail, Context, Result};
use edist_gateway::config::{Config, PeerConfig};
use edist_gateway::gateway::Gateway;
use edist_gateway::pki;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

pub async fn run() -> Result<()> {
    if which("erl").is_none() {
        bail!("`erl` was not found. Install Erlang/OTP 25+ (Debian/Ubuntu: `sudo apt-get install erlang-base`) and try again.");
    }
    let dir = std::env::temp_dir().join(format!("edist-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = show(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn gateway_config(name: &str, certs: &std::path::Path, cookie: &str) -> Config {
    let mut c = Config { name: name.into(), cookie: Some(cookie.into()), ..Config::default() };
    c.local.control = "127.0.0.1:0".parse().unwrap_or(c.local.control);
    c.fabric.listen = "127.0.0.1:0".parse().unwrap_or(c.fabric.listen);
    c.fabric.certs = certs.to_path_buf();
    c
}

async fn show(dir: &std::path::Path) -> Result<()> {
    let certs = dir.join("certs");
    pki::init_ca(&certs, "edist-demo", &pki::CaOptions::default())?;
    for gw in ["gw-a", "gw-b"] {
        pki::issue(&certs, gw, 1, pki::IssueOptions::default())?;
    }
    println!("edist demo: a cluster CA and certificates for gateways gw-a and gw-b in {}", certs.display());
    let cookie = format!("demo{}", std::process::id());
    let ga = Gateway::start(gateway_config("gw-a", &certs, &cookie)).await?;
    let mut cb = gateway_config("gw-b", &certs, &cookie);
    let ga_fabric = ga.fabric_addr().context("gw-a has no fabric address")?;
    cb.peers.push(PeerConfig::new("gw-a", ga_fabric));
    let gb = Gateway::start(cb).await?;
    println!("  gateway gw-a: local {}  fabric {}", ga.control_addr(), ga_fabric);
    let gb_fabric = gb.fabric_addr().map(|a| a.to_string()).unwrap_or_default();
    println!("  gateway gw-b: local {}  fabric {gb_fabric}  (dials gw-a: QUIC, mutual TLS)", gb.control_addr());
    let outcome = nodes(&ga, &gb, &cookie).await;
    let st = ga.status();
    println!(
        "  gw-a status: peers {:?}, remote nodes {:?}, bytes in {} out {}",
        st.peers,
        st.remote_nodes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        st.bytes_in,
        st.bytes_out
    );
    ga.shutdown();
    gb.shutdown();
    outcome?;
    println!("edist demo: done; nodes and gateways stopped.");
    Ok(())
}

async fn nodes(ga: &Gateway, gb: &Gateway, cookie: &str) -> Result<()> {
    let id = std::process::id();
    let host = edist_gateway::config::short_hostname();
    let (a, b) = (format!("demo_a{id}"), format!("demo_b{id}"));
    let flags_a = erl_flags::flags(Some(&ga.control_addr().to_string()))?;
    let flags_b = erl_flags::flags(Some(&gb.control_addr().to_string()))?;
    println!("  erl $(edist erl-flags) = erl {flags_b}");
    let mut node_b = Command::new("erl")
        .args(flags_b.split_whitespace())
        .args(["-sname", &b, "-setcookie", cookie, "-noshell", "-noinput"])
        .args(["-eval", "register(echo, spawn(fun L() -> receive {From, M} -> From ! {echo, M}, L() end end))"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting erl")?;
    // Wait until b is registered with gw-b and announced to gw-a.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ga.status().remote_nodes.iter().any(|(n, _)| n.starts_with(&b)) {
        if tokio::time::Instant::now() > deadline {
            bail!("node {b} did not come up behind gw-b");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("  node {b}@{host} is up behind gw-b; starting node {a}@{host} behind gw-a");
    let script = format!(
        "B = '{b}@{host}', \
         {{T1, Pong}} = timer:tc(net_adm, ping, [B]), \
         io:format(\"  a: net_adm:ping(b)                      -> ~p (~p ms; the handshake is relayed by both gateways)~n\", [Pong, T1 div 1000]), \
         {{T2, R}} = timer:tc(rpc, call, [B, erlang, list_to_binary, [[\"abc\"]]]), \
         io:format(\"  a: rpc:call(b, erlang, list_to_binary, [[\\\"abc\\\"]]) -> ~p (~p us)~n\", [R, T2]), \
         Big = crypto:strong_rand_bytes(50 * 1024 * 1024), \
         {{T3, ok}} = timer:tc(fun() -> {{echo, B}} ! {{self(), Big}}, receive {{echo, Back}} -> Back = Big, ok end end), \
         io:format(\"  a: 50 MB binary to b and back           -> intact (~p ms, ~p MB/s)~n\", [T3 div 1000, round(100 / (T3 / 1000000))]), \
         io:format(\"  a: nodes() = ~p~n\", [nodes()]), \
         halt()."
    );
    let mut node_a = Command::new("erl")
        .args(flags_a.split_whitespace())
        .args(["-sname", &a, "-setcookie", cookie, "-noshell", "-noinput", "-eval", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting erl")?;
    let mut lines = BufReader::new(node_a.stdout.take().context("stdout")?).lines();
    let printed = tokio::time::timeout(Duration::from_secs(120), async {
        let mut n = 0;
        while let Ok(Some(l)) = lines.next_line().await {
            println!("{l}");
            n += 1;
        }
        n
    })
    .await
    .context("node a did not finish in time")?;
    let status = node_a.wait().await?;
    let _ = node_b.kill().await;
    if printed < 4 || !status.success() {
        bail!("node a stopped early ({status}); run with EDIST_LOG=debug for the gateways' view");
    }
    Ok(())
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(cmd)).find(|p| p.is_file())
}
