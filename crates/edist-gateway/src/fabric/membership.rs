//! Membership between gateways (sans IO): SWIM (the `foca` crate) plus the node registry.
//!
//! Gateways find each other and notice each other's death through SWIM over signed UDP
//! datagrams ([`super::envelope`]). The registry rides along without a link to every gateway:
//! each gateway numbers the versions of its own node list and SWIM gossips only the number (a
//! *digest*); whoever has an older version asks the owner for the list directly, so every list
//! a gateway accepts was signed by the gateway whose nodes it names.
//!
//! The registry reaches each gateway a little after a node registers (a digest, then a pull at
//! the next tick). A name the gateway does not know yet is *looked up* ([`Membership::lookup`]):
//! the likely owners are asked first, then every member; the owner answers with the node, signed
//! like everything else, the others say it is not theirs. So a node that is up anywhere is found
//! in one or two round trips, and a name nobody has is known to be unknown as soon as every
//! member has said so.
//!
//! The caller feeds in verified datagrams ([`Membership::handle_datagram`]), timers and a
//! [`Membership::tick`] every second, and carries out the [`Output`]s.

use crate::wire::NodeInfo;
use edist_proto::codec::Reader;
use foca::{BroadcastHandler, Codec, Config, Foca, Identity, Invalidates, OwnedNotification, Timer};
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
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
    /// `gateway` says `node` is one of its own, answering a [`Membership::lookup`] (its full
    /// list follows at the next pull).
    Node { gateway: String, node: NodeInfo },
    /// Every member asked says `name` is not its node, answering a question asked at `since`
    /// (see [`Membership::lookup`]): callers who asked later may not take it.
    Unknown { name: String, since: Instant },
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
    /// `[question u32][name]`: is this node yours? (`question` tells answers to an earlier
    /// question about the name from answers to this one.)
    pub const WHO: u8 = 3;
    /// `[question u32][version u64][name][creation u32]`: it is, and my node list is at
    /// `version`.
    pub const HAVE: u8 = 4;
    /// `[question u32][name]`: it is not.
    pub const NOT_HERE: u8 = 5;
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

/// How long before a member that has not answered a lookup is asked again (datagrams get lost).
const LOOKUP_RESEND: Duration = Duration::from_millis(100);
/// A lookup nobody concluded is dropped after this: the gateway stopped waiting long before.
const LOOKUP_FORGET: Duration = Duration::from_secs(5);
/// Lookups in flight at most (each holds a set of member names); beyond, a lookup is answered
/// unknown at once. The control port serves 256 requests at a time, each at most one lookup.
const MAX_LOOKUPS: usize = 256;
/// Longest node name (OTP's atom limit; `put_str` could not carry more).
const MAX_NAME: usize = 255;

/// A name asked of the other gateways.
#[derive(Debug)]
struct Lookup {
    started: Instant,
    /// This question's number: answers to another one about the same name say no only of
    /// what was true then.
    question: u32,
    /// Members asked that have not answered, and when they were last asked.
    waiting: HashMap<String, Instant>,
    /// Members that said the node is not theirs.
    denied: HashSet<String>,
    /// Every member has been asked, not only the likely owners.
    wide: bool,
}

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
    /// Names being looked up (see [`Membership::lookup`]).
    lookups: HashMap<String, Lookup>,
    /// The number of the next lookup question.
    next_question: u32,
    /// The latest time the caller gave us, for what foca's notifications start.
    now: Instant,
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
            lookups: HashMap::new(),
            next_question: rand::random(),
            now: Instant::now(),
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
        self.now = self.now.max(now);
        let (&k, body) = payload.split_first().ok_or(MembershipError::Malformed("empty"))?;
        let result = match k {
            kind::SWIM => {
                // Every SWIM datagram carries its sender's node-list version: whoever exchanges
                // probes with a gateway learns of a change it missed in the gossip.
                let mut r = Reader::new(body);
                let v = r.u64().map_err(|_| MembershipError::Malformed("swim"))?;
                let body = r.rest();
                if self.members.contains_key(sender) {
                    let r = self.remotes.entry(sender.to_string()).or_default();
                    r.heard = r.heard.max(v);
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
            kind::WHO => {
                let (question, name) = question_and_name(body).ok_or(MembershipError::Malformed("who"))?;
                self.answer_who(sender, question, &name);
                Ok(())
            }
            kind::HAVE => {
                let bad = |_| MembershipError::Malformed("have");
                let mut r = Reader::new(body);
                let question = r.u32().map_err(bad)?;
                let v = r.u64().map_err(bad)?;
                let name = r.str_u8().map_err(bad)?.to_owned();
                let node = NodeInfo { name, creation: r.u32().map_err(bad)? };
                self.receive_have(sender, question, v, node);
                Ok(())
            }
            kind::NOT_HERE => {
                let (question, name) = question_and_name(body).ok_or(MembershipError::Malformed("not here"))?;
                self.denied(sender, question, &name);
                Ok(())
            }
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
        self.now = self.now.max(now);
        self.lookups.retain(|_, l| now.saturating_duration_since(l.started) < LOOKUP_FORGET);
        if !self.settled && !self.members.is_empty() {
            let grew = *self.grew.get_or_insert(now);
            if now.duration_since(grew) >= JOINING {
                self.settled = true;
                self.config.periodic_announce = Some(announce_every(SETTLED_ANNOUNCE));
                let _ = self.foca.set_config(self.config.clone());
                // Lookups that everyone denied were waiting for members that might still come.
                let names: Vec<String> = self.lookups.keys().cloned().collect();
                for name in names {
                    self.advance_lookup(&name);
                }
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

    /// Asks the other gateways whose node `name` is: those of the `likely` owners that are
    /// members first, every member if they all say no (or none of them is a member). The owner
    /// answers with the node ([`Output::Node`]); once every member has said no,
    /// [`Output::Unknown`] — except while this gateway is still joining, when more members may
    /// come (they are asked as they do) and only the caller's own bound ends the wait.
    ///
    /// `asked` is when the caller's own question began: a lookup of the name that started
    /// earlier is asked afresh (its noes may predate the node), one that started since is the
    /// caller's too, and polling it again asks again the members that have not answered for
    /// [`LOOKUP_RESEND`]: the caller polls, this decides what goes on the wire. Nothing of a
    /// lookup outlives it: the next one asks afresh.
    pub fn lookup(&mut self, name: &str, likely: &[String], asked: Instant, now: Instant) {
        self.now = self.now.max(now);
        if self.lookups.get(name).is_some_and(|l| l.started < asked) {
            self.lookups.remove(name);
        }
        if let Some(l) = self.lookups.get_mut(name) {
            for (member, last) in &mut l.waiting {
                let Some(m) = self.members.get(member) else { continue };
                if now.saturating_duration_since(*last) >= LOOKUP_RESEND {
                    *last = now;
                    self.out
                        .push_back(Output::Send { to: m.gossip, payload: who_message(kind::WHO, l.question, name) });
                }
            }
            return;
        }
        if name.is_empty() || name.len() > MAX_NAME || self.lookups.len() >= MAX_LOOKUPS {
            self.out.push_back(Output::Unknown { name: name.to_string(), since: now });
            return;
        }
        let question = self.next_question;
        self.next_question = self.next_question.wrapping_add(1);
        let mut l = Lookup { started: now, question, waiting: HashMap::new(), denied: HashSet::new(), wide: false };
        for m in likely.iter().filter_map(|g| self.members.get(g)) {
            l.waiting.insert(m.name.clone(), now);
            self.out.push_back(Output::Send { to: m.gossip, payload: who_message(kind::WHO, question, name) });
        }
        self.lookups.insert(name.to_string(), l);
        // No likely owner is a member: ask everyone.
        self.advance_lookup(name);
    }

    /// Answers a member's lookup: the node if it is ours, else "not here".
    fn answer_who(&mut self, sender: &str, question: u32, name: &str) {
        let Some(to) = self.members.get(sender).map(|m| m.gossip) else { return };
        let payload = match self.nodes.iter().find(|n| n.name == name) {
            Some(n) => {
                let mut p = vec![kind::HAVE];
                p.extend_from_slice(&question.to_be_bytes());
                p.extend_from_slice(&self.version.to_be_bytes());
                put_str(&mut p, &n.name);
                p.extend_from_slice(&n.creation.to_be_bytes());
                p
            }
            None => who_message(kind::NOT_HERE, question, name),
        };
        self.out.push_back(Output::Send { to, payload });
    }

    /// A member says `name` is not its node, answering `question`.
    fn denied(&mut self, sender: &str, question: u32, name: &str) {
        let Some(l) = self.lookups.get_mut(name) else { return };
        // Only an answer to this very question, from a member it asked, counts.
        if l.question == question && l.waiting.remove(sender).is_some() {
            l.denied.insert(sender.to_string());
            self.advance_lookup(name);
        }
    }

    /// A member says `node` is its own, its list being at `version`.
    fn receive_have(&mut self, sender: &str, question: u32, version: u64, node: NodeInfo) {
        if !self.members.contains_key(sender) {
            return;
        }
        let r = self.remotes.entry(sender.to_string()).or_default();
        // Its whole list follows at the next tick's pull: the registry stays the owner's list.
        r.heard = r.heard.max(version);
        let fresh = version > r.have;
        if !self.lookups.contains_key(&node.name) {
            return; // not asked (or answered already): only lookups take single nodes
        }
        if fresh {
            // A yes holds whichever question it answers: the node is there at `version`.
            self.lookups.remove(&node.name);
            self.out.push_back(Output::Node { gateway: sender.to_string(), node });
        } else {
            // The list we hold from it is as new: the node is in it (and was taken, or refused,
            // by the gateway), or has gone since. Either way this answer adds nothing.
            self.denied(sender, question, &node.name);
        }
    }

    /// Moves a lookup on once nobody it asked owes an answer: to every member if only the
    /// likely owners were asked, else to its conclusion.
    fn advance_lookup(&mut self, name: &str) {
        let Some(l) = self.lookups.get_mut(name) else { return };
        if !l.waiting.is_empty() {
            return;
        }
        if !l.wide {
            l.wide = true;
            for m in self.members.values().filter(|m| !l.denied.contains(&m.name)) {
                l.waiting.insert(m.name.clone(), self.now);
                self.out.push_back(Output::Send { to: m.gossip, payload: who_message(kind::WHO, l.question, name) });
            }
            if !l.waiting.is_empty() {
                return;
            }
        }
        if !self.settled {
            return; // still joining: a member yet to come may have it
        }
        if let Some(l) = self.lookups.remove(name) {
            self.out.push_back(Output::Unknown { name: name.to_string(), since: l.started });
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
        let nodes_err = |_| MembershipError::Malformed("nodes");
        let mut rd = Reader::new(body);
        let (version, part, parts) =
            (rd.u64().map_err(nodes_err)?, rd.u16().map_err(nodes_err)?, rd.u16().map_err(nodes_err)?);
        if parts == 0 || parts > MAX_PARTS || part >= parts {
            return Err(bad);
        }
        let count = rd.u16().map_err(nodes_err)?;
        let mut nodes = Vec::new();
        for _ in 0..count {
            let name = rd.str_u8().map_err(|_| MembershipError::Malformed("node name"))?.to_owned();
            let creation = rd.u32().map_err(|_| MembershipError::Malformed("node creation"))?;
            nodes.push(NodeInfo { name, creation });
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
                    // Lookups that asked everyone ask the newcomer too.
                    for (name, l) in self.lookups.iter_mut().filter(|(_, l)| l.wide) {
                        l.denied.remove(&m.name);
                        l.waiting.insert(m.name.clone(), self.now);
                        let payload = who_message(kind::WHO, l.question, name);
                        self.out.push_back(Output::Send { to: m.gossip, payload });
                    }
                    self.out.push_back(Output::Up(m));
                }
                // (A former life going down says nothing about the current one.)
                OwnedNotification::MemberDown(m) if self.members.get(&m.name).is_some_and(|cur| cur.bump <= m.bump) => {
                    self.members.remove(&m.name);
                    self.remotes.remove(&m.name);
                    // It will not answer: lookups waiting for it move on without it.
                    let owed: Vec<String> = self
                        .lookups
                        .iter_mut()
                        .filter_map(|(name, l)| l.waiting.remove(&m.name).map(|_| name.clone()))
                        .collect();
                    for name in owed {
                        self.advance_lookup(&name);
                    }
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

/// A `WHO` or `NOT_HERE` datagram: `question` about `name`.
fn who_message(k: u8, question: u32, name: &str) -> Vec<u8> {
    let mut p = vec![k];
    p.extend_from_slice(&question.to_be_bytes());
    put_str(&mut p, name);
    p
}

/// The body of a `WHO` or `NOT_HERE` datagram.
fn question_and_name(body: &[u8]) -> Option<(u32, String)> {
    let mut r = Reader::new(body);
    let question = r.u32().ok()?;
    Some((question, r.str_u8().ok()?.to_owned()))
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
        let mut r = Reader::new(data);
        let origin = r.str_u8().ok()?.to_owned();
        let version = r.u64().ok()?;
        Some((Digest { origin, version }, r.position()))
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
        /// What lookups found (gateway, node) and concluded nobody has, per member.
        found: Vec<Vec<(String, NodeInfo)>>,
        unknown: Vec<Vec<String>>,
        /// Lookup datagrams sent: (from, to, kind).
        lookup_log: Vec<(usize, usize, u8)>,
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
                found: vec![vec![]; n],
                unknown: vec![vec![]; n],
                lookup_log: vec![],
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
                                if let Some(&k @ (kind::WHO | kind::HAVE | kind::NOT_HERE)) = payload.first() {
                                    self.lookup_log.push((i, j, k));
                                }
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
                            Output::Node { gateway, node } => self.found[i].push((gateway, node)),
                            Output::Unknown { name, .. } => self.unknown[i].push(name),
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

    /// A converged cluster of `n` (settled: joining is over) where gw-1 has just registered
    /// `b@h1`: its digest is out, but nobody has pulled its list yet.
    fn converged_then_b_registers(n: usize) -> Sim {
        let mut sim = Sim::new(n);
        for i in 1..n {
            let seed = sim.members[0].me().gossip;
            sim.members[i].announce(seed);
        }
        sim.run(Duration::from_secs(15));
        sim.members[1].set_local_nodes(vec![node("b@h1")]);
        sim.pump();
        assert!(sim.nodes[0].get("gw-1").is_none_or(|l| l.is_empty()), "gw-0 pulled already");
        sim.lookup_log.clear();
        sim
    }

    fn at(sim: &Sim, after: Duration) -> Instant {
        sim.start + sim.now + after
    }

    fn have_message(question: u32, version: u64, name: &str) -> Vec<u8> {
        let mut p = vec![kind::HAVE];
        p.extend_from_slice(&question.to_be_bytes());
        p.extend_from_slice(&version.to_be_bytes());
        put_str(&mut p, name);
        p.extend_from_slice(&7u32.to_be_bytes());
        p
    }

    fn sent_by_kind(sim: &Sim, k: u8) -> Vec<(usize, usize)> {
        sim.lookup_log.iter().filter(|(_, _, kk)| *kk == k).map(|(f, t, _)| (*f, *t)).collect()
    }

    #[test]
    fn a_lookup_finds_a_node_before_its_list_spreads() {
        let mut sim = converged_then_b_registers(4);
        let now = at(&sim, Duration::ZERO);
        sim.members[0].lookup("b@h1", &[], now, now);
        sim.pump();
        // Everyone was asked (no likely owner given); the owner said yes, the others no.
        assert_eq!(sent_by_kind(&sim, kind::WHO).len(), 3);
        assert_eq!(sent_by_kind(&sim, kind::HAVE), [(1, 0)]);
        assert_eq!(sent_by_kind(&sim, kind::NOT_HERE).len(), 2);
        assert_eq!(sim.found[0], [("gw-1".to_string(), node("b@h1"))]);
        assert!(sim.unknown[0].is_empty(), "a yes is final: the late noes change nothing");
        // The owner's whole list follows at the next tick's pull.
        sim.run(Duration::from_secs(2));
        assert_eq!(sim.nodes[0]["gw-1"], vec![node("b@h1")]);
    }

    #[test]
    fn the_likely_owner_is_asked_first_and_everyone_else_only_if_it_says_no() {
        let mut sim = converged_then_b_registers(4);
        let now = at(&sim, Duration::ZERO);
        sim.members[0].lookup("b@h1", &["gw-1".to_string(), "gw-9".to_string()], now, now);
        sim.pump();
        assert_eq!(sent_by_kind(&sim, kind::WHO), [(0, 1)], "only the likely owner (gw-9 is no member)");
        assert_eq!(sim.found[0].len(), 1);

        let mut sim = converged_then_b_registers(4);
        sim.members[0].lookup("b@h1", &["gw-2".to_string()], now, now);
        sim.pump();
        let who = sent_by_kind(&sim, kind::WHO);
        assert_eq!(who[0], (0, 2));
        let mut rest = who[1..].to_vec();
        rest.sort();
        assert_eq!(rest, [(0, 1), (0, 3)], "gw-2 said no: the others, and not gw-2 again");
        assert_eq!(sim.found[0], [("gw-1".to_string(), node("b@h1"))]);
    }

    #[test]
    fn a_name_nobody_has_is_unknown_once_every_member_said_no_and_nothing_is_remembered() {
        let mut sim = converged_then_b_registers(3);
        let now = at(&sim, Duration::ZERO);
        sim.members[0].lookup("nobody@h", &[], now, now);
        sim.pump();
        assert_eq!(sim.unknown[0], ["nobody@h"]);
        assert!(sim.found[0].is_empty());
        // The next lookup asks again: the node may have come meanwhile.
        sim.members[2].set_local_nodes(vec![node("nobody@h")]);
        sim.pump();
        sim.lookup_log.clear();
        sim.members[0].lookup("nobody@h", &[], now, now);
        sim.pump();
        assert_eq!(sent_by_kind(&sim, kind::WHO).len(), 2);
        assert_eq!(sim.found[0], [("gw-2".to_string(), node("nobody@h"))]);
        assert_eq!(sim.unknown[0].len(), 1);
    }

    #[test]
    fn a_silent_member_is_asked_again_and_its_silence_is_no_answer() {
        let mut sim = converged_then_b_registers(3);
        sim.alive[2] = false;
        let t0 = at(&sim, Duration::ZERO);
        sim.members[0].lookup("nobody@h", &[], t0, t0);
        sim.pump();
        assert!(sim.unknown[0].is_empty(), "gw-2 has not answered");
        // Polled again at once: nothing resent; after the resend interval, only gw-2 again.
        sim.lookup_log.clear();
        sim.members[0].lookup("nobody@h", &[], t0, t0 + Duration::from_millis(10));
        sim.pump();
        assert!(sent_by_kind(&sim, kind::WHO).is_empty());
        sim.members[0].lookup("nobody@h", &[], t0, t0 + LOOKUP_RESEND);
        sim.pump();
        assert_eq!(sent_by_kind(&sim, kind::WHO), [(0, 2)]);
        // Back, it answers the resent question.
        sim.alive[2] = true;
        sim.members[0].lookup("nobody@h", &[], t0, t0 + LOOKUP_RESEND * 2);
        sim.pump();
        assert_eq!(sim.unknown[0], ["nobody@h"]);
    }

    #[test]
    fn a_later_caller_asks_afresh_and_answers_to_the_old_question_do_not_count() {
        let mut sim = converged_then_b_registers(3);
        sim.alive[2] = false;
        let t0 = at(&sim, Duration::ZERO);
        sim.members[0].lookup("late@h1", &[], t0, t0);
        sim.pump();
        let old = sim.members[0].lookups["late@h1"].question;
        assert_eq!(sim.members[0].lookups["late@h1"].denied.len(), 1, "gw-1 said no");
        // late@h1 registers now; a caller who asks after that must not get gw-1's old no.
        sim.members[1].set_local_nodes(vec![node("b@h1"), node("late@h1")]);
        sim.pump();
        sim.lookup_log.clear();
        let t1 = t0 + Duration::from_millis(20);
        sim.members[0].lookup("late@h1", &[], t1, t1);
        let l = &sim.members[0].lookups["late@h1"];
        assert!(l.question != old && l.denied.is_empty() && l.started == t1);
        // gw-2's answer to the old question arrives late: it does not count.
        sim.members[0].handle_datagram("gw-2", &who_message(kind::NOT_HERE, old, "late@h1"), t1).unwrap();
        assert!(sim.members[0].lookups["late@h1"].waiting.contains_key("gw-2"));
        sim.pump();
        assert_eq!(sim.found[0], [("gw-1".to_string(), node("late@h1"))], "asked again, gw-1 says yes");
        // The first caller, polling on, does not restart what started after it asked.
        sim.members[0].lookup("nobody@h", &[], t1, t1);
        let q = sim.members[0].lookups["nobody@h"].question;
        sim.members[0].lookup("nobody@h", &[], t0, t1 + LOOKUP_RESEND);
        assert_eq!(sim.members[0].lookups["nobody@h"].question, q);
    }

    #[test]
    fn while_joining_a_lookup_waits_for_members_and_asks_them_as_they_come() {
        let mut sim = Sim::new(3);
        sim.members[2].set_local_nodes(vec![node("c@h2")]);
        let t0 = at(&sim, Duration::ZERO);
        sim.members[0].lookup("c@h2", &[], t0, t0);
        sim.members[0].lookup("nobody@h", &[], t0, t0);
        sim.pump();
        assert!(sim.unknown[0].is_empty() && sim.found[0].is_empty(), "nobody to ask yet: wait");
        for i in 1..3 {
            let seed = sim.members[0].me().gossip;
            sim.members[i].announce(seed);
        }
        sim.run(Duration::from_millis(500));
        assert_eq!(sim.found[0], [("gw-2".to_string(), node("c@h2"))], "asked as it joined");
        assert!(sim.unknown[0].is_empty(), "every member said no, but more may come while joining");
        // Joining ends (no new member for a while); by then the caller gave up long ago, and
        // the lookup is forgotten. Asked now, the noes conclude it.
        sim.run(Duration::from_secs(7));
        assert!(sim.members[0].settled);
        assert!(sim.unknown[0].is_empty() && sim.members[0].lookups.is_empty());
        let now = at(&sim, Duration::ZERO);
        sim.members[0].lookup("nobody@h", &[], now, now);
        sim.pump();
        assert_eq!(sim.unknown[0], ["nobody@h"]);
    }

    #[test]
    fn answers_nobody_asked_for_and_stale_ones_take_nothing() {
        let mut sim = converged_then_b_registers(3);
        sim.run(Duration::from_secs(2)); // gw-0 now holds gw-1's list with b
        let now = at(&sim, Duration::ZERO);
        // A yes nobody asked for: no node from it.
        let have = have_message(1, 99, "x@h1");
        sim.members[0].handle_datagram("gw-1", &have, now).unwrap();
        sim.pump();
        assert!(sim.found[0].is_empty());
        // A yes about a list no newer than ours (the gateway refused b, say): it counts as a no.
        sim.members[0].lookup("b@h1", &[], now, now);
        sim.pump();
        assert!(sim.found[0].is_empty());
        assert_eq!(sim.unknown[0], ["b@h1"]);
        // Questions from non-members go unanswered.
        let before = sim.lookup_log.len();
        sim.members[1].handle_datagram("gw-9", &who_message(kind::WHO, 1, "b@h1"), now).unwrap();
        sim.pump();
        assert_eq!(sim.lookup_log.len(), before);
        // A no from a member that was not asked changes nothing.
        sim.members[0].lookup("nobody@h", &["gw-1".to_string()], now, now);
        sim.members[0].handle_datagram("gw-2", &who_message(kind::NOT_HERE, 1, "nobody@h"), now).unwrap();
        assert!(sim.members[0].lookups["nobody@h"].denied.is_empty());
    }

    #[test]
    fn lookups_are_bounded_and_malformed_answers_refused() {
        let mut m = Membership::new(id(0), 3);
        let now = Instant::now();
        m.lookup(&"x".repeat(MAX_NAME + 1), &[], now, now);
        m.lookup("", &[], now, now);
        let unknown = std::iter::from_fn(|| m.poll()).filter(|o| matches!(o, Output::Unknown { .. })).count();
        assert_eq!(unknown, 2, "names no node can have");
        for i in 0..MAX_LOOKUPS {
            m.lookup(&format!("n{i}@h"), &[], now, now);
        }
        assert!(m.poll().is_none(), "no member to ask: waiting");
        m.lookup("one-more@h", &[], now, now);
        assert_eq!(m.poll(), Some(Output::Unknown { name: "one-more@h".into(), since: now }));
        // Forgotten after a while (whoever asked gave up long before).
        m.tick(now + LOOKUP_FORGET);
        assert!(m.lookups.is_empty());
        let have = have_message(1, 1, "x@h");
        for k in [kind::WHO, kind::NOT_HERE] {
            assert!(m.handle_datagram("gw-1", &[k], now).is_err());
            assert!(m.handle_datagram("gw-1", &[k, 5, b'a'], now).is_err(), "a name cut short");
        }
        for cut in 1..have.len() {
            assert!(m.handle_datagram("gw-1", &have[..cut], now).is_err(), "cut at {cut}");
        }
    }
}
