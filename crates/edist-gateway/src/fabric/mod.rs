//! The fabric between gateways: QUIC links authenticated by the cluster PKI.

pub mod quic;
