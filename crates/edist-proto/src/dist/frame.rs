//! u32 length framing of a connected channel (reference §5): `[u32 len][payload]`, len 0 = tick.

use crate::codec::{Split, U32Frames};
use bytes::{Bytes, BytesMut};

/// A frame of a connected channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A keep-alive (length 0).
    Tick,
    /// One distribution packet, without its length prefix.
    Data(Bytes),
}

pub use crate::codec::FrameError;

/// Splits a byte stream into frames, refusing any frame larger than `max_frame` as soon as its
/// length prefix is seen (before anything is buffered for it).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    frames: U32Frames,
}

/// The tick frame's bytes.
pub const TICK: [u8; 4] = [0; 4];

impl FrameDecoder {
    /// A decoder accepting frames up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder { frames: U32Frames::new(max_frame) }
    }

    /// Takes the next complete frame from `buf`, or `None` if more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.frames.split(buf)? {
            Split::Need(n) => {
                if buf.len() >= 4 {
                    // Grow with the bytes that actually arrive, not with the claimed length.
                    buf.reserve(n.min(1 << 20));
                }
                Ok(None)
            }
            Split::Frame(f) if f.body().is_empty() => Ok(Some(Frame::Tick)),
            Split::Frame(f) => Ok(Some(Frame::Data(f.into_body().freeze()))),
        }
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
