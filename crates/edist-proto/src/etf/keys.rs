//! Duplicate map keys, as OTP refuses them.
//!
//! `binary_to_term` (and so a node reading the distribution) fails on a map whose keys repeat
//! under `=:=`: `#{a => 1, a => 2}` in any atom encoding, `1` as SMALL_INTEGER and INTEGER,
//! `"ab"` and `[97,98]`, `0.0` and `-0.0` (equal in OTP 25), two maps with the same pairs in
//! another order. A gateway that let such a term through would have the node drop the whole
//! connection; the walker and the decoder refuse it instead, and agree on which terms those are
//! (both feed their tokens to one [`KeyCheck`]).
//!
//! Keys are compared by a 128-bit hash of their value (two SipHash-1-3 states with different
//! prefixes), computed while the tokens go by: a key's hash is built from its children's, so a
//! term is read once whatever its nesting (re-reading each key's bytes would cost the depth
//! times the size). Only terms inside a map key are hashed; other terms only have their
//! structure followed. A hash collision would refuse a valid term; at 128 bits that takes
//! about 2^64 keys in one map.

use super::reader::{AtomText, Token};
use super::DecodeError;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::Hasher;

/// Maps with at most this many keys are checked by a linear scan (no set allocated).
const SMALL_MAP: usize = 8;

/// A 128-bit hash under construction.
#[derive(Clone)]
struct H2(DefaultHasher, DefaultHasher);

impl H2 {
    fn new(tag: u8) -> H2 {
        let mut b = DefaultHasher::new();
        // Domain separation: the second state is another function of the same input.
        b.write_u64(0x9e37_79b9_7f4a_7c15);
        let mut h = H2(DefaultHasher::new(), b);
        h.u8(tag);
        h
    }
    fn u8(&mut self, v: u8) {
        self.0.write_u8(v);
        self.1.write_u8(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.write_u64(v);
        self.1.write_u64(v);
    }
    fn u128(&mut self, v: u128) {
        self.0.write_u128(v);
        self.1.write_u128(v);
    }
    fn i128(&mut self, v: i128) {
        self.u128(v as u128);
    }
    /// Length-prefixed bytes.
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.write(b);
        self.1.write(b);
    }
    fn atom(&mut self, a: &AtomText<'_>) {
        match a {
            AtomText::Text(t) => {
                self.u8(b'a');
                self.bytes(t.as_bytes());
            }
            AtomText::CacheRef(i) => {
                self.u8(b'c');
                self.u8(*i);
            }
        }
    }
    fn finish(&self) -> u128 {
        (u128::from(self.0.finish()) << 64) | u128::from(self.1.finish())
    }
}

/// The hash of an integer (also each byte of a STRING_EXT list).
fn int_hash(i: i128) -> u128 {
    int_start(i).finish()
}

fn int_start(i: i128) -> H2 {
    let mut h = H2::new(b'i');
    h.i128(i);
    h
}

/// A bignum as an `i128` when it fits (so it equals the same integer in a smaller encoding).
fn big_value(negative: bool, digits: &[u8]) -> Option<i128> {
    let significant = digits.iter().rposition(|d| *d != 0).map_or(0, |p| p + 1);
    if significant > 15 {
        return None;
    }
    let mut v: i128 = 0;
    for d in digits.get(..significant).unwrap_or_default().iter().rev() {
        v = (v << 8) | i128::from(*d);
    }
    Some(if negative { -v } else { v })
}

/// The hash state of a token: complete for a token without children, the header of one with
/// children (which feed their hashes after). Lists in any encoding start alike (`[]`, `"ab"`
/// and `[97, 98]` hash the same way).
fn start(tok: &Token<'_>) -> H2 {
    let mut h;
    match tok {
        Token::Atom(a) => {
            h = H2::new(b'A');
            h.atom(a);
        }
        Token::Int(i) => return int_start(i128::from(*i)),
        Token::Big { negative, digits } => match big_value(*negative, digits) {
            Some(v) => return int_start(v),
            None => {
                h = H2::new(b'b');
                h.u8(u8::from(*negative));
                let significant = digits.iter().rposition(|d| *d != 0).map_or(0, |p| p + 1);
                h.bytes(digits.get(..significant).unwrap_or_default());
            }
        },
        Token::Float(f) => {
            h = H2::new(b'f');
            // OTP 25: 0.0 =:= -0.0.
            let f = if *f == 0.0 { 0.0 } else { *f };
            h.u64(f.to_bits());
        }
        Token::Pid { node, id, serial, creation } => {
            h = H2::new(b'p');
            h.atom(node);
            h.u64(u64::from(*id));
            h.u64(u64::from(*serial));
            h.u64(u64::from(*creation));
        }
        Token::Port { node, id, creation } => {
            h = H2::new(b'o');
            h.atom(node);
            h.u64(*id);
            h.u64(u64::from(*creation));
        }
        Token::Ref { node, creation, ids } => {
            h = H2::new(b'r');
            h.atom(node);
            h.u64(u64::from(*creation));
            h.bytes(ids);
        }
        Token::Binary(b) => {
            h = H2::new(b'B');
            h.u8(8);
            h.bytes(b);
        }
        Token::BitBinary { data, bits } => {
            h = H2::new(b'B');
            // Unused low bits of the last byte do not count; 8 bits is a plain binary.
            h.u8(*bits);
            let (last, init) = data.split_last().map_or((0, &[][..]), |(l, i)| (*l, i));
            h.u64(data.len() as u64);
            h.0.write(init);
            h.1.write(init);
            h.u8(last & (0xffu8 << (8 - (*bits).clamp(1, 8))));
        }
        Token::Export { module, function, arity } => {
            h = H2::new(b'e');
            h.atom(module);
            h.atom(function);
            h.u8(*arity);
        }
        Token::Nil => {
            h = H2::new(b'L');
            h.u8(b'N');
        }
        Token::String(s) => {
            h = H2::new(b'L');
            for b in s.iter() {
                h.u128(int_hash(i128::from(*b)));
            }
            h.u8(b'N');
        }
        // Headers of compounds (their children are fed after), and a compressed term (never
        // inside a map: it is only allowed at the top).
        Token::Tuple(n) => {
            h = H2::new(b't');
            h.u64(u64::from(*n));
        }
        Token::Map(n) => {
            h = H2::new(b'm');
            h.u64(u64::from(*n));
        }
        Token::List(_) => h = H2::new(b'L'),
        Token::Fun { arity, uniq, index, module, old_index, old_uniq, pid, num_free } => {
            h = H2::new(b'F');
            h.u8(*arity);
            h.0.write(uniq);
            h.1.write(uniq);
            h.u64(u64::from(*index));
            h.atom(module);
            h.u64(*old_index as u64);
            h.u64(*old_uniq as u64);
            h.atom(&pid.0);
            h.u64(u64::from(pid.1));
            h.u64(u64::from(pid.2));
            h.u64(u64::from(pid.3));
            h.u64(u64::from(*num_free));
        }
        Token::Compressed { size, .. } => {
            h = H2::new(b'z');
            h.u64(u64::from(*size));
        }
    }
    h
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tuple,
    Map,
    List,
    Fun,
}

/// The keys a map has had so far.
enum Seen {
    Few(Vec<u128>),
    Many(HashSet<u128>),
}

impl Seen {
    /// Adds `k`; false if it was there.
    fn insert(&mut self, k: u128) -> bool {
        match self {
            Seen::Few(v) if v.contains(&k) => false,
            Seen::Few(v) if v.len() < SMALL_MAP => {
                v.push(k);
                true
            }
            Seen::Few(v) => {
                let mut s: HashSet<u128> = v.drain(..).collect();
                let fresh = s.insert(k);
                *self = Seen::Many(s);
                fresh
            }
            Seen::Many(s) => s.insert(k),
        }
    }
}

/// A compound being read.
struct Frame {
    kind: Kind,
    /// What it is to its parent.
    place: Place,
    /// Children still to come.
    remaining: u64,
    /// The term's hash so far, when its value is needed (it is, or is inside, a map key).
    hash: Option<H2>,
    /// Maps: whether the next child is a key, the keys seen, the key whose value comes next
    /// and the sum of the pairs' hashes (a map's value does not depend on the pairs' order).
    key_next: bool,
    seen: Option<Seen>,
    pending_key: u128,
    pairs: u128,
}

impl Frame {
    /// The finished term's hash.
    fn finish(self) -> Option<u128> {
        let mut h = self.hash?;
        if self.kind == Kind::Map {
            h.u128(self.pairs);
        }
        Some(h.finish())
    }
}

/// What a finished child is to its parent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Root,
    Key,
    Value,
    Element,
    /// A list's improper tail.
    Tail,
}

/// Follows the tokens of one term (as [`super::walk`] or the decoder read them) and fails on
/// the first map with a repeated key.
#[derive(Default)]
pub(crate) struct KeyCheck {
    frames: Vec<Frame>,
    /// The root term's hash, when asked for ([`KeyCheck::hashing`]).
    root_hash: Option<u128>,
    hash_root: bool,
}

impl KeyCheck {
    /// A check that also hashes the whole term ([`KeyCheck::root_hash`]).
    pub(crate) fn hashing() -> KeyCheck {
        KeyCheck { hash_root: true, ..KeyCheck::default() }
    }

    /// The hash of the term read, once it is complete (for [`KeyCheck::hashing`] checks).
    pub(crate) fn root_hash(&self) -> Option<u128> {
        self.root_hash
    }

    /// The next token of the term; `offset` is where it was read (for the error).
    pub(crate) fn token(&mut self, tok: &Token<'_>, offset: usize) -> Result<(), DecodeError> {
        // Where this token goes, and whether its value is needed.
        let (place, hashing) = match self.frames.last_mut() {
            None => (Place::Root, self.hash_root),
            Some(f) => {
                f.remaining = f.remaining.saturating_sub(1);
                let parent_hashes = f.hash.is_some();
                match f.kind {
                    Kind::Map => {
                        let key = f.key_next;
                        f.key_next = !key;
                        if key {
                            (Place::Key, true)
                        } else {
                            (Place::Value, parent_hashes)
                        }
                    }
                    Kind::List if f.remaining == 0 => {
                        // A list's tail: a list tail continues the same list (`[1 | [2]]` is
                        // `[1, 2]`, `[1 | "ab"]` is `[1, 97, 98]`).
                        match tok {
                            Token::List(n) => {
                                f.remaining = u64::from(*n) + 1;
                                return Ok(());
                            }
                            Token::Nil | Token::String(_) => {
                                if let Some(h) = f.hash.as_mut() {
                                    if let Token::String(s) = tok {
                                        for b in s.iter() {
                                            h.u128(int_hash(i128::from(*b)));
                                        }
                                    }
                                    h.u8(b'N');
                                }
                                return match self.frames.pop() {
                                    Some(f) => {
                                        let place = f.place;
                                        self.deliver(place, f.finish(), offset)
                                    }
                                    None => Ok(()),
                                };
                            }
                            _ => (Place::Tail, parent_hashes),
                        }
                    }
                    _ => (Place::Element, parent_hashes),
                }
            }
        };
        let kind = match tok {
            Token::Tuple(_) => Kind::Tuple,
            Token::Map(_) => Kind::Map,
            Token::List(_) => Kind::List,
            Token::Fun { .. } => Kind::Fun,
            _ => {
                let h = hashing.then(|| start(tok).finish());
                return self.deliver(place, h, offset);
            }
        };
        let hash = hashing.then(|| start(tok));
        let seen = (kind == Kind::Map).then(|| Seen::Few(Vec::new()));
        let remaining = tok.children();
        let frame = Frame { kind, place, remaining, hash, key_next: true, seen, pending_key: 0, pairs: 0 };
        if remaining == 0 {
            return self.deliver(place, frame.finish(), offset);
        }
        self.frames.push(frame);
        Ok(())
    }

    /// Hands a finished term to its parent, and the parents it finishes to theirs.
    fn deliver(&mut self, mut place: Place, mut hash: Option<u128>, offset: usize) -> Result<(), DecodeError> {
        loop {
            let Some(p) = self.frames.last_mut() else {
                if place == Place::Root {
                    self.root_hash = hash;
                }
                return Ok(());
            };
            match (place, hash) {
                (Place::Key, k) => {
                    let k = k.unwrap_or_default();
                    if let Some(seen) = p.seen.as_mut() {
                        if !seen.insert(k) {
                            return Err(DecodeError::DuplicateMapKey(offset));
                        }
                    }
                    p.pending_key = k;
                }
                (Place::Value, Some(v)) if p.hash.is_some() => {
                    let mut pair = H2::new(b'P');
                    pair.u128(p.pending_key);
                    pair.u128(v);
                    p.pairs = p.pairs.wrapping_add(pair.finish());
                }
                (Place::Element, Some(v)) => {
                    if let Some(h) = p.hash.as_mut() {
                        h.u128(v);
                    }
                }
                (Place::Tail, Some(v)) => {
                    if let Some(h) = p.hash.as_mut() {
                        h.u8(b'T');
                        h.u128(v);
                    }
                }
                _ => {}
            }
            if p.remaining > 0 {
                return Ok(());
            }
            let Some(done) = self.frames.pop() else { return Ok(()) };
            place = done.place;
            hash = done.finish();
        }
    }
}

/// The value hash of the term `bytes` holds (no version byte), or `None` if it does not
/// decode: equal for terms equal under `=:=` (OTP 25), different otherwise (up to collisions).
pub fn term_hash(bytes: &[u8]) -> Option<u128> {
    let mut r = super::Reader::new(bytes);
    let mut check = KeyCheck::hashing();
    // Terms still to read; every token takes at least one byte, so this ends.
    let mut open: u64 = 1;
    while open > 0 {
        let tok = r.token().ok()?;
        if matches!(tok, Token::Compressed { .. }) {
            return None;
        }
        check.token(&tok, r.position()).ok()?;
        open = open - 1 + tok.children();
    }
    check.root_hash()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etf::{decode_versioned, walk, Limits, NoopVisitor, Reader, Term};

    /// (case, `term_to_binary`-like bytes, whether OTP 25's `binary_to_term` accepts them), made
    /// by hand-assembling the maps in Erlang and asking `binary_to_term`.
    const OTP: &[(&str, &str, bool)] = &[
        ("atom_encodings", "8374000000026400016161017701616102", false),
        ("distinct_atoms", "8374000000026400016161017701626102", true),
        ("int_encodings", "8374000000026101610162000000016102", false),
        ("big_small", "8374000000026E010005610161056102", false),
        ("big_zero_digits", "8374000000026E0300050000610161056102", false),
        ("int_float", "83740000000261016101463FF00000000000006102", true),
        ("zero_negzero", "83740000000246000000000000000061014680000000000000006102", false),
        ("string_list", "8374000000026B0002010261016C00000002610161026A6102", false),
        ("list_tail_string", "8374000000026C0000000161016B0002616261016B00030161626102", false),
        ("list_tail_list", "8374000000026C0000000161016C0000000161026A61016B000201026102", false),
        ("improper_differ", "8374000000026C000000016101610261016C00000001610161036102", true),
        ("improper_same", "8374000000026C000000016101610261016C00000001610162000000026102", false),
        ("nil_empty_string", "8374000000026A61016B00006102", false),
        ("map_order", "8374000000027400000002640001616101640001626102610174000000026400016261026400016161016102", false),
        ("map_values_differ", "8374000000027400000001640001616101610174000000016400016161026102", true),
        ("inner_dup_in_value", "8374000000016400016B7400000002640001786101640001786102", false),
        ("inner_dup_in_key", "83740000000174000000026400017861016400017861026101", false),
        ("tuple_keys", "837400000002680264000161610161016802640001616D00000001016102", true),
        ("tuple_keys_same", "8374000000026802640001616101610168026400016162000000016102", false),
        ("binary_bitbinary8", "8374000000026D00000002010261014D000000020801026102", false),
        ("bitbinary_padding", "8374000000024D0000000104F061014D0000000104F36102", false),
        ("empty_map_keys", "837400000002740000000061016A6102", true),
        ("large_map", "837400000029610161016102610261036103610461046105610561066106610761076108610861096109610A610A610B610B610C610C610D610D610E610E610F610F61106110611161116112611261136113611461146115611561166116611761176118611861196119611A611A611B611B611C611C611D611D611E611E611F611F612061206121612161226122612361236124612461256125612661266127612761286128620000000764000178", false),
        ("inner_ok", "83740000000174000000026400017861016400017961026101", true),
        ("large_map_ok", "837400000028610161016102610261036103610461046105610561066106610761076108610861096109610A610A610B610B610C610C610D610D610E610E610F610F61106110611161116112611261136113611461146115611561166116611761176118611861196119611A611A611B611B611C611C611D611D611E611E611F611F612061206121612161226122612361236124612461256125612661266127612761286128", true),
    ];

    #[test]
    fn walker_and_decoder_refuse_repeated_keys_as_otp_does() {
        for (case, hex, otp) in OTP {
            let bytes = hex::decode(hex).unwrap();
            let decoded = decode_versioned(&bytes, &Limits::default());
            assert_eq!(decoded.is_ok(), *otp, "{case}: decoder {decoded:?}");
            let mut r = Reader::new(&bytes[1..]);
            let walked = walk(&mut r, &Limits::default(), 0, &mut NoopVisitor);
            assert_eq!(walked.is_ok(), *otp, "{case}: walker {walked:?}");
            if !otp {
                assert!(matches!(decoded, Err(DecodeError::DuplicateMapKey(_))), "{case}: {decoded:?}");
            }
        }
    }

    #[test]
    fn term_hashes_follow_term_equality() {
        let h = |t: &Term| term_hash(&crate::etf::encode(t)).unwrap();
        let i = Term::Int;
        assert_eq!(h(&Term::String(b"ab".to_vec())), h(&Term::list([i(97), i(98)])));
        assert_eq!(h(&Term::Nil), h(&Term::String(vec![])));
        assert_ne!(h(&i(1)), h(&Term::Float(1.0)));
        assert_eq!(h(&Term::Float(0.0)), h(&Term::Float(-0.0)));
        let m1 = Term::Map(vec![(Term::atom("a"), i(1)), (Term::atom("b"), i(2))]);
        let m2 = Term::Map(vec![(Term::atom("b"), i(2)), (Term::atom("a"), i(1))]);
        assert_eq!(h(&m1), h(&m2));
        assert_ne!(h(&m1), h(&Term::Map(vec![(Term::atom("a"), i(2)), (Term::atom("b"), i(1))])));
        assert_ne!(h(&Term::tuple([i(1), i(2)])), h(&Term::list([i(1), i(2)])));
        assert_ne!(h(&Term::binary(vec![1])), h(&Term::String(vec![1])));
    }

    #[test]
    fn deep_keys_cost_one_pass() {
        // A key nested 1000 maps deep: each level's key holds all the levels below it. One
        // read of the bytes decides (re-reading each key would take 1000 passes).
        let mut k = Term::atom("x");
        for _ in 0..1000 {
            k = Term::Map(vec![(k, Term::Nil)]);
        }
        let bytes = crate::etf::encode_versioned(&Term::Map(vec![(k.clone(), Term::Nil), (Term::Nil, k)]));
        let t = std::time::Instant::now();
        assert!(decode_versioned(&bytes, &Limits { max_depth: 4096, ..Limits::default() }).is_ok());
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
