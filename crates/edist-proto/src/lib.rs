//! Sans-IO core of edist.
//!
//! Everything in this crate takes bytes (or typed values) in and gives bytes, typed values or
//! events out; nothing here touches a socket, a clock or a random number generator. The async
//! layers (`edist-node`, the gateway) only move bytes between these state machines and the
//! network, in the manner of `quinn-proto` under `quinn`.
//!
//! * [`etf`]: the External Term Format — a bounded borrowing [`etf::Reader`] that validates and
//!   walks terms without building them, an owned [`Term`], the encoder, and Erlang term text.
//! * [`dist`]: the distribution protocol — flags, the version-6 handshake for both roles, u16/u32
//!   framing, dist headers and fragments, and every control message as a typed value.
//! * [`epmd`]: the EPMD wire protocol, client and server side.
//! * [`codec`]: the bounded reader and the u32-length frame splitter every parser of peer bytes
//!   (here and in the gateway) is built on.
//!
//! Section numbers in comments (`§6.3`) refer to `shared/docs/erlang-distribution-reference.md`.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
// Tests may panic: that is how they fail.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod codec;
pub mod dist;
pub mod epmd;
pub mod etf;

pub use etf::{Atom, Term};
