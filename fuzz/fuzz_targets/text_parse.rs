//! Erlang term text: `etf::text::parse` over arbitrary UTF-8.
//!
//! Checks: nothing panics; a parsed term prints as text that parses back to an equal term;
//! and it survives ETF encode → decode unchanged.
#![no_main]

use edist_fuzz::{canon, check_etf_round_trip, text_too_large};
use edist_proto::etf::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(t) = text::parse(s) else { return };
    if text_too_large(&t) {
        // A few bytes of text can build a 16 MiB binary; see edist_fuzz::MAX_TEXT_CHECK.
        check_etf_round_trip(&t);
        return;
    }
    let printed = t.to_string();
    let back = match text::parse(&printed) {
        Ok(b) => b,
        Err(e) => panic!("printed term does not parse: {e}\n  input: {s:?}\n  printed: {printed}"),
    };
    // The parser's output is canonical already: exact equality must hold.
    assert_eq!(back, t, "print → parse changed the term\n  input: {s:?}\n  printed: {printed}");
    assert_eq!(canon(&t), t, "parse produced a non-canonical term\n  input: {s:?}");
    assert_eq!(back.to_string(), printed, "printing is not stable");
    check_etf_round_trip(&t);
});
