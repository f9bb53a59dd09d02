//! QUIC links between gateways: the [`Link`] and [`Transport`] of the fabric over quinn.
//!
//! One [`quinn::Endpoint`] per gateway both accepts and dials ([`endpoint`]), with the TLS
//! configurations of [`super::tls`] (mutual TLS against the cluster CA). A link is up once the
//! hello of [`super::hello`] has been answered on its first stream both ways; refusals close the
//! connection with an application code ([`super::close`]) and a reason, which the other side sees
//! as [`FabricError::Refused`].
//!
//! This is the only module of the crate that names quinn's types (with [`congestion`], its
//! congestion controller).

pub mod congestion;

use super::close::refusal_code;
use super::credentials::Credentials;
use super::error::{FabricError, Result};
use super::hello::{Hello, HelloError, HelloKind, HELLO_TIMEOUT, PROTOCOL_VERSION};
use super::identity::{certificate_identity, TlsIdentity};
use super::link::{BoxFuture, Closed, Incoming, Link, Linked, RecvStream, SendStream, Transport};
use super::options::{Congestion, QuicOptions, MAX_DATAGRAM, MAX_STREAM_WINDOW, MIN_STREAM_WINDOW};
use super::tls::{tls_client_config, tls_server_config, SEED_SERVER_NAME};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

// quinn's errors become the fabric's, opaque, so that callers never name a quinn type.
impl From<NoInitialCipherSuite> for FabricError {
    fn from(e: NoInitialCipherSuite) -> Self {
        FabricError::Quic(Box::new(e))
    }
}

impl From<quinn::ConnectError> for FabricError {
    fn from(e: quinn::ConnectError) -> Self {
        FabricError::Quic(Box::new(e))
    }
}

/// What a link may buffer for sending, all streams together (a bound, not an allocation).
const SEND_WINDOW: u64 = 64 << 20;

/// The QUIC transport configuration for `opts`.
pub fn transport_config(opts: &QuicOptions) -> Result<TransportConfig> {
    if opts.keep_alive >= opts.idle_timeout {
        return Err(FabricError::Options(format!(
            "keep_alive {:?} must be shorter than idle_timeout {:?}",
            opts.keep_alive, opts.idle_timeout
        )));
    }
    if !(MIN_DATAGRAM..=MAX_DATAGRAM).contains(&opts.max_datagram) {
        return Err(FabricError::Options(format!(
            "max_datagram {} must be within {MIN_DATAGRAM}..={MAX_DATAGRAM}",
            opts.max_datagram
        )));
    }
    if !(MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW).contains(&opts.stream_window) {
        return Err(FabricError::Options(format!(
            "stream_window {} must be within {MIN_STREAM_WINDOW}..={MAX_STREAM_WINDOW}",
            opts.stream_window
        )));
    }
    let idle = IdleTimeout::try_from(opts.idle_timeout)
        .map_err(|_| FabricError::Options(format!("idle_timeout {:?} is too large", opts.idle_timeout)))?;
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(opts.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(opts.initial_streams.min(opts.max_bidi_streams).max(1).into())
        .max_concurrent_uni_streams(opts.initial_streams.min(opts.max_uni_streams).max(1).into())
        // Bulk lanes keep about a congestion window each in QUIC's send buffer (session/sync.rs,
        // `LaneFlow`): the rest of this is headroom, so that a small message on the ordered lane never
        // waits for buffer space behind bulk data (it then goes first: stream priority).
        .send_window(SEND_WINDOW)
        .stream_receive_window(opts.stream_window.into())
        .mtu_discovery_config(Some(mtu_discovery(opts)));
    match opts.congestion {
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(congestion::CappedBbrConfig::default())),
        Congestion::BbrUncapped => t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::NewReno => t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
    };
    Ok(t)
}

/// MTU discovery up to `opts.max_datagram` (quinn's default stops at 1452).
fn mtu_discovery(opts: &QuicOptions) -> quinn::MtuDiscoveryConfig {
    let mut m = quinn::MtuDiscoveryConfig::default();
    m.upper_bound(opts.max_datagram)
        // quinn takes four bursts of lost full-size packets for a black hole and falls back to
        // 1200 bytes; congestion losses when a bulk transfer starts are such bursts. Without a
        // short cool-down a link then carried 1200-byte datagrams for its next minute.
        .black_hole_cooldown(BLACK_HOLE_COOLDOWN);
    m
}

/// How soon a link looks for larger datagrams again after quinn suspected a black hole.
const BLACK_HOLE_COOLDOWN: std::time::Duration = std::time::Duration::from_secs(1);

/// QUIC's smallest allowed datagram (RFC 9000, 14.1).
const MIN_DATAGRAM: u16 = 1200;

/// The server half: requires a client certificate chaining to the cluster CA.
pub fn server_config(id: &TlsIdentity, opts: &QuicOptions) -> Result<quinn::ServerConfig> {
    server_config_with(&Credentials::new(id)?, opts)
}

fn server_config_with(creds: &Arc<Credentials>, opts: &QuicOptions) -> Result<quinn::ServerConfig> {
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls_server_config(creds)?)?));
    cfg.transport_config(Arc::new(transport_config(opts)?));
    Ok(cfg)
}

/// The client half: verifies the server against the cluster CA and presents our certificate.
pub fn client_config(id: &TlsIdentity, opts: &QuicOptions) -> Result<quinn::ClientConfig> {
    client_config_with(&Credentials::new(id)?, opts, false)
}

fn client_config_with(creds: &Arc<Credentials>, opts: &QuicOptions, any_identity: bool) -> Result<quinn::ClientConfig> {
    let tls = tls_client_config(creds, any_identity)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(transport_config(opts)?));
    Ok(cfg)
}

/// The client half for seeds, addresses whose gateway is not known by name: the server's
/// chain must still lead to the cluster CA (and be valid now), but any identity is accepted;
/// the link then knows its peer by that identity, as an accepted link does.
pub fn seed_client_config(id: &TlsIdentity, opts: &QuicOptions) -> Result<quinn::ClientConfig> {
    client_config_with(&Credentials::new(id)?, opts, true)
}

/// One UDP endpoint that accepts links (mutual TLS required) and dials them (with
/// [`client_config`] as its default). Must be called inside a tokio runtime.
pub fn endpoint(bind: SocketAddr, id: &TlsIdentity, opts: &QuicOptions) -> Result<Endpoint> {
    endpoint_with(bind, &Credentials::new(id)?, opts)
}

/// [`endpoint`] on credentials that can be reloaded while it runs.
pub fn endpoint_with(bind: SocketAddr, creds: &Arc<Credentials>, opts: &QuicOptions) -> Result<Endpoint> {
    let server = server_config_with(creds, opts)?;
    let client = client_config_with(creds, opts, false)?;
    let bind_err = |error| FabricError::Bind { addr: bind, error };
    let socket = udp_socket(bind).map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime (not inside tokio)")))?;
    let mut ep_cfg = quinn::EndpointConfig::default();
    // What peers may send us: as large as what we look for ourselves.
    ep_cfg
        .max_udp_payload_size(opts.max_datagram)
        .map_err(|e| FabricError::Options(format!("max_datagram {}: {e}", opts.max_datagram)))?;
    let mut ep = Endpoint::new(ep_cfg, Some(server), socket, runtime).map_err(bind_err)?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// What a link's UDP socket asks the kernel to buffer each way. Linux's default (208 KiB)
/// overflows within a millisecond at a few hundred MB/s whenever the gateway is not scheduled,
/// and every datagram dropped there is a loss QUIC recovers from and backs off for: 28% of the
/// packets were lost so on a veth at 300 MB/s. The kernel grants at most `net.core.rmem_max`
/// (`wmem_max`), doubled.
pub const UDP_BUFFER: usize = 8 << 20;

/// The fabric's UDP socket, bound, with large kernel buffers (best effort, logged when the
/// kernel grants less than half).
fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    if let Ok(got) = s.recv_buffer_size() {
        if got < UDP_BUFFER / 2 {
            tracing::info!(
                got,
                wanted = UDP_BUFFER,
                "the fabric's UDP receive buffer is small: bursts will be dropped at high rates (raise net.core.rmem_max)"
            );
        }
    }
    s.bind(&bind.into())?;
    Ok(s.into())
}

/// The identity (CN, else first DNS SAN) of the peer's verified certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_identity(certs.first()?)
}

/// The grant of the peer's verified certificate.
pub fn peer_grant(conn: &quinn::Connection) -> crate::pki::Grant {
    let cert = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned());
    cert.map(|c| crate::pki::certificate_grant(&c)).unwrap_or_default()
}

/// A link to another gateway whose hello has been answered.
#[derive(Debug, Clone)]
pub struct PeerLink {
    pub conn: quinn::Connection,
    /// The name the peer gave in its hello.
    pub peer_name: String,
    /// The identity of the peer's verified certificate (equal to `peer_name`).
    pub peer_identity: String,
    /// What the peer's certificate grants (node names, role, serial).
    pub grant: crate::pki::Grant,
}

/// Dials `addr` (whose certificate must carry `server_name`) with the endpoint's default client
/// config, sends our hello and waits for the answer, all within [`HELLO_TIMEOUT`].
pub async fn dial(endpoint: &Endpoint, addr: SocketAddr, server_name: &str, our_name: &str) -> Result<PeerLink> {
    let connecting = endpoint.connect(addr, server_name)?;
    dial_connecting(connecting, our_name).await
}

/// [`dial`] with an explicit client configuration.
pub async fn dial_with_config(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    our_name: &str,
) -> Result<PeerLink> {
    let connecting = endpoint.connect_with(config, addr, server_name)?;
    dial_connecting(connecting, our_name).await
}

async fn dial_connecting(connecting: quinn::Connecting, our_name: &str) -> Result<PeerLink> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(conn) => conn.map_err(from_conn)?,
        Err(_) => return Err(FabricError::HelloTimeout(HELLO_TIMEOUT)),
    };
    let result = match tokio::time::timeout_at(deadline, dial_hello(&conn, our_name)).await {
        Ok(r) => r,
        Err(_) => Err(FabricError::HelloTimeout(HELLO_TIMEOUT)),
    };
    result.map_err(|e| refuse(&conn, e))
}

async fn dial_hello(conn: &quinn::Connection, our_name: &str) -> Result<PeerLink> {
    let identity = peer_identity(conn).ok_or(FabricError::NoPeerIdentity)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(from_conn)?;
    let hello = Hello { kind: HelloKind::Hello, version: PROTOCOL_VERSION, name: our_name.to_owned() };
    send.write_all(&hello.encode()).await.map_err(from_write)?;
    send.finish().map_err(|e| FabricError::Stream(e.to_string()))?;
    let answer = read_hello(&mut recv, HelloKind::HelloAck).await?;
    if answer.version != PROTOCOL_VERSION {
        return Err(FabricError::Version(answer.version));
    }
    if answer.name != identity {
        return Err(FabricError::NameMismatch { hello: answer.name, certificate: identity });
    }
    Ok(PeerLink { conn: conn.clone(), peer_name: answer.name, peer_identity: identity, grant: peer_grant(conn) })
}

/// Completes an incoming link: TLS handshake (the client certificate must chain to the
/// cluster CA), then the dialer's hello on its first bi stream, whose name must equal its
/// certificate identity; answers with our own hello. All within [`HELLO_TIMEOUT`].
pub async fn accept(incoming: quinn::Incoming, our_name: &str) -> Result<PeerLink> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(conn) => conn.map_err(from_conn)?,
        Err(_) => return Err(FabricError::HelloTimeout(HELLO_TIMEOUT)),
    };
    let result = match tokio::time::timeout_at(deadline, accept_hello(&conn, our_name)).await {
        Ok(r) => r,
        Err(_) => Err(FabricError::HelloTimeout(HELLO_TIMEOUT)),
    };
    result.map_err(|e| refuse(&conn, e))
}

async fn accept_hello(conn: &quinn::Connection, our_name: &str) -> Result<PeerLink> {
    let identity = peer_identity(conn).ok_or(FabricError::NoPeerIdentity)?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(from_conn)?;
    let hello = read_hello(&mut recv, HelloKind::Hello).await?;
    if hello.version != PROTOCOL_VERSION {
        return Err(FabricError::Version(hello.version));
    }
    if hello.name != identity {
        return Err(FabricError::NameMismatch { hello: hello.name, certificate: identity });
    }
    let answer = Hello { kind: HelloKind::HelloAck, version: PROTOCOL_VERSION, name: our_name.to_owned() };
    send.write_all(&answer.encode()).await.map_err(from_write)?;
    send.finish().map_err(|e| FabricError::Stream(e.to_string()))?;
    Ok(PeerLink { conn: conn.clone(), peer_name: hello.name, peer_identity: identity, grant: peer_grant(conn) })
}

/// Reads one hello frame of kind `expected` (bounded: at most 2 + [`MAX_HELLO_BODY`] bytes).
async fn read_hello(recv: &mut quinn::RecvStream, expected: HelloKind) -> Result<Hello> {
    let mut len = [0u8; 2];
    recv.read_exact(&mut len).await.map_err(from_read)?;
    let len = Hello::check_len(u16::from_be_bytes(len))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(from_read)?;
    let hello = Hello::decode(&body)?;
    if hello.kind != expected {
        return Err(HelloError::UnexpectedKind { expected, got: hello.kind }.into());
    }
    Ok(hello)
}

/// Closes `conn` with the application code matching `e` (a no-op if it is already closed)
/// and hands `e` back.
fn refuse(conn: &quinn::Connection, e: FabricError) -> FabricError {
    let code = VarInt::from_u32(refusal_code(&e));
    tracing::debug!(remote = %conn.remote_address(), error = %e, "refusing gateway link");
    let reason = e.to_string();
    conn.close(code, reason.as_bytes().get(..200).unwrap_or(reason.as_bytes()));
    e
}

fn from_conn(e: ConnectionError) -> FabricError {
    match e {
        ConnectionError::ApplicationClosed(c) => FabricError::Refused {
            code: c.error_code.into_inner(),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        e => FabricError::Connection(Box::new(e)),
    }
}

fn from_write(e: quinn::WriteError) -> FabricError {
    match e {
        quinn::WriteError::ConnectionLost(c) => from_conn(c),
        e => FabricError::Stream(e.to_string()),
    }
}

fn from_read(e: quinn::ReadExactError) -> FabricError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => from_conn(c),
        quinn::ReadExactError::FinishedEarly(_) => FabricError::BadHello(HelloError::Truncated),
        e => FabricError::Stream(e.to_string()),
    }
}

/// A stream both ways carries ordered traffic (a link's control stream, a relayed connection's
/// ordered lane of small messages): QUIC sends it before the unidirectional bulk lanes, so a
/// small message crosses in front of queued bulk data on the wire too.
fn ordered(s: quinn::SendStream) -> SendStream {
    let _ = s.set_priority(1);
    Box::new(s)
}

/// A QUIC link as the gateway uses it: the connection, and how many streams of each kind the
/// peer may open, raised as it opens them.
///
/// quinn allocates state for every stream the peer may open (up to the transport's
/// `max_concurrent_*_streams`) when the connection starts, whether or not it ever opens them:
/// with 1024 of each that was ~135 KiB of the ~166 KiB an idle link took at each end. A link
/// therefore starts with [`QuicOptions::initial_streams`] of each kind, and each stream the
/// peer opens that leaves less than as many again in reserve doubles the allowance (up to the
/// maxima): a peer opening streams in a burst (a relay's lanes, many relays at once) waits at
/// most a round trip per doubling in quinn's `open_*`, and never fails for it. The allowance
/// is not lowered again (quinn keeps the state it allocated), so a link that was busy keeps
/// what it needed.
#[derive(Debug)]
pub struct QuicLink {
    conn: quinn::Connection,
    bi: Arc<Allowance>,
    uni: Arc<Allowance>,
}

impl QuicLink {
    /// Wraps a connection configured with [`transport_config`] of `opts`.
    pub fn new(conn: quinn::Connection, opts: &QuicOptions) -> QuicLink {
        let allowance = |bi, max: u32| {
            let initial = opts.initial_streams.min(max).max(1);
            Arc::new(Allowance { bi, max, open: std::sync::Mutex::new((0, initial)) })
        };
        QuicLink { conn, bi: allowance(true, opts.max_bidi_streams), uni: allowance(false, opts.max_uni_streams) }
    }

    /// The connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// What the peer may open now: (bidirectional, unidirectional).
    pub fn allowed_streams(&self) -> (u32, u32) {
        (self.bi.lock().1, self.uni.lock().1)
    }
}

/// Streams of one kind the peer may open at once.
#[derive(Debug)]
struct Allowance {
    bi: bool,
    max: u32,
    /// Streams of this kind the peer opened that we still hold, and what it may open now.
    open: std::sync::Mutex<(u32, u32)>,
}

impl Allowance {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, u32)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer opened one more stream: raises its allowance if less than as many again as
    /// are open are left. The guard counts the stream until both its halves are dropped.
    fn opened(self: &Arc<Self>, conn: &quinn::Connection) -> Arc<OpenStream> {
        let mut g = self.lock();
        g.0 += 1;
        let (open, allowed) = *g;
        if open.saturating_mul(2) > allowed && allowed < self.max {
            let raised = allowed.max(1).saturating_mul(2).max(open.saturating_mul(2)).min(self.max);
            g.1 = raised;
            // Under the lock, so that two raises reach quinn in order.
            if self.bi {
                conn.set_max_concurrent_bi_streams(raised.into());
            } else {
                conn.set_max_concurrent_uni_streams(raised.into());
            }
        }
        Arc::new(OpenStream(self.clone()))
    }
}

/// Counts one stream the peer opened while either half of it lives.
#[derive(Debug)]
struct OpenStream(Arc<Allowance>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.0 = g.0.saturating_sub(1);
    }
}

/// A stream half the peer opened, counted in its [`Allowance`] while it lives.
struct Counted<S> {
    s: S,
    _open: Arc<OpenStream>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.s).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.s).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.s).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.s).poll_shutdown(cx)
    }
}

impl Link for QuicLink {
    fn open_bi(&self) -> BoxFuture<'_, std::io::Result<(SendStream, RecvStream)>> {
        Box::pin(async move {
            let (s, r) = quinn::Connection::open_bi(&self.conn).await.map_err(std::io::Error::other)?;
            Ok((ordered(s), Box::new(r) as RecvStream))
        })
    }

    fn open_uni(&self) -> BoxFuture<'_, std::io::Result<SendStream>> {
        Box::pin(async move {
            Ok(Box::new(quinn::Connection::open_uni(&self.conn).await.map_err(std::io::Error::other)?) as SendStream)
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, std::io::Result<(SendStream, RecvStream)>> {
        Box::pin(async move {
            let (s, r) = quinn::Connection::accept_bi(&self.conn).await.map_err(std::io::Error::other)?;
            let open = self.bi.opened(&self.conn);
            let _ = s.set_priority(1);
            let s: SendStream = Box::new(Counted { s, _open: open.clone() });
            Ok((s, Box::new(Counted { s: r, _open: open }) as RecvStream))
        })
    }

    fn accept_uni(&self) -> BoxFuture<'_, std::io::Result<RecvStream>> {
        Box::pin(async move {
            let r = quinn::Connection::accept_uni(&self.conn).await.map_err(std::io::Error::other)?;
            Ok(Box::new(Counted { s: r, _open: self.uni.opened(&self.conn) }) as RecvStream)
        })
    }

    fn close(&self, code: u32, reason: &[u8]) {
        quinn::Connection::close(&self.conn, code.into(), reason)
    }

    fn closed(&self) -> Option<Closed> {
        Some(match self.conn.close_reason()? {
            ConnectionError::LocallyClosed => Closed::Locally,
            ConnectionError::ApplicationClosed(c) => Closed::ByPeer {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            e => Closed::Lost(e.to_string()),
        })
    }

    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(&self.conn)
    }

    fn wire_bytes(&self) -> (u64, u64) {
        let s = self.conn.stats();
        (s.udp_tx.bytes, s.udp_rx.bytes)
    }

    fn path(&self) -> Option<super::link::PathStats> {
        let p = self.conn.stats().path;
        Some(super::link::PathStats {
            rtt_us: u64::try_from(p.rtt.as_micros()).unwrap_or(u64::MAX),
            cwnd: p.cwnd,
            sent_packets: p.sent_packets,
            lost_packets: p.lost_packets,
            congestion_events: p.congestion_events,
            mtu: p.current_mtu,
        })
    }
}

impl PeerLink {
    /// The link as the gateway uses it, its connection configured with `opts`.
    pub fn linked(self, opts: &QuicOptions) -> Linked {
        Linked { link: Arc::new(QuicLink::new(self.conn, opts)), peer_name: self.peer_name, grant: self.grant }
    }
}

/// The QUIC transport: one UDP endpoint that dials and accepts.
pub struct QuicTransport {
    ep: Endpoint,
    seed: quinn::ClientConfig,
    name: String,
    opts: QuicOptions,
}

impl QuicTransport {
    /// Binds the endpoint; `our_name` is what our hellos say.
    pub fn new(
        bind: SocketAddr,
        creds: &Arc<Credentials>,
        opts: &QuicOptions,
        our_name: &str,
    ) -> Result<QuicTransport> {
        let (ep, seed) = (endpoint_with(bind, creds, opts)?, client_config_with(creds, opts, true)?);
        Ok(QuicTransport { ep, seed, name: our_name.into(), opts: opts.clone() })
    }
}

impl Transport for QuicTransport {
    fn dial<'a>(&'a self, addr: SocketAddr, peer: Option<&'a str>) -> BoxFuture<'a, Result<Linked>> {
        Box::pin(async move {
            let link = match peer {
                Some(peer) => dial(&self.ep, addr, peer, &self.name).await?,
                None => dial_with_config(&self.ep, self.seed.clone(), addr, SEED_SERVER_NAME, &self.name).await?,
            };
            Ok(link.linked(&self.opts))
        })
    }

    fn accept(&self) -> BoxFuture<'_, Option<Incoming>> {
        Box::pin(async move {
            let incoming = self.ep.accept().await?;
            let from = incoming.remote_address();
            let (name, opts) = (self.name.clone(), self.opts.clone());
            let handshake: BoxFuture<'static, Result<Linked>> =
                Box::pin(async move { accept(incoming, &name).await.map(|l| l.linked(&opts)) });
            Some((from, handshake))
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.ep.local_addr()
    }

    fn close(&self) {
        self.ep.close(0u32.into(), b"shutdown");
    }

    fn wait_closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.ep.wait_idle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn options_are_checked() {
        transport_config(&QuicOptions::default()).expect("defaults");
        let bad = QuicOptions { keep_alive: Duration::from_secs(5), ..Default::default() };
        assert!(matches!(transport_config(&bad), Err(FabricError::Options(_))));
        for max_datagram in [1199, MAX_DATAGRAM + 1] {
            let bad = QuicOptions { max_datagram, ..Default::default() };
            assert!(matches!(transport_config(&bad), Err(FabricError::Options(_))), "{max_datagram}");
        }
        for stream_window in [MIN_STREAM_WINDOW - 1, MAX_STREAM_WINDOW + 1] {
            let bad = QuicOptions { stream_window, ..Default::default() };
            assert!(matches!(transport_config(&bad), Err(FabricError::Options(_))), "{stream_window}");
        }
    }

    /// Two endpoints on loopback with certificates from a fresh CA, gw-a dialled to gw-b:
    /// the CA's directory (to remove) and both ends.
    async fn linked_pair(tag: &str, opts: &QuicOptions) -> (std::path::PathBuf, PeerLink, PeerLink) {
        use crate::pki::{self, CaOptions, IssueOptions};
        let dir = std::env::temp_dir().join(format!("edist-{tag}-{}", rand::random::<u64>()));
        pki::init_ca(&dir, tag, &CaOptions::default()).expect("ca");
        pki::issue(&dir, "gw-a", 1, IssueOptions::default()).expect("gw-a");
        pki::issue(&dir, "gw-b", 1, IssueOptions::default()).expect("gw-b");
        let any = "127.0.0.1:0".parse().expect("addr");
        let a = endpoint(any, &TlsIdentity::load(&dir, "gw-a").expect("a"), opts).expect("endpoint a");
        let b = endpoint(any, &TlsIdentity::load(&dir, "gw-b").expect("b"), opts).expect("endpoint b");
        let addr = b.local_addr().expect("addr");
        let acc = tokio::spawn(async move { accept(b.accept().await.expect("incoming"), "gw-b").await });
        let ab = dial(&a, addr, "gw-b", "gw-a").await.expect("dial");
        (dir, ab, acc.await.expect("join").expect("accept"))
    }

    /// A peer may send `stream_window` bytes on a stream ahead of what the gateway reads, and
    /// no more: its writes block there until the gateway reads.
    #[tokio::test]
    async fn a_stream_holds_at_most_its_window() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let opts = QuicOptions { stream_window: 100_000, ..Default::default() };
        let (dir, ab, ba) = linked_pair("window", &opts).await;
        let (ab, ba) = (ab.linked(&opts).link, QuicLink::new(ba.conn, &opts));
        let mut s = ab.open_uni().await.expect("open uni");
        let chunk = [7u8; 1000];
        let mut sent = 0usize;
        while let Ok(r) = tokio::time::timeout(Duration::from_millis(500), s.write_all(&chunk)).await {
            r.expect("write");
            sent += chunk.len();
            assert!(sent <= 200_000, "{sent} bytes sent, none read, with a 100,000-byte window");
        }
        assert!((99_000..=100_000).contains(&sent), "{sent} bytes sent before the window closed");
        // Reading opens it again.
        let mut r = ba.accept_uni().await.expect("uni");
        let mut buf = vec![0u8; sent];
        r.read_exact(&mut buf).await.expect("read");
        tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk))
            .await
            .expect("window reopened")
            .expect("write");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Links look for datagrams up to `max_datagram`: on loopback (MTU 65536) they get to the
    /// largest allowed, well past Ethernet's.
    #[tokio::test]
    async fn mtu_discovery_reaches_max_datagram() {
        let opts = QuicOptions { max_datagram: MAX_DATAGRAM, ..Default::default() };
        let (dir, ab, _ba) = linked_pair("mtu", &opts).await;
        let mut mtu = 0;
        for _ in 0..50 {
            mtu = ab.conn.stats().path.current_mtu;
            if mtu >= opts.max_datagram - 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(mtu >= opts.max_datagram - 20, "MTU {mtu} after 5 s, looking for {}", opts.max_datagram);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A link starts with few streams the peer may open, and a peer that opens many more at
    /// once (bulk lanes, relays) gets them: the allowance grows as they are accepted.
    #[tokio::test]
    async fn stream_allowance_grows_on_demand() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let opts = QuicOptions { initial_streams: 2, max_bidi_streams: 40, ..Default::default() };
        let (dir, ab, ba) = linked_pair("allowance", &opts).await;
        let (ab, ba) = (ab.linked(&opts).link, QuicLink::new(ba.conn, &opts));
        assert_eq!(ba.allowed_streams(), (2, 2));
        const N: usize = 100;
        // The peer opens N unidirectional and 40 bidirectional streams, all held open.
        let opener = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..N {
                let mut s = ab.open_uni().await.expect("open uni");
                s.write_all(&[i as u8]).await.expect("write");
                held.push(s);
            }
            for i in 0..40 {
                let (mut s, r) = ab.open_bi().await.expect("open bi");
                s.write_all(&[i as u8]).await.expect("write");
                held.push(s);
                std::mem::forget(r);
            }
            (ab, held)
        });
        let ba = Arc::new(ba);
        let mut held = Vec::new();
        for i in 0..N {
            let mut r =
                tokio::time::timeout(Duration::from_secs(5), ba.accept_uni()).await.expect("in time").expect("uni");
            let mut b = [0u8];
            r.read_exact(&mut b).await.expect("read");
            assert_eq!(b[0], i as u8);
            held.push(r);
        }
        for _ in 0..40 {
            let (_, r) =
                tokio::time::timeout(Duration::from_secs(5), ba.accept_bi()).await.expect("in time").expect("bi");
            held.push(r);
        }
        let (_ab, _sent) = tokio::time::timeout(Duration::from_secs(5), opener).await.expect("in time").expect("join");
        let (bi, uni) = ba.allowed_streams();
        assert_eq!(bi, 40, "bidirectional allowance capped at the maximum");
        assert!(uni >= 2 * N as u32 && uni <= 1024, "unidirectional allowance {uni}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
