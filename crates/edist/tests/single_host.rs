//! `edist gateway` on defaults (no fabric, no certificates): the nodes of one host find each
//! other through it, and `edist status` shows them.

use edist_testkit as common;

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

/// `edist gateway` with a config that has no cookie, and no `$EDIST_COOKIE` or
/// `~/.erlang.cookie` either: a single host never relays a handshake, so the gateway starts,
/// and plugged nodes with long names (`-name x@127.0.0.1`) and a cookie of their own register
/// under those names and meet. With a fabric certificate, the same config is refused with a
/// clear error; so is a config with `lanes = 0`.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_host_gateway_needs_no_cookie_and_keeps_long_names() -> Result<()> {
    require_erl();
    let dir = std::env::temp_dir().join(unique("edist-nocookie"));
    let home = dir.join("home");
    std::fs::create_dir_all(&home)?;
    let control = format!("127.0.0.1:{}", common::free_port()?);
    let certs = dir.join("certs");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, format!("[local]\ncontrol = \"{control}\"\n[fabric]\ncerts = \"{}\"\n", certs.display()))?;
    let gateway = |config: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edist"));
        cmd.arg("gateway")
            .arg("--config")
            .arg(config)
            .env("HOME", &home)
            .env_remove("EDIST_COOKIE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let mut gw = gateway(&config).spawn()?;
    let edist = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_edist")).args(args).output();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !edist(&["status", "--gateway", &control])?.status.success() {
        ensure!(gw.try_wait()?.is_none(), "the gateway exited without a cookie");
        ensure!(tokio::time::Instant::now() < deadline, "the gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flags = String::from_utf8(edist(&["erl-flags", "--gateway", &control])?.stdout)?;
    let (a, b) = (format!("{}@127.0.0.1", unique("la")), format!("{}@127.0.0.1", unique("lb")));
    let mut node_b = Command::new("erl")
        .args(flags.split_whitespace())
        .args(["-name", &b, "-setcookie", "own_cookie", "-noshell", "-noinput"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let json = String::from_utf8(edist(&["status", "--json", "--gateway", &control])?.stdout)?;
        if json.contains(&format!("\"{b}\"")) {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "{b} did not register under its long name: {json}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = format!("io:format(\"~p ~p~n\", [net_adm:ping('{b}'), nodes()]), halt().");
    let mut node_a = Command::new("erl")
        .args(flags.split_whitespace())
        .args(["-name", &a, "-setcookie", "own_cookie", "-noshell", "-noinput", "-eval", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(node_a.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??.unwrap_or_default();
    assert_eq!(line, format!("pong ['{b}']"));
    node_b.kill().await?;
    gw.kill().await?;

    // A fabric (a certificate for the gateway's name) needs the cookie.
    let out = edist(&["certs", "init", "--dir", &certs.to_string_lossy()])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let name = format!("gw-{}", host());
    let out = edist(&["certs", "issue", &name, "--dir", &certs.to_string_lossy()])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = tokio::time::timeout(Duration::from_secs(10), gateway(&config).output()).await??;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("no cookie"), "with a fabric and no cookie: {err}");

    // Numbers that would make the gateway useless are refused, naming the key.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("[local]\ncontrol = \"{control}\"\n[fabric]\nlanes = 256\n"))?;
    let out = tokio::time::timeout(Duration::from_secs(10), gateway(&bad).output()).await??;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("fabric.lanes = 256"), "lanes = 256: {err}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
