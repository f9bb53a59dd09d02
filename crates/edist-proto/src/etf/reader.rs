//! The term tokenizer, on the codec kit's bounded cursor over untrusted bytes.
//!
//! Every read checks the remaining length first; every length field that announces a number of
//! elements is checked against the bytes left (each element needs at least one byte), so no
//! caller ever sizes an allocation from an untrusted number.

use super::{tag, DecodeError};
use crate::codec;
use std::borrow::Cow;

/// A bounded cursor over a byte slice ([`crate::codec::Reader`]) that reads terms.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    c: codec::Reader<'a>,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { c: codec::Reader::new(buf) }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.c.position()
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.c.remaining()
    }

    /// The unread bytes.
    pub fn rest(&self) -> &'a [u8] {
        self.c.rest()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        Ok(self.c.bytes(n)?)
    }

    /// Takes `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.c.array()?)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.c.u8()?)
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(self.c.u16()?)
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(self.c.u32()?)
    }
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.c.i32()?)
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(self.c.u64()?)
    }

    /// Peeks at the next byte.
    pub fn peek(&self) -> Option<u8> {
        self.c.peek()
    }

    /// Checks that `count` elements of at least `min_size` bytes each can still follow.
    pub fn check_count(&self, count: u64, min_size: u64) -> Result<(), DecodeError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() as u64 => Ok(()),
            _ => Err(DecodeError::LengthTooLarge { claimed: count, offset: self.c.position() }),
        }
    }

    /// Reads one token: a scalar term, or the header of a compound term whose elements follow.
    pub fn token(&mut self) -> Result<Token<'a>, DecodeError> {
        let at = self.c.position();
        let t = self.u8()?;
        Ok(match t {
            tag::SMALL_INTEGER => Token::Int(i64::from(self.u8()?)),
            tag::INTEGER => Token::Int(i64::from(self.i32()?)),
            tag::SMALL_BIG | tag::LARGE_BIG => {
                let n = if t == tag::SMALL_BIG { u32::from(self.u8()?) } else { self.u32()? };
                let sign = self.u8()?;
                if sign > 1 {
                    return Err(DecodeError::Malformed { what: "bignum sign", offset: at });
                }
                Token::Big { negative: sign == 1, digits: self.take(n as usize)? }
            }
            tag::NEW_FLOAT => {
                let f = f64::from_bits(self.u64()?);
                if !f.is_finite() {
                    return Err(DecodeError::BadFloat(at));
                }
                Token::Float(f)
            }
            tag::FLOAT => {
                let s = self.take(31)?;
                let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
                let f = std::str::from_utf8(s.get(..end).unwrap_or_default())
                    .ok()
                    .and_then(|s| s.trim().parse::<f64>().ok())
                    .filter(|f| f.is_finite())
                    .ok_or(DecodeError::BadFloat(at))?;
                Token::Float(f)
            }
            tag::ATOM_UTF8 | tag::SMALL_ATOM_UTF8 | tag::ATOM | tag::SMALL_ATOM | tag::ATOM_CACHE_REF => {
                self.c.seek(at);
                Token::Atom(self.atom()?)
            }
            tag::NEW_PID | tag::PID => {
                self.c.seek(at);
                let (node, id, serial, creation) = self.pid()?;
                Token::Pid { node, id, serial, creation }
            }
            tag::NEW_PORT | tag::V4_PORT | tag::PORT => {
                let node = self.atom()?;
                let id = if t == tag::V4_PORT { self.u64()? } else { u64::from(self.u32()?) };
                let creation = if t == tag::PORT { u32::from(self.u8()?) } else { self.u32()? };
                Token::Port { node, id, creation }
            }
            tag::NEWER_REFERENCE | tag::NEW_REFERENCE => {
                let len = self.u16()?;
                let node = self.atom()?;
                let creation = if t == tag::NEW_REFERENCE { u32::from(self.u8()?) } else { self.u32()? };
                if !(1..=5).contains(&len) {
                    return Err(DecodeError::Malformed { what: "reference", offset: at });
                }
                Token::Ref { node, creation, ids: self.take(usize::from(len) * 4)? }
            }
            tag::REFERENCE => {
                let node = self.atom()?;
                let id = self.take(4)?;
                let creation = u32::from(self.u8()?);
                Token::Ref { node, creation, ids: id }
            }
            tag::SMALL_TUPLE => {
                let n = u32::from(self.u8()?);
                Token::Tuple(self.count(n, 1)?)
            }
            tag::LARGE_TUPLE => {
                let n = self.u32()?;
                Token::Tuple(self.count(n, 1)?)
            }
            tag::MAP => {
                let n = self.u32()?;
                Token::Map(self.count(n, 2)?)
            }
            tag::NIL => Token::Nil,
            tag::STRING => {
                let n = self.u16()?;
                Token::String(self.take(usize::from(n))?)
            }
            tag::LIST => {
                let n = self.u32()?;
                // n elements plus the tail.
                self.check_count(u64::from(n) + 1, 1)?;
                Token::List(n)
            }
            tag::BINARY => {
                let n = self.u32()?;
                Token::Binary(self.take(n as usize)?)
            }
            tag::BIT_BINARY => {
                let n = self.u32()?;
                let bits = self.u8()?;
                if !(1..=8).contains(&bits) || n == 0 {
                    return Err(DecodeError::Malformed { what: "bit binary", offset: at });
                }
                Token::BitBinary { data: self.take(n as usize)?, bits }
            }
            tag::EXPORT => {
                let module = self.atom()?;
                let function = self.atom()?;
                if self.u8()? != tag::SMALL_INTEGER {
                    return Err(DecodeError::Malformed { what: "export arity", offset: at });
                }
                Token::Export { module, function, arity: self.u8()? }
            }
            tag::NEW_FUN => {
                let size = self.u32()?;
                if (size as usize) < 4 || size as usize - 4 > self.remaining() {
                    return Err(DecodeError::LengthTooLarge { claimed: u64::from(size), offset: at });
                }
                let arity = self.u8()?;
                let uniq = self.array::<16>()?;
                let index = self.u32()?;
                let num_free = self.u32()?;
                let module = self.atom()?;
                let old_index = self.small_int()?;
                let old_uniq = self.small_int()?;
                let (node, id, serial, creation) = self.pid()?;
                self.check_count(u64::from(num_free), 1)?;
                Token::Fun {
                    arity,
                    uniq,
                    index,
                    module,
                    old_index,
                    old_uniq,
                    pid: (node, id, serial, creation),
                    num_free,
                }
            }
            tag::COMPRESSED => {
                let size = self.u32()?;
                Token::Compressed { size, data: self.c.take_rest() }
            }
            other => return Err(DecodeError::UnknownTag { tag: other, offset: at }),
        })
    }

    /// Checks that `n` elements of `per` terms each (one byte at least per term) can follow.
    fn count(&self, n: u32, per: u64) -> Result<u32, DecodeError> {
        self.check_count(u64::from(n) * per, 1)?;
        Ok(n)
    }

    /// An INTEGER_EXT or SMALL_INTEGER_EXT (the only encodings fun fields use).
    fn small_int(&mut self) -> Result<i64, DecodeError> {
        let at = self.c.position();
        match self.u8()? {
            tag::SMALL_INTEGER => Ok(i64::from(self.u8()?)),
            tag::INTEGER => Ok(i64::from(self.i32()?)),
            _ => Err(DecodeError::Malformed { what: "fun index", offset: at }),
        }
    }

    fn pid(&mut self) -> Result<(AtomText<'a>, u32, u32, u32), DecodeError> {
        let at = self.c.position();
        let t = self.u8()?;
        if t != tag::NEW_PID && t != tag::PID {
            return Err(DecodeError::Malformed { what: "pid", offset: at });
        }
        let node = self.atom()?;
        let id = self.u32()?;
        let serial = self.u32()?;
        let creation = if t == tag::PID { u32::from(self.u8()?) } else { self.u32()? };
        Ok((node, id, serial, creation))
    }

    /// Reads an atom in any of its encodings (or an atom-cache reference).
    pub fn atom(&mut self) -> Result<AtomText<'a>, DecodeError> {
        let at = self.c.position();
        let t = self.u8()?;
        let (len, latin1) = match t {
            tag::ATOM_UTF8 => (usize::from(self.u16()?), false),
            tag::SMALL_ATOM_UTF8 => (usize::from(self.u8()?), false),
            tag::ATOM => (usize::from(self.u16()?), true),
            tag::SMALL_ATOM => (usize::from(self.u8()?), true),
            tag::ATOM_CACHE_REF => return Ok(AtomText::CacheRef(self.u8()?)),
            other => return Err(DecodeError::UnknownTag { tag: other, offset: at }),
        };
        let bytes = self.take(len)?;
        let text = if latin1 {
            if len > 255 {
                return Err(DecodeError::BadAtom(at));
            }
            if bytes.is_ascii() {
                Cow::Borrowed(std::str::from_utf8(bytes).map_err(|_| DecodeError::BadAtom(at))?)
            } else {
                Cow::Owned(bytes.iter().map(|b| char::from(*b)).collect())
            }
        } else {
            let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadAtom(at))?;
            if s.chars().count() > 255 {
                return Err(DecodeError::BadAtom(at));
            }
            Cow::Borrowed(s)
        };
        Ok(AtomText::Text(text))
    }
}

/// An atom as found in the input: inline text or a reference into the dist header's atom list.
#[derive(Debug, Clone, PartialEq)]
pub enum AtomText<'a> {
    Text(Cow<'a, str>),
    CacheRef(u8),
}

/// One token of a term. Compound tokens announce how many terms follow as their elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Token<'a> {
    Atom(AtomText<'a>),
    Int(i64),
    /// A bignum; `digits` are little-endian base-256.
    Big {
        negative: bool,
        digits: &'a [u8],
    },
    Float(f64),
    Pid {
        node: AtomText<'a>,
        id: u32,
        serial: u32,
        creation: u32,
    },
    Port {
        node: AtomText<'a>,
        id: u64,
        creation: u32,
    },
    /// A reference; `ids` holds the id words as big-endian bytes (4 per word).
    Ref {
        node: AtomText<'a>,
        creation: u32,
        ids: &'a [u8],
    },
    /// A tuple of this arity; its elements follow.
    Tuple(u32),
    /// A map of this arity; key, value, key, value... follow.
    Map(u32),
    Nil,
    String(&'a [u8]),
    /// A list of this many elements; the elements, then the tail, follow.
    List(u32),
    Binary(&'a [u8]),
    BitBinary {
        data: &'a [u8],
        bits: u8,
    },
    Export {
        module: AtomText<'a>,
        function: AtomText<'a>,
        arity: u8,
    },
    /// A fun; `num_free` free-variable terms follow.
    Fun {
        arity: u8,
        uniq: [u8; 16],
        index: u32,
        module: AtomText<'a>,
        old_index: i64,
        old_uniq: i64,
        pid: (AtomText<'a>, u32, u32, u32),
        num_free: u32,
    },
    /// A zlib-compressed term inflating to `size` bytes; `data` is the rest of the input.
    Compressed {
        size: u32,
        data: &'a [u8],
    },
}

impl Token<'_> {
    /// How many terms follow this token as its children.
    pub fn children(&self) -> u64 {
        match self {
            Token::Tuple(n) => u64::from(*n),
            Token::Map(n) => 2 * u64::from(*n),
            Token::List(n) => u64::from(*n) + 1,
            Token::Fun { num_free, .. } => u64::from(*num_free),
            _ => 0,
        }
    }
}
