//! Ingress policy: what the nodes behind a peer gateway may do to the nodes behind this one
//! ([`role`]), enforced on every packet from the fabric before it reaches a BEAM
//! ([`ingress`]), with what the local nodes send the peer as the source of its capabilities
//! and free atoms ([`egress`]), remembered per peer gateway ([`state`]). [`otp`] holds what the
//! policy knows of OTP's own protocols.
//!
//! A relayed connection under a restricted role has one [`Session`]; each of its incoming lanes
//! inspects with an [`Ingress`], its pump shows what the local node sends to an [`Egress`].
//! Everything here is sans-IO: packets and a clock in, verdicts out.
// Under the protocol core's lints: this code reads what hostile peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod egress;
pub mod ingress;
pub mod otp;
pub mod role;
pub mod state;

pub use egress::Egress;
pub use ingress::{Ingress, Reason, Refusal, Session, SharedPeer, Verdict};
pub use role::Role;
pub use state::{PeerReport, PeerState, PeerUsage};
