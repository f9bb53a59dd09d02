//! TLS over TCP: the transport for networks that block UDP.
//!
//! One TCP connection per link, TLS 1.3 with the same certificates and checks as QUIC
//! ([`super::tls::tls_server_config`]), then the same hello on the first stream. Streams are
//! multiplexed with yamux (per-stream flow control, so a stalled stream does not stop the
//! others; a lost TCP segment still delays every stream, which QUIC avoids).
//!
//! Every stream starts with one byte saying what it is: `B` both ways, `U` towards the
//! acceptor only, `K` keep-alives (a byte every keep-alive interval; a link that hears nothing
//! for the idle timeout is lost, as a QUIC link is), `X` a close notice (`u32 code`, `u16`
//! length + reason) before the connection ends.

use super::close::refusal_code;
use super::credentials::Credentials;
use super::error::{FabricError, Result};
use super::hello::{Hello, HelloError, HelloKind, HELLO_TIMEOUT, PROTOCOL_VERSION};
use super::identity::certificate_identity;
use super::link::{BoxFuture, Closed, Incoming, Link, Linked, RecvStream, SendStream, Transport};
use super::options::{QuicOptions, DEFAULT_MAX_STREAMS};
use super::tls::{tls_client_config, tls_server_config, SEED_SERVER_NAME};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

mod kind {
    pub const BI: u8 = b'B';
    pub const UNI: u8 = b'U';
    pub const KEEP_ALIVE: u8 = b'K';
    pub const CLOSE: u8 = b'X';
}

/// Streams a peer may have open at once (as QUIC's default `max_bidi_streams`).
const MAX_STREAMS: usize = DEFAULT_MAX_STREAMS as usize;

/// The TLS-over-TCP transport.
pub struct TcpTransport {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    seed_connector: tokio_rustls::TlsConnector,
    opts: QuicOptions,
    name: String,
    /// Live links, closed with the transport.
    links: Arc<Links>,
}

/// Weak handles of a transport's links.
type Links = Mutex<Vec<std::sync::Weak<TcpLink>>>;

fn track(links: &Links, link: &Arc<TcpLink>) {
    let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
    links.retain(|l| l.strong_count() > 0);
    links.push(Arc::downgrade(link));
}

impl TcpTransport {
    /// Listens on `bind` (TCP); `our_name` is what our hellos say.
    pub async fn bind(bind: SocketAddr, creds: &Arc<Credentials>, opts: &QuicOptions, our_name: &str) -> Result<Self> {
        let listener = TcpListener::bind(bind).await.map_err(|error| FabricError::Bind { addr: bind, error })?;
        Ok(TcpTransport {
            listener,
            acceptor: Arc::new(tls_server_config(creds)?).into(),
            connector: Arc::new(tls_client_config(creds, false)?).into(),
            seed_connector: Arc::new(tls_client_config(creds, true)?).into(),
            opts: opts.clone(),
            name: our_name.into(),
            links: Default::default(),
        })
    }
}

impl Transport for TcpTransport {
    fn dial<'a>(&'a self, addr: SocketAddr, peer: Option<&'a str>) -> BoxFuture<'a, Result<Linked>> {
        Box::pin(async move {
            let dial = async {
                let tcp = TcpStream::connect(addr).await.map_err(stream_err)?;
                let _ = tcp.set_nodelay(true);
                let (tcp, shared) = Counted::new(tcp);
                let (connector, name) = match peer {
                    Some(p) => (&self.connector, p),
                    None => (&self.seed_connector, SEED_SERVER_NAME),
                };
                let server_name = rustls_pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| FabricError::Stream(format!("server name {name:?}: {e}")))?;
                let tls = connector.connect(server_name, tcp).await.map_err(tls_err)?;
                let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                let link =
                    TcpLink::start(tokio_rustls::TlsStream::Client(tls), shared, yamux::Mode::Client, addr, &self.opts);
                track(&self.links, &link);
                hello(link, identity, &self.name, true).await
            };
            tokio::time::timeout(HELLO_TIMEOUT, dial).await.unwrap_or(Err(FabricError::HelloTimeout(HELLO_TIMEOUT)))
        })
    }

    fn accept(&self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(async move {
            loop {
                let (tcp, from) = match self.listener.accept().await {
                    Ok(a) => a,
                    // Out of descriptors or similar: back off rather than spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (tcp, shared) = Counted::new(tcp);
                let (acceptor, opts, name) = (self.acceptor.clone(), self.opts.clone(), self.name.clone());
                let links = self.links.clone();
                let handshake: BoxFuture<'static, Result<Linked>> = Box::pin(async move {
                    let accept = async {
                        let tls = acceptor.accept(tcp).await.map_err(tls_err)?;
                        let identity = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                        let tls = tokio_rustls::TlsStream::Server(tls);
                        let link = TcpLink::start(tls, shared, yamux::Mode::Server, from, &opts);
                        track(&links, &link);
                        hello(link, identity, &name, false).await
                    };
                    tokio::time::timeout(HELLO_TIMEOUT, accept)
                        .await
                        .unwrap_or(Err(FabricError::HelloTimeout(HELLO_TIMEOUT)))
                });
                return Some((from, handshake));
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn close(&self) {
        let links = std::mem::take(&mut *self.links.lock().unwrap_or_else(|e| e.into_inner()));
        for l in links.iter().filter_map(std::sync::Weak::upgrade) {
            l.close(0, b"shutdown");
        }
    }

    fn wait_closed(&self) -> BoxFuture<'_, ()> {
        // Each link's driver writes its close notice on its own task, right after the close.
        Box::pin(tokio::time::sleep(Duration::from_millis(100)))
    }
}

fn stream_err(e: io::Error) -> FabricError {
    FabricError::Stream(e.to_string())
}

/// A TLS failure, as the QUIC transport reports one.
fn tls_err(e: io::Error) -> FabricError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(t) => FabricError::Tls(t.clone()),
        None => stream_err(e),
    }
}

/// The hello on the link's first stream: the dialler's, then the acceptor's answer; each
/// name must be the sender's certificate identity.
async fn hello(
    link: Arc<TcpLink>,
    cert: Option<rustls_pki_types::CertificateDer<'static>>,
    our_name: &str,
    dialler: bool,
) -> Result<Linked> {
    let result = async {
        let identity = cert.as_ref().and_then(certificate_identity).ok_or(FabricError::NoPeerIdentity)?;
        let (ours, theirs) = match dialler {
            true => (HelloKind::Hello, HelloKind::HelloAck),
            false => (HelloKind::HelloAck, HelloKind::Hello),
        };
        let ours = Hello { kind: ours, version: PROTOCOL_VERSION, name: our_name.to_owned() }.encode();
        let (mut send, mut recv) = match dialler {
            true => link.open_bi().await,
            false => link.accept_bi().await,
        }
        .map_err(|e| link.error(e))?;
        if dialler {
            send.write_all(&ours).await.map_err(|e| link.error(e))?;
        }
        check_hello(&read_hello(&link, &mut recv, theirs).await?, &identity)?;
        if !dialler {
            send.write_all(&ours).await.map_err(|e| link.error(e))?;
        }
        Ok(identity)
    }
    .await;
    finish(link, cert, result)
}

fn check_hello(h: &Hello, identity: &str) -> Result<()> {
    if h.version != PROTOCOL_VERSION {
        return Err(FabricError::Version(h.version));
    }
    if h.name != identity {
        return Err(FabricError::NameMismatch { hello: h.name.clone(), certificate: identity.to_owned() });
    }
    Ok(())
}

/// The link on success; on failure it is closed with the matching code.
fn finish(
    link: Arc<TcpLink>,
    cert: Option<rustls_pki_types::CertificateDer<'static>>,
    result: Result<String>,
) -> Result<Linked> {
    match result {
        Ok(peer_name) => {
            let grant = cert.map(|c| crate::pki::certificate_grant(&c)).unwrap_or_default();
            Ok(Linked { link, peer_name, grant })
        }
        Err(e) => {
            let reason = e.to_string();
            link.close(refusal_code(&e), reason.as_bytes().get(..200).unwrap_or(reason.as_bytes()));
            Err(e)
        }
    }
}

/// Reads one hello frame (bounded, as over QUIC).
async fn read_hello(link: &TcpLink, recv: &mut RecvStream, expected: HelloKind) -> Result<Hello> {
    let mut len = [0u8; 2];
    if let Err(e) = recv.read_exact(&mut len).await {
        return Err(link.read_error(e).await);
    }
    let mut body = vec![0u8; Hello::check_len(u16::from_be_bytes(len))?];
    if let Err(e) = recv.read_exact(&mut body).await {
        return Err(link.read_error(e).await);
    }
    let hello = Hello::decode(&body)?;
    if hello.kind != expected {
        return Err(HelloError::UnexpectedKind { expected, got: hello.kind }.into());
    }
    Ok(hello)
}

/// Shared between a link, its socket and its driver.
#[derive(Debug)]
struct Shared {
    closed: Mutex<Option<Closed>>,
    tx: AtomicU64,
    rx: AtomicU64,
    epoch: Instant,
    /// When a byte last arrived, in ms since `epoch`.
    last_rx_ms: AtomicU64,
}

impl Shared {
    fn set_closed(&self, c: Closed) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if closed.is_none() {
            *closed = Some(c);
        }
    }
}

type OpenRequest = oneshot::Sender<io::Result<yamux::Stream>>;

/// A TLS-over-TCP link: yamux over one TLS connection, run by a driver task.
#[derive(Debug)]
pub struct TcpLink {
    opens: mpsc::UnboundedSender<OpenRequest>,
    bi: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SendStream, RecvStream)>>,
    uni: tokio::sync::Mutex<mpsc::UnboundedReceiver<RecvStream>>,
    shared: Arc<Shared>,
    remote: SocketAddr,
    /// Ends the driver (after a close notice, if any).
    stop: mpsc::UnboundedSender<Option<(u32, Vec<u8>)>>,
}

impl TcpLink {
    fn start(
        tls: tokio_rustls::TlsStream<Counted>,
        shared: Arc<Shared>,
        mode: yamux::Mode,
        remote: SocketAddr,
        opts: &QuicOptions,
    ) -> Arc<TcpLink> {
        let epoch = shared.epoch;
        let mut cfg = yamux::Config::default();
        // What a peer may make us buffer: 256 KiB per stream, MAX_STREAMS streams.
        cfg.set_max_connection_receive_window(Some(MAX_STREAMS * 256 * 1024));
        cfg.set_max_num_streams(MAX_STREAMS);
        let conn = yamux::Connection::new(tls.compat(), cfg, mode);
        let (opens, open_rx) = mpsc::unbounded_channel();
        let (bi_tx, bi) = mpsc::unbounded_channel();
        let (uni_tx, uni) = mpsc::unbounded_channel();
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let link = Arc::new(TcpLink {
            opens,
            bi: tokio::sync::Mutex::new(bi),
            uni: tokio::sync::Mutex::new(uni),
            shared: shared.clone(),
            remote,
            stop: stop.clone(),
        });
        let keep_alive = opts.keep_alive;
        let idle = opts.idle_timeout;
        let driver = Driver { conn, open_rx, stop_rx, bi_tx, uni_tx, shared: shared.clone(), stop: stop.clone() };
        tokio::spawn(driver.run(Arc::downgrade(&link), keep_alive, idle, epoch));
        link
    }

    /// What a stream error means: the peer's close notice if there was one.
    fn error(&self, e: io::Error) -> FabricError {
        match self.closed() {
            Some(Closed::ByPeer { code, reason }) => FabricError::Refused { code, reason },
            _ => stream_err(e),
        }
    }

    /// A failed hello read: the peer's refusal if its close notice comes (it travels on a
    /// stream of its own, so give it a moment), else a truncated hello.
    async fn read_error(&self, e: io::Error) -> FabricError {
        for _ in 0..20 {
            if let Some(Closed::ByPeer { code, reason }) = self.closed() {
                return FabricError::Refused { code, reason };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => FabricError::BadHello(HelloError::Truncated),
            _ => stream_err(e),
        }
    }

    async fn open(&self, k: u8) -> io::Result<tokio_util::compat::Compat<yamux::Stream>> {
        let (tx, rx) = oneshot::channel();
        self.opens.send(tx).map_err(|_| closed_err())?;
        let mut s = rx.await.map_err(|_| closed_err())??.compat();
        s.write_all(&[k]).await?;
        Ok(s)
    }
}

fn closed_err() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "link closed")
}

impl Link for TcpLink {
    fn open_bi(&self) -> BoxFuture<'_, io::Result<(SendStream, RecvStream)>> {
        Box::pin(async move {
            let (r, w) = tokio::io::split(self.open(kind::BI).await?);
            Ok((Box::new(w) as SendStream, Box::new(r) as RecvStream))
        })
    }

    fn open_uni(&self) -> BoxFuture<'_, io::Result<SendStream>> {
        Box::pin(async move { Ok(Box::new(self.open(kind::UNI).await?) as SendStream) })
    }

    fn accept_bi(&self) -> BoxFuture<'_, io::Result<(SendStream, RecvStream)>> {
        Box::pin(async move { self.bi.lock().await.recv().await.ok_or_else(closed_err) })
    }

    fn accept_uni(&self) -> BoxFuture<'_, io::Result<RecvStream>> {
        Box::pin(async move { self.uni.lock().await.recv().await.ok_or_else(closed_err) })
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.shared.set_closed(Closed::Locally);
        let _ = self.stop.send(Some((code, reason.to_vec())));
    }

    fn closed(&self) -> Option<Closed> {
        self.shared.closed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    fn wire_bytes(&self) -> (u64, u64) {
        (self.shared.tx.load(Relaxed), self.shared.rx.load(Relaxed))
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        let _ = self.stop.send(None);
    }
}

type Conn = yamux::Connection<tokio_util::compat::Compat<tokio_rustls::TlsStream<Counted>>>;

/// Owns the yamux connection: opens and accepts streams, sorts incoming ones by their first
/// byte, keeps the link alive and notices when it is not.
struct Driver {
    conn: Conn,
    open_rx: mpsc::UnboundedReceiver<OpenRequest>,
    stop_rx: mpsc::UnboundedReceiver<Option<(u32, Vec<u8>)>>,
    bi_tx: mpsc::UnboundedSender<(SendStream, RecvStream)>,
    uni_tx: mpsc::UnboundedSender<RecvStream>,
    shared: Arc<Shared>,
    stop: mpsc::UnboundedSender<Option<(u32, Vec<u8>)>>,
}

impl Driver {
    async fn run(mut self, link: std::sync::Weak<TcpLink>, keep_alive: Duration, idle: Duration, epoch: Instant) {
        let shared = self.shared.clone();
        // Keep-alives: a byte on a stream of their own every interval.
        let ka_link = link.clone();
        let keep_alive_task = tokio::spawn(async move {
            let Some(l) = ka_link.upgrade() else { return };
            let Ok(mut s) = l.open(kind::KEEP_ALIVE).await else { return };
            drop(l);
            let mut every = tokio::time::interval(keep_alive);
            loop {
                every.tick().await;
                if s.write_all(&[0]).await.is_err() {
                    return;
                }
            }
        });
        let watchdog = {
            let (shared, stop) = (shared.clone(), self.stop.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(keep_alive.min(idle / 4).max(Duration::from_millis(10)));
                loop {
                    every.tick().await;
                    // (Saturating: a byte may land between the two readings.)
                    let silent = (epoch.elapsed().as_millis() as u64).saturating_sub(shared.last_rx_ms.load(Relaxed));
                    if Duration::from_millis(silent) > idle {
                        shared.set_closed(Closed::Lost(format!("timed out: nothing heard for {idle:?}")));
                        let _ = stop.send(None);
                        return;
                    }
                }
            })
        };
        let mut pending: std::collections::VecDeque<OpenRequest> = Default::default();
        let notice = std::future::poll_fn(|cx| self.poll(cx, &mut pending)).await;
        keep_alive_task.abort();
        watchdog.abort();
        if let Some((code, reason)) = notice {
            // Tell the peer why, then close (bounded: a peer that reads nothing cannot hold us).
            let close = async {
                let stream = std::future::poll_fn(|cx| self.conn.poll_new_outbound(cx)).await.ok()?;
                let mut s = stream.compat();
                let mut b = vec![kind::CLOSE];
                b.extend_from_slice(&code.to_be_bytes());
                let n = reason.len().min(u16::MAX as usize);
                b.extend_from_slice(&(n as u16).to_be_bytes());
                b.extend_from_slice(reason.get(..n).unwrap_or_default());
                // The write completes only while the connection is polled.
                let mut write = Box::pin(async move { s.write_all(&b).await.and(s.flush().await) });
                std::future::poll_fn(|cx| {
                    while let Poll::Ready(Some(_)) = self.conn.poll_next_inbound(cx) {}
                    write.as_mut().poll(cx)
                })
                .await
                .ok()
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), close).await;
            // A little longer, for the connection to put the notice on the wire.
            let drain = std::future::poll_fn(|cx| match self.conn.poll_next_inbound(cx) {
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => Poll::Ready(()),
                _ => Poll::Pending,
            });
            let _ = tokio::time::timeout(Duration::from_millis(50), drain).await;
        }
        // Dropping the connection (not closing it gracefully, which waits on the peer) ends
        // every stream at once, as a lost QUIC connection does.
        drop(self);
        shared.set_closed(Closed::Lost("connection ended".into()));
    }

    /// Ready when the driver should stop, with the close notice to send (if any).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        pending: &mut std::collections::VecDeque<OpenRequest>,
    ) -> Poll<Option<(u32, Vec<u8>)>> {
        if let Poll::Ready(stop) = self.stop_rx.poll_recv(cx) {
            return Poll::Ready(stop.flatten());
        }
        while let Poll::Ready(Some(req)) = self.open_rx.poll_recv(cx) {
            pending.push_back(req);
        }
        while !pending.is_empty() {
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(r) => {
                    if let Some(req) = pending.pop_front() {
                        let _ = req.send(r.map_err(io::Error::other));
                    }
                }
                Poll::Pending => break,
            }
        }
        loop {
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(s))) => {
                    let (bi, uni, shared, stop) =
                        (self.bi_tx.clone(), self.uni_tx.clone(), self.shared.clone(), self.stop.clone());
                    tokio::spawn(sort(s.compat(), bi, uni, shared, stop));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.shared.set_closed(Closed::Lost(e.to_string()));
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {
                    self.shared.set_closed(Closed::Lost("closed by the peer".into()));
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Routes an incoming stream by its first byte.
async fn sort(
    mut s: tokio_util::compat::Compat<yamux::Stream>,
    bi: mpsc::UnboundedSender<(SendStream, RecvStream)>,
    uni: mpsc::UnboundedSender<RecvStream>,
    shared: Arc<Shared>,
    stop: mpsc::UnboundedSender<Option<(u32, Vec<u8>)>>,
) {
    let Ok(Ok(k)) = tokio::time::timeout(HELLO_TIMEOUT, s.read_u8()).await else { return };
    match k {
        kind::BI => {
            let (r, w) = tokio::io::split(s);
            let _ = bi.send((Box::new(w), Box::new(r)));
        }
        kind::UNI => {
            let _ = uni.send(Box::new(s));
        }
        kind::KEEP_ALIVE => {
            let mut sink = [0u8; 64];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        kind::CLOSE => {
            let mut head = [0u8; 6];
            if s.read_exact(&mut head).await.is_ok() {
                let code = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let mut reason = vec![0u8; usize::from(u16::from_be_bytes([head[4], head[5]]))];
                let _ = s.read_exact(&mut reason).await;
                shared
                    .set_closed(Closed::ByPeer { code: code.into(), reason: String::from_utf8_lossy(&reason).into() });
            }
            let _ = stop.send(None);
        }
        _ => {} // unknown: dropped
    }
}

/// The TCP socket, counting bytes both ways and noting when a byte last arrived.
struct Counted {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl Counted {
    fn new(inner: TcpStream) -> (Counted, Arc<Shared>) {
        let shared = Arc::new(Shared {
            closed: Mutex::new(None),
            tx: AtomicU64::new(0),
            rx: AtomicU64::new(0),
            epoch: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
        });
        (Counted { inner, shared: shared.clone() }, shared)
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.shared.rx.fetch_add(n as u64, Relaxed);
            self.shared.last_rx_ms.store(self.shared.epoch.elapsed().as_millis() as u64, Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.shared.tx.fetch_add(n as u64, Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
