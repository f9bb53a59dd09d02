//! `edist status`: asks a running gateway over its local control port.

use anyhow::{bail, Context, Result};
use edist_gateway::gateway::StatusReport;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches the gateway's status report.
pub async fn fetch(gateway: SocketAddr) -> Result<StatusReport> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(gateway))
        .await
        .context("timed out")?
        .with_context(|| format!("no gateway at {gateway} (is `edist gateway` running?)"))?;
    s.write_all(&[0, 1, b'd']).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await.context("timed out")??;
    let Some(json) = buf.get(4..) else { bail!("the gateway at {gateway} gave no status") };
    serde_json::from_slice(json).context("the gateway's status is not valid JSON")
}

pub async fn run(gateway: SocketAddr, json: bool) -> Result<()> {
    let r = fetch(gateway).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("gateway {}  relays open {}  bytes in {}  out {}", r.name, r.relays_open, r.bytes_in, r.bytes_out);
    println!("local nodes:");
    for (n, p) in &r.local_nodes {
        println!("  {n:<40} port {p}");
    }
    println!("peer gateways:");
    for p in &r.peers {
        println!("  {p}");
    }
    println!("remote nodes:");
    for (n, g) in &r.remote_nodes {
        println!("  {n:<40} via {g}");
    }
    println!("impersonated on loopback:");
    for (n, p) in &r.impersonated {
        println!("  {n:<40} port {p}");
    }
    Ok(())
}
