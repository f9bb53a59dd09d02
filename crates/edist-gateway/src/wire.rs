//! Messages between gateways (sans IO).
//!
//! Every QUIC stream between two gateways starts with one of these frames, `[u32 len][u8 tag]
//! [fields]`: a [`Msg::Control`] stream carries node announcements for the life of the link; an
//! [`Msg::Open`] stream carries one relayed distribution connection — a few handshake frames,
//! then, after [`Msg::Connected`], the raw distribution bytes of both nodes.
// Under the protocol core's lints: this code reads what hostile peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use bytes::BytesMut;
use edist_proto::codec::{self, CodecError, FrameError, Reader, Split, U32Frames};
use thiserror::Error;

/// Largest frame accepted (a full node list of a large host fits easily).
pub const MAX_FRAME: usize = 1 << 20;

/// A node as announced by its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Full node name, `alive@host`.
    pub name: String,
    /// Its creation (pids it makes carry it).
    pub creation: u32,
}

/// One message between gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// First frame of the control stream.
    Control,
    /// The sender's complete list of local nodes (replaces what was known).
    Nodes(Vec<NodeInfo>),
    /// A local node registered.
    NodeUp(NodeInfo),
    /// A local node went away.
    NodeDown(String),
    /// First frame of a relay stream: `from` (behind the sender) dials `to` (behind the receiver)
    /// with these handshake flags and creation; `relay` names the connection for its lanes.
    Open { relay: u64, from: String, to: String, flags: u64, creation: u32 },
    /// First frame of a unidirectional lane stream: lane `lane` (1..) of relayed connection
    /// `relay` (lane frames follow, see `lane_frame`).
    Lane { relay: u64, lane: u8 },
    /// The target node's handshake status (`ok`, `nok`, `alive`, ...).
    Status(String),
    /// The target node's challenge: its flags and creation (the challenge itself stays local).
    Challenge { flags: u64, creation: u32 },
    /// The target node's challenge, with the challenge itself: sent in place of `Challenge`
    /// when the `Open` said the dialling gateway relays cookies end to end
    /// (`session::handshake::E2E_COOKIES`). That gateway puts the same challenge to its node, so that the
    /// node's digest is one the target can check.
    ChallengeOf { flags: u64, creation: u32, challenge: u32 },
    /// In place of `Proceed`, after a `ChallengeOf`: the initiator's digest is not one of its
    /// gateway's cookie; here it is, with the initiator's challenge, for the target node to
    /// check against the cookie it uses for the initiator.
    Reply { challenge: u32, digest: [u8; 16] },
    /// In place of `Connected`, after a `Reply`: the target accepted the digest; its ack (a
    /// digest over the initiator's challenge) for the initiator. Raw bytes follow.
    Ack([u8; 16]),
    /// After a `Reply`: the target refused the digest (their cookies differ).
    BadCookie,
    /// The initiator's answer to `alive`.
    AliveAnswer(bool),
    /// The initiator proved its cookie to its own gateway: finish the target leg.
    Proceed,
    /// The target leg is connected; raw distribution bytes follow on this stream.
    Connected,
    /// The relay is refused (unknown node, target unreachable, policy...).
    Refused(String),
    /// First frame of a relay stream a relay gateway forwards (an `Open` follows): the gateway
    /// the dialling node is behind.
    Forwarded { origin: String },
    /// From a relay gateway: the complete node list of a gateway it relays for (one that
    /// cannot be dialled), replacing what was known.
    RelayedNodes { gateway: String, nodes: Vec<NodeInfo> },
}

/// Decoding errors: the peer gateway broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("message tag {tag} does not belong on {on:?}")]
    WrongStream { tag: u8, on: On },
}

/// Where on which stream a message is read: each place admits its own kinds only
/// ([`Msg::decode_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The first frame of a unidirectional stream: [`Msg::Control`] or [`Msg::Lane`].
    UniFirst,
    /// The first frame of a bidirectional stream: [`Msg::Open`], or [`Msg::Forwarded`] (an
    /// `Open` follows).
    BiFirst,
    /// A control stream after its [`Msg::Control`]: node lists and node changes.
    Control,
    /// A relay stream after its `Open`, either way: the relayed handshake and its outcome.
    Relay,
}

impl On {
    /// Whether a message with this tag may come here.
    fn admits(self, t: u8) -> bool {
        match self {
            On::UniFirst => matches!(t, tag::CONTROL | tag::LANE),
            On::BiFirst => matches!(t, tag::OPEN | tag::FORWARDED),
            On::Control => matches!(t, tag::NODES | tag::NODE_UP | tag::NODE_DOWN | tag::RELAYED_NODES),
            On::Relay => matches!(
                t,
                tag::STATUS
                    | tag::CHALLENGE
                    | tag::CHALLENGE_OF
                    | tag::REPLY
                    | tag::ACK
                    | tag::BAD_COOKIE
                    | tag::ALIVE_ANSWER
                    | tag::PROCEED
                    | tag::CONNECTED
                    | tag::REFUSED
            ),
        }
    }
}

mod tag {
    pub const CONTROL: u8 = 1;
    pub const NODES: u8 = 2;
    pub const NODE_UP: u8 = 3;
    pub const NODE_DOWN: u8 = 4;
    pub const OPEN: u8 = 10;
    pub const STATUS: u8 = 11;
    pub const CHALLENGE: u8 = 12;
    pub const ALIVE_ANSWER: u8 = 13;
    pub const PROCEED: u8 = 14;
    pub const CONNECTED: u8 = 15;
    pub const REFUSED: u8 = 16;
    pub const LANE: u8 = 17;
    pub const FORWARDED: u8 = 18;
    pub const RELAYED_NODES: u8 = 19;
    pub const CHALLENGE_OF: u8 = 20;
    pub const REPLY: u8 = 21;
    pub const ACK: u8 = 22;
    pub const BAD_COOKIE: u8 = 23;
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    codec::put_bytes_u16(out, s.as_bytes());
}

/// Names the message a failed read was in.
trait In<T> {
    fn what(self, what: &'static str) -> Result<T, WireError>;
}

impl<T> In<T> for Result<T, CodecError> {
    fn what(self, what: &'static str) -> Result<T, WireError> {
        self.map_err(|_| WireError::Malformed(what))
    }
}

/// Frames of at most [`MAX_FRAME`] bytes.
const FRAMES: U32Frames = U32Frames::new(MAX_FRAME);

impl Msg {
    /// The frame, with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        match self {
            Msg::Control => b.push(tag::CONTROL),
            Msg::Nodes(nodes) => {
                b.push(tag::NODES);
                put_nodes(&mut b, nodes);
            }
            Msg::RelayedNodes { gateway, nodes } => {
                b.push(tag::RELAYED_NODES);
                put_str(&mut b, gateway);
                put_nodes(&mut b, nodes);
            }
            Msg::Forwarded { origin } => {
                b.push(tag::FORWARDED);
                put_str(&mut b, origin);
            }
            Msg::NodeUp(n) => {
                b.push(tag::NODE_UP);
                put_str(&mut b, &n.name);
                b.extend_from_slice(&n.creation.to_be_bytes());
            }
            Msg::NodeDown(name) => {
                b.push(tag::NODE_DOWN);
                put_str(&mut b, name);
            }
            Msg::Open { relay, from, to, flags, creation } => {
                b.push(tag::OPEN);
                b.extend_from_slice(&relay.to_be_bytes());
                put_str(&mut b, from);
                put_str(&mut b, to);
                b.extend_from_slice(&flags.to_be_bytes());
                b.extend_from_slice(&creation.to_be_bytes());
            }
            Msg::Status(s) => {
                b.push(tag::STATUS);
                put_str(&mut b, s);
            }
            Msg::Challenge { flags, creation } => {
                b.push(tag::CHALLENGE);
                b.extend_from_slice(&flags.to_be_bytes());
                b.extend_from_slice(&creation.to_be_bytes());
            }
            Msg::ChallengeOf { flags, creation, challenge } => {
                b.push(tag::CHALLENGE_OF);
                b.extend_from_slice(&flags.to_be_bytes());
                b.extend_from_slice(&creation.to_be_bytes());
                b.extend_from_slice(&challenge.to_be_bytes());
            }
            Msg::Reply { challenge, digest } => {
                b.push(tag::REPLY);
                b.extend_from_slice(&challenge.to_be_bytes());
                b.extend_from_slice(digest);
            }
            Msg::Ack(digest) => {
                b.push(tag::ACK);
                b.extend_from_slice(digest);
            }
            Msg::BadCookie => b.push(tag::BAD_COOKIE),
            Msg::AliveAnswer(a) => {
                b.push(tag::ALIVE_ANSWER);
                b.push(u8::from(*a));
            }
            Msg::Proceed => b.push(tag::PROCEED),
            Msg::Connected => b.push(tag::CONNECTED),
            Msg::Refused(r) => {
                b.push(tag::REFUSED);
                put_str(&mut b, r);
            }
            Msg::Lane { relay, lane } => {
                b.push(tag::LANE);
                b.extend_from_slice(&relay.to_be_bytes());
                b.push(*lane);
            }
        }
        let len = (b.len() - 4) as u32;
        if let Some(p) = b.get_mut(..4) {
            p.copy_from_slice(&len.to_be_bytes());
        }
        b
    }

    /// Takes one message off the front of `buf`, or `None` if it is not complete yet; a
    /// message that does not belong `on` this part of its stream is an error (and taken off).
    pub fn decode_on(buf: &mut BytesMut, on: On) -> Result<Option<Msg>, WireError> {
        Self::decode_checked(buf, Some(on))
    }

    /// Takes one message of any kind off the front of `buf`, or `None` if it is not complete
    /// yet.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Msg>, WireError> {
        Self::decode_checked(buf, None)
    }

    fn decode_checked(buf: &mut BytesMut, on: Option<On>) -> Result<Option<Msg>, WireError> {
        let frame = match FRAMES.split(buf) {
            Ok(Split::Frame(f)) => f,
            Ok(Split::Need(_)) => return Ok(None),
            Err(FrameError::TooLarge { len, .. }) => return Err(WireError::TooLarge(len as usize)),
            Err(_) => return Err(WireError::Malformed("frame")),
        };
        let mut r = Reader::new(frame.body());
        let t = r.u8().what("frame")?;
        if let Some(on) = on.filter(|on| !on.admits(t)) {
            return Err(WireError::WrongStream { tag: t, on });
        }
        let msg = match t {
            tag::CONTROL => Msg::Control,
            tag::NODES => Msg::Nodes(nodes(&mut r)?),
            tag::RELAYED_NODES => {
                Msg::RelayedNodes { gateway: string(&mut r, "relayed_nodes")?, nodes: nodes(&mut r)? }
            }
            tag::FORWARDED => Msg::Forwarded { origin: string(&mut r, "forwarded")? },
            tag::NODE_UP => {
                Msg::NodeUp(NodeInfo { name: string(&mut r, "node_up")?, creation: r.u32().what("node_up")? })
            }
            tag::NODE_DOWN => Msg::NodeDown(string(&mut r, "node_down")?),
            tag::OPEN => Msg::Open {
                relay: r.u64().what("open")?,
                from: string(&mut r, "open")?,
                to: string(&mut r, "open")?,
                flags: r.u64().what("open")?,
                creation: r.u32().what("open")?,
            },
            tag::STATUS => Msg::Status(string(&mut r, "status")?),
            tag::CHALLENGE => {
                Msg::Challenge { flags: r.u64().what("challenge")?, creation: r.u32().what("challenge")? }
            }
            tag::CHALLENGE_OF => Msg::ChallengeOf {
                flags: r.u64().what("challenge_of")?,
                creation: r.u32().what("challenge_of")?,
                challenge: r.u32().what("challenge_of")?,
            },
            tag::REPLY => Msg::Reply { challenge: r.u32().what("reply")?, digest: r.array().what("reply")? },
            tag::ACK => Msg::Ack(r.array().what("ack")?),
            tag::BAD_COOKIE => Msg::BadCookie,
            tag::ALIVE_ANSWER => Msg::AliveAnswer(r.u8().what("alive_answer")? != 0),
            tag::PROCEED => Msg::Proceed,
            tag::CONNECTED => Msg::Connected,
            tag::REFUSED => Msg::Refused(string(&mut r, "refused")?),
            tag::LANE => Msg::Lane { relay: r.u64().what("lane")?, lane: r.u8().what("lane")? },
            other => return Err(WireError::UnknownTag(other)),
        };
        r.expect_end().what("trailing bytes")?;
        Ok(Some(msg))
    }
}

fn put_nodes(b: &mut Vec<u8>, nodes: &[NodeInfo]) {
    b.extend_from_slice(&(nodes.len() as u32).to_be_bytes());
    for n in nodes {
        put_str(b, &n.name);
        b.extend_from_slice(&n.creation.to_be_bytes());
    }
}

/// A u16-length UTF-8 string.
fn string(r: &mut Reader<'_>, what: &'static str) -> Result<String, WireError> {
    r.str_u16(usize::from(u16::MAX)).what(what).map(str::to_owned)
}

/// A u32 count of nodes, each a string and a creation.
fn nodes(r: &mut Reader<'_>) -> Result<Vec<NodeInfo>, WireError> {
    let n = r.u32().what("nodes")?;
    // Each entry takes at least 6 bytes: no allocation beyond what is there.
    if u64::from(n) * 6 > r.remaining() as u64 {
        return Err(WireError::Malformed("nodes"));
    }
    let mut nodes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        nodes.push(NodeInfo { name: string(r, "nodes")?, creation: r.u32().what("nodes")? });
    }
    Ok(nodes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_part_of_a_stream_admits_its_own_messages_only() {
        let info = || NodeInfo { name: "a@h".into(), creation: 1 };
        let kinds = [
            (On::UniFirst, vec![Msg::Control, Msg::Lane { relay: 1, lane: 2 }]),
            (
                On::BiFirst,
                vec![
                    Msg::Open { relay: 1, from: "a@h".into(), to: "b@g".into(), flags: 0, creation: 1 },
                    Msg::Forwarded { origin: "gw".into() },
                ],
            ),
            (
                On::Control,
                vec![
                    Msg::Nodes(vec![info()]),
                    Msg::NodeUp(info()),
                    Msg::NodeDown("a@h".into()),
                    Msg::RelayedNodes { gateway: "gw".into(), nodes: vec![] },
                ],
            ),
            (
                On::Relay,
                vec![
                    Msg::Status("ok".into()),
                    Msg::Challenge { flags: 1, creation: 2 },
                    Msg::ChallengeOf { flags: 1, creation: 2, challenge: 3 },
                    Msg::Reply { challenge: 1, digest: [0; 16] },
                    Msg::Ack([0; 16]),
                    Msg::BadCookie,
                    Msg::AliveAnswer(false),
                    Msg::Proceed,
                    Msg::Connected,
                    Msg::Refused("no".into()),
                ],
            ),
        ];
        for (on, msgs) in &kinds {
            for (other, _) in &kinds {
                for m in msgs {
                    let bytes = m.encode();
                    let mut buf = BytesMut::from(&bytes[..]);
                    let got = Msg::decode_on(&mut buf, *other);
                    if on == other {
                        assert_eq!(got, Ok(Some(m.clone())));
                    } else {
                        assert_eq!(
                            got,
                            Err(WireError::WrongStream { tag: bytes[4], on: *other }),
                            "{m:?} on {other:?}"
                        );
                    }
                    assert!(buf.is_empty());
                    // Incomplete is incomplete wherever it is.
                    assert_eq!(Msg::decode_on(&mut BytesMut::from(&bytes[..4]), *other), Ok(None));
                }
            }
        }
    }

    #[test]
    fn every_message_round_trips_and_garbage_is_an_error() {
        let all = vec![
            Msg::Control,
            Msg::Nodes(vec![
                NodeInfo { name: "a@h".into(), creation: 7 },
                NodeInfo { name: "b@h".into(), creation: 8 },
            ]),
            Msg::NodeUp(NodeInfo { name: "c@h".into(), creation: 9 }),
            Msg::NodeDown("c@h".into()),
            Msg::Open { relay: 7, from: "a@h".into(), to: "b@g".into(), flags: 0xD07DF5FBC, creation: 42 },
            Msg::Lane { relay: 7, lane: 3 },
            Msg::Status("ok_simultaneous".into()),
            Msg::Challenge { flags: 1, creation: 2 },
            Msg::AliveAnswer(true),
            Msg::ChallengeOf { flags: 3, creation: 4, challenge: u32::MAX },
            Msg::Reply { challenge: 5, digest: [7; 16] },
            Msg::Ack([9; 16]),
            Msg::BadCookie,
            Msg::Proceed,
            Msg::Connected,
            Msg::Refused("no such node".into()),
            Msg::Forwarded { origin: "gw-a".into() },
            Msg::RelayedNodes { gateway: "gw-n".into(), nodes: vec![NodeInfo { name: "d@n".into(), creation: 3 }] },
        ];
        let mut buf = BytesMut::new();
        for m in &all {
            buf.extend_from_slice(&m.encode());
        }
        buf.extend_from_slice(&[0, 0]);
        for m in &all {
            assert_eq!(Msg::decode(&mut buf).unwrap().as_ref(), Some(m));
        }
        assert_eq!(Msg::decode(&mut buf).unwrap(), None);
        let mut bad = BytesMut::from(&[0u8, 0, 0, 1, 99][..]);
        assert_eq!(Msg::decode(&mut bad), Err(WireError::UnknownTag(99)));
        let mut huge = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(Msg::decode(&mut huge), Err(WireError::TooLarge(_))));
        let mut lie = BytesMut::from(&[0u8, 0, 0, 5, 2, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(Msg::decode(&mut lie), Err(WireError::Malformed("nodes")));
        // Digests are exactly 16 bytes: short or long is an error.
        let mut short = BytesMut::from(&[0u8, 0, 0, 16, 22, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15][..]);
        assert_eq!(Msg::decode(&mut short), Err(WireError::Malformed("ack")));
        let mut long = BytesMut::from(&Msg::Ack([1; 16]).encode()[..]);
        long.extend_from_slice(&[0]);
        long[3] += 1;
        assert_eq!(Msg::decode(&mut long), Err(WireError::Malformed("trailing bytes")));
        let mut reply = BytesMut::from(&Msg::Reply { challenge: 1, digest: [2; 16] }.encode()[..20]);
        reply[3] = 16;
        assert_eq!(Msg::decode(&mut reply), Err(WireError::Malformed("reply")));
    }
}
