//! Gateway wire messages (`edist_gateway::wire::Msg`) and fabric hellos, as a peer gateway
//! sends them.
//!
//! Checks: nothing panics; a stream of frames decodes message by message, each decoded
//! message encodes to bytes that decode to the same message; a hello that decodes encodes
//! back to the same bytes.
#![no_main]

use bytes::BytesMut;
use edist_gateway::fabric::quic::Hello;
use edist_gateway::wire::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(m)) = Msg::decode(&mut buf) {
        let mut again = BytesMut::from(&m.encode()[..]);
        assert_eq!(Msg::decode(&mut again), Ok(Some(m)));
        assert!(again.is_empty());
    }
    if let Ok(h) = Hello::decode(data) {
        let enc = h.encode();
        assert_eq!(enc.get(2..), Some(data));
    }
});
