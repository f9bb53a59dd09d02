//! The fabric between gateways: links authenticated by the cluster PKI over a transport, where to
//! find the other gateways, and membership between them.
//!
//! Core, whatever the transport: the traits a transport implements ([`link`]), the hello that
//! makes a link up ([`hello`]), TLS set-up ([`identity`], [`credentials`], [`tls`]), link options
//! ([`options`]), errors ([`error`]) and close codes ([`close`]). Transports above it: QUIC in
//! [`quic`], TLS over TCP in [`tcp`]; [`bind`] picks one. Where to find the other gateways:
//! [`discovery`]; membership between them: [`membership`] over signed datagrams ([`envelope`]),
//! moved by [`gossip`].
//!
//! Imports go one way: the core never imports a transport, transports import only the core.
// Under the protocol core's lints: this code reads what hostile peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod close;
pub mod credentials;
pub mod discovery;
pub mod envelope;
pub mod error;
pub mod gossip;
pub mod hello;
pub mod identity;
pub mod join;
pub mod link;
pub mod membership;
pub mod options;
pub mod quic;
pub mod tcp;
pub mod tls;

use credentials::Credentials;
use error::FabricError;
use link::{Transport, TransportKind};
use options::QuicOptions;
use std::net::SocketAddr;
use std::sync::Arc;

/// Binds the fabric endpoint of `kind` at `bind`, serving `creds` (reloadable while it runs).
pub async fn bind(
    kind: TransportKind,
    bind: SocketAddr,
    creds: &Arc<Credentials>,
    opts: &QuicOptions,
    our_name: &str,
) -> Result<Arc<dyn Transport>, FabricError> {
    Ok(match kind {
        TransportKind::Quic => Arc::new(quic::QuicTransport::new(bind, creds, opts, our_name)?),
        TransportKind::Tcp => Arc::new(tcp::TcpTransport::bind(bind, creds, opts, our_name).await?),
    })
}
