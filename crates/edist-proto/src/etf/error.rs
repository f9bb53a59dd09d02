use thiserror::Error;

/// Why a term could not be decoded. Every variant is a property of the input, never a bug.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a term.
    #[error("input ends {needed} bytes short at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    /// A tag byte this decoder does not know (or that is not allowed here).
    #[error("unknown or unsupported tag {tag} at offset {offset}")]
    UnknownTag { tag: u8, offset: usize },
    /// The version byte 131 was expected.
    #[error("expected version byte 131, got {0}")]
    BadVersion(u8),
    /// Nesting went deeper than [`Limits::max_depth`](super::Limits).
    #[error("term nested deeper than {0}")]
    TooDeep(u32),
    /// A length field claims more elements than the remaining bytes could hold.
    #[error("length {claimed} at offset {offset} exceeds the remaining input")]
    LengthTooLarge { claimed: u64, offset: usize },
    /// An atom is not valid Latin-1/UTF-8 or is longer than 255 characters.
    #[error("invalid atom at offset {0}")]
    BadAtom(usize),
    /// A float is NaN/infinite or a FLOAT_EXT string does not parse.
    #[error("invalid float at offset {0}")]
    BadFloat(usize),
    /// A reference has an illegal number of id words, or a bit binary an illegal bit count.
    #[error("malformed {what} at offset {offset}")]
    Malformed { what: &'static str, offset: usize },
    /// ATOM_CACHE_REF refers to an index the dist header did not define.
    #[error("atom cache reference {0} is not defined by the header")]
    BadAtomCacheRef(u8),
    /// A compressed term claims to inflate beyond [`Limits::max_inflated`](super::Limits).
    #[error("compressed term inflates to {0} bytes, over the limit")]
    InflateTooLarge(u64),
    /// zlib data is corrupt or does not inflate to exactly the announced size.
    #[error("corrupt compressed term")]
    BadCompression,
    /// A map has the same key twice (under `=:=`, as OTP compares them); OTP refuses the term.
    #[error("map with a repeated key, at offset {0}")]
    DuplicateMapKey(usize),
    /// Bytes remain after the term where none were expected.
    #[error("{0} trailing bytes after the term")]
    TrailingBytes(usize),
}

impl From<crate::codec::CodecError> for DecodeError {
    fn from(e: crate::codec::CodecError) -> Self {
        use crate::codec::CodecError;
        match e {
            CodecError::Truncated { offset, needed } => DecodeError::Truncated { offset, needed },
            CodecError::TooLong { offset, len, .. } => DecodeError::LengthTooLarge { claimed: len as u64, offset },
            CodecError::NotUtf8 { offset } => DecodeError::BadAtom(offset),
            CodecError::Trailing(n) => DecodeError::TrailingBytes(n),
        }
    }
}
