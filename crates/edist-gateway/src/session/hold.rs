//! Holding back one sender: per-sender bytes queued in a session's lanes, the plug's holds on
//! senders past their share, and the lanes' rate that sizes the share.

use crate::local::plug::Plug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of one sender waiting in a session's lanes.
pub(super) type SenderBytes = Arc<AtomicUsize>;

/// How long a sender's queued bytes may take to drain before the plug holds it back: what edist
/// keeps in front of a link is sized by time, not bytes.
const HOLD_AFTER: Duration = Duration::from_millis(50);
/// A sender's share before its lanes' rate is known, and its bounds.
const SHARE_START: usize = 1 << 20;
const SHARE_MIN: usize = 128 << 10;
const SHARE_MAX: usize = 8 << 20;
/// A packet this large may start a fragmented message: its sender's pid is noted.
pub(super) const LARGE_PACKET: usize = 16 << 10;
/// Senders whose queued bytes are tracked per session (beyond, the idle ones are forgotten).
const MAX_TRACKED: usize = 4096;

/// Per-sender bytes waiting in one session's lanes, and the senders held back (sans IO but for
/// the counters the lane writers decrement).
///
/// A sender whose bytes pass its share is held by the node's plug (suspended, so only it stops:
/// the session keeps reading the node's socket and everyone else's messages flow). Held senders
/// go again oldest first, once their own bytes fell to half the share and the session's queue (all
/// senders') is within it: a released sender sends on for a while before a new hold reaches it
/// (a hold is asynchronous), so releasing everyone at once would queue that much times their
/// number. Releasing everything is the owner's job when the session ends.
#[derive(Debug, Default)]
pub(super) struct Holds {
    senders: std::collections::HashMap<u64, SenderBytes>,
    /// Held senders, with the order they were held in.
    held: std::collections::HashMap<u64, (u64, edist_proto::etf::Pid)>,
    holds_made: u64,
    /// The pid of each sender with a large message under way: its continuation fragments name
    /// none, and a sender may pass its share in the middle of a message.
    pids: std::collections::HashMap<u64, edist_proto::etf::Pid>,
}

impl Holds {
    /// The counter to charge a frame of `key` to.
    pub(super) fn counter(&mut self, key: u64) -> SenderBytes {
        if self.senders.len() >= MAX_TRACKED && !self.senders.contains_key(&key) {
            let held = &self.held;
            self.senders.retain(|k, c| c.load(Ordering::Relaxed) > 0 || held.contains_key(k));
            let senders = &self.senders;
            self.pids.retain(|k, _| senders.contains_key(k));
        }
        self.senders.entry(key).or_default().clone()
    }

    /// Notes the pid of `key` if `packet` (a large one: the first fragment of a message, say)
    /// names it.
    pub(super) fn remember(&mut self, key: u64, packet: &[u8]) {
        if let Some(pid) = packet.get(4..).and_then(edist_proto::dist::lane::sender_pid) {
            if self.pids.len() < MAX_TRACKED || self.pids.contains_key(&key) {
                self.pids.insert(key, pid);
            }
        }
    }

    /// After queueing `packet` of `key`: the pid to hold, if the sender is now over `share`.
    pub(super) fn over(&mut self, key: u64, packet: &[u8], share: usize) -> Option<edist_proto::etf::Pid> {
        let queued = self.senders.get(&key)?.load(Ordering::Relaxed);
        if queued <= share || self.held.contains_key(&key) {
            return None;
        }
        let pid =
            packet.get(4..).and_then(edist_proto::dist::lane::sender_pid).or_else(|| self.pids.get(&key).cloned())?;
        self.holds_made += 1;
        self.held.insert(key, (self.holds_made, pid.clone()));
        Some(pid)
    }

    /// Held senders to release now: oldest first, those whose bytes fell to half of `share`,
    /// while the session's queue, counting half a share for each one released, stays within it.
    pub(super) fn drained(&mut self, share: usize) -> Vec<edist_proto::etf::Pid> {
        let queued = |k: &u64| self.senders.get(k).map_or(0, |c| c.load(Ordering::Relaxed));
        let mut total: usize = self.senders.keys().map(queued).sum();
        let mut oldest: Vec<(u64, u64)> = self.held.iter().map(|(k, (n, _))| (*n, *k)).collect();
        oldest.sort_unstable();
        let mut done = Vec::new();
        for (_, k) in oldest {
            if total > share {
                break;
            }
            if queued(&k) <= share / 2 {
                total += share / 2;
                done.push(k);
            }
        }
        done.iter().filter_map(|k| self.held.remove(k)).map(|(_, p)| p).collect()
    }

    pub(super) fn any_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Every held sender, forgotten.
    fn release_all(&mut self) -> Vec<edist_proto::etf::Pid> {
        self.held.drain().map(|(_, (_, p))| p).collect()
    }
}

/// A session's [`Holds`] and the plug that applies them. Whatever is still held when the session
/// ends is released, however it ends (the pump's halves are dropped when another part ends).
pub(super) struct HeldSenders {
    pub(super) holds: Holds,
    pub(super) plug: Option<Plug>,
}

impl HeldSenders {
    pub(super) fn hold(&self, pid: &edist_proto::etf::Pid) {
        if let Some(p) = &self.plug {
            p.hold(pid);
        }
    }

    /// Releases the held senders whose bytes fell to half of `share`.
    pub(super) fn release_drained(&mut self, share: usize) {
        for pid in self.holds.drained(share) {
            if let Some(p) = &self.plug {
                p.release(&pid);
            }
        }
    }

    /// Releases every held sender.
    fn release_all(&mut self) {
        for pid in self.holds.release_all() {
            if let Some(p) = &self.plug {
                p.release(&pid);
            }
        }
    }
}

impl Drop for HeldSenders {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Bytes per second the lanes of a session write, smoothed: how fast a sender's share drains.
#[derive(Debug, Default)]
pub(super) struct Rate {
    pub(super) written: AtomicUsize,
}

impl Rate {
    /// A sender's share: what the lanes write in [`HOLD_AFTER`], within bounds; `per_s` the
    /// latest measurement (0: none yet).
    pub(super) fn share(per_s: f64) -> usize {
        if per_s <= 0.0 {
            return SHARE_START;
        }
        ((per_s * HOLD_AFTER.as_secs_f64()) as usize).clamp(SHARE_MIN, SHARE_MAX)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use edist_proto::dist::control::{encode_message, Control};
    use edist_proto::dist::DFlags;
    use edist_proto::etf::{Atom, Pid, Term};

    fn pid(id: u32) -> Pid {
        Pid { node: Atom::from("a@h"), id, serial: 0, creation: 1 }
    }

    /// A whole SEND_SENDER packet from `from`, length prefix included.
    fn packet(from: u32) -> Vec<u8> {
        let (ctrl, pl) = encode_message(&Control::SendSender { from: pid(from), to: pid(9) }, Some(&Term::Int(1)));
        let mut body = vec![131, 68, 0];
        body.extend_from_slice(&ctrl);
        body.extend_from_slice(&pl);
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn a_sender_over_its_share_is_held_once_and_released_at_half() {
        let mut h = Holds::default();
        let c = h.counter(1);
        c.fetch_add(900, Ordering::Relaxed);
        assert_eq!(h.over(1, &packet(1), 1000), None, "within its share");
        c.fetch_add(200, Ordering::Relaxed);
        assert_eq!(h.over(1, &packet(1), 1000), Some(pid(1)));
        assert_eq!(h.over(1, &packet(1), 1000), None, "held already");
        assert!(h.any_held());
        // The lane writes some of it: not yet at half the share.
        c.fetch_sub(400, Ordering::Relaxed);
        assert!(h.drained(1000).is_empty());
        c.fetch_sub(300, Ordering::Relaxed);
        assert_eq!(h.drained(1000), vec![pid(1)]);
        assert!(!h.any_held());
        // A packet without a sender pid cannot be held (a SEND).
        let c2 = h.counter(2);
        c2.fetch_add(5000, Ordering::Relaxed);
        assert_eq!(h.over(2, &[0, 0, 0, 3, 131, 68, 0], 1000), None);
        // Everything held is let go at the end.
        c.fetch_add(5000, Ordering::Relaxed);
        assert!(h.over(1, &packet(1), 1000).is_some());
        assert_eq!(h.release_all(), vec![pid(1)]);
        assert!(!h.any_held());
    }

    #[test]
    fn held_senders_go_again_oldest_first_while_the_session_queue_has_room() {
        let mut h = Holds::default();
        let (a, b, c) = (h.counter(1), h.counter(2), h.counter(3));
        for (k, ctr) in [(1, &a), (2, &b), (3, &c)] {
            ctr.fetch_add(1500, Ordering::Relaxed);
            assert_eq!(h.over(k, &packet(k as u32), 1000), Some(pid(k as u32)));
        }
        // Each drained to half its share, but together over it: nobody goes yet.
        for ctr in [&a, &b, &c] {
            ctr.store(400, Ordering::Relaxed);
        }
        assert!(h.drained(1000).is_empty());
        // Room for one: the oldest goes (counting half a share for what it will send next).
        for ctr in [&a, &b, &c] {
            ctr.store(200, Ordering::Relaxed);
        }
        assert_eq!(h.drained(1000), vec![pid(1)]);
        // More room: the next two, oldest first.
        a.store(0, Ordering::Relaxed);
        b.store(0, Ordering::Relaxed);
        assert_eq!(h.drained(1000), vec![pid(2), pid(3)]);
        assert!(!h.any_held());
    }

    #[test]
    fn a_sender_passing_its_share_mid_message_is_held_at_a_continuation() {
        let (ctrl, pl) =
            encode_message(&Control::SendSender { from: pid(3), to: pid(9) }, Some(&Term::Binary(vec![7; 300_000])));
        let mut packets = Vec::new();
        let flags = DFlags(DFlags::FRAGMENTS | DFlags::DIST_HDR_ATOM_CACHE);
        edist_proto::dist::fragment::frame_message(&mut packets, flags, 5, &ctrl, &pl, 65_536);
        assert!(packets.len() > 2);
        let mut h = Holds::default();
        let c = h.counter(3);
        h.remember(3, &packets[0]);
        c.fetch_add(packets[0].len(), Ordering::Relaxed);
        assert_eq!(h.over(3, &packets[0], 100_000), None, "within its share");
        c.fetch_add(packets[1].len(), Ordering::Relaxed);
        assert_eq!(edist_proto::dist::lane::sender_pid(&packets[1][4..]), None, "a continuation names nobody");
        assert_eq!(h.over(3, &packets[1], 100_000), Some(pid(3)));
    }

    #[test]
    fn shares_follow_the_rate_within_bounds() {
        assert_eq!(Rate::share(0.0), SHARE_START);
        assert_eq!(Rate::share(1.0), SHARE_MIN);
        assert_eq!(Rate::share(12.5e6), 625_000);
        assert_eq!(Rate::share(1e12), SHARE_MAX);
    }
}
