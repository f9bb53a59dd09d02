//! Metrics and `edist status` during real traffic: two gateways in this process (gw-a with the
//! Prometheus endpoint on), a stock `erl` node behind each, plugged in with `edist erl-flags`;
//! node a calls node b across the fabric with small and fragmented (> 64 KiB) messages.

use edist_testkit as common;

use anyhow::{ensure, Context, Result};
use common::{host, require_erl, unique, until};
use edist_gateway::config::{Config, PeerConfig};
use edist_gateway::gateway::Gateway;
use edist_gateway::pki;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const EDIST: &str = env!("CARGO_BIN_EXE_edist");

fn config(name: &str, certs: &Path, cookie: &str) -> Result<Config> {
    let mut c = Config { name: name.into(), cookie: Some(cookie.into()), ..Config::default() };
    c.local.control = "127.0.0.1:0".parse()?;
    c.fabric.listen = "127.0.0.1:0".parse()?;
    c.fabric.certs = certs.to_path_buf();
    Ok(c)
}

/// `GET /metrics`, parsed into `name{labels}` -> value.
async fn scrape(addr: SocketAddr) -> Result<HashMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await?;
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp)).await??;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP head")?;
    ensure!(head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').context("sample line")?;
            Ok((k.to_string(), v.parse::<f64>().with_context(|| l.to_string())?))
        })
        .collect()
}

/// Sum of the samples of family `name` whose labels contain every `label`.
fn sum(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

fn erl(flags: &[String], sname: &str, cookie: &str, eval: &str) -> Result<Child> {
    let mut c = Command::new("erl");
    c.args(flags).args(["-sname", sname, "-setcookie", cookie, "-noshell", "-noinput"]);
    if !eval.is_empty() {
        c.args(["-eval", eval]);
    }
    Ok(c.env_remove("ERL_FLAGS").stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true).spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_move_with_real_traffic() -> Result<()> {
    require_erl();
    let dir = std::env::temp_dir().join(unique("edist-obs"));
    pki::init_ca(&dir, "obs", &pki::CaOptions::default())?;
    for gw in ["gw-a", "gw-b"] {
        pki::issue(&dir, gw, 1, pki::IssueOptions::default())?;
    }
    let cookie = unique("obs");
    let mut ca = config("gw-a", &dir, &cookie)?;
    ca.metrics.listen = Some("127.0.0.1:0".parse()?);
    let ga = Gateway::start(ca).await?;
    let mut cb = config("gw-b", &dir, &cookie)?;
    cb.peers.push(PeerConfig::new("gw-a", ga.fabric_addr().context("fabric")?));
    let gb = Gateway::start(cb).await?;
    let maddr = ga.metrics_addr().context("gw-a serves metrics")?;
    ensure!(gb.metrics_addr().is_none(), "metrics are off by default");
    until("the link", || ga.status().peers == ["gw-b"]).await?;

    let before = scrape(maddr).await?;
    assert_eq!(sum(&before, "edist_link_events_total", &["peer=\"gw-b\"", "event=\"up\""]), 1.0);
    assert_eq!(sum(&before, "edist_peer_links", &[]), 1.0);
    assert_eq!(sum(&before, "edist_sent_bytes_total", &[]), 0.0);

    let plug = |gw: &Gateway| -> Result<Vec<String>> {
        let control = gw.control_addr().to_string();
        let out = std::process::Command::new(EDIST).args(["erl-flags", "--gateway", &control]).output()?;
        ensure!(out.status.success(), "erl-flags: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.split_whitespace().map(str::to_owned).collect())
    };
    let (a, b) = (unique("oa"), unique("ob"));
    let b_full = format!("{b}@{}", host());
    let _b = erl(&plug(&gb)?, &b, &cookie, "")?;
    until("gw-a to learn b", || ga.status().remote_nodes.iter().any(|(n, _)| *n == b_full)).await?;
    // 20 small calls, then 3 calls carrying 1 MB each (fragmented at 64 KiB), then wait.
    let script = format!(
        "B = '{b_full}', pong = net_adm:ping(B), \
         [{{ok, I}} = {{ok, rpc:call(B, erlang, abs, [I])}} || I <- lists:seq(1, 20)], \
         [1000000 = rpc:call(B, erlang, byte_size, [crypto:strong_rand_bytes(1000000)]) || _ <- [1, 2, 3]], \
         io:format(\"done~n\"), receive stop -> ok end."
    );
    let mut node_a = erl(&plug(&ga)?, &a, &cookie, &script)?;
    let mut lines = BufReader::new(node_a.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??.unwrap_or_default();
    assert_eq!(line, "done");

    let after = scrape(maddr).await?;
    let sent = sum(&after, "edist_sent_bytes_total", &["peer=\"gw-b\""]);
    let received = sum(&after, "edist_received_bytes_total", &["peer=\"gw-b\""]);
    ensure!(sent >= 3e6, "3 MB went to gw-b, counted {sent}");
    ensure!(received > 1000.0 && received < 1e6, "only answers came back, counted {received}");
    ensure!(sum(&after, "edist_sent_fragments_total", &[]) >= 3.0 * 15.0, "1 MB is ≥ 15 fragments of 64 KiB");
    let msgs = sum(&after, "edist_sent_messages_total", &[]);
    ensure!(msgs >= 23.0, "23 calls at least, counted {msgs}");
    // Calls go out on several lanes (by sending process), all labelled with gw-b.
    let lanes = after.keys().filter(|k| k.starts_with("edist_sent_bytes_total{peer=\"gw-b\"")).count();
    ensure!(lanes >= 2, "lanes used: {lanes}");
    assert_eq!(sum(&after, "edist_handshakes_total", &["direction=\"out\"", "outcome=\"ok\""]), 1.0);
    let count = sum(&after, "edist_gateway_packet_seconds_count", &["direction=\"out\""]);
    let inf = sum(&after, "edist_gateway_packet_seconds_bucket", &["direction=\"out\"", "le=\"+Inf\""]);
    ensure!(count >= msgs && count == inf, "histogram count {count}, +Inf bucket {inf}");
    ensure!(sum(&after, "edist_gateway_packet_seconds_sum", &["direction=\"in\""]) > 0.0);
    // Every queue drained once the calls returned (each relay withdraws what it had queued).
    assert_eq!(sum(&after, "edist_sent_queued_packets", &[]), 0.0);
    assert_eq!(sum(&after, "edist_received_queued_packets", &[]), 0.0);
    assert_eq!(sum(&after, "edist_local_nodes", &[]), 1.0);
    assert_eq!(sum(&after, "edist_relays_open", &[]), 1.0);
    // gw-b counts the same traffic the other way round (its own instance).
    let b_in = gb.status().metrics.traffic.iter().find(|t| t.peer == "gw-a").map(|t| t.inbound.bytes).unwrap_or(0);
    ensure!(b_in as f64 >= 3e6, "gw-b received {b_in}");

    // The refusal API (what ingress policy calls) shows in metrics and in `edist status --json`.
    ga.metrics().refused("gw-b", "policy_operation");
    ga.metrics().refused("gw-b", "policy_operation");
    let m = scrape(maddr).await?;
    assert_eq!(sum(&m, "edist_refusals_total", &["peer=\"gw-b\"", "reason=\"policy_operation\""]), 2.0);
    let control = ga.control_addr().to_string();
    let out = std::process::Command::new(EDIST).args(["status", "--json", "--gateway", &control]).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(st["metrics"]["refusals"], serde_json::json!([["gw-b", "policy_operation", 2]]));
    ensure!(st["bytes_out"].as_f64().unwrap_or(0.0) >= sent, "{st}");
    ensure!(st["metrics"]["traffic"][0]["lanes"].as_array().map_or(0, |l| l.len()) >= 2, "{st}");

    // --watch --json: one object per refresh; rates from the second refresh on, during traffic.
    let sent_before = ga.status().bytes_out;
    let load = format!(
        "F = fun F() -> rpc:call('{b_full}', erlang, byte_size, [crypto:strong_rand_bytes(100000)]), F() end, F()."
    );
    let mut busy = erl(&plug(&ga)?, &unique("oc"), &cookie, &load)?;
    until("traffic from the busy node", || ga.status().bytes_out > sent_before + 1_000_000).await?;
    // Scrapes during traffic see the counters move.
    let s1 = sum(&scrape(maddr).await?, "edist_sent_bytes_total", &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s2 = sum(&scrape(maddr).await?, "edist_sent_bytes_total", &[]);
    ensure!(s2 > s1 + 100_000.0, "sent bytes during traffic: {s1} then {s2}");
    let watch = Command::new(EDIST)
        .args(["status", "--watch", "--json", "--count", "3", "--interval", "300", "--gateway", &control])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(20), watch.wait_with_output()).await??;
    let _ = busy.kill().await;
    let lines: Vec<Value> =
        String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 3);
    for l in &lines {
        ensure!(l["time_ms"].as_u64().is_some() && l["status"]["name"] == "gw-a", "{l}");
    }
    ensure!(lines[0]["rates"].as_array().is_some_and(|r| r.is_empty()), "no rates without a previous reading");
    for l in &lines[1..] {
        let r = &l["rates"][0];
        ensure!(r["peer"] == "gw-b" && r["out_bytes_per_s"].as_f64().unwrap_or(0.0) > 10_000.0, "{l}");
    }
    // Text --watch into a pipe: plain blocks, no ANSI escapes.
    let out = std::process::Command::new(EDIST)
        .args(["status", "--watch", "--count", "2", "--interval", "100", "--gateway", &control])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(text.matches("gateway gw-a").count() == 2 && !text.contains('\x1b'), "{text}");
    ensure!(text.contains("policy_operation") && text.contains("lane "), "{text}");
    // On a terminal (script(1) gives it one) each refresh clears the screen first.
    let cmd = format!("{EDIST} status --watch --count 2 --interval 100 --gateway {control}");
    match std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).output() {
        Ok(out) => {
            let tty = String::from_utf8_lossy(&out.stdout);
            ensure!(tty.matches("\x1b[H\x1b[2Jgateway gw-a").count() == 2, "{tty:?}");
        }
        Err(_) => eprintln!("script(1) not found: the terminal view is not checked"),
    }
    // The gateway gone: --watch says so on each refresh and fails at the end of --count.
    let gone = format!("127.0.0.1:{}", common::free_port()?);
    let out = std::process::Command::new(EDIST)
        .args(["status", "--watch", "--json", "--count", "2", "--interval", "50", "--gateway", &gone])
        .output()?;
    let lines: Vec<Value> =
        String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(!out.status.success() && lines.len() == 2 && lines[1]["error"].is_string(), "{lines:?}");

    ga.shutdown();
    gb.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_logs_as_json_lines_on_request() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("edist-logs"));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        "cookie = \"logs\"\n[local]\ncontrol = \"127.0.0.1:0\"\n[fabric]\ncerts = \"/nonexistent\"\n",
    )?;
    for (format, json) in [("json", true), ("text", false)] {
        let mut gw = Command::new(EDIST)
            .args(["gateway", "--config"])
            .arg(&cfg)
            .env("EDIST_LOG", "info")
            .env("EDIST_LOG_FORMAT", format)
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(gw.stderr.take().context("stderr")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await??.unwrap_or_default();
        let parsed = serde_json::from_str::<Value>(&line);
        ensure!(parsed.is_ok() == json, "{format}: {line}");
        if let Ok(v) = parsed {
            ensure!(v["fields"]["message"] == "gateway started" && v["level"] == "INFO", "{v}");
        } else {
            ensure!(line.contains("gateway started"), "{line}");
        }
        gw.kill().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A free UDP port on loopback (bound, read, released).
fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `path` contains `needle`.
async fn wait_for_line(path: &Path, needle: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if std::fs::read_to_string(path).unwrap_or_default().contains(needle) {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "{} never logged {needle:?}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, sig: &str) -> Result<()> {
    let pid = child.id().context("pid")?;
    ensure!(std::process::Command::new("kill").args(["-s", sig, &pid.to_string()]).status()?.success());
    Ok(())
}

/// Two gateways linked over the fabric, logging JSON at their default level from start to stop
/// (link up, SIGHUP reload, SIGTERM): every line is one JSON object, each event is logged once
/// (a link dialled by both sides is one "gateway link up" per gateway), and both exit 0. Text
/// logs written to a file carry no colour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_from_start_to_stop() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("edist-jsonlogs"));
    pki::init_ca(&dir, "logs", &pki::CaOptions::default())?;
    let ports = [free_udp_port()?, free_udp_port()?];
    let names = ["gw-a", "gw-b"];
    let mut gws = vec![];
    for i in 0..2 {
        pki::issue(&dir, names[i], 1, pki::IssueOptions::default())?;
        let cfg = dir.join(format!("{}.toml", names[i]));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{}\"\ncookie = \"logs\"\n[local]\ncontrol = \"127.0.0.1:0\"\n[fabric]\nlisten = \
                 \"127.0.0.1:{}\"\ncerts = \"{}\"\n[[peers]]\nname = \"{}\"\naddr = \"127.0.0.1:{}\"\n",
                names[i],
                ports[i],
                dir.display(),
                names[1 - i],
                ports[1 - i]
            ),
        )?;
        let log = dir.join(format!("{}.log", names[i]));
        let child = Command::new(EDIST)
            .args(["--log-format", "json", "gateway", "--config"])
            .arg(&cfg)
            .env_remove("EDIST_LOG")
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        gws.push((child, log));
    }
    for (_, log) in &gws {
        wait_for_line(log, "gateway link up").await?;
    }
    // Both dialled: give the duplicate link time to be noticed and closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&gws[0].0, "HUP")?;
    wait_for_line(&gws[0].1, "configuration reloaded").await?;
    for (child, _) in &gws {
        signal(child, "TERM")?;
    }
    for (child, log) in &mut gws {
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
        ensure!(status.success(), "{}: exit {status}", log.display());
        let text = std::fs::read_to_string(&*log)?;
        let mut messages = vec![];
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
            messages.push(v["fields"]["message"].as_str().unwrap_or_default().to_string());
        }
        let count = |m: &str| messages.iter().filter(|x| *x == m).count();
        ensure!(count("gateway started") == 1, "{text}");
        ensure!(count("gateway link up") == 1, "a link logged more than once:\n{text}");
        ensure!(count("gateway stopped") == 1, "{text}");
        ensure!(!text.contains("Some("), "Rust debug output in the log:\n{text}");
    }

    // Text into a file: no ANSI colour, even without NO_COLOR.
    let cfg = dir.join("single.toml");
    std::fs::write(
        &cfg,
        "cookie = \"logs\"\n[local]\ncontrol = \"127.0.0.1:0\"\n[fabric]\ncerts = \"/nonexistent\"\n",
    )?;
    let log = dir.join("text.log");
    let child = Command::new(EDIST)
        .args(["gateway", "--config"])
        .arg(&cfg)
        .env_remove("EDIST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("EDIST_LOG_FORMAT")
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()?;
    wait_for_line(&log, "gateway started").await?;
    signal(&child, "INT")?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await??.status;
    ensure!(status.success(), "exit {status}");
    let text = std::fs::read_to_string(&log)?;
    ensure!(!text.contains('\x1b'), "colour in a file:\n{text}");
    ensure!(text.contains("gateway stopped"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
