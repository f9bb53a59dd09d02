//! QUIC links between gateways, with mutual TLS against the cluster CA.
//!
//! One [`quinn::Endpoint`] per gateway both accepts and dials ([`endpoint`]). Both directions
//! require a certificate issued by the cluster CA ([`crate::pki`]); TLS 1.3 only, ALPN
//! `edist/1`, no session resumption (every link re-verifies the full chain).
//!
//! A TLS handshake is not enough to call a peer up: with mutual TLS over QUIC the client's
//! handshake completes before the server has checked the client's certificate, so a refused
//! client only learns it on its first stream. A link is therefore up only once an
//! application-level hello has been answered:
//!
//! ```text
//! dialer                                     acceptor
//!   | -- bi stream 0: Hello{version, name} ---> |  name must equal the dialer's certificate
//!   | <-- HelloAck{version, name} ------------- |  identity, else CLOSE_NAME_MISMATCH
//!   |  name must equal the acceptor's certificate identity
//! ```
//!
//! Hello frames are `u16 length` + body, body = `u8 kind`, `u16 version`, `u16 length` + name
//! (UTF-8); all integers big-endian, bodies at most [`MAX_HELLO_BODY`] bytes. The codec is
//! sans-IO ([`Hello::encode`], [`Hello::decode`]).
//!
//! Refusals close the connection with an application error code (`CLOSE_*`) and a reason,
//! which the other side sees as [`FabricError::Refused`].

use super::credentials::Credentials;
use super::link::{BoxFuture, Closed, Incoming, Linked, RecvStream, SendStream, Transport};
use crate::pki::{self, NodePaths, PkiError};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

/// The ALPN protocol of gateway links.
pub const ALPN: &[u8] = b"edist/1";
/// The hello protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest hello body accepted (a gateway name is at most [`pki::MAX_NAME_LEN`] bytes).
pub const MAX_HELLO_BODY: usize = 512;
/// Time allowed from the start of [`dial`] / [`accept`] to an answered hello (TLS included).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(3);

// Application close codes below 0x100 are reserved for this module; users of a link (the
// gateway) pick theirs from 0x100 up, so a peer can tell a handshake refusal from the rest.

/// Application close code: orderly close.
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
/// Application close code: the hello was malformed or not a hello.
pub const CLOSE_BAD_HELLO: VarInt = VarInt::from_u32(1);
/// Application close code: the hello's name differs from the certificate identity.
pub const CLOSE_NAME_MISMATCH: VarInt = VarInt::from_u32(2);
/// Application close code: unsupported hello protocol version.
pub const CLOSE_VERSION: VarInt = VarInt::from_u32(3);
/// Application close code: no hello (or no answer) within [`HELLO_TIMEOUT`].
pub const CLOSE_HELLO_TIMEOUT: VarInt = VarInt::from_u32(4);
/// Application close code: the peer's certificate is on this gateway's revocation list.
pub const CLOSE_REVOKED: VarInt = VarInt::from_u32(6);

/// Application close code: the link carried nothing for a while (membership's lazy links).
pub const CLOSE_IDLE: VarInt = VarInt::from_u32(7);

/// Application close code: the peer's certificate carries no usable identity.
pub const CLOSE_NO_IDENTITY: VarInt = VarInt::from_u32(5);

/// Errors of the QUIC fabric.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FabricError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    NoInitialCipherSuite(#[from] NoInitialCipherSuite),
    #[error("invalid QUIC option: {0}")]
    Options(String),
    #[error("cannot bind a QUIC endpoint to {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was lost: TLS failure (e.g. certificate refused by either
    /// side), timeout, reset.
    #[error("connection failed: {0}")]
    Connection(ConnectionError),
    /// The peer closed the connection with an application code (one of the `CLOSE_*`).
    #[error("refused by peer (code {code}): {reason}")]
    Refused { code: u64, reason: String },
    #[error("no hello answered within {0:?}")]
    HelloTimeout(Duration),
    #[error("bad hello: {0}")]
    BadHello(HelloError),
    #[error("unsupported protocol version {0} (we speak {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("peer says it is {hello:?} but its certificate says {certificate:?}")]
    NameMismatch { hello: String, certificate: String },
    #[error("the peer's certificate carries no usable identity")]
    NoPeerIdentity,
    #[error("stream error: {0}")]
    Stream(String),
}

impl From<HelloError> for FabricError {
    fn from(e: HelloError) -> Self {
        FabricError::BadHello(e)
    }
}

/// Shorthand for results of this module.
pub type Result<T, E = FabricError> = std::result::Result<T, E>;

/// Errors of the hello codec.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloError {
    #[error("frame of {0} bytes exceeds {MAX_HELLO_BODY}")]
    TooLong(usize),
    #[error("truncated")]
    Truncated,
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    #[error("expected {expected:?}, got {got:?}")]
    UnexpectedKind { expected: HelloKind, got: HelloKind },
    #[error("name is not UTF-8")]
    NotUtf8,
    #[error("empty name")]
    EmptyName,
}

/// What a hello frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloKind {
    /// Sent by the dialer.
    Hello = 1,
    /// The acceptor's answer.
    HelloAck = 2,
}

/// A hello frame (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub kind: HelloKind,
    pub version: u16,
    /// The sender's gateway name; must equal its certificate identity.
    pub name: String,
}

impl Hello {
    /// The whole frame, length prefix included. Names longer than the body limit are the
    /// caller's bug; they are encoded anyway and refused by the receiver.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let body_len = 1 + 2 + 2 + name.len();
        let mut out = Vec::with_capacity(2 + body_len);
        out.extend_from_slice(&(body_len.min(u16::MAX as usize) as u16).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(name);
        out
    }

    /// Checks a body length read from the wire before anything is allocated for it.
    pub fn check_len(len: u16) -> Result<usize, HelloError> {
        let len = usize::from(len);
        if len > MAX_HELLO_BODY {
            return Err(HelloError::TooLong(len));
        }
        Ok(len)
    }

    /// Decodes a body (the bytes after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Hello, HelloError> {
        if body.len() > MAX_HELLO_BODY {
            return Err(HelloError::TooLong(body.len()));
        }
        let mut r = Reader(body);
        let kind = match r.u8()? {
            1 => HelloKind::Hello,
            2 => HelloKind::HelloAck,
            k => return Err(HelloError::UnknownKind(k)),
        };
        let version = r.u16()?;
        let name = r.field()?;
        if !r.0.is_empty() {
            return Err(HelloError::Trailing(r.0.len()));
        }
        let name = std::str::from_utf8(name).map_err(|_| HelloError::NotUtf8)?;
        if name.is_empty() {
            return Err(HelloError::EmptyName);
        }
        Ok(Hello { kind, version, name: name.to_owned() })
    }
}

/// A bounded reader over a borrowed slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn field(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

/// Our TLS identity: the cluster CA to trust, our certificate chain and key.
pub struct TlsIdentity {
    /// Trust anchors: the cluster CA certificate(s).
    pub ca: Vec<CertificateDer<'static>>,
    /// Our certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca", &self.ca.len())
            .field("identity", &self.identity())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl TlsIdentity {
    /// Loads `ca.pem`, `<name>.pem` and `<name>.key` from a certificate directory (the layout
    /// written by [`pki::init_ca`] and [`pki::issue`]).
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        Self::from_paths(&pki::node_paths(dir, name))
    }

    /// Loads the files written by [`pki::issue`].
    pub fn from_paths(paths: &NodePaths) -> Result<Self> {
        Self::load_files(&paths.ca, &paths.cert, &paths.key)
    }

    /// Loads the CA certificate(s), our certificate chain and our key from PEM files.
    pub fn load_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        Ok(TlsIdentity { ca: pki::load_certs(ca)?, chain: pki::load_certs(cert)?, key: pki::load_key(key)? })
    }

    /// The identity (CN, else first DNS SAN) of our own certificate.
    pub fn identity(&self) -> Option<String> {
        certificate_identity(self.chain.first()?)
    }
}

/// Transport and timing options of gateway links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    /// Interval of QUIC keep-alive (PING) frames on an otherwise idle link. Default 500 ms.
    pub keep_alive: Duration,
    /// A link that hears nothing for this long is dead ([`ConnectionError::TimedOut`]); the
    /// effective value is the smaller of both peers'. Default 1.5 s.
    pub idle_timeout: Duration,
    /// Concurrent bidirectional streams (relayed connections' ordered lanes) a peer may open,
    /// at most. Default 1024.
    pub max_bidi_streams: u32,
    /// Concurrent unidirectional streams (bulk lanes, control streams) a peer may open, at most.
    /// Default 1024.
    pub max_uni_streams: u32,
    /// Concurrent streams of each kind a peer may open on a new link; raised as the peer opens
    /// them, up to `max_bidi_streams` / `max_uni_streams` ([`QuicLink`]). quinn keeps state for
    /// every stream the peer may open: 1024 of each made ~135 KiB of an idle link's end.
    /// Default 8.
    pub initial_streams: u32,
    /// Congestion control of the links. Default BBR.
    pub congestion: Congestion,
}

/// Congestion controllers of the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based: keeps the bottleneck's queue short, so small messages behind bulk traffic
    /// wait less, and tolerates random loss. quinn's BBR with its window capped to about 2 ms
    /// of queue at the bottleneck on links up to 200 Mbit/s ([`super::congestion`]).
    #[default]
    Bbr,
    /// quinn's BBR as it is: it adds bursts of acknowledgements to its window, which can queue
    /// tens of milliseconds at a slow bottleneck when a gateway's host is busy.
    #[serde(rename = "bbr-uncapped")]
    BbrUncapped,
    /// Loss-based (quinn's own default): fills the bottleneck's queue.
    Cubic,
    /// Loss-based, classic.
    NewReno,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(1500),
            max_bidi_streams: 1024,
            max_uni_streams: 1024,
            initial_streams: 8,
            congestion: Congestion::default(),
        }
    }
}

/// The crypto provider used everywhere (ring), independent of any process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The QUIC transport configuration for `opts`.
/// What a link may buffer for sending, all streams together (a bound, not an allocation).
const SEND_WINDOW: u64 = 64 << 20;

pub fn transport_config(opts: &QuicOptions) -> Result<TransportConfig> {
    if opts.keep_alive >= opts.idle_timeout {
        return Err(FabricError::Options(format!(
            "keep_alive {:?} must be shorter than idle_timeout {:?}",
            opts.keep_alive, opts.idle_timeout
        )));
    }
    let idle = IdleTimeout::try_from(opts.idle_timeout)
        .map_err(|_| FabricError::Options(format!("idle_timeout {:?} is too large", opts.idle_timeout)))?;
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(opts.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(opts.initial_streams.min(opts.max_bidi_streams).max(1).into())
        .max_concurrent_uni_streams(opts.initial_streams.min(opts.max_uni_streams).max(1).into())
        // Bulk lanes keep about a congestion window each in QUIC's send buffer (relay.rs, lane
        // flow): the rest of this is headroom, so that a small message on the ordered lane never
        // waits for buffer space behind bulk data (it then goes first: stream priority).
        .send_window(SEND_WINDOW);
    match opts.congestion {
        Congestion::Bbr => t.congestion_controller_factory(Arc::new(super::congestion::CappedBbrConfig::default())),
        Congestion::BbrUncapped => t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default())),
        Congestion::Cubic => t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default())),
        Congestion::NewReno => t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default())),
    };
    Ok(t)
}

fn root_store(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Verifies membership datagrams' certificates: chains to the cluster CA, valid now.
pub fn membership_verifier(id: &TlsIdentity) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    Ok(WebPkiClientVerifier::builder_with_provider(root_store(&id.ca)?, crypto_provider()).build()?)
}

/// The server half: requires a client certificate chaining to the cluster CA.
pub fn server_config(id: &TlsIdentity, opts: &QuicOptions) -> Result<quinn::ServerConfig> {
    server_config_with(&Credentials::new(id)?, opts)
}

fn server_config_with(creds: &Arc<Credentials>, opts: &QuicOptions) -> Result<quinn::ServerConfig> {
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls_server_config(creds)?)?));
    cfg.transport_config(Arc::new(transport_config(opts)?));
    Ok(cfg)
}

/// The TLS server side of every transport: TLS 1.3, client certificate of the cluster CA
/// required, ALPN `edist/1`, no resumption. Certificate and trust come from `creds` at each
/// handshake, so a reload reaches new links.
pub fn tls_server_config(creds: &Arc<Credentials>) -> Result<rustls::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(creds.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(FixedRefusal::new(creds.client_verifier())))
        .with_cert_resolver(creds.clone());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every link verifies the full client chain (and its validity) again.
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
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

/// The TLS client side of every transport: verifies the server against the cluster CA (by
/// name, or any identity for a seed) and presents our certificate, both as `creds` has them
/// at each handshake.
pub fn tls_client_config(creds: &Arc<Credentials>, any_identity: bool) -> Result<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(creds.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FixedRefusal::new(creds.server_verifier(any_identity))))
        .with_client_cert_resolver(creds.clone());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = Resumption::disabled();
    Ok(tls)
}

/// What a peer whose certificate is refused is told, whatever the cause (expired, unknown CA,
/// bad signature, ...): the TLS alert `access_denied` (QUIC: crypto error 0x131), with this
/// reason text. The cause (with details such as expiry times) stays in this gateway's log.
pub const CERT_REFUSED: &str = "invalid peer certificate: ApplicationVerificationFailure";

/// A certificate verifier that refuses as `inner` does, but with one fixed error: rustls's own
/// errors carry details (an expired certificate's dates, the names it is valid for) that QUIC
/// sends to the peer as the close reason, and a refused peer learns nothing from us.
#[derive(Debug)]
struct FixedRefusal<V: ?Sized> {
    inner: Arc<V>,
    /// When the last cause was logged (at most one line a second; the rest are counted).
    logged: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl<V: ?Sized> FixedRefusal<V> {
    fn new(inner: Arc<V>) -> Self {
        FixedRefusal { inner, logged: std::sync::Mutex::new((None, 0)) }
    }

    fn refuse(&self, e: rustls::Error) -> rustls::Error {
        let mut l = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if l.0.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            let more = std::mem::take(&mut l.1);
            l.0 = Some(now);
            tracing::info!("refused a peer's certificate: {e} ({more} more refused since the last line)");
        } else {
            l.1 += 1;
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
    }
}

impl rustls::server::danger::ClientCertVerifier for FixedRefusal<dyn rustls::server::danger::ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now).map_err(|e| self.refuse(e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl rustls::client::danger::ServerCertVerifier for FixedRefusal<dyn rustls::client::danger::ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| self.refuse(e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server name a seed dial asks for: unknown, so the seed verifier ignores it
/// ([`Credentials::server_verifier`]).
pub const SEED_SERVER_NAME: &str = "edist-seed";

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
    let mut ep = Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime).map_err(bind_err)?;
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

/// The identity of a certificate: its subject CN, else its first DNS SAN.
pub fn certificate_identity(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    // A device's certificate (`edist certs issue --device`) identifies a device BEAM at a hub,
    // never a gateway: the same CA signs it, so without this a device could link as a peer.
    if crate::pki::certificate_grant(der).device.is_some() {
        return None;
    }
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()) {
        if !cn.is_empty() {
            return Some(cn.to_owned());
        }
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) if !s.is_empty() => Some((*s).to_owned()),
        _ => None,
    })
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
    conn.close(code, &reason.as_bytes()[..reason.len().min(200)]);
    e
}

/// The application close code (`CLOSE_*`) that refuses a link for `e`.
pub fn refusal_code(e: &FabricError) -> u32 {
    let code = match e {
        FabricError::BadHello(_) => CLOSE_BAD_HELLO,
        FabricError::NameMismatch { .. } => CLOSE_NAME_MISMATCH,
        FabricError::Version(_) => CLOSE_VERSION,
        FabricError::HelloTimeout(_) => CLOSE_HELLO_TIMEOUT,
        FabricError::NoPeerIdentity => CLOSE_NO_IDENTITY,
        _ => CLOSE_NORMAL,
    };
    code.into_inner() as u32
}

fn from_conn(e: ConnectionError) -> FabricError {
    match e {
        ConnectionError::ApplicationClosed(c) => FabricError::Refused {
            code: c.error_code.into_inner(),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        e => FabricError::Connection(e),
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

impl super::link::Link for QuicLink {
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

    #[test]
    fn hello_round_trip() {
        for kind in [HelloKind::Hello, HelloKind::HelloAck] {
            let h = Hello { kind, version: PROTOCOL_VERSION, name: "gw-a.example".into() };
            let frame = h.encode();
            let len = Hello::check_len(u16::from_be_bytes([frame[0], frame[1]])).expect("len");
            assert_eq!(len, frame.len() - 2);
            assert_eq!(Hello::decode(&frame[2..]), Ok(h));
        }
    }

    #[test]
    fn hello_rejects_garbage() {
        let good = Hello { kind: HelloKind::Hello, version: 1, name: "a".into() }.encode();
        let body = &good[2..];
        for cut in 0..body.len() {
            assert_eq!(Hello::decode(&body[..cut]), Err(HelloError::Truncated), "cut {cut}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert_eq!(Hello::decode(&trailing), Err(HelloError::Trailing(1)));
        assert_eq!(Hello::decode(&[9, 0, 1, 0, 1, b'a']), Err(HelloError::UnknownKind(9)));
        assert_eq!(Hello::decode(&[1, 0, 1, 0, 0]), Err(HelloError::EmptyName));
        assert_eq!(Hello::decode(&[1, 0, 1, 0, 1, 0xff]), Err(HelloError::NotUtf8));
        // A name length far beyond the body is truncation, not an allocation.
        assert_eq!(Hello::decode(&[1, 0, 1, 0xff, 0xff, b'a']), Err(HelloError::Truncated));
        assert_eq!(Hello::check_len(u16::MAX), Err(HelloError::TooLong(65535)));
        assert_eq!(Hello::decode(&vec![1; MAX_HELLO_BODY + 1]), Err(HelloError::TooLong(MAX_HELLO_BODY + 1)));
    }

    #[test]
    fn options_are_checked() {
        transport_config(&QuicOptions::default()).expect("defaults");
        let bad = QuicOptions { keep_alive: Duration::from_secs(5), ..Default::default() };
        assert!(matches!(transport_config(&bad), Err(FabricError::Options(_))));
    }

    /// A link starts with few streams the peer may open, and a peer that opens many more at
    /// once (bulk lanes, relays) gets them: the allowance grows as they are accepted.
    #[tokio::test]
    async fn stream_allowance_grows_on_demand() {
        use super::super::link::Link;
        use crate::pki::{self, CaOptions, IssueOptions};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!("edist-allowance-{}", rand::random::<u64>()));
        pki::init_ca(&dir, "allowance", &CaOptions::default()).expect("ca");
        pki::issue(&dir, "gw-a", 1, IssueOptions::default()).expect("gw-a");
        pki::issue(&dir, "gw-b", 1, IssueOptions::default()).expect("gw-b");
        let opts = QuicOptions { initial_streams: 2, max_bidi_streams: 40, ..Default::default() };
        let a = endpoint("127.0.0.1:0".parse().expect("addr"), &TlsIdentity::load(&dir, "gw-a").expect("a"), &opts)
            .expect("endpoint a");
        let b = endpoint("127.0.0.1:0".parse().expect("addr"), &TlsIdentity::load(&dir, "gw-b").expect("b"), &opts)
            .expect("endpoint b");
        let addr = b.local_addr().expect("addr");
        let acc = tokio::spawn(async move { accept(b.accept().await.expect("incoming"), "gw-b").await });
        let ab = dial(&a, addr, "gw-b", "gw-a").await.expect("dial").linked(&opts).link;
        let ba = QuicLink::new(acc.await.expect("join").expect("accept").conn, &opts);
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
