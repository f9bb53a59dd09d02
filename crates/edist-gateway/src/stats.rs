//! Counters of a gateway instance (per instance, so several gateways in one process each
//! have their own).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes through relayed connections.
#[derive(Debug, Default)]
pub struct LinkCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl LinkCounters {
    /// Bytes received from the fabric (towards local nodes).
    pub fn add_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Bytes sent to the fabric (from local nodes).
    pub fn add_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// (in, out).
    pub fn get(&self) -> (u64, u64) {
        (self.bytes_in.load(Ordering::Relaxed), self.bytes_out.load(Ordering::Relaxed))
    }
}
