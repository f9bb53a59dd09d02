//! The refusal log of a gateway instance: the first refusal of each (peer, reason, target) is
//! logged at once — so a `rex` or `code_server` attempt shows even amid a flood of refused
//! `global_name_server` traffic — then at most one line per [`BURST`] for the same key, with the
//! count of those not logged. Keys are bounded (the counting is the metrics').

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Refused traffic, by peer gateway, reason and target.
#[derive(Debug, Default)]
pub struct RefusalLog {
    by: std::sync::Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    bursts: BTreeMap<(String, String, String), Burst>,
    /// Targets per peer (bounded separately, so one peer cannot use up the others' keys).
    targets: HashMap<String, usize>,
}

#[derive(Debug)]
struct Burst {
    total: u64,
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// Most keys counted separately; more are counted together under "(others)".
const MAX_KEYS: usize = 4096;
/// Most targets per peer logged separately; more go under "(others)" for that peer and reason.
const MAX_TARGETS: usize = 128;
/// Peers (gateways, or addresses of unknown ones) logged separately.
const MAX_PEERS: usize = 1024;

/// Within this long after a logged refusal, more of the same key are only counted.
pub const BURST: Duration = Duration::from_secs(5);

const OTHERS: &str = "(others)";

impl RefusalLog {
    /// Notes one refusal of `what` (`target`: what was asked for, in a few words; may be
    /// empty) and logs it unless one of the same key was logged lately; `audit`: it was only
    /// noted (audit mode), the traffic passed. Returns the peer key it was filed under (`peer`,
    /// or "(others)" once too many distinct peers were seen): the label to count it under, so
    /// labels stay bounded too.
    pub fn record(&self, peer: &str, reason: &str, target: &str, what: &str, audit: bool) -> String {
        let now = Instant::now();
        let mut keys = self.by.lock().unwrap_or_else(|e| e.into_inner());
        let Keys { bursts, targets } = &mut *keys;
        let mut key = (peer.to_string(), reason.to_string(), target.to_string());
        if !bursts.contains_key(&key) {
            // Unknown peers are keyed by address: a flood from many addresses must not grow this.
            if !targets.contains_key(peer) && targets.len() >= MAX_PEERS {
                key.0 = OTHERS.into();
            }
            if targets.get(&key.0).is_some_and(|n| *n >= MAX_TARGETS) {
                key.2 = OTHERS.into();
            }
            if bursts.len() >= MAX_KEYS && !bursts.contains_key(&key) {
                key = (OTHERS.into(), key.1, OTHERS.into());
            }
        }
        let filed = key.0.clone();
        if !bursts.contains_key(&key) {
            *targets.entry(key.0.clone()).or_default() += 1;
        }
        let b = bursts.entry(key).or_insert(Burst { total: 0, logged_at: None, unlogged: 0 });
        b.total += 1;
        if b.logged_at.is_some_and(|t| now.duration_since(t) < BURST) {
            b.unlogged += 1;
            return filed;
        }
        let more = std::mem::take(&mut b.unlogged);
        b.logged_at = Some(now);
        let total = b.total;
        let verb = if audit { "would refuse (audit mode, passed)" } else { "refused" };
        match more {
            0 => tracing::warn!(%peer, %reason, %target, total, "{verb} {what}"),
            n => {
                tracing::warn!(%peer, %reason, %target, total, "{verb} {what} ({n} more like it since the last report)")
            }
        }
        filed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_keys_are_bounded() {
        let r = RefusalLog::default();
        assert_eq!(r.record("gw-1", "spawn", "os:cmd/1", "spawn of os:cmd/1", false), "gw-1");
        let filed: Vec<String> = (0..2000)
            .map(|i| r.record(&format!("10.0.{}.{}", i / 256, i % 256), "handshake", "", "garbage", false))
            .collect();
        assert_eq!(filed[0], "10.0.0.0");
        assert_eq!(filed.iter().filter(|f| *f == OTHERS).count(), 2000 - (MAX_PEERS - 1));
        assert_eq!(r.record("gw-1", "spawn", "os:cmd/1", "again", false), "gw-1", "known keys keep their own");
        // Many targets of one peer: bounded per peer, and the peer keeps its label.
        for i in 0..1000 {
            assert_eq!(r.record("gw-1", "name", &format!("n{i}"), "x", false), "gw-1");
        }
        let keys = r.by.lock().unwrap();
        assert!(keys.bursts.keys().filter(|k| k.0 == "gw-1").count() <= MAX_TARGETS + 1);
        assert!(keys.bursts.len() <= MAX_KEYS);
    }

    #[test]
    fn the_first_of_each_target_is_logged_then_bursts_are_counted() {
        let r = RefusalLog::default();
        r.record("gw-1", "name", "global_name_server", "send", false);
        r.record("gw-1", "name", "global_name_server", "send", false);
        r.record("gw-1", "name", "rex", "send", false);
        let keys = r.by.lock().unwrap();
        let b = |t: &str| keys.bursts.get(&("gw-1".into(), "name".into(), t.into())).map(|b| (b.total, b.unlogged));
        assert_eq!(b("global_name_server"), Some((2, 1)), "the second within the burst is only counted");
        assert_eq!(b("rex"), Some((1, 0)), "a new target is logged at once");
    }
}
