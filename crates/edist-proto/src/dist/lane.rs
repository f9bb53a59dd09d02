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
    use crate::dist::control::{encode_message, Control};
    use crate::dist::fragment::frame_message;
    use crate::dist::DFlags;
    use crate::etf::{Atom, Pid, Term};

    fn pid(id: u32) -> Pid {
        Pid { node: Atom::from("a@h"), id, serial: 0, creation: 1 }
    }

    fn packets(c: &Control, payload_len: usize, seq: u64) -> Vec<Vec<u8>> {
        let payload = c.has_payload().then(|| Term::binary(vec![0u8; payload_len]));
        let (ctrl, pl) = encode_message(c, payload.as_ref());
        let mut out = Vec::new();
        frame_message(&mut out, DFlags::edist_default(false), seq, &ctrl, &pl, 1024);
        out.into_iter().map(|p| p[4..].to_vec()).collect()
    }

    #[test]
    fn classifier_keys_by_sender_and_follows_fragments() {
        let mut c = Classifier::new();
        let send = |from: u32| Control::SendSender { from: pid(from), to: pid(99) };
        let k1 = c.classify(&packets(&send(1), 10, 1)[0]);
        let link = Control::Link { from: pid(1), to: pid(7) };
        assert!(k1.is_some());
        assert_eq!(c.classify(&packets(&link, 0, 2)[0]), k1, "a sender's signals share its lane");
        assert_ne!(c.classify(&packets(&send(2), 10, 3)[0]), k1);
        // A fragmented message: every fragment gets the first one's key, then it is forgotten.
        let big = packets(&send(3), 5000, 9);
        assert!(big.len() > 2);
        let first = c.classify(&big[0]);
        assert!(first.is_some());
        for p in &big[1..] {
            assert_eq!(c.classify(p), first);
        }
        assert!(c.open.is_empty());
        // Ticks and junk have no sender.
        assert_eq!(c.classify(&[]), None);
        assert_eq!(c.classify(&[131, 68, 0, 1, 2, 3]), None);
        // A spawn reply comes from the new process: same lane as that process's signals.
        let spawn_reply = Control::SpawnReply {
            req_id: crate::etf::Ref { node: Atom::from("a@h"), creation: 1, ids: vec![1, 2, 3] },
            to: pid(5),
            flags: 0,
            result: Term::Pid(pid(8)),
        };
        let exit_from_8 = Control::PayloadExit { from: pid(8), to: pid(5) };
        assert_eq!(c.classify(&packets(&spawn_reply, 0, 4)[0]), c.classify(&packets(&exit_from_8, 0, 5)[0]));
    }

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

/// Finds the lane key of each packet of a connected channel (a relay's view): the sending
/// process of the control message, so each sender's packets stay in order on one lane while
/// different senders' packets may overtake each other. Continuation fragments follow their
/// first fragment. `None` means "no sender" (ticks, unparsable packets): such packets go on
/// the connection's ordered default lane.
#[derive(Debug, Default)]
pub struct Classifier {
    /// Lane keys of fragmented messages still in flight, by sequence id.
    open: HashMap<u64, Option<u64>>,
}

/// Most fragmented messages in flight tracked per connection; beyond, new ones go on the
/// default lane whole (consistently, so fragments are never reordered).
const MAX_OPEN_SEQUENCES: usize = 4096;

impl Classifier {
    /// A classifier for one direction of one connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lane key of one packet (without its length prefix; empty for a tick).
    pub fn classify(&mut self, packet: &[u8]) -> Option<u64> {
        let mut r = crate::etf::Reader::new(packet);
        if r.u8().ok()? != crate::etf::tag::VERSION {
            return None;
        }
        match r.u8().ok()? {
            68 => {
                // Without an atom cache (a relay masks it) the reference count is 0.
                if r.u8().ok()? != 0 {
                    return None;
                }
                sender_key(r.rest())
            }
            69 => {
                let seq = r.u64().ok()?;
                let fragments = r.u64().ok()?;
                if r.u8().ok()? != 0 {
                    return None;
                }
                let key = sender_key(r.rest());
                if fragments > 1 {
                    if self.open.len() >= MAX_OPEN_SEQUENCES && !self.open.contains_key(&seq) {
                        self.open.insert(seq, None);
                        return None;
                    }
                    self.open.insert(seq, key);
                }
                key
            }
            70 => {
                let seq = r.u64().ok()?;
                let fragment = r.u64().ok()?;
                let key = if fragment <= 1 { self.open.remove(&seq) } else { self.open.get(&seq).copied() };
                key.flatten()
            }
            _ => None,
        }
    }
}

/// The key of the process a control message comes from (see [`Control::sender`]), read
/// straight from the bytes without decoding the message.
///
/// [`Control::sender`]: super::control::Control::sender
fn sender_key(body: &[u8]) -> Option<u64> {
    use super::control::op;
    use crate::etf::{walk, Limits, NoopVisitor, Reader};
    use crate::etf::{AtomText, Token};
    let mut r = Reader::new(body);
    let Ok(Token::Tuple(_)) = r.token() else { return None };
    let Ok(Token::Int(o)) = r.token() else { return None };
    // Which field (counting after the op) names the sender.
    let field = match u8::try_from(o).ok()? {
        // No sender pid: key by the receiver, which keeps each receiver's messages ordered.
        op::SEND | op::SEND_TT => 1,
        op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT | op::UNLINK_ID | op::UNLINK_ID_ACK => 1,
        op::SPAWN_REPLY | op::SPAWN_REPLY_TT => 3,
        op::NODE_LINK => return None,
        _ => 0,
    };
    let limits = Limits::default();
    for _ in 0..field {
        walk(&mut r, &limits, 0, &mut NoopVisitor).ok()?;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match r.token().ok()? {
        Token::Pid { id, serial, node, .. } => {
            use std::hash::{Hash, Hasher};
            (id, serial).hash(&mut h);
            if let AtomText::Text(t) = node {
                t.hash(&mut h);
            }
            Some(h.finish())
        }
        Token::Atom(AtomText::Text(t)) => {
            use std::hash::{Hash, Hasher};
            t.hash(&mut h);
            Some(h.finish())
        }
        _ => None,
    }
}

/// Assigns sender keys to lanes `1..=lanes`: a sender new to the connection gets the lane with
/// the fewest bytes queued (then the fewest senders), and keeps it for the connection's life,
/// so its packets stay in order while a small sender is not put behind a bulk sender's queue by
/// a hash collision. Beyond `max_senders` remembered senders, keys are hashed onto lanes
/// (consistently: a key is either remembered from its first packet on, or always hashed).
#[derive(Debug)]
pub struct Assigner {
    lanes: u64,
    max_senders: usize,
    fixed: HashMap<u64, u64>,
    /// Senders assigned per lane (index 0 unused).
    senders: Vec<usize>,
}

impl Assigner {
    /// An assigner over `lanes` lanes (at least 1) remembering at most `max_senders` senders.
    pub fn new(lanes: u64, max_senders: usize) -> Self {
        let lanes = lanes.max(1);
        Assigner { lanes, max_senders, fixed: HashMap::new(), senders: vec![0; lanes as usize + 1] }
    }

    /// The lane of `key`; `queued(lane)` tells how many bytes wait on a lane now.
    pub fn lane(&mut self, key: u64, queued: impl Fn(u64) -> usize) -> u64 {
        if let Some(l) = self.fixed.get(&key) {
            return *l;
        }
        if self.fixed.len() >= self.max_senders {
            return 1 + key % self.lanes;
        }
        let senders = &self.senders;
        let l =
            (1..=self.lanes).min_by_key(|l| (queued(*l), senders.get(*l as usize).copied().unwrap_or(0))).unwrap_or(1);
        if let Some(n) = self.senders.get_mut(l as usize) {
            *n += 1;
        }
        self.fixed.insert(key, l);
        l
    }
}

#[cfg(test)]
mod assigner_tests {
    use super::*;

    #[test]
    fn new_senders_go_to_the_emptiest_lane_and_stay() {
        let mut a = Assigner::new(4, 100);
        let mut queued = [0usize; 5];
        let l1 = a.lane(10, |l| queued[l as usize]);
        queued[l1 as usize] = 8 << 20; // a bulk sender
        let l2 = a.lane(20, |l| queued[l as usize]);
        assert_ne!(l1, l2);
        queued[l2 as usize] = 8 << 20;
        let ping = a.lane(30, |l| queued[l as usize]);
        assert!(ping != l1 && ping != l2, "the small sender avoids both bulk lanes");
        // Sticky, whatever the loads become.
        let other = |l: u64| if l == l1 { 0 } else { 1 << 30 };
        assert_eq!((a.lane(10, other), a.lane(20, other), a.lane(30, other)), (l1, l2, ping));
        // Equal loads: spread by the number of senders.
        let mut b = Assigner::new(3, 100);
        let ls: Vec<u64> = (0..6).map(|k| b.lane(k, |_| 0)).collect();
        for l in 1..=3 {
            assert_eq!(ls.iter().filter(|x| **x == l).count(), 2);
        }
    }

    #[test]
    fn beyond_the_limit_keys_hash_consistently() {
        let mut a = Assigner::new(8, 2);
        a.lane(1, |_| 0);
        a.lane(2, |_| 0);
        let h = a.lane(12345, |_| 0);
        assert_eq!(h, 1 + 12345 % 8);
        assert_eq!(a.lane(12345, |l| l as usize * 1000), h);
    }
}
