//! A local node's `net_ticktime` as a session uses it: when the far node counts as silent, and
//! how often a node is ticked where the far gateway does not relay ticks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A local node's `net_ticktime`, as its plug last reported it (it can change at run time,
/// `net_kernel:set_net_ticktime/1`), or the configured one.
#[derive(Debug, Clone)]
pub struct Ticktime {
    configured: Duration,
    /// Milliseconds reported by the node; 0: none yet.
    reported: Arc<std::sync::atomic::AtomicU64>,
}

impl Ticktime {
    /// A ticktime the node has not reported yet.
    pub fn new(configured: Duration) -> Self {
        Ticktime { configured, reported: Arc::default() }
    }

    /// The same, following what the node reports into `reported` (milliseconds).
    pub fn reported_into(configured: Duration, reported: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Ticktime { configured, reported }
    }

    /// The node's ticktime now (at least a second).
    pub fn get(&self) -> Duration {
        match self.reported.load(Ordering::Relaxed) {
            0 => self.configured,
            ms => Duration::from_millis(ms),
        }
        .max(Duration::from_secs(1))
    }

    /// The node's ticktime in milliseconds, as told to the peer gateway.
    pub(super) fn millis(&self) -> u64 {
        u64::try_from(self.get().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the node may stay silent before it counts as missing its ticks: it ticks every
    /// quarter of its ticktime unless it sent something, so a gap of up to half of it is normal.
    /// With the far node's ticktime known (`peer`), the stricter of the two: a node that ticks
    /// too slowly for a far node with a shorter ticktime goes silent for it, and the far node
    /// disconnects it as OTP does (erl_distribution_SUITE `tick_change`).
    pub(super) fn silent_after(&self, peer: Option<Duration>) -> Duration {
        let after = |t: Duration| t / 2 + t / 20 + Duration::from_millis(200);
        let own = after(self.get());
        peer.map_or(own, |p| own.min(after(p.max(Duration::from_secs(1)))))
    }

    /// How often the gateway ticks towards the node when nothing else goes there.
    pub(super) fn tick_every(&self) -> Duration {
        (self.get() / 4).min(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::sync::LaneSync;

    #[test]
    fn silence_is_judged_by_the_stricter_ticktime_of_the_two_nodes() {
        let secs = Duration::from_secs;
        let t = Ticktime::new(secs(10));
        // Alone: a node ticking every 2.5 s is silent after 5.7 s.
        assert_eq!(t.silent_after(None), Duration::from_millis(5700));
        // A far node with a ticktime of 1 s counts it gone after about 1 s: its gateway hears
        // silence after 0.75 s, before the near node's next tick.
        assert_eq!(t.silent_after(Some(secs(1))), Duration::from_millis(750));
        assert!(t.silent_after(Some(secs(1))) < secs(10) / 4);
        // A far node more patient than ours changes nothing.
        assert_eq!(t.silent_after(Some(secs(60))), t.silent_after(None));
        // The far ticktime is at least a second, like ours.
        assert_eq!(t.silent_after(Some(Duration::ZERO)), Duration::from_millis(750));
        // Ticking every quarter of its own ticktime, a node is never silent by its own measure.
        let fast = Ticktime::new(secs(1));
        assert!(fast.silent_after(Some(secs(10))) > fast.tick_every());
    }

    #[test]
    fn the_far_ticktime_comes_with_alive_and_zero_means_unknown() {
        let sync = LaneSync::default();
        assert_eq!(sync.peer_ticktime(), None);
        sync.set_peer_alive(0, false, false);
        assert_eq!(sync.peer_ticktime(), None, "a gateway that does not tell its ticktime");
        sync.set_peer_alive(4000, false, false);
        assert_eq!(sync.peer_ticktime(), Some(Duration::from_secs(4)));
        // A gateway that predates relayed ticks: ours ticks here until told the far node is silent.
        assert!(sync.ticks_here() && !sync.peer_ticks());
        sync.set_peer_silent();
        assert!(!sync.ticks_here());
        sync.set_peer_alive(0, false, false);
        assert!(sync.ticks_here());
        assert_eq!(sync.peer_ticktime(), Some(Duration::from_secs(4)), "kept until told otherwise");
    }

    #[test]
    fn a_gateway_that_relays_ticks_is_the_only_source_of_them() {
        let sync = LaneSync::default();
        sync.set_peer_alive(60_000, true, false);
        assert!(sync.peer_ticks());
        assert!(!sync.ticks_here(), "our node gets the far node's ticks, and no others");
        // Said once, kept: a later `Alive` (after a silence) does not take it back.
        sync.set_peer_silent();
        sync.set_peer_alive(60_000, false, false);
        assert!(sync.peer_ticks() && !sync.ticks_here());
    }
}
