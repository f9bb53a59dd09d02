//! u32 length framing of a connected channel (reference §5): `[u32 len][payload]`, len 0 = tick.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// A frame of a connected channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A keep-alive (length 0).
    Tick,
    /// One distribution packet, without its length prefix.
    Data(Bytes),
}

/// Framing errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
}

/// Splits a byte stream into frames, refusing any frame larger than `max_frame` as soon as its
/// length prefix is seen (before anything is buffered for it).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
}

/// The tick frame's bytes.
pub const TICK: [u8; 4] = [0; 4];

impl FrameDecoder {
    /// A decoder accepting frames up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { max_frame }
    }

    /// Takes the next complete frame from `buf`, or `None` if more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(hdr) = buf.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(hdr) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len: len as u64, max: self.max_frame });
        }
        if buf.len() < 4 + len {
            // Grow with the bytes that actually arrive, not with the claimed length.
            buf.reserve((4 + len - buf.len()).min(1 << 20));
            return Ok(None);
        }
        buf.advance(4);
        if len == 0 {
            return Ok(Some(Frame::Tick));
        }
        Ok(Some(Frame::Data(buf.split_to(len).freeze())))
    }
}

/// Appends a u32 length prefix for a packet of `len` bytes.
pub fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_data() {
        let d = FrameDecoder::new(100);
        let mut b = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 0, 0][..]);
        assert_eq!(d.decode(&mut b).unwrap(), Some(Frame::Tick));
        assert_eq!(d.decode(&mut b).unwrap(), Some(Frame::Data(Bytes::from_static(&[1, 2]))));
        assert_eq!(d.decode(&mut b).unwrap(), None);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn four_gigabyte_length_is_refused_without_buffering() {
        let d = FrameDecoder::new(1 << 20);
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert!(matches!(d.decode(&mut b), Err(FrameError::TooLarge { len: 0xffff_ffff, .. })));
        assert!(b.capacity() < 1024);
    }
}
