//! `edist demo`: a local show of the Rust node talking to a real OTP node.

use anyhow::{bail, Context, Result};
use edist_node::{Event, Node, NodeConfig};
use edist_proto::Term;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

pub async fn run() -> Result<()> {
    if which("erl").is_none() {
        bail!("`erl` was not found. Install Erlang/OTP 25+ (Debian/Ubuntu: `sudo apt-get install erlang-base`) and try again.");
    }
    let host = short_host();
    // Our node registers with the local epmd; `epmd -daemon` is a no-op when one runs.
    let _ = Command::new("epmd").arg("-daemon").status().await;
    let cookie = format!("demo{}", std::process::id());
    let otp = format!("edist_demo_otp{}@{host}", std::process::id());
    println!("edist demo: starting an OTP node {otp} ...");
    let (alive, _) = otp.split_once('@').unwrap_or_default();
    let mut child = Command::new("erl")
        .args(["-sname", alive, "-setcookie", &cookie, "-noshell", "-noinput"])
        .args([
            "-eval",
            "register(demo_echo, spawn(fun Loop() -> receive {From, Msg} -> From ! {echo, Msg}, Loop() end end))",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting erl")?;
    let result = show(&otp, &cookie, &host).await;
    let _ = child.kill().await;
    result?;
    println!("edist demo: done, OTP node stopped.");
    Ok(())
}

async fn show(otp: &str, cookie: &str, host: &str) -> Result<()> {
    let node = Node::start(NodeConfig::new(format!("edist_demo_rust{}@{host}", std::process::id()), cookie))
        .await
        .context("starting the Rust node (is epmd running? `erl` starts it)")?;
    let started = Instant::now();
    while !node.ping(otp).await {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the OTP node {otp} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    step(&format!("ping {otp}"), &format!("pong ({} ms until it was up)", started.elapsed().as_millis()));
    let t = Instant::now();
    let v = node
        .rpc(otp, "erlang", "list_to_binary", vec![Term::list([Term::String(b"abc".to_vec())])], Duration::from_secs(5))
        .await?;
    step("rpc erlang:list_to_binary([\"abc\"])", &format!("{v} ({} µs)", t.elapsed().as_micros()));
    let v = node.rpc(otp, "lists", "seq", vec![Term::Int(1), Term::Int(10)], Duration::from_secs(5)).await?;
    step("rpc lists:seq(1, 10)", &v.to_string());
    // The other direction: OTP calls a Rust function with rpc:call.
    node.register_rpc("edist_demo", "hello", |args| Ok(Term::tuple([Term::atom("hello_from_rust"), Term::list(args)])));
    let call = Term::list([
        Term::atom(node.name()),
        Term::atom("edist_demo"),
        Term::atom("hello"),
        Term::list([Term::binary(b"otp".to_vec())]),
    ]);
    let v = node
        .rpc(otp, "erlang", "apply", vec![Term::atom("rpc"), Term::atom("call"), call], Duration::from_secs(5))
        .await?;
    // Note: the call runs on the OTP node, which calls back into us.
    step("OTP: rpc:call(rust, edist_demo, hello, [<<\"otp\">>])", &v.to_string());
    let mut mb = node.register("demo_inbox")?;
    let big = Term::Binary(vec![7u8; 20 << 20]);
    let t = Instant::now();
    mb.send_named("demo_echo", otp, Term::tuple([Term::Pid(mb.pid().clone()), big.clone()])).await?;
    match mb.recv_timeout(Duration::from_secs(30)).await? {
        Event::Message { msg, .. } if msg == Term::tuple([Term::atom("echo"), big]) => step(
            "20 MB binary to demo_echo and back",
            &format!("intact ({} ms, 64 KiB fragments both ways)", t.elapsed().as_millis()),
        ),
        other => bail!("unexpected answer from demo_echo: {other:?}"),
    }
    let v = node.rpc(otp, "erlang", "nodes", vec![Term::atom("hidden")], Duration::from_secs(5)).await?;
    step("rpc erlang:nodes(hidden)", &v.to_string());
    Ok(())
}

fn step(what: &str, result: &str) {
    println!("  {what:<52} -> {result}");
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(cmd)).find(|p| p.is_file())
}

/// The short host name, as `erl -sname` uses it.
pub fn short_host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    h.trim().split('.').next().unwrap_or("localhost").to_string()
}
