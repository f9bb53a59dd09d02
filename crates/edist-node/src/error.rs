use edist_proto::dist::handshake::HandshakeError;
use std::io;
use thiserror::Error;

/// Errors of the Rust-native node.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("invalid node name {0:?} (expected name@host)")]
    BadNodeName(String),
    #[error("{node}: {source}")]
    Io { node: String, source: io::Error },
    #[error("epmd on {host}: {source}")]
    Epmd { host: String, source: crate::epmd::EpmdClientError },
    #[error("node {0} is not registered with epmd on its host")]
    NoSuchNode(String),
    #[error("handshake with {node} failed: {source}")]
    Handshake { node: String, source: HandshakeError },
    #[error("{0} closed the connection after our challenge reply: its cookie differs from ours (wrong cookie)")]
    CookieRejected(String),
    #[error("handshake with {0} timed out")]
    HandshakeTimeout(String),
    #[error("connection to {0} is closed")]
    ConnectionClosed(String),
    #[error("the node has shut down")]
    Shutdown,
    #[error("timed out")]
    Timeout,
    #[error("the name {0} is already registered")]
    NameTaken(String),
}

/// Errors of an rpc call into another node.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RpcError {
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The remote node refused the spawn (e.g. `notsup`, `badarg`).
    #[error("spawn refused: {0}")]
    SpawnRefused(edist_proto::Term),
    /// The called function raised: class (`error`, `exit`, `throw`) and reason.
    #[error("{class}: {reason}")]
    Raised { class: String, reason: edist_proto::Term },
    /// The remote process died without an answer (e.g. `noconnection`).
    #[error("remote process ended: {0}")]
    Down(edist_proto::Term),
}
