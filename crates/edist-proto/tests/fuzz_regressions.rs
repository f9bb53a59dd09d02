//! Regression tests for inputs found by the fuzz targets in `fuzz/` (see `fuzz/README.md`).
//! Each test names its target and holds the minimised input.

use edist_proto::etf::{self, decode_versioned, Limits};

fn walk_accepts(data: &[u8], limits: &Limits) -> bool {
    match data.split_first() {
        Some((&131, body)) => etf::skip(body, limits) == Ok(body.len()),
        _ => false,
    }
}

/// etf_term: `{{{}}}` under `max_depth: 3`. The walker accepted it (the empty tuple sits at
/// depth 3, within the limit) but the decoder refused every compound at the limit, even one
/// without children. Decoder and walker must accept the same terms.
#[test]
fn etf_term_empty_compound_at_the_depth_limit() {
    let data = [131, 104, 1, 104, 1, 104, 0];
    let limits = Limits { max_depth: 3, max_inflated: 1 << 16 };
    assert!(walk_accepts(&data, &limits));
    assert!(decode_versioned(&data, &limits).is_ok());
    // One level more is over the limit for both.
    let deeper = [131, 104, 1, 104, 1, 104, 1, 104, 0];
    assert!(!walk_accepts(&deeper, &limits));
    assert!(decode_versioned(&deeper, &limits).is_err());
    // Empty maps and funs without free variables likewise.
    {
        let leaf = &[116u8, 0, 0, 0, 0][..];
        let data = [&[131, 104, 1, 104, 1][..], leaf].concat();
        assert_eq!(walk_accepts(&data, &limits), decode_versioned(&data, &limits).is_ok());
    }
}

/// Differences from OTP's binary_to_term found by the fuzzers' round-trip checks.
#[test]
fn decoder_normalises_like_otp() {
    use edist_proto::Term;
    let limits = Limits::default();
    // <<7:3>> with garbage in the padding bits.
    let t = decode_versioned(&[131, 77, 0, 0, 0, 1, 3, 255], &limits).unwrap();
    assert_eq!(t, Term::BitBinary { data: vec![0xe0], bits: 3 });
    // [1 | "ab"] is [1, 97, 98].
    let t = decode_versioned(&[131, 108, 0, 0, 0, 1, 97, 1, 107, 0, 2, 97, 98], &limits).unwrap();
    assert_eq!(t, Term::list([Term::Int(1), Term::Int(97), Term::Int(98)]));
}
