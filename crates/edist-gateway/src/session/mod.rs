//! One relayed distribution connection, a session, in parts with one job each (DESIGN, "one
//! room per concept"): a handshake machine, then the pump and its lanes.
//!
//! - `open`: setting a session up on either gateway (a local node dials an impersonated one, or
//!   a peer gateway opens a stream to a local node), then `carry`ing it.
//! - [`handshake`]: the relayed handshake on both legs, sans IO; [`shell`] moves its bytes.
//! - [`refusal`]: why a gateway refuses a session, and the texts of each reason.
//! - [`pump`]: the data phase: packets onto lanes and back, merged into the node's socket.
//! - [`sync`]: what the lanes share (the merger, barriers and deliveries, bulk lanes' flow).
//! - [`budget`], [`hold`], [`ticks`]: bytes held towards the fabric, senders held back by the
//!   plug, the nodes' `net_ticktime`.
//! - [`stall`]: whether a node stopped reading (its far node then is not read either).
//! - `relay`: the relay role (`[fabric] relay`): passing others' sessions on between gateways.
pub mod budget;
pub mod handshake;
pub mod hold;
pub(crate) mod open;
pub mod pump;
pub mod refusal;
pub(crate) mod relay;
pub mod shell;
pub mod stall;
pub mod sync;
pub mod ticks;
