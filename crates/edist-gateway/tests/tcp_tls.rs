//! Gateway links over TLS/TCP on 127.0.0.1: the same admission rules as QUIC, streams both
//! ways, close codes reaching the peer, and a peer that never speaks TLS given up on. (A link
//! that falls silent is lost after the idle timeout: `tls_over_tcp_carries_the_cluster`.)

use anyhow::{Context, Result};
use edist_gateway::fabric::credentials::Credentials;
use edist_gateway::fabric::error::FabricError;
use edist_gateway::fabric::identity::TlsIdentity;
use edist_gateway::fabric::link::{Closed, Linked, Transport};
use edist_gateway::fabric::options::QuicOptions;
use edist_gateway::fabric::tcp::TcpTransport;
use edist_gateway::pki::{self, CaOptions, IssueOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cluster CA with gateways `names` issued, in a directory removed on drop.
struct Cluster(PathBuf);

impl Cluster {
    fn new(tag: &str, names: &[&str]) -> Result<Cluster> {
        let d =
            std::env::temp_dir().join(format!("edist-tcp-{tag}-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        pki::init_ca(&d, tag, &CaOptions::default())?;
        for name in names {
            pki::issue(&d, name, 30, IssueOptions::default())?;
        }
        Ok(Cluster(d))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn transport(dir: &Path, name: &str) -> Result<TcpTransport> {
    let creds = Credentials::new(&TlsIdentity::load(dir, name)?)?;
    Ok(TcpTransport::bind("127.0.0.1:0".parse()?, &creds, &QuicOptions::default(), name).await?)
}

/// Dials `to` from `from` (expecting `name`) while `to` accepts; both outcomes.
async fn link(
    from: &TcpTransport,
    to: &TcpTransport,
    name: Option<&str>,
) -> Result<(Result<Linked, FabricError>, Result<Linked, FabricError>)> {
    let addr = to.local_addr()?;
    let accepted = async {
        let (_, handshake) = to.accept().await.context("accept")?;
        Ok::<_, anyhow::Error>(handshake.await)
    };
    let (dialled, accepted) = tokio::join!(from.dial(addr, name), accepted);
    Ok((dialled, accepted?))
}

#[tokio::test]
async fn a_link_carries_streams_both_ways_and_its_close_code() -> Result<()> {
    let c = Cluster::new("ok", &["gw-a", "gw-b"])?;
    let (a, b) = (transport(&c.0, "gw-a").await?, transport(&c.0, "gw-b").await?);
    let (ab, ba) = link(&a, &b, Some("gw-b")).await?;
    let (ab, ba) = (ab?, ba?);
    assert_eq!((ab.peer_name.as_str(), ba.peer_name.as_str()), ("gw-b", "gw-a"));
    assert_eq!(ba.grant.nodes, ["*"]);

    // A stream both ways: echoed.
    let (mut tx, mut rx) = ab.link.open_bi().await?;
    tx.write_all(b"ping").await?;
    let (mut btx, mut brx) = ba.link.accept_bi().await?;
    let mut got = [0u8; 4];
    brx.read_exact(&mut got).await?;
    btx.write_all(&got).await?;
    rx.read_exact(&mut got).await?;
    assert_eq!(&got, b"ping");
    // A stream the other way, one-directional, 1 MB.
    let mut up = ba.link.open_uni().await?;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let sent = data.clone();
    tokio::spawn(async move { up.write_all(&sent).await });
    let mut down = ab.link.accept_uni().await?;
    let mut back = vec![0u8; data.len()];
    down.read_exact(&mut back).await?;
    assert!(back == data);
    let (tx_bytes, rx_bytes) = ab.link.wire_bytes();
    assert!(rx_bytes > 1_000_000 && tx_bytes > 0, "{tx_bytes} {rx_bytes}");

    // A close with a code reaches the peer, whose streams end.
    ab.link.close(7, b"idle");
    assert_eq!(ab.link.closed(), Some(Closed::Locally));
    tokio::time::timeout(Duration::from_secs(5), async {
        while ba.link.closed().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    assert_eq!(ba.link.closed(), Some(Closed::ByPeer { code: 7, reason: "idle".into() }));
    assert!(ba.link.accept_bi().await.is_err());
    Ok(())
}

#[tokio::test]
async fn foreign_certificates_and_wrong_names_are_refused() -> Result<()> {
    let c = Cluster::new("cluster", &["gw-a", "gw-b"])?;
    let other = Cluster::new("other", &["gw-x"])?;
    let (a, b) = (transport(&c.0, "gw-a").await?, transport(&c.0, "gw-b").await?);
    // gw-x trusts its own CA only, and the cluster does not trust it.
    let x = transport(&other.0, "gw-x").await?;
    let (dialled, accepted) = link(&x, &b, Some("gw-b")).await?;
    assert!(dialled.is_err() && accepted.is_err(), "{dialled:?} {accepted:?}");
    // A dial expecting another name than the server's certificate carries.
    let (dialled, _) = link(&a, &b, Some("gw-c")).await?;
    assert!(matches!(dialled, Err(FabricError::Tls(_))), "{dialled:?}");
    // A seed dial accepts whichever identity the cluster CA signed.
    let (dialled, _) = link(&a, &b, None).await?;
    assert_eq!(dialled?.peer_name, "gw-b");
    Ok(())
}

#[tokio::test]
async fn a_peer_that_never_speaks_tls_is_refused_at_the_hello_timeout() -> Result<()> {
    let c = Cluster::new("silent", &["gw-a"])?;
    let a = transport(&c.0, "gw-a").await?;
    // A "peer" that completes TCP and then says nothing at all.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let _held = l.accept().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let t = std::time::Instant::now();
    let r = a.dial(addr, Some("gw-b")).await;
    assert!(matches!(r, Err(FabricError::HelloTimeout(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    Ok(())
}
