//! The relayed handshake, both legs, as sans-IO machines (DESIGN facts 3, 5, 6): a local BEAM
//! dials a remote node, its gateway completes the handshake as that node ([`NearLeg`]), the
//! remote gateway completes it with the real node as the dialler ([`FarLeg`]), and then both
//! legs carry the same bytes.
//!
//! ```text
//!  a ──send_name──▶ GA ──Open{a,b,flags}──▶ GB ──send_name(a)──▶ b
//!  a ◀─status,chal─ GA ◀─Status,Challenge── GB ◀─status,chal──── b
//!  a ──reply──────▶ GA (digest checked) ─Proceed─▶ GB ──reply───▶ b
//!  a ◀─ack──────── GA ◀──────Connected───── GB ◀─ack──────────── b
//! ```
//! Both legs negotiate `a.flags & b.flags & RELAY_MASK`: the far side gets the initiator's
//! flags, the initiator gets the far side's challenge flags. The cookie stays on each host.
//!
//! Cookies other than the gateways' (`erlang:set_cookie(Node, C)`, `-setcookie Node C`): GA
//! puts b's own challenge to a (GB sends it, `ChallengeOf`). A digest under GA's cookie goes
//! on as above; any other is not GA's to judge, and goes to b, which checks it against the
//! cookie it uses for a, as over one OTP connection:
//!
//! ```text
//!  a ──reply(chA, d)─▶ GA (not GA's cookie) ─Reply{chA,d}─▶ GB ──reply(chA, d)──▶ b (checks d)
//!  a ◀─ack(e)──────── GA ◀────────Ack(e)──────────────────── GB ◀─ack(e)────────── b
//!                         (or BadCookie: b closed, refusing d; a gets no ack)
//! ```
//! No cookie crosses a host; a digest of a cookie other than the gateways' does (inside the
//! fabric's TLS), as it goes to the dialled node in OTP.
//!
//! Each machine takes bytes from its node's socket ([`NearLeg::node_bytes`]) and messages from
//! the peer gateway (`peer_msg`), and gives bytes for the node (`take_node_output`), messages
//! for the peer (`poll_peer`) and, once over, what was agreed (`connected`) or a typed
//! [`LegError`]. [`Need`] says what it waits for. No socket, clock or random number here: the
//! shell ([`super::shell`]) reads, writes, times each step out and draws the challenges. After every
//! call the shell sends what the machine queued, also when the call failed (a refusal is
//! forwarded before the connection closes), then stops on the error.
// Under the protocol core's lints: this code reads what hostile nodes and peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use crate::wire::Msg;
use edist_proto::dist::handshake::{
    Acceptor, AcceptorConfig, AcceptorEvent, Connected, HandshakeError, Initiator, InitiatorConfig, InitiatorEvent,
    Status,
};
use edist_proto::dist::DFlags;
use std::collections::VecDeque;
use thiserror::Error;

/// Flags a relay never lets through: the atom cache needs per-connection state on both ends,
/// and a dynamic name is given by the dialler's own gateway (the far leg dials under it).
pub const RELAY_MASK: u64 =
    !(DFlags::DIST_HDR_ATOM_CACHE | DFlags::ATOM_CACHE | DFlags::HIDDEN_ATOM_CACHE | DFlags::NAME_ME);

/// The flags a relayed handshake keeps: all, or all but `PUBLISHED` when the connection is to
/// be hidden (a node whose peer lacks `PUBLISHED` treats the connection as hidden, and OTP then
/// clears it on both sides, `dist_util:adjust_flags/2`; no other flag changes, so both legs
/// still agree on every flag that shapes the bytes).
pub fn hidden_mask(hide: bool) -> u64 {
    if hide {
        !DFlags::PUBLISHED
    } else {
        !0
    }
}

/// Set in an `Open`'s flags by a gateway that relays cookies end to end: a far gateway that
/// understands it answers with `ChallengeOf` (the far node's challenge, which the dialling
/// gateway puts to its node), and takes a `Reply` (the node's digest, when it is not one of the
/// dialling gateway's cookie) for the far node to check. The bit is `NAME_ME`, which an `Open`
/// never carries otherwise ([`RELAY_MASK`]) and which older gateways clear before dialling
/// their node, so to them the `Open` is the one they know (docs/config.md, "Node names and
/// cookies").
pub const E2E_COOKIES: u64 = DFlags::NAME_ME;

/// What the initiator's gateway learned from the local node's `send_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDial {
    pub from: String,
    pub flags: DFlags,
    pub creation: u32,
}

/// What a leg waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Bytes from the local node; the step's name, for a timeout.
    Node(&'static str),
    /// A message from the peer gateway; likewise.
    Peer(&'static str),
    /// The caller's word on the local node's name ([`NearLeg::open`] or [`NearLeg::refuse`]).
    Decision,
    /// Nothing: connected ([`NearLeg::connected`]), refused or failed.
    Done,
}

/// Why a relayed handshake did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LegError {
    /// The node broke the handshake, or a digest was refused ([`HandshakeError::BadDigest`]:
    /// the dialling node and the far one do not use the same cookie for each other).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer gateway sent a message that has no place at this step.
    #[error("unexpected message from the peer gateway: {0:?}")]
    Unexpected(Msg),
    /// Someone said no, faithfully passed on to the other end.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The local node closed its connection (the shell's own error says how).
    #[error("the local node closed the connection during the handshake")]
    NodeClosed,
}

/// Who refused a relayed handshake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer gateway (`Msg::Refused`: unknown node, unreachable, its policy).
    #[error("{0}")]
    Peer(String),
    /// The dialled node answered `nok` or `not_allowed` (or gave a name, which only the
    /// dialling node's own gateway may).
    #[error("{node} answered {status}")]
    Answered { node: String, status: &'static str },
    /// The dialling node answered `alive` with `false`: it keeps its old connection.
    #[error("{from} kept its old connection to {to}")]
    KeptOldConnection { from: String, to: String },
}

/// What the shell does with either leg: feed it, and send what it queued.
pub trait Leg {
    /// What the leg waits for.
    fn need(&self) -> Need;
    /// Bytes from the local node.
    fn node_bytes(&mut self, data: &[u8]) -> Result<(), LegError>;
    /// A message from the peer gateway.
    fn peer_msg(&mut self, msg: Msg) -> Result<(), LegError>;
    /// The local node closed its connection (or it failed) while the leg waited for it; what
    /// that means (the leg is over).
    fn node_closed(&mut self) -> LegError;
    /// Bytes for the local node.
    fn take_node_output(&mut self) -> Vec<u8>;
    /// The next message for the peer gateway.
    fn poll_peer(&mut self) -> Option<Msg>;
    /// What both ends agreed on, once connected.
    fn connected(&self) -> Option<&Connected>;
}

macro_rules! leg {
    ($t:ty) => {
        impl Leg for $t {
            fn need(&self) -> Need {
                <$t>::need(self)
            }
            fn node_bytes(&mut self, data: &[u8]) -> Result<(), LegError> {
                <$t>::node_bytes(self, data)
            }
            fn peer_msg(&mut self, msg: Msg) -> Result<(), LegError> {
                <$t>::peer_msg(self, msg)
            }
            fn node_closed(&mut self) -> LegError {
                <$t>::node_closed(self)
            }
            fn take_node_output(&mut self) -> Vec<u8> {
                <$t>::take_node_output(self)
            }
            fn poll_peer(&mut self) -> Option<Msg> {
                <$t>::poll_peer(self)
            }
            fn connected(&self) -> Option<&Connected> {
                <$t>::connected(self)
            }
        }
    };
}
leg!(NearLeg);
leg!(FarLeg);

fn parse_status(s: &str) -> Status {
    match s {
        "ok" => Status::Ok,
        "ok_simultaneous" => Status::OkSimultaneous,
        "nok" => Status::Nok,
        "alive" => Status::Alive,
        _ => Status::NotAllowed,
    }
}

fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::OkSimultaneous => "ok_simultaneous",
        Status::Nok => "nok",
        Status::Alive => "alive",
        Status::NotAllowed | Status::Named { .. } => "not_allowed",
    }
}

// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NearState {
    AwaitName,
    Decide,
    AwaitStatus,
    AwaitAliveAnswer,
    AwaitChallenge,
    AwaitReply,
    AwaitConnected,
    AwaitAck,
    Connected,
    Over,
}

/// The dialling node's gateway: answers the local node as the node it dialled, mirrors the far
/// node's status and challenge, checks the local node's digest before the far leg goes on
/// (fact 5), and acks once the far node is connected.
///
/// Cookies: when the far gateway relays cookies end to end (it sent `ChallengeOf`), the local
/// node gets the far node's own challenge. A digest under this gateway's cookie is checked
/// here and the far gateway finishes with its own cookie. Any other digest goes to the far node
/// (`Reply`), which checks it against the cookie it uses for the local node, as OTP does; its
/// ack comes back (`Ack`) for the local node to check, or its refusal (`BadCookie`, reported as
/// [`HandshakeError::BadDigest`]). Against an older far gateway only this gateway's cookie is
/// accepted.
#[derive(Debug)]
pub struct NearLeg {
    acc: Acceptor,
    target: String,
    state: NearState,
    to_node: Vec<u8>,
    to_peer: VecDeque<Msg>,
    dial: Option<LocalDial>,
    named: Option<(String, u32)>,
    hide: bool,
    /// The far node's status, answered to the local node with the challenge.
    status: Status,
    alive: bool,
    connected: Option<Connected>,
}

impl NearLeg {
    /// Answers a local node that dialled `target` (a remote node of that `creation`), as
    /// `target`; `challenge` is put to the node unless the far node's own replaces it.
    pub fn new(target: &str, creation: u32, cookie: &[u8], challenge: u32) -> Self {
        NearLeg {
            acc: Acceptor::new(AcceptorConfig {
                name: target.to_string(),
                flags: DFlags(0),
                creation,
                cookie: cookie.to_vec(),
                challenge,
            }),
            target: target.to_string(),
            state: NearState::AwaitName,
            to_node: Vec::new(),
            to_peer: VecDeque::new(),
            dial: None,
            named: None,
            hide: false,
            status: Status::NotAllowed,
            alive: false,
            connected: None,
        }
    }

    /// What the leg waits for.
    pub fn need(&self) -> Need {
        match self.state {
            NearState::AwaitName => Need::Node("send_name"),
            NearState::Decide => Need::Decision,
            NearState::AwaitStatus => Need::Peer("status"),
            NearState::AwaitAliveAnswer => Need::Node("alive answer"),
            NearState::AwaitChallenge => Need::Peer("challenge"),
            NearState::AwaitReply => Need::Node("challenge reply"),
            NearState::AwaitConnected => Need::Peer("connected"),
            NearState::AwaitAck => Need::Peer("ack"),
            NearState::Connected | NearState::Over => Need::Done,
        }
    }

    /// The local node's name, flags and creation, once it sent them.
    pub fn dial(&self) -> Option<&LocalDial> {
        self.dial.as_ref()
    }

    /// What both ends agreed on, once connected.
    pub fn connected(&self) -> Option<&Connected> {
        self.connected.as_ref()
    }

    /// Bytes for the local node.
    pub fn take_node_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_node)
    }

    /// The next message for the peer gateway.
    pub fn poll_peer(&mut self) -> Option<Msg> {
        self.to_peer.pop_front()
    }

    /// Bytes the local node sent after its reply (the first distribution data), once connected.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        self.acc.take_remaining()
    }

    /// Bytes from the local node.
    pub fn node_bytes(&mut self, data: &[u8]) -> Result<(), LegError> {
        let r = self.acc.handle(data).map_err(LegError::from).and_then(|()| self.drive());
        self.settle(r)
    }

    /// A message from the peer gateway.
    pub fn peer_msg(&mut self, msg: Msg) -> Result<(), LegError> {
        let r = self.on_peer(msg);
        self.settle(r)
    }

    /// The local node closed its connection (or it failed): the leg is over.
    pub fn node_closed(&mut self) -> LegError {
        self.state = NearState::Over;
        LegError::NodeClosed
    }

    /// After the name: the local node may not dial out; it gets `not_allowed`.
    pub fn refuse(&mut self) -> Result<(), LegError> {
        if self.state != NearState::Decide {
            return Err(HandshakeError::OutOfOrder("refuse before the name").into());
        }
        self.acc.respond(Status::NotAllowed)?;
        self.flush_acceptor();
        self.state = NearState::Over;
        Ok(())
    }

    /// After the name: the local node may dial out. Returns the `Open` that starts the relay
    /// stream `relay` to the far gateway. `named`: the name and creation given to a local node
    /// that asked for a dynamic name; it gets them as its status (`named:`) in place of the far
    /// node's `ok`, and the far node is dialled under them. `hide`: the far node is presented
    /// to the local one as a hidden node, and the local one to it (its role says so), as OTP's
    /// own handshake makes a connection when either side is hidden.
    pub fn open(&mut self, relay: u64, named: Option<(String, u32)>, hide: bool) -> Result<Msg, LegError> {
        let (Some(dial), NearState::Decide) = (&self.dial, self.state) else {
            return Err(HandshakeError::OutOfOrder("open before the name").into());
        };
        let (from, creation) = named.clone().unwrap_or_else(|| (dial.from.clone(), dial.creation));
        let open = Msg::Open {
            relay,
            from,
            to: self.target.clone(),
            // E2E_COOKIES: a far node may judge a digest of a cookie other than ours.
            flags: (dial.flags.0 & RELAY_MASK & hidden_mask(hide)) | E2E_COOKIES,
            creation,
        };
        self.named = named;
        self.hide = hide;
        self.state = NearState::AwaitStatus;
        Ok(open)
    }

    /// Over after an error: nothing more goes anywhere but what was queued.
    fn settle(&mut self, r: Result<(), LegError>) -> Result<(), LegError> {
        if r.is_err() {
            self.state = NearState::Over;
        }
        r
    }

    fn flush_acceptor(&mut self) {
        let out = self.acc.take_output();
        self.to_node.extend_from_slice(&out);
    }

    /// Takes the local node's messages as far as they go.
    fn drive(&mut self) -> Result<(), LegError> {
        match self.state {
            NearState::AwaitName => match self.acc.poll()? {
                Some(AcceptorEvent::Name { name, flags, creation }) => {
                    self.dial = Some(LocalDial { from: name, flags, creation });
                    self.state = NearState::Decide;
                }
                Some(AcceptorEvent::AliveAnswer(_)) => {
                    return Err(HandshakeError::OutOfOrder("alive answer before status").into())
                }
                Some(_) => return Err(HandshakeError::OutOfOrder("event before name").into()),
                None => {}
            },
            NearState::AwaitAliveAnswer => match self.acc.poll()? {
                Some(AcceptorEvent::AliveAnswer(answer)) => {
                    self.to_peer.push_back(Msg::AliveAnswer(answer));
                    if !answer {
                        return Err(LegError::Refused(Refusal::KeptOldConnection {
                            from: self.dial.as_ref().map(|d| d.from.clone()).unwrap_or_default(),
                            to: self.target.clone(),
                        }));
                    }
                    self.state = NearState::AwaitChallenge;
                }
                Some(_) => return Err(HandshakeError::OutOfOrder("expected the alive answer").into()),
                None => {}
            },
            NearState::AwaitReply => match self.acc.poll()? {
                Some(AcceptorEvent::Authenticated) => match self.acc.foreign_digest() {
                    None => {
                        // The local node knows the cookie: only now does the far node hear
                        // from it (fact 5).
                        self.to_peer.push_back(Msg::Proceed);
                        self.state = NearState::AwaitConnected;
                    }
                    Some(digest) => {
                        // Another cookie: the far node judges it, as it would over one OTP
                        // connection.
                        self.to_peer.push_back(Msg::Reply { challenge: self.acc.peer_challenge(), digest });
                        self.state = NearState::AwaitAck;
                    }
                },
                Some(_) => return Err(HandshakeError::OutOfOrder("unexpected event").into()),
                None => {}
            },
            // Bytes ahead of their step wait in the acceptor.
            _ => {}
        }
        Ok(())
    }

    fn on_peer(&mut self, msg: Msg) -> Result<(), LegError> {
        match (self.state, msg) {
            (NearState::AwaitStatus, Msg::Refused(r)) => {
                // The far node is unknown or unreachable: the local node sees `not_allowed`.
                self.acc.respond(Status::NotAllowed)?;
                self.flush_acceptor();
                Err(LegError::Refused(Refusal::Peer(r)))
            }
            (NearState::AwaitStatus, Msg::Status(s)) => {
                let status = parse_status(&s);
                match status {
                    Status::Nok | Status::NotAllowed => {
                        let text = status_text(&status);
                        self.acc.respond(status)?;
                        self.flush_acceptor();
                        Err(LegError::Refused(Refusal::Answered { node: self.target.clone(), status: text }))
                    }
                    Status::Alive => {
                        // The far node still holds a connection from ours: forward `alive`
                        // faithfully and carry the local node's answer back; the challenge
                        // follows once the far side sends it.
                        self.acc.set_defer_challenge(true);
                        self.acc.respond(Status::Alive)?;
                        self.flush_acceptor();
                        self.alive = true;
                        self.status = Status::Alive;
                        self.state = NearState::AwaitAliveAnswer;
                        self.drive()
                    }
                    other => {
                        self.status = other;
                        self.state = NearState::AwaitChallenge;
                        Ok(())
                    }
                }
            }
            (NearState::AwaitChallenge, Msg::Challenge { flags, creation }) => self.challenge(flags, creation),
            (NearState::AwaitChallenge, Msg::ChallengeOf { flags, creation, challenge }) => {
                // The far node's own challenge: a digest of another cookie is one it can check.
                self.acc.set_challenge(challenge);
                self.acc.pass_foreign_digests();
                self.challenge(flags, creation)
            }
            (NearState::AwaitConnected, Msg::Connected) => {
                self.connected = Some(self.acc.complete()?);
                self.flush_acceptor();
                self.state = NearState::Connected;
                Ok(())
            }
            (NearState::AwaitAck, Msg::Ack(ack)) => {
                self.connected = Some(self.acc.complete_with(ack)?);
                self.flush_acceptor();
                self.state = NearState::Connected;
                Ok(())
            }
            // The far node does not accept the digest: its gateway's for ours, or ours relayed.
            (NearState::AwaitConnected | NearState::AwaitAck, Msg::BadCookie) => Err(HandshakeError::BadDigest.into()),
            (NearState::AwaitConnected | NearState::AwaitAck, Msg::Refused(r)) => {
                Err(LegError::Refused(Refusal::Peer(r)))
            }
            (_, m) => Err(LegError::Unexpected(m)),
        }
    }

    /// The far node's challenge flags and creation: the local node gets its status (unless it
    /// was `alive`) and a challenge with them.
    fn challenge(&mut self, flags: u64, creation: u32) -> Result<(), LegError> {
        let flags = match self.named {
            // As OTP's acceptor answers a node that asks for a name: NAME_ME in place of
            // PUBLISHED, or the node refuses the connection (dist_util:do_setnode).
            Some(_) => (flags & RELAY_MASK & !DFlags::PUBLISHED) | DFlags::NAME_ME,
            None => flags & RELAY_MASK & hidden_mask(self.hide),
        };
        self.acc.set_flags(DFlags(flags));
        self.acc.set_creation(creation);
        match self.named.clone() {
            _ if self.alive => self.acc.send_challenge_now()?,
            Some((name, creation)) => self.acc.respond(Status::Named { name, creation })?,
            None => self.acc.respond(self.status.clone())?,
        }
        self.flush_acceptor();
        self.state = NearState::AwaitReply;
        self.drive()
    }
}

// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FarState {
    AwaitNode,
    AwaitAliveAnswer,
    AwaitProceed,
    Connected,
    Over,
}

/// The dialled node's gateway: dials the real node as the dialling one (an [`Initiator`] with
/// this gateway's cookie) and reports each step back to the dialling node's gateway until
/// `Connected` (or `Ack`, for a digest the node checked itself).
#[derive(Debug)]
pub struct FarLeg {
    init: Initiator,
    from: String,
    to: String,
    e2e: bool,
    hide: bool,
    /// Set once the node was sent a reply: if it closes now, it refused the digest (as OTP's
    /// acceptor does, after logging it) — the dialler's own, relayed, or ours under this
    /// gateway's cookie when the node uses another for the dialler.
    replied: bool,
    state: FarState,
    to_node: Vec<u8>,
    to_peer: VecDeque<Msg>,
    connected: Option<Connected>,
}

impl FarLeg {
    /// Dials `to` as `from`, with an `Open`'s `flags` and `creation`; `challenge` is put to the
    /// node. `hide`: `from` is presented to `to` as a hidden node, and `to` to `from` (its role
    /// says so). The node's `send_name` is queued at once.
    pub fn new(from: &str, to: &str, flags: DFlags, creation: u32, cookie: &[u8], challenge: u32, hide: bool) -> Self {
        let mut init = Initiator::new(InitiatorConfig {
            name: from.to_string(),
            flags: DFlags(flags.0 & RELAY_MASK & hidden_mask(hide)),
            creation,
            cookie: cookie.to_vec(),
            challenge,
            peer: to.to_string(),
        });
        let to_node = init.take_output();
        FarLeg {
            init,
            from: from.to_string(),
            to: to.to_string(),
            e2e: flags.0 & E2E_COOKIES != 0,
            hide,
            replied: false,
            state: FarState::AwaitNode,
            to_node,
            to_peer: VecDeque::new(),
            connected: None,
        }
    }

    /// What the leg waits for.
    pub fn need(&self) -> Need {
        match self.state {
            FarState::AwaitNode => Need::Node("handshake"),
            FarState::AwaitAliveAnswer => Need::Peer("alive answer"),
            FarState::AwaitProceed => Need::Peer("proceed"),
            FarState::Connected | FarState::Over => Need::Done,
        }
    }

    /// What both ends agreed on, once connected.
    pub fn connected(&self) -> Option<&Connected> {
        self.connected.as_ref()
    }

    /// Bytes for the node.
    pub fn take_node_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_node)
    }

    /// The next message for the peer gateway.
    pub fn poll_peer(&mut self) -> Option<Msg> {
        self.to_peer.pop_front()
    }

    /// Bytes the node sent after its ack (the first distribution data), once connected.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        self.init.take_remaining()
    }

    /// Bytes from the node.
    pub fn node_bytes(&mut self, data: &[u8]) -> Result<(), LegError> {
        let r = self.init.handle(data).map_err(LegError::from).and_then(|()| self.drive());
        self.settle(r)
    }

    /// A message from the peer gateway.
    pub fn peer_msg(&mut self, msg: Msg) -> Result<(), LegError> {
        let r = self.on_peer(msg);
        self.settle(r)
    }

    /// The node closed its connection (or it failed) while the leg waited for it. After a
    /// reply that is the node refusing the digest: [`HandshakeError::BadDigest`], and the peer
    /// gateway hears `BadCookie` (only one that relays cookies end to end knows it). Before,
    /// [`LegError::NodeClosed`].
    pub fn node_closed(&mut self) -> LegError {
        let waiting = self.state == FarState::AwaitNode;
        self.state = FarState::Over;
        if waiting && self.replied {
            if self.e2e {
                self.to_peer.push_back(Msg::BadCookie);
            }
            return HandshakeError::BadDigest.into();
        }
        LegError::NodeClosed
    }

    fn settle(&mut self, r: Result<(), LegError>) -> Result<(), LegError> {
        if r.is_err() {
            self.state = FarState::Over;
        }
        r
    }

    /// Takes the node's messages as far as they go.
    fn drive(&mut self) -> Result<(), LegError> {
        while self.state == FarState::AwaitNode {
            let out = self.init.take_output();
            self.to_node.extend_from_slice(&out);
            match self.init.poll()? {
                Some(InitiatorEvent::Status(Status::Alive)) => {
                    // Forwarded faithfully: the dialling node decides (fact 6).
                    self.to_peer.push_back(Msg::Status("alive".into()));
                    self.state = FarState::AwaitAliveAnswer;
                }
                Some(InitiatorEvent::Status(st)) => {
                    let text = status_text(&st);
                    self.to_peer.push_back(Msg::Status(text.into()));
                    if matches!(st, Status::Nok | Status::NotAllowed | Status::Named { .. }) {
                        return Err(LegError::Refused(Refusal::Answered { node: self.to.clone(), status: text }));
                    }
                }
                Some(InitiatorEvent::Challenge { flags, creation, .. }) => {
                    let flags = flags.0 & hidden_mask(self.hide);
                    self.to_peer.push_back(match self.e2e {
                        true => Msg::ChallengeOf { flags, creation, challenge: self.init.peer_challenge() },
                        false => Msg::Challenge { flags, creation },
                    });
                    self.state = FarState::AwaitProceed;
                }
                Some(InitiatorEvent::Connected(c)) => {
                    self.to_peer.push_back(match self.init.take_relayed_ack() {
                        Some(ack) => Msg::Ack(ack),
                        None => Msg::Connected,
                    });
                    self.connected = Some(c);
                    self.state = FarState::Connected;
                }
                None => break,
            }
        }
        Ok(())
    }

    fn on_peer(&mut self, msg: Msg) -> Result<(), LegError> {
        match (self.state, msg) {
            (FarState::AwaitAliveAnswer, Msg::AliveAnswer(answer)) => {
                self.init.answer_alive(answer)?;
                if !answer {
                    let out = self.init.take_output();
                    self.to_node.extend_from_slice(&out);
                    return Err(LegError::Refused(Refusal::KeptOldConnection {
                        from: self.from.clone(),
                        to: self.to.clone(),
                    }));
                }
            }
            (FarState::AwaitProceed, Msg::Proceed) => {
                self.init.reply()?;
                self.replied = true;
            }
            (FarState::AwaitProceed, Msg::Reply { challenge, digest }) if self.e2e => {
                self.init.reply_relayed(challenge, digest)?;
                self.replied = true;
            }
            (_, m) => return Err(LegError::Unexpected(m)),
        }
        self.state = FarState::AwaitNode;
        self.drive()
    }
}

#[cfg(test)]
mod tests;
