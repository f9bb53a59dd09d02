//! Transports as traits: what the gateway needs of a link to another gateway (streams, close,
//! liveness, byte counts) and of the endpoint that dials and accepts links.
//!
//! Two implementations: QUIC ([`super::quic`], the default: one QUIC stream per lane, no
//! head-of-line blocking between them) and TLS over TCP ([`super::tcp`], for networks that
//! block UDP: streams multiplexed with yamux over one TCP connection, so a lost segment
//! delays every stream).

use super::error::FabricError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// The sending half of a stream.
pub type SendStream = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a stream.
pub type RecvStream = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed future (the traits are object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// We closed it.
    Locally,
    /// The peer closed it, with an application code.
    ByPeer { code: u64, reason: String },
    /// It went silent or broke (timeout, reset, transport error): the peer or the path is gone.
    Lost(String),
}

/// What the transport knows of a link's path now (QUIC's recovery state).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathStats {
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Packets sent and declared lost since the link came up.
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// Times the congestion controller backed off.
    pub congestion_events: u64,
    /// Largest datagram the path carries now, as MTU discovery found it (bytes; 0: unknown,
    /// e.g. from a gateway that predates it).
    #[serde(default)]
    pub mtu: u16,
}

/// A link to another gateway.
pub trait Link: Send + Sync + std::fmt::Debug {
    /// Opens a stream both ways. Such streams carry ordered traffic and go first where the
    /// transport can prioritise (QUIC); unidirectional ones carry bulk lanes.
    fn open_bi(&self) -> BoxFuture<'_, std::io::Result<(SendStream, RecvStream)>>;
    /// Opens a stream towards the peer.
    fn open_uni(&self) -> BoxFuture<'_, std::io::Result<SendStream>>;
    /// The next stream the peer opened both ways (an error once the link is closed).
    fn accept_bi(&self) -> BoxFuture<'_, std::io::Result<(SendStream, RecvStream)>>;
    /// The next stream the peer opened towards us.
    fn accept_uni(&self) -> BoxFuture<'_, std::io::Result<RecvStream>>;
    /// Closes the link with an application code and reason.
    fn close(&self, code: u32, reason: &[u8]);
    /// How it ended, once it has.
    fn closed(&self) -> Option<Closed>;
    /// The peer's address.
    fn remote_address(&self) -> SocketAddr;
    /// Bytes sent and received on the wire (transport overhead included).
    fn wire_bytes(&self) -> (u64, u64);
    /// How many bytes the path holds in flight now (the congestion window), if the transport
    /// knows: bulk lanes keep about that much in the transport, and wait in the gateway's
    /// lanes otherwise.
    fn in_flight_hint(&self) -> Option<u64> {
        self.path().map(|p| p.cwnd)
    }
    /// The path's round-trip time, congestion window and losses, if the transport knows them.
    fn path(&self) -> Option<PathStats> {
        None
    }
}

/// A link whose peer said hello: who it is (its certificate identity) and what it may claim.
#[derive(Debug, Clone)]
pub struct Linked {
    pub link: Arc<dyn Link>,
    pub peer_name: String,
    pub grant: crate::pki::Grant,
}

/// An incoming link: where from, and its handshake to await.
pub type Incoming = (SocketAddr, BoxFuture<'static, Result<Linked, FabricError>>);

/// The endpoint that dials and accepts links.
pub trait Transport: Send + Sync {
    /// Dials `addr`, whose certificate must name `peer`; `None` for a seed, whose certificate
    /// may carry any identity the cluster CA signed.
    fn dial<'a>(&'a self, addr: SocketAddr, peer: Option<&'a str>) -> BoxFuture<'a, Result<Linked, FabricError>>;
    /// The next incoming link; `None` once the endpoint is closed.
    fn accept(&self) -> BoxFuture<'_, Option<Incoming>>;
    /// The address bound.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
    /// Closes the endpoint and every link.
    fn close(&self);
    /// Resolves once the links [`Transport::close`] closed have had their close notices sent
    /// (a process that exits at once would leave its peers waiting for their idle timeout).
    fn wait_closed(&self) -> BoxFuture<'_, ()>;
}

/// Which transport a gateway's fabric uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// QUIC over UDP (default).
    #[default]
    Quic,
    /// TLS 1.3 over TCP, streams multiplexed with yamux.
    Tcp,
}
