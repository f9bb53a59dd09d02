//! A misbehaving peer loses its own connection — never the node, never another peer's traffic.
//! The hostile peer is a raw socket driven by the sans-IO handshake; the well-behaved peer is a
//! real OTP node.

use edist_testkit as common;

use anyhow::{ensure, Context, Result};
use common::{host, unique, Epmd, Erl};
use edist_node::{Node, NodeConfig};
use edist_proto::dist::handshake::{Initiator, InitiatorConfig, InitiatorEvent};
use edist_proto::dist::DFlags;
use edist_proto::Term;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);

async fn node_port(epmd: &Epmd, node: &Node) -> Result<u16> {
    let alive = node.name().split('@').next().context("name")?;
    let info = edist_node::epmd::port_please(epmd.addr(), alive).await?.context("registered")?;
    Ok(info.port)
}

/// Connects to `node` and completes the handshake as `name`; returns the connected socket.
async fn handshaken(port: u16, node: &Node, name: &str, cookie: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut hs = Initiator::new(InitiatorConfig {
        name: name.into(),
        flags: DFlags::edist_default(false),
        creation: 1234,
        cookie: cookie.as_bytes().to_vec(),
        challenge: 42,
        peer: node.name().into(),
    });
    let mut buf = [0u8; 1024];
    loop {
        let out = hs.take_output();
        s.write_all(&out).await?;
        match hs.poll()? {
            Some(InitiatorEvent::Challenge { .. }) => hs.reply()?,
            Some(InitiatorEvent::Connected(_)) => return Ok(s),
            Some(_) => {}
            None => {
                let n = tokio::time::timeout(T, s.read(&mut buf)).await??;
                ensure!(n > 0, "node closed during handshake");
                hs.handle(&buf[..n])?;
            }
        }
    }
}

/// Waits until the node closes `s` (reads until EOF or reset).
async fn closed_by_node(mut s: TcpStream) -> Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, s.read(&mut buf)).await.context("node did not close the connection")? {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {} // ticks
        }
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_peers_lose_only_their_own_connection() -> Result<()> {
    let epmd = Epmd::start().await?;
    let mut cfg = NodeConfig::new(format!("{}@{}", unique("rust"), host()), "hc");
    cfg.epmd_port = epmd.port;
    cfg.setup_timeout = Duration::from_secs(1);
    let node = Node::start(cfg).await?;
    let mut inbox = node.register("inbox")?;
    let port = node_port(&epmd, &node).await?;
    // A well-behaved OTP peer stays connected throughout and keeps sending.
    let me = node.name().to_string();
    let eval =
        format!("spawn(fun L() -> {{inbox, '{me}'}} ! {{tick, self()}}, receive stop -> ok after 50 -> L() end end)");
    let erl = Erl::start(&epmd, &unique("otp"), "hc", &eval).await?;
    ensure!(matches!(inbox.recv_message(T).await?.as_tuple(), Some([t, _]) if *t == Term::atom("tick")));

    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("a frame length of 4 GB", vec![0xff, 0xff, 0xff, 0xff, 131, 68, 0]),
        ("a LIST_EXT claiming 4 billion elements", frame(&[131, 68, 0, 108, 0xff, 0xff, 0xff, 0xff, 106])),
        ("100,000 nested tuples", {
            let mut p = vec![131, 68, 0];
            for _ in 0..100_000 {
                p.extend_from_slice(&[104, 1]);
            }
            p.push(106);
            frame(&p)
        }),
        ("a continuation fragment for an unknown sequence", {
            let mut p = vec![131, 70];
            p.extend_from_slice(&7u64.to_be_bytes());
            p.extend_from_slice(&1u64.to_be_bytes());
            p.extend_from_slice(b"junk");
            frame(&p)
        }),
        ("an unknown control op", frame(&[131, 68, 0, 104, 1, 97, 99])),
        ("a pass-through packet on a header connection", frame(&[112, 131, 104, 1, 97, 1])),
        ("garbage", frame(b"\x00\x01\x02 not a dist packet")),
    ];
    for (i, (what, bytes)) in hostile.iter().enumerate() {
        let s = handshaken(port, &node, &format!("evil{i}@{}", host()), "hc").await?;
        let (r, mut w) = s.into_split();
        w.write_all(bytes).await?;
        let s = r.reunite(w)?;
        closed_by_node(s).await.with_context(|| format!("after {what}"))?;
        // The node is alive and the OTP peer's traffic keeps flowing.
        ensure!(node.ping(&erl.name).await, "node must survive {what}");
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let m = inbox.recv_message(deadline - tokio::time::Instant::now()).await?;
            if matches!(m.as_tuple(), Some([t, _]) if *t == Term::atom("tick")) {
                break;
            }
        }
    }

    // Garbage before the handshake, and a peer that stops half-way, are cut off too.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
    closed_by_node(s).await.context("garbage handshake")?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&[0, 50, b'N', 0, 0]).await?; // a send_name that never finishes
    let started = tokio::time::Instant::now();
    closed_by_node(s).await.context("half-finished handshake")?;
    ensure!(started.elapsed() < Duration::from_secs(5), "the handshake timeout (1 s) should apply");

    ensure!(node.nodes() == vec![erl.name.clone()], "only the OTP peer remains: {:?}", node.nodes());
    Ok(())
}
