//! The fabric between gateways: QUIC links authenticated by the cluster PKI, and where to find
//! the other gateways.

pub mod discovery;
pub mod envelope;
pub mod gossip;
pub mod link;
pub mod membership;
pub mod quic;
pub mod tcp;
