//! The gateway's side facing the BEAM nodes of its own host.

pub mod control;
pub mod plug;
