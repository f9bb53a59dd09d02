//! Gateway links over QUIC with mutual TLS, on 127.0.0.1: who gets in, who does not, what a
//! link carries, and how fast a dead peer is noticed.

use anyhow::{bail, Context, Result};
use edist_gateway::fabric::close::{CLOSE_HELLO_TIMEOUT, CLOSE_NAME_MISMATCH, CLOSE_NORMAL};
use edist_gateway::fabric::error::FabricError;
use edist_gateway::fabric::hello::HELLO_TIMEOUT;
use edist_gateway::fabric::identity::{crypto_provider, TlsIdentity};
use edist_gateway::fabric::options::QuicOptions;
use edist_gateway::fabric::quic::{self, accept, dial, dial_with_config, PeerLink};
use edist_gateway::fabric::tls::{ALPN, CERT_REFUSED, SEED_SERVER_NAME};
use edist_gateway::pki::{self, CaOptions, IssueOptions};
use quinn::{ConnectionError, Endpoint, VarInt};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

const LOCALHOST: &str = "127.0.0.1:0";
/// Generous bound for a refusal to surface on either side.
const OUTCOME: Duration = Duration::from_secs(10);

/// A fresh directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d =
            std::env::temp_dir().join(format!("edist-quic-{tag}-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster CA with gateways `names` issued.
fn cluster(tag: &str, names: &[&str]) -> Result<TempDir> {
    let dir = TempDir::new(tag);
    pki::init_ca(&dir.0, tag, &CaOptions::default())?;
    for name in names {
        pki::issue(&dir.0, name, 30, IssueOptions::default())?;
    }
    Ok(dir)
}

fn endpoint(dir: &Path, name: &str) -> Result<(Endpoint, SocketAddr)> {
    let id = TlsIdentity::load(dir, name)?;
    let ep = quic::endpoint(LOCALHOST.parse()?, &id, &QuicOptions::default())?;
    let addr = ep.local_addr()?;
    Ok((ep, addr))
}

/// Accepts the next incoming link on `ep` in the background.
fn accept_one(ep: &Endpoint, our_name: &str) -> JoinHandle<Result<PeerLink, FabricError>> {
    let ep = ep.clone();
    let our_name = our_name.to_owned();
    tokio::spawn(async move {
        let incoming = ep.accept().await.expect("endpoint closed");
        accept(incoming, &our_name).await
    })
}

/// Options of a certificate that expired yesterday.
fn expired_options() -> IssueOptions {
    let now = OffsetDateTime::now_utc();
    IssueOptions {
        not_before: Some(now - time::Duration::days(10)),
        not_after: Some(now - time::Duration::days(1)),
        ..Default::default()
    }
}

async fn outcome<T>(h: JoinHandle<T>) -> Result<T> {
    Ok(tokio::time::timeout(OUTCOME, h).await.context("no outcome in time")??)
}

/// Runs one dial against one accept and returns both results.
async fn attempt(
    client: &Endpoint,
    server: &Endpoint,
    server_addr: SocketAddr,
    server_name: &str,
    client_name: &str,
) -> Result<(Result<PeerLink, FabricError>, Result<PeerLink, FabricError>)> {
    let acceptor = accept_one(server, server_name);
    let dialed = tokio::time::timeout(OUTCOME, dial(client, server_addr, server_name, client_name)).await?;
    Ok((dialed, outcome(acceptor).await?))
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` on `send` and reads everything from `recv`, concurrently.
async fn exchange(mut send: quinn::SendStream, mut recv: quinn::RecvStream, data: &[u8]) -> Result<Vec<u8>> {
    let write = async {
        send.write_all(data).await?;
        send.finish()?;
        anyhow::Ok(())
    };
    let read = async { anyhow::Ok(recv.read_to_end(64 << 20).await?) };
    let ((), got) = tokio::try_join!(write, read)?;
    Ok(got)
}

fn expect_refused<T: std::fmt::Debug>(what: &str, r: &Result<T, FabricError>) {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(e) => eprintln!("{what}: refused as expected: {e}"),
    }
}

#[tokio::test]
async fn links_both_ways_and_10_mb_each_way() -> Result<()> {
    let dir = cluster("good", &["gw-a", "gw-b"])?;
    let (a, a_addr) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;

    // a dials b.
    let (ab, ba) = attempt(&a, &b, b_addr, "gw-b", "gw-a").await?;
    let (ab, ba) = (ab?, ba?);
    assert_eq!((ab.peer_name.as_str(), ab.peer_identity.as_str()), ("gw-b", "gw-b"));
    assert_eq!((ba.peer_name.as_str(), ba.peer_identity.as_str()), ("gw-a", "gw-a"));
    assert_eq!(quic::peer_identity(&ab.conn).as_deref(), Some("gw-b"));

    // b dials a, over the same endpoints.
    let (b2a, a2b) = attempt(&b, &a, a_addr, "gw-a", "gw-b").await?;
    let (b2a, a2b) = (b2a?, a2b?);
    assert_eq!((b2a.peer_name.as_str(), b2a.peer_identity.as_str()), ("gw-a", "gw-a"));
    assert_eq!((a2b.peer_name.as_str(), a2b.peer_identity.as_str()), ("gw-b", "gw-b"));

    // 10 MB each way on one bi stream of the first link, both directions at once.
    const SIZE: usize = 10 << 20;
    let from_a = pattern(0xa, SIZE);
    let from_b = pattern(0xb, SIZE);
    let (a_send, a_recv) = ab.conn.open_bi().await?;
    let b_side = {
        let conn = ba.conn.clone();
        let from_b = from_b.clone();
        tokio::spawn(async move {
            let (send, recv) = conn.accept_bi().await?;
            exchange(send, recv, &from_b).await
        })
    };
    let got_at_a = exchange(a_send, a_recv, &from_a).await?;
    let got_at_b = tokio::time::timeout(Duration::from_secs(60), b_side).await???;
    assert!(got_at_a == from_b, "a received {} bytes, not b's 10 MB", got_at_a.len());
    assert!(got_at_b == from_a, "b received {} bytes, not a's 10 MB", got_at_b.len());

    for link in [&ab, &b2a] {
        link.conn.close(CLOSE_NORMAL.into(), b"bye");
    }
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() -> Result<()> {
    let dir = cluster("ours", &["gw-a", "gw-b"])?;
    let rogue = cluster("theirs", &["gw-a", "gw-b"])?;
    let (a, a_addr) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;
    let (evil_a, _) = endpoint(&rogue.0, "gw-a")?;
    let (evil_b, evil_b_addr) = endpoint(&rogue.0, "gw-b")?;

    // A rogue client: its TLS handshake may "succeed" on its side; the hello must not.
    let (dialed, accepted) = attempt(&evil_a, &b, b_addr, "gw-b", "gw-a").await?;
    expect_refused("rogue client, dial", &dialed);
    expect_refused("rogue client, accept", &accepted);

    // The same, with a rogue client that trusts our CA, so that only the server objects: its
    // own handshake completes and the refusal arrives on the hello stream.
    let sneaky =
        TlsIdentity { ca: pki::load_certs(&dir.0.join(pki::CA_CERT_FILE))?, ..TlsIdentity::load(&rogue.0, "gw-a")? };
    let sneaky = quic::endpoint(LOCALHOST.parse()?, &sneaky, &QuicOptions::default())?;
    let acceptor = accept_one(&b, "gw-b");
    let connection = sneaky.connect(b_addr, "gw-b")?.await;
    eprintln!("sneaky client, TLS handshake as the client sees it: {:?}", connection.as_ref().map(|_| "completed"));
    expect_refused("sneaky client, plain connect, accept", &outcome(acceptor).await?);
    let (dialed, accepted) = attempt(&sneaky, &b, b_addr, "gw-b", "gw-a").await?;
    expect_refused("sneaky client, dial", &dialed);
    expect_refused("sneaky client, accept", &accepted);

    // A rogue server: our client refuses its certificate.
    let (dialed, accepted) = attempt(&a, &evil_b, evil_b_addr, "gw-b", "gw-a").await?;
    expect_refused("rogue server, dial", &dialed);
    expect_refused("rogue server, accept", &accepted);

    // The legitimate pair still works afterwards.
    let (ok, ok2) = attempt(&b, &a, a_addr, "gw-a", "gw-b").await?;
    ok?;
    ok2?;
    Ok(())
}

#[tokio::test]
async fn a_client_without_certificate_is_refused() -> Result<()> {
    let dir = cluster("nocert", &["gw-b"])?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;

    // Trusts the cluster CA, speaks edist/1, but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for ca in pki::load_certs(&dir.0.join(pki::CA_CERT_FILE))? {
        roots.add(ca)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(quic::transport_config(&QuicOptions::default())?));
    let client = Endpoint::client(LOCALHOST.parse()?)?;

    let acceptor = accept_one(&b, "gw-b");
    let dialed = tokio::time::timeout(OUTCOME, dial_with_config(&client, cfg, b_addr, "gw-b", "anonymous")).await?;
    expect_refused("no certificate, dial", &dialed);
    expect_refused("no certificate, accept", &outcome(acceptor).await?);
    Ok(())
}

#[tokio::test]
async fn an_expired_certificate_is_refused() -> Result<()> {
    let dir = cluster("expired", &["gw-a", "gw-b"])?;
    let expired = expired_options();
    pki::issue(&dir.0, "gw-old", 1, expired)?;
    let (a, _) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;
    let (old, old_addr) = endpoint(&dir.0, "gw-old")?;

    // An expired client is refused by the server.
    let (dialed, accepted) = attempt(&old, &b, b_addr, "gw-b", "gw-old").await?;
    expect_refused("expired client, dial", &dialed);
    expect_refused("expired client, accept", &accepted);

    // An expired server is refused by the client.
    let (dialed, accepted) = attempt(&a, &old, old_addr, "gw-old", "gw-a").await?;
    expect_refused("expired server, dial", &dialed);
    expect_refused("expired server, accept", &accepted);
    Ok(())
}

/// A refused peer learns one fixed code, not why (rustls's text would tell an expired
/// certificate's dates, or the names a certificate is valid for).
#[tokio::test]
async fn refused_certificates_get_a_fixed_code_not_the_cause() -> Result<()> {
    let dir = cluster("fixed", &["gw-a", "gw-b"])?;
    pki::issue(&dir.0, "gw-old", 1, expired_options())?;
    let (a, _) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;
    let (old, old_addr) = endpoint(&dir.0, "gw-old")?;
    let rogue = TempDir::new("fixed-rogue");
    pki::init_ca(&rogue.0, "rogue", &CaOptions::default())?;
    pki::issue(&rogue.0, "gw-c", 30, IssueOptions::default())?;
    let (c, _) = endpoint(&rogue.0, "gw-c")?;
    // (case, client, server, its address and name, the client's name, the refused side)
    for (what, client, server, addr, name, ours, refused) in [
        ("expired client", &old, &b, b_addr, "gw-b", "gw-old", "dial"),
        ("client of another CA", &c, &b, b_addr, "gw-b", "gw-c", "dial"),
        ("expired server", &a, &old, old_addr, "gw-old", "gw-a", "accept"),
    ] {
        let (dialed, accepted) = attempt(client, server, addr, name, ours).await?;
        for (side, r) in [("dial", &dialed), ("accept", &accepted)] {
            let Err(e) = r else { bail!("{what}, {side}: accepted") };
            let text = e.to_string();
            eprintln!("{what}, {side}: {text}");
            let details = ["expired", "UNIX", "UnknownIssuer", "not valid"];
            assert!(!details.iter().any(|d| text.contains(d)), "{what}, {side}: {text}");
            if side == refused {
                assert!(text.contains(CERT_REFUSED), "{what}, {side}: {text}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_hello_must_name_the_certificate_identity() -> Result<()> {
    let dir = cluster("liar", &["gw-a", "gw-b"])?;
    let (a, _) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;

    // The dialer holds gw-a's certificate but claims to be gw-c.
    let (dialed, accepted) = attempt(&a, &b, b_addr, "gw-b", "gw-c").await?;
    match accepted {
        Err(FabricError::NameMismatch { hello, certificate }) => {
            assert_eq!((hello.as_str(), certificate.as_str()), ("gw-c", "gw-a"))
        }
        other => bail!("accept: expected a name mismatch, got {other:?}"),
    }
    match dialed {
        Err(FabricError::Refused { code, reason }) => {
            assert_eq!(code, u64::from(CLOSE_NAME_MISMATCH), "{reason}");
            assert!(reason.contains("gw-c"), "{reason}");
        }
        other => bail!("dial: expected a refusal, got {other:?}"),
    }

    // The acceptor holds gw-b's certificate but answers as gw-x: the dialer refuses.
    let (dialed, accepted) = attempt(&a, &b, b_addr, "gw-x", "gw-a").await?;
    // (server_name gw-x does not match gw-b's certificate either: TLS refuses first.)
    expect_refused("wrong server name, dial", &dialed);
    expect_refused("wrong server name, accept", &accepted);

    let acceptor = accept_one(&b, "gw-x");
    let dialed = dial(&a, b_addr, "gw-b", "gw-a").await;
    match dialed {
        Err(FabricError::NameMismatch { hello, certificate }) => {
            assert_eq!((hello.as_str(), certificate.as_str()), ("gw-x", "gw-b"))
        }
        other => bail!("dial: expected a name mismatch, got {other:?}"),
    }
    // The acceptor answered before it could know; the dialer's close reaches its link.
    let link = outcome(acceptor).await??;
    match tokio::time::timeout(OUTCOME, link.conn.closed()).await? {
        ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, VarInt::from(CLOSE_NAME_MISMATCH)),
        other => bail!("acceptor's link: expected an application close, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_dead_peer_is_noticed_within_3_s() -> Result<()> {
    let dir = cluster("dead", &["gw-a", "gw-b"])?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;
    let acceptor = accept_one(&b, "gw-b");

    // gw-a lives in its own runtime on its own thread, so it can die without a word: its
    // handles are leaked (no implicit CONNECTION_CLOSE) and its runtime dropped (its driver
    // tasks never run again, its socket is never read).
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let a_dir = dir.0.clone();
    let victim = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let (a, _) = endpoint(&a_dir, "gw-a").expect("endpoint a");
            match dial(&a, b_addr, "gw-b", "gw-a").await {
                Ok(link) => {
                    let _ = up_tx.send(Ok(link.peer_name.clone()));
                    // Keep a's runtime (keep-alives) going until the kill.
                    let _ = tokio::task::spawn_blocking(move || kill_rx.recv()).await;
                    std::mem::forget(link);
                }
                Err(e) => {
                    let _ = up_tx.send(Err(e));
                }
            }
            std::mem::forget(a);
        });
        drop(rt);
    });
    assert_eq!(up_rx.await??, "gw-b");
    let link = outcome(acceptor).await??;
    assert_eq!(link.peer_name, "gw-a");

    // Alive: a few keep-alive periods pass without the link dropping.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(link.conn.close_reason().is_none(), "link dropped while gw-a was alive");

    kill_tx.send(())?;
    victim.join().expect("victim thread");
    let t0 = std::time::Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(3), link.conn.closed())
        .await
        .context("dead peer not noticed in 3 s")?;
    eprintln!("dead peer noticed after {:?}: {why}", t0.elapsed());
    assert!(matches!(why, ConnectionError::TimedOut), "expected an idle timeout, got {why:?}");
    Ok(())
}

/// A peer that completes TLS but never says hello (a half-finished handshake) is closed after
/// HELLO_TIMEOUT, and the next peer gets in as usual.
#[tokio::test]
async fn a_silent_peer_is_closed_after_the_hello_timeout() -> Result<()> {
    let dir = cluster("silent", &["gw-a", "gw-b"])?;
    let (a, _) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;
    let acceptor = accept_one(&b, "gw-b");
    let t = std::time::Instant::now();
    let silent = a.connect(b_addr, "gw-b")?.await?;
    match outcome(acceptor).await? {
        Err(FabricError::HelloTimeout(_)) => {}
        other => bail!("expected a hello timeout, got {other:?}"),
    }
    match tokio::time::timeout(OUTCOME, silent.closed()).await? {
        ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, VarInt::from(CLOSE_HELLO_TIMEOUT)),
        other => bail!("silent peer: expected an application close, got {other:?}"),
    }
    let waited = t.elapsed();
    assert!(waited >= HELLO_TIMEOUT && waited < HELLO_TIMEOUT * 2, "{waited:?}");
    let (dialed, accepted) = attempt(&a, &b, b_addr, "gw-b", "gw-a").await?;
    dialed?;
    accepted?;
    Ok(())
}

/// A seed dial (an address, no name) accepts whatever identity the cluster CA signed, and
/// nothing else: a server of another CA, or with an expired certificate, is refused.
#[tokio::test]
async fn a_seed_dial_learns_the_identity_but_still_checks_the_chain() -> Result<()> {
    let dir = cluster("seed", &["gw-a", "gw-b"])?;
    let rogue = cluster("seed-rogue", &["gw-c"])?;
    let expired = expired_options();
    pki::issue(&dir.0, "gw-old", 1, expired)?;
    let seed_cfg = quic::seed_client_config(&TlsIdentity::load(&dir.0, "gw-a")?, &QuicOptions::default())?;
    let (a, _) = endpoint(&dir.0, "gw-a")?;
    let (b, b_addr) = endpoint(&dir.0, "gw-b")?;
    let acceptor = accept_one(&b, "gw-b");
    let link = dial_with_config(&a, seed_cfg.clone(), b_addr, SEED_SERVER_NAME, "gw-a").await?;
    assert_eq!((link.peer_name.as_str(), link.peer_identity.as_str()), ("gw-b", "gw-b"));
    outcome(acceptor).await??;

    for (what, ep) in [("another CA", endpoint(&rogue.0, "gw-c")?), ("expired", endpoint(&dir.0, "gw-old")?)] {
        let acceptor = accept_one(&ep.0, "whoever");
        let dialed =
            tokio::time::timeout(OUTCOME, dial_with_config(&a, seed_cfg.clone(), ep.1, SEED_SERVER_NAME, "gw-a"))
                .await?;
        expect_refused(&format!("seed dial to a server of {what}"), &dialed);
        let _ = tokio::time::timeout(OUTCOME, acceptor).await;
    }
    Ok(())
}
