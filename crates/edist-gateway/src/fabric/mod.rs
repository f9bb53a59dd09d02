//! The fabric between gateways: links authenticated by the cluster PKI over a transport
//! ([`link`]: QUIC in [`quic`], TLS over TCP in [`tcp`]), where to find the other gateways
//! ([`discovery`]), and membership between them ([`membership`] over signed datagrams,
//! [`envelope`], moved by [`gossip`]).

pub mod congestion;
pub mod credentials;
pub mod discovery;
pub mod envelope;
pub mod gossip;
pub mod link;
pub mod membership;
pub mod quic;
pub mod tcp;
