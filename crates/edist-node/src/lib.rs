//! A Rust-native Erlang distribution node on the `edist-proto` core.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use edist_node::{Node, NodeConfig};
//! use edist_proto::Term;
//! let node = Node::start(NodeConfig::new("rust@localhost", "secret")).await?;
//! assert!(node.ping("b@localhost").await);
//! let v = node.rpc("b@localhost", "erlang", "node", vec![], std::time::Duration::from_secs(5)).await?;
//! let mut inbox = node.register("inbox")?;
//! inbox.send_named("sink", "b@localhost", Term::atom("hello")).await?;
//! # Ok(()) }
//! ```
//!
//! The node is always hidden: it appears in `nodes(hidden)` on its peers and takes no part in
//! `global`'s name syncing (reference §9.2), so `global:sync()` on its peers never waits for it
//! (a visible node that does not speak `global`'s protocol would block `global:sync()`).

mod conn;
pub mod cookie;
pub mod epmd;
mod error;
mod mailbox;
mod node;
mod rpc;

pub use error::{NodeError, RpcError};
pub use mailbox::{Event, Mailbox};
pub use node::{Node, NodeConfig, NodeStats};
pub use rpc::RpcFailure;
