//! The refusal log of a gateway instance: refusals are logged once per burst, not once per
//! message, under a bounded set of keys (the counting is the metrics').

/// Refused traffic, by peer gateway and reason; logs once per burst, not once per message.
#[derive(Debug, Default)]
pub struct RefusalLog {
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

impl RefusalLog {
    /// Notes one refusal and logs it unless one of the same peer and reason was logged lately.
    /// Returns the peer key it was filed under (`peer`, or "(others)" once too many distinct
    /// peers were seen): the label to count it under, so labels stay bounded too.
    pub fn record(&self, peer: &str, reason: &str, what: &str) -> String {
        let now = std::time::Instant::now();
        let mut by = self.by.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (peer.to_string(), reason.to_string());
        // Unknown peers are keyed by address: a flood from many addresses must not grow this.
        if by.len() >= MAX_KEYS && !by.contains_key(&key) {
            key.0 = "(others)".into();
        }
        let filed = key.0.clone();
        let b = by.entry(key).or_insert(Burst { total: 0, logged_at: None, unlogged: 0 });
        b.total += 1;
        if b.logged_at.is_some_and(|t| now.duration_since(t) < BURST) {
            b.unlogged += 1;
            return filed;
        }
        let more = std::mem::take(&mut b.unlogged);
        b.logged_at = Some(now);
        tracing::warn!(%peer, %reason, total = b.total, "refused {what} ({more} more like it since the last report)");
        filed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_keys_are_bounded() {
        let r = RefusalLog::default();
        assert_eq!(r.record("gw-1", "spawn", "spawn of os:cmd/1"), "gw-1");
        let filed: Vec<String> =
            (0..2000).map(|i| r.record(&format!("10.0.{}.{}", i / 256, i % 256), "handshake", "garbage")).collect();
        assert_eq!(filed[0], "10.0.0.0");
        assert_eq!(filed.iter().filter(|f| *f == "(others)").count(), 2000 - (MAX_KEYS - 1));
        assert_eq!(r.record("gw-1", "spawn", "again"), "gw-1", "known keys keep their own");
    }
}
