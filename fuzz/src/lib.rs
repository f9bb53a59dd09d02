//! Helpers shared by the fuzz targets in `fuzz_targets/` and the corpus seeder in
//! `examples/seed_corpus.rs`: the checks that must hold for every decoded term, the input
//! formats of the stateful targets, and the fixed configurations they use.

use edist_proto::dist::handshake::{AcceptorConfig, InitiatorConfig};
use edist_proto::dist::DFlags;
use edist_proto::etf::{self, text, Limits, Term};
use std::collections::HashMap;

// ------------------------------------------------------------------------------------------------
// Terms
// ------------------------------------------------------------------------------------------------

/// A canonical form of a term, for comparisons that must hold up to representation:
///
/// * lists are flattened: `[a | [b]]` and `[a | "b"]` become `[a, b]`, STRING_EXT becomes a
///   list of integers (`Term`'s own equality already equates those at the top level only);
/// * the unused low bits of a bitstring's last byte are cleared (they carry no value);
/// * a map key given twice keeps its last value, in the first key's place (keys compared by
///   the encoding of their canonical form), as `etf::text::parse` and Erlang do.
pub fn canon(t: &Term) -> Term {
    match t {
        Term::Nil => Term::Nil,
        Term::String(s) if s.is_empty() => Term::Nil,
        Term::String(s) => Term::List(s.iter().map(|b| Term::Int(i64::from(*b))).collect(), Box::new(Term::Nil)),
        Term::List(items, tail) => {
            let mut items: Vec<Term> = items.iter().map(canon).collect();
            match canon(tail) {
                Term::List(more, tail) => {
                    items.extend(more);
                    Term::List(items, tail)
                }
                Term::Nil if items.is_empty() => Term::Nil,
                other => Term::List(items, Box::new(other)),
            }
        }
        Term::Tuple(items) => Term::Tuple(items.iter().map(canon).collect()),
        Term::Map(pairs) => {
            let mut out: Vec<(Term, Term)> = Vec::new();
            let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
            for (k, v) in pairs {
                let (k, v) = (canon(k), canon(v));
                match seen.get(&etf::encode(&k)).and_then(|i| out.get_mut(*i)) {
                    Some(slot) => slot.1 = v,
                    None => {
                        seen.insert(etf::encode(&k), out.len());
                        out.push((k, v));
                    }
                }
            }
            Term::Map(out)
        }
        Term::BitBinary { data, bits } if *bits >= 8 => Term::Binary(data.clone()),
        Term::BitBinary { data, bits } => {
            let mut data = data.clone();
            if let Some(last) = data.last_mut() {
                *last &= 0xffu8 << (8 - bits);
            }
            Term::BitBinary { data, bits: *bits }
        }
        Term::Fun(f) => {
            let mut f = f.clone();
            f.free_vars = f.free_vars.iter().map(canon).collect();
            Term::Fun(f)
        }
        other => other.clone(),
    }
}

/// Whether a term prints as parseable Erlang text: no pid, port, reference or fun anywhere
/// (those print as `<n.1.2>`, `#Ref<...>`, ..., which have no source syntax), and no deeper
/// than the parser's [`text::MAX_DEPTH`] (counting every container, which over-estimates the
/// parser's count, so the check is conservative).
pub fn text_round_trips(t: &Term) -> bool {
    fn go(t: &Term, depth: usize) -> bool {
        match t {
            Term::Pid(_) | Term::Port(_) | Term::Ref(_) | Term::Fun(_) => false,
            Term::Atom(_) | Term::Int(_) | Term::Big(_) | Term::Float(_) | Term::Export { .. } => true,
            _ if depth + 1 > text::MAX_DEPTH => false,
            Term::Nil | Term::String(_) | Term::Binary(_) | Term::BitBinary { .. } => true,
            Term::Tuple(items) => items.iter().all(|i| go(i, depth + 1)),
            Term::List(items, tail) => items.iter().all(|i| go(i, depth + 1)) && go(tail, depth + 1),
            Term::Map(pairs) => pairs.iter().all(|(k, v)| go(k, depth + 1) && go(v, depth + 1)),
        }
    }
    go(t, 0)
}

/// `encode_versioned` then `decode_versioned` gives the same term, and encoding that again
/// gives the same bytes (equal terms encode equally).
pub fn check_etf_round_trip(t: &Term) {
    let bytes = etf::encode_versioned(t);
    let back = match etf::decode_versioned(&bytes, &Limits::default()) {
        Ok(b) => b,
        Err(e) => panic!("encoding of {t:?} does not decode: {e} ({bytes:?})"),
    };
    assert_eq!(&back, t, "ETF round trip changed the term");
    assert_eq!(etf::encode_versioned(&back), bytes, "re-encoding a decoded term changed its bytes");
    assert_eq!(etf::skip(bytes.get(1..).unwrap_or_default(), &Limits::default()), Ok(bytes.len() - 1));
}

/// Printed terms longer than this are not parsed back: a 15-byte text like `<<0:125000000>>`
/// builds a 16 MiB binary that prints as 31 MB of `<<0,0,...>>`, and parsing that under the
/// sanitizer takes half a minute (linear, but it starves the fuzzer). It also keeps binaries
/// inflated from compressed ETF below the parser's 16 MiB binary limit.
pub const MAX_TEXT_CHECK: usize = 1 << 20;

/// Whether a term is too large to print and parse back cheaply (its encoding is more than a
/// quarter of [`MAX_TEXT_CHECK`]; text is at most a few times larger than the encoding).
pub fn text_too_large(t: &Term) -> bool {
    etf::encode(t).len() > MAX_TEXT_CHECK / 4
}

/// Printing a term and parsing the text gives the same term (up to [`canon`]), for terms that
/// print as Erlang syntax.
pub fn check_text_round_trip(t: &Term) {
    if !text_round_trips(t) || text_too_large(t) {
        return;
    }
    let s = t.to_string();
    if s.len() > MAX_TEXT_CHECK {
        return;
    }
    let back = match text::parse(&s) {
        Ok(b) => b,
        Err(e) => panic!("printed term does not parse: {e}\n  text: {s}\n  term: {t:?}"),
    };
    assert_eq!(canon(&back), canon(t), "text round trip changed the term\n  text: {s}");
}

// ------------------------------------------------------------------------------------------------
// Input formats of the stateful targets
// ------------------------------------------------------------------------------------------------

/// A cursor over the fuzz input: single decision bytes and length-prefixed chunks.
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next byte (0 once the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// A chunk: one length byte, then that many bytes (fewer at the end of the input).
    pub fn chunk(&mut self) -> Option<&'a [u8]> {
        let (&n, rest) = self.0.split_first()?;
        let n = usize::from(n).min(rest.len());
        let (c, rest) = rest.split_at(n);
        self.0 = rest;
        Some(c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Appends a chunk in [`Input::chunk`]'s format, splitting `data` into pieces of at most 255.
pub fn put_chunks(out: &mut Vec<u8>, data: &[u8]) {
    for piece in data.chunks(255) {
        out.push(piece.len() as u8);
        out.extend_from_slice(piece);
    }
}

// ------------------------------------------------------------------------------------------------
// Fixed configurations
// ------------------------------------------------------------------------------------------------

/// OTP 25's default flags (with the atom cache), as an OTP peer offers them.
pub const OTP25_FLAGS: u64 = 0xD_07DF_7FBD;

/// The negotiated flag sets the `dist_packet` target runs under, chosen by the first byte.
pub const DIST_FLAG_SETS: [u64; 4] = [
    // OTP 25 defaults: atom cache and fragments.
    OTP25_FLAGS,
    // edist's default (no atom cache, fragments).
    0xD_07DF_5FBC,
    // Neither atom cache nor fragments: 112 pass-through envelopes.
    0xD_07DF_5FBC & !DFlags::FRAGMENTS,
    // Atom cache without fragments.
    OTP25_FLAGS & !DFlags::FRAGMENTS,
];

/// The cookie both handshake targets use.
pub const COOKIE: &[u8] = b"fuzzcookie";

/// The acceptor the `handshake_acceptor` target drives.
pub fn acceptor_config(variant: u8) -> AcceptorConfig {
    AcceptorConfig {
        name: "b@host".into(),
        flags: DFlags(if variant & 1 == 0 { DFlags::edist_default(true).0 } else { OTP25_FLAGS }),
        creation: 9,
        cookie: COOKIE.to_vec(),
        challenge: 0x1234_5678,
    }
}

/// The initiator the `handshake_initiator` target drives; odd variants ask for a dynamic name.
pub fn initiator_config(variant: u8) -> InitiatorConfig {
    let name_me = variant & 1 == 1;
    InitiatorConfig {
        name: if name_me { "host".into() } else { "a@host".into() },
        flags: DFlags(DFlags::edist_default(false).0 | if name_me { DFlags::NAME_ME } else { 0 }),
        creation: 7,
        cookie: COOKIE.to_vec(),
        challenge: 0x0bad_cafe,
        peer: "b@host".into(),
    }
}
