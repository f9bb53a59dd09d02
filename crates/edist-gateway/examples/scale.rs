//! The scale run of `bench/run scale`: G hosts, each a process of its own with one gateway and
//! R Rust-native nodes behind it (joined through the gateway's control port, as BEAM nodes
//! are), all on 127.0.0.1. Every node connects to K random others and messages them; the
//! fabric then idles; then one host is killed (SIGKILL) and every host reports when the dead
//! host's nodes are gone from its nodes' connections and its gateway's registry.
//!
//! `cargo run --release -p edist-gateway --example scale -- [GATEWAYS] [NODES] [FANOUT] [IDLE_S]`
//! (defaults 50 20 20 10). Prints one `key value` line per figure.
//!
//! Host i's gateway listens on UDP 127.0.0.1:(21000+2i) and dials every host started before
//! it: every gateway links to every other (the registry travels on the links). With
//! `SCALE_MEMBERSHIP=1` the gateways run SWIM membership instead (gw-0 is everyone's seed):
//! the registry spreads through it, links open with the first connection and close
//! `SCALE_LINK_IDLE_S` (default 3) after the last; the run then also disconnects every node
//! and measures what an idle cluster without connections costs.
//!
//! On one loopback, 50 hosts share one port space: their impersonation listeners and loopback
//! connections exhaust the ephemeral ports long before anything else. `bench/run scale`
//! therefore gives each host a network namespace: with `SCALE_NETNS=PREFIX` and
//! `SCALE_NET=A.B`, host i runs under `ip netns exec PREFIXi` and listens on
//! `A.B.(i/250).(i%250+1):4371` (the namespaces and their bridge are the caller's).

use edist_gateway::config::{Config, PeerConfig};
use edist_gateway::gateway::Gateway;
use edist_gateway::pki::{self, CaOptions, IssueOptions};
use edist_node::{Node, NodeConfig};
use edist_proto::Term;
use rand::seq::SliceRandom;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::rss_kib;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const COOKIE: &str = "scale";
const FABRIC_BASE: u16 = 21000;

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

fn fabric_addr(i: usize) -> std::net::SocketAddr {
    match std::env::var("SCALE_NET").ok().and_then(|net| format!("{net}.{}.{}:4371", i / 250, i % 250 + 1).parse().ok())
    {
        Some(a) => a,
        // Membership listens on the fabric port + 1.
        None => std::net::SocketAddr::from(([127, 0, 0, 1], FABRIC_BASE + 2 * i as u16)),
    }
}

fn membership() -> bool {
    std::env::var("SCALE_MEMBERSHIP").is_ok_and(|v| v == "1")
}

fn link_idle() -> Duration {
    Duration::from_secs(std::env::var("SCALE_LINK_IDLE_S").ok().and_then(|v| v.parse().ok()).unwrap_or(3))
}

fn node_name(i: usize, j: usize) -> String {
    format!("n{j}@h{i}")
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--host") {
        // Hosts log to stderr with `SCALE_LOG=<filter>` (e.g. `edist_gateway=debug`).
        if let Ok(filter) = std::env::var("SCALE_LOG") {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .init();
        }
        let n = |k: usize| args.get(k).and_then(|a| a.parse().ok()).ok_or("bad --host arguments");
        let certs = PathBuf::from(args.get(6).ok_or("no certs dir")?);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        return rt.block_on(host(n(2)?, n(3)?, n(4)?, n(5)?, &certs));
    }
    let arg = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    coordinator(arg(1, 50), arg(2, 20), arg(3, 20), arg(4, 10) as u64)
}

// ------------------------------------------------------------------------------------------------
// One host: a gateway and its nodes, answering the coordinator's commands on stdin.

async fn host(i: usize, g: usize, r: usize, k: usize, certs: &Path) -> Res<()> {
    let mut c =
        Config { name: format!("gw-{i}"), host: format!("h{i}"), cookie: Some(COOKIE.into()), ..Config::default() };
    c.local.control = "127.0.0.1:0".parse()?;
    c.local.max_listeners = 1 << 16;
    c.fabric.listen = fabric_addr(i);
    c.fabric.certs = certs.to_path_buf();
    if membership() {
        c.fabric.membership = true;
        c.fabric.link_idle_ms = link_idle().as_millis() as u64;
        c.fabric.seeds = vec![fabric_addr(0).to_string()];
    } else {
        c.peers = (0..i).map(|j| PeerConfig::new(&format!("gw-{j}"), fabric_addr(j))).collect();
    }
    let base = rss_kib();
    let gw = Gateway::start(c).await?;
    let mut nodes = Vec::with_capacity(r);
    let mut inboxes = Vec::with_capacity(r);
    let rss_gw = rss_kib();
    for j in 0..r {
        let mut cfg = NodeConfig::new(node_name(i, j), COOKIE);
        cfg.gateway = Some(gw.control_addr());
        let n = Node::start(cfg).await?;
        inboxes.push(n.register("inbox")?);
        nodes.push(n);
    }
    let rss_nodes = rss_kib();
    println!("ready");
    let stdin = std::io::stdin();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in stdin.lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(cmd) = rx.recv().await {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["stats"] => {
                let l = gw.link_stats();
                let st = gw.status();
                println!(
                    "stats {} {} {} {} {} {} {} {} {} {} {}",
                    l.links,
                    l.udp_tx_bytes,
                    l.udp_rx_bytes,
                    st.remote_nodes.len(),
                    st.relays_open,
                    st.bytes_out,
                    rss_gw.saturating_sub(base),
                    rss_nodes.saturating_sub(rss_gw),
                    rss_kib(),
                    l.membership_tx_bytes,
                    l.membership_rx_bytes,
                );
            }
            ["work"] => {
                let mut rng = rand::thread_rng();
                let all: Vec<String> = (0..g).flat_map(|h| (0..r).map(move |j| node_name(h, j))).collect();
                let mut jobs = tokio::task::JoinSet::new();
                for (j, n) in nodes.iter().enumerate() {
                    let me = node_name(i, j);
                    let others: Vec<&String> = all.iter().filter(|t| **t != me).collect();
                    let targets: Vec<String> = others.choose_multiple(&mut rng, k).map(|s| (*s).clone()).collect();
                    let n = n.clone();
                    jobs.spawn(async move {
                        let mb = n.mailbox();
                        let mut failed = Vec::new();
                        for t in &targets {
                            let r = match n.ping_result(t).await {
                                Ok(()) => mb.send_named("inbox", t, Term::atom("hello")).await,
                                Err(e) => Err(e),
                            };
                            if let Err(e) = r {
                                failed.push(e.to_string());
                            }
                        }
                        (targets.len(), failed)
                    });
                }
                let mut ok = 0;
                let mut why = std::collections::BTreeMap::<String, usize>::new();
                while let Some(Ok((tried, failed))) = jobs.join_next().await {
                    ok += tried - failed.len();
                    for f in failed {
                        // Node names differ; the kind of failure is what matters.
                        let kind: String =
                            f.split_whitespace().filter(|w| !w.contains('@')).collect::<Vec<_>>().join(" ");
                        *why.entry(kind).or_default() += 1;
                    }
                }
                for (kind, n) in &why {
                    eprintln!("host {i}: {n} failed: {kind}");
                }
                let mut got = 0;
                for mb in &mut inboxes {
                    while mb.recv_message(Duration::from_millis(1)).await.is_ok() {
                        got += 1;
                    }
                }
                println!("worked {ok} {got}");
            }
            ["watch", victim] => {
                // Waits until no node of host `victim` is connected to ours or known to our gateway.
                let suffix = format!("@h{victim}");
                let gone = |n: &Node| n.nodes().iter().all(|m| !m.ends_with(&suffix));
                let watched = nodes.iter().any(|n| !gone(n));
                println!("watching {watched}");
                let deadline = Instant::now() + Duration::from_secs(30);
                // When its nodes were gone from our nodes' connections, and from the registry.
                let (mut down, mut forgotten) = (None, None);
                loop {
                    let known = gw.status().remote_nodes.iter().any(|(m, _)| m.ends_with(&suffix));
                    if down.is_none() && nodes.iter().all(gone) {
                        down = Some(now_us());
                    }
                    if forgotten.is_none() && !known {
                        forgotten = Some(now_us());
                    }
                    if down.is_some() && forgotten.is_some() || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let t = |v: Option<u128>| v.map(|t| t.to_string()).unwrap_or_else(|| "never".into());
                println!("gone {} {}", t(down), t(forgotten));
            }
            ["disconnect"] => {
                for n in &nodes {
                    for m in n.nodes() {
                        n.disconnect(&m);
                    }
                }
                println!("disconnected");
            }
            ["quit"] => break,
            _ => println!("error unknown command {cmd}"),
        }
    }
    gw.shutdown();
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The coordinator: starts the hosts, tells them what to do, sums up.

struct Host {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::Lines<std::io::BufReader<ChildStdout>>,
}

impl Host {
    fn send(&mut self, cmd: &str) -> Res<()> {
        writeln!(self.stdin, "{cmd}")?;
        Ok(self.stdin.flush()?)
    }

    fn expect(&mut self, prefix: &str) -> Res<Vec<String>> {
        for line in self.stdout.by_ref() {
            let line = line?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.split_whitespace().map(str::to_owned).collect());
            }
            if line.starts_with("error") {
                return Err(line.into());
            }
        }
        Err(format!("host ended before {prefix:?}").into())
    }

    fn stats(&mut self) -> Res<Vec<u64>> {
        self.send("stats")?;
        Ok(self.expect("stats ")?.iter().map(|v| v.parse().unwrap_or(0)).collect())
    }
}

/// Link bytes (sent + received) of these hosts' live links.
fn wire(s: &[Vec<u64>]) -> u64 {
    sum(s, 1) + sum(s, 2)
}

/// Membership bytes (sent + received).
fn swim(s: &[Vec<u64>]) -> u64 {
    sum(s, 9) + sum(s, 10)
}

fn sum(stats: &[Vec<u64>], col: usize) -> u64 {
    stats.iter().map(|s| s.get(col).copied().unwrap_or(0)).sum()
}

fn all_stats(hosts: &mut [Host]) -> Res<Vec<Vec<u64>>> {
    hosts.iter_mut().map(Host::stats).collect()
}

fn coordinator(g: usize, r: usize, k: usize, idle: u64) -> Res<()> {
    if g < 2 || r < 1 {
        return Err("need at least 2 gateways and 1 node each".into());
    }
    let k = k.min(g * r - 1);
    println!("gateways {g}\nnodes_per_gateway {r}\nnodes {}\nfanout {k}", g * r);
    println!("membership {}", if membership() { "swim" } else { "off (full mesh)" });
    let dir = std::env::temp_dir().join(format!("edist-scale-{}", std::process::id()));
    pki::init_ca(&dir, "scale", &CaOptions::default())?;
    for i in 0..g {
        pki::issue(&dir, &format!("gw-{i}"), 1, IssueOptions::default())?;
    }
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let mut hosts = Vec::with_capacity(g);
    for i in 0..g {
        let mut cmd = match std::env::var("SCALE_NETNS") {
            Ok(prefix) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &format!("{prefix}{i}")]).arg(&exe);
                c
            }
            Err(_) => Command::new(&exe),
        };
        let mut child = cmd
            .args(["--host", &i.to_string(), &g.to_string(), &r.to_string(), &k.to_string()])
            .arg(&dir)
            .env("EDIST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().ok_or("stdout")?).lines();
        let mut h = Host { child, stdin, stdout };
        h.expect("ready")?;
        hosts.push(h);
    }
    let started = t0.elapsed();
    let want_links = (g - 1) as u64;
    let want_nodes = ((g - 1) * r) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let s = all_stats(&mut hosts)?;
        let linked = |h: &Vec<u64>| membership() || h.first() == Some(&want_links);
        if s.iter().all(|h| linked(h) && h.get(3) == Some(&want_nodes)) {
            break s;
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = s.iter().map(|h| format!("{:?}", h.get(..4))).collect();
            return Err(format!(
                "the registry did not converge within 120 s; (links, tx, rx, nodes) per host: {seen:?}"
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("hosts_started_s {:.3}", started.as_secs_f64());
    println!("registry_converged_s {:.3}", t0.elapsed().as_secs_f64());
    println!("inter_gateway_links {}", sum(&stats, 0) / 2);
    println!("plain_otp_connections_for_the_same_nodes {}", g * r * (g * r - 1) / 2);
    println!("rss_gateway_started_kib {:.0}", sum(&stats, 6) as f64 / g as f64);
    println!("rss_per_idle_node_kib {:.1}", sum(&stats, 7) as f64 / (g * r) as f64);
    println!("rss_per_host_converged_kib {:.0}", sum(&stats, 8) as f64 / g as f64);

    let t = Instant::now();
    for h in hosts.iter_mut() {
        h.send("work")?;
    }
    let mut made = 0u64;
    let mut got = 0u64;
    for h in hosts.iter_mut() {
        let w = h.expect("worked ")?;
        made += w.first().and_then(|v| v.parse().ok()).unwrap_or(0);
        got += w.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    println!("connect_and_message_s {:.3}", t.elapsed().as_secs_f64());
    println!("messages_sent {made} of {}", g * r * k);
    println!("messages_received_by_then {got}");
    std::thread::sleep(Duration::from_secs(1));
    let s1 = all_stats(&mut hosts)?;
    println!("relayed_connection_ends {}", sum(&s1, 4));
    println!("inter_gateway_links_after_work {}", sum(&s1, 0) / 2);
    let rss_now = sum(&s1, 8) as f64 / g as f64;
    println!("rss_per_host_after_work_kib {rss_now:.0}");

    // Idle: what the fabric costs with every connection up and nothing to say.
    std::thread::sleep(Duration::from_secs(idle));
    let s2 = all_stats(&mut hosts)?;
    // Every byte is counted by its sender and its receiver.
    let idle_bps = (wire(&s2) - wire(&s1)) as f64 / 2.0 / idle as f64;
    let swim_bps = (swim(&s2) - swim(&s1)) as f64 / 2.0 / idle as f64;
    println!("idle_fabric_bytes_per_s_per_gateway {:.0}", (idle_bps + swim_bps) / g as f64);
    println!("idle_link_bytes_per_s_per_link {:.0}", idle_bps / (sum(&s2, 0) / 2).max(1) as f64);
    println!("idle_membership_bytes_per_s_per_gateway {:.0}", swim_bps / g as f64);
    println!("idle_relayed_bytes {}", sum(&s2, 5) - sum(&s1, 5));

    // The last host dies; everyone reports when its nodes are gone.
    let victim = g - 1;
    let mut watching = 0;
    for h in hosts.iter_mut().take(victim) {
        h.send(&format!("watch {victim}"))?;
        if h.expect("watching ")?.first().map(String::as_str) == Some("true") {
            watching += 1;
        }
    }
    let killed = now_us();
    if let Some(h) = hosts.get_mut(victim) {
        h.child.kill()?;
    }
    let (mut last, mut never) = ([0u128; 2], [0; 2]);
    for h in hosts.iter_mut().take(victim) {
        let gone = h.expect("gone ")?;
        for (col, v) in gone.iter().take(2).enumerate() {
            match v.parse::<u128>() {
                Ok(t) => last[col] = last[col].max(t),
                Err(_) => never[col] += 1,
            }
        }
    }
    println!("hosts_connected_to_the_victim {watching}");
    for (col, what) in ["nodedown_everywhere_s", "registry_forgot_victim_everywhere_s"].iter().enumerate() {
        match never[col] {
            0 => println!("{what} {:.3}", last[col].saturating_sub(killed) as f64 / 1e6),
            n => println!("{what} never ({n} hosts still saw the victim after 30 s)"),
        }
    }
    hosts.truncate(victim);

    if membership() {
        // Every node disconnects: the links idle and close; what is left is membership.
        let t = Instant::now();
        for h in hosts.iter_mut() {
            h.send("disconnect")?;
            h.expect("disconnected")?;
        }
        let s3 = loop {
            let s = all_stats(&mut hosts)?;
            if sum(&s, 0) == 0 || t.elapsed() > link_idle() + Duration::from_secs(30) {
                break s;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        println!("links_after_disconnect {} (closed {:.1} s after it)", sum(&s3, 0) / 2, t.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_secs(idle));
        let s4 = all_stats(&mut hosts)?;
        let n = hosts.len() as f64;
        let bps = ((wire(&s4) + swim(&s4)) as f64 - (wire(&s3) + swim(&s3)) as f64) / 2.0 / idle as f64;
        println!("idle_bytes_per_s_per_gateway_without_connections {:.0}", bps / n);
    }
    for h in hosts.iter_mut() {
        let _ = h.send("quit");
    }
    for mut h in hosts {
        let _ = h.child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
