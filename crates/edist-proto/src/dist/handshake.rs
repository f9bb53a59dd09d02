//! The version-6 (`'N'`) handshake, both roles, as step-wise state machines (reference §3).
//!
//! Feed received bytes with `handle`, take events with `poll`, send what `take_output` returns.
//! Each machine stops where a caller may want to decide something — the acceptor after the
//! initiator's name (which status to give) and after a valid digest (whether to finish), the
//! initiator after the challenge (whether to answer) — so a gateway can relay a handshake
//! between two legs, while a plain node simply continues at each stop. Nothing here does IO,
//! reads a clock or draws random numbers: challenges come in through the configs.

use super::flags::DFlags;
use crate::codec::{CodecError, Reader};
use md5::{Digest, Md5};
use thiserror::Error;

/// Largest handshake message (u16 framing).
const MAX_FRAME: usize = u16::MAX as usize;

/// What went wrong during a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    #[error("unexpected handshake message tag {0:#x}")]
    UnexpectedTag(u8),
    #[error("peer lacks mandatory distribution flags: {0:?}")]
    MissingFlags(Vec<&'static str>),
    #[error("invalid node name {0:?}")]
    BadName(String),
    #[error("peer answered as {got:?}, but {expected:?} was dialled")]
    WrongPeer { expected: String, got: String },
    #[error("digest mismatch: the peer's cookie is different (wrong cookie)")]
    BadDigest,
    #[error("the peer refused the connection with status {0:?}")]
    Rejected(Status),
    #[error("a step was taken out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("too much data buffered during the handshake")]
    Overflow,
}

/// A handshake status (message 2, `'s'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    OkSimultaneous,
    Nok,
    NotAllowed,
    Alive,
    /// A dynamic name given to the initiator, with its creation.
    Named {
        name: String,
        creation: u32,
    },
}

impl Status {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(b's');
        match self {
            Status::Ok => out.extend_from_slice(b"ok"),
            Status::OkSimultaneous => out.extend_from_slice(b"ok_simultaneous"),
            Status::Nok => out.extend_from_slice(b"nok"),
            Status::NotAllowed => out.extend_from_slice(b"not_allowed"),
            Status::Alive => out.extend_from_slice(b"alive"),
            Status::Named { name, creation } => {
                // OTP writes a given name as UTF-8 (`atom_to_binary(Node, utf8)`).
                out.extend_from_slice(b"named:");
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&creation.to_be_bytes());
            }
        }
    }

    fn decode(body: &[u8]) -> Result<Status, HandshakeError> {
        Ok(match body {
            b"ok" => Status::Ok,
            b"ok_simultaneous" => Status::OkSimultaneous,
            b"nok" => Status::Nok,
            b"not_allowed" => Status::NotAllowed,
            b"alive" => Status::Alive,
            _ => {
                let rest = body.strip_prefix(b"named:").ok_or(HandshakeError::Malformed("unknown status"))?;
                let mut r = Reader::new(rest);
                let n = r.u16()?;
                let name = std::str::from_utf8(r.bytes(usize::from(n))?)
                    .map_err(|_| HandshakeError::Malformed("name not UTF-8"))?
                    .to_owned();
                let creation = r.u32()?;
                Status::Named { name, creation }
            }
        })
    }
}

/// What both sides agreed on once the handshake is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The peer's node name.
    pub peer: String,
    /// The peer's creation.
    pub peer_creation: u32,
    /// The negotiated flags (identical on both sides).
    pub flags: DFlags,
    /// Our own name, which differs from the configured one after `named:`.
    pub our_name: String,
    /// Our creation (likewise).
    pub our_creation: u32,
}

/// MD5(cookie ‖ decimal(challenge)) (reference §3.2).
pub fn digest(challenge: u32, cookie: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(cookie);
    h.update(challenge.to_string().as_bytes());
    h.finalize().into()
}

fn ct_eq(a: &[u8; 16], b: &[u8]) -> bool {
    b.len() == 16 && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `name` is a valid full node name: `alive@host`, both parts non-empty.
pub fn valid_node_name(name: &str) -> bool {
    match name.split_once('@') {
        Some((alive, host)) => !alive.is_empty() && !host.is_empty() && name.len() <= 255,
        None => false,
    }
}

/// u16-framed input buffer shared by both roles.
#[derive(Debug, Default)]
struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    fn push(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        if self.buf.len() + data.len() > 4 * (MAX_FRAME + 2) {
            return Err(HandshakeError::Overflow);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn next(&mut self) -> Option<Vec<u8>> {
        let len = usize::from(u16::from_be_bytes([*self.buf.first()?, *self.buf.get(1)?]));
        let frame = self.buf.get(2..2 + len)?.to_vec();
        self.buf.drain(..2 + len);
        Some(frame)
    }
}

fn push_frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    write(out);
    let len = (out.len() - start - 2) as u16;
    if let Some(slot) = out.get_mut(start..start + 2) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

impl From<CodecError> for HandshakeError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::NotUtf8 { .. } => HandshakeError::Malformed("name not UTF-8"),
            _ => HandshakeError::Malformed("message too short"),
        }
    }
}

/// `n` bytes of a name OTP wrote as latin1 (`atom_to_binary(Node, latin1)`).
fn latin1_field(c: &mut Reader<'_>, n: usize) -> Result<String, HandshakeError> {
    Ok(c.bytes(n)?.iter().map(|c| char::from(*c)).collect())
}

/// A node name as OTP writes its own in `send_name` and the challenge: latin1, one byte a
/// character (`e@b1é` is legal). A character beyond latin1, which OTP cannot write either,
/// becomes `?`.
fn latin1(name: &str) -> Vec<u8> {
    name.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')).collect()
}

/// `latin1(name)` with its 16-bit length first.
fn push_name(o: &mut Vec<u8>, name: &str) {
    let b = latin1(name);
    o.extend_from_slice(&(b.len() as u16).to_be_bytes());
    o.extend_from_slice(&b);
}

fn split_tag(frame: &[u8]) -> Result<(u8, &[u8]), HandshakeError> {
    frame.split_first().map(|(t, r)| (*t, r)).ok_or(HandshakeError::Malformed("empty message"))
}

// ----------------------------------------------------------------------------------------------

/// Configuration of the initiating side (A).
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// Our full node name (or only the host when requesting a dynamic name with NAME_ME).
    pub name: String,
    pub flags: DFlags,
    pub creation: u32,
    pub cookie: Vec<u8>,
    /// The challenge we put to the peer (draw it at random).
    pub challenge: u32,
    /// The node name we dialled; the peer's challenge must carry exactly this name.
    pub peer: String,
}

/// Events of the initiating side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorEvent {
    /// The acceptor's status. After `Alive` call [`Initiator::answer_alive`]; after `Nok` or
    /// `NotAllowed` the handshake is over.
    Status(Status),
    /// The acceptor's challenge, with the acceptor's flags; call [`Initiator::reply`] to answer.
    Challenge { flags: DFlags, creation: u32, name: String },
    /// The handshake is complete.
    Connected(Connected),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IState {
    AwaitStatus,
    AwaitAliveAnswer,
    AwaitChallenge,
    AwaitReplyCall,
    AwaitAck,
    Done,
    Over,
}

/// The initiating side of a handshake.
#[derive(Debug)]
pub struct Initiator {
    cfg: InitiatorConfig,
    state: IState,
    input: FrameBuf,
    out: Vec<u8>,
    peer_challenge: u32,
    peer_creation: u32,
    chosen: DFlags,
    /// Set by [`Initiator::reply_relayed`]: the ack is not ours to check, and is kept here.
    relayed: Option<Option<[u8; 16]>>,
}

impl Initiator {
    /// Starts a handshake; the `send_name` message is queued at once.
    pub fn new(cfg: InitiatorConfig) -> Self {
        let mut out = Vec::new();
        push_frame(&mut out, |o| {
            o.push(b'N');
            o.extend_from_slice(&cfg.flags.0.to_be_bytes());
            o.extend_from_slice(&cfg.creation.to_be_bytes());
            push_name(o, &cfg.name);
        });
        Initiator {
            cfg,
            state: IState::AwaitStatus,
            input: FrameBuf::default(),
            out,
            peer_challenge: 0,
            peer_creation: 0,
            chosen: DFlags(0),
            relayed: None,
        }
    }

    /// Bytes to send to the peer.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Buffers bytes received from the peer.
    pub fn handle(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        self.input.push(data)
    }

    /// Bytes received after the handshake's last message (the first u32-framed data).
    pub fn take_remaining(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input.buf)
    }

    /// Answers an `alive` status: `true` continues (our old connection is dead), `false` aborts.
    pub fn answer_alive(&mut self, cont: bool) -> Result<(), HandshakeError> {
        if self.state != IState::AwaitAliveAnswer {
            return Err(HandshakeError::OutOfOrder("answer_alive without an alive status"));
        }
        push_frame(&mut self.out, |o| {
            o.push(b's');
            o.extend_from_slice(if cont { b"true" } else { b"false" });
        });
        self.state = if cont { IState::AwaitChallenge } else { IState::Over };
        Ok(())
    }

    /// Answers the challenge (after [`InitiatorEvent::Challenge`]).
    pub fn reply(&mut self) -> Result<(), HandshakeError> {
        if self.state != IState::AwaitReplyCall {
            return Err(HandshakeError::OutOfOrder("reply before the challenge"));
        }
        let d = digest(self.peer_challenge, &self.cfg.cookie);
        let ch = self.cfg.challenge;
        push_frame(&mut self.out, |o| {
            o.push(b'r');
            o.extend_from_slice(&ch.to_be_bytes());
            o.extend_from_slice(&d);
        });
        self.state = IState::AwaitAck;
        Ok(())
    }

    /// The acceptor's challenge (valid after [`InitiatorEvent::Challenge`]): a relay passes it
    /// on to the node whose digest it will carry back (see [`Initiator::reply_relayed`]).
    pub fn peer_challenge(&self) -> u32 {
        self.peer_challenge
    }

    /// Answers the challenge with another node's reply: its challenge and its digest over
    /// [`Initiator::peer_challenge`]. The peer checks that digest against its own cookie; its
    /// ack is then not checked here (it is a digest over `challenge`, under a cookie this side
    /// does not know) but kept for [`Initiator::take_relayed_ack`], for the node that made the
    /// reply to check.
    pub fn reply_relayed(&mut self, challenge: u32, digest: [u8; 16]) -> Result<(), HandshakeError> {
        if self.state != IState::AwaitReplyCall {
            return Err(HandshakeError::OutOfOrder("reply before the challenge"));
        }
        push_frame(&mut self.out, |o| {
            o.push(b'r');
            o.extend_from_slice(&challenge.to_be_bytes());
            o.extend_from_slice(&digest);
        });
        self.relayed = Some(None);
        self.state = IState::AwaitAck;
        Ok(())
    }

    /// The peer's ack after [`Initiator::reply_relayed`], once connected.
    pub fn take_relayed_ack(&mut self) -> Option<[u8; 16]> {
        self.relayed.and_then(|a| a)
    }

    /// Processes buffered input; returns the next event, or `None` when more input (or a call
    /// from the user) is needed.
    pub fn poll(&mut self) -> Result<Option<InitiatorEvent>, HandshakeError> {
        if matches!(self.state, IState::AwaitAliveAnswer | IState::AwaitReplyCall | IState::Done | IState::Over) {
            return Ok(None);
        }
        let Some(frame) = self.input.next() else { return Ok(None) };
        let (tag, body) = split_tag(&frame)?;
        match (self.state, tag) {
            (IState::AwaitStatus, b's') => {
                let st = Status::decode(body)?;
                self.state = match &st {
                    Status::Ok | Status::OkSimultaneous => IState::AwaitChallenge,
                    Status::Named { name, creation } => {
                        if !valid_node_name(name) {
                            return Err(HandshakeError::BadName(name.clone()));
                        }
                        self.cfg.name = name.clone();
                        self.cfg.creation = *creation;
                        IState::AwaitChallenge
                    }
                    Status::Alive => IState::AwaitAliveAnswer,
                    Status::Nok | Status::NotAllowed => IState::Over,
                };
                Ok(Some(InitiatorEvent::Status(st)))
            }
            (IState::AwaitChallenge, b'N') => {
                let mut c = Reader::new(body);
                let flags = DFlags(c.u64()?);
                self.peer_challenge = c.u32()?;
                self.peer_creation = c.u32()?;
                let n = c.u16()?;
                let name = latin1_field(&mut c, usize::from(n))?;
                if name != self.cfg.peer {
                    return Err(HandshakeError::WrongPeer { expected: self.cfg.peer.clone(), got: name });
                }
                self.chosen = DFlags::negotiate(self.cfg.flags, flags);
                let missing = self.chosen.missing(DFlags::MANDATORY_25);
                if !missing.is_empty() {
                    return Err(HandshakeError::MissingFlags(missing));
                }
                self.state = IState::AwaitReplyCall;
                Ok(Some(InitiatorEvent::Challenge { flags, creation: self.peer_creation, name }))
            }
            (IState::AwaitAck, b'a') => {
                if self.relayed.is_some() {
                    let ack = <[u8; 16]>::try_from(body).map_err(|_| HandshakeError::Malformed("challenge ack"))?;
                    self.relayed = Some(Some(ack));
                } else if !ct_eq(&digest(self.cfg.challenge, &self.cfg.cookie), body) {
                    return Err(HandshakeError::BadDigest);
                }
                self.state = IState::Done;
                Ok(Some(InitiatorEvent::Connected(Connected {
                    peer: self.cfg.peer.clone(),
                    peer_creation: self.peer_creation,
                    flags: self.chosen,
                    our_name: self.cfg.name.clone(),
                    our_creation: self.cfg.creation,
                })))
            }
            (_, t) => Err(HandshakeError::UnexpectedTag(t)),
        }
    }
}

// ----------------------------------------------------------------------------------------------

/// Configuration of the accepting side (B).
#[derive(Debug, Clone)]
pub struct AcceptorConfig {
    /// Our full node name, as the initiator dialled it.
    pub name: String,
    pub flags: DFlags,
    pub creation: u32,
    pub cookie: Vec<u8>,
    /// The challenge we put to the initiator (draw it at random).
    pub challenge: u32,
}

/// Events of the accepting side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptorEvent {
    /// The initiator's name, flags and creation; answer with [`Acceptor::respond`].
    Name { name: String, flags: DFlags, creation: u32 },
    /// The initiator's answer to an `alive` status; the handshake goes on only if `true`.
    AliveAnswer(bool),
    /// The initiator proved it knows the cookie; call [`Acceptor::complete`] to finish.
    Authenticated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AState {
    AwaitName,
    AwaitRespond,
    AwaitAliveAnswer,
    AwaitChallengeCall,
    AwaitReply,
    AwaitComplete,
    Done,
    Over,
}

/// The accepting side of a handshake.
#[derive(Debug)]
pub struct Acceptor {
    cfg: AcceptorConfig,
    state: AState,
    input: FrameBuf,
    out: Vec<u8>,
    peer: String,
    peer_flags: DFlags,
    peer_creation: u32,
    peer_challenge: u32,
    defer_challenge: bool,
    /// See [`Acceptor::pass_foreign_digests`]: `Some` once enabled, `Some(Some(d))` after a
    /// reply whose digest `d` is not one of our cookie.
    foreign: Option<Option<[u8; 16]>>,
}

impl Acceptor {
    /// Waits for the initiator's name.
    pub fn new(cfg: AcceptorConfig) -> Self {
        Acceptor {
            cfg,
            state: AState::AwaitName,
            input: FrameBuf::default(),
            out: Vec::new(),
            peer: String::new(),
            peer_flags: DFlags(0),
            peer_creation: 0,
            peer_challenge: 0,
            defer_challenge: false,
            foreign: None,
        }
    }

    /// Bytes to send to the peer.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Buffers bytes received from the peer.
    pub fn handle(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        self.input.push(data)
    }

    /// After an `alive` status answered `true`, wait for [`Acceptor::send_challenge_now`]
    /// instead of sending the challenge at once (a relay first learns the far side's flags).
    pub fn set_defer_challenge(&mut self, defer: bool) {
        self.defer_challenge = defer;
    }

    /// Sends the deferred challenge (see [`Acceptor::set_defer_challenge`]).
    pub fn send_challenge_now(&mut self) -> Result<(), HandshakeError> {
        if self.state != AState::AwaitChallengeCall {
            return Err(HandshakeError::OutOfOrder("no deferred challenge"));
        }
        self.send_challenge();
        Ok(())
    }

    /// Bytes received after the handshake's last message.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input.buf)
    }

    /// Replaces the flags we offer in the challenge (a relay offers the far side's).
    pub fn set_flags(&mut self, flags: DFlags) {
        self.cfg.flags = flags;
    }

    /// Replaces the creation we announce in the challenge (a relay announces the far side's).
    pub fn set_creation(&mut self, creation: u32) {
        self.cfg.creation = creation;
    }

    /// Replaces the challenge we put to the initiator, before it is sent (a relay puts the far
    /// node's, so that the initiator's digest is one the far node can check).
    pub fn set_challenge(&mut self, challenge: u32) {
        self.cfg.challenge = challenge;
    }

    /// A reply whose digest is not one of our cookie no longer ends the handshake: it comes as
    /// [`AcceptorEvent::Authenticated`] too, and [`Acceptor::foreign_digest`] says it is not
    /// authenticated here. The caller must then have the digest checked by whoever knows the
    /// initiator's cookie (a relay: the far node) and finish with [`Acceptor::complete_with`].
    pub fn pass_foreign_digests(&mut self) {
        self.foreign.get_or_insert(None);
    }

    /// After [`AcceptorEvent::Authenticated`] with [`Acceptor::pass_foreign_digests`]: the
    /// initiator's digest if it is *not* one of our cookie (it is still to be checked).
    pub fn foreign_digest(&self) -> Option<[u8; 16]> {
        self.foreign.and_then(|d| d)
    }

    /// Like [`Acceptor::complete`], but sends `ack` (the far node's digest over the initiator's
    /// challenge, under the cookie that matched) as the challenge ack.
    pub fn complete_with(&mut self, ack: [u8; 16]) -> Result<Connected, HandshakeError> {
        if self.state != AState::AwaitComplete {
            return Err(HandshakeError::OutOfOrder("complete before authentication"));
        }
        push_frame(&mut self.out, |o| {
            o.push(b'a');
            o.extend_from_slice(&ack);
        });
        self.state = AState::Done;
        Ok(self.connected())
    }

    fn connected(&self) -> Connected {
        Connected {
            peer: self.peer.clone(),
            peer_creation: self.peer_creation,
            flags: DFlags::negotiate(self.cfg.flags, self.peer_flags),
            our_name: self.cfg.name.clone(),
            our_creation: self.cfg.creation,
        }
    }

    /// Sends our status. For `Ok`, `OkSimultaneous` and `Named` the challenge follows at once;
    /// after `Alive` the initiator's answer comes as [`AcceptorEvent::AliveAnswer`]; `Nok` and
    /// `NotAllowed` end the handshake.
    pub fn respond(&mut self, status: Status) -> Result<(), HandshakeError> {
        if self.state != AState::AwaitRespond {
            return Err(HandshakeError::OutOfOrder("respond before the name"));
        }
        push_frame(&mut self.out, |o| status.encode(o));
        match status {
            Status::Ok | Status::OkSimultaneous => self.send_challenge(),
            Status::Named { name, creation } => {
                self.peer = name;
                self.peer_creation = creation;
                self.send_challenge();
            }
            Status::Alive => self.state = AState::AwaitAliveAnswer,
            Status::Nok | Status::NotAllowed => self.state = AState::Over,
        }
        Ok(())
    }

    fn send_challenge(&mut self) {
        let cfg = &self.cfg;
        push_frame(&mut self.out, |o| {
            o.push(b'N');
            o.extend_from_slice(&cfg.flags.0.to_be_bytes());
            o.extend_from_slice(&cfg.challenge.to_be_bytes());
            o.extend_from_slice(&cfg.creation.to_be_bytes());
            push_name(o, &cfg.name);
        });
        self.state = AState::AwaitReply;
    }

    /// The initiator's challenge (valid after [`AcceptorEvent::Authenticated`]); a relay uses it
    /// to check its own digest.
    pub fn peer_challenge(&self) -> u32 {
        self.peer_challenge
    }

    /// Sends the challenge ack and returns what was agreed.
    pub fn complete(&mut self) -> Result<Connected, HandshakeError> {
        if self.state != AState::AwaitComplete {
            return Err(HandshakeError::OutOfOrder("complete before authentication"));
        }
        if self.foreign_digest().is_some() {
            return Err(HandshakeError::OutOfOrder("complete with a digest nobody checked"));
        }
        let d = digest(self.peer_challenge, &self.cfg.cookie);
        push_frame(&mut self.out, |o| {
            o.push(b'a');
            o.extend_from_slice(&d);
        });
        self.state = AState::Done;
        Ok(self.connected())
    }

    /// Processes buffered input; returns the next event, or `None` when more input (or a call
    /// from the user) is needed.
    pub fn poll(&mut self) -> Result<Option<AcceptorEvent>, HandshakeError> {
        if matches!(
            self.state,
            AState::AwaitRespond | AState::AwaitChallengeCall | AState::AwaitComplete | AState::Done | AState::Over
        ) {
            return Ok(None);
        }
        let Some(frame) = self.input.next() else { return Ok(None) };
        let (tag, body) = split_tag(&frame)?;
        match (self.state, tag) {
            (AState::AwaitName, b'N') => {
                let mut c = Reader::new(body);
                let flags = DFlags(c.u64()?);
                let creation = c.u32()?;
                let n = c.u16()?;
                let name = latin1_field(&mut c, usize::from(n))?;
                let name_ok = if flags.has(DFlags::NAME_ME) {
                    !name.is_empty() && !name.contains('@')
                } else {
                    valid_node_name(&name)
                };
                if !name_ok {
                    return Err(HandshakeError::BadName(name));
                }
                let missing = flags.missing(DFlags::MANDATORY_25);
                if !missing.is_empty() {
                    push_frame(&mut self.out, |o| Status::NotAllowed.encode(o));
                    self.state = AState::Over;
                    return Err(HandshakeError::MissingFlags(missing));
                }
                self.peer = name.clone();
                self.peer_flags = flags;
                self.peer_creation = creation;
                self.state = AState::AwaitRespond;
                Ok(Some(AcceptorEvent::Name { name, flags, creation }))
            }
            (AState::AwaitName, b'n') => {
                Err(HandshakeError::Malformed("old 'n' handshake (OTP <= 24) is not supported"))
            }
            (AState::AwaitAliveAnswer, b's') => {
                let cont = match body {
                    b"true" => true,
                    b"false" => false,
                    _ => return Err(HandshakeError::Malformed("alive answer")),
                };
                self.state = match (cont, self.defer_challenge) {
                    (true, false) => {
                        self.send_challenge();
                        AState::AwaitReply
                    }
                    (true, true) => AState::AwaitChallengeCall,
                    (false, _) => AState::Over,
                };
                Ok(Some(AcceptorEvent::AliveAnswer(cont)))
            }
            (AState::AwaitReply, b'r') => {
                if body.len() != 20 {
                    return Err(HandshakeError::Malformed("challenge reply must be 21 bytes"));
                }
                let mut c = Reader::new(body);
                self.peer_challenge = c.u32()?;
                if !ct_eq(&digest(self.cfg.challenge, &self.cfg.cookie), c.rest()) {
                    match (&mut self.foreign, <[u8; 16]>::try_from(c.rest())) {
                        (Some(slot), Ok(d)) => *slot = Some(d),
                        _ => {
                            self.state = AState::Over;
                            return Err(HandshakeError::BadDigest);
                        }
                    }
                }
                self.state = AState::AwaitComplete;
                Ok(Some(AcceptorEvent::Authenticated))
            }
            (_, t) => Err(HandshakeError::UnexpectedTag(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_vectors() {
        assert_eq!(hex(&digest(3440627961, b"x")), "efb45f34f829c24bc2dee47a06eb9000");
        assert_eq!(hex(&digest(0, b"secretcookie")), "b84e52efd9d2ef526db2fccc23e877e8");
        assert_eq!(hex(&digest(u32::MAX, b"secretcookie")), "fbf4996d1d673d18152a8d6477996cb1");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pair(cookie_a: &[u8], cookie_b: &[u8]) -> (Initiator, Acceptor) {
        let a = Initiator::new(InitiatorConfig {
            name: "a@h".into(),
            flags: DFlags::edist_default(false),
            creation: 7,
            cookie: cookie_a.to_vec(),
            challenge: 1234,
            peer: "b@h".into(),
        });
        let b = Acceptor::new(AcceptorConfig {
            name: "b@h".into(),
            flags: DFlags::edist_default(true),
            creation: 9,
            cookie: cookie_b.to_vec(),
            challenge: 99,
        });
        (a, b)
    }

    #[test]
    fn full_handshake_between_both_roles() {
        let (mut a, mut b) = pair(b"c", b"c");
        b.handle(&a.take_output()).unwrap();
        let ev = b.poll().unwrap().unwrap();
        assert!(matches!(ev, AcceptorEvent::Name { ref name, creation: 7, .. } if name == "a@h"));
        b.respond(Status::Ok).unwrap();
        a.handle(&b.take_output()).unwrap();
        assert_eq!(a.poll().unwrap(), Some(InitiatorEvent::Status(Status::Ok)));
        assert!(matches!(a.poll().unwrap(), Some(InitiatorEvent::Challenge { creation: 9, .. })));
        a.reply().unwrap();
        b.handle(&a.take_output()).unwrap();
        assert_eq!(b.poll().unwrap(), Some(AcceptorEvent::Authenticated));
        let cb = b.complete().unwrap();
        a.handle(&b.take_output()).unwrap();
        let Some(InitiatorEvent::Connected(ca)) = a.poll().unwrap() else { panic!() };
        assert_eq!(ca.flags, cb.flags);
        assert!(!ca.flags.is_published(), "hidden on one side means hidden");
        assert_eq!((ca.peer.as_str(), cb.peer.as_str()), ("b@h", "a@h"));
    }

    /// A relay between a (cookie `ca` for b) and b (cookie `cb` for a), with cookies of its own on
    /// each leg (`x` towards a, `y` towards b): a's digest over b's challenge is checked against
    /// `x`; when it is not one of `x` it is passed to b, which checks it against `cb`, and b's ack
    /// goes back to a unchecked. Returns whether each end connected (a, b) and whether the
    /// relay found a's digest its own.
    fn relayed(ca: &[u8], x: &[u8], y: &[u8], cb: &[u8]) -> (bool, bool, bool) {
        let (mut a, mut g_a) = pair(ca, x);
        g_a.pass_foreign_digests();
        let (mut g_b, mut b) = pair(y, cb);
        // a -> ga: name; gb -> b: name; b's status and challenge come back.
        g_a.handle(&a.take_output()).unwrap();
        assert!(matches!(g_a.poll().unwrap(), Some(AcceptorEvent::Name { .. })));
        b.handle(&g_b.take_output()).unwrap();
        assert!(matches!(b.poll().unwrap(), Some(AcceptorEvent::Name { .. })));
        b.respond(Status::Ok).unwrap();
        g_b.handle(&b.take_output()).unwrap();
        assert_eq!(g_b.poll().unwrap(), Some(InitiatorEvent::Status(Status::Ok)));
        assert!(matches!(g_b.poll().unwrap(), Some(InitiatorEvent::Challenge { .. })));
        // ga puts b's challenge to a.
        g_a.set_challenge(g_b.peer_challenge());
        g_a.respond(Status::Ok).unwrap();
        a.handle(&g_a.take_output()).unwrap();
        assert_eq!(a.poll().unwrap(), Some(InitiatorEvent::Status(Status::Ok)));
        assert!(matches!(a.poll().unwrap(), Some(InitiatorEvent::Challenge { .. })));
        a.reply().unwrap();
        g_a.handle(&a.take_output()).unwrap();
        assert_eq!(g_a.poll().unwrap(), Some(AcceptorEvent::Authenticated));
        let own = g_a.foreign_digest().is_none();
        match g_a.foreign_digest() {
            None => g_b.reply().unwrap(),
            Some(d) => {
                assert!(g_a.complete().is_err(), "an unchecked digest is never acked here");
                g_b.reply_relayed(g_a.peer_challenge(), d).unwrap();
            }
        }
        b.handle(&g_b.take_output()).unwrap();
        match b.poll() {
            Ok(Some(AcceptorEvent::Authenticated)) => {}
            Err(HandshakeError::BadDigest) => return (false, false, own),
            other => panic!("{other:?}"),
        }
        b.complete().unwrap();
        g_b.handle(&b.take_output()).unwrap();
        match g_b.poll() {
            Ok(Some(InitiatorEvent::Connected(_))) => {}
            Err(HandshakeError::BadDigest) => return (false, true, own),
            other => panic!("{other:?}"),
        }
        match g_b.take_relayed_ack() {
            Some(ack) => g_a.complete_with(ack).unwrap(),
            None => g_a.complete().unwrap(),
        };
        a.handle(&g_a.take_output()).unwrap();
        let a_ok = matches!(a.poll(), Ok(Some(InitiatorEvent::Connected(_))));
        (a_ok, true, own)
    }

    #[test]
    fn a_relay_checks_its_own_cookie_and_passes_other_digests_end_to_end() {
        // Everyone on the gateways' cookies (which may differ per host): checked by the relay.
        assert_eq!(relayed(b"x", b"x", b"y", b"y"), (true, true, true));
        // Both ends agree on another cookie: checked by b, acked by b.
        assert_eq!(relayed(b"c", b"x", b"y", b"c"), (true, true, false));
        assert_eq!(relayed(b"y", b"x", b"y", b"y"), (true, true, false), "a uses b's gateway's cookie");
        // They disagree: b refuses a's digest, nobody connects.
        assert_eq!(relayed(b"c", b"x", b"y", b"d"), (false, false, false));
        assert_eq!(relayed(b"c", b"x", b"y", b"y"), (false, false, false));
        // a on its gateway's cookie, b on another: b refuses the relay's digest.
        assert_eq!(relayed(b"x", b"x", b"y", b"c"), (false, false, true));
        // A malformed reply is still an error, and the ack of a relayed reply is not checked
        // here but handed on.
        let (mut a, mut g) = pair(b"c", b"x");
        g.pass_foreign_digests();
        g.handle(&a.take_output()).unwrap();
        g.poll().unwrap();
        g.respond(Status::Ok).unwrap();
        g.handle(&[0, 5, b'r', 0, 0, 0, 1]).unwrap();
        assert!(g.poll().is_err());
        a.handle(&[0, 3, b's', b'o', b'k']).unwrap();
        assert!(a.poll().unwrap().is_some());
        assert!(a.reply_relayed(1, [0; 16]).is_err(), "no challenge yet");
    }

    /// Names as OTP writes them: its own as latin1 in `send_name` and the challenge (a legal
    /// host part such as `b1é` is one byte a character, erl_distribution_SUITE `hostnames`),
    /// a given dynamic name as UTF-8.
    #[test]
    fn names_are_latin1_on_the_wire_and_given_names_utf8() {
        let mut a = Initiator::new(InitiatorConfig {
            name: "e@b1é".into(),
            flags: DFlags::edist_default(false),
            creation: 7,
            cookie: b"c".to_vec(),
            challenge: 1,
            peer: "b@hé".into(),
        });
        let out = a.take_output();
        assert!(out.ends_with(&[0, 5, b'e', b'@', b'b', b'1', 0xE9]), "{out:?}");
        let mut b = Acceptor::new(AcceptorConfig {
            name: "b@hé".into(),
            flags: DFlags::edist_default(false),
            creation: 9,
            cookie: b"c".to_vec(),
            challenge: 2,
        });
        b.handle(&out).unwrap();
        assert!(matches!(b.poll().unwrap(), Some(AcceptorEvent::Name { ref name, .. }) if name == "e@b1é"));
        b.respond(Status::Ok).unwrap();
        let ch = b.take_output();
        assert!(ch.ends_with(&[0, 4, b'b', b'@', b'h', 0xE9]), "{ch:?}");
        a.handle(&ch).unwrap();
        assert_eq!(a.poll().unwrap(), Some(InitiatorEvent::Status(Status::Ok)));
        assert!(matches!(a.poll().unwrap(), Some(InitiatorEvent::Challenge { creation: 9, .. })));
        let mut named = Vec::new();
        Status::Named { name: "X@é".into(), creation: 5 }.encode(&mut named);
        assert_eq!(&named[..9], b"snamed:\0\x04");
        assert_eq!(Status::decode(&named[1..]).unwrap(), Status::Named { name: "X@é".into(), creation: 5 });
    }

    #[test]
    fn wrong_cookie_is_refused_by_the_acceptor() {
        let (mut a, mut b) = pair(b"c", b"other");
        b.handle(&a.take_output()).unwrap();
        b.poll().unwrap();
        b.respond(Status::Ok).unwrap();
        a.handle(&b.take_output()).unwrap();
        a.poll().unwrap();
        a.poll().unwrap();
        a.reply().unwrap();
        b.handle(&a.take_output()).unwrap();
        assert_eq!(b.poll(), Err(HandshakeError::BadDigest));
    }

    #[test]
    fn statuses_round_trip() {
        for st in [
            Status::Ok,
            Status::OkSimultaneous,
            Status::Nok,
            Status::NotAllowed,
            Status::Alive,
            Status::Named { name: "x@y".into(), creation: 5 },
        ] {
            let mut v = Vec::new();
            st.encode(&mut v);
            assert_eq!(Status::decode(&v[1..]).unwrap(), st);
        }
    }

    #[test]
    fn alive_then_true_continues() {
        let (mut a, mut b) = pair(b"c", b"c");
        b.handle(&a.take_output()).unwrap();
        b.poll().unwrap();
        b.respond(Status::Alive).unwrap();
        a.handle(&b.take_output()).unwrap();
        assert_eq!(a.poll().unwrap(), Some(InitiatorEvent::Status(Status::Alive)));
        a.answer_alive(true).unwrap();
        b.handle(&a.take_output()).unwrap();
        assert_eq!(b.poll().unwrap(), Some(AcceptorEvent::AliveAnswer(true)));
        a.handle(&b.take_output()).unwrap();
        assert!(matches!(a.poll().unwrap(), Some(InitiatorEvent::Challenge { .. })));
    }

    #[test]
    fn deferred_challenge_after_alive() {
        let (mut a, mut b) = pair(b"c", b"c");
        b.set_defer_challenge(true);
        b.handle(&a.take_output()).unwrap();
        b.poll().unwrap();
        b.respond(Status::Alive).unwrap();
        a.handle(&b.take_output()).unwrap();
        a.poll().unwrap();
        a.answer_alive(true).unwrap();
        b.handle(&a.take_output()).unwrap();
        assert_eq!(b.poll().unwrap(), Some(AcceptorEvent::AliveAnswer(true)));
        assert!(b.take_output().is_empty(), "no challenge before send_challenge_now");
        b.set_flags(DFlags::edist_default(false));
        b.send_challenge_now().unwrap();
        a.handle(&b.take_output()).unwrap();
        assert!(matches!(a.poll().unwrap(), Some(InitiatorEvent::Challenge { .. })));
    }

    #[test]
    fn missing_flags_get_not_allowed() {
        let mut b = pair(b"c", b"c").1;
        let mut msg = vec![0, 0, b'N'];
        msg.extend_from_slice(&0u64.to_be_bytes());
        msg.extend_from_slice(&1u32.to_be_bytes());
        msg.extend_from_slice(&3u16.to_be_bytes());
        msg.extend_from_slice(b"a@h");
        let len = (msg.len() - 2) as u16;
        msg[..2].copy_from_slice(&len.to_be_bytes());
        b.handle(&msg).unwrap();
        assert!(matches!(b.poll(), Err(HandshakeError::MissingFlags(_))));
        assert_eq!(b.take_output(), b"\x00\x0csnot_allowed");
    }

    #[test]
    fn wrong_peer_name_is_refused_by_the_initiator() {
        let (mut a, mut b) = pair(b"c", b"c");
        b.cfg.name = "impostor@h".into();
        b.handle(&a.take_output()).unwrap();
        b.poll().unwrap();
        b.respond(Status::Ok).unwrap();
        a.handle(&b.take_output()).unwrap();
        a.poll().unwrap();
        assert!(matches!(a.poll(), Err(HandshakeError::WrongPeer { .. })));
    }
}
