//! The edist gateway.
//!
//! One gateway runs per host. Local BEAM nodes reach it over loopback through the `edist_epmd`
//! plug (an `-epmd_module`); it impersonates remote nodes on loopback listeners and carries
//! their distribution traffic to the remote node's gateway over QUIC with mutual TLS.
pub mod certcheck;
pub mod config;
pub mod device;
pub mod local;
pub mod wire;

pub mod fabric;
pub mod gateway;
pub mod lane_frame;
pub mod lookup;
pub mod metrics;
pub mod pki;
pub mod policy;
pub mod refusal_log;
pub mod session;
