//! EPMD codecs: every decoder in `epmd.rs` over the same input.
//!
//! Checks: nothing panics; consumed lengths stay within the input; whatever decodes encodes
//! again, and the encoding decodes to the same value (byte-identical for the fixed-layout
//! responses); a server reading several requests from one buffer keeps making progress.
#![no_main]

use edist_proto::epmd::{self, Alive2Resp, NamesResp, Port2Resp, Request};
use libfuzzer_sys::fuzz_target;

fn request_round_trip(req: &Request) {
    let bytes = req.encode().expect("a decoded request encodes");
    assert_eq!(Request::decode(&bytes), Ok(Some((req.clone(), bytes.len()))));
    assert_eq!(Request::decode_body(bytes.get(2..).unwrap_or_default()).as_ref(), Ok(req));
}

fuzz_target!(|data: &[u8]| {
    // Server side: a stream of requests.
    let mut rest = data;
    while let Ok(Some((req, n))) = Request::decode(rest) {
        assert!(n > 2 && n <= rest.len());
        request_round_trip(&req);
        rest = &rest[n..];
    }
    if let Ok(req) = Request::decode_body(data) {
        request_round_trip(&req);
    }

    // Client side.
    if let Ok(Some((resp, n))) = Alive2Resp::decode(data) {
        let original = &data[..n];
        let again = match data.first() {
            Some(&epmd::ALIVE2_RESP) => resp.encode_v5().expect("16-bit creation"),
            _ => resp.encode(),
        };
        assert_eq!(again, original);
    }
    if let Ok(Some((resp, n))) = Port2Resp::decode(data) {
        assert!(n <= data.len());
        assert_eq!(resp.encode().expect("a decoded PORT2_RESP encodes"), &data[..n]);
    }
    if let Ok(names) = NamesResp::decode_complete(data) {
        let bytes = names.encode().expect("a decoded NAMES_RESP encodes");
        assert_eq!(NamesResp::decode_complete(&bytes), Ok(names));
    }
});
