//! ETF decoding: `decode_versioned`, `skip` and `walk` over arbitrary bytes.
//!
//! Checks: nothing panics; the validating walker and the building decoder accept exactly the
//! same inputs (under the default limits and under a tiny depth limit, where the limit is
//! reached often) and consume the same bytes; every decoded term survives
//! encode → decode unchanged; and terms that print as Erlang syntax survive print → parse.
#![no_main]

use edist_fuzz::{check_etf_round_trip, check_text_round_trip};
use edist_proto::etf::{self, DecodeError, Limits, Reader, Token, Visitor};
use libfuzzer_sys::fuzz_target;

/// Counts tokens and records the deepest level reported.
#[derive(Default)]
struct Probe {
    tokens: u64,
    max_depth: u32,
}

impl<'a> Visitor<'a> for Probe {
    fn token(&mut self, token: &Token<'a>, depth: u32) -> Result<(), DecodeError> {
        self.tokens += 1;
        self.max_depth = self.max_depth.max(depth);
        let _ = token.children();
        Ok(())
    }
}

/// Whether `walk` accepts `data` as one versioned term with nothing after it.
fn walk_accepts(data: &[u8], limits: &Limits) -> bool {
    let Some((&v, body)) = data.split_first() else { return false };
    let mut r = Reader::new(body);
    let mut probe = Probe::default();
    let walked = etf::walk(&mut r, limits, 0, &mut probe);
    assert!(probe.max_depth <= limits.max_depth, "walk reported depth {} over the limit", probe.max_depth);
    assert!(r.position() <= body.len());
    let skipped = etf::skip(body, limits);
    assert_eq!(skipped.ok(), walked.as_ref().ok().map(|_| r.position()), "skip and walk disagree");
    v == etf::tag::VERSION && walked.is_ok() && r.remaining() == 0
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let decoded = etf::decode_versioned(data, &limits);
    assert_eq!(
        decoded.is_ok(),
        walk_accepts(data, &limits),
        "decode_versioned ({:?}) and walk disagree",
        decoded.as_ref().err()
    );
    let tiny = Limits { max_depth: 3, max_inflated: 1 << 16 };
    let decoded_tiny = etf::decode_versioned(data, &tiny);
    assert_eq!(
        decoded_tiny.is_ok(),
        walk_accepts(data, &tiny),
        "with max_depth 3, decode_versioned ({:?}) and walk disagree",
        decoded_tiny.as_ref().err()
    );
    if let Ok(t) = decoded {
        check_etf_round_trip(&t);
        check_text_round_trip(&t);
    }
});
