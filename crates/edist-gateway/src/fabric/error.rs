//! Errors of the fabric: binding, TLS, dialling and accepting links, whatever the transport.

use super::hello::{HelloError, PROTOCOL_VERSION};
use crate::pki::PkiError;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Errors of the fabric's links.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FabricError {
    /// The certificates or key could not be loaded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// TLS refused a configuration, or a handshake failed.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// The verifier of peers' certificates could not be built (e.g. no trust anchor).
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The QUIC library refused a configuration or a dial (no TLS 1.3 cipher suite for QUIC, a
    /// bad address). Its own error, opaque here so that no quinn type leaves `quic.rs`.
    #[error(transparent)]
    Quic(Box<dyn std::error::Error + Send + Sync>),
    /// The link options do not hold together.
    #[error("invalid QUIC option: {0}")]
    Options(String),
    /// The endpoint could not be bound.
    #[error("cannot bind a QUIC endpoint to {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    /// The connection failed or was lost: TLS failure (e.g. certificate refused by either
    /// side), timeout, reset. The transport's own error (opaque, as for [`FabricError::Quic`]).
    #[error("connection failed: {0}")]
    Connection(Box<dyn std::error::Error + Send + Sync>),
    /// The peer closed the connection with an application code (one of the `CLOSE_*`).
    #[error("refused by peer (code {code}): {reason}")]
    Refused {
        /// The peer's close code ([`super::close`]).
        code: u64,
        /// The peer's reason.
        reason: String,
    },
    /// No hello answered in time ([`super::hello::HELLO_TIMEOUT`]).
    #[error("no hello answered within {0:?}")]
    HelloTimeout(Duration),
    /// The peer's hello did not decode.
    #[error("bad hello: {0}")]
    BadHello(HelloError),
    /// The peer speaks another hello version.
    #[error("unsupported protocol version {0} (we speak {PROTOCOL_VERSION})")]
    Version(u16),
    /// The peer's hello names someone else than its certificate.
    #[error("peer says it is {hello:?} but its certificate says {certificate:?}")]
    NameMismatch {
        /// The name in the hello.
        hello: String,
        /// The identity of the certificate.
        certificate: String,
    },
    /// The peer's certificate names no gateway (no CN or DNS name, or a device's).
    #[error("the peer's certificate carries no usable identity")]
    NoPeerIdentity,
    /// A stream of the link failed.
    #[error("stream error: {0}")]
    Stream(String),
}

impl From<HelloError> for FabricError {
    fn from(e: HelloError) -> Self {
        FabricError::BadHello(e)
    }
}

/// Shorthand for results of the fabric.
pub type Result<T, E = FabricError> = std::result::Result<T, E>;
