//! Application close codes of links, the same on every transport.
//!
//! Codes below 0x100 are the fabric's (a link refused in its handshake, an idle link); users of
//! a link (the gateway) pick theirs from 0x100 up (`CLOSE_SHUTDOWN`, `CLOSE_DUPLICATE` in
//! [`crate::gateway`]), so a peer can tell a handshake refusal from the rest. A refused peer
//! sees the code as [`FabricError::Refused`].

use super::error::FabricError;

/// Application close code: orderly close.
pub const CLOSE_NORMAL: u32 = 0;
/// Application close code: the hello was malformed or not a hello.
pub const CLOSE_BAD_HELLO: u32 = 1;
/// Application close code: the hello's name differs from the certificate identity.
pub const CLOSE_NAME_MISMATCH: u32 = 2;
/// Application close code: unsupported hello protocol version.
pub const CLOSE_VERSION: u32 = 3;
/// Application close code: no hello (or no answer) within [`super::hello::HELLO_TIMEOUT`].
pub const CLOSE_HELLO_TIMEOUT: u32 = 4;
/// Application close code: the peer's certificate carries no usable identity.
pub const CLOSE_NO_IDENTITY: u32 = 5;
/// Application close code: the peer's certificate is on this gateway's revocation list.
pub const CLOSE_REVOKED: u32 = 6;
/// Application close code: the link carried nothing for a while (membership's lazy links).
pub const CLOSE_IDLE: u32 = 7;

/// The application close code (`CLOSE_*`) that refuses a link for `e`.
pub fn refusal_code(e: &FabricError) -> u32 {
    match e {
        FabricError::BadHello(_) => CLOSE_BAD_HELLO,
        FabricError::NameMismatch { .. } => CLOSE_NAME_MISMATCH,
        FabricError::Version(_) => CLOSE_VERSION,
        FabricError::HelloTimeout(_) => CLOSE_HELLO_TIMEOUT,
        FabricError::NoPeerIdentity => CLOSE_NO_IDENTITY,
        _ => CLOSE_NORMAL,
    }
}
