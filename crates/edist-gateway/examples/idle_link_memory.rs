//! Memory per idle fabric link: one accepting endpoint and one dialling endpoint in the same
//! process (on 127.0.0.1), N links between them, all up and idle with keep-alives; prints the
//! process's RSS growth per link. `cargo run --release -p edist-gateway --example
//! idle_link_memory [N] [MAX_DATAGRAM]`.
//!
//! Both ends of each link live in this process, so a link is counted twice (its accepting and
//! its dialling side); a gateway pays about half of the figure per idle peer.
//!
//! Measured (200 links): 65 KiB per link, ~33 KiB per end. It was 331 KiB (~166 KiB per end)
//! while links let the peer open 1,024 streams of each kind from the start: quinn-proto
//! allocates state for each (~135 KiB per end); links now start with 8 and raise that as the
//! peer opens streams ([`edist_gateway::fabric::quic::QuicLink`]). What is left is mostly
//! quinn's own per-connection state and its endpoint-to-connection channel (bench/README.md).

use edist_gateway::fabric::identity::TlsIdentity;
use edist_gateway::fabric::options::QuicOptions;
use edist_gateway::fabric::quic;
use edist_gateway::pki::{self, CaOptions, IssueOptions};
use std::time::Duration;

mod common;
use common::rss_kib;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("edist-idle-{}", std::process::id()));
    pki::init_ca(&dir, "idle", &CaOptions::default())?;
    pki::issue(&dir, "gw-server", 30, IssueOptions::default())?;
    pki::issue(&dir, "gw-client", 30, IssueOptions::default())?;
    let mut opts = QuicOptions::default();
    if let Some(m) = std::env::args().nth(2).and_then(|a| a.parse().ok()) {
        opts.max_datagram = m;
    }
    let server = quic::endpoint("127.0.0.1:0".parse()?, &TlsIdentity::load(&dir, "gw-server")?, &opts)?;
    let addr = server.local_addr()?;
    let client_id = TlsIdentity::load(&dir, "gw-client")?;
    let srv = server.clone();
    let accepted = tokio::spawn(async move {
        let mut links = Vec::new();
        while links.len() < n {
            let Some(inc) = srv.accept().await else { break };
            if let Ok(l) = quic::accept(inc, "gw-server").await {
                links.push(l);
            }
        }
        links
    });
    // Warm up one link so that one-time costs (crypto tables, runtime) are not counted.
    let ep0 = quic::endpoint("127.0.0.1:0".parse()?, &client_id, &opts)?;
    let _warm = quic::dial(&ep0, addr, "gw-server", "gw-client").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let mut clients = Vec::new();
    for _ in 1..n {
        clients.push(quic::dial(&ep0, addr, "gw-server", "gw-client").await?);
    }
    let links = accepted.await?;
    // Idle for a while: keep-alives flow, buffers settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib();
    let per = (after.saturating_sub(before)) as f64 / (n - 1) as f64;
    println!(
        "{} idle links (both ends in this process), max_datagram {}: RSS {before} KiB -> {after} KiB, {per:.1} KiB per link (both ends)",
        links.len(),
        opts.max_datagram
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
