//! A connected distribution channel: the input's first byte picks the negotiated flags, the
//! rest is the byte stream the peer sends after the handshake.
//!
//! Pipeline (state kept across packets, as on one connection): `FrameDecoder` (1 MiB) →
//! `header::parse_packet` with one `AtomCache` → `fragment::Reassembler` (small bounds) →
//! `control::decode_message`. Checks: nothing panics; whenever a message decodes, its control
//! and payload also validate with `etf::walk` (the gateway's path), and re-encoding it — whole
//! and split into tiny fragments by `frame_message` — decodes to the same message.
#![no_main]

use bytes::BytesMut;
use edist_fuzz::DIST_FLAG_SETS;
use edist_proto::dist::control::{decode_message, encode_message, Message};
use edist_proto::dist::fragment::{frame_message, Reassembled, Reassembler};
use edist_proto::dist::frame::{Frame, FrameDecoder};
use edist_proto::dist::header::{parse_packet, AtomCache, Packet};
use edist_proto::dist::DFlags;
use edist_proto::etf::{self, Atom, Limits, NoopVisitor, Reader};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 1 << 20;

/// Decodes one message body and runs the checks on what decodes.
fn message(flags: DFlags, atom_refs: &[Atom], body: &[u8], versioned: bool, limits: &Limits) {
    let Ok(m) = decode_message(body, atom_refs, versioned, limits) else { return };
    walk_agrees(body, atom_refs.len(), versioned, m.payload.is_some(), limits);
    let (ctrl, payload) = encode_message(&m.control, m.payload.as_ref());
    let whole = [ctrl.as_slice(), payload.as_slice()].concat();
    match decode_message(&whole, &[], false, limits) {
        Ok(back) => assert_eq!(back, m, "control round trip changed the message"),
        Err(e) => panic!("re-encoded message does not decode: {e}: {m:?}"),
    }
    reframed(flags, &ctrl, &payload, &m, limits);
}

/// `etf::walk` accepts the control term (and payload) that `decode_message` accepted.
fn walk_agrees(body: &[u8], atom_refs: usize, versioned: bool, payload: bool, limits: &Limits) {
    let mut r = Reader::new(body);
    for _ in 0..1 + usize::from(payload) {
        if versioned {
            assert_eq!(r.u8().ok(), Some(etf::tag::VERSION));
        }
        if let Err(e) = etf::walk(&mut r, limits, atom_refs, &mut NoopVisitor) {
            panic!("decode_message accepted a term that walk rejects: {e}");
        }
    }
    assert_eq!(r.remaining(), 0, "walk and decode_message consumed different lengths");
}

/// Frames the message as a sender would (in tiny fragments when FRAGMENTS was negotiated) and
/// reads it back.
fn reframed(flags: DFlags, ctrl: &[u8], payload: &[u8], m: &Message, limits: &Limits) {
    let mut packets = Vec::new();
    let fragment_size = 16.max((ctrl.len() + payload.len()) / 64);
    frame_message(&mut packets, flags, 7, ctrl, payload, fragment_size);
    let mut cache = AtomCache::default();
    let mut reasm = Reassembler::new(1, usize::MAX, usize::MAX);
    let mut got = Vec::new();
    for p in &packets {
        let len = p.get(..4).map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        let data = p.get(4..).unwrap_or_default();
        assert_eq!(len, Some(data.len()), "bad length prefix from frame_message");
        let done = match parse_packet(data, flags, &mut cache) {
            Ok(Packet::Message { atom_refs, body, versioned }) => {
                Some(decode_message(body, &atom_refs, versioned, limits))
            }
            Ok(Packet::FragmentStart { seq, fragments, atom_refs, body }) => {
                reasm.start(seq, fragments, atom_refs, body).expect("own first fragment").map(reassembled(limits))
            }
            Ok(Packet::FragmentCont { seq, fragment, body }) => {
                reasm.cont(seq, fragment, body).expect("own continuation fragment").map(reassembled(limits))
            }
            Err(e) => panic!("own packet does not parse: {e}"),
        };
        got.extend(done);
    }
    assert_eq!(got.len(), 1, "frame_message output did not give exactly one message");
    assert_eq!(got.pop().and_then(Result::ok).as_ref(), Some(m), "reframed message differs");
    assert_eq!((reasm.open(), reasm.buffered()), (0, 0));
}

fn reassembled(limits: &Limits) -> impl Fn(Reassembled) -> Result<Message, edist_proto::dist::ControlError> + '_ {
    move |r| decode_message(&r.body, &r.atom_refs, false, limits)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else { return };
    let flags = DFlags(DIST_FLAG_SETS[usize::from(sel) % DIST_FLAG_SETS.len()]);
    // A small depth limit now and then, so the limit itself is exercised.
    let limits = if sel & 0x80 != 0 { Limits { max_depth: 8, max_inflated: 1 << 16 } } else { Limits::default() };
    let frames = FrameDecoder::new(MAX_FRAME);
    let mut cache = AtomCache::default();
    let mut reasm = Reassembler::new(4, 64 << 10, 96 << 10);
    // Feed the stream in two parts, as two reads from the socket.
    let split = stream.len() / 2;
    let mut buf = BytesMut::new();
    for part in [&stream[..split], &stream[split..]] {
        buf.extend_from_slice(part);
        loop {
            let frame = match frames.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let Frame::Data(packet) = frame else { continue };
            assert!(!packet.is_empty() && packet.len() <= MAX_FRAME);
            match parse_packet(&packet, flags, &mut cache) {
                Ok(Packet::Message { atom_refs, body, versioned }) => {
                    message(flags, &atom_refs, body, versioned, &limits)
                }
                Ok(Packet::FragmentStart { seq, fragments, atom_refs, body }) => {
                    if let Ok(Some(r)) = reasm.start(seq, fragments, atom_refs, body) {
                        message(flags, &r.atom_refs, &r.body, false, &limits);
                    }
                }
                Ok(Packet::FragmentCont { seq, fragment, body }) => {
                    if let Ok(Some(r)) = reasm.cont(seq, fragment, body) {
                        message(flags, &r.atom_refs, &r.body, false, &limits);
                    }
                }
                Err(_) => {}
            }
            assert!(reasm.open() <= 4 && reasm.buffered() <= 96 << 10);
        }
    }
});
