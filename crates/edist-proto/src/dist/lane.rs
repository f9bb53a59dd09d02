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

/// Who sent a message, as far as routing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sender {
    /// A process, by a hash of its pid.
    Pid(u64),
    /// No pid to go by: a `SEND` without sender (queued while the connection was set up), a
    /// monitor's `DOWN` from a registered name, a failed spawn's reply, a `NODE_LINK`.
    #[default]
    Unknown,
}

/// What routing needs to know of one distribution packet (without its length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// A whole message (`fragments` 1), or the first of its `fragments` fragments.
    Start { sender: Sender, seq: u64, fragments: u64 },
    /// A later fragment of message `seq`; `last` for its final one.
    Continuation { seq: u64, last: bool },
    /// A tick, or anything that does not parse as a message.
    Other,
}

/// Reads what [`Router`] needs from a packet of a connection without atom cache (a relay masks
/// it), without decoding the message.
pub fn inspect(packet: &[u8]) -> Packet {
    inspect_opt(packet).unwrap_or(Packet::Other)
}

fn inspect_opt(packet: &[u8]) -> Option<Packet> {
    let mut r = crate::etf::Reader::new(packet);
    if r.u8().ok()? != crate::etf::tag::VERSION {
        return None;
    }
    match r.u8().ok()? {
        68 => {
            // Without an atom cache the reference count is 0.
            if r.u8().ok()? != 0 {
                return None;
            }
            Some(Packet::Start { sender: sender_of(r.rest()), seq: 0, fragments: 1 })
        }
        69 => {
            let seq = r.u64().ok()?;
            let fragments = r.u64().ok()?;
            if r.u8().ok()? != 0 {
                return None;
            }
            Some(Packet::Start { sender: sender_of(r.rest()), seq, fragments: fragments.max(1) })
        }
        70 => {
            let seq = r.u64().ok()?;
            let fragment = r.u64().ok()?;
            Some(Packet::Continuation { seq, last: fragment <= 1 })
        }
        _ => None,
    }
}

/// The process a control message comes from (see [`Control::sender`]), read straight from the
/// bytes.
///
/// [`Control::sender`]: super::control::Control::sender
fn sender_of(body: &[u8]) -> Sender {
    use std::hash::{Hash, Hasher};
    match sender_token(body) {
        Some(crate::etf::Token::Pid { id, serial, node, .. }) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (id, serial).hash(&mut h);
            if let crate::etf::AtomText::Text(t) = node {
                t.hash(&mut h);
            }
            Sender::Pid(h.finish())
        }
        _ => Sender::Unknown,
    }
}

/// The sending process of a packet (without its length prefix), if it names one by pid: whom to
/// hold back when it sends too much.
pub fn sender_pid(packet: &[u8]) -> Option<crate::etf::Pid> {
    let mut r = crate::etf::Reader::new(packet);
    if r.u8().ok()? != crate::etf::tag::VERSION {
        return None;
    }
    match r.u8().ok()? {
        68 => {}
        69 => {
            r.u64().ok()?;
            r.u64().ok()?;
        }
        _ => return None,
    }
    if r.u8().ok()? != 0 {
        return None;
    }
    match sender_token(r.rest())? {
        crate::etf::Token::Pid { node: crate::etf::AtomText::Text(t), id, serial, creation } => {
            Some(crate::etf::Pid { node: crate::etf::Atom::from(t.as_ref()), id, serial, creation })
        }
        _ => None,
    }
}

/// The token of the control message's field that names its sender.
fn sender_token(body: &[u8]) -> Option<crate::etf::Token<'_>> {
    use super::control::op;
    use crate::etf::{walk, Limits, NoopVisitor, Reader, Token};
    let mut r = Reader::new(body);
    let Ok(Token::Tuple(_)) = r.token() else { return None };
    let Ok(Token::Int(o)) = r.token() else { return None };
    // Which field (counting after the op) names the sender.
    let field = match u8::try_from(o) {
        Ok(op::SEND | op::SEND_TT | op::NODE_LINK) | Err(_) => return None,
        Ok(op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT | op::UNLINK_ID | op::UNLINK_ID_ACK) => 1,
        Ok(op::SPAWN_REPLY | op::SPAWN_REPLY_TT) => 3,
        Ok(_) => 0,
    };
    let limits = Limits::default();
    for _ in 0..field {
        walk(&mut r, &limits, 0, &mut NoopVisitor).ok()?;
    }
    r.token().ok()
}

/// The ordered lane: small messages of every sender, in the order the node sent them.
pub const ORDERED: u64 = 0;

/// A message in one packet larger than this (bytes) counts as large, like a fragmented one
/// (OTP fragments messages over 64 KiB).
pub const LARGE: usize = 64 * 1024;

/// Fragmented messages in flight remembered per connection; a sender's next one beyond this
/// goes on the ordered lane, behind its earlier frames.
const MAX_OPEN: usize = 65_536;

/// Senders with a large message in flight remembered per connection; beyond, a new large
/// message goes on the ordered lane.
const MAX_BULK: usize = 65_536;

/// Where one packet goes: its lane, and what the receiving side must have delivered first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The lane: [`ORDERED`], or a bulk lane `1..=n`.
    pub lane: u64,
    /// `(lane, count)`: before this packet, the receiver delivers `count` frames of `lane`.
    pub after: Vec<(u64, u64)>,
    /// The process the packet comes from (a fragment's: its message's).
    pub sender: Sender,
}

/// Where a sender's latest frame went while it has a large message in flight.
#[derive(Debug, Clone, Copy)]
struct Tail {
    lane: u64,
    /// The frame count of `lane` with that frame included.
    last: u64,
}

/// Routes the packets of one direction of a relayed connection onto lanes so that the
/// connection keeps OTP's order except where a large message must not block others
/// (the ordering rule, docs/architecture.md):
///
/// * small messages and signals go on the [`ORDERED`] lane, in the node's order, whoever sends
///   them: exactly as on one OTP connection;
/// * a large message (fragmented, or one packet over [`LARGE`]) goes on a bulk lane of its own,
///   and so does everything its sender sends after it until the receiving side reports all of
///   that delivered ([`Router::delivered`]); only these may be overtaken;
/// * a sender moving onto a bulk lane first lets the receiver deliver what the ordered lane
///   carried before (a barrier, [`Route::after`]), and a message whose sender is unknown
///   waits for every bulk lane's frames sent before it.
///
/// So every pair of processes keeps its order whatever the encoding (`SEND` while connecting,
/// `SEND_SENDER` after), and small messages of different senders never overtake each other.
#[derive(Debug)]
pub struct Router {
    bulk_lanes: u64,
    /// Frames routed so far, per lane.
    sent: Vec<u64>,
    /// Frames the receiving side reported delivered, per lane.
    delivered: Vec<u64>,
    /// Senders whose latest frame is on a bulk lane.
    bulk: HashMap<u64, Tail>,
    /// Fragmented messages in flight: their lane and sender, by sequence id.
    open: HashMap<u64, (u64, Sender)>,
    /// Where the search for the emptiest bulk lane starts (spreads ties).
    next: u64,
}

impl Router {
    /// A router over the ordered lane plus `bulk_lanes` bulk lanes (0: everything in order).
    pub fn new(bulk_lanes: u64) -> Self {
        let n = bulk_lanes.min(u8::MAX as u64);
        let lanes = n as usize + 1;
        Router {
            bulk_lanes: n,
            sent: vec![0; lanes],
            delivered: vec![0; lanes],
            bulk: HashMap::new(),
            open: HashMap::new(),
            next: 0,
        }
    }

    /// Routes one packet (without its length prefix); `queued(lane)` tells how many bytes wait
    /// on a lane now (a new large message takes the emptiest bulk lane).
    pub fn route(&mut self, packet: &[u8], queued: impl Fn(u64) -> usize) -> Route {
        let (route, sender) = match inspect(packet) {
            Packet::Other => (Route::default(), Sender::Unknown),
            Packet::Continuation { seq, last } => {
                let found = if last { self.open.remove(&seq) } else { self.open.get(&seq).copied() };
                // A continuation nobody announced: its start was never seen, any lane is as good.
                let (lane, sender) = found.unwrap_or((ORDERED, Sender::Unknown));
                (Route { lane, ..Route::default() }, sender)
            }
            Packet::Start { sender, seq, fragments } => {
                let large = fragments > 1 || packet.len() > LARGE;
                let route = self.start(sender, seq, fragments, large, queued);
                (route, sender)
            }
        };
        let route = Route { sender, ..route };
        let lane = route.lane;
        if let Some(n) = self.sent.get_mut(lane as usize) {
            *n += 1;
        }
        if let Sender::Pid(k) = sender {
            match lane {
                ORDERED => {
                    self.bulk.remove(&k);
                }
                _ => {
                    let last = self.sent_on(lane);
                    self.bulk.insert(k, Tail { lane, last });
                }
            }
        }
        route
    }

    fn start(&mut self, sender: Sender, seq: u64, fragments: u64, large: bool, queued: impl Fn(u64) -> usize) -> Route {
        let fragmented = fragments > 1;
        let can_track = !fragmented || self.open.len() < MAX_OPEN || self.open.contains_key(&seq);
        let tail = match sender {
            Sender::Pid(k) => self.tail(k),
            Sender::Unknown => None,
        };
        let route = match (sender, tail) {
            // Behind its own large message, on that message's lane.
            (_, Some(t)) if can_track => Route { lane: t.lane, ..Route::default() },
            // Its fragments could not be followed there: the ordered lane, once its tail is out.
            (_, Some(t)) => Route { lane: ORDERED, after: vec![(t.lane, t.last)], ..Route::default() },
            (Sender::Pid(_), None) if large && can_track && self.bulk_lanes > 0 && self.bulk_room() => {
                // What the ordered lane carried before (this sender's earlier messages among
                // them) reaches the node first.
                let after = vec![(ORDERED, self.sent_on(ORDERED))];
                Route { lane: self.emptiest(queued), after, ..Route::default() }
            }
            (Sender::Pid(_), None) => Route::default(),
            // Anyone's: behind every large message in flight; and whoever sent it, what that
            // sender sends next must stay behind it, so every sender starts over in order.
            (Sender::Unknown, None) => {
                self.bulk.clear();
                Route { lane: ORDERED, after: self.outstanding(), ..Route::default() }
            }
        };
        if fragmented && can_track {
            self.open.insert(seq, (route.lane, sender));
        }
        route
    }

    /// The receiving side delivered `count` frames of `lane` to its node.
    pub fn delivered(&mut self, lane: u64, count: u64) {
        let sent = self.sent_on(lane);
        if let Some(d) = self.delivered.get_mut(lane as usize) {
            *d = (*d).max(count.min(sent));
        }
    }

    /// Counts a frame put on the ordered lane by the gateway itself (a policy's reply).
    pub fn ordered_frame(&mut self) {
        if let Some(n) = self.sent.first_mut() {
            *n += 1;
        }
    }

    /// Bulk lanes with frames the receiving side has not delivered yet.
    pub fn busy_lanes(&self) -> usize {
        self.outstanding().len()
    }

    fn sent_on(&self, lane: u64) -> u64 {
        self.sent.get(lane as usize).copied().unwrap_or(0)
    }

    fn delivered_on(&self, lane: u64) -> u64 {
        self.delivered.get(lane as usize).copied().unwrap_or(0)
    }

    /// The sender's tail while the receiver has not delivered it (forgotten once it has).
    fn tail(&mut self, key: u64) -> Option<Tail> {
        let t = *self.bulk.get(&key)?;
        if t.last > self.delivered_on(t.lane) {
            return Some(t);
        }
        self.bulk.remove(&key);
        None
    }

    fn bulk_room(&mut self) -> bool {
        if self.bulk.len() >= MAX_BULK {
            let delivered = &self.delivered;
            self.bulk.retain(|_, t| t.last > delivered.get(t.lane as usize).copied().unwrap_or(0));
        }
        self.bulk.len() < MAX_BULK
    }

    fn emptiest(&mut self, queued: impl Fn(u64) -> usize) -> u64 {
        let n = self.bulk_lanes.max(1);
        let start = self.next;
        self.next = (self.next + 1) % n;
        (0..n).map(|i| 1 + (start + i) % n).min_by_key(|l| queued(*l)).unwrap_or(1)
    }

    fn outstanding(&self) -> Vec<(u64, u64)> {
        (1..=self.bulk_lanes)
            .filter(|l| self.sent_on(*l) > self.delivered_on(*l))
            .map(|l| (l, self.sent_on(l)))
            .collect()
    }
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use crate::dist::control::{encode_message, Control};
    use crate::dist::fragment::frame_message;
    use crate::dist::DFlags;
    use crate::etf::{Atom, Pid, Term};
    use std::collections::VecDeque;

    fn pid(id: u32) -> Pid {
        Pid { node: Atom::from("a@h"), id, serial: 0, creation: 1 }
    }

    /// The packets (without length prefix) of one message, fragmented at 1 KiB.
    fn packets(c: &Control, payload_len: usize, seq: u64) -> Vec<Vec<u8>> {
        let payload = c.has_payload().then(|| Term::binary(vec![0u8; payload_len]));
        let (ctrl, pl) = encode_message(c, payload.as_ref());
        let mut out = Vec::new();
        frame_message(&mut out, DFlags::edist_default(false), seq, &ctrl, &pl, 1024);
        out.into_iter().map(|p| p[4..].to_vec()).collect()
    }

    fn send(from: u32, len: usize, seq: u64) -> Vec<Vec<u8>> {
        packets(&Control::SendSender { from: pid(from), to: pid(99) }, len, seq)
    }

    #[test]
    fn inspect_finds_senders_and_fragments() {
        let Packet::Start { sender: s1, fragments: 1, .. } = inspect(&send(1, 10, 0)[0]) else { panic!() };
        let link = packets(&Control::Link { from: pid(1), to: pid(7) }, 0, 0);
        assert_eq!(inspect(&link[0]), Packet::Start { sender: s1, seq: 0, fragments: 1 }, "signals share the key");
        assert!(matches!(s1, Sender::Pid(_)));
        let Packet::Start { sender: s2, .. } = inspect(&send(2, 10, 0)[0]) else { panic!() };
        assert_ne!(s1, s2);
        let big = send(3, 5000, 9);
        let n = big.len() as u64;
        assert!(matches!(inspect(&big[0]), Packet::Start { seq: 9, fragments, .. } if fragments == n));
        assert_eq!(inspect(&big[1]), Packet::Continuation { seq: 9, last: n == 2 });
        assert_eq!(inspect(big.last().unwrap()), Packet::Continuation { seq: 9, last: true });
        // No sender: SEND, and a DOWN from a registered name.
        let plain = packets(&Control::Send { to: pid(99) }, 10, 0);
        assert!(matches!(inspect(&plain[0]), Packet::Start { sender: Sender::Unknown, .. }));
        assert_eq!(inspect(&[]), Packet::Other);
        assert_eq!(inspect(&[131, 68, 0, 1, 2, 3]), Packet::Start { sender: Sender::Unknown, seq: 0, fragments: 1 });
        assert_eq!(inspect(&[131, 68, 3]), Packet::Other, "atom cache refs are not relayed");
        // A spawn reply comes from the new process: same key as that process's signals.
        let spawn_reply = Control::SpawnReply {
            req_id: crate::etf::Ref { node: Atom::from("a@h"), creation: 1, ids: vec![1, 2, 3] },
            to: pid(5),
            flags: 0,
            result: Term::Pid(pid(8)),
        };
        let exit_from_8 = Control::PayloadExit { from: pid(8), to: pid(5) };
        let key = |p: &[u8]| match inspect(p) {
            Packet::Start { sender, .. } => sender,
            _ => Sender::Unknown,
        };
        assert_eq!(key(&packets(&spawn_reply, 0, 0)[0]), key(&packets(&exit_from_8, 0, 0)[0]));
        // The pid itself, for holding a sender back: whole messages and first fragments only.
        assert_eq!(sender_pid(&send(4, 10, 0)[0]), Some(pid(4)));
        assert_eq!(sender_pid(&big[0]), Some(pid(3)));
        assert_eq!(sender_pid(&big[1]), None);
        assert_eq!(sender_pid(&plain[0]), None);
    }

    #[test]
    fn small_messages_share_the_ordered_lane_and_large_ones_get_their_own() {
        let mut r = Router::new(4);
        let none = |_: u64| 0;
        let first_small = r.route(&send(1, 10, 0)[0], none);
        assert_eq!((first_small.lane, first_small.after), (ORDERED, vec![]));
        assert!(matches!(first_small.sender, Sender::Pid(_)));
        assert_eq!(r.route(&send(2, 10, 0)[0], none).lane, ORDERED);
        // A large message of sender 1: a bulk lane, after the two ordered frames.
        let big = send(1, 5000, 7);
        let first = r.route(&big[0], none);
        assert_ne!(first.lane, ORDERED);
        assert_eq!(first.after, vec![(ORDERED, 2)]);
        for p in &big[1..] {
            assert_eq!(r.route(p, none), Route { lane: first.lane, after: vec![], sender: first.sender });
        }
        // Sender 1 stays behind its large message; sender 2 does not wait.
        assert_eq!(r.route(&send(1, 10, 0)[0], none).lane, first.lane);
        assert_eq!(r.route(&send(2, 10, 0)[0], none).lane, ORDERED);
        // A second large sender avoids the busy lane.
        let busy = first.lane;
        let other = r.route(&send(3, 5000, 8)[0], |l| if l == busy { 1 << 20 } else { 0 });
        assert!(other.lane != ORDERED && other.lane != busy);
        // Once the receiver delivered sender 1's tail, it is back in the ordered lane.
        assert_eq!(r.busy_lanes(), 2);
        r.delivered(busy, big.len() as u64);
        assert_eq!(r.route(&send(1, 10, 0)[0], none).lane, busy, "its last frame is not delivered yet");
        let tail = big.len() as u64 + 2;
        // A message whose sender is unknown waits for every bulk lane, and everyone after it.
        let plain = packets(&Control::Send { to: pid(99) }, 10, 0);
        let r_plain = r.route(&plain[0], none);
        assert_eq!(r_plain.lane, ORDERED);
        let mut after = r_plain.after.clone();
        after.sort();
        let mut want = vec![(busy, tail), (other.lane, 1)];
        want.sort();
        assert_eq!(after, want);
        assert_eq!(r.route(&send(1, 10, 0)[0], none).lane, ORDERED);
        r.delivered(busy, u64::MAX);
        assert_eq!(r.busy_lanes(), 1);
        assert_eq!(r.route(&send(3, 10, 0)[0], none).lane, ORDERED, "unknown senders reset every tail");
    }

    #[test]
    fn no_bulk_lanes_means_everything_in_order() {
        let mut r = Router::new(0);
        for p in send(1, 5000, 3).iter().chain(send(2, 10, 0).iter()) {
            assert_eq!(r.route(p, |_| 0).lane, ORDERED);
        }
    }

    /// A simulated relay: random traffic of several senders is routed, the lanes deliver in a
    /// random interleaving that respects only the barriers, and delivery reports come back late.
    /// Every sender's messages arrive in order, and messages routed while their sender had no
    /// large message in flight arrive in the node's order.
    #[test]
    fn simulated_lanes_keep_the_ordering_rule() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..40 {
            let lanes = 1 + round % 4;
            let mut r = Router::new(lanes);
            // Per lane: frames (sender, message number, last fragment?, barriers) not yet delivered.
            type Frame = (u32, u64, bool, Vec<(u64, u64)>);
            let mut wire: Vec<VecDeque<Frame>> = vec![VecDeque::new(); lanes as usize + 1];
            let mut delivered = vec![0u64; lanes as usize + 1];
            let mut got: Vec<(u32, u64, bool)> = Vec::new(); // (sender, n, ordered)
            let mut ordered_sent: Vec<(u32, u64)> = Vec::new();
            let mut next_n = [0u64; 6];
            let step = |r: &mut Router,
                        wire: &mut Vec<VecDeque<Frame>>,
                        delivered: &mut Vec<u64>,
                        got: &mut Vec<(u32, u64, bool)>,
                        rand: &mut dyn FnMut(u64) -> u64| {
                let l = rand(lanes + 1) as usize;
                let Some(front) = wire[l].front() else { return };
                if front.3.iter().any(|(bl, c)| delivered[*bl as usize] < *c) {
                    return;
                }
                let (s, n, last, _) = wire[l].pop_front().unwrap();
                delivered[l] += 1;
                if last {
                    got.push((s, n, l == 0));
                }
                if rand(4) == 0 {
                    r.delivered(l as u64, delivered[l]);
                }
            };
            for seq in 1..=400u64 {
                let s = 1 + rand(5) as u32;
                let len = if rand(6) == 0 { 3000 } else { 10 };
                let n = next_n[s as usize];
                next_n[s as usize] += 1;
                let ps =
                    if rand(20) == 0 { packets(&Control::Send { to: pid(99) }, len, seq) } else { send(s, len, seq) };
                let count = ps.len();
                let queued: Vec<usize> = wire.iter().map(|q| q.len()).collect();
                let mut first_lane = None;
                for (i, p) in ps.iter().enumerate() {
                    let route = r.route(p, |l| queued[l as usize]);
                    first_lane.get_or_insert(route.lane);
                    wire[route.lane as usize].push_back((s, n, i + 1 == count, route.after));
                }
                if first_lane == Some(ORDERED) {
                    ordered_sent.push((s, n));
                }
                for _ in 0..rand(4) {
                    step(&mut r, &mut wire, &mut delivered, &mut got, &mut rand);
                }
            }
            while wire.iter().any(|q| !q.is_empty()) {
                step(&mut r, &mut wire, &mut delivered, &mut got, &mut rand);
            }
            for s in 1..=5u32 {
                let mine: Vec<u64> = got.iter().filter(|g| g.0 == s).map(|g| g.1).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]), "round {round}: sender {s} out of order: {mine:?}");
                assert_eq!(mine.len() as u64, next_n[s as usize]);
            }
            let ordered_got: Vec<(u32, u64)> = got.iter().filter(|g| g.2).map(|g| (g.0, g.1)).collect();
            assert_eq!(ordered_got, ordered_sent, "round {round}: the ordered lane kept the node's order");
        }
    }
}
