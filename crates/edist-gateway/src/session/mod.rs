//! One relayed distribution connection, in sans-IO parts (DESIGN, "one room per concept":
//! a session is a handshake machine, then the pump and its lanes). [`handshake`] holds the
//! relayed handshake on both legs; `relay.rs` is the async shell that moves its bytes, and
//! carries the connection once it is up.
pub mod handshake;
pub mod open;
pub mod relay;
