//! Devices without a gateway: a device BEAM runs only Erlang code shipped by edist
//! (`erl/edist_device_dist.erl`, an alternative distribution carrier on OTP's `ssl`) and dials
//! a hub gateway over TLS 1.3 with its device certificate (`edist certs issue --device NAME`).
//! The hub checks the name against the certificate, makes the device a local node of its own
//! (announced to the fabric, reached through loopback like any other), holds what the device
//! sends to its role, and answers its ticks. See docs/devices.md.
//!
//! [`proto`] is the sans-IO part (the frames, the handshake watcher), [`splice`] one
//! distribution connection of a device, [`hub`] the listener and the control connections.
// Under the protocol core's lints: this code reads what hostile peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod hub;
pub mod proto;
pub mod splice;

pub use hub::{Hub, HubConfig, HubHost};
