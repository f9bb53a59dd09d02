//! Both legs of a relayed handshake between two real handshake machines as the nodes, in
//! memory, in the manner of quinn-proto's `Pair`: node a (an [`Initiator`], as OTP's dialler)
//! ─ gateway A's [`NearLeg`] ─ gateway B's [`FarLeg`] ─ node b (an [`Acceptor`], as OTP's).
//! Messages between the gateways go through their wire encoding. No socket, no clock.
use super::*;
use bytes::BytesMut;
use edist_proto::dist::handshake::digest;

/// Gateway A's cookie, and gateway B's.
const GA: &[u8] = b"x";
const GB: &[u8] = b"y";

#[derive(Debug, Clone)]
struct Setup {
    a_cookie: &'static [u8],
    b_cookie: &'static [u8],
    a_flags: DFlags,
    b_flags: DFlags,
    /// a's name: a full one, or only the host with `NAME_ME` in `a_flags`.
    a_name: &'static str,
    /// What b answers a's name with.
    b_status: Status,
    /// What a answers `alive` with.
    alive_answer: bool,
    /// Gateway B relays cookies end to end (else it is an older one, which clears the bit).
    far_e2e: bool,
    /// Gateway A's decision after the name: `None` refuses; else the given name, and hide.
    decision: Option<(Option<(String, u32)>, bool)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            a_cookie: GA,
            b_cookie: GB,
            a_flags: DFlags::edist_default(true),
            b_flags: DFlags::edist_default(true),
            a_name: "a@ha",
            b_status: Status::Ok,
            alive_answer: true,
            far_e2e: true,
            decision: Some((None, false)),
        }
    }
}

/// How a gateway's leg ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Up,
    Failed(LegError),
    /// Its other side closed while it waited there (the shell's own error).
    Gone,
    /// Its gateway refused the local node.
    RefusedHere,
}

/// How a node's handshake ended.
type NodeEnd = Result<Connected, HandshakeError>;

fn closed() -> HandshakeError {
    HandshakeError::OutOfOrder("closed")
}

struct Pair {
    s: Setup,
    a: Initiator,
    near: NearLeg,
    far: Option<FarLeg>,
    b: Acceptor,
    /// Bytes on their way, by receiver.
    to_a: Vec<u8>,
    to_near: Vec<u8>,
    near_stream: BytesMut,
    far_stream: BytesMut,
    to_far: Vec<u8>,
    to_b: Vec<u8>,
    /// Every message between the gateways and every node step, in order.
    trace: Vec<String>,
    statuses_at_a: Vec<Status>,
    a_end: Option<NodeEnd>,
    b_end: Option<NodeEnd>,
    near_end: Option<End>,
    far_end: Option<End>,
    /// Changes every byte a (or b) sends at this offset of its output, to play a hostile node.
    corrupt_a: Option<usize>,
    corrupt_b: Option<usize>,
    sent_a: usize,
    sent_b: usize,
}

impl Pair {
    fn new(s: Setup) -> Pair {
        let a = Initiator::new(InitiatorConfig {
            name: s.a_name.into(),
            flags: s.a_flags,
            creation: 5,
            cookie: s.a_cookie.to_vec(),
            challenge: 77,
            peer: "b@hb".into(),
        });
        let b = Acceptor::new(AcceptorConfig {
            name: "b@hb".into(),
            flags: s.b_flags,
            creation: 9,
            cookie: s.b_cookie.to_vec(),
            challenge: 555,
        });
        Pair {
            a,
            near: NearLeg::new("b@hb", 9, GA, 1234),
            far: None,
            b,
            s,
            to_a: Vec::new(),
            to_near: Vec::new(),
            near_stream: BytesMut::new(),
            far_stream: BytesMut::new(),
            to_far: Vec::new(),
            to_b: Vec::new(),
            trace: Vec::new(),
            statuses_at_a: Vec::new(),
            a_end: None,
            b_end: None,
            near_end: None,
            far_end: None,
            corrupt_a: None,
            corrupt_b: None,
            sent_a: 0,
            sent_b: 0,
        }
    }

    fn run(s: Setup) -> Pair {
        let mut p = Pair::new(s);
        p.settle();
        p
    }

    /// Steps until nothing moves (each round, each party once).
    fn settle(&mut self) {
        for _ in 0..100 {
            if !self.step() {
                return;
            }
        }
        panic!("no end in sight: {:#?}", self.trace);
    }

    fn step(&mut self) -> bool {
        let moved = [self.step_a(), self.step_near(), self.step_far(), self.step_b()];
        moved.contains(&true)
    }

    fn step_a(&mut self) -> bool {
        if self.a_end.is_some() {
            return false;
        }
        let mut moved = false;
        let input = std::mem::take(&mut self.to_a);
        let r = (|| {
            if !input.is_empty() {
                moved = true;
                self.a.handle(&input)?;
            }
            while let Some(ev) = self.a.poll()? {
                moved = true;
                match ev {
                    InitiatorEvent::Status(st) => {
                        self.trace.push(format!("a got status {st:?}"));
                        self.statuses_at_a.push(st.clone());
                        match st {
                            Status::Alive => self.a.answer_alive(self.s.alive_answer)?,
                            Status::Nok | Status::NotAllowed => return Err(HandshakeError::Rejected(st)),
                            _ => {}
                        }
                    }
                    InitiatorEvent::Challenge { .. } => {
                        self.trace.push("a replies".into());
                        self.a.reply()?;
                    }
                    InitiatorEvent::Connected(c) => return Ok(Some(c)),
                }
            }
            Ok(None)
        })();
        let out = self.a.take_output();
        moved |= !out.is_empty();
        let out = corrupt(out, &mut self.sent_a, self.corrupt_a);
        self.to_near.extend_from_slice(&out);
        match r {
            Ok(Some(c)) => self.a_end = Some(Ok(c)),
            Ok(None) if !self.s.alive_answer && self.statuses_at_a.contains(&Status::Alive) => {
                self.a_end = Some(Err(HandshakeError::Rejected(Status::Alive)));
            }
            // Its socket closed behind the last bytes.
            Ok(None) if self.near_end.is_some() => {
                moved = true;
                self.a_end = Some(Err(closed()));
            }
            Ok(None) => {}
            Err(e) => self.a_end = Some(Err(e)),
        }
        moved
    }

    fn step_near(&mut self) -> bool {
        if self.near_end.is_some() {
            return false;
        }
        let r = match self.near.need() {
            Need::Node(_) if !self.to_near.is_empty() => {
                let input = std::mem::take(&mut self.to_near);
                self.near.node_bytes(&input)
            }
            // The shell's read sees the node's socket closed.
            Need::Node(_) if self.a_end.is_some() => Err(LegError::NodeClosed),
            Need::Decision => match self.s.decision.clone() {
                None => self.near.refuse(),
                Some((named, hide)) => self.near.open(1, named, hide).map(|open| {
                    self.trace.push(format!("near -> far: {open:?}"));
                    self.far_stream.extend_from_slice(&open.encode());
                }),
            },
            Need::Peer(_) => match Msg::decode(&mut self.near_stream).unwrap() {
                Some(m) => self.near.peer_msg(m),
                None if self.far_end.is_some() => {
                    self.near_end = Some(End::Gone);
                    return true;
                }
                None => return false,
            },
            Need::Node(_) | Need::Done => return false,
        };
        // As the shell: whatever was queued goes, then the error ends it.
        self.to_a.extend_from_slice(&self.near.take_node_output());
        while let Some(m) = self.near.poll_peer() {
            self.trace.push(format!("near -> far: {m:?}"));
            self.far_stream.extend_from_slice(&m.encode());
        }
        match r {
            Err(LegError::NodeClosed) => self.near_end = Some(End::Gone),
            Err(e) => self.near_end = Some(End::Failed(e)),
            Ok(()) if self.near.need() == Need::Done => {
                self.near_end = Some(match self.near.connected() {
                    Some(_) => End::Up,
                    None => End::RefusedHere,
                })
            }
            Ok(()) => {}
        }
        true
    }

    fn step_far(&mut self) -> bool {
        if self.far_end.is_some() {
            return false;
        }
        let Some(far) = self.far.as_mut() else {
            // Gateway B reads the Open and dials b.
            return match Msg::decode(&mut self.far_stream).unwrap() {
                Some(Msg::Open { relay: 1, from, to, flags, creation }) => {
                    let flags = if self.s.far_e2e { flags } else { flags & !E2E_COOKIES };
                    self.far = Some(FarLeg::new(&from, &to, DFlags(flags), creation, GB, 4321, self.hide()));
                    self.trace.push(format!("far dials {to} as {from}"));
                    self.flush_far();
                    true
                }
                Some(m) => panic!("not an Open: {m:?}"),
                None => false,
            };
        };
        let r = match far.need() {
            Need::Node(_) if !self.to_far.is_empty() => {
                let input = std::mem::take(&mut self.to_far);
                far.node_bytes(&input)
            }
            Need::Node(_) if self.b_end.is_some() => Err(far.node_closed()),
            Need::Peer(_) => match Msg::decode(&mut self.far_stream).unwrap() {
                Some(m) => far.peer_msg(m),
                None if self.near_end.is_some() => {
                    self.far_end = Some(End::Gone);
                    return true;
                }
                None => return false,
            },
            Need::Node(_) | Need::Decision | Need::Done => return false,
        };
        self.flush_far();
        match r {
            Err(LegError::NodeClosed) => self.far_end = Some(End::Gone),
            Err(e) => self.far_end = Some(End::Failed(e)),
            Ok(()) => {
                if let Some(far) = self.far.as_ref().filter(|f| f.need() == Need::Done) {
                    assert!(far.connected().is_some());
                    self.far_end = Some(End::Up);
                }
            }
        }
        true
    }

    fn flush_far(&mut self) {
        let Some(far) = self.far.as_mut() else { return };
        self.to_b.extend_from_slice(&far.take_node_output());
        while let Some(m) = far.poll_peer() {
            self.trace.push(format!("far -> near: {m:?}"));
            self.near_stream.extend_from_slice(&m.encode());
        }
    }

    fn hide(&self) -> bool {
        self.s.decision.as_ref().is_some_and(|d| d.1)
    }

    fn step_b(&mut self) -> bool {
        if self.b_end.is_some() {
            return false;
        }
        let mut moved = false;
        let input = std::mem::take(&mut self.to_b);
        let r = (|| {
            if !input.is_empty() {
                moved = true;
                self.b.handle(&input)?;
            }
            while let Some(ev) = self.b.poll()? {
                moved = true;
                match ev {
                    AcceptorEvent::Name { name, .. } => {
                        self.trace.push(format!("b got name {name}"));
                        self.b.respond(self.s.b_status.clone())?;
                        if matches!(self.s.b_status, Status::Nok | Status::NotAllowed) {
                            return Err(HandshakeError::Rejected(self.s.b_status.clone()));
                        }
                    }
                    AcceptorEvent::AliveAnswer(true) => {}
                    AcceptorEvent::AliveAnswer(false) => return Err(HandshakeError::Rejected(Status::Alive)),
                    AcceptorEvent::Authenticated => {
                        self.trace.push("b authenticated a".into());
                        return self.b.complete().map(Some);
                    }
                }
            }
            Ok(None)
        })();
        let out = self.b.take_output();
        moved |= !out.is_empty();
        let out = corrupt(out, &mut self.sent_b, self.corrupt_b);
        self.to_far.extend_from_slice(&out);
        match r {
            Ok(Some(c)) => self.b_end = Some(Ok(c)),
            Ok(None) if self.far_end.is_some() => {
                moved = true;
                self.b_end = Some(Err(closed()));
            }
            Ok(None) => {}
            // OTP's acceptor closes on a bad digest (after logging it).
            Err(e) => self.b_end = Some(Err(e)),
        }
        moved
    }

    fn all_up(&self) -> bool {
        matches!(self.a_end, Some(Ok(_)))
            && matches!(self.b_end, Some(Ok(_)))
            && self.near_end == Some(End::Up)
            && self.far_end == Some(End::Up)
    }

    /// Connected, or failed with a typed error somewhere, or a leg still waits for a node
    /// (a frame that claims more bytes than come: the shell times the step out).
    fn ended_or_waiting(&self) -> bool {
        let failed = [&self.near_end, &self.far_end].iter().any(|e| matches!(e, Some(End::Failed(_))));
        let node_failed = matches!(self.a_end, Some(Err(_))) || matches!(self.b_end, Some(Err(_)));
        let waiting = matches!(self.near.need(), Need::Node(_))
            || self.far.as_ref().is_some_and(|f| matches!(f.need(), Need::Node(_)));
        self.all_up() || failed || node_failed || waiting
    }

    fn flags(&self) -> [DFlags; 4] {
        let (Some(Ok(a)), Some(Ok(b))) = (&self.a_end, &self.b_end) else { panic!("{:#?}", self.trace) };
        [a.flags, self.near.connected().unwrap().flags, self.far.as_ref().unwrap().connected().unwrap().flags, b.flags]
    }

    /// What gateway A sent gateway B after the `Open`.
    fn near_sent(&self) -> Vec<&str> {
        self.trace.iter().filter_map(|t| t.strip_prefix("near -> far: ")).filter(|t| !t.starts_with("Open")).collect()
    }

    fn at(&self, what: &str) -> usize {
        self.trace.iter().position(|t| t.starts_with(what)).unwrap_or_else(|| panic!("no {what}: {:#?}", self.trace))
    }
}

fn corrupt(mut out: Vec<u8>, sent: &mut usize, at: Option<usize>) -> Vec<u8> {
    if let Some(i) = at.and_then(|at| at.checked_sub(*sent)) {
        if let Some(byte) = out.get_mut(i) {
            *byte ^= 0x5A;
        }
    }
    *sent += out.len();
    out
}

#[test]
fn both_legs_agree_on_the_same_flags() {
    // Different offers on both ends, and an atom cache a relay never lets through.
    let a_flags = DFlags(DFlags::edist_default(true).0 | DFlags::DIST_HDR_ATOM_CACHE | DFlags::ALIAS);
    let b_flags = DFlags((DFlags::edist_default(true).0 | DFlags::DIST_HDR_ATOM_CACHE) & !DFlags::ALIAS);
    let p = Pair::run(Setup { a_flags, b_flags, ..Setup::default() });
    assert!(p.all_up(), "{:#?}", p.trace);
    let flags = p.flags();
    assert!(flags.iter().all(|f| *f == flags[0]), "{flags:x?}");
    assert!(!flags[0].has(DFlags::DIST_HDR_ATOM_CACHE) && !flags[0].has(DFlags::ALIAS));
    assert!(flags[0].has(DFlags::FRAGMENTS) && flags[0].is_published());
    // Names and creations as if a had dialled b directly.
    let (Some(Ok(a)), Some(Ok(b))) = (&p.a_end, &p.b_end) else { unreachable!() };
    assert_eq!((a.peer.as_str(), a.peer_creation, b.peer.as_str(), b.peer_creation), ("b@hb", 9, "a@ha", 5));
    assert_eq!(p.statuses_at_a, vec![Status::Ok]);

    // Hidden by a role: hidden on both legs, and still identical.
    let p = Pair::run(Setup { a_flags, b_flags, decision: Some((None, true)), ..Setup::default() });
    let flags = p.flags();
    assert!(flags.iter().all(|f| *f == flags[0]), "{flags:x?}");
    assert!(!flags[0].is_published());
}

#[test]
fn the_local_digest_is_checked_before_the_far_leg_goes_on() {
    // The gateways' cookies: a's reply reaches gateway A before anything goes on to B, and b
    // hears from the far gateway only after that.
    let p = Pair::run(Setup::default());
    assert!(p.all_up());
    assert_eq!(p.near_sent(), vec!["Proceed"]);
    assert!(p.at("a replies") < p.at("near -> far: Proceed"));
    assert!(p.at("near -> far: Proceed") < p.at("b authenticated a"));

    // A wrong cookie towards an older far gateway: refused at gateway A; nothing after the
    // Open goes to B, and b never gets a reply, let alone a nodeup.
    let p = Pair::run(Setup { a_cookie: b"wrong", far_e2e: false, ..Setup::default() });
    assert_eq!(p.near_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    assert!(p.near_sent().is_empty(), "{:#?}", p.trace);
    assert_eq!(p.far_end, Some(End::Gone));
    assert!(matches!(p.b_end, Some(Err(_))) && !p.trace.contains(&"b authenticated a".to_string()));
    assert!(matches!(p.a_end, Some(Err(_))));

    // Relaying cookies end to end, a wrong digest is b's to judge (as in OTP): gateway B never
    // vouches for it with its own cookie, and b refuses it.
    let p = Pair::run(Setup { a_cookie: b"wrong", ..Setup::default() });
    assert_eq!(p.near_sent(), vec![format!("Reply {{ challenge: 77, digest: {:?} }}", digest(555, b"wrong"))]);
    assert_eq!(p.b_end, Some(Err(HandshakeError::BadDigest)));
    assert_eq!(p.far_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    assert_eq!(p.near_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    assert!(matches!(p.a_end, Some(Err(_))));
}

#[test]
fn every_status_is_forwarded() {
    for st in [Status::Ok, Status::OkSimultaneous] {
        let p = Pair::run(Setup { b_status: st.clone(), ..Setup::default() });
        assert!(p.all_up(), "{st:?}: {:#?}", p.trace);
        assert_eq!(p.statuses_at_a, vec![st]);
    }
    for st in [Status::Nok, Status::NotAllowed] {
        let p = Pair::run(Setup { b_status: st.clone(), ..Setup::default() });
        assert_eq!(p.statuses_at_a, vec![st.clone()]);
        assert_eq!(p.a_end, Some(Err(HandshakeError::Rejected(st.clone()))));
        let text = status_text(&st);
        let refused = LegError::Refused(Refusal::Answered { node: "b@hb".into(), status: text });
        assert_eq!(p.near_end, Some(End::Failed(refused.clone())));
        assert_eq!(p.far_end, Some(End::Failed(refused)));
    }
    // alive: a's answer goes back to b; true goes on with the challenge.
    let p = Pair::run(Setup { b_status: Status::Alive, ..Setup::default() });
    assert!(p.all_up(), "{:#?}", p.trace);
    assert_eq!(p.statuses_at_a, vec![Status::Alive]);
    assert_eq!(p.near_sent(), vec!["AliveAnswer(true)", "Proceed"]);
    let flags = p.flags();
    assert!(flags.iter().all(|f| *f == flags[0]), "{flags:x?}");
    // false: a keeps its old connection, b hears so and both legs end.
    let p = Pair::run(Setup { b_status: Status::Alive, alive_answer: false, ..Setup::default() });
    assert_eq!(p.near_sent(), vec!["AliveAnswer(false)"]);
    let kept = LegError::Refused(Refusal::KeptOldConnection { from: "a@ha".into(), to: "b@hb".into() });
    assert_eq!(p.near_end, Some(End::Failed(kept.clone())));
    assert_eq!(p.far_end, Some(End::Failed(kept)));
    assert_eq!(p.b_end, Some(Err(HandshakeError::Rejected(Status::Alive))));
    // The peer gateway's own refusal: a sees not_allowed.
    let mut near = NearLeg::new("b@hb", 9, GA, 1);
    let mut a = Pair::new(Setup::default()).a;
    near.node_bytes(&a.take_output()).unwrap();
    near.open(1, None, false).unwrap();
    let r = near.peer_msg(Msg::Refused("b@hb is not here".into()));
    assert_eq!(r, Err(LegError::Refused(Refusal::Peer("b@hb is not here".into()))));
    assert_eq!(near.take_node_output(), b"\x00\x0csnot_allowed");
    assert_eq!(near.need(), Need::Done);
}

#[test]
fn simultaneous_connects_both_in_flight() {
    // a dials b while b dials a, each through both gateways; as OTP decides, one acceptor says
    // nok and the other ok_simultaneous, and each says it to the dialler.
    let mut ab = Pair::new(Setup { b_status: Status::Nok, ..Setup::default() });
    let mut ba = Pair::new(Setup { b_status: Status::OkSimultaneous, ..Setup::default() });
    loop {
        let moved = [ab.step(), ba.step()];
        if !moved.contains(&true) {
            break;
        }
    }
    assert_eq!(ab.statuses_at_a, vec![Status::Nok]);
    assert_eq!(ab.a_end, Some(Err(HandshakeError::Rejected(Status::Nok))));
    assert_eq!(ba.statuses_at_a, vec![Status::OkSimultaneous]);
    assert!(ba.all_up(), "{:#?}", ba.trace);
}

#[test]
fn a_far_node_on_another_cookie_judges_it_end_to_end() {
    // Both ends agree on a cookie of their own: a's digest over b's challenge goes to b with
    // a's challenge, and b's ack comes back for a.
    let p = Pair::run(Setup { a_cookie: b"c", b_cookie: b"c", ..Setup::default() });
    assert!(p.all_up(), "{:#?}", p.trace);
    assert_eq!(p.near_sent(), vec![format!("Reply {{ challenge: 77, digest: {:?} }}", digest(555, b"c"))]);
    assert!(p.trace.contains(&format!("far -> near: Ack({:?})", digest(77, b"c"))));
    let flags = p.flags();
    assert!(flags.iter().all(|f| *f == flags[0]));
    // a on gateway B's cookie: not gateway A's, so b checks it.
    assert!(Pair::run(Setup { a_cookie: GB, ..Setup::default() }).all_up());
    // They disagree: b refuses, gateway B says BadCookie, a gets no ack.
    let p = Pair::run(Setup { a_cookie: b"c", b_cookie: b"d", ..Setup::default() });
    assert!(p.trace.contains(&"far -> near: BadCookie".to_string()), "{:#?}", p.trace);
    assert_eq!(p.near_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    assert!(matches!(p.a_end, Some(Err(_))));
    // a on gateway A's cookie, b on another for a: b refuses gateway B's digest.
    let p = Pair::run(Setup { b_cookie: b"d", ..Setup::default() });
    assert_eq!(p.near_sent(), vec!["Proceed"]);
    assert!(p.trace.contains(&"far -> near: BadCookie".to_string()));
    assert_eq!(p.near_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    // Older gateways: the gateways' cookies only, nothing of another cookie leaves the host,
    // and no BadCookie an older gateway would not know.
    assert!(Pair::run(Setup { far_e2e: false, ..Setup::default() }).all_up());
    let p = Pair::run(Setup { a_cookie: b"c", b_cookie: b"c", far_e2e: false, ..Setup::default() });
    assert!(p.near_sent().is_empty());
    assert_eq!(p.near_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    let p = Pair::run(Setup { b_cookie: b"d", far_e2e: false, ..Setup::default() });
    assert!(p.trace.iter().any(|t| t.starts_with("far -> near: Challenge {")), "{:#?}", p.trace);
    assert!(!p.trace.contains(&"far -> near: BadCookie".to_string()));
    assert_eq!(p.far_end, Some(End::Failed(LegError::Handshake(HandshakeError::BadDigest))));
    assert_eq!(p.near_end, Some(End::Gone));
}

#[test]
fn a_dynamic_name_is_given_by_the_near_gateway() {
    let p = Pair::run(Setup {
        a_name: "ha",
        a_flags: DFlags((DFlags::edist_default(false).0) | DFlags::NAME_ME),
        decision: Some((Some(("dyn1@ha".into(), 42)), false)),
        ..Setup::default()
    });
    assert!(p.all_up(), "{:#?}", p.trace);
    assert_eq!(p.statuses_at_a, vec![Status::Named { name: "dyn1@ha".into(), creation: 42 }]);
    let (Some(Ok(a)), Some(Ok(b))) = (&p.a_end, &p.b_end) else { unreachable!() };
    assert_eq!((a.our_name.as_str(), a.our_creation), ("dyn1@ha", 42));
    assert_eq!((b.peer.as_str(), b.peer_creation), ("dyn1@ha", 42));
    assert!(p.trace.contains(&"far dials b@hb as dyn1@ha".to_string()));
}

#[test]
fn a_refused_local_node_gets_not_allowed_and_the_far_side_nothing() {
    let p = Pair::run(Setup { decision: None, ..Setup::default() });
    assert_eq!(p.statuses_at_a, vec![Status::NotAllowed]);
    assert!(p.far.is_none() && p.far_stream.is_empty());
}

#[test]
fn the_first_data_after_the_handshake_is_kept() {
    // Bytes a node sent right behind its last handshake message stay with the machine.
    let mut near = NearLeg::new("b@hb", 9, GA, 1);
    let mut a = Pair::new(Setup::default()).a;
    near.node_bytes(&a.take_output()).unwrap();
    near.open(1, None, false).unwrap();
    near.peer_msg(Msg::Status("ok".into())).unwrap();
    near.peer_msg(Msg::Challenge { flags: DFlags::edist_default(true).0, creation: 9 }).unwrap();
    a.handle(&near.take_node_output()).unwrap();
    a.poll().unwrap();
    a.poll().unwrap();
    a.reply().unwrap();
    let mut bytes = a.take_output();
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    near.node_bytes(&bytes).unwrap();
    assert_eq!(near.poll_peer(), Some(Msg::Proceed));
    near.peer_msg(Msg::Connected).unwrap();
    assert_eq!(near.take_remaining(), vec![0, 0, 0, 0]);
}

#[test]
fn hostile_bytes_and_messages_give_typed_errors() {
    // Every byte of either node's handshake changed, one at a time: each run ends, with a
    // typed error somewhere or (where the byte does not matter, as a flag bit) connected.
    let total = {
        let p = Pair::run(Setup::default());
        (p.sent_a, p.sent_b)
    };
    for i in 0..total.0 {
        let mut p = Pair::new(Setup::default());
        p.corrupt_a = Some(i);
        p.settle();
        assert!(p.ended_or_waiting(), "byte {i}: {:#?}", p.trace);
    }
    for i in 0..total.1 {
        let mut p = Pair::new(Setup::default());
        p.corrupt_b = Some(i);
        p.settle();
        assert!(p.ended_or_waiting(), "byte {i}: {:#?}", p.trace);
    }
    // Garbage as the first bytes, of any length, in any chunks.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let len = (next() % 64) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut near = NearLeg::new("b@hb", 9, GA, 1);
        let mut far = FarLeg::new("a@ha", "b@hb", DFlags::edist_default(true), 5, GB, 1, false);
        for chunk in junk.chunks(1 + (next() % 8) as usize) {
            let _ = near.node_bytes(chunk);
            let _ = far.node_bytes(chunk);
        }
    }
    // A frame of the wrong kind at each step is an error, and the leg is over.
    let mut near = NearLeg::new("b@hb", 9, GA, 1);
    assert!(near.node_bytes(b"\x00\x05sokay").is_err());
    assert_eq!(near.need(), Need::Done);
    let mut near = NearLeg::new("b@hb", 9, GA, 1);
    assert!(matches!(near.node_bytes(&[0xff, 0xff, b'N']), Ok(())), "a long frame is still incomplete");
    assert!(matches!(near.refuse(), Err(LegError::Handshake(HandshakeError::OutOfOrder(_)))));
    assert!(near.open(1, None, false).is_err());
    // Messages from the peer gateway out of place.
    let mut a = Pair::new(Setup::default()).a;
    let hello = a.take_output();
    for m in [Msg::Connected, Msg::Proceed, Msg::Ack([0; 16]), Msg::Challenge { flags: 0, creation: 1 }] {
        let mut near = NearLeg::new("b@hb", 9, GA, 1);
        near.node_bytes(&hello).unwrap();
        near.open(1, None, false).unwrap();
        assert_eq!(near.peer_msg(m.clone()), Err(LegError::Unexpected(m)));
        assert_eq!(near.need(), Need::Done);
    }
    for (e2e, m) in [
        (false, Msg::Reply { challenge: 1, digest: [0; 16] }),
        (true, Msg::AliveAnswer(true)),
        (true, Msg::Connected),
        (true, Msg::Status("ok".into())),
    ] {
        let flags = DFlags(DFlags::edist_default(true).0 | if e2e { E2E_COOKIES } else { 0 });
        let mut far = FarLeg::new("a@ha", "b@hb", flags, 5, GB, 1, false);
        let mut b = Pair::new(Setup::default()).b;
        b.handle(&far.take_node_output()).unwrap();
        b.poll().unwrap();
        b.respond(Status::Ok).unwrap();
        far.node_bytes(&b.take_output()).unwrap();
        assert_eq!(far.need(), Need::Peer("proceed"));
        assert_eq!(far.peer_msg(m.clone()), Err(LegError::Unexpected(m)));
        assert_eq!(far.need(), Need::Done);
    }
    // b closes before any reply: closed, not a cookie matter.
    let mut far = FarLeg::new("a@ha", "b@hb", DFlags(DFlags::edist_default(true).0 | E2E_COOKIES), 5, GB, 1, false);
    assert_eq!(far.node_closed(), LegError::NodeClosed);
    assert_eq!(far.poll_peer(), None);
}
