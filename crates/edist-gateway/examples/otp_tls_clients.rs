//! Many idle `inet_tls_dist` connections to one OTP node, for `bench/run devices`: what OTP's
//! own TLS distribution costs the server node per idle connection, measured with enough
//! connections to see it (a client BEAM per connection would be far heavier than the server).
//!
//! Each client is what a hidden BEAM connecting with `-proto_dist inet_tls` is to the server: a
//! TLS 1.3 connection with a certificate of the cluster CA (mutual TLS), the standard
//! distribution handshake as `c<pid>_<i>@HOST` (OTP 25's flags, not published: a hidden node, so that
//! `global` has nothing to synchronise and the figure is the carrier's and the connection's),
//! then ticks answered by ticks, as a BEAM's net_kernel does while nothing else is sent.
//!
//! `cargo run --release -p edist-gateway --example otp_tls_clients -- \
//!     ADDR SERVER_NODE HOST COOKIE CERTS_DIR CERT_NAME COUNT HOLD_S`
//!
//! Connects COUNT clients (32 handshakes at a time), prints `connected N`, `failed N`,
//! `connect_s S` and `idle`, stays HOLD_S seconds, prints `still_connected N` and exits.

use edist_gateway::fabric::identity::{crypto_provider, TlsIdentity};
use edist_proto::dist::handshake::{Initiator, InitiatorConfig, InitiatorEvent, Status};
use edist_proto::dist::DFlags;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    failed: AtomicUsize,
    lost: AtomicUsize,
}

struct Target {
    addr: std::net::SocketAddr,
    server: String,
    host: String,
    cookie: String,
    sni: String,
    tls: Arc<rustls::ClientConfig>,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn client(t: Arc<Target>, i: usize, permit: tokio::sync::OwnedSemaphorePermit, stats: Arc<Stats>) -> Res<()> {
    let (tls, rest) = match connect(&t, i).await {
        Ok(c) => c,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    if let Err(e) = idle(tls, rest).await {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

/// TLS, then the distribution handshake; returns what came after it.
async fn connect(t: &Target, i: usize) -> Res<(Tls, Vec<u8>)> {
    let tcp = TcpStream::connect(t.addr).await?;
    let _ = tcp.set_nodelay(true);
    let sni = rustls_pki_types::ServerName::try_from(t.sni.clone())?;
    let mut tls = tokio_rustls::TlsConnector::from(t.tls.clone()).connect(sni, tcp).await?;
    let mut hs = Initiator::new(InitiatorConfig {
        // Unique across runs of this program against one server.
        name: format!("c{}_{i}@{}", std::process::id(), t.host),
        flags: DFlags::edist_default(false),
        creation: 4 + i as u32,
        cookie: t.cookie.as_bytes().to_vec(),
        challenge: rand::random(),
        peer: t.server.clone(),
    });
    let mut buf = vec![0u8; 4096];
    let mut inp = Vec::new();
    loop {
        // inet_tls_dist frames the handshake with a u32 length ({packet, 4}), where the
        // handshake's own framing (and `Initiator`'s) is a u16 one.
        let out = hs.take_output();
        if !out.is_empty() {
            tls.write_all(&reframe(&out, 2, 4)).await?;
            tls.flush().await?;
        }
        match hs.poll()? {
            Some(InitiatorEvent::Status(Status::Ok | Status::OkSimultaneous)) => {}
            Some(InitiatorEvent::Status(st)) => return Err(format!("the server said {st:?}").into()),
            Some(InitiatorEvent::Challenge { .. }) => hs.reply()?,
            Some(InitiatorEvent::Connected(_)) => return Ok((tls, inp)),
            None => {
                let n = tls.read(&mut buf).await?;
                if n == 0 {
                    return Err("closed during the handshake".into());
                }
                inp.extend_from_slice(&buf[..n]);
                let whole = whole_frames(&inp, 4);
                hs.handle(&reframe(&inp[..whole], 4, 2))?;
                inp.drain(..whole);
            }
        }
    }
}

/// The length of the whole frames (with a `from`-byte length each) at the start of `b`.
fn whole_frames(b: &[u8], from: usize) -> usize {
    let mut at = 0;
    while b.len() >= at + from {
        let len = b[at..at + from].iter().fold(0usize, |n, &x| n << 8 | usize::from(x));
        if b.len() < at + from + len {
            break;
        }
        at += from + len;
    }
    at
}

/// The whole frames of `b` with a `to`-byte length each instead of a `from`-byte one.
fn reframe(b: &[u8], from: usize, to: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < whole_frames(b, from) {
        let len = b[at..at + from].iter().fold(0usize, |n, &x| n << 8 | usize::from(x));
        out.extend_from_slice(&(len as u32).to_be_bytes()[4 - to..]);
        out.extend_from_slice(&b[at + from..at + from + len]);
        at += from + len;
    }
    out
}

/// Connected: u32-framed packets; each tick (an empty one) is answered with a tick.
async fn idle(mut tls: Tls, rest: Vec<u8>) -> Res<()> {
    let mut buf = vec![0u8; 4096];
    let mut pend = rest;
    loop {
        while pend.len() >= 4 {
            let len = u32::from_be_bytes([pend[0], pend[1], pend[2], pend[3]]) as usize;
            if pend.len() < 4 + len {
                break;
            }
            if len == 0 {
                tls.write_all(&[0, 0, 0, 0]).await?;
                tls.flush().await?;
            }
            pend.drain(..4 + len);
        }
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        pend.extend_from_slice(&buf[..n]);
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, server, host, cookie, certs, cert, count, hold_s] = args.as_slice() else {
        return Err("usage: otp_tls_clients ADDR SERVER_NODE HOST COOKIE CERTS_DIR CERT_NAME COUNT HOLD_S".into());
    };
    let certs = PathBuf::from(certs);
    let id = TlsIdentity::load_files(
        &certs.join("ca.pem"),
        &certs.join(format!("{cert}.pem")),
        &certs.join(format!("{cert}.key")),
    )?;
    let mut roots = rustls::RootCertStore::empty();
    for c in id.ca {
        roots.add(c)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain, id.key)?;
    let target = Arc::new(Target {
        addr: addr.parse()?,
        server: server.clone(),
        host: host.clone(),
        cookie: cookie.clone(),
        sni: cert.clone(),
        tls: Arc::new(tls),
    });
    let count: usize = count.parse()?;
    let hold = Duration::from_secs(hold_s.parse()?);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(tokio::sync::Semaphore::new(32));
        let t0 = Instant::now();
        for i in 0..count {
            let permit = gate.clone().acquire_owned().await?;
            let (t, s) = (target.clone(), stats.clone());
            tokio::spawn(async move {
                if let Err(e) = client(t, i, permit, s).await {
                    eprintln!("client c{i}: {e}");
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) < count
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("connected {}", stats.connected.load(Ordering::Relaxed));
        println!("failed {}", stats.failed.load(Ordering::Relaxed));
        println!("connect_s {:.1}", t0.elapsed().as_secs_f64());
        println!("idle");
        std::io::stdout().flush()?;
        tokio::time::sleep(hold).await;
        println!("still_connected {}", stats.connected.load(Ordering::Relaxed) - stats.lost.load(Ordering::Relaxed));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(())
}
