//! Ingress inspection, sans-IO: the packets one lane of a relayed connection brings from a peer
//! gateway go through [`Ingress::packet`] before they reach a local node, and come out
//! forwarded (untouched), held (fragments of a message not complete yet), or refused — with a
//! reply for the sender where Erlang would otherwise wait for a timeout.
//!
//! Fragments of one message travel on one lane (a lane carries whole senders), so each lane
//! reassembles on its own, bounded by the role's `max_message`; the atom budget and the rates
//! belong to the peer gateway and are shared by all its lanes ([`PeerState`]).

use super::role::{glob, Role};
use edist_proto::dist::control::{decode_message, encode_message, Control, ProcRef};
use edist_proto::dist::fragment::{frame_message, FragmentError, Reassembler};
use edist_proto::dist::header::{parse_packet, AtomCache, Packet};
use edist_proto::dist::DFlags;
use edist_proto::etf::{self, AtomText, DecodeError, Limits, Reader, Term, Token, Visitor};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a message was refused (the counters' `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A `spawn_request` (rpc) outside the role's MFAs.
    Spawn,
    /// A send to, or monitor of, a registered name the role does not allow.
    Name,
    /// A kind of signal the role does not allow (exit, link, group leader, ...).
    Signal,
    /// A message over the role's size limit.
    Size,
    /// A term nested deeper than the role allows.
    Depth,
    /// The peer's atom budget is used up.
    Atoms,
    /// A message that does not decode (a broken term, an unknown control message).
    Malformed,
}

impl Reason {
    /// The label used in logs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Spawn => "spawn",
            Reason::Name => "name",
            Reason::Signal => "signal",
            Reason::Size => "size",
            Reason::Depth => "depth",
            Reason::Atoms => "atoms",
            Reason::Malformed => "malformed",
        }
    }
}

/// What became of one packet.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Packets (with length prefix) to write to the local node now, in order.
    pub forward: Vec<Vec<u8>>,
    /// Packets (with length prefix) to send back to the peer, from the local node's side.
    pub reply: Vec<Vec<u8>>,
    /// The message was refused: why, and a short description for the log.
    pub refused: Option<(Reason, String)>,
}

/// A packet that breaks the protocol (not a policy matter): the relay ends.
#[derive(Debug, thiserror::Error)]
#[error("malformed packet from the peer: {0}")]
pub struct Malformed(String);

/// What a peer gateway has used of its role's shared limits.
#[derive(Debug, Default)]
pub struct PeerState {
    atoms: HashSet<Box<str>>,
    messages: Bucket,
    bytes: Bucket,
}

impl PeerState {
    /// Distinct atoms the peer has had let through.
    pub fn atoms_seen(&self) -> usize {
        self.atoms.len()
    }
}

/// A token bucket (rate per second, burst of one second), lazily refilled.
#[derive(Debug, Default)]
struct Bucket {
    level: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes `n`, going into debt; returns how long to wait until the debt is paid.
    fn take(&mut self, rate: u64, n: u64, now: Instant) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let elapsed = self.at.map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.level = (self.level + elapsed * rate).min(rate) - n as f64;
        self.at = Some(now);
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / rate)
        }
    }
}

/// Shared per peer gateway.
pub type SharedPeer = Arc<Mutex<PeerState>>;

/// Inspects one lane's packets under a role.
#[derive(Debug)]
pub struct Ingress {
    role: Arc<Role>,
    /// The envelope the peer's node uses (dist header with fragments, or pass-through),
    /// learnt from its packets; replies use the same.
    flags: DFlags,
    peer: SharedPeer,
    cache: AtomCache,
    reassembler: Reassembler,
    /// Raw packets of messages being reassembled, by sequence id (forwarded as they came).
    held: HashMap<u64, Vec<Vec<u8>>>,
    /// Sequences refused midway: their remaining fragments are dropped.
    dropping: HashSet<u64>,
    /// Sequence ids of replies this side frames.
    next_seq: u64,
}

/// The pass-through envelope byte (no dist header).
const PASS_THROUGH: u8 = 112;

/// Most messages a lane reassembles at once (one sender per lane at a time, normally).
const MAX_OPEN: usize = 16;

impl Ingress {
    /// An inspector for packets from `peer`'s nodes under `role`.
    pub fn new(role: Arc<Role>, peer: SharedPeer) -> Self {
        let max = if role.max_message == 0 { usize::MAX } else { role.max_message };
        Ingress {
            reassembler: Reassembler::new(MAX_OPEN, max, max.saturating_mul(2)),
            role,
            flags: DFlags(DFlags::FRAGMENTS),
            peer,
            cache: AtomCache::default(),
            held: HashMap::new(),
            dropping: HashSet::new(),
            next_seq: 1,
        }
    }

    /// True when packets need no inspection at all (the fast path).
    pub fn is_open(&self) -> bool {
        self.role.is_open()
    }

    /// How long to wait before this packet may pass, under the role's rates (the debt is taken
    /// now, so waiting that long and then calling [`Ingress::packet`] is right).
    pub fn delay(&self, packet: &[u8], now: Instant) -> Duration {
        if self.role.messages_per_sec == 0 && self.role.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let starts_message = !matches!(packet.get(4..6), Some([131, 70]));
        let mut peer = lock(&self.peer);
        let m = match starts_message {
            true => peer.messages.take(self.role.messages_per_sec, 1, now),
            false => Duration::ZERO,
        };
        m.max(peer.bytes.take(self.role.bytes_per_sec, packet.len() as u64, now))
    }

    /// Inspects one packet (with its u32 length prefix).
    pub fn packet(&mut self, packet: Vec<u8>) -> Result<Verdict, Malformed> {
        if self.is_open() || packet.len() <= 4 {
            return Ok(Verdict { forward: vec![packet], ..Default::default() });
        }
        // The relay does not pass the atom-cache flag, so the envelope alone says how to read
        // a packet: 112 = pass-through, 131 = dist header (with fragments when negotiated).
        self.flags = match packet.get(4) {
            Some(&PASS_THROUGH) => DFlags(0),
            _ => DFlags(DFlags::FRAGMENTS),
        };
        let parsed = parse_packet(packet.get(4..).unwrap_or_default(), self.flags, &mut self.cache)
            .map_err(|e| Malformed(e.to_string()))?;
        let (atom_refs, body, versioned) = match parsed {
            Packet::Message { atom_refs, body, versioned } => (atom_refs, body.to_vec(), versioned),
            Packet::FragmentStart { seq, fragments, atom_refs, body } => {
                if self.dropping.remove(&seq) || self.held.contains_key(&seq) {
                    return Err(Malformed(format!("fragment sequence {seq} started twice")));
                }
                match self.reassembler.start(seq, fragments, atom_refs, body) {
                    Ok(None) => {
                        self.held.insert(seq, vec![packet]);
                        return Ok(Verdict::default());
                    }
                    Ok(Some(m)) => (m.atom_refs, m.body, false),
                    Err(FragmentError::TooLarge(_)) => return Ok(self.refuse_fragmented(seq, fragments > 1)),
                    Err(e) => return Err(Malformed(e.to_string())),
                }
            }
            Packet::FragmentCont { seq, fragment, body } => {
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
                        let mut v = self.message(&m.body, &m.atom_refs, false);
                        if v.refused.is_none() {
                            v.forward = raw;
                        }
                        return Ok(v);
                    }
                    Err(FragmentError::TooLarge(_)) => return Ok(self.refuse_fragmented(seq, fragment > 1)),
                    Err(e) => return Err(Malformed(e.to_string())),
                }
            }
        };
        let mut v = self.message(&body, &atom_refs, versioned);
        if v.refused.is_none() {
            v.forward = vec![packet];
        }
        Ok(v)
    }

    /// A fragmented message over the size limit: dropped, and its later fragments too.
    fn refuse_fragmented(&mut self, seq: u64, more_to_come: bool) -> Verdict {
        self.reassembler.abandon(seq);
        self.held.remove(&seq);
        if more_to_come {
            self.dropping.insert(seq);
        }
        let limit = self.role.max_message;
        Verdict { refused: Some((Reason::Size, format!("message over {limit} bytes"))), ..Default::default() }
    }

    /// Checks one whole message; the verdict's `forward` is left for the caller to fill.
    fn message(&mut self, body: &[u8], atom_refs: &[etf::Atom], versioned: bool) -> Verdict {
        let refuse = |reason: Reason, why: String| Verdict { refused: Some((reason, why)), ..Default::default() };
        if self.role.max_message != 0 && body.len() > self.role.max_message {
            return refuse(Reason::Size, format!("message of {} bytes, over {}", body.len(), self.role.max_message));
        }
        let limits = Limits {
            max_depth: if self.role.max_depth == 0 { Limits::default().max_depth } else { self.role.max_depth },
            ..Limits::default()
        };
        // Atoms and depth, over the whole message, before anything is decoded.
        let shared = self.peer.clone();
        let mut peer = lock(&shared);
        let budget = self.role.atom_budget;
        let mut atoms = AtomCounter { known: &peer.atoms, new: HashSet::new(), room: budget, limited: budget != 0 };
        for a in atom_refs {
            atoms.see(a.as_str());
        }
        let mut r = Reader::new(body);
        let walked = (|| -> Result<(), DecodeError> {
            for _ in 0..2 {
                if r.remaining() == 0 {
                    break;
                }
                if versioned {
                    r.u8()?;
                }
                etf::walk(&mut r, &limits, atom_refs.len(), &mut atoms)?;
            }
            Ok(())
        })();
        if atoms.limited && peer.atoms.len() + atoms.new.len() > budget {
            return refuse(Reason::Atoms, format!("atom budget of {budget} used up"));
        }
        match walked {
            Err(DecodeError::TooDeep(d)) => return refuse(Reason::Depth, format!("term deeper than {d}")),
            Err(e) => return refuse(Reason::Malformed, format!("undecodable message: {e}")),
            Ok(()) => {}
        }
        let new_atoms = std::mem::take(&mut atoms.new);
        drop(atoms);
        // The signal itself.
        let msg = match decode_message(body, atom_refs, versioned, &limits) {
            Ok(m) => m,
            Err(e) => return refuse(Reason::Malformed, format!("undecodable message: {e}")),
        };
        let v = self.check(&msg.control, msg.payload.as_ref());
        if v.refused.is_none() {
            // Only atoms that reach the node use the budget.
            peer.atoms.extend(new_atoms);
        }
        v
    }

    /// The role's rules for one signal.
    fn check(&mut self, control: &Control, payload: Option<&Term>) -> Verdict {
        let role = self.role.clone();
        let deny = |reason: Reason, why: String| Verdict { refused: Some((reason, why)), ..Default::default() };
        let name_allowed = |name: &str| {
            !role.deny_names.iter().any(|p| glob(p, name))
                && role.allow_names.as_ref().is_none_or(|a| a.iter().any(|p| glob(p, name)))
        };
        match control {
            Control::RegSend { to, .. } | Control::RegSendTT { to, .. } if !name_allowed(to.as_str()) => {
                deny(Reason::Name, format!("send to registered name {to}"))
            }
            Control::Send { .. }
            | Control::SendTT { .. }
            | Control::SendSender { .. }
            | Control::SendSenderTT { .. }
                if !role.send_to_pids =>
            {
                deny(Reason::Signal, "send to a pid".into())
            }
            Control::AliasSend { .. } | Control::AliasSendTT { .. } if !role.alias_send => {
                deny(Reason::Signal, "send to an alias".into())
            }
            Control::Link { .. }
            | Control::Unlink { .. }
            | Control::UnlinkId { .. }
            | Control::UnlinkIdAck { .. }
            | Control::Exit { .. }
            | Control::ExitTT { .. }
            | Control::PayloadExit { .. }
            | Control::PayloadExitTT { .. }
                if !role.links =>
            {
                deny(Reason::Signal, format!("link signal (op {})", control.op()))
            }
            Control::Exit2 { .. }
            | Control::Exit2TT { .. }
            | Control::PayloadExit2 { .. }
            | Control::PayloadExit2TT { .. }
                if !role.exit_signals =>
            {
                deny(Reason::Signal, "exit signal (exit/2)".into())
            }
            Control::GroupLeader { .. } if !role.group_leader => deny(Reason::Signal, "group leader change".into()),
            Control::MonitorP { from, to, reference } => match to {
                _ if !role.monitors => deny(Reason::Signal, "monitor".into()),
                ProcRef::Name(name) if !name_allowed(name.as_str()) => {
                    // Answer as if the name were not registered: the caller's monitor fires at
                    // once and a gen_server:call fails fast instead of timing out.
                    let exit = Control::MonitorPExit {
                        from: to.clone(),
                        to: from.clone(),
                        reference: reference.clone(),
                        reason: Term::Atom("noproc".into()),
                    };
                    let mut v = deny(Reason::Name, format!("monitor of registered name {name}"));
                    v.reply = self.frame(&exit);
                    v
                }
                _ => Verdict::default(),
            },
            Control::DemonitorP { .. } | Control::MonitorPExit { .. } | Control::PayloadMonitorPExit { .. }
                if !role.monitors =>
            {
                deny(Reason::Signal, "monitor".into())
            }
            Control::SpawnRequest { req_id, from, module, function, arity, .. }
            | Control::SpawnRequestTT { req_id, from, module, function, arity, .. } => {
                let mfa = effective_mfa(module.as_str(), function.as_str(), *arity, payload);
                if role.spawn.iter().any(|p| glob(p, &mfa)) {
                    return Verdict::default();
                }
                // A spawn_reply with an error: erpc:call raises {erpc, edist_refused} and
                // rpc:call returns {badrpc, {'EXIT', edist_refused}} at once.
                let reply = Control::SpawnReply {
                    req_id: req_id.clone(),
                    to: from.clone(),
                    flags: 0,
                    result: Term::Atom("edist_refused".into()),
                };
                let mut v = deny(Reason::Spawn, format!("spawn of {mfa}"));
                v.reply = self.frame(&reply);
                v
            }
            _ => Verdict::default(),
        }
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `module:function/arity` of what a spawn request runs: the MFA an `erpc` call (which
/// `rpc:call` uses too) executes, else the spawned function itself.
fn effective_mfa(module: &str, function: &str, arity: u8, args: Option<&Term>) -> String {
    let list = |t: Option<&Term>| match t {
        Some(Term::List(items, _)) => Some(items.clone()),
        Some(Term::String(bytes)) => Some(bytes.iter().map(|b| Term::Int(i64::from(*b))).collect()),
        Some(Term::Nil) => Some(Vec::new()),
        _ => None,
    };
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

/// Collects the atoms of a message that the peer has not sent before.
struct AtomCounter<'k> {
    known: &'k HashSet<Box<str>>,
    new: HashSet<Box<str>>,
    room: usize,
    limited: bool,
}

impl AtomCounter<'_> {
    fn see(&mut self, atom: &str) {
        if self.limited && self.new.len() <= self.room && !self.known.contains(atom) && !self.new.contains(atom) {
            self.new.insert(atom.into());
        }
    }

    fn token(&mut self, token: &Token<'_>) -> Result<(), DecodeError> {
        if !self.limited {
            return Ok(());
        }
        let mut see = |a: &AtomText<'_>| {
            if let AtomText::Text(t) = a {
                self.see(t);
            }
        };
        match token {
            Token::Atom(a) => see(a),
            Token::Pid { node, .. } | Token::Port { node, .. } | Token::Ref { node, .. } => see(node),
            Token::Export { module, function, .. } => {
                see(module);
                see(function);
            }
            Token::Fun { module, pid, .. } => {
                see(module);
                see(&pid.0);
            }
            _ => {}
        }
        // Stop walking as soon as the budget is exceeded (a million-atom message costs no more).
        if self.known.len() + self.new.len() > self.room {
            return Err(DecodeError::TooDeep(0));
        }
        Ok(())
    }
}

impl<'a> Visitor<'a> for AtomCounter<'_> {
    fn token(&mut self, token: &Token<'a>, _depth: u32) -> Result<(), DecodeError> {
        AtomCounter::token(self, token)
    }

    fn inflated_token(&mut self, token: &Token<'_>, _depth: u32) -> Result<(), DecodeError> {
        AtomCounter::token(self, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edist_proto::etf::{Atom, Pid, Ref};

    /// The flags of a relayed connection between two OTP 25 nodes (fragments, no atom cache).
    const FLAGS: DFlags = DFlags(0xD07DF7FBD & crate::relay::RELAY_MASK);

    fn pid(n: u32) -> Pid {
        Pid { node: Atom::from("dev@h"), id: n, serial: 0, creation: 5 }
    }
    fn rf(n: u32) -> Ref {
        Ref { node: Atom::from("dev@h"), creation: 5, ids: vec![n, 2, 3] }
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

    fn ingress(role: Role) -> Ingress {
        Ingress::new(Arc::new(role), SharedPeer::default())
    }

    fn reg_send(to: &str) -> Control {
        Control::RegSend { from: pid(1), to: Atom::from(to) }
    }

    fn decode_reply(p: &[u8]) -> Control {
        let mut cache = AtomCache::default();
        let Packet::Message { body, atom_refs, versioned } = parse_packet(&p[4..], FLAGS, &mut cache).unwrap() else {
            panic!("not a whole message")
        };
        decode_message(body, &atom_refs, versioned, &Limits::default()).unwrap().control
    }

    #[test]
    fn trusted_passes_everything_untouched() {
        let mut i = ingress(Role::trusted());
        let p = one(&reg_send("rex"), Some(&Term::Atom("x".into())));
        assert_eq!(i.packet(p.clone()).unwrap(), Verdict { forward: vec![p], ..Default::default() });
    }

    #[test]
    fn device_sends_to_allowed_names_but_not_to_rex() {
        let mut i = ingress(Role::device());
        let ok = one(&reg_send("bench_echo"), Some(&Term::Atom("hello".into())));
        assert_eq!(i.packet(ok.clone()).unwrap().forward, vec![ok]);
        let v = i.packet(one(&reg_send("rex"), Some(&Term::Nil))).unwrap();
        assert!(v.forward.is_empty() && v.reply.is_empty());
        assert_eq!(v.refused.unwrap().0, Reason::Name);
        let v = i.packet(one(&Control::Exit2 { from: pid(1), to: pid(2), reason: Term::Atom("kill".into()) }, None));
        assert_eq!(v.unwrap().refused.unwrap().0, Reason::Signal);
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
            opts: Term::Nil,
        };
        let args = Term::List(
            vec![
                Term::Ref(rf(8)),
                Term::Atom("os".into()),
                Term::Atom("cmd".into()),
                Term::List(vec![Term::String(b"id".to_vec())], Box::new(Term::Nil)),
            ],
            Box::new(Term::Nil),
        );
        let v = i.packet(one(&spawn, Some(&args))).unwrap();
        let (reason, why) = v.refused.unwrap();
        assert_eq!((reason, why.as_str()), (Reason::Spawn, "spawn of os:cmd/1"));
        assert!(v.forward.is_empty());
        match decode_reply(&v.reply[0]) {
            Control::SpawnReply { req_id, to, result, .. } => {
                assert_eq!((req_id, to, result), (rf(7), pid(3), Term::Atom("edist_refused".into())));
            }
            c => panic!("{c:?}"),
        }
        // A role allowing os:* lets the same request through.
        let mut role = Role::device();
        role.spawn = vec!["os:*".into()];
        let p = one(&spawn, Some(&args));
        assert_eq!(ingress(role).packet(p.clone()).unwrap().forward, vec![p]);

        let mon = Control::MonitorP { from: pid(3), to: ProcRef::Name(Atom::from("rex")), reference: rf(9) };
        let v = i.packet(one(&mon, None)).unwrap();
        assert_eq!(v.refused.unwrap().0, Reason::Name);
        match decode_reply(&v.reply[0]) {
            Control::MonitorPExit { from, to, reference, reason } => {
                assert_eq!(from, ProcRef::Name(Atom::from("rex")));
                assert_eq!((to, reference, reason), (pid(3), rf(9), Term::Atom("noproc".into())));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn atom_budget_is_per_peer_and_counts_only_new_atoms() {
        let mut role = Role::device();
        role.atom_budget = 11;
        let peer = SharedPeer::default();
        let role = Arc::new(role);
        let mut a = Ingress::new(role.clone(), peer.clone());
        let mut b = Ingress::new(role, peer.clone());
        let atoms =
            |from: u32, n: u32| Term::Tuple((from..from + n).map(|k| Term::Atom(format!("a{k}").into())).collect());
        // reg_send carries three atoms itself ('', the sender's node, the name).
        assert!(a.packet(one(&reg_send("sink"), Some(&atoms(0, 5)))).unwrap().refused.is_none());
        assert_eq!(peer.lock().unwrap().atoms.len(), 8);
        // The same atoms again cost nothing, on another lane too.
        assert!(b.packet(one(&reg_send("sink"), Some(&atoms(0, 5)))).unwrap().refused.is_none());
        let v = b.packet(one(&reg_send("sink"), Some(&atoms(100, 4)))).unwrap();
        assert_eq!(v.refused.unwrap().0, Reason::Atoms);
        assert_eq!(peer.lock().unwrap().atoms.len(), 8, "a refused message uses no budget");
        assert!(a.packet(one(&reg_send("sink"), Some(&atoms(100, 3)))).unwrap().refused.is_none());
        assert_eq!(peer.lock().unwrap().atoms.len(), 11);
        assert!(a.packet(one(&reg_send("sink"), Some(&atoms(200, 1)))).unwrap().refused.is_some());
    }

    #[test]
    fn oversized_fragmented_message_is_dropped_whole_and_the_lane_goes_on() {
        let mut role = Role::device();
        role.max_message = 10_000;
        let mut i = ingress(role);
        let big = Term::Binary(vec![7; 50_000]);
        let frags = packets(&reg_send("sink"), Some(&big), 11, 4_000);
        assert!(frags.len() > 3);
        let mut refused = 0;
        for f in frags {
            let v = i.packet(f).unwrap();
            assert!(v.forward.is_empty());
            refused += usize::from(v.refused.is_some());
        }
        assert_eq!(refused, 1);
        assert_eq!(i.reassembler.buffered(), 0, "a refused message leaves nothing behind");
        // A fragmented message under the limit is held, then forwarded whole, as it came.
        let small = packets(&reg_send("sink"), Some(&Term::Binary(vec![1; 6_000])), 12, 4_000);
        let mut out = Vec::new();
        for f in small.clone() {
            out.extend(i.packet(f).unwrap().forward);
        }
        assert_eq!(out, small);
    }

    #[test]
    fn deep_terms_are_refused() {
        let mut t = Term::Nil;
        for _ in 0..100 {
            t = Term::Tuple(vec![t]);
        }
        let v = ingress(Role::device()).packet(one(&reg_send("sink"), Some(&t))).unwrap();
        assert_eq!(v.refused.unwrap().0, Reason::Depth);
    }

    #[test]
    fn undecodable_messages_are_refused_and_broken_envelopes_end_the_lane() {
        let mut i = ingress(Role::device());
        // A dist header (131, 68, no atom refs) over a body that is not a term.
        let v = i.packet(vec![0, 0, 0, 6, 131, 68, 0, 255, 1, 2]).unwrap();
        assert_eq!(v.refused.unwrap().0, Reason::Malformed);
        assert!(v.forward.is_empty());
        // An envelope that is neither 131 nor 112: a protocol violation.
        assert!(i.packet(vec![0, 0, 0, 2, 7, 7]).is_err());
    }

    #[test]
    fn rates_delay_instead_of_dropping() {
        let mut role = Role::device();
        role.messages_per_sec = 100;
        let i = ingress(role);
        let p = one(&reg_send("sink"), None);
        let now = Instant::now();
        let waits: Vec<Duration> = (0..150).map(|_| i.delay(&p, now)).collect();
        assert_eq!(waits[99], Duration::ZERO);
        assert!(waits[149] >= Duration::from_millis(400), "{:?}", waits[149]);
        // The debt (50 messages) is paid at 100/s.
        assert!(i.delay(&p, now + Duration::from_millis(200)) >= Duration::from_millis(300));
        assert_eq!(i.delay(&p, now + Duration::from_secs(2)), Duration::ZERO);
    }
}
