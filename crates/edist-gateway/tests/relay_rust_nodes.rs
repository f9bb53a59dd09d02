//! Two gateways in one process, Rust-native nodes behind each (joined through the gateways'
//! control ports, as the `edist_epmd` plug does): the relay path without starting `erl`.

use anyhow::{ensure, Context, Result};
use edist_gateway::config::{Config, PeerConfig};
use edist_gateway::gateway::Gateway;
use edist_gateway::pki;
use edist_node::{Event, Node, NodeConfig, RpcFailure};
use edist_proto::Term;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn certs() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("edist-relay-{}-{}", std::process::id(), rand_suffix()));
    pki::init_ca(&dir, "test", &pki::CaOptions::default())?;
    for gw in ["gw-a", "gw-b"] {
        pki::issue(&dir, gw, 1, pki::IssueOptions::default())?;
    }
    Ok(dir)
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn config(name: &str, host: &str, certs: &Path) -> Result<Config> {
    let mut c = Config { name: name.into(), host: host.into(), cookie: Some("relay".into()), ..Config::default() };
    c.local.control = "127.0.0.1:0".parse()?;
    c.fabric.listen = "127.0.0.1:0".parse()?;
    c.fabric.certs = certs.to_path_buf();
    Ok(c)
}

/// gw-a (host "hosta") and gw-b (host "hostb"), gw-b dialling gw-a, optionally compressing.
async fn gateways(certs: &Path, compress: bool) -> Result<(Gateway, Gateway)> {
    let ga = Gateway::start(config("gw-a", "hosta", certs)?).await?;
    let mut cb = config("gw-b", "hostb", certs)?;
    let addr = ga.fabric_addr().context("gw-a has no fabric address")?;
    cb.peers.push(PeerConfig { compress, ..PeerConfig::new("gw-a", addr) });
    Ok((ga, Gateway::start(cb).await?))
}

async fn node(gw: &Gateway, name: &str) -> Result<Node> {
    let mut cfg = NodeConfig::new(name, "relay");
    cfg.gateway = Some(gw.control_addr());
    Ok(Node::start(cfg).await?)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + T;
    while !f() {
        ensure!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_nodes_talk_across_two_gateways() -> Result<()> {
    let dir = certs()?;
    let (ga, gb) = gateways(&dir, false).await?;
    let r1 = node(&ga, "r1@hosta").await?;
    let r2 = node(&gb, "r2@hostb").await?;
    r2.register_rpc("m", "double", |args| match args.as_slice() {
        [Term::Int(i)] => Ok(Term::Int(2 * i)),
        _ => Err(RpcFailure::Error(Term::atom("badarg"))),
    });
    until("gw-a to learn r2", || ga.status().remote_nodes.iter().any(|(n, g)| n == "r2@hostb" && g == "gw-b")).await?;

    // Handshake relayed by both gateways, then rpc and messages both ways.
    ensure!(r1.ping("r2@hostb").await, "ping through the fabric");
    assert_eq!(r1.rpc("r2@hostb", "m", "double", vec![Term::Int(21)], T).await?, Term::Int(42));
    let mut inbox2 = r2.register("inbox")?;
    let mut inbox1 = r1.register("inbox")?;
    let big = Term::binary(vec![7u8; 10 << 20]);
    inbox1.send_named("inbox", "r2@hostb", Term::tuple([Term::Pid(inbox1.pid().clone()), big.clone()])).await?;
    let m = inbox2.recv_message(T).await?;
    let Some([Term::Pid(from), payload]) = m.as_tuple().and_then(|t| <&[Term; 2]>::try_from(t).ok()) else {
        anyhow::bail!("unexpected {m}")
    };
    ensure!(*payload == big, "10 MB arrived intact");
    inbox2.send(from, Term::atom("thanks")).await?;
    assert_eq!(inbox1.recv_message(T).await?, Term::atom("thanks"));
    let st = ga.status();
    ensure!(st.bytes_out >= 10 << 20 && st.relays_open == 1, "{st:?}");

    // A link across the fabric; the far gateway dies: noconnection within the idle timeout.
    let mb = r1.mailbox();
    let mut watcher = r1.mailbox();
    watcher.link(inbox2.pid()).await?;
    r1.rpc("r2@hostb", "erlang", "node", vec![], T).await?; // the link reached r2
    let t0 = std::time::Instant::now();
    gb.shutdown();
    match watcher.recv_timeout(Duration::from_secs(5)).await? {
        Event::Exit { reason, .. } => assert_eq!(reason, Term::atom("noconnection")),
        other => anyhow::bail!("unexpected {other:?}"),
    }
    eprintln!("noconnection {} ms after the far gateway stopped", t0.elapsed().as_millis());
    until("gw-a to forget r2", || ga.status().remote_nodes.is_empty()).await?;
    drop(mb);
    ga.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Lanes: each sender's messages arrive in order while senders interleave freely, and small
/// messages are not held behind a large one from another sender.
#[tokio::test(flavor = "multi_thread")]
async fn lanes_keep_per_sender_order_and_let_small_messages_pass() -> Result<()> {
    let dir = certs()?;
    let (ga, gb) = gateways(&dir, false).await?;
    let r1 = node(&ga, "s1@hosta").await?;
    let r2 = node(&gb, "s2@hostb").await?;
    until("gw-a to learn s2", || ga.status().remote_nodes.iter().any(|(n, _)| n == "s2@hostb")).await?;
    let mut inbox = r2.register("inbox")?;
    ensure!(r1.ping("s2@hostb").await);

    // A 64 MB message first, then small messages from four other senders.
    let big_sender = r1.mailbox();
    big_sender
        .send_named("inbox", "s2@hostb", Term::tuple([Term::atom("big"), Term::binary(vec![1u8; 64 << 20])]))
        .await?;
    let senders: Vec<_> = (0..4).map(|_| r1.mailbox()).collect();
    const N: i64 = 200;
    let send_all = |i: usize| {
        let s = &senders[i];
        async move {
            for seq in 0..N {
                s.send_named("inbox", "s2@hostb", Term::tuple([Term::Int(i as i64), Term::Int(seq)])).await?;
            }
            anyhow::Ok(())
        }
    };
    // The four senders run at once, so their messages interleave.
    let (a, b, c, d) = tokio::join!(send_all(0), send_all(1), send_all(2), send_all(3));
    for r in [a, b, c, d] {
        r?;
    }
    let mut next = [0i64; 4];
    let mut small_before_big = 0;
    let mut big_seen = false;
    while !big_seen || next.iter().any(|n| *n < N) {
        let m = inbox.recv_message(T).await?;
        match m.as_tuple() {
            Some([Term::Atom(a), _]) if *a == "big" => big_seen = true,
            Some([Term::Int(i), Term::Int(seq)]) => {
                let i = *i as usize;
                ensure!(next[i] == *seq, "sender {i}: got {seq}, expected {}", next[i]);
                next[i] += 1;
                if !big_seen {
                    small_before_big += 1;
                }
            }
            _ => anyhow::bail!("unexpected {m}"),
        }
    }
    eprintln!("{small_before_big} of {} small messages overtook the 64 MB one", 4 * N);
    ensure!(small_before_big > 0, "small messages should overtake the large one on other lanes");
    ga.shutdown();
    gb.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `compress = true` for a peer: large packets cross the fabric lz4-compressed, intact.
#[tokio::test(flavor = "multi_thread")]
async fn compression_towards_a_peer() -> Result<()> {
    let dir = certs()?;
    let (ga, gb) = gateways(&dir, true).await?;
    let r1 = node(&ga, "c1@hosta").await?;
    let r2 = node(&gb, "c2@hostb").await?;
    until("gw-b to learn c1", || gb.status().remote_nodes.iter().any(|(n, _)| n == "c1@hosta")).await?;
    let mut inbox = r1.register("inbox")?;
    let sender = r2.mailbox();
    let zeros = Term::binary(vec![0u8; 20 << 20]);
    sender.send_named("inbox", "c1@hosta", zeros.clone()).await?;
    ensure!(inbox.recv_message(T).await? == zeros, "20 MB of zeros arrived intact");
    let out = gb.status().bytes_out;
    eprintln!("20 MB of zeros took {out} bytes on the fabric");
    ensure!(out < 2 << 20, "compressed: {out} bytes went out");
    ga.shutdown();
    gb.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
