//! The codec kit every parser of peer bytes uses: a bounded [`Reader`] over a byte slice and a
//! [`U32Frames`] splitter of `[u32 length][body]` frames (with optional flag bits in the
//! length word) over a `BytesMut`.
//!
//! Every read checks the bytes left first and returns a typed [`CodecError`]; no length read
//! from the wire sizes an allocation before the bytes it announces have arrived. The ETF
//! reader ([`crate::etf::Reader`]), the handshake and EPMD codecs, and the gateway's own wire
//! formats are built on these two.

use bytes::{Buf, BytesMut};
use thiserror::Error;

/// A read past the end, an over-long field, or bytes that do not belong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("truncated at byte {offset}: {needed} more bytes needed")]
    Truncated { offset: usize, needed: usize },
    #[error("field of {len} bytes at byte {offset} exceeds the limit of {max}")]
    TooLong { offset: usize, len: usize, max: usize },
    #[error("field at byte {offset} is not UTF-8")]
    NotUtf8 { offset: usize },
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A bounded cursor over a byte slice; integers are big-endian.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Moves back (or forward) to `pos`, at most to the end.
    #[inline]
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// Bytes left.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// True when every byte was read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unread bytes (not consumed).
    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Takes every unread byte.
    #[inline]
    pub fn take_rest(&mut self) -> &'a [u8] {
        let r = self.rest();
        self.pos = self.buf.len();
        r
    }

    /// Takes the next `n` bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end.and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end))) {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(CodecError::Truncated { offset: self.pos, needed: n.saturating_sub(self.remaining()) }),
        }
    }

    /// Takes `N` bytes as an array.
    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }
    #[inline]
    pub fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    #[inline]
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Peeks at the next byte.
    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Runs `read`; if it fails, puts the cursor back where it was (a failed read takes
    /// nothing).
    fn atomic<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T, CodecError>) -> Result<T, CodecError> {
        let at = self.pos;
        let r = read(self);
        if r.is_err() {
            self.pos = at;
        }
        r
    }

    /// Bytes behind a u8 length.
    pub fn bytes_u8(&mut self) -> Result<&'a [u8], CodecError> {
        self.atomic(|r| {
            let n = r.u8()?;
            r.bytes(usize::from(n))
        })
    }

    /// Bytes behind a u16 length of at most `max`.
    pub fn bytes_u16(&mut self, max: usize) -> Result<&'a [u8], CodecError> {
        self.atomic(|r| {
            let at = r.pos;
            let n = usize::from(r.u16()?);
            if n > max {
                return Err(CodecError::TooLong { offset: at, len: n, max });
            }
            r.bytes(n)
        })
    }

    /// A UTF-8 string behind a u8 length.
    pub fn str_u8(&mut self) -> Result<&'a str, CodecError> {
        self.atomic(|r| {
            let at = r.pos;
            std::str::from_utf8(r.bytes_u8()?).map_err(|_| CodecError::NotUtf8 { offset: at })
        })
    }

    /// A UTF-8 string behind a u16 length of at most `max` bytes.
    pub fn str_u16(&mut self, max: usize) -> Result<&'a str, CodecError> {
        self.atomic(|r| {
            let at = r.pos;
            std::str::from_utf8(r.bytes_u16(max)?).map_err(|_| CodecError::NotUtf8 { offset: at })
        })
    }

    /// Checks that every byte was read.
    pub fn expect_end(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::Trailing(n)),
        }
    }
}

/// Appends `b` behind its u16 length, cut at `u16::MAX` bytes.
pub fn put_bytes_u16(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(b.get(..n).unwrap_or_default());
}

/// A frame announced longer than the limit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
}

/// Splits `[u32 length][body]` frames off a buffer. The top bits of the length word may be
/// flags ([`U32Frames::with_flags`]); the length is the rest. A length over the limit is refused
/// as soon as the prefix is seen, before anything is buffered for it.
#[derive(Debug, Clone, Copy)]
pub struct U32Frames {
    max: usize,
    flag_mask: u32,
}

/// What the front of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// At least this many more bytes are needed for the next frame.
    Need(usize),
    /// A whole frame: its flags and its body length (the frame is 4 bytes longer).
    Frame { flags: u32, len: usize },
}

/// The result of [`U32Frames::split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// A whole frame, taken off the buffer.
    Frame(RawFrame),
    /// At least this many more bytes are needed.
    Need(usize),
}

/// One frame taken off a buffer, prefix included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The flag bits of its length word (0 without a flag mask).
    pub flags: u32,
    frame: BytesMut,
}

impl RawFrame {
    /// The body, without the prefix.
    pub fn body(&self) -> &[u8] {
        self.frame.get(4..).unwrap_or_default()
    }
    /// The body, without the prefix.
    pub fn into_body(mut self) -> BytesMut {
        self.frame.advance(4.min(self.frame.len()));
        self.frame
    }
    /// The whole frame, prefix (flags included) and body.
    pub fn into_frame(self) -> BytesMut {
        self.frame
    }
}

impl U32Frames {
    /// Frames of bodies up to `max` bytes, without flags.
    pub const fn new(max: usize) -> Self {
        U32Frames { max, flag_mask: 0 }
    }

    /// The bits of `mask` in a length word are flags, not length.
    pub const fn with_flags(self, mask: u32) -> Self {
        U32Frames { flag_mask: mask, ..self }
    }

    /// The largest body accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Looks at the front of `buf` without taking anything.
    pub fn peek(&self, buf: &[u8]) -> Result<Peeked, FrameError> {
        let Some(hdr) = buf.first_chunk::<4>() else { return Ok(Peeked::Need(4 - buf.len())) };
        let raw = u32::from_be_bytes(*hdr);
        let flags = raw & self.flag_mask;
        let len = (raw & !self.flag_mask) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len: len as u64, max: self.max });
        }
        match (4 + len).checked_sub(buf.len()) {
            Some(need) if need > 0 => Ok(Peeked::Need(need)),
            _ => Ok(Peeked::Frame { flags, len }),
        }
    }

    /// Takes the next whole frame off `buf`, or says how many more bytes it needs (nothing is
    /// taken then).
    pub fn split(&self, buf: &mut BytesMut) -> Result<Split, FrameError> {
        Ok(match self.peek(buf)? {
            Peeked::Need(n) => Split::Need(n),
            Peeked::Frame { flags, len } => Split::Frame(RawFrame { flags, frame: buf.split_to(4 + len) }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_big_endian_and_refuses_short_input() {
        let mut r = Reader::new(&[1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 9]);
        assert_eq!((r.u8(), r.u16(), r.u32(), r.u64()), (Ok(1), Ok(2), Ok(3), Ok(4)));
        assert_eq!(r.position(), 15);
        assert_eq!(r.expect_end(), Err(CodecError::Trailing(1)));
        assert_eq!(r.u16(), Err(CodecError::Truncated { offset: 15, needed: 1 }));
        assert_eq!(r.rest(), &[9]);
        assert_eq!(r.take_rest(), &[9]);
        assert!(r.is_empty());
        assert_eq!(r.expect_end(), Ok(()));
        assert_eq!(r.bytes(usize::MAX), Err(CodecError::Truncated { offset: 16, needed: usize::MAX }));
        r.seek(1);
        assert_eq!(r.u16(), Ok(2));
    }

    #[test]
    fn length_prefixed_fields_are_bounded() {
        let mut r = Reader::new(&[0, 2, b'h', b'i', 2, 0xff, 0xfe, 0, 3, b'a']);
        assert_eq!(r.str_u16(2), Ok("hi"));
        assert_eq!(r.clone().str_u8(), Err(CodecError::NotUtf8 { offset: 4 }));
        assert_eq!(r.bytes_u8(), Ok(&[0xff, 0xfe][..]));
        assert_eq!(r.clone().str_u16(2), Err(CodecError::TooLong { offset: 7, len: 3, max: 2 }));
        assert_eq!(r.str_u16(3), Err(CodecError::Truncated { offset: 9, needed: 2 }));
        let mut out = Vec::new();
        put_bytes_u16(&mut out, b"abc");
        assert_eq!(Reader::new(&out).bytes_u16(3), Ok(&b"abc"[..]));
    }

    #[test]
    fn frames_split_with_and_without_flags() {
        let plain = U32Frames::new(8);
        let mut b = BytesMut::from(&[0, 0, 0, 2, 7, 8, 0, 0, 0][..]);
        let Split::Frame(f) = plain.split(&mut b).unwrap() else { panic!() };
        assert_eq!((f.flags, f.body()), (0, &[7, 8][..]));
        assert_eq!(f.clone().into_frame(), &[0, 0, 0, 2, 7, 8][..]);
        assert_eq!(f.into_body(), &[7, 8][..]);
        assert_eq!(plain.split(&mut b), Ok(Split::Need(1)));
        b.extend_from_slice(&[0xff]);
        assert_eq!(plain.split(&mut b), Err(FrameError::TooLarge { len: 255, max: 8 }));
        // Over the limit is refused on the prefix alone.
        assert_eq!(plain.peek(&[0xff, 0xff, 0xff, 0xff]), Err(FrameError::TooLarge { len: u32::MAX.into(), max: 8 }));
        let flagged = U32Frames::new(8).with_flags(0xc000_0000);
        assert_eq!(flagged.peek(&[0x40, 0, 0, 1, 5]), Ok(Peeked::Frame { flags: 0x4000_0000, len: 1 }));
        assert_eq!(flagged.peek(&[0x80, 0, 0, 3, 5]), Ok(Peeked::Need(2)));
        assert_eq!(flagged.peek(&[0x80]), Ok(Peeked::Need(3)));
    }

    proptest::proptest! {
        #[test]
        fn reader_never_panics_and_reads_what_is_there(data: Vec<u8>, ops: Vec<u8>) {
            let mut r = Reader::new(&data);
            for op in ops {
                let before = r.remaining();
                let ok = match op % 8 {
                    0 => r.u8().is_ok(),
                    1 => r.u16().is_ok(),
                    2 => r.u32().is_ok(),
                    3 => r.u64().is_ok(),
                    4 => r.bytes_u8().is_ok(),
                    5 => r.str_u16(usize::from(op)).is_ok(),
                    6 => r.bytes(usize::from(op)).is_ok(),
                    _ => r.expect_end().is_ok(),
                };
                proptest::prop_assert!(r.remaining() <= before);
                proptest::prop_assert!(ok || r.remaining() == before, "a failed read takes nothing");
                proptest::prop_assert_eq!(r.position() + r.remaining(), data.len());
            }
        }

        #[test]
        fn frames_come_back_as_they_were_framed(bodies: Vec<Vec<u8>>, cut: usize) {
            let mut wire = Vec::new();
            for b in &bodies {
                wire.extend_from_slice(&(b.len() as u32).to_be_bytes());
                wire.extend_from_slice(b);
            }
            let frames = U32Frames::new(usize::MAX);
            let cut = cut % (wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Ok(Split::Frame(f)) = frames.split(&mut buf) {
                got.push(f.into_body().to_vec());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Ok(Split::Frame(f)) = frames.split(&mut buf) {
                got.push(f.into_body().to_vec());
            }
            proptest::prop_assert_eq!(got, bodies);
            proptest::prop_assert!(buf.is_empty());
        }
    }
}
