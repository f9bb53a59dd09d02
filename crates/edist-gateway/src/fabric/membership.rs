//! Membership between gateways (sans IO): SWIM (the `foca` crate) plus the node registry.
//!
//! Gateways find each other and notice each other's death through SWIM over signed UDP
//! datagrams ([`super::envelope`]). The registry rides along without a link to every gateway:
//! each gateway numbers the versions of its own node list and SWIM gossips only the number (a
//! *digest*); whoever has an older version asks the owner for the list directly, so every list
//! a gateway accepts was signed by the gateway whose nodes it names.
//!
//! The caller feeds in verified datagrams ([`Membership::handle_datagram`]), timers and a
//! [`Membership::tick`] every second, and carries out the [`Output`]s.

use crate::wire::NodeInfo;
use foca::{BroadcastHandler, Codec, Config, Foca, Identity, Invalidates, OwnedNotification, Timer};
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gateway as SWIM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    /// Its certificate identity.
    pub name: String,
    /// Where its membership datagrams go.
    pub gossip: SocketAddr,
    /// Where its fabric (QUIC) listens.
    pub fabric: SocketAddr,
    /// Which life of the gateway this is (its start time in ms, then +1 per rejoin): a
    /// restarted gateway wins over its former self.
    pub bump: u64,
}

impl Identity for MemberId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(MemberId { bump: self.bump.wrapping_add(1), ..self.clone() })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// A member's state as SWIM has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe: declared down unless it refutes the suspicion in time.
    Suspect,
    /// Declared down.
    Down,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Seal `payload` and send it to `to`.
    Send { to: SocketAddr, payload: Vec<u8> },
    /// Call [`Membership::handle_timer`] with `timer` after `after`.
    Timer { after: Duration, timer: Timer<MemberId> },
    /// A gateway joined (or came back).
    Up(MemberId),
    /// A gateway is gone: forget its nodes, close its links.
    Down(MemberId),
    /// The complete list of `gateway`'s nodes, from the gateway itself.
    Nodes { gateway: String, nodes: Vec<NodeInfo> },
}

/// Errors of the membership core: a peer broke the protocol, or foca refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    #[error("malformed membership message: {0}")]
    Malformed(&'static str),
    #[error("swim: {0}")]
    Swim(String),
}

mod kind {
    pub const SWIM: u8 = 0;
    pub const PULL: u8 = 1;
    pub const NODES: u8 = 2;
}

/// Node-list bytes per datagram (the envelope adds the certificate and signature).
const NODES_PER_DATAGRAM_BYTES: usize = 1000;
/// Parts of one node list at most (so about 30,000 nodes per gateway).
const MAX_PARTS: u16 = 1024;
/// Announcement interval while joining; joining ends when no new member came for `JOINING`.
const JOINING_ANNOUNCE: Duration = Duration::from_secs(1);
const JOINING: Duration = Duration::from_secs(5);
/// Announcement interval afterwards (heals partitions, finds late news).
const SETTLED_ANNOUNCE: Duration = Duration::from_secs(15);

fn announce_every(frequency: Duration) -> foca::PeriodicParams {
    foca::PeriodicParams { frequency, num_members: std::num::NonZeroUsize::MIN.saturating_add(1) }
}

/// How long before an unanswered pull is repeated.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// What we know of another gateway's node list.
#[derive(Debug, Default)]
struct Remote {
    /// The version we hold.
    have: u64,
    /// The newest version we have heard of.
    heard: u64,
    last_pull: Option<Instant>,
    /// A list being received: its version and parts.
    partial: Option<(u64, Vec<Option<Vec<NodeInfo>>>)>,
}

/// The membership of one gateway.
pub struct Membership {
    foca: Foca<MemberId, AuthCodec, rand_foca::rngs::StdRng, Digests>,
    rt: foca::AccumulatingRuntime<MemberId>,
    codec: Arc<Mutex<CodecState>>,
    digests: Arc<Mutex<HashMap<String, u64>>>,
    members: HashMap<String, MemberId>,
    remotes: HashMap<String, Remote>,
    version: u64,
    nodes: Vec<NodeInfo>,
    out: VecDeque<Output>,
    /// When the last new member came while joining, and whether joining is over.
    grew: Option<Instant>,
    settled: bool,
    config: Config,
}

impl Membership {
    /// Membership for `me`; SWIM timing for a cluster of about `expected` gateways.
    pub fn new(me: MemberId, expected: u32) -> Membership {
        let mut config = Config::new_lan(NonZeroU32::new(expected.max(1)).unwrap_or(NonZeroU32::MIN));
        // The envelope adds the certificate and signature; stay well under the usual MTU.
        config.max_packet_size = std::num::NonZeroUsize::new(700).unwrap_or(std::num::NonZeroUsize::MIN);
        // A joiner learns who is there from the answers to its announcements (a feed of members
        // per answer): announce often while joining, rarely after (see `tick`).
        config.periodic_announce = Some(announce_every(JOINING_ANNOUNCE));
        let me_name = me.name.clone();
        let codec = Arc::new(Mutex::new(CodecState { sender: None, me: me.clone() }));
        let digests = Arc::new(Mutex::new(HashMap::new()));
        let rng = rand_foca::rngs::StdRng::seed_from_u64(rand::random());
        let foca = Foca::with_custom_broadcast(
            me,
            config.clone(),
            rng,
            AuthCodec(codec.clone()),
            Digests { me: me_name, heard: digests.clone() },
        );
        Membership {
            foca,
            rt: foca::AccumulatingRuntime::new(),
            codec,
            digests,
            members: HashMap::new(),
            remotes: HashMap::new(),
            version: 0,
            nodes: Vec::new(),
            out: VecDeque::new(),
            grew: None,
            settled: false,
            config,
        }
    }

    /// Asks the gateway at `addr` (a seed; its name is not known yet) to let us join.
    pub fn announce(&mut self, addr: SocketAddr) {
        let me = self.foca.identity().clone();
        let dst = MemberId { name: String::new(), gossip: addr, fabric: addr, bump: 0 };
        if dst.gossip != me.gossip {
            let _ = self.foca.announce(dst, &mut self.rt);
        }
        self.drain();
    }

    /// Our node list changed: number the new version and gossip its digest.
    pub fn set_local_nodes(&mut self, nodes: Vec<NodeInfo>) {
        self.version += 1;
        self.nodes = nodes;
        let _ = self
            .foca
            .add_broadcast(&Digest { origin: self.foca.identity().name.clone(), version: self.version }.encode());
        let _ = self.foca.broadcast(&mut self.rt);
        self.drain();
    }

    /// A datagram `sender` (verified by the envelope) sent us.
    pub fn handle_datagram(&mut self, sender: &str, payload: &[u8], now: Instant) -> Result<(), MembershipError> {
        let (&k, body) = payload.split_first().ok_or(MembershipError::Malformed("empty"))?;
        let result = match k {
            kind::SWIM => {
                // Every SWIM datagram carries its sender's node-list version: whoever exchanges
                // probes with a gateway learns of a change it missed in the gossip.
                let (v, body) = body.split_first_chunk::<8>().ok_or(MembershipError::Malformed("swim"))?;
                if self.members.contains_key(sender) {
                    let r = self.remotes.entry(sender.to_string()).or_default();
                    r.heard = r.heard.max(u64::from_be_bytes(*v));
                }
                lock(&self.codec).sender = Some(sender.to_string());
                let r = self.foca.handle_data(body, &mut self.rt).map_err(|e| MembershipError::Swim(e.to_string()));
                lock(&self.codec).sender = None;
                r
            }
            kind::PULL => {
                if let Some(to) = self.members.get(sender).map(|m| m.gossip) {
                    self.send_nodes(to);
                }
                Ok(())
            }
            kind::NODES => self.receive_nodes(sender, body, now),
            _ => Err(MembershipError::Malformed("unknown kind")),
        };
        self.drain();
        result
    }

    /// A timer an [`Output::Timer`] asked for has fired.
    pub fn handle_timer(&mut self, timer: Timer<MemberId>) {
        let _ = self.foca.handle_timer(timer, &mut self.rt);
        self.drain();
    }

    /// Once a second: asks for node lists we know are newer than ours.
    pub fn tick(&mut self, now: Instant) {
        if !self.settled && !self.members.is_empty() {
            let grew = *self.grew.get_or_insert(now);
            if now.duration_since(grew) >= JOINING {
                self.settled = true;
                self.config.periodic_announce = Some(announce_every(SETTLED_ANNOUNCE));
                let _ = self.foca.set_config(self.config.clone());
            }
        }
        // (Copied, not drained: the handler needs them to tell a stale digest from a new one.)
        for (name, d) in lock(&self.digests).iter() {
            let r = self.remotes.entry(name.clone()).or_default();
            r.heard = r.heard.max(*d);
        }
        for (name, r) in &mut self.remotes {
            let Some(m) = self.members.get(name) else { continue };
            let due = r.last_pull.is_none_or(|t| now.duration_since(t) >= PULL_RETRY);
            if r.heard > r.have && due {
                r.last_pull = Some(now);
                self.out.push_back(Output::Send { to: m.gossip, payload: vec![kind::PULL] });
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The gateways SWIM holds alive, ourselves excluded.
    pub fn members(&self) -> impl Iterator<Item = &MemberId> {
        self.members.values()
    }

    /// Every gateway SWIM knows of, ourselves excluded, with its state (down ones until SWIM
    /// forgets them), for `edist status`.
    pub fn states(&self) -> Vec<(MemberId, MemberState)> {
        self.foca
            .iter_membership_state()
            .filter(|m| m.id().name != self.foca.identity().name)
            .map(|m| {
                let state = match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                };
                (m.id().clone(), state)
            })
            .collect()
    }

    /// Our identity.
    pub fn me(&self) -> &MemberId {
        self.foca.identity()
    }

    fn send_nodes(&mut self, to: SocketAddr) {
        let mut parts: Vec<Vec<u8>> = vec![];
        let mut cur = Vec::new();
        let mut count = 0u16;
        for n in &self.nodes {
            if cur.len() > NODES_PER_DATAGRAM_BYTES {
                parts.push(finish_part(&mut cur, &mut count));
            }
            put_str(&mut cur, &n.name);
            cur.extend_from_slice(&n.creation.to_be_bytes());
            count += 1;
        }
        parts.push(finish_part(&mut cur, &mut count));
        let total = parts.len().min(usize::from(MAX_PARTS)) as u16;
        for (i, body) in parts.into_iter().take(usize::from(total)).enumerate() {
            let mut p = vec![kind::NODES];
            p.extend_from_slice(&self.version.to_be_bytes());
            p.extend_from_slice(&(i as u16).to_be_bytes());
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&body);
            self.out.push_back(Output::Send { to, payload: p });
        }
    }

    fn receive_nodes(&mut self, sender: &str, body: &[u8], now: Instant) -> Result<(), MembershipError> {
        let bad = MembershipError::Malformed("nodes");
        let (version, rest) = body.split_first_chunk::<8>().ok_or(MembershipError::Malformed("nodes"))?;
        let (part, rest) = rest.split_first_chunk::<2>().ok_or(MembershipError::Malformed("nodes"))?;
        let (parts, mut rest) = rest.split_first_chunk::<2>().ok_or(MembershipError::Malformed("nodes"))?;
        let (version, part, parts) =
            (u64::from_be_bytes(*version), u16::from_be_bytes(*part), u16::from_be_bytes(*parts));
        if parts == 0 || parts > MAX_PARTS || part >= parts {
            return Err(bad);
        }
        let (count, r) = rest.split_first_chunk::<2>().ok_or(MembershipError::Malformed("nodes"))?;
        rest = r;
        let mut nodes = Vec::new();
        for _ in 0..u16::from_be_bytes(*count) {
            let (name, r) = take_str(rest).ok_or(MembershipError::Malformed("node name"))?;
            let (creation, r) = r.split_first_chunk::<4>().ok_or(MembershipError::Malformed("node creation"))?;
            nodes.push(NodeInfo { name, creation: u32::from_be_bytes(*creation) });
            rest = r;
        }
        if !self.members.contains_key(sender) {
            return Ok(()); // not (or no longer) a member: its nodes are not wanted
        }
        let r = self.remotes.entry(sender.to_string()).or_default();
        // The owner's own word on its version wins over gossip (a forged digest cannot make us
        // pull forever).
        r.heard = version;
        if version <= r.have {
            return Ok(());
        }
        if r.partial.as_ref().is_none_or(|(v, p)| *v != version || p.len() != usize::from(parts)) {
            r.partial = Some((version, vec![None; usize::from(parts)]));
        }
        let Some((_, got)) = r.partial.as_mut() else { return Ok(()) };
        if let Some(slot) = got.get_mut(usize::from(part)) {
            *slot = Some(nodes);
        }
        if got.iter().all(Option::is_some) {
            let nodes = got.iter_mut().flat_map(|p| p.take().unwrap_or_default()).collect();
            r.partial = None;
            r.have = version;
            r.last_pull = Some(now);
            self.out.push_back(Output::Nodes { gateway: sender.to_string(), nodes });
        }
        Ok(())
    }

    /// Moves what foca produced into our outputs.
    fn drain(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            let mut payload = Vec::with_capacity(data.len() + 9);
            payload.push(kind::SWIM);
            payload.extend_from_slice(&self.version.to_be_bytes());
            payload.extend_from_slice(&data);
            self.out.push_back(Output::Send { to: to.gossip, payload });
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.out.push_back(Output::Timer { after, timer });
        }
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    self.grew = None; // set at the next tick
                    self.members.insert(m.name.clone(), m.clone());
                    // Ask for its list at the next tick.
                    let r = self.remotes.entry(m.name.clone()).or_default();
                    r.heard = r.heard.max(r.have.saturating_add(1));
                    r.last_pull = None;
                    self.out.push_back(Output::Up(m));
                }
                // (A former life going down says nothing about the current one.)
                OwnedNotification::MemberDown(m) if self.members.get(&m.name).is_some_and(|cur| cur.bump <= m.bump) => {
                    self.members.remove(&m.name);
                    self.remotes.remove(&m.name);
                    self.out.push_back(Output::Down(m));
                }
                OwnedNotification::Rejoin(me) => lock(&self.codec).me = me,
                OwnedNotification::Rename(old, new) if self.members.remove(&old.name).is_some() => {
                    self.members.insert(new.name.clone(), new);
                }
                _ => {}
            }
        }
    }
}

fn finish_part(cur: &mut Vec<u8>, count: &mut u16) -> Vec<u8> {
    let mut p = count.to_be_bytes().to_vec();
    p.append(cur);
    *count = 0;
    p
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(usize::from(u8::MAX));
    out.push(n as u8);
    out.extend_from_slice(b.get(..n).unwrap_or_default());
}

fn take_str(b: &[u8]) -> Option<(String, &[u8])> {
    let (&n, rest) = b.split_first()?;
    let (s, rest) = rest.split_at_checked(usize::from(n))?;
    Some((String::from_utf8(s.to_vec()).ok()?, rest))
}

/// A gateway's node list is at `version` (gossiped; says nothing about the nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digest {
    origin: String,
    version: u64,
}

impl Digest {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, &self.origin);
        b.extend_from_slice(&self.version.to_be_bytes());
        b
    }

    /// The digest at the start of `data` and its length.
    fn decode(data: &[u8]) -> Option<(Digest, usize)> {
        let (origin, rest) = take_str(data)?;
        let (v, rest) = rest.split_first_chunk::<8>()?;
        Some((Digest { origin, version: u64::from_be_bytes(*v) }, data.len() - rest.len()))
    }
}

impl Invalidates for Digest {
    fn invalidates(&self, other: &Self) -> bool {
        self.origin == other.origin && self.version >= other.version
    }
}

/// Receives gossiped digests: remembers the newest version heard per gateway.
struct Digests {
    me: String,
    heard: Arc<Mutex<HashMap<String, u64>>>,
}

impl BroadcastHandler<MemberId> for Digests {
    type Key = Digest;
    type Error = MembershipError;

    fn receive_item(&mut self, data: &[u8], sender: Option<&MemberId>) -> Result<Option<Digest>, MembershipError> {
        let (d, _) = Digest::decode(data).ok_or(MembershipError::Malformed("digest"))?;
        if d.origin == self.me {
            // Ours: spread it when we add it, never take it back from others.
            return Ok(sender.is_none().then_some(d));
        }
        let mut heard = lock(&self.heard);
        if heard.len() > 100_000 && !heard.contains_key(&d.origin) {
            return Ok(None);
        }
        let v = heard.entry(d.origin.clone()).or_default();
        if d.version <= *v {
            return Ok(None); // nothing new: stop spreading it
        }
        *v = d.version;
        Ok(Some(d))
    }
}

/// What the codec needs to know about the datagram being decoded.
struct CodecState {
    /// The verified sender of the datagram being handled.
    sender: Option<String>,
    /// Our identity (announcements from seeds are addressed to an unnamed member).
    me: MemberId,
}

/// foca's postcard codec, plus: a message's source must be the gateway that signed it, and an
/// announcement is addressed to us whatever name the seed used.
struct AuthCodec(Arc<Mutex<CodecState>>);

impl Codec<MemberId> for AuthCodec {
    type Error = MembershipError;

    fn encode_header(
        &mut self,
        header: &foca::Header<MemberId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), MembershipError> {
        foca::PostcardCodec.encode_header(header, buf).map_err(|_| MembershipError::Malformed("header too large"))
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<foca::Header<MemberId>, MembershipError> {
        let mut h: foca::Header<MemberId> =
            foca::PostcardCodec.decode_header(buf).map_err(|_| MembershipError::Malformed("header"))?;
        let st = lock(&self.0);
        if st.sender.as_deref() != Some(h.src.name.as_str()) {
            return Err(MembershipError::Malformed("source is not the signer"));
        }
        if h.message == foca::Message::Announce {
            h.dst = st.me.clone();
        }
        Ok(h)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<MemberId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), MembershipError> {
        foca::PostcardCodec.encode_member(member, buf).map_err(|_| MembershipError::Malformed("member too large"))
    }

    fn decode_member(&mut self, buf: impl bytes::Buf) -> Result<foca::Member<MemberId>, MembershipError> {
        foca::PostcardCodec.decode_member(buf).map_err(|_| MembershipError::Malformed("member"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Gateways exchanging membership datagrams in memory, on a virtual clock.
    struct Sim {
        members: Vec<Membership>,
        alive: Vec<bool>,
        /// (due, seq) -> (member, timer)
        timers: BTreeMap<(Duration, u64), (usize, Timer<MemberId>)>,
        seq: u64,
        now: Duration,
        start: Instant,
        /// What each member was told: lists and departures.
        nodes: Vec<HashMap<String, Vec<NodeInfo>>>,
        downs: Vec<Vec<String>>,
        /// Datagrams sent, all members together.
        sent: u64,
    }

    fn id(i: usize) -> MemberId {
        let a: SocketAddr = format!("10.0.0.{}:4372", i + 1).parse().unwrap();
        MemberId { name: format!("gw-{i}"), gossip: a, fabric: a, bump: 1 }
    }

    impl Sim {
        fn new(n: usize) -> Sim {
            Sim {
                members: (0..n).map(|i| Membership::new(id(i), n as u32)).collect(),
                alive: vec![true; n],
                timers: BTreeMap::new(),
                seq: 0,
                now: Duration::ZERO,
                start: Instant::now(),
                nodes: vec![HashMap::new(); n],
                downs: vec![vec![]; n],
                sent: 0,
            }
        }

        fn index(&self, a: SocketAddr) -> Option<usize> {
            self.members.iter().position(|m| m.me().gossip == a)
        }

        /// Carries out every member's outputs, delivering datagrams at once.
        fn pump(&mut self) {
            loop {
                let mut any = false;
                for i in 0..self.members.len() {
                    while let Some(o) = self.members[i].poll() {
                        any = true;
                        if !self.alive[i] {
                            continue;
                        }
                        match o {
                            Output::Send { to, payload } => {
                                self.sent += 1;
                                let Some(j) = self.index(to) else { continue };
                                if self.alive[j] {
                                    let sender = self.members[i].me().name.clone();
                                    let now = self.start + self.now;
                                    let _ = self.members[j].handle_datagram(&sender, &payload, now);
                                }
                            }
                            Output::Timer { after, timer } => {
                                self.seq += 1;
                                self.timers.insert((self.now + after, self.seq), (i, timer));
                            }
                            Output::Nodes { gateway, nodes } => {
                                self.nodes[i].insert(gateway, nodes);
                            }
                            Output::Down(m) => self.downs[i].push(m.name),
                            Output::Up(_) => {}
                        }
                    }
                }
                if !any {
                    return;
                }
            }
        }

        /// Runs the virtual clock forward, ticking every member once a second.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            let mut next_tick = self.now;
            while self.now < end {
                self.pump();
                let next_timer = self.timers.keys().next().map(|k| k.0).unwrap_or(end);
                let next = next_timer.min(next_tick).min(end);
                self.now = next;
                if next == next_tick {
                    for i in 0..self.members.len() {
                        let now = self.start + self.now;
                        self.members[i].tick(now);
                    }
                    next_tick += Duration::from_secs(1);
                }
                while let Some(entry) = self.timers.first_entry() {
                    if entry.key().0 > self.now {
                        break;
                    }
                    let (i, t) = entry.remove();
                    self.members[i].handle_timer(t);
                }
            }
            self.pump();
        }
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo { name: name.into(), creation: 7 }
    }

    #[test]
    fn members_join_through_one_seed_and_every_node_list_spreads() {
        let n = 6;
        let mut sim = Sim::new(n);
        for i in 1..n {
            let seed = sim.members[0].me().gossip;
            sim.members[i].announce(seed);
        }
        // gw-3 has many nodes: its list needs several datagrams.
        for i in 0..n {
            let count = if i == 3 { 400 } else { 2 };
            let list = (0..count).map(|k| node(&format!("n{k}@host{i}"))).collect();
            sim.members[i].set_local_nodes(list);
        }
        sim.run(Duration::from_secs(15));
        for i in 0..n {
            let mut names: Vec<&str> = sim.members[i].members().map(|m| m.name.as_str()).collect();
            names.sort();
            assert_eq!(names.len(), n - 1, "gw-{i} knows {names:?}");
            for j in (0..n).filter(|j| *j != i) {
                let got = sim.nodes[i].get(&format!("gw-{j}")).map(Vec::len);
                assert_eq!(got, Some(if j == 3 { 400 } else { 2 }), "gw-{i}'s view of gw-{j}");
            }
        }
        // A change spreads as a new version.
        sim.members[2].set_local_nodes(vec![node("late@host2")]);
        sim.run(Duration::from_secs(5));
        for i in (0..n).filter(|i| *i != 2) {
            assert_eq!(sim.nodes[i]["gw-2"], vec![node("late@host2")], "gw-{i}");
        }
        // Quiet once everything is known: SWIM's probes (a ping and an ack, now and then an
        // indirect probe or an announcement) and no more, whatever the cluster size.
        let before = sim.sent;
        sim.run(Duration::from_secs(30));
        let per_member_s = (sim.sent - before) as f64 / 30.0 / n as f64;
        assert!(per_member_s < 3.0, "{per_member_s:.1} datagrams/s per member when idle");
        // A silent member is declared down everywhere.
        sim.alive[4] = false;
        sim.run(Duration::from_secs(20));
        for i in (0..n).filter(|i| *i != 4) {
            assert_eq!(sim.downs[i], vec!["gw-4".to_string()], "gw-{i}");
            assert_eq!(sim.members[i].members().count(), n - 2);
        }
    }

    #[test]
    fn a_message_whose_source_is_not_its_signer_is_refused() {
        let mut sim = Sim::new(2);
        let seed = sim.members[0].me().gossip;
        sim.members[1].announce(seed);
        let Some(Output::Send { payload, .. }) = sim.members[1].poll() else { panic!("no announce") };
        // gw-1's announcement, but signed by someone else.
        let r = sim.members[0].handle_datagram("gw-9", &payload, sim.start);
        assert!(matches!(r, Err(MembershipError::Swim(_))), "{r:?}");
        assert_eq!(sim.members[0].members().count(), 0);
        // Signed by gw-1 itself, it is taken.
        sim.members[0].handle_datagram("gw-1", &payload, sim.start).unwrap();
        sim.pump();
        assert_eq!(sim.members[0].members().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["gw-1"]);
    }

    #[test]
    fn node_lists_from_non_members_and_malformed_ones_are_dropped() {
        let mut m = Membership::new(id(0), 3);
        let now = Instant::now();
        let mut p = vec![kind::NODES];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.extend_from_slice(&0u16.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        put_str(&mut p, "x@h");
        p.extend_from_slice(&5u32.to_be_bytes());
        m.handle_datagram("gw-1", &p, now).unwrap();
        assert!(std::iter::from_fn(|| m.poll()).all(|o| !matches!(o, Output::Nodes { .. })));
        for cut in 0..p.len() - 1 {
            assert!(m.handle_datagram("gw-1", &p[..cut], now).is_err(), "cut at {cut}");
        }
        assert!(m.handle_datagram("gw-1", &[9], now).is_err());
    }
}
