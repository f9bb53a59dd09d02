//! Frames on the streams that carry a relayed connection between two gateways (sans IO).
//!
//! Every frame is `[u32 length | flags][body]`. Without flags the body is one distribution
//! packet exactly as the node wrote it (so the frame *is* the packet, length prefix included).
//! [`COMPRESSED`]: the body is that packet lz4-compressed. [`CONTROL`]: the body is a
//! [`LaneCtl`] between the two gateways, never seen by a node. Packets are far below 1 GiB,
//! so the two top bits are free.
// Under the protocol core's lints: this code reads what hostile peers send.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

use bytes::BytesMut;
use edist_proto::codec::{CodecError, Reader, Split, U32Frames};

/// Marks an lz4-compressed packet. The receiver always understands it; only the sender's
/// config decides to compress.
pub const COMPRESSED: u32 = 1 << 31;

/// Marks a gateway-to-gateway control frame ([`LaneCtl`]).
pub const CONTROL: u32 = 1 << 30;

/// Largest packet relayed (OTP fragments at 64 KiB; a peer that does not fragment may send
/// more).
pub const MAX_PACKET: usize = 256 << 20;

/// What one gateway tells the other about the lanes of a relayed connection (the ordering rule:
/// `edist_proto::dist::lane::Router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneCtl {
    /// On a lane: deliver nothing more of this lane before `count` frames of lane `lane` were
    /// delivered to the node.
    After { lane: u8, count: u64 },
    /// From the receiving side: it delivered `count` frames, `bytes` bytes as they crossed the
    /// link, of the sender's lane `lane`.
    Delivered { lane: u8, count: u64, bytes: u64 },
    /// The sender's node has been silent for longer than either node's `net_ticktime` allows
    /// (it is hung, overloaded, or ticks too slowly for the far node): stop ticking towards the
    /// far node, so that it decides for itself, with its own `net_ticktime`, as over one OTP
    /// connection.
    Silent,
    /// The sender's node speaks (again, after [`LaneCtl::Silent`]); its `net_ticktime` is
    /// `ticktime_ms` (0: not known). Sent when a relay starts and whenever that ticktime
    /// changes, so each side judges its node's silence by the stricter of the two ticktimes.
    /// `ticks`: the sender understands [`LaneCtl::Tick`] (a gateway that predates it reads
    /// the frame as a plain "alive", and one that predates the ticktime too); `stalls`: it
    /// understands [`LaneCtl::Stalled`].
    Alive { ticktime_ms: u64, ticks: bool, stalls: bool },
    /// The sender's node ticked: tick towards the far node. Sent only to a gateway that said
    /// `ticks` in its [`LaneCtl::Alive`]; such a gateway then ticks its node only when told,
    /// so the far node's tick timer sees the sender's silences as over one OTP connection.
    Tick,
    /// The sender's node stopped reading its socket (`true`: it took next to nothing of what
    /// waited for it for a while, `session::stall`) or reads again (`false`). While it is
    /// stopped the receiver stops reading from its own node, whose distribution port then gets
    /// busy as over one OTP connection: nothing would reach the stopped node anyway. Sent only
    /// to a gateway that said `stalls` in its [`LaneCtl::Alive`].
    Stalled(bool),
}

const AFTER: u8 = 1;
const DELIVERED: u8 = 2;
const SILENT: u8 = 3;
const ALIVE: u8 = 4;
const TICK: u8 = 5;
const STALLED: u8 = 6;

impl LaneCtl {
    /// The frame, length prefix and flag included.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, lane, count, bytes) = match *self {
            LaneCtl::After { lane, count } => (AFTER, lane, count, 0),
            LaneCtl::Delivered { lane, count, bytes } => (DELIVERED, lane, count, bytes),
            LaneCtl::Silent => (SILENT, 0, 0, 0),
            LaneCtl::Alive { ticktime_ms, ticks, stalls } => {
                (ALIVE, u8::from(ticks) | u8::from(stalls) << 1, ticktime_ms, 0)
            }
            LaneCtl::Tick => (TICK, 0, 0, 0),
            LaneCtl::Stalled(stalled) => (STALLED, u8::from(stalled), 0, 0),
        };
        let mut b = Vec::with_capacity(22);
        b.extend_from_slice(&(18 | CONTROL).to_be_bytes());
        b.push(kind);
        b.push(lane);
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&bytes.to_be_bytes());
        b
    }

    fn decode(body: &[u8]) -> Result<LaneCtl, FrameError> {
        let mut r = Reader::new(body);
        let bad = |_: CodecError| FrameError::Control;
        let (kind, lane) = (r.u8().map_err(bad)?, r.u8().map_err(bad)?);
        let (count, bytes) = (r.u64().map_err(bad)?, r.u64().map_err(bad)?);
        r.expect_end().map_err(bad)?;
        match kind {
            AFTER => Ok(LaneCtl::After { lane, count }),
            DELIVERED => Ok(LaneCtl::Delivered { lane, count, bytes }),
            SILENT => Ok(LaneCtl::Silent),
            ALIVE => Ok(LaneCtl::Alive { ticktime_ms: count, ticks: lane & 1 == 1, stalls: lane & 2 == 2 }),
            TICK => Ok(LaneCtl::Tick),
            STALLED => Ok(LaneCtl::Stalled(lane & 1 == 1)),
            _ => Err(FrameError::Control),
        }
    }
}

/// One frame read from a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A distribution packet with its u32 length prefix (inflated if it came compressed).
    Packet(Vec<u8>),
    /// A control frame.
    Ctl(LaneCtl),
}

/// A stream broke the frame format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("packet over the relay limit")]
    TooLarge,
    #[error("short compressed packet")]
    ShortCompressed,
    #[error("compressed packet inflates over the relay limit")]
    Bomb,
    #[error("corrupt compressed packet: {0}")]
    Corrupt(String),
    #[error("malformed lane control frame")]
    Control,
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// The result of looking at a buffer for the next frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame, taken off the buffer.
    Frame(Frame),
    /// At least this many more bytes are needed.
    Need(usize),
}

/// Takes the next frame off `buf`. Flags are honoured only on streams from a gateway
/// (`fabric`); a node's stream carries plain packets.
pub fn decode(buf: &mut BytesMut, fabric: bool) -> Result<Decoded, FrameError> {
    let frames = if fabric { FROM_GATEWAY } else { FROM_NODE };
    let frame = match frames.split(buf) {
        Ok(Split::Frame(f)) => f,
        Ok(Split::Need(n)) => return Ok(Decoded::Need(n)),
        Err(_) => return Err(FrameError::TooLarge),
    };
    Ok(Decoded::Frame(match frame.flags {
        0 => Frame::Packet(frame.into_frame().to_vec()),
        COMPRESSED => Frame::Packet(decompress(frame.body())?),
        CONTROL => Frame::Ctl(LaneCtl::decode(frame.body())?),
        _ => return Err(FrameError::Control),
    }))
}

/// A node's stream: plain packets.
const FROM_NODE: U32Frames = U32Frames::new(MAX_PACKET);
/// A gateway's stream: the two top bits are flags.
const FROM_GATEWAY: U32Frames = U32Frames::new(MAX_PACKET).with_flags(COMPRESSED | CONTROL);

/// The frame of one packet (length prefix included): compressed when that pays.
pub fn maybe_compress(packet: Vec<u8>, above: Option<usize>) -> Vec<u8> {
    let Some(payload) = packet.get(4..) else { return packet };
    match above {
        Some(t) if payload.len() > t => {
            let c = lz4_flex::compress_prepend_size(payload);
            if c.len() + 16 >= payload.len() {
                return packet;
            }
            let mut out = Vec::with_capacity(4 + c.len());
            out.extend_from_slice(&(c.len() as u32 | COMPRESSED).to_be_bytes());
            out.extend_from_slice(&c);
            out
        }
        _ => packet,
    }
}

/// Inflates a compressed frame's body into a plain packet, refusing sizes over the limit.
fn decompress(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    // lz4_flex's size prefix is little-endian.
    let size = Reader::new(body).array().map(u32::from_le_bytes).map_err(|_| FrameError::ShortCompressed)?;
    if size as usize > MAX_PACKET {
        return Err(FrameError::Bomb);
    }
    let plain = lz4_flex::decompress_size_prepended(body).map_err(|e| FrameError::Corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(4 + plain.len());
    out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    out.extend_from_slice(&plain);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8], fabric: bool) -> Result<Decoded, FrameError> {
        decode(&mut BytesMut::from(bytes), fabric)
    }

    #[test]
    fn compression_round_trips_and_refuses_bombs() {
        let mut packet = vec![0, 0, 0, 0];
        packet.extend(std::iter::repeat_n(7u8, 100_000));
        let len = (packet.len() - 4) as u32;
        packet[..4].copy_from_slice(&len.to_be_bytes());
        let framed = maybe_compress(packet.clone(), Some(1024));
        assert!(framed.len() < 2000);
        assert_eq!(one(&framed, true), Ok(Decoded::Frame(Frame::Packet(packet.clone()))));
        // Incompressible or small packets go as they are.
        assert_eq!(maybe_compress(packet.clone(), None), packet);
        assert_eq!(maybe_compress(vec![0, 0, 0, 1, 9], Some(0)), vec![0, 0, 0, 1, 9]);
        // A size prefix claiming 4 GiB is refused before inflating.
        assert_eq!(decompress(&[0xff, 0xff, 0xff, 0xff, 0, 0]), Err(FrameError::Bomb));
        assert_eq!(decompress(&[1, 0]), Err(FrameError::ShortCompressed));
    }

    #[test]
    fn control_frames_round_trip_and_only_from_gateways() {
        for c in [
            LaneCtl::After { lane: 0, count: 7 },
            LaneCtl::Delivered { lane: 255, count: u64::MAX, bytes: 7 },
            LaneCtl::Silent,
            LaneCtl::Alive { ticktime_ms: 0, ticks: false, stalls: false },
            LaneCtl::Alive { ticktime_ms: 60_000, ticks: true, stalls: false },
            LaneCtl::Alive { ticktime_ms: 60_000, ticks: false, stalls: true },
            LaneCtl::Tick,
            LaneCtl::Stalled(true),
            LaneCtl::Stalled(false),
        ] {
            let mut buf = BytesMut::from(&c.encode()[..]);
            buf.extend_from_slice(&[0, 0, 0, 0]);
            assert_eq!(decode(&mut buf, true), Ok(Decoded::Frame(Frame::Ctl(c))));
            assert_eq!(decode(&mut buf, true), Ok(Decoded::Frame(Frame::Packet(vec![0; 4]))), "a tick follows");
            assert!(buf.is_empty());
        }
        // From a node, the flag bits are a length, and that length is over the limit.
        assert_eq!(one(&LaneCtl::After { lane: 1, count: 1 }.encode(), false), Err(FrameError::TooLarge));
        // Malformed control frames and both flags at once are errors.
        assert_eq!(one(&[0x40, 0, 0, 2, AFTER, 1], true), Err(FrameError::Control));
        assert_eq!(one(&[&[0x40, 0, 0, 18, 9, 1][..], &[0; 16]].concat(), true), Err(FrameError::Control));
        assert_eq!(one(&[0xc0, 0, 0, 0], true), Err(FrameError::Control));
    }

    #[test]
    fn partial_frames_ask_for_what_is_missing() {
        assert_eq!(one(&[0, 0], true), Ok(Decoded::Need(2)));
        assert_eq!(one(&[0, 0, 0, 10, 1, 2], true), Ok(Decoded::Need(8)));
        assert_eq!(one(&[0x10, 0, 0, 1], true), Err(FrameError::TooLarge));
    }
}
