//! Gateway wire messages (`edist_gateway::wire::Msg`), fabric hellos and lane frames
//! (`edist_gateway::lane_frame`), as a peer gateway sends them.
//!
//! Checks: nothing panics; a stream of frames decodes message by message, each decoded
//! message encodes to bytes that decode to the same message; a hello that decodes encodes
//! back to the same bytes; lane frames decode one by one (packets within the size limit,
//! control frames re-encode to what was read).
#![no_main]

use bytes::BytesMut;
use edist_gateway::fabric::hello::Hello;
use edist_gateway::lane_frame::{self, Decoded, Frame};
use edist_gateway::wire::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = Msg::decode(&mut buf) {
        let mut again = BytesMut::from(&m.encode()[..]);
        assert_eq!(Msg::decode(&mut again), Ok(Some(m)));
        assert!(again.is_empty());
    }
    let mut lane = BytesMut::from(data);
    while let Ok(Decoded::Frame(f)) = lane_frame::decode(&mut lane, true) {
        match f {
            Frame::Packet(p) => assert!(p.len() >= 4 && p.len() - 4 <= lane_frame::MAX_PACKET),
            Frame::Ctl(c) => {
                let mut again = BytesMut::from(&c.encode()[..]);
                assert_eq!(lane_frame::decode(&mut again, true), Ok(Decoded::Frame(Frame::Ctl(c))));
            }
        }
    }
    if let Ok(h) = Hello::decode(data) {
        let enc = h.encode();
        assert_eq!(enc.get(2..), Some(data));
    }
});
