//! Lanes: per-sender queues of outgoing packets, drained round-robin one packet at a time.
//!
//! Erlang only orders signals between a pair of processes, so packets of different senders may
//! interleave freely while each sender's packets keep their order. Draining lanes one packet
//! (one fragment, at most 64 KiB) at a time means a large message delays another sender's small
//! message by about one fragment, not by the whole message (no head-of-line blocking).

use std::collections::{HashMap, VecDeque};

/// Identifies a lane; the node uses the sending process's id.
pub type LaneId = u64;

/// Round-robin scheduler over per-lane packet queues.
#[derive(Debug, Default)]
pub struct Lanes {
    queues: HashMap<LaneId, VecDeque<Vec<u8>>>,
    ring: VecDeque<LaneId>,
    bytes: usize,
}

impl Lanes {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the packets of one message on `lane`, behind that lane's earlier packets.
    pub fn push(&mut self, lane: LaneId, packets: impl IntoIterator<Item = Vec<u8>>) {
        let q = self.queues.entry(lane).or_default();
        let was_empty = q.is_empty();
        for p in packets {
            self.bytes += p.len();
            q.push_back(p);
        }
        if was_empty && !q.is_empty() {
            self.ring.push_back(lane);
        }
    }

    /// The next packet to send: the head of the next lane in turn.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let lane = self.ring.pop_front()?;
        let q = self.queues.get_mut(&lane)?;
        let p = q.pop_front()?;
        self.bytes -= p.len();
        if q.is_empty() {
            self.queues.remove(&lane);
        } else {
            self.ring.push_back(lane);
        }
        Some(p)
    }

    /// Lanes with packets waiting.
    pub fn active(&self) -> usize {
        self.ring.len()
    }

    /// Bytes waiting in all lanes.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_lanes_and_keeps_each_lanes_order() {
        let mut l = Lanes::new();
        l.push(1, vec![vec![1, 1], vec![1, 2], vec![1, 3]]);
        l.push(2, vec![vec![2, 1]]);
        l.push(1, vec![vec![1, 4]]);
        l.push(3, vec![vec![3, 1], vec![3, 2]]);
        assert_eq!((l.active(), l.queued_bytes()), (3, 14));
        let order: Vec<Vec<u8>> = std::iter::from_fn(|| l.pop()).collect();
        assert_eq!(order, vec![vec![1, 1], vec![2, 1], vec![3, 1], vec![1, 2], vec![3, 2], vec![1, 3], vec![1, 4]]);
        assert!(l.is_empty());
        assert_eq!(l.queued_bytes(), 0);
    }
}
