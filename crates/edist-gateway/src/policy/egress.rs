//! What the local node sends to the peer, seen by the policy, sans-IO: the source of the peer's
//! capabilities and free atoms. The relay's pump hands every packet its node sends on a
//! connection under a restricted role to [`Egress::packet`] (before queueing it for the peer, so
//! a capability exists before the peer can use it); nothing is changed or held here, the packet
//! goes on as it is.
//!
//! What a packet grants, by control message (local process `L`, peer process `P`):
//!
//! * any payload, and the reasons of exit and `DOWN` signals: every pid, alias (reference) and
//!   port in it that is not the peer node's own — the peer's process sees them;
//! * `LINK L→P`: `L` (the peer's process sees its links) and the link; `UNLINK_ID`, `UNLINK`,
//!   `UNLINK_ID_ACK` take the link down;
//! * `EXIT`/`PAYLOAD_EXIT L→P` (`L` ended, its links fire) and `MONITOR_P_EXIT` from `L` (a
//!   monitored `L` ended): what pointed at `L` goes;
//! * `EXIT2 L→P`: `L` (it appears in the peer's `'EXIT'` message);
//! * `MONITOR_P L→P`: the monitor (the peer may answer it with `DOWN`); `DEMONITOR_P` takes it
//!   down;
//! * `SPAWN_REQUEST` by `L`: `L` and the group leader (the new process talks to both), and the
//!   request (its reply, link and monitor);
//! * `SPAWN_REPLY` to a request of the peer: the new process, as one the peer spawned (it may
//!   link to it and signal it), and its link to the peer's parent if one was set up;
//! * `GROUP_LEADER L→P`: `L` (the peer's process does its I/O through it).
//!
//! The sender of a message (`SEND_SENDER`, `REG_SEND`, `ALIAS_SEND`) is not granted: a process
//! cannot see who sent it a message, and `net_kernel` answering a ping must not hand out its pid.
//! Atoms of every packet are learned (they exist here). Fragmented messages are reassembled,
//! bounded ([`MAX_MESSAGE`]); one that does not fit grants nothing (fail closed): hand a device
//! pids in messages under 1 MiB.

use super::ingress::Session;
use super::state::{LinkBy, PeerState, Thing};
use edist_proto::dist::control::{Control, ProcRef};
use edist_proto::dist::fragment::Reassembler;
use edist_proto::dist::header::{parse_packet, AtomCache, Packet};
use edist_proto::dist::DFlags;
use edist_proto::etf::{self, Atom, AtomText, DecodeError, Decoder, Limits, Reader, Term, Token, Visitor};
use std::sync::Arc;

/// Most fragmented messages being reassembled at once, per connection.
const MAX_OPEN: usize = 64;
/// Largest fragmented message read for capabilities: a larger one (a firmware image, a big
/// binary) grants nothing and teaches no atoms, so that what the gateway copies to read
/// outgoing messages stays small next to what it queues for them.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Bytes buffered for reassembly at once, per connection.
const MAX_BUFFERED: usize = 2 << 20;

/// Observes what one relayed connection's local node sends to the peer.
#[derive(Debug)]
pub struct Egress {
    session: Arc<Session>,
    cache: AtomCache,
    reassembler: Reassembler,
    /// Nothing to learn: no capabilities and no atom budget.
    idle: bool,
}

impl Egress {
    /// An observer for `session`'s local node.
    pub fn new(session: Arc<Session>) -> Egress {
        let idle = !session.role.capabilities && session.role.atom_budget == 0;
        Egress {
            session,
            cache: AtomCache::default(),
            reassembler: Reassembler::new(MAX_OPEN, MAX_MESSAGE, MAX_BUFFERED),
            idle,
        }
    }

    /// One packet (with its u32 length prefix) the local node sent towards the peer. Never
    /// fails: what it cannot read grants nothing.
    pub fn packet(&mut self, packet: &[u8]) {
        if self.idle || packet.len() <= 4 {
            return;
        }
        let flags = match packet.get(4) {
            Some(112) => DFlags(0),
            _ => DFlags(DFlags::FRAGMENTS),
        };
        let Ok(parsed) = parse_packet(packet.get(4..).unwrap_or_default(), flags, &mut self.cache) else { return };
        match parsed {
            Packet::Message { atom_refs, body, versioned } => self.message(body, &atom_refs, versioned),
            Packet::FragmentStart { seq, fragments, atom_refs, body } => {
                match self.reassembler.start(seq, fragments, atom_refs, body) {
                    Ok(Some(m)) => self.message(&m.body, &m.atom_refs, false),
                    Ok(None) => {}
                    Err(_) => self.reassembler.abandon(seq),
                }
            }
            Packet::FragmentCont { seq, fragment, body } => match self.reassembler.cont(seq, fragment, body) {
                Ok(Some(m)) => self.message(&m.body, &m.atom_refs, false),
                Ok(None) => {}
                Err(_) => self.reassembler.abandon(seq),
            },
        }
    }

    fn message(&mut self, body: &[u8], atom_refs: &[Atom], versioned: bool) {
        let limits = Limits::default();
        let mut r = Reader::new(body);
        if versioned && !matches!(r.u8(), Ok(etf::tag::VERSION)) {
            return;
        }
        let start = r.position();
        let Ok(term) = Decoder::with_atom_refs(&limits, atom_refs).term(&mut r) else { return };
        let control_bytes = body.get(start..r.position()).unwrap_or_default();
        let Ok(control) = Control::from_term(term) else { return };
        let payload = match (control.has_payload(), versioned) {
            (false, _) => None,
            (true, true) if !matches!(r.u8(), Ok(etf::tag::VERSION)) => return,
            (true, _) => Some(r.rest()),
        };
        let session = self.session.clone();
        let mut peer = session.lock();
        let remote = session.remote.as_str();
        let (id, max) = (session.id(), session.role.max_grants);
        let caps = session.role.capabilities;
        if caps {
            signal(&control, &mut peer, id, max, remote);
        }
        // Atoms of the control message; atoms and things of the payload.
        let mut learn = Learn { peer: &mut peer, remote, session: id, max, grant: false };
        let _ = etf::walk(&mut Reader::new(control_bytes), &limits, atom_refs.len(), &mut learn);
        if let Some(p) = payload {
            learn.grant = caps;
            let _ = etf::walk(&mut Reader::new(p), &limits, atom_refs.len(), &mut learn);
        }
    }
}

/// What a control message from the local node changes in the peer's capabilities.
fn signal(control: &Control, peer: &mut PeerState, session: u64, max: usize, remote: &str) {
    use Control::*;
    let caps = &mut peer.caps;
    let grant_reason = |caps: &mut super::state::Capabilities, reason: &Term| {
        each_thing(reason, &mut |t| {
            if t.node() != Some(remote) {
                caps.grant(&t, session, max);
            }
        })
    };
    match control {
        Link { from, to } => {
            caps.grant(&Thing::Pid(from), session, max);
            caps.add_link(from, to, LinkBy::Local, session, max);
        }
        Unlink { from, to } | UnlinkId { from, to, .. } | UnlinkIdAck { from, to, .. } => caps.remove_link(from, to),
        Exit { from, to, reason } | ExitTT { from, to, reason, .. } => {
            grant_reason(caps, reason);
            caps.remove_link(from, to);
            caps.process_ended(from);
        }
        PayloadExit { from, to } | PayloadExitTT { from, to, .. } => {
            caps.remove_link(from, to);
            caps.process_ended(from);
        }
        Exit2 { from, reason, .. } | Exit2TT { from, reason, .. } => {
            caps.grant(&Thing::Pid(from), session, max);
            grant_reason(caps, reason);
        }
        PayloadExit2 { from, .. } | PayloadExit2TT { from, .. } => caps.grant(&Thing::Pid(from), session, max),
        MonitorP { from, reference, .. } => caps.add_monitor(reference, from, session, max),
        DemonitorP { reference, .. } => caps.remove_monitor(reference),
        MonitorPExit { from, reason, .. } => {
            grant_reason(caps, reason);
            if let ProcRef::Pid(p) = from {
                caps.process_ended(p);
            }
        }
        PayloadMonitorPExit { from, .. } => {
            if let ProcRef::Pid(p) = from {
                caps.process_ended(p);
            }
        }
        SpawnRequest { req_id, from, group_leader, opts, .. }
        | SpawnRequestTT { req_id, from, group_leader, opts, .. } => {
            caps.grant(&Thing::Pid(from), session, max);
            caps.grant(&Thing::Pid(group_leader), session, max);
            let items = opts.to_proper_list().unwrap_or_default();
            let has = |name: &str| {
                items.iter().any(|o| match o {
                    Term::Atom(a) => a.as_str() == name,
                    Term::Tuple(t) => t.first().and_then(Term::as_atom).is_some_and(|a| a.as_str() == name),
                    _ => false,
                })
            };
            caps.add_spawn(req_id, from, has("link"), has("monitor"), session, max);
        }
        SpawnReply { to, flags, result, .. } | SpawnReplyTT { to, flags, result, .. } => {
            if let Term::Pid(child) = result {
                caps.grant_owned(child, session, max);
                if flags & 1 != 0 {
                    caps.add_link(child, to, LinkBy::Peer, session, max);
                }
            }
        }
        GroupLeader { from, .. } => caps.grant(&Thing::Pid(from), session, max),
        Send { .. }
        | SendTT { .. }
        | SendSender { .. }
        | SendSenderTT { .. }
        | RegSend { .. }
        | RegSendTT { .. }
        | AliasSend { .. }
        | AliasSendTT { .. }
        | NodeLink => {}
    }
}

/// Calls `f` with every pid, port and reference in `t` (iteratively: terms can be deep).
fn each_thing(t: &Term, f: &mut dyn FnMut(Thing<'_>)) {
    let mut stack = vec![t];
    while let Some(t) = stack.pop() {
        match t {
            Term::Pid(p) => f(Thing::Pid(p)),
            Term::Port(p) => f(Thing::Port(p)),
            Term::Ref(r) => f(Thing::Ref(r)),
            Term::Tuple(items) => stack.extend(items.iter()),
            Term::List(items, tail) => {
                stack.extend(items.iter());
                stack.push(tail);
            }
            Term::Map(pairs) => {
                for (k, v) in pairs {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Term::Fun(fun) => stack.extend(fun.free_vars.iter()),
            _ => {}
        }
    }
}

/// Learns atoms, and (in a payload) grants the pids, aliases and ports it holds.
struct Learn<'p> {
    peer: &'p mut PeerState,
    remote: &'p str,
    session: u64,
    max: usize,
    grant: bool,
}

impl Learn<'_> {
    fn text(&mut self, a: &AtomText<'_>) {
        if let AtomText::Text(t) = a {
            self.peer.atoms.learn(t);
        }
    }

    fn see(&mut self, token: &Token<'_>) {
        match token {
            Token::Atom(a) => self.text(a),
            Token::Pid { node, .. } | Token::Port { node, .. } | Token::Ref { node, .. } => {
                self.text(node);
                let thing = Thing::Token(token);
                if self.grant && thing.node() != Some(self.remote) {
                    self.peer.caps.grant(&thing, self.session, self.max);
                }
            }
            Token::Export { module, function, .. } => {
                self.text(module);
                self.text(function);
            }
            Token::Fun { module, pid, .. } => {
                self.text(module);
                self.text(&pid.0);
            }
            _ => {}
        }
    }
}

impl<'a> Visitor<'a> for Learn<'_> {
    fn token(&mut self, token: &Token<'a>, _depth: u32) -> Result<(), DecodeError> {
        self.see(token);
        Ok(())
    }

    fn inflated_token(&mut self, token: &Token<'_>, _depth: u32) -> Result<(), DecodeError> {
        self.see(token);
        Ok(())
    }
}
