//! The device link's own frames and the watcher of a device's distribution handshake: sans-IO.
//!
//! A device BEAM (`edist_device_dist.erl`) opens TLS connections to its hub, each starting with
//! one frame (a u16 big-endian length, then the body; OTP's `{packet, 2}`) that says what the
//! connection is for ([`Preface`]):
//!
//! * `"EDC1", 1, Creation:32, Name` — the control connection: the device's node `Name` is up
//!   while it lasts. The hub answers [`HubMsg::Welcome`] or [`HubMsg::Refused`], then asks
//!   over it for connections to the device ([`HubMsg::Incoming`]); both sides send
//!   [`HubMsg::Beat`] / `[3]` heartbeats, framed the same way.
//! * `"EDC1", 2, Target` — a distribution connection the device dials to node `Target`; the
//!   device's handshake as initiator follows at once.
//! * `"EDC1", 3, Id:64` — the device's answer to [`HubMsg::Incoming`] `Id`: a distribution
//!   connection some node dialled to the device; the device's handshake as acceptor follows.
//!
//! The distribution handshake itself then passes through the hub unchanged but for the flags
//! ([`HandshakeWatch`]), and after it the packets (u32 length) of standard distribution.

use crate::session::handshake::{hidden_mask, RELAY_MASK};
use edist_proto::codec::Reader;
use edist_proto::dist::DFlags;

/// The first bytes of every preface.
pub const MAGIC: &[u8; 4] = b"EDC1";
/// Longest handshake message the hub passes (a name is at most 255 bytes in OTP).
pub const MAX_HANDSHAKE_FRAME: usize = 512;

/// A malformed or forbidden frame from a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("not an edist device preface")]
    NotAPreface,
    #[error("preface kind {0} unknown")]
    UnknownKind(u8),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("node name is not UTF-8 alive@host")]
    BadName,
    #[error("handshake message {tag:?} unexpected from the {side}")]
    Unexpected { tag: char, side: &'static str },
    #[error("handshake names {got:?}, but the certificate grants {granted:?}")]
    NameMismatch { got: String, granted: String },
    #[error("handshake message of {0} bytes")]
    TooLong(usize),
}

/// What a device connection is for (its first frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preface {
    Control { creation: u32, name: String },
    Dial { target: String },
    Answer { id: u64 },
}

fn node_name(b: &[u8]) -> Result<String, ProtoError> {
    let s = std::str::from_utf8(b).map_err(|_| ProtoError::BadName)?;
    if !edist_proto::dist::handshake::valid_node_name(s) {
        return Err(ProtoError::BadName);
    }
    Ok(s.to_owned())
}

impl Preface {
    /// Reads the body of a connection's first frame.
    pub fn parse(body: &[u8]) -> Result<Preface, ProtoError> {
        let mut r = Reader::new(body);
        if r.array::<4>().ok().as_ref() != Some(MAGIC) {
            return Err(ProtoError::NotAPreface);
        }
        match r.u8().map_err(|_| ProtoError::Truncated("preface"))? {
            1 => {
                let creation = r.u32().map_err(|_| ProtoError::Truncated("control preface"))?;
                Ok(Preface::Control { creation, name: node_name(r.rest())? })
            }
            2 => Ok(Preface::Dial { target: node_name(r.rest())? }),
            3 => Ok(Preface::Answer { id: r.u64().map_err(|_| ProtoError::Truncated("answer preface"))? }),
            k => Err(ProtoError::UnknownKind(k)),
        }
    }

    /// The frame body (what the Erlang connector sends; for simulated devices and tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        match self {
            Preface::Control { creation, name } => {
                b.push(1);
                b.extend_from_slice(&creation.to_be_bytes());
                b.extend_from_slice(name.as_bytes());
            }
            Preface::Dial { target } => {
                b.push(2);
                b.extend_from_slice(target.as_bytes());
            }
            Preface::Answer { id } => {
                b.push(3);
                b.extend_from_slice(&id.to_be_bytes());
            }
        }
        b
    }
}

/// What the hub says on a control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubMsg {
    /// Registered; beat at least every third of `idle_timeout_ms`.
    Welcome { idle_timeout_ms: u32 },
    /// Not registered (the connection closes), and why.
    Refused(String),
    /// A node dialled the device: open a connection answering `id`.
    Incoming { id: u64 },
    /// A heartbeat (the answer to the device's).
    Beat,
}

impl HubMsg {
    /// The frame, length prefix included.
    pub fn frame(&self) -> Vec<u8> {
        let mut b = vec![0, 0];
        match self {
            HubMsg::Welcome { idle_timeout_ms } => {
                b.push(1);
                b.extend_from_slice(&idle_timeout_ms.to_be_bytes());
            }
            HubMsg::Refused(why) => {
                b.push(0);
                b.extend_from_slice(why.as_bytes().get(..1000).unwrap_or(why.as_bytes()));
            }
            HubMsg::Incoming { id } => {
                b.push(2);
                b.extend_from_slice(&id.to_be_bytes());
            }
            HubMsg::Beat => b.push(3),
        }
        let len = u16::try_from(b.len() - 2).unwrap_or(u16::MAX).to_be_bytes();
        if let Some(prefix) = b.get_mut(..2) {
            prefix.copy_from_slice(&len);
        }
        b
    }

    /// Reads a frame body (the simulated device's side).
    pub fn parse(body: &[u8]) -> Option<HubMsg> {
        let mut r = Reader::new(body);
        Some(match r.u8().ok()? {
            0 => HubMsg::Refused(String::from_utf8_lossy(r.rest()).into_owned()),
            1 => HubMsg::Welcome { idle_timeout_ms: r.u32().ok()? },
            2 => HubMsg::Incoming { id: r.u64().ok()? },
            3 => HubMsg::Beat,
            _ => return None,
        })
    }
}

/// The only frame a device sends on its control connection after the preface: a heartbeat.
pub const DEVICE_BEAT: u8 = 3;

/// Which part of the handshake a side plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Acceptor,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Initiator => "initiator",
            Role::Acceptor => "acceptor",
        }
    }
}

/// Watches the handshake messages one side of a device's distribution connection sends
/// (OTP `{packet, 2}` frames, reference §3): the flags lose what a relayed connection may not
/// carry (the atom cache, whose state the hub's policy could not follow, and `NAME_ME`) and,
/// under a hidden role, `PUBLISHED` (both ends then see a hidden connection); the device's own
/// name must be the one its certificate grants. The side is done after its last message: the
/// challenge reply (`r`) of an initiator, the ack (`a`) of an acceptor. Then its packets follow.
#[derive(Debug)]
pub struct HandshakeWatch {
    role: Role,
    /// The name this side must use (the device's), or `None` (the hub's side: any).
    must_be: Option<String>,
    mask: u64,
    done: bool,
    /// The name this side gave (in its `N` message).
    pub name: Option<String>,
}

impl HandshakeWatch {
    /// A watcher of the side playing `role`; `must_be`: its certificate's name, for the device.
    pub fn new(role: Role, must_be: Option<&str>, hide: bool) -> HandshakeWatch {
        HandshakeWatch {
            role,
            must_be: must_be.map(str::to_owned),
            mask: RELAY_MASK & hidden_mask(hide),
            done: false,
            name: None,
        }
    }

    /// True once this side sent its last handshake message.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Checks (and rewrites in place) one message body of this side.
    pub fn message(&mut self, body: &mut [u8]) -> Result<(), ProtoError> {
        if body.len() > MAX_HANDSHAKE_FRAME {
            return Err(ProtoError::TooLong(body.len()));
        }
        let Some(&tag) = body.first() else { return Err(ProtoError::Truncated("handshake message")) };
        let unexpected = || ProtoError::Unexpected { tag: char::from(tag), side: self.role.as_str() };
        match (tag, self.role) {
            // send_name (initiator) or challenge (acceptor), version 6: 'N', Flags:64, then
            // Creation:32 (send_name) or Challenge:32 + Creation:32, NLen:16, Name.
            (b'N', _) => {
                if self.name.is_some() {
                    return Err(unexpected());
                }
                let name_at = match self.role {
                    Role::Initiator => 13,
                    Role::Acceptor => 17,
                };
                let mut r = Reader::new(body);
                r.seek(1);
                let flags = r.u64().map_err(|_| ProtoError::Truncated("N message"))?;
                r.seek(name_at);
                let len = r.u16().map_err(|_| ProtoError::Truncated("N message"))?;
                let name = node_name(r.bytes(usize::from(len)).map_err(|_| ProtoError::BadName)?)?;
                if let Some(granted) = &self.must_be {
                    if *granted != name {
                        return Err(ProtoError::NameMismatch { got: name, granted: granted.clone() });
                    }
                }
                let flags = DFlags(flags & self.mask);
                if let Some(f) = body.get_mut(1..9) {
                    f.copy_from_slice(&flags.0.to_be_bytes());
                }
                self.name = Some(name);
            }
            // A status (`sok`, `salive`, ...) from the acceptor, `strue`/`sfalse` from the
            // initiator (the answer to `alive`).
            (b's', _) => {}
            (b'r', Role::Initiator) | (b'a', Role::Acceptor) if self.name.is_some() => self.done = true,
            // The version-5 `n` (and its complement `c`) is not spoken: OTP 25 sends `N` to a
            // node it knows speaks version 6, which the connector says the hub does.
            _ => return Err(unexpected()),
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn send_name(flags: u64, name: &str) -> Vec<u8> {
        let mut b = vec![b'N'];
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b
    }

    fn challenge(flags: u64, name: &str) -> Vec<u8> {
        let mut b = vec![b'N'];
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name.as_bytes());
        b
    }

    #[test]
    fn prefaces_round_trip_and_garbage_is_refused() {
        for p in [
            Preface::Control { creation: 9, name: "d1@board".into() },
            Preface::Dial { target: "srv@host".into() },
            Preface::Answer { id: u64::MAX },
        ] {
            assert_eq!(Preface::parse(&p.encode()), Ok(p));
        }
        assert_eq!(Preface::parse(b"EDC2\x01"), Err(ProtoError::NotAPreface));
        assert_eq!(Preface::parse(b"EDC1"), Err(ProtoError::Truncated("preface")));
        assert_eq!(Preface::parse(b"EDC1\x09"), Err(ProtoError::UnknownKind(9)));
        assert_eq!(Preface::parse(b"EDC1\x01\x00\x00"), Err(ProtoError::Truncated("control preface")));
        assert_eq!(Preface::parse(b"EDC1\x02noat"), Err(ProtoError::BadName));
        assert_eq!(Preface::parse(b"EDC1\x03\x01"), Err(ProtoError::Truncated("answer preface")));
        for m in [HubMsg::Welcome { idle_timeout_ms: 15000 }, HubMsg::Incoming { id: 5 }, HubMsg::Beat] {
            let f = m.frame();
            assert_eq!(usize::from(u16::from_be_bytes([f[0], f[1]])), f.len() - 2);
            assert_eq!(HubMsg::parse(&f[2..]), Some(m));
        }
    }

    #[test]
    fn the_device_must_use_its_granted_name_and_loses_the_atom_cache_and_published() {
        let all = DFlags::PUBLISHED | DFlags::DIST_HDR_ATOM_CACHE | DFlags::FRAGMENTS | DFlags::NAME_ME;
        let mut w = HandshakeWatch::new(Role::Initiator, Some("d1@board"), true);
        let mut m = send_name(all, "d1@board");
        w.message(&mut m).unwrap();
        assert_eq!(u64::from_be_bytes(m[1..9].try_into().unwrap()), DFlags::FRAGMENTS);
        assert!(!w.done());
        w.message(&mut b"strue".to_vec()).unwrap();
        w.message(&mut [b'r'; 21]).unwrap();
        assert!(w.done());

        let mut w = HandshakeWatch::new(Role::Initiator, Some("d1@board"), false);
        let err = w.message(&mut send_name(all, "d2@board")).unwrap_err();
        assert!(matches!(err, ProtoError::NameMismatch { .. }), "{err}");
        // No reply before a name, no version-5 name, no second name.
        let mut w = HandshakeWatch::new(Role::Initiator, Some("d1@board"), false);
        assert!(w.message(&mut [b'r'; 21]).is_err());
        assert!(w.message(&mut b"n\x00\x05".to_vec()).is_err());
        w.message(&mut send_name(all, "d1@board")).unwrap();
        assert!(w.message(&mut send_name(all, "d1@board")).is_err());

        let mut w = HandshakeWatch::new(Role::Acceptor, Some("d1@board"), false);
        w.message(&mut b"sok".to_vec()).unwrap();
        let mut m = challenge(all, "d1@board");
        w.message(&mut m).unwrap();
        assert_eq!(u64::from_be_bytes(m[1..9].try_into().unwrap()), DFlags::PUBLISHED | DFlags::FRAGMENTS);
        w.message(&mut [b'a'; 17]).unwrap();
        assert!(w.done());
        // Truncated and oversized messages.
        let mut w = HandshakeWatch::new(Role::Acceptor, None, false);
        assert!(w.message(&mut challenge(all, "x@y")[..20].to_vec()).is_err());
        assert!(w.message(&mut vec![b's'; MAX_HANDSHAKE_FRAME + 1]).is_err());
        assert!(w.message(&mut Vec::new()).is_err());
    }
}
