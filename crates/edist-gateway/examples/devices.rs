//! Simulated devices for `bench/run devices`: N clients that speak exactly what the Erlang
//! connector (`erl/edist_device_dist.erl`) speaks on its control connection — TLS 1.3 with a
//! device certificate of their own, the control preface (`"EDC1", 1, Creation, Name`), the
//! hub's welcome, then a heartbeat every third of the idle timeout the hub announced — and then
//! stay connected and idle, as devices that talk to nobody do.
//!
//! `cargo run --release -p edist-gateway --example devices -- HUB_ADDR HUB_NAME CERTS_DIR COUNT IDLE_S`
//!
//! Issues the missing device certificates (`dev<i>@sim`) into CERTS_DIR from its CA first (the
//! CA key must be there), connects COUNT devices (64 handshakes at a time), prints
//! `connected N` and `connect_s S`, then `idle` once everyone is up; stays IDLE_S seconds
//! (while the caller measures the hub), then prints how many are still connected and exits.

use edist_gateway::device::proto::{HubMsg, Preface, DEVICE_BEAT};
use edist_gateway::fabric::identity::{crypto_provider, TlsIdentity};
use edist_gateway::pki::{self, IssueOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
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

fn name(i: usize) -> String {
    format!("dev{i}@sim")
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Res<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut body).await?;
    Ok(body)
}

fn client_config(certs: &Path, device: &str) -> Res<Arc<rustls::ClientConfig>> {
    let id = TlsIdentity::load_files(
        &certs.join("ca.pem"),
        &certs.join(format!("{device}.pem")),
        &certs.join(format!("{device}.key")),
    )?;
    let mut roots = rustls::RootCertStore::empty();
    for c in id.ca {
        roots.add(c)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain, id.key)?;
    Ok(Arc::new(cfg))
}

/// One device: connects, registers (then lets the next one start), then beats until the run
/// ends.
async fn device(
    hub: std::net::SocketAddr,
    server: String,
    cfg: Arc<rustls::ClientConfig>,
    i: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<Stats>,
) -> Res<()> {
    let (tls, idle) = match connect(hub, server, cfg, i).await {
        Ok(c) => c,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    if let Err(e) = beat(tls, idle).await {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS, the control preface and the hub's welcome: the heartbeat period it asks for.
async fn connect(
    hub: std::net::SocketAddr,
    server: String,
    cfg: Arc<rustls::ClientConfig>,
    i: usize,
) -> Res<(Tls, Duration)> {
    let tcp = TcpStream::connect(hub).await?;
    let _ = tcp.set_nodelay(true);
    let sni = rustls_pki_types::ServerName::try_from(server)?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg).connect(sni, tcp).await?;
    let creation = 4 + i as u32;
    tls.write_all(&frame(&Preface::Control { creation, name: name(i) }.encode())).await?;
    tls.flush().await?;
    match HubMsg::parse(&read_frame(&mut tls).await?) {
        Some(HubMsg::Welcome { idle_timeout_ms }) => Ok((tls, Duration::from_millis(idle_timeout_ms.into()))),
        other => Err(format!("hub said {other:?}").into()),
    }
}

async fn beat(mut tls: Tls, idle: Duration) -> Res<()> {
    // The connector's first beat comes up to a third of the timeout after it connected: spread
    // the simulated ones the same way.
    tokio::time::sleep(idle / 3 * (rand::random::<u32>() % 1000) / 1000).await;
    loop {
        tls.write_all(&frame(&[DEVICE_BEAT])).await?;
        tls.flush().await?;
        match HubMsg::parse(&read_frame(&mut tls).await?) {
            Some(HubMsg::Beat) | Some(HubMsg::Incoming { .. }) => {}
            other => return Err(format!("hub said {other:?}").into()),
        }
        tokio::time::sleep(idle / 3).await;
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [hub, server, certs, count, idle_s] = args.as_slice() else {
        return Err("usage: devices HUB_ADDR HUB_NAME CERTS_DIR COUNT IDLE_S".into());
    };
    let hub: std::net::SocketAddr = hub.parse()?;
    let certs = PathBuf::from(certs);
    let count: usize = count.parse()?;
    let idle_s: u64 = idle_s.parse()?;
    let t0 = Instant::now();
    let mut issued = 0;
    for i in 0..count {
        if !certs.join(format!("{}.pem", name(i))).exists() {
            pki::issue(&certs, &name(i), 30, IssueOptions { device: true, ..Default::default() })?;
            issued += 1;
        }
    }
    println!("issued {issued} ({:.1} s)", t0.elapsed().as_secs_f64());
    let configs: Vec<Arc<rustls::ClientConfig>> =
        (0..count).map(|i| client_config(&certs, &name(i))).collect::<Res<_>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(tokio::sync::Semaphore::new(64));
        let t0 = Instant::now();
        for (i, cfg) in configs.into_iter().enumerate() {
            let permit = gate.clone().acquire_owned().await?;
            let (stats, server) = (stats.clone(), server.clone());
            tokio::spawn(async move {
                if let Err(e) = device(hub, server, cfg, i, permit, stats).await {
                    eprintln!("device {}: {e}", name(i));
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
        tokio::time::sleep(Duration::from_secs(idle_s)).await;
        println!("lost {}", stats.lost.load(Ordering::Relaxed));
        println!("still_connected {}", stats.connected.load(Ordering::Relaxed) - stats.lost.load(Ordering::Relaxed));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(())
}
