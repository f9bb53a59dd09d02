//! Property tests of the External Term Format codec and the term text parser, and hostile
//! inputs: encode/decode round trips, `walk`/`skip` agreeing with the encoding's length, no
//! panics on mutated, truncated or random bytes and text, and bounded work on lying lengths.

use edist_proto::etf::{
    decode_versioned, encode, encode_versioned, parse, skip, walk, Atom, DecodeError, Fun, Limits, Pid, Port, Reader,
    Ref, Term, Token, Visitor,
};
use num_bigint::{BigInt, Sign};
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

// ---- strategies ---------------------------------------------------------------------------------

fn atom_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-zA-Z0-9_@]{0,12}",
        2 => vec(any::<char>(), 0..12).prop_map(String::from_iter),
        1 => "[ -~]{0,12}",
        1 => vec(any::<char>(), 250..=255).prop_map(String::from_iter),
    ]
}

fn atom() -> impl Strategy<Value = Atom> {
    atom_text().prop_map(Atom::from)
}

fn node() -> impl Strategy<Value = Atom> {
    prop_oneof![Just(Atom::from("a@host")), Just(Atom::from("nonode@nohost")), atom()]
}

fn pid() -> impl Strategy<Value = Pid> {
    (node(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(node, id, serial, creation)| Pid {
        node,
        id,
        serial,
        creation,
    })
}

fn leaf() -> impl Strategy<Value = Term> {
    prop_oneof![
        3 => atom().prop_map(Term::Atom),
        3 => any::<i64>().prop_map(Term::Int),
        1 => (-300i64..300).prop_map(Term::Int),
        2 => (any::<bool>(), vec(any::<u8>(), 0..40)).prop_map(|(neg, digits)| {
            let sign = if neg { Sign::Minus } else { Sign::Plus };
            Term::from_bigint(BigInt::from_bytes_le(sign, &digits))
        }),
        2 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Term::Float),
        1 => pid().prop_map(Term::Pid),
        1 => (node(), any::<u64>(), any::<u32>()).prop_map(|(node, id, creation)| Term::Port(Port { node, id, creation })),
        1 => (node(), any::<u32>(), vec(any::<u32>(), 1..=5))
            .prop_map(|(node, creation, ids)| Term::Ref(Ref { node, creation, ids })),
        1 => Just(Term::Nil),
        2 => vec(any::<u8>(), 1..40).prop_map(Term::String),
        1 => "[ -~]{1,20}".prop_map(|s| Term::String(s.into_bytes())),
        2 => vec(any::<u8>(), 0..40).prop_map(Term::Binary),
        1 => (vec(any::<u8>(), 1..8), 1u8..8).prop_map(|(mut data, bits)| {
            // Canonical form: the padding bits of the last byte are zero (as OTP makes them).
            if let Some(last) = data.last_mut() {
                *last &= 0xffu8 << (8 - bits);
            }
            Term::BitBinary { data, bits }
        }),
        1 => (atom(), atom(), any::<u8>()).prop_map(|(module, function, arity)| Term::Export { module, function, arity }),
    ]
}

fn term() -> impl Strategy<Value = Term> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            3 => vec(inner.clone(), 0..8).prop_map(Term::Tuple),
            3 => vec(inner.clone(), 1..8).prop_map(|items| Term::List(items, Box::new(Term::Nil))),
            1 => vec(-2i64..300, 1..8).prop_map(|v| Term::list(v.into_iter().map(Term::Int).collect::<Vec<_>>())),
            // An improper tail is not itself a list: `[a | [b]]` is the proper list `[a, b]`.
            2 => (vec(inner.clone(), 1..6), inner.clone().prop_filter("non-list tail", |t| !matches!(t, Term::Nil | Term::List(..) | Term::String(_))))
                .prop_map(|(items, tail)| Term::List(items, Box::new(tail))),
            // Keys distinct as OTP sees them (=:=): OTP refuses a map with a repeated key.
            2 => vec((inner.clone(), inner.clone()), 0..6)
                .prop_map(Term::Map)
                .prop_filter("distinct keys", |m| decode_versioned(&encode_versioned(m), &Limits::default()).is_ok()),
            1 => (
                any::<u8>(),
                any::<[u8; 16]>(),
                any::<u32>(),
                atom(),
                any::<i32>(),
                any::<i32>(),
                pid(),
                vec(inner, 0..4),
            )
                .prop_map(|(arity, uniq, index, module, old_index, old_uniq, pid, free_vars)| {
                    Term::Fun(Box::new(Fun {
                        arity,
                        uniq,
                        index,
                        module,
                        old_index: i64::from(old_index),
                        old_uniq: i64::from(old_uniq),
                        pid,
                        free_vars,
                    }))
                }),
        ]
    })
}

/// The term as it reads back from its text: `None` for terms without syntax (pids, ports,
/// refs, funs); list tails that are lists merged (`[a|[b]]` is `[a,b]`); repeated map keys
/// keeping their last value in the first key's place.
fn textual(t: &Term) -> Option<Term> {
    Some(match t {
        Term::Pid(_) | Term::Port(_) | Term::Ref(_) | Term::Fun(_) => return None,
        Term::Tuple(items) => Term::Tuple(items.iter().map(textual).collect::<Option<Vec<_>>>()?),
        Term::List(items, tail) => {
            let mut items = items.iter().map(textual).collect::<Option<Vec<_>>>()?;
            match textual(tail)? {
                Term::Nil => Term::List(items, Box::new(Term::Nil)),
                Term::String(s) => {
                    items.extend(s.into_iter().map(|b| Term::Int(i64::from(b))));
                    Term::List(items, Box::new(Term::Nil))
                }
                Term::List(more, tail) => {
                    items.extend(more);
                    Term::List(items, tail)
                }
                other => Term::List(items, Box::new(other)),
            }
        }
        Term::Map(pairs) => {
            let mut out: Vec<(Term, Term)> = Vec::new();
            let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
            for (k, v) in pairs {
                let (k, v) = (textual(k)?, textual(v)?);
                match seen.get(&encode(&k)).copied() {
                    Some(i) => {
                        if let Some(slot) = out.get_mut(i) {
                            slot.1 = v;
                        }
                    }
                    None => {
                        seen.insert(encode(&k), out.len());
                        out.push((k, v));
                    }
                }
            }
            Term::Map(out)
        }
        // Text shows only the used bits of a bitstring's last byte.
        Term::BitBinary { data, bits } => {
            let mut data = data.clone();
            if let Some(last) = data.last_mut() {
                *last &= 0xffu8 << (8 - bits);
            }
            Term::BitBinary { data, bits: *bits }
        }
        other => other.clone(),
    })
}

struct Counter(usize);
impl Visitor<'_> for Counter {
    fn token(&mut self, _: &Token<'_>, _: u32) -> Result<(), DecodeError> {
        self.0 += 1;
        Ok(())
    }
}

fn limits() -> Limits {
    Limits::default()
}

// ---- properties ---------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_decode_gives_the_term_back(t in term()) {
        let bytes = encode_versioned(&t);
        let back = decode_versioned(&bytes, &limits());
        prop_assert_eq!(back.as_ref(), Ok(&t));
        // And the encoding is canonical: re-encoding what we decoded gives the same bytes.
        if let Ok(back) = back {
            prop_assert_eq!(encode_versioned(&back), bytes);
        }
    }

    #[test]
    fn walk_and_skip_consume_exactly_the_encoding(t in term(), trailing in vec(any::<u8>(), 0..8)) {
        let mut bytes = encode(&t);
        let len = bytes.len();
        prop_assert_eq!(skip(&bytes, &limits()), Ok(len));
        bytes.extend_from_slice(&trailing);
        prop_assert_eq!(skip(&bytes, &limits()), Ok(len));
        let mut r = Reader::new(&bytes);
        let mut n = Counter(0);
        prop_assert_eq!(walk(&mut r, &limits(), 0, &mut n), Ok(()));
        prop_assert_eq!(r.position(), len);
        prop_assert!(n.0 >= 1);
    }

    #[test]
    fn printed_text_parses_back(t in term()) {
        let text = t.to_string();
        prop_assert!(!text.contains('\n'));
        if let Some(want) = textual(&t) {
            match parse(&text) {
                Ok(back) => prop_assert_eq!(back, want, "text {}", text),
                Err(e) => prop_assert!(false, "cannot parse {}: {}", text, e),
            }
        }
    }

    #[test]
    fn mutated_encodings_never_panic(t in term(), edits in vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = encode_versioned(&t);
        for (at, b) in edits {
            let at = at % bytes.len();
            bytes[at] = b;
        }
        let _ = decode_versioned(&bytes, &limits());
        if bytes.len() > 1 {
            let _ = skip(&bytes[1..], &limits());
        }
    }

    #[test]
    fn truncated_encodings_are_errors(t in term(), cut in any::<usize>()) {
        let bytes = encode_versioned(&t);
        let cut = cut % bytes.len();
        prop_assert!(decode_versioned(&bytes[..cut], &limits()).is_err());
        if cut > 0 {
            prop_assert!(skip(&bytes[1..cut], &limits()).is_err());
        }
    }

    #[test]
    fn inserted_and_deleted_bytes_never_panic(t in term(), at in any::<usize>(), b in any::<u8>(), insert in any::<bool>()) {
        let mut bytes = encode_versioned(&t);
        let at = at % bytes.len();
        if insert {
            bytes.insert(at, b);
        } else {
            bytes.remove(at);
        }
        let _ = decode_versioned(&bytes, &limits());
        let _ = skip(bytes.get(1..).unwrap_or_default(), &limits());
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = decode_versioned(&bytes, &limits());
        let _ = skip(&bytes, &limits());
        let mut versioned = vec![131];
        versioned.extend_from_slice(&bytes);
        let _ = decode_versioned(&versioned, &limits());
    }

    #[test]
    fn tag_soup_never_panics(bytes in vec(prop_oneof![
        Just(70u8), Just(77), Just(80), Just(88), Just(89), Just(90), Just(97), Just(98), Just(104), Just(105),
        Just(106), Just(107), Just(108), Just(109), Just(110), Just(111), Just(112), Just(113), Just(116),
        Just(118), Just(119), Just(120), Just(0), Just(1), Just(2), Just(255), any::<u8>()
    ], 0..128)) {
        let mut versioned = vec![131];
        versioned.extend_from_slice(&bytes);
        let _ = decode_versioned(&versioned, &limits());
        let _ = skip(&bytes, &limits());
    }

    #[test]
    fn random_text_never_panics(s in prop_oneof![
        any::<String>(),
        "[\\[\\]{}<>#$,|.:/\"'a-zA-Z0-9_=\\\\ +%\n\t-]{0,80}",
    ]) {
        let _ = parse(&s);
    }

    #[test]
    fn mutated_text_never_panics(t in term(), edits in vec((any::<usize>(), prop_oneof![
        Just('['), Just(']'), Just('{'), Just('}'), Just('<'), Just('>'), Just('"'), Just('\''), Just('\\'),
        Just('$'), Just('#'), Just(','), Just('|'), Just('/'), Just(':'), Just('.'), Just('-'), Just('e'),
        Just('x'), Just('0'), Just(' '), any::<char>()
    ]), 1..4), cut in any::<usize>()) {
        let mut chars: Vec<char> = t.to_string().chars().collect();
        for (at, c) in edits {
            let at = at % chars.len();
            chars[at] = c;
        }
        let s: String = chars.iter().collect();
        let _ = parse(&s);
        let cut = cut % (chars.len() + 1);
        let _ = parse(&chars[..cut].iter().collect::<String>());
    }
}

// ---- hostile inputs -----------------------------------------------------------------------------

fn quickly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < Duration::from_secs(2), "{what} took {:?}", start.elapsed());
    out
}

#[test]
fn list_claiming_four_billion_elements_fails_fast() {
    let bytes = [131, 108, 0xff, 0xff, 0xff, 0xff, 106];
    let r = quickly("decode", || decode_versioned(&bytes, &limits()));
    assert!(matches!(r, Err(DecodeError::LengthTooLarge { .. })), "{r:?}");
    let r = quickly("skip", || skip(&bytes[1..], &limits()));
    assert!(matches!(r, Err(DecodeError::LengthTooLarge { .. })), "{r:?}");
    // The same lie in tuples, maps, strings, binaries and funs.
    for bytes in [
        &[131, 105, 0xff, 0xff, 0xff, 0xff, 106][..],
        &[131, 116, 0xff, 0xff, 0xff, 0xff, 106, 106],
        &[131, 107, 0xff, 0xff, 1],
        &[131, 109, 0xff, 0xff, 0xff, 0xff, 1],
        &[131, 111, 0xff, 0xff, 0xff, 0xff, 0, 1],
        &[131, 77, 0xff, 0xff, 0xff, 0xff, 3, 1],
        &[131, 112, 0xff, 0xff, 0xff, 0xff, 0],
    ] {
        let r = quickly("decode", || decode_versioned(bytes, &limits()));
        assert!(r.is_err(), "{bytes:?}: {r:?}");
        assert!(quickly("skip", || skip(&bytes[1..], &limits())).is_err());
    }
}

#[test]
fn deeply_nested_tuples_are_too_deep() {
    let mut bytes = vec![131];
    for _ in 0..100_000 {
        bytes.extend_from_slice(&[104, 1]);
    }
    bytes.push(106);
    let max = limits().max_depth;
    assert_eq!(quickly("decode", || decode_versioned(&bytes, &limits())), Err(DecodeError::TooDeep(max)));
    assert_eq!(quickly("skip", || skip(&bytes[1..], &limits())), Err(DecodeError::TooDeep(max)));
    // Lists and maps nest the same way.
    let mut list = vec![131];
    for _ in 0..100_000 {
        list.extend_from_slice(&[108, 0, 0, 0, 1]);
    }
    assert!(matches!(decode_versioned(&list, &limits()), Err(DecodeError::TooDeep(_))));
    assert!(matches!(skip(&list[1..], &limits()), Err(DecodeError::TooDeep(_))));
    let mut map = vec![131];
    for _ in 0..100_000 {
        map.extend_from_slice(&[116, 0, 0, 0, 1, 106]);
    }
    assert!(matches!(decode_versioned(&map, &limits()), Err(DecodeError::TooDeep(_))));
    assert!(matches!(skip(&map[1..], &limits()), Err(DecodeError::TooDeep(_))));
}

#[test]
fn nesting_just_under_the_limit_decodes() {
    let max = limits().max_depth as usize;
    let mut bytes = vec![131];
    for _ in 0..max - 1 {
        bytes.extend_from_slice(&[104, 1]);
    }
    bytes.push(106);
    let t = decode_versioned(&bytes, &limits());
    assert!(t.is_ok(), "{t:?}");
    assert_eq!(skip(&bytes[1..], &limits()), Ok(bytes.len() - 1));
    assert_eq!(t.map(|t| encode_versioned(&t)), Ok(bytes));
}

fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let ok = z.write_all(data).is_ok();
    assert!(ok);
    match z.finish() {
        Ok(v) => v,
        Err(e) => panic!("zlib: {e}"),
    }
}

#[test]
fn compressed_term_claiming_four_gigabytes_fails() {
    let inner = encode(&Term::atom("small"));
    let mut bytes = vec![131, 80, 0xff, 0xff, 0xff, 0xff];
    bytes.extend_from_slice(&zlib(&inner));
    let r = quickly("decode", || decode_versioned(&bytes, &limits()));
    assert_eq!(r, Err(DecodeError::InflateTooLarge(0xffff_ffff)));
    assert!(quickly("skip", || skip(&bytes[1..], &limits())).is_err());
    // Even with no limit, a small stream claiming 4 GB is refused without reserving 4 GB.
    let unlimited = Limits { max_inflated: usize::MAX, ..limits() };
    let r = quickly("decode", || decode_versioned(&bytes, &unlimited));
    assert_eq!(r, Err(DecodeError::BadCompression));
    assert!(quickly("skip", || skip(&bytes[1..], &unlimited)).is_err());
    // A truthful size decodes.
    let mut good = vec![131, 80];
    good.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    good.extend_from_slice(&zlib(&inner));
    assert_eq!(decode_versioned(&good, &limits()), Ok(Term::atom("small")));
    assert_eq!(skip(&good[1..], &limits()), Ok(good.len() - 1));
    // A size one short or one long is corrupt, not silently accepted.
    for size in [inner.len() - 1, inner.len() + 1] {
        let mut bad = vec![131, 80];
        bad.extend_from_slice(&(size as u32).to_be_bytes());
        bad.extend_from_slice(&zlib(&inner));
        assert_eq!(decode_versioned(&bad, &limits()), Err(DecodeError::BadCompression), "size {size}");
    }
    // A compression bomb (64 MiB + 1 of zeros) is refused by the default limit.
    let bomb_inner = {
        let mut v = vec![109];
        let n = (64 << 20) + 1 - 5;
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v.resize(5 + n, 0);
        v
    };
    let mut bomb = vec![131, 80];
    bomb.extend_from_slice(&(bomb_inner.len() as u32).to_be_bytes());
    bomb.extend_from_slice(&zlib(&bomb_inner));
    assert!(matches!(decode_versioned(&bomb, &limits()), Err(DecodeError::InflateTooLarge(_))));
}

#[test]
fn binary_longer_than_the_input_is_truncated() {
    let bytes = [131, 109, 0, 0, 0, 10, 1, 2, 3];
    assert_eq!(decode_versioned(&bytes, &limits()), Err(DecodeError::Truncated { offset: 6, needed: 7 }));
    assert_eq!(skip(&bytes[1..], &limits()), Err(DecodeError::Truncated { offset: 5, needed: 7 }));
    let huge = [131, 109, 0xff, 0xff, 0xff, 0xff, 1];
    assert!(matches!(decode_versioned(&huge, &limits()), Err(DecodeError::Truncated { .. })));
}

#[test]
fn large_collections_round_trip() {
    for t in [
        Term::tuple((0..300).map(Term::Int).collect::<Vec<_>>()),
        Term::String(vec![7; 70_000]),
        Term::list(vec![Term::Int(120); 65_535]),
        Term::list(vec![Term::Int(120); 65_536]),
        Term::Map((0..1000).map(|k| (Term::Int(k), Term::atom("v"))).collect()),
        Term::binary(vec![0xab; 1 << 16]),
        Term::atom(&"日".repeat(255)),
    ] {
        let bytes = encode_versioned(&t);
        assert_eq!(decode_versioned(&bytes, &limits()).as_ref(), Ok(&t));
        assert_eq!(skip(&bytes[1..], &limits()), Ok(bytes.len() - 1));
        assert_eq!(parse(&t.to_string()).as_ref(), Ok(&t));
    }
}

#[test]
fn hostile_text_is_bounded() {
    for s in ["[".repeat(1_000_000), "{".repeat(1_000_000), "#{a=>".repeat(200_000), "<<".repeat(100_000)] {
        assert!(quickly("parse", || parse(&s)).is_err());
    }
    assert!(quickly("parse", || parse("<<0:4294967296>>")).is_err());
    assert!(quickly("parse", || parse("<<0:16#FFFFFFFFFFFFFFFF/unit:256>>")).is_err());
    assert!(quickly("parse", || parse(&format!("'{}'", "a".repeat(100_000)))).is_err());
    let wide = format!("[{}]", vec!["a"; 200_000].join(","));
    assert!(matches!(quickly("parse", || parse(&wide)), Ok(Term::List(items, _)) if items.len() == 200_000));
    let keys = format!("#{{{}}}", (0..50_000).map(|k| format!("{k} => {k}")).collect::<Vec<_>>().join(","));
    assert!(matches!(quickly("parse", || parse(&keys)), Ok(Term::Map(p)) if p.len() == 50_000));
}

#[test]
fn decoding_at_the_depth_limit_needs_little_stack() {
    // Nesting is decoded without recursion: the deepest accepted term decodes (and drops) on a
    // small thread stack, in debug builds too.
    let max = limits().max_depth as usize;
    let mut bytes = vec![131];
    for _ in 0..max - 1 {
        bytes.extend_from_slice(&[108, 0, 0, 0, 1, 104, 1]);
    }
    bytes.push(106);
    bytes.resize(bytes.len() + max - 1, 106); // the lists' tails
    let worker = std::thread::Builder::new().stack_size(256 << 10).spawn(move || {
        let t = decode_versioned(&bytes, &Limits { max_depth: 2 * max as u32, ..Limits::default() });
        let ok = t.is_ok();
        // Dropping a deep term recurses (Term has no custom Drop); leave that to the caller.
        std::mem::forget(t);
        ok
    });
    assert!(matches!(worker.map(|w| w.join()), Ok(Ok(true))));
}

#[test]
fn the_deepest_default_term_decodes_and_drops_on_a_tokio_sized_stack() {
    let max = limits().max_depth as usize;
    let mut bytes = vec![131];
    for _ in 0..(max - 1) / 2 {
        bytes.extend_from_slice(&[108, 0, 0, 0, 1, 116, 0, 0, 0, 1, 106]);
    }
    bytes.push(106);
    bytes.resize(bytes.len() + (max - 1) / 2, 106);
    let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(move || {
        let t = decode_versioned(&bytes, &limits());
        let ok = t.is_ok();
        drop(t);
        ok
    });
    assert!(matches!(worker.map(|w| w.join()), Ok(Ok(true))));
}

/// A term compressed `levels` times over (which OTP refuses: only the outer term may be).
fn nested_compression(levels: usize) -> Vec<u8> {
    let mut enc = encode(&Term::atom("x"));
    for _ in 0..levels {
        let mut outer = vec![80];
        outer.extend_from_slice(&(enc.len() as u32).to_be_bytes());
        outer.extend_from_slice(&zlib(&enc));
        enc = outer;
    }
    let mut bytes = vec![131];
    bytes.extend_from_slice(&enc);
    bytes
}

#[test]
fn compression_inside_compression_is_refused() {
    let once = nested_compression(1);
    assert_eq!(decode_versioned(&once, &limits()), Ok(Term::atom("x")));
    assert_eq!(skip(&once[1..], &limits()), Ok(once.len() - 1));
    for levels in [2, 1000] {
        let bytes = nested_compression(levels);
        let r = quickly("decode", || decode_versioned(&bytes, &limits()));
        assert!(matches!(r, Err(DecodeError::UnknownTag { tag: 80, .. })), "{levels}: {r:?}");
        let r = quickly("skip", || skip(&bytes[1..], &limits()));
        assert!(matches!(r, Err(DecodeError::UnknownTag { tag: 80, .. })), "{levels}: {r:?}");
    }
}
