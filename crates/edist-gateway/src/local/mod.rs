//! The gateway's side facing the BEAM nodes of its own host.
// Under the protocol core's lints: this code reads what hostile peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod control;
pub mod plug;
