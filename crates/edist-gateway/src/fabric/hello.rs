//! The hello that makes a link up, whatever its transport.
//!
//! A TLS handshake is not enough to call a peer up: with mutual TLS over QUIC the client's
//! handshake completes before the server has checked the client's certificate, so a refused
//! client only learns it on its first stream. A link is therefore up only once an
//! application-level hello has been answered, on the link's first stream both ways:
//!
//! ```text
//! dialer                                     acceptor
//!   | -- bi stream 0: Hello{version, name} ---> |  name must equal the dialer's certificate
//!   | <-- HelloAck{version, name} ------------- |  identity, else CLOSE_NAME_MISMATCH
//!   |  name must equal the acceptor's certificate identity
//! ```
//!
//! Hello frames are `u16 length` + body, body = `u8 kind`, `u16 version`, `u16 length` + name
//! (UTF-8); all integers big-endian, bodies at most [`MAX_HELLO_BODY`] bytes. The codec is
//! sans-IO ([`Hello::encode`], [`Hello::decode`]); each transport moves the bytes
//! ([`super::quic`], [`super::tcp`]).

use edist_proto::codec::{CodecError, Reader};
use std::time::Duration;
use thiserror::Error;

/// The hello protocol version this gateway speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest hello body accepted (a gateway name is at most [`crate::pki::MAX_NAME_LEN`] bytes).
pub const MAX_HELLO_BODY: usize = 512;
/// Time allowed from the start of a dial or an accept to an answered hello (TLS included).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// Errors of the hello codec.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloError {
    #[error("frame of {0} bytes exceeds {MAX_HELLO_BODY}")]
    TooLong(usize),
    #[error("truncated")]
    Truncated,
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    #[error("expected {expected:?}, got {got:?}")]
    UnexpectedKind { expected: HelloKind, got: HelloKind },
    #[error("name is not UTF-8")]
    NotUtf8,
    #[error("empty name")]
    EmptyName,
}

/// What a hello frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloKind {
    /// Sent by the dialer.
    Hello = 1,
    /// The acceptor's answer.
    HelloAck = 2,
}

/// A hello frame (see the module docs for the layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Hello or its answer.
    pub kind: HelloKind,
    /// The sender's hello protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The sender's gateway name; must equal its certificate identity.
    pub name: String,
}

impl Hello {
    /// The whole frame, length prefix included. Names longer than the body limit are the
    /// caller's bug; they are encoded anyway and refused by the receiver.
    pub fn encode(&self) -> Vec<u8> {
        let name = self.name.as_bytes();
        let body_len = 1 + 2 + 2 + name.len();
        let mut out = Vec::with_capacity(2 + body_len);
        out.extend_from_slice(&(body_len.min(u16::MAX as usize) as u16).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(name);
        out
    }

    /// Checks a body length read from the wire before anything is allocated for it.
    pub fn check_len(len: u16) -> Result<usize, HelloError> {
        let len = usize::from(len);
        if len > MAX_HELLO_BODY {
            return Err(HelloError::TooLong(len));
        }
        Ok(len)
    }

    /// Decodes a body (the bytes after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Hello, HelloError> {
        if body.len() > MAX_HELLO_BODY {
            return Err(HelloError::TooLong(body.len()));
        }
        let mut r = Reader::new(body);
        let kind = match r.u8()? {
            1 => HelloKind::Hello,
            2 => HelloKind::HelloAck,
            k => return Err(HelloError::UnknownKind(k)),
        };
        let version = r.u16()?;
        let name = r.bytes_u16(usize::from(u16::MAX))?;
        r.expect_end()?;
        let name = std::str::from_utf8(name).map_err(|_| HelloError::NotUtf8)?;
        if name.is_empty() {
            return Err(HelloError::EmptyName);
        }
        Ok(Hello { kind, version, name: name.to_owned() })
    }
}

impl From<CodecError> for HelloError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Trailing(n) => HelloError::Trailing(n),
            CodecError::NotUtf8 { .. } => HelloError::NotUtf8,
            CodecError::TooLong { len, .. } => HelloError::TooLong(len),
            _ => HelloError::Truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        for kind in [HelloKind::Hello, HelloKind::HelloAck] {
            let h = Hello { kind, version: PROTOCOL_VERSION, name: "gw-a.example".into() };
            let frame = h.encode();
            let len = Hello::check_len(u16::from_be_bytes([frame[0], frame[1]])).expect("len");
            assert_eq!(len, frame.len() - 2);
            assert_eq!(Hello::decode(&frame[2..]), Ok(h));
        }
    }

    #[test]
    fn hello_rejects_garbage() {
        let good = Hello { kind: HelloKind::Hello, version: 1, name: "a".into() }.encode();
        let body = &good[2..];
        for cut in 0..body.len() {
            assert_eq!(Hello::decode(&body[..cut]), Err(HelloError::Truncated), "cut {cut}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert_eq!(Hello::decode(&trailing), Err(HelloError::Trailing(1)));
        assert_eq!(Hello::decode(&[9, 0, 1, 0, 1, b'a']), Err(HelloError::UnknownKind(9)));
        assert_eq!(Hello::decode(&[1, 0, 1, 0, 0]), Err(HelloError::EmptyName));
        assert_eq!(Hello::decode(&[1, 0, 1, 0, 1, 0xff]), Err(HelloError::NotUtf8));
        // A name length far beyond the body is truncation, not an allocation.
        assert_eq!(Hello::decode(&[1, 0, 1, 0xff, 0xff, b'a']), Err(HelloError::Truncated));
        assert_eq!(Hello::check_len(u16::MAX), Err(HelloError::TooLong(65535)));
        assert_eq!(Hello::decode(&vec![1; MAX_HELLO_BODY + 1]), Err(HelloError::TooLong(MAX_HELLO_BODY + 1)));
    }
}
