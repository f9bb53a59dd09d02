//! `edist gateway` on defaults (no fabric, no certificates): the nodes of one host find each
//! other through it, and `edist status` shows them.

#[path = "../../edist-node/tests/common/mod.rs"]
mod common;

use anyhow::{ensure, Context, Result};
use common::{host, require_erl, unique};
use edist_gateway::config::Config;
use edist_gateway::gateway::Gateway;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn nodes_of_one_host_meet_through_the_gateway() -> Result<()> {
    require_erl();
    let mut cfg = Config { cookie: Some("single".into()), ..Config::default() };
    cfg.local.control = "127.0.0.1:0".parse()?;
    cfg.fabric.certs = std::env::temp_dir().join(unique("no-certs"));
    let gw = Gateway::start(cfg).await?;
    let control = gw.control_addr().to_string();
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_edist")).args(["erl-flags", "--gateway", &control]).output()?;
    let flags = String::from_utf8(out.stdout)?;
    let (a, b) = (unique("sa"), unique("sb"));
    let _b = Command::new("erl")
        .args(flags.split_whitespace())
        .args(["-sname", &b, "-setcookie", "single", "-noshell", "-noinput"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !gw.status().local_nodes.iter().any(|(n, _)| n.starts_with(&b)) {
        ensure!(tokio::time::Instant::now() < deadline, "{b} did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = format!("io:format(\"~p ~p~n\", [net_adm:ping('{b}@{}'), nodes()]), halt().", host());
    let mut node_a = Command::new("erl")
        .args(flags.split_whitespace())
        .args(["-sname", &a, "-setcookie", "single", "-noshell", "-noinput", "-eval", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(node_a.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??.unwrap_or_default();
    assert_eq!(line, format!("pong [{b}@{}]", host()));
    // `edist status --json` through the control port sees the registered node.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edist"))
        .args(["status", "--json", "--gateway", &control])
        .output()?;
    let json = String::from_utf8(out.stdout)?;
    ensure!(json.contains(&format!("{b}@")) && json.contains("\"peers\": []"), "{json}");
    gw.shutdown();
    Ok(())
}
