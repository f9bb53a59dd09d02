//! The Erlang distribution protocol (reference §3–§7), sans IO.
//!
//! * [`flags`]: DFLAG bits and the mandatory sets of OTP 25/26.
//! * [`handshake`]: the version-6 handshake as two step-wise state machines, [`handshake::Initiator`]
//!   and [`handshake::Acceptor`].
//! * [`frame`]: u32 length framing of a connected channel (len 0 = tick).
//! * [`header`]: the `131,68/69/70` dist headers and the receiver's atom cache.
//! * [`fragment`]: reassembly of fragmented messages and splitting of large ones.
//! * [`lane`]: per-sender queues drained round-robin, so senders' fragments interleave.
//! * [`control`]: every control message as a typed value.

pub mod control;
pub mod flags;
pub mod fragment;
pub mod frame;
pub mod handshake;
pub mod header;
pub mod lane;

pub use control::{Control, ControlError};
pub use flags::DFlags;
