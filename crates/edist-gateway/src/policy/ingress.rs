//! Ingress inspection, sans-IO: the packets one lane of a relayed connection brings from a peer
//! gateway go through [`Ingress::packet`] before they reach a local node, and come out
//! forwarded (untouched), held (fragments of a message not complete yet), or refused — with a
//! reply for the sender where Erlang would otherwise wait for a timeout.
//!
//! A message is judged in the order that keeps refusals cheap and answered:
//!
//! 1. size (no decoding);
//! 2. the control message alone, against the role's rules ([`Ingress`]'s `rules`): names,
//!    signals, the OTP services (`net_kernel` for ping), and — with `capabilities` — whether
//!    the pid, alias, link, monitor or spawn request it refers to was handed to the peer;
//! 3. only then the payload: depth, funs, pids/aliases/ports it passes on (with `capabilities`,
//!    only ones the peer was handed or its own), and atoms new to the nodes here, counted
//!    against the atom budget.
//!
//! A refused monitor, link, spawn request or `gen` call is answered as OTP would answer one to
//! a process that is not there (`noproc`; `edist_refused` for spawns and for calls refused for
//! what they carry), whatever the reason, so callers never wait for a timeout. Rates are
//! charged after inspection and only for what passes: refused traffic has a budget of its own
//! ([`super::state::REFUSED_RATE_FACTOR`]) and delays only its own lane.
//!
//! Fragments of one message travel on one lane (a lane carries whole senders), so each lane
//! reassembles on its own, bounded by the role's `max_message`; atoms, rates and capabilities
//! belong to the peer gateway and are shared by all its lanes and relays ([`PeerState`]).

use super::otp;
use super::role::{glob, Role};
use super::state::{LinkBy, PeerState, Thing, REFUSED_RATE_FACTOR, REFUSED_RATE_MIN};
use edist_proto::dist::control::{encode_message, Control, ProcRef};
use edist_proto::dist::fragment::{frame_message, FragmentError, Reassembler};
use edist_proto::dist::header::{parse_packet, AtomCache, Packet};
use edist_proto::dist::DFlags;
use edist_proto::etf::{self, Atom, AtomText, DecodeError, Decoder, Limits, Pid, Reader, Ref, Term, Token, Visitor};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a message was refused (the counters' `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// A `spawn_request` (rpc) outside the role's MFAs.
    Spawn,
    /// A send to, or monitor of, a registered name the role does not allow.
    Name,
    /// A request to an OTP service (`net_kernel`) outside what the role lets through (ping).
    Service,
    /// A kind of signal the role does not allow (exit, link, group leader, ...).
    Signal,
    /// A pid, alias or port the peer was not handed (sent to, monitored, passed on), a `DOWN`
    /// or spawn reply for a monitor or request no local process made.
    Capability,
    /// A link to, or an exit over a link with, a local process that did not make the link.
    Link,
    /// A fun in a message, for a role without `funs`.
    Fun,
    /// A message over the role's size limit.
    Size,
    /// A term nested deeper than the role allows.
    Depth,
    /// The peer's atom budget is used up.
    Atoms,
    /// A message that does not decode (a broken term, an unknown control message, a map with
    /// a repeated key).
    Malformed,
}

impl Reason {
    /// The label used in logs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Spawn => "spawn",
            Reason::Name => "name",
            Reason::Service => "service",
            Reason::Signal => "signal",
            Reason::Capability => "capability",
            Reason::Link => "link",
            Reason::Fun => "fun",
            Reason::Size => "size",
            Reason::Depth => "depth",
            Reason::Atoms => "atoms",
            Reason::Malformed => "malformed",
        }
    }
}

/// A refusal: why, of what, and a description for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    /// What was asked for, in a few words with low cardinality: a registered name, an MFA, a
    /// kind of signal (the refusal log keys on it).
    pub target: String,
    /// One line for the log.
    pub detail: String,
    /// Audit mode: it was only noted; the message passed.
    pub audit: bool,
}

impl Refusal {
    fn new(reason: Reason, target: impl Into<String>, detail: impl Into<String>) -> Refusal {
        Refusal { reason, target: target.into(), detail: detail.into(), audit: false }
    }
}

/// What became of one packet.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Packets (with length prefix) to write to the local node, in order, after [`Verdict::wait`].
    pub forward: Vec<Vec<u8>>,
    /// Packets (with length prefix) to send back to the peer, from the local node's side.
    pub reply: Vec<Vec<u8>>,
    /// The message was refused (or, in audit mode, would have been).
    pub refused: Option<Refusal>,
    /// How long the lane waits before forwarding, under the role's rates (the debt is taken).
    pub wait: Duration,
}

/// A packet that breaks the protocol (not a policy matter): the relay ends.
#[derive(Debug, thiserror::Error)]
#[error("malformed packet from the peer: {0}")]
pub struct Malformed(String);

/// Shared per peer gateway.
pub type SharedPeer = Arc<Mutex<PeerState>>;

/// One relayed connection under a role: the nodes at both ends and the peer's shared state.
/// Capabilities, links and monitors made on it are forgotten when it goes (dropped).
#[derive(Debug)]
pub struct Session {
    pub role: Arc<Role>,
    pub peer: SharedPeer,
    /// The node behind this gateway.
    pub local: Atom,
    /// The node behind the peer gateway.
    pub remote: Atom,
    id: u64,
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A connection between `local` and `remote` (behind the peer whose state is `peer`).
    pub fn new(role: Arc<Role>, peer: SharedPeer, local: &str, remote: &str) -> Arc<Session> {
        let id = SESSIONS.fetch_add(1, Ordering::Relaxed);
        Arc::new(Session { role, peer, local: Atom::from(local), remote: Atom::from(remote), id })
    }

    /// The inspector of one incoming lane.
    pub fn ingress(self: &Arc<Self>) -> Ingress {
        Ingress::new(self.clone())
    }

    /// The observer of what the local node sends to the peer (see [`super::Egress`]).
    pub fn egress(self: &Arc<Self>) -> super::Egress {
        super::Egress::new(self.clone())
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerState> {
        lock(&self.peer)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        lock(&self.peer).forget_session(self.id);
    }
}

/// Inspects one lane's packets under a role.
#[derive(Debug)]
pub struct Ingress {
    session: Arc<Session>,
    /// The envelope the peer's node uses (dist header with fragments, or pass-through),
    /// learnt from its packets; replies use the same.
    flags: DFlags,
    cache: AtomCache,
    reassembler: Reassembler,
    /// Raw packets of messages being reassembled, by sequence id (forwarded as they came).
    held: HashMap<u64, Vec<Vec<u8>>>,
    /// Sequences refused midway: their remaining fragments are dropped.
    dropping: HashSet<u64>,
    /// Sequences over the size limit in audit mode: their remaining fragments pass unread.
    passing: HashSet<u64>,
    /// Sequence ids of replies this side frames.
    next_seq: u64,
}

/// The pass-through envelope byte (no dist header).
const PASS_THROUGH: u8 = 112;

/// Most messages a lane reassembles at once (one sender per lane at a time, normally).
const MAX_OPEN: usize = 16;

/// Most sequences a lane drops or passes unread at once (each ends with its last fragment).
const MAX_SKIPPING: usize = 64;

/// Payloads larger than this are not decoded to recognise a spawn's arguments (an `erpc` call's
/// are a few hundred bytes; a larger one is judged by its plain MFA).
const MAX_SPAWN_ARGS: usize = 64 << 10;

/// What a refused message is answered with, and what the local node gets instead of it.
#[derive(Debug, Default)]
struct Answers {
    reply: Vec<Control>,
    forward: Vec<Control>,
}

/// What an allowed message changes in the peer's capabilities.
#[derive(Debug)]
enum Effect {
    None,
    AddLink { local: Pid, peer: Pid },
    RemoveLink { local: Pid, peer: Pid },
    RemoveMonitor(Ref),
    SpawnAnswered { req: Ref, parent: Pid, child: Option<Pid>, link: bool, monitor: bool },
}

impl Ingress {
    /// An inspector for the packets of `session`'s peer node.
    pub fn new(session: Arc<Session>) -> Self {
        let role = &session.role;
        let max = if role.max_message == 0 { usize::MAX } else { role.max_message };
        Ingress {
            reassembler: Reassembler::new(MAX_OPEN, max, max.saturating_mul(2)),
            flags: DFlags(DFlags::FRAGMENTS),
            session,
            cache: AtomCache::default(),
            held: HashMap::new(),
            dropping: HashSet::new(),
            passing: HashSet::new(),
            next_seq: 1,
        }
    }

    /// True when packets need no inspection at all (the fast path).
    pub fn is_open(&self) -> bool {
        self.session.role.is_open()
    }

    fn role(&self) -> &Role {
        &self.session.role
    }

    /// Inspects one packet (with its u32 length prefix) arriving at `now`.
    pub fn packet(&mut self, packet: Vec<u8>, now: Instant) -> Result<Verdict, Malformed> {
        if self.is_open() || packet.len() <= 4 {
            return Ok(Verdict { forward: vec![packet], ..Default::default() });
        }
        // The relay does not pass the atom-cache flag, so the envelope alone says how to read
        // a packet: 112 = pass-through, 131 = dist header (with fragments when negotiated).
        self.flags = match packet.get(4) {
            Some(&PASS_THROUGH) => DFlags(0),
            _ => DFlags(DFlags::FRAGMENTS),
        };
        let data = packet.get(4..).unwrap_or_default();
        let parsed = parse_packet(data, self.flags, &mut self.cache).map_err(|e| Malformed(e.to_string()))?;
        let (atom_refs, body, versioned, raw) = match parsed {
            Packet::Message { atom_refs, body, versioned } => {
                let body = body.to_vec();
                (atom_refs, body, versioned, vec![packet])
            }
            Packet::FragmentStart { seq, fragments, atom_refs, body } => {
                if self.dropping.contains(&seq) || self.passing.contains(&seq) || self.held.contains_key(&seq) {
                    return Err(Malformed(format!("fragment sequence {seq} started twice")));
                }
                match self.reassembler.start(seq, fragments, atom_refs, body) {
                    Ok(None) => {
                        self.held.insert(seq, vec![packet]);
                        return Ok(Verdict::default());
                    }
                    Ok(Some(m)) => (m.atom_refs, m.body, false, vec![packet]),
                    Err(FragmentError::TooLarge(_)) => return self.too_large(seq, fragments > 1, packet, now),
                    Err(e) => return Err(Malformed(e.to_string())),
                }
            }
            Packet::FragmentCont { seq, fragment, body } => {
                if self.passing.contains(&seq) {
                    if fragment == 1 {
                        self.passing.remove(&seq);
                    }
                    let mut v = Verdict { forward: vec![packet], ..Default::default() };
                    v.wait = self.charge(&v, false, now);
                    return Ok(v);
                }
                if self.dropping.contains(&seq) {
                    if fragment == 1 {
                        self.dropping.remove(&seq);
                    }
                    return Ok(Verdict::default());
                }
                match self.reassembler.cont(seq, fragment, body) {
                    Ok(None) => {
                        self.held.entry(seq).or_default().push(packet);
                        return Ok(Verdict::default());
                    }
                    Ok(Some(m)) => {
                        let mut raw = self.held.remove(&seq).unwrap_or_default();
                        raw.push(packet);
                        (m.atom_refs, m.body, false, raw)
                    }
                    Err(FragmentError::TooLarge(_)) => return self.too_large(seq, fragment > 1, packet, now),
                    Err(e) => return Err(Malformed(e.to_string())),
                }
            }
        };
        Ok(self.whole(&body, &atom_refs, versioned, raw, now))
    }

    /// A fragmented message over the size limit: dropped, and its later fragments too (in audit
    /// mode: noted, and it passes, unread).
    fn too_large(&mut self, seq: u64, more: bool, packet: Vec<u8>, now: Instant) -> Result<Verdict, Malformed> {
        self.reassembler.abandon(seq);
        let mut raw = self.held.remove(&seq).unwrap_or_default();
        raw.push(packet);
        let limit = self.role().max_message;
        let mut refusal = Refusal::new(Reason::Size, "message", format!("message over {limit} bytes"));
        let audit = self.role().audit;
        let skipping = if audit { &mut self.passing } else { &mut self.dropping };
        if more {
            if skipping.len() >= MAX_SKIPPING {
                return Err(Malformed("too many oversized messages in flight".into()));
            }
            skipping.insert(seq);
        }
        let mut v = Verdict::default();
        if audit {
            refusal.audit = true;
            v.forward = raw;
        } else if let Some(start) = raw.first() {
            // Answered like a whole refused message (a call's monitor fires, a spawn fails),
            // from what the first fragment says: its control message and the payload's head.
            let answers = self.start_answers(start);
            v.reply = answers.reply.iter().flat_map(|c| self.frame(c)).collect();
            v.forward = answers.forward.iter().flat_map(|c| self.frame(c)).collect();
        }
        v.refused = Some(refusal);
        v.wait = self.charge(&v, !audit, now);
        Ok(v)
    }

    /// The answers to a fragmented message refused for its size, read from its first fragment
    /// (length prefix included); none if that does not decode.
    fn start_answers(&self, start: &[u8]) -> Answers {
        let data = start.get(4..).unwrap_or_default();
        let Ok(Packet::FragmentStart { atom_refs, body, .. }) =
            parse_packet(data, self.flags, &mut AtomCache::default())
        else {
            return Answers::default();
        };
        let role = self.role();
        let limits = Limits {
            max_depth: if role.max_depth == 0 { Limits::default().max_depth } else { role.max_depth },
            ..Limits::default()
        };
        let mut r = Reader::new(body);
        let control =
            Decoder::with_atom_refs(&limits, &atom_refs).term(&mut r).ok().and_then(|t| Control::from_term(t).ok());
        match control {
            Some(c) => {
                let payload = c.has_payload().then(|| r.rest());
                self.answers(&c, payload, Reason::Size)
            }
            None => Answers::default(),
        }
    }

    /// A whole message (its raw packets in `raw`): judged, then charged to the rates.
    fn whole(&mut self, body: &[u8], atom_refs: &[Atom], versioned: bool, raw: Vec<Vec<u8>>, now: Instant) -> Verdict {
        let (refusal, answers) = self.judge(body, atom_refs, versioned);
        let mut v = Verdict::default();
        match refusal {
            None => v.forward = raw,
            Some(mut r) if self.role().audit => {
                r.audit = true;
                v.forward = raw;
                v.refused = Some(r);
            }
            Some(r) => {
                v.refused = Some(r);
                v.reply = answers.reply.iter().flat_map(|c| self.frame(c)).collect();
                v.forward = answers.forward.iter().flat_map(|c| self.frame(c)).collect();
            }
        }
        let refused = v.refused.as_ref().is_some_and(|r| !r.audit);
        v.wait = self.charge(&v, refused, now);
        v
    }

    /// Charges what passes to the role's rates, and what was refused to the refusal budget.
    fn charge(&self, v: &Verdict, refused: bool, now: Instant) -> Duration {
        let role = self.role();
        let mut peer = self.session.lock();
        if refused {
            let rate = role.messages_per_sec.saturating_mul(REFUSED_RATE_FACTOR).max(REFUSED_RATE_MIN);
            return peer.refused.take(rate, 1, now);
        }
        if role.messages_per_sec == 0 && role.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let bytes: usize = v.forward.iter().map(Vec::len).sum();
        let m = peer.messages.take(role.messages_per_sec, 1, now);
        m.max(peer.bytes.take(role.bytes_per_sec, bytes as u64, now))
    }

    /// The verdict on one whole message, and the answers if it is refused.
    fn judge(&mut self, body: &[u8], atom_refs: &[Atom], versioned: bool) -> (Option<Refusal>, Answers) {
        let role = self.session.role.clone();
        let limits = Limits {
            max_depth: if role.max_depth == 0 { Limits::default().max_depth } else { role.max_depth },
            ..Limits::default()
        };
        let malformed = |e: &dyn std::fmt::Display| {
            (Some(Refusal::new(Reason::Malformed, "message", format!("undecodable message: {e}"))), Answers::default())
        };
        // The control message (and where the payload starts).
        let mut r = Reader::new(body);
        if versioned && !matches!(r.u8(), Ok(etf::tag::VERSION)) {
            return malformed(&"no version byte");
        }
        let control_start = r.position();
        let control = match Decoder::with_atom_refs(&limits, atom_refs).term(&mut r) {
            Ok(t) => t,
            Err(DecodeError::TooDeep(d)) => {
                return (
                    Some(Refusal::new(Reason::Depth, "control", format!("term deeper than {d}"))),
                    Answers::default(),
                )
            }
            Err(e) => return malformed(&e),
        };
        let control_bytes = body.get(control_start..r.position()).unwrap_or_default();
        let control = match Control::from_term(control) {
            Ok(c) => c,
            Err(e) => return malformed(&e),
        };
        let payload = match (control.has_payload(), versioned) {
            (false, _) if r.remaining() != 0 => return malformed(&"bytes after the control message"),
            (false, _) => None,
            (true, true) if !matches!(r.u8(), Ok(etf::tag::VERSION)) => return malformed(&"no version byte"),
            (true, _) => Some(r.rest()),
        };
        let answers = |reason: Reason, this: &Self| this.answers(&control, payload, reason);
        // Size: known without decoding anything more.
        if role.max_message != 0 && body.len() > role.max_message {
            let r = Refusal::new(
                Reason::Size,
                "message",
                format!("message of {} bytes, over {}", body.len(), role.max_message),
            );
            return (Some(r), answers(Reason::Size, self));
        }
        let session = self.session.clone();
        let mut peer = session.lock();
        // The control message against the rules.
        let effect = match self.rules(&control, payload, &mut peer) {
            Ok(e) => e,
            Err(refusal) if role.audit => {
                // Noted; the message passes, as if allowed.
                drop(peer);
                return (Some(refusal), Answers::default());
            }
            Err(refusal) => {
                drop(peer);
                let a = answers(refusal.reason, self);
                return (Some(refusal), a);
            }
        };
        // The terms: depth, funs, what they pass on, atoms.
        let exempt = [self.session.local.as_str(), self.session.remote.as_str()];
        let mut inspect = Inspect {
            peer: &mut peer,
            remote: self.session.remote.as_str(),
            exempt,
            capabilities: role.capabilities,
            funs: role.funs,
            budget: role.atom_budget,
            new_atoms: HashSet::new(),
            stop: None,
            payload: false,
        };
        for a in atom_refs {
            inspect.atom(a.as_str());
        }
        let walked = (|| -> Result<(), DecodeError> {
            etf::walk(&mut Reader::new(control_bytes), &limits, atom_refs.len(), &mut inspect)?;
            if let Some(p) = payload {
                inspect.payload = true;
                let mut pr = Reader::new(p);
                etf::walk(&mut pr, &limits, atom_refs.len(), &mut inspect)?;
                if pr.remaining() != 0 {
                    return Err(DecodeError::TrailingBytes(pr.remaining()));
                }
            }
            Ok(())
        })();
        let refusal = match (inspect.stop.take(), walked) {
            (Some(r), _) => Some(r),
            (None, Err(DecodeError::TooDeep(d))) => {
                Some(Refusal::new(Reason::Depth, "message", format!("term deeper than {d}")))
            }
            (None, Err(e)) => Some(Refusal::new(Reason::Malformed, "message", format!("undecodable message: {e}"))),
            (None, Ok(())) => None,
        };
        let new_atoms = std::mem::take(&mut inspect.new_atoms);
        let refusal = refusal.or_else(|| {
            (role.atom_budget != 0 && peer.atoms.charged() + new_atoms.len() > role.atom_budget)
                .then(|| Refusal::new(Reason::Atoms, "atoms", format!("atom budget of {} used up", role.atom_budget)))
        });
        if refusal.is_some() && !role.audit {
            drop(peer);
            let reason = refusal.as_ref().map_or(Reason::Malformed, |r| r.reason);
            let a = answers(reason, self);
            return (refusal, a);
        }
        // It reaches the node: its new atoms use the budget, its signal changes capabilities.
        peer.atoms.charge(new_atoms, role.atom_budget);
        self.apply(effect, &mut peer);
        (refusal, Answers::default())
    }

    fn apply(&self, effect: Effect, peer: &mut PeerState) {
        let (session, max) = (self.session.id(), self.role().max_grants);
        let caps = &mut peer.caps;
        match effect {
            Effect::None => {}
            Effect::AddLink { local, peer } => caps.add_link(&local, &peer, LinkBy::Peer, session, max),
            Effect::RemoveLink { local, peer } => caps.remove_link(&local, &peer),
            Effect::RemoveMonitor(r) => caps.remove_monitor(&r),
            Effect::SpawnAnswered { req, parent, child, link, monitor } => {
                let _ = caps.take_spawn(&req, &parent);
                if let Some(child) = child {
                    if link {
                        caps.add_link(&parent, &child, LinkBy::Local, session, max);
                    }
                    if monitor {
                        caps.add_monitor(&req, &parent, session, max);
                    }
                }
            }
        }
    }

    /// The role's rules for one control message (payload unread but for OTP calls and spawns).
    fn rules(&self, control: &Control, payload: Option<&[u8]>, peer: &mut PeerState) -> Result<Effect, Refusal> {
        use Control::*;
        let role = self.role();
        let caps = role.capabilities;
        let remote = self.session.remote.as_str();
        let signal = |what: &str| Err(Refusal::new(Reason::Signal, what, format!("{what} signal")));
        match control {
            RegSend { from, to } | RegSendTT { from, to, .. } => {
                if role.ping && to.as_str() == "net_kernel" && payload.is_some_and(|p| otp::is_ping(p, from, remote)) {
                    return Ok(Effect::None);
                }
                if role.name_allowed(to.as_str()) {
                    return Ok(Effect::None);
                }
                if role.ping && to.as_str() == "net_kernel" {
                    return Err(Refusal::new(
                        Reason::Service,
                        "net_kernel",
                        "request to net_kernel other than net_adm:ping's is_auth",
                    ));
                }
                Err(Refusal::new(Reason::Name, to.as_str(), format!("send to registered name {to}")))
            }
            Send { to } | SendTT { to, .. } | SendSender { to, .. } | SendSenderTT { to, .. } => {
                if !role.send_to_pids {
                    return Err(Refusal::new(Reason::Signal, "send to pid", "send to a pid"));
                }
                if caps && !peer.caps.granted(&Thing::Pid(to)) {
                    return Err(Refusal::new(
                        Reason::Capability,
                        "send to pid",
                        "send to a pid not handed to the peer",
                    ));
                }
                Ok(Effect::None)
            }
            AliasSend { alias, .. } | AliasSendTT { alias, .. } => {
                if !role.alias_send {
                    return Err(Refusal::new(Reason::Signal, "send to alias", "send to an alias"));
                }
                if caps && !peer.caps.granted(&Thing::Ref(alias)) {
                    return Err(Refusal::new(
                        Reason::Capability,
                        "send to alias",
                        "send to an alias not handed to the peer",
                    ));
                }
                Ok(Effect::None)
            }
            Link { from, to } => {
                if !role.links {
                    return signal("link");
                }
                if !caps {
                    return Ok(Effect::None);
                }
                // A link works both ways: one a local process made already exists; otherwise
                // only a process the peer spawned here may be linked by it.
                if peer.caps.has_link(to, from) {
                    return Ok(Effect::None);
                }
                if peer.caps.owned(to) {
                    return Ok(Effect::AddLink { local: to.clone(), peer: from.clone() });
                }
                Err(Refusal::new(Reason::Link, "link", "link to a process that did not link to the peer"))
            }
            Unlink { from, to } | UnlinkId { from, to, .. } => {
                if !role.links {
                    return signal("unlink");
                }
                Ok(Effect::RemoveLink { local: to.clone(), peer: from.clone() })
            }
            UnlinkIdAck { .. } => {
                if !role.links {
                    return signal("unlink");
                }
                Ok(Effect::None)
            }
            Exit { from, to, .. }
            | ExitTT { from, to, .. }
            | PayloadExit { from, to }
            | PayloadExitTT { from, to, .. } => {
                if !role.links {
                    return signal("link exit");
                }
                if caps && !peer.caps.has_link(to, from) {
                    return Err(Refusal::new(
                        Reason::Link,
                        "link exit",
                        "exit signal over a link the local process did not make",
                    ));
                }
                Ok(Effect::RemoveLink { local: to.clone(), peer: from.clone() })
            }
            Exit2 { to, .. } | Exit2TT { to, .. } | PayloadExit2 { to, .. } | PayloadExit2TT { to, .. } => {
                if !role.exit_signals {
                    return signal("exit2");
                }
                if caps && !peer.caps.owned(to) {
                    return Err(Refusal::new(
                        Reason::Capability,
                        "exit2",
                        "exit signal to a process the peer did not spawn",
                    ));
                }
                Ok(Effect::None)
            }
            GroupLeader { to, .. } => {
                if !role.group_leader {
                    return signal("group_leader");
                }
                if caps && !peer.caps.owned(to) {
                    return Err(Refusal::new(
                        Reason::Capability,
                        "group_leader",
                        "group leader change of a process the peer did not spawn",
                    ));
                }
                Ok(Effect::None)
            }
            MonitorP { to, .. } => {
                if !role.monitors {
                    return signal("monitor");
                }
                match to {
                    // A monitor changes nothing for the monitored: ping's of net_kernel is fine.
                    ProcRef::Name(n) if role.ping && n.as_str() == "net_kernel" => Ok(Effect::None),
                    ProcRef::Name(n) if !role.name_allowed(n.as_str()) => {
                        Err(Refusal::new(Reason::Name, n.as_str(), format!("monitor of registered name {n}")))
                    }
                    ProcRef::Pid(p) if caps && !peer.caps.granted(&Thing::Pid(p)) => Err(Refusal::new(
                        Reason::Capability,
                        "monitor of pid",
                        "monitor of a pid not handed to the peer",
                    )),
                    _ => Ok(Effect::None),
                }
            }
            DemonitorP { .. } => {
                if !role.monitors {
                    return signal("demonitor");
                }
                Ok(Effect::None)
            }
            MonitorPExit { to, reference, .. } | PayloadMonitorPExit { to, reference, .. } => {
                if !role.monitors {
                    return signal("monitor exit");
                }
                if caps && !peer.caps.has_monitor(reference, to) {
                    return Err(Refusal::new(
                        Reason::Capability,
                        "monitor exit",
                        "DOWN for a monitor no local process holds",
                    ));
                }
                Ok(Effect::RemoveMonitor(reference.clone()))
            }
            SpawnRequest { module, function, arity, .. } | SpawnRequestTT { module, function, arity, .. } => {
                let args = payload.filter(|p| p.len() <= MAX_SPAWN_ARGS).and_then(|p| {
                    etf::decode(&mut Reader::new(p), &Limits { max_depth: 16, ..Limits::default() }).ok()
                });
                let mfa = effective_mfa(module.as_str(), function.as_str(), *arity, args.as_ref());
                if role.spawn.iter().any(|p| glob(p, &mfa)) {
                    return Ok(Effect::None);
                }
                Err(Refusal::new(Reason::Spawn, mfa.clone(), format!("spawn of {mfa}")))
            }
            SpawnReply { req_id, to, flags, result } | SpawnReplyTT { req_id, to, flags, result, .. } => {
                if !caps {
                    return Ok(Effect::None);
                }
                let Some((link, monitor)) = peer.caps.spawn_pending(req_id, to) else {
                    return Err(Refusal::new(
                        Reason::Capability,
                        "spawn reply",
                        "spawn reply for a request no local process made",
                    ));
                };
                let child = match result {
                    Term::Pid(p) => Some(p.clone()),
                    _ => None,
                };
                Ok(Effect::SpawnAnswered {
                    req: req_id.clone(),
                    parent: to.clone(),
                    child,
                    link: link && flags & 1 != 0,
                    monitor: monitor && flags & 2 != 0,
                })
            }
            NodeLink if caps => signal("node link"),
            NodeLink => Ok(Effect::None),
        }
    }

    /// What a refused message is answered with: what OTP answers for a process that is not
    /// there, so the caller learns at once. `edist_refused` where the target may well exist.
    fn answers(&self, control: &Control, payload: Option<&[u8]>, reason: Reason) -> Answers {
        use Control::*;
        let remote = self.session.remote.as_str();
        let noproc = || Term::Atom(Atom::from("noproc"));
        let mut a = Answers::default();
        match control {
            MonitorP { from, to, reference } => a.reply.push(MonitorPExit {
                from: to.clone(),
                to: from.clone(),
                reference: reference.clone(),
                reason: noproc(),
            }),
            Link { from, to } => a.reply.push(Exit { from: to.clone(), to: from.clone(), reason: noproc() }),
            // erpc:call raises {erpc, edist_refused}; rpc:call returns {badrpc, {'EXIT', edist_refused}}.
            SpawnRequest { req_id, from, .. } | SpawnRequestTT { req_id, from, .. } => a.reply.push(SpawnReply {
                req_id: req_id.clone(),
                to: from.clone(),
                flags: 0,
                result: Term::Atom(Atom::from("edist_refused")),
            }),
            RegSend { .. }
            | RegSendTT { .. }
            | Send { .. }
            | SendTT { .. }
            | SendSender { .. }
            | SendSenderTT { .. } => {
                let target = match control {
                    RegSend { to, .. } | RegSendTT { to, .. } => ProcRef::Name(to.clone()),
                    Send { to } | SendTT { to, .. } | SendSender { to, .. } | SendSenderTT { to, .. } => {
                        ProcRef::Pid(to.clone())
                    }
                    _ => return a,
                };
                let sender = control.sender();
                // A gen call by a process of the peer's node: its monitor fires, as if the
                // target were gone, and the monitor the caller set up here is taken down.
                let Some(call) = payload.and_then(otp::call_from) else { return a };
                let own = call.pid.node.as_str() == remote && call.reference.node.as_str() == remote;
                if !own || sender.is_some_and(|s| *s != call.pid) {
                    return a;
                }
                let why = match reason {
                    Reason::Name | Reason::Capability => noproc(),
                    _ => Term::Atom(Atom::from("edist_refused")),
                };
                a.reply.push(MonitorPExit {
                    from: target.clone(),
                    to: call.pid.clone(),
                    reference: call.reference.clone(),
                    reason: why,
                });
                a.forward.push(DemonitorP { from: call.pid, to: target, reference: call.reference });
            }
            _ => {}
        }
        a
    }

    /// A control message (no payload) framed for the connection's flags.
    fn frame(&mut self, control: &Control) -> Vec<Vec<u8>> {
        let (ctrl, _) = encode_message(control, None);
        let mut out = Vec::new();
        frame_message(&mut out, self.flags, self.next_seq, &ctrl, &[], 0);
        self.next_seq += 1;
        out
    }
}

/// Walks a message's terms: depth (by the walker), funs, the pids/aliases/ports it passes on,
/// and the atoms new to the nodes here.
struct Inspect<'p> {
    peer: &'p mut PeerState,
    remote: &'p str,
    /// Node names (the two ends of the connection): never charged.
    exempt: [&'p str; 2],
    capabilities: bool,
    funs: bool,
    budget: usize,
    new_atoms: HashSet<Box<str>>,
    /// Why the walk stopped, when a rule (not the term's form) stopped it.
    stop: Option<Refusal>,
    /// Walking the payload (the control message's pids and funs are judged by the rules).
    payload: bool,
}

impl Inspect<'_> {
    fn atom(&mut self, a: &str) {
        if self.budget == 0 || self.exempt.contains(&a) || self.new_atoms.contains(a) || self.peer.atoms.known(a) {
            return;
        }
        self.new_atoms.insert(a.into());
    }

    fn text(&mut self, a: &AtomText<'_>) {
        if let AtomText::Text(t) = a {
            self.atom(t);
        }
    }

    fn check(&mut self, token: &Token<'_>) -> Result<(), DecodeError> {
        match token {
            Token::Atom(a) => self.text(a),
            Token::Pid { node, .. } | Token::Port { node, .. } | Token::Ref { node, .. } => {
                self.text(node);
                if self.payload && self.capabilities {
                    let thing = Thing::Token(token);
                    let own = thing.node() == Some(self.remote);
                    if !own && !self.peer.caps.granted(&thing) {
                        self.stop = Some(Refusal::new(
                            Reason::Capability,
                            "pid in message",
                            "a pid, alias or port the peer was not handed, in a message",
                        ));
                    }
                }
            }
            Token::Export { module, function, .. } => {
                self.text(module);
                self.text(function);
                if !self.funs {
                    self.stop = Some(Refusal::new(Reason::Fun, "fun", "an external fun in a message"));
                }
            }
            Token::Fun { module, pid, .. } => {
                self.text(module);
                self.text(&pid.0);
                if !self.funs {
                    self.stop = Some(Refusal::new(Reason::Fun, "fun", "a fun in a message"));
                }
            }
            _ => {}
        }
        if self.stop.is_none() && self.budget != 0 && self.peer.atoms.charged() + self.new_atoms.len() > self.budget {
            // Over the budget: the verdict is known, a million-atom message costs no more.
            self.stop = Some(Refusal::new(Reason::Atoms, "atoms", format!("atom budget of {} used up", self.budget)));
        }
        match self.stop {
            // Any error stops the walk; `stop` says why.
            Some(_) => Err(DecodeError::TooDeep(0)),
            None => Ok(()),
        }
    }
}

impl<'a> Visitor<'a> for Inspect<'_> {
    fn token(&mut self, token: &Token<'a>, _depth: u32) -> Result<(), DecodeError> {
        self.check(token)
    }

    fn inflated_token(&mut self, token: &Token<'_>, _depth: u32) -> Result<(), DecodeError> {
        self.check(token)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `module:function/arity` of what a spawn request runs: the MFA an `erpc` call (which
/// `rpc:call` uses too) executes, else the spawned function itself.
fn effective_mfa(module: &str, function: &str, arity: u8, args: Option<&Term>) -> String {
    let list = |t: Option<&Term>| t.and_then(Term::to_proper_list);
    let inner = match (module, function, list(args)) {
        ("erpc", "execute_call", Some(a)) if a.len() == 4 => a.get(1..4).map(<[Term]>::to_vec),
        ("erpc", "execute_cast", Some(a)) if a.len() == 3 => Some(a),
        _ => None,
    };
    if let Some([Term::Atom(m), Term::Atom(f), args]) = inner.as_deref() {
        if let Some(n) = list(Some(args)) {
            return format!("{m}:{f}/{}", n.len());
        }
    }
    format!("{module}:{function}/{arity}")
}

#[cfg(test)]
mod tests {
    use super::super::Egress;
    use super::*;
    use edist_proto::dist::control::decode_message;
    use edist_proto::etf::{Pid, Ref};

    /// The flags of a relayed connection between two OTP 25 nodes (fragments, no atom cache).
    const FLAGS: DFlags = DFlags(0xD07DF7FBD & crate::session::handshake::RELAY_MASK);
    const SRV: &str = "srv@h";
    const DEV: &str = "dev@h";

    fn pid_of(node: &str, n: u32) -> Pid {
        Pid { node: Atom::from(node), id: n, serial: 0, creation: 5 }
    }
    /// A process of the device (the peer).
    fn pid(n: u32) -> Pid {
        pid_of(DEV, n)
    }
    /// A process of the server (here).
    fn local(n: u32) -> Pid {
        pid_of(SRV, n)
    }
    fn rf_of(node: &str, n: u32) -> Ref {
        Ref { node: Atom::from(node), creation: 5, ids: vec![n, 2, 3] }
    }
    fn rf(n: u32) -> Ref {
        rf_of(DEV, n)
    }
    fn atom(a: &str) -> Term {
        Term::Atom(Atom::from(a))
    }

    /// Framed packets of one message, in fragments of `frag` bytes (0: whole).
    fn packets(control: &Control, payload: Option<&Term>, seq: u64, frag: usize) -> Vec<Vec<u8>> {
        let (c, p) = encode_message(control, payload);
        let mut out = Vec::new();
        frame_message(&mut out, FLAGS, seq, &c, &p, frag);
        out
    }

    fn one(control: &Control, payload: Option<&Term>) -> Vec<u8> {
        packets(control, payload, 1, 0).remove(0)
    }

    fn session(role: Role) -> Arc<Session> {
        Session::new(Arc::new(role), SharedPeer::default(), SRV, DEV)
    }

    fn ingress(role: Role) -> Ingress {
        session(role).ingress()
    }

    fn now() -> Instant {
        Instant::now()
    }

    /// `[roles.device]` with `allow_names = ["kv"]`, as the tests configure it.
    fn device_kv() -> Role {
        Role { allow_names: Some(vec!["kv".into()]), ..Role::device() }
    }

    fn reg_send(to: &str) -> Control {
        Control::RegSend { from: pid(1), to: Atom::from(to) }
    }

    /// `{'$gen_call', {From, [alias | Ref]}, Req}`.
    fn call(from: &Pid, r: &Ref, req: Term) -> Term {
        let tag = Term::List(vec![atom("alias")], Box::new(Term::Ref(r.clone())));
        Term::tuple([atom("$gen_call"), Term::tuple([Term::Pid(from.clone()), tag]), req])
    }

    fn decode(p: &[u8]) -> (Control, Option<Term>) {
        let mut cache = AtomCache::default();
        let Packet::Message { body, atom_refs, versioned } = parse_packet(&p[4..], FLAGS, &mut cache).unwrap() else {
            panic!("not a whole message")
        };
        let m = decode_message(body, &atom_refs, versioned, &Limits::default()).unwrap();
        (m.control, m.payload)
    }

    fn controls(ps: &[Vec<u8>]) -> Vec<Control> {
        ps.iter().map(|p| decode(p).0).collect()
    }

    fn reason(v: &Verdict) -> Option<Reason> {
        v.refused.as_ref().map(|r| r.reason)
    }

    /// Sends `p` through `i`; the refusal reason, if any.
    fn judge(i: &mut Ingress, p: Vec<u8>) -> Option<Reason> {
        reason(&i.packet(p, now()).unwrap())
    }

    /// What the local node sends the device, shown to the policy.
    fn out(e: &mut Egress, control: &Control, payload: Option<&Term>) {
        for p in packets(control, payload, 99, 0) {
            e.packet(&p);
        }
    }

    #[test]
    fn trusted_passes_everything_untouched() {
        let mut i = ingress(Role::trusted());
        let p = one(&reg_send("rex"), Some(&atom("x")));
        assert_eq!(i.packet(p.clone(), now()).unwrap(), Verdict { forward: vec![p], ..Default::default() });
    }

    #[test]
    fn device_sends_to_allowed_names_but_not_to_rex() {
        let mut i = ingress(Role::device());
        let ok = one(&reg_send("bench_echo"), Some(&atom("hello")));
        assert_eq!(i.packet(ok.clone(), now()).unwrap().forward, vec![ok]);
        let v = i.packet(one(&reg_send("rex"), Some(&Term::Nil)), now()).unwrap();
        assert!(v.forward.is_empty() && v.reply.is_empty());
        let r = v.refused.unwrap();
        assert_eq!((r.reason, r.target.as_str()), (Reason::Name, "rex"));
        let exit2 = Control::Exit2 { from: pid(1), to: local(2), reason: atom("kill") };
        assert_eq!(judge(&mut i, one(&exit2, None)), Some(Reason::Signal));
        let gl = Control::GroupLeader { from: pid(1), to: local(2) };
        assert_eq!(judge(&mut i, one(&gl, None)), Some(Reason::Signal));
        // With an allow-list, only its names.
        let mut i = ingress(device_kv());
        assert_eq!(judge(&mut i, one(&reg_send("kv"), Some(&atom("x")))), None);
        assert_eq!(judge(&mut i, one(&reg_send("bench_echo"), Some(&atom("x")))), Some(Reason::Name));
    }

    #[test]
    fn refused_rpc_and_monitor_get_fast_replies() {
        let mut i = ingress(Role::device());
        let spawn = Control::SpawnRequest {
            req_id: rf(7),
            from: pid(3),
            group_leader: pid(4),
            module: Atom::from("erpc"),
            function: Atom::from("execute_call"),
            arity: 4,
            opts: Term::list([atom("monitor")]),
        };
        let args = Term::list([Term::Ref(rf(8)), atom("os"), atom("cmd"), Term::list([Term::String(b"id".to_vec())])]);
        let v = i.packet(one(&spawn, Some(&args)), now()).unwrap();
        let r = v.refused.unwrap();
        assert_eq!((r.reason, r.detail.as_str(), r.target.as_str()), (Reason::Spawn, "spawn of os:cmd/1", "os:cmd/1"));
        assert!(v.forward.is_empty());
        match &controls(&v.reply)[..] {
            [Control::SpawnReply { req_id, to, result, .. }] => {
                assert_eq!((req_id, to, result), (&rf(7), &pid(3), &atom("edist_refused")));
            }
            c => panic!("{c:?}"),
        }
        // A role allowing os:* lets the same request through.
        let p = one(&spawn, Some(&args));
        assert_eq!(
            ingress(Role { spawn: vec!["os:*".into()], ..Role::device() }).packet(p.clone(), now()).unwrap().forward,
            vec![p]
        );

        let mon = Control::MonitorP { from: pid(3), to: ProcRef::Name(Atom::from("rex")), reference: rf(9) };
        let v = i.packet(one(&mon, None), now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Name));
        match &controls(&v.reply)[..] {
            [Control::MonitorPExit { from, to, reference, reason }] => {
                assert_eq!(from, &ProcRef::Name(Atom::from("rex")));
                assert_eq!((to, reference, reason), (&pid(3), &rf(9), &atom("noproc")));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn ping_reaches_net_kernel_and_nothing_else_does() {
        for role in [Role::device(), device_kv()] {
            let mut i = ingress(role);
            let mon = Control::MonitorP { from: pid(1), to: ProcRef::Name(Atom::from("net_kernel")), reference: rf(5) };
            assert_eq!(judge(&mut i, one(&mon, None)), None, "ping monitors net_kernel");
            let ping = call(&pid(1), &rf(5), Term::tuple([atom("is_auth"), atom(DEV)]));
            let p = one(&reg_send("net_kernel"), Some(&ping));
            assert_eq!(i.packet(p.clone(), now()).unwrap().forward, vec![p]);
            let demon =
                Control::DemonitorP { from: pid(1), to: ProcRef::Name(Atom::from("net_kernel")), reference: rf(5) };
            assert_eq!(judge(&mut i, one(&demon, None)), None);
            // disconnect: refused, and answered as a call whose target went away (its monitor
            // here is taken down too).
            let evil = call(&pid(1), &rf(6), Term::tuple([atom("disconnect"), atom("trusted@h")]));
            let v = i.packet(one(&reg_send("net_kernel"), Some(&evil)), now()).unwrap();
            let r = v.refused.clone().unwrap();
            assert_eq!((r.reason, r.target.as_str()), (Reason::Service, "net_kernel"));
            match (&controls(&v.reply)[..], &controls(&v.forward)[..]) {
                (
                    [Control::MonitorPExit { to, reference, reason, .. }],
                    [Control::DemonitorP { from, reference: r2, .. }],
                ) => {
                    assert_eq!((to, reference, reason), (&pid(1), &rf(6), &atom("edist_refused")));
                    assert_eq!((from, r2), (&pid(1), &rf(6)));
                }
                c => panic!("{c:?}"),
            }
            // A raw message to net_kernel (handle_info) is refused too, with nothing to answer.
            let v = i.packet(one(&reg_send("net_kernel"), Some(&Term::tuple([atom("x")]))), now()).unwrap();
            assert_eq!(reason(&v), Some(Reason::Service));
            assert!(v.reply.is_empty() && v.forward.is_empty());
            // is_auth on behalf of a process of ours: the answer would go to it.
            let reflected = call(&local(1), &rf(6), Term::tuple([atom("is_auth"), atom(DEV)]));
            assert_eq!(judge(&mut i, one(&reg_send("net_kernel"), Some(&reflected))), Some(Reason::Service));
        }
        // Without ping, net_kernel is just a denied name.
        let mut i = ingress(Role { ping: false, ..Role::device() });
        let ping = call(&pid(1), &rf(5), Term::tuple([atom("is_auth"), atom(DEV)]));
        assert_eq!(judge(&mut i, one(&reg_send("net_kernel"), Some(&ping))), Some(Reason::Name));
    }

    #[test]
    fn pids_are_capabilities_handed_by_local_processes() {
        let s = session(Role::device());
        let (mut i, mut e) = (s.ingress(), s.egress());
        let send = |to: Pid| Control::SendSender { from: pid(1), to };
        assert_eq!(judge(&mut i, one(&send(local(10)), Some(&atom("hi")))), Some(Reason::Capability));
        let mon = Control::MonitorP { from: pid(1), to: ProcRef::Pid(local(10)), reference: rf(1) };
        let v = i.packet(one(&mon, None), now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Capability));
        assert!(matches!(&controls(&v.reply)[..], [Control::MonitorPExit { reason, .. }] if *reason == atom("noproc")));
        // A local process hands its pid (and another's) in a message.
        out(
            &mut e,
            &Control::SendSender { from: local(3), to: pid(1) },
            Some(&Term::tuple([atom("worker"), Term::Pid(local(10))])),
        );
        assert_eq!(judge(&mut i, one(&send(local(10)), Some(&atom("hi")))), None);
        assert_eq!(judge(&mut i, one(&mon, None)), None);
        // The sender of a message is not handed: a process cannot see it (net_kernel answering
        // a ping must not give the device its pid).
        assert_eq!(judge(&mut i, one(&send(local(3)), Some(&atom("hi")))), Some(Reason::Capability));
        // Passing a granted pid on to an allowed name is fine; an invented one is not.
        let kv = |t: Term| one(&reg_send("kv"), Some(&t));
        assert_eq!(judge(&mut i, kv(Term::Pid(local(10)))), None);
        assert_eq!(judge(&mut i, kv(Term::Pid(pid(77)))), None, "the device's own pids");
        let v = i.packet(kv(call(&local(11), &rf(1), atom("x"))), now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Capability), "a reply redirected to a process of ours");
        assert!(v.reply.is_empty(), "not the device's own call: nothing to answer");
        assert_eq!(judge(&mut i, kv(Term::Ref(rf_of(SRV, 4)))), Some(Reason::Capability));
        assert_eq!(judge(&mut i, kv(Term::Pid(pid_of("trusted@h3", 1)))), Some(Reason::Capability));
        // The process ends (its DOWN goes to a monitor of the device): forgotten.
        out(
            &mut e,
            &Control::MonitorPExit {
                from: ProcRef::Pid(local(10)),
                to: pid(1),
                reference: rf(1),
                reason: atom("normal"),
            },
            None,
        );
        assert_eq!(judge(&mut i, one(&send(local(10)), Some(&atom("hi")))), Some(Reason::Capability));
    }

    #[test]
    fn capabilities_go_with_the_connection_that_handed_them() {
        let peer = SharedPeer::default();
        let role = Arc::new(Role::device());
        let a = Session::new(role.clone(), peer.clone(), SRV, DEV);
        let b = Session::new(role, peer.clone(), "srv2@h", DEV);
        let mut ib = b.ingress();
        out(&mut a.egress(), &Control::Send { to: pid(1) }, Some(&Term::Pid(local(10))));
        let send = one(&Control::Send { to: local(10) }, Some(&atom("x")));
        assert_eq!(judge(&mut ib, send.clone()), None, "shared by the peer's connections");
        drop(a);
        assert_eq!(judge(&mut ib, send), Some(Reason::Capability), "forgotten with the connection");
        assert_eq!(peer.lock().unwrap().usage().grants, 0);
    }

    #[test]
    fn aliases_are_capabilities_too() {
        let s = session(Role::device());
        let (mut i, mut e) = (s.ingress(), s.egress());
        let reply = |alias: Ref| one(&Control::AliasSend { from: pid(1), alias }, Some(&atom("ok")));
        assert_eq!(judge(&mut i, reply(rf_of(SRV, 1))), Some(Reason::Capability));
        // A local process calls a process of the device: the reply may come back.
        out(&mut e, &reg_send_from(local(4), "dev_server"), Some(&call(&local(4), &rf_of(SRV, 1), atom("get"))));
        assert_eq!(judge(&mut i, reply(rf_of(SRV, 1))), None);
        assert_eq!(judge(&mut i, reply(rf_of(SRV, 2))), Some(Reason::Capability));
    }

    fn reg_send_from(from: Pid, to: &str) -> Control {
        Control::RegSend { from, to: Atom::from(to) }
    }

    #[test]
    fn a_device_kills_only_over_links_local_processes_made() {
        let s = session(Role::device());
        let (mut i, mut e) = (s.ingress(), s.egress());
        // Handed a pid, the device may send to it, but not link to it: answered like a link to
        // a process that is not there.
        out(&mut e, &Control::Send { to: pid(1) }, Some(&Term::Pid(local(10))));
        let link = Control::Link { from: pid(1), to: local(10) };
        let v = i.packet(one(&link, None), now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Link));
        assert_eq!(controls(&v.reply), vec![Control::Exit { from: local(10), to: pid(1), reason: atom("noproc") }]);
        let exit = Control::Exit { from: pid(1), to: local(10), reason: atom("boom") };
        assert_eq!(judge(&mut i, one(&exit, None)), Some(Reason::Link), "an exit over no link");
        let pexit = Control::PayloadExit { from: pid(1), to: local(10) };
        assert_eq!(judge(&mut i, one(&pexit, Some(&atom("boom")))), Some(Reason::Link));
        // A local process links to the device's: both ways now, and its exit passes (once).
        out(&mut e, &Control::Link { from: local(10), to: pid(1) }, None);
        assert_eq!(judge(&mut i, one(&link, None)), None);
        assert_eq!(judge(&mut i, one(&exit, None)), None);
        assert_eq!(judge(&mut i, one(&exit, None)), Some(Reason::Link), "the link is gone with its exit");
        // Linked again, then the local process unlinks: the device's exit no longer reaches it.
        out(&mut e, &Control::Link { from: local(10), to: pid(1) }, None);
        out(&mut e, &Control::UnlinkId { id: 9, from: local(10), to: pid(1) }, None);
        assert_eq!(judge(&mut i, one(&Control::UnlinkIdAck { id: 9, from: pid(1), to: local(10) }, None)), None);
        assert_eq!(judge(&mut i, one(&exit, None)), Some(Reason::Link));
    }

    #[test]
    fn processes_the_device_spawned_are_its_own() {
        let role = Role { spawn: vec!["dev_api:*".into()], exit_signals: true, group_leader: true, ..Role::device() };
        let s = session(role);
        let (mut i, mut e) = (s.ingress(), s.egress());
        let spawn = Control::SpawnRequest {
            req_id: rf(1),
            from: pid(1),
            group_leader: pid(2),
            module: Atom::from("dev_api"),
            function: Atom::from("session"),
            arity: 0,
            opts: Term::list([atom("link")]),
        };
        assert_eq!(judge(&mut i, one(&spawn, Some(&Term::Nil))), None);
        // The local node answers with the new process, linked to the device's parent.
        out(&mut e, &Control::SpawnReply { req_id: rf(1), to: pid(1), flags: 1, result: Term::Pid(local(20)) }, None);
        assert_eq!(judge(&mut i, one(&Control::Send { to: local(20) }, Some(&atom("x")))), None);
        let exit = Control::Exit { from: pid(1), to: local(20), reason: atom("boom") };
        assert_eq!(judge(&mut i, one(&exit, None)), None, "the link the device's spawn set up");
        assert_eq!(judge(&mut i, one(&Control::Link { from: pid(3), to: local(20) }, None)), None);
        let kill = |to: Pid| Control::Exit2 { from: pid(1), to, reason: atom("kill") };
        assert_eq!(judge(&mut i, one(&kill(local(20)), None)), None, "exit/2 to its own process");
        assert_eq!(judge(&mut i, one(&Control::GroupLeader { from: pid(2), to: local(20) }, None)), None);
        // Not to anyone else's, even handed.
        out(&mut e, &Control::Send { to: pid(1) }, Some(&Term::Pid(local(21))));
        assert_eq!(judge(&mut i, one(&kill(local(21)), None)), Some(Reason::Capability));
        assert_eq!(
            judge(&mut i, one(&Control::GroupLeader { from: pid(2), to: local(21) }, None)),
            Some(Reason::Capability)
        );
    }

    #[test]
    fn downs_and_spawn_replies_answer_only_what_local_processes_asked() {
        let s = session(Role::device());
        let (mut i, mut e) = (s.ingress(), s.egress());
        let down =
            |r: Ref, to: Pid| Control::MonitorPExit { from: ProcRef::Pid(pid(1)), to, reference: r, reason: atom("x") };
        assert_eq!(judge(&mut i, one(&down(rf_of(SRV, 1), local(3)), None)), Some(Reason::Capability));
        out(&mut e, &Control::MonitorP { from: local(3), to: ProcRef::Pid(pid(1)), reference: rf_of(SRV, 1) }, None);
        assert_eq!(
            judge(&mut i, one(&down(rf_of(SRV, 1), local(4)), None)),
            Some(Reason::Capability),
            "another process"
        );
        assert_eq!(judge(&mut i, one(&down(rf_of(SRV, 1), local(3)), None)), None);
        assert_eq!(judge(&mut i, one(&down(rf_of(SRV, 1), local(3)), None)), Some(Reason::Capability), "once");
        // rpc from here to the device: spawn request with a monitor, answered by reply and DOWN.
        let reply = Control::SpawnReply { req_id: rf_of(SRV, 7), to: local(3), flags: 2, result: Term::Pid(pid(9)) };
        assert_eq!(judge(&mut i, one(&reply, None)), Some(Reason::Capability), "no such request");
        let req = Control::SpawnRequest {
            req_id: rf_of(SRV, 7),
            from: local(3),
            group_leader: local(4),
            module: Atom::from("erpc"),
            function: Atom::from("execute_call"),
            arity: 4,
            opts: Term::list([atom("monitor")]),
        };
        out(&mut e, &req, Some(&Term::list([Term::Ref(rf_of(SRV, 8)), atom("erlang"), atom("node"), Term::Nil])));
        assert_eq!(judge(&mut i, one(&reply, None)), None);
        let result =
            Control::PayloadMonitorPExit { from: ProcRef::Pid(pid(9)), to: local(3), reference: rf_of(SRV, 7) };
        let value = Term::tuple([Term::Ref(rf_of(SRV, 8)), atom("return"), atom(DEV)]);
        assert_eq!(judge(&mut i, one(&result, Some(&value))), None, "the result, with the request's own ref");
        // The spawned process does its I/O through the group leader it was given.
        let io = one(&Control::SendSender { from: pid(9), to: local(4) }, Some(&atom("io_request")));
        assert_eq!(judge(&mut i, io), None);
    }

    #[test]
    fn funs_and_repeated_map_keys_are_refused() {
        let mut i = ingress(Role::device());
        let f = Term::Export { module: Atom::from("os"), function: Atom::from("cmd"), arity: 1 };
        assert_eq!(judge(&mut i, one(&reg_send("kv"), Some(&f))), Some(Reason::Fun));
        let dup = Term::Map(vec![(atom("a"), Term::Int(1)), (atom("a"), Term::Int(2))]);
        assert_eq!(judge(&mut i, one(&reg_send("kv"), Some(&dup))), Some(Reason::Malformed));
        assert_eq!(judge(&mut ingress(Role { funs: true, ..Role::device() }), one(&reg_send("kv"), Some(&f))), None);
    }

    #[test]
    fn the_atom_budget_counts_only_new_atoms_and_never_locks_a_peer_out() {
        let role = Arc::new(Role { atom_budget: 10, ..Role::device() });
        let peer = SharedPeer::default();
        let s = Session::new(role.clone(), peer.clone(), SRV, DEV);
        let (mut a, mut b) = (s.ingress(), s.ingress());
        let atoms = |from: u32, n: u32| Term::Tuple((from..from + n).map(|k| atom(&format!("a{k}"))).collect());
        let charged = || peer.lock().unwrap().atoms.charged();
        // The name, '' and the node names are not charged (common, or node names).
        assert_eq!(judge(&mut a, one(&reg_send("sink"), Some(&atoms(0, 5)))), None);
        assert_eq!(charged(), 6, "five atoms and the name");
        // The same atoms again cost nothing, on another lane too.
        assert_eq!(judge(&mut b, one(&reg_send("sink"), Some(&atoms(0, 5)))), None);
        assert_eq!(judge(&mut b, one(&reg_send("sink"), Some(&atoms(100, 5)))), Some(Reason::Atoms));
        assert_eq!(charged(), 6, "a refused message uses no budget");
        // Atoms the local node sent to the device are free.
        out(&mut s.egress(), &Control::Send { to: pid(1) }, Some(&atoms(200, 50)));
        assert_eq!(judge(&mut a, one(&reg_send("sink"), Some(&atoms(200, 50)))), None);
        assert_eq!(judge(&mut a, one(&reg_send("sink"), Some(&atoms(100, 4)))), None);
        assert_eq!(charged(), 10);
        // Used up: refusals stay fast — a monitor of a denied name is still answered by the
        // rules, a call with new atoms is answered too.
        let mon = Control::MonitorP { from: pid(1), to: ProcRef::Name(Atom::from("brand_new_name")), reference: rf(1) };
        let v = a.packet(one(&mon, None), now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Atoms));
        assert_eq!(controls(&v.reply).len(), 1);
        let v = a.packet(one(&reg_send("kv"), Some(&call(&pid(1), &rf(2), atoms(300, 1)))), now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Atoms));
        assert!(
            matches!(&controls(&v.reply)[..], [Control::MonitorPExit { reason, .. }] if *reason == atom("edist_refused"))
        );
        assert!(matches!(&controls(&v.forward)[..], [Control::DemonitorP { .. }]));
        // A new node behind the same gateway still pings: its name is free, ping's atoms common.
        let new = Session::new(role, peer.clone(), SRV, "fresh@h");
        let mut n = new.ingress();
        let p = pid_of("fresh@h", 1);
        let mon = Control::MonitorP {
            from: p.clone(),
            to: ProcRef::Name(Atom::from("net_kernel")),
            reference: rf_of("fresh@h", 1),
        };
        assert_eq!(judge(&mut n, one(&mon, None)), None);
        let ping = call(&p, &rf_of("fresh@h", 1), Term::tuple([atom("is_auth"), atom("fresh@h")]));
        assert_eq!(judge(&mut n, one(&Control::RegSend { from: p, to: Atom::from("net_kernel") }, Some(&ping))), None);
    }

    #[test]
    fn oversized_fragmented_message_is_dropped_whole_and_the_lane_goes_on() {
        let mut i = ingress(Role { max_message: 10_000, ..Role::device() });
        let big = Term::Binary(vec![7; 50_000]);
        let frags = packets(&reg_send("sink"), Some(&big), 11, 4_000);
        assert!(frags.len() > 3);
        let mut refused = 0;
        for f in frags {
            let v = i.packet(f, now()).unwrap();
            assert!(v.forward.is_empty());
            refused += usize::from(v.refused.is_some());
        }
        assert_eq!(refused, 1);
        assert_eq!(i.reassembler.buffered(), 0, "a refused message leaves nothing behind");
        // A fragmented message under the limit is held, then forwarded whole, as it came.
        let small = packets(&reg_send("sink"), Some(&Term::Binary(vec![1; 6_000])), 12, 4_000);
        let mut out = Vec::new();
        for f in small.clone() {
            out.extend(i.packet(f, now()).unwrap().forward);
        }
        assert_eq!(out, small);
    }

    #[test]
    fn an_oversized_fragmented_call_is_answered_as_a_refused_call() {
        let mut i = ingress(Role { max_message: 10_000, ..device_kv() });
        let big = call(&pid(1), &rf(8), Term::tuple([atom("put"), Term::Binary(vec![7; 50_000])]));
        let frags = packets(&reg_send("kv"), Some(&big), 13, 4_000);
        let (mut reply, mut forward, mut refused) = (Vec::new(), Vec::new(), 0);
        for f in frags {
            let v = i.packet(f, now()).unwrap();
            refused += usize::from(v.refused.is_some());
            reply.extend(v.reply);
            forward.extend(v.forward);
        }
        assert_eq!(refused, 1);
        match (&controls(&reply)[..], &controls(&forward)[..]) {
            (
                [Control::MonitorPExit { to, reference, reason, .. }],
                [Control::DemonitorP { from, reference: r2, .. }],
            ) => {
                assert_eq!((to, reference, reason), (&pid(1), &rf(8), &atom("edist_refused")));
                assert_eq!((from, r2), (&pid(1), &rf(8)));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn audit_mode_notes_and_lets_everything_pass() {
        let mut i = ingress(Role { audit: true, max_message: 10_000, ..Role::device() });
        let p = one(&reg_send("rex"), Some(&Term::Nil));
        let v = i.packet(p.clone(), now()).unwrap();
        assert_eq!(v.forward, vec![p]);
        assert!(v.reply.is_empty());
        let r = v.refused.unwrap();
        assert!(r.audit && r.reason == Reason::Name);
        // Oversized: noted once, every fragment passes.
        let frags = packets(&reg_send("sink"), Some(&Term::Binary(vec![7; 50_000])), 11, 4_000);
        let mut passed = Vec::new();
        for f in frags.clone() {
            passed.extend(i.packet(f, now()).unwrap().forward);
        }
        assert_eq!(passed, frags);
    }

    #[test]
    fn deep_terms_are_refused() {
        let mut t = Term::Nil;
        for _ in 0..100 {
            t = Term::Tuple(vec![t]);
        }
        assert_eq!(judge(&mut ingress(Role::device()), one(&reg_send("sink"), Some(&t))), Some(Reason::Depth));
    }

    #[test]
    fn undecodable_messages_are_refused_and_broken_envelopes_end_the_lane() {
        let mut i = ingress(Role::device());
        // A dist header (131, 68, no atom refs) over a body that is not a term.
        let v = i.packet(vec![0, 0, 0, 6, 131, 68, 0, 255, 1, 2], now()).unwrap();
        assert_eq!(reason(&v), Some(Reason::Malformed));
        assert!(v.forward.is_empty());
        // An envelope that is neither 131 nor 112: a protocol violation.
        assert!(i.packet(vec![0, 0, 0, 2, 7, 7], now()).is_err());
    }

    #[test]
    fn rates_delay_what_passes_and_refusals_do_not_count() {
        let mut i = ingress(Role { messages_per_sec: 100, ..Role::device() });
        let t = now();
        // A flood of refused messages first: no delay for what follows.
        for _ in 0..1000 {
            let v = i.packet(one(&reg_send("rex"), None), t).unwrap();
            assert_eq!(v.wait, Duration::ZERO);
        }
        let p = one(&reg_send("sink"), Some(&Term::Nil));
        let waits: Vec<Duration> = (0..150).map(|_| i.packet(p.clone(), t).unwrap().wait).collect();
        assert_eq!(waits[99], Duration::ZERO);
        assert!(waits[149] >= Duration::from_millis(400), "{:?}", waits[149]);
        // The debt (50 messages) is paid at 100/s.
        assert!(i.packet(p.clone(), t + Duration::from_millis(200)).unwrap().wait >= Duration::from_millis(300));
        assert_eq!(i.packet(p, t + Duration::from_secs(3)).unwrap().wait, Duration::ZERO);
        // Refused traffic has a budget of its own, far larger: a flood over it slows only its lane.
        let mut i = ingress(Role { messages_per_sec: 100, ..Role::device() });
        let waits: Vec<Duration> =
            (0..(REFUSED_RATE_MIN + 100)).map(|_| i.packet(one(&reg_send("rex"), None), t).unwrap().wait).collect();
        assert_eq!(waits[(REFUSED_RATE_MIN - 1) as usize], Duration::ZERO);
        assert!(waits.last().unwrap() > &Duration::ZERO);
    }

    #[test]
    fn outgoing_messages_grant_when_read_whole() {
        let s = session(Role::device());
        let (mut i, mut e) = (s.ingress(), s.egress());
        let send = |to: Pid| one(&Control::Send { to }, Some(&Term::Nil));
        // Fragmented (64 KiB fragments, as OTP sends): read once whole.
        let msg = |p: Pid, size: usize| Term::tuple([Term::Pid(p), Term::Binary(vec![0; size])]);
        for p in packets(&Control::Send { to: pid(1) }, Some(&msg(local(1), 200_000)), 5, 65_536) {
            e.packet(&p);
        }
        assert_eq!(judge(&mut i, send(local(1))), None);
        // Over the egress limit: not read, so nothing handed (fail closed).
        for p in packets(
            &Control::Send { to: pid(1) },
            Some(&msg(local(2), super::super::egress::MAX_MESSAGE + 1)),
            6,
            65_536,
        ) {
            e.packet(&p);
        }
        assert_eq!(judge(&mut i, send(local(2))), Some(Reason::Capability));
        // And the next one is read again.
        for p in packets(&Control::Send { to: pid(1) }, Some(&msg(local(3), 100_000)), 7, 65_536) {
            e.packet(&p);
        }
        assert_eq!(judge(&mut i, send(local(3))), None);
    }

    #[test]
    fn capability_state_is_bounded() {
        let s = session(Role { max_grants: 100, ..Role::device() });
        let mut e = s.egress();
        for n in 0..10_000 {
            out(&mut e, &Control::Send { to: pid(1) }, Some(&Term::Pid(local(n))));
            out(&mut e, &Control::Link { from: local(n), to: pid(1) }, None);
            out(
                &mut e,
                &Control::MonitorP { from: local(n), to: ProcRef::Pid(pid(1)), reference: rf_of(SRV, n) },
                None,
            );
        }
        let u = s.peer.lock().unwrap().usage();
        assert!(u.grants <= 100 && u.links <= 100 && u.monitors <= 100, "{u:?}");
        // The newest are kept.
        let mut i = s.ingress();
        assert_eq!(judge(&mut i, one(&Control::Send { to: local(9_999) }, Some(&Term::Nil))), None);
    }
}
