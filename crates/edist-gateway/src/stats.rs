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

/// Refused traffic, by peer gateway and reason; logs once per burst, not once per message.
#[derive(Debug, Default)]
pub struct Refusals {
    by: std::sync::Mutex<std::collections::BTreeMap<(String, String), Burst>>,
}

#[derive(Debug)]
struct Burst {
    total: u64,
    logged_at: Option<std::time::Instant>,
    unlogged: u64,
}

/// Most (peer, reason) pairs counted separately; more are counted together under "(others)".
const MAX_KEYS: usize = 1024;

/// Within this long after a logged refusal, more of the same (peer, reason) are only counted.
const BURST: std::time::Duration = std::time::Duration::from_secs(5);

impl Refusals {
    /// Counts one refusal; logs it unless one of the same peer and reason was logged lately.
    pub fn record(&self, peer: &str, reason: &str, what: &str) {
        let now = std::time::Instant::now();
        let mut by = self.by.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (peer.to_string(), reason.to_string());
        // Unknown peers are keyed by address: a flood from many addresses must not grow this.
        if by.len() >= MAX_KEYS && !by.contains_key(&key) {
            key.0 = "(others)".into();
        }
        let b = by.entry(key).or_insert(Burst { total: 0, logged_at: None, unlogged: 0 });
        b.total += 1;
        if b.logged_at.is_some_and(|t| now.duration_since(t) < BURST) {
            b.unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut b.unlogged);
        b.logged_at = Some(now);
        tracing::warn!(%peer, %reason, total = b.total, "refused {what} ({more} more like it since the last report)");
    }

    /// Totals: peer → reason → count.
    pub fn totals(&self) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
        let by = self.by.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::collections::BTreeMap::<String, std::collections::BTreeMap<String, u64>>::new();
        for ((peer, reason), b) in by.iter() {
            out.entry(peer.clone()).or_default().insert(reason.clone(), b.total);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_and_their_keys_bounded() {
        let r = Refusals::default();
        r.record("gw-1", "spawn", "spawn of os:cmd/1");
        r.record("gw-1", "spawn", "spawn of os:cmd/1");
        for i in 0..2000 {
            r.record(&format!("10.0.{}.{}", i / 256, i % 256), "handshake", "garbage");
        }
        let t = r.totals();
        assert_eq!(t["gw-1"]["spawn"], 2);
        assert_eq!(t.len(), MAX_KEYS + 1, "1023 addresses, then (others)");
        assert_eq!(t["(others)"]["handshake"], 2000 - (MAX_KEYS as u64 - 1));
    }
}
