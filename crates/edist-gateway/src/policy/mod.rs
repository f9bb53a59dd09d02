//! Ingress policy: what the nodes behind a peer gateway may do to the nodes behind this one
//! ([`role`]), enforced on every packet from the fabric before it reaches a BEAM
//! ([`ingress`]).

pub mod ingress;
pub mod role;

pub use ingress::{Ingress, Reason, SharedPeer, Verdict};
pub use role::Role;
