//! Encode a [`Term`] in the External Term Format, the way OTP 25's `term_to_binary` does.

use super::tag;
use super::term::{Atom, Pid, Term};
use num_bigint::Sign;

/// Encodes a term without the version byte (as it appears after a dist header).
pub fn encode(t: &Term) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len_hint(t));
    encode_into(&mut out, t);
    out
}

/// Encodes a term with the leading version byte 131 (as `term_to_binary/1` produces).
pub fn encode_versioned(t: &Term) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + encoded_len_hint(t));
    out.push(tag::VERSION);
    encode_into(&mut out, t);
    out
}

/// A cheap lower bound of the encoded size, good for pre-allocation.
pub fn encoded_len_hint(t: &Term) -> usize {
    match t {
        Term::Binary(b) | Term::String(b) => b.len() + 5,
        Term::BitBinary { data, .. } => data.len() + 6,
        Term::Tuple(items) => 5 + items.iter().map(encoded_len_hint).sum::<usize>(),
        Term::List(items, tail) => 5 + encoded_len_hint(tail) + items.iter().map(encoded_len_hint).sum::<usize>(),
        _ => 16,
    }
}

/// Appends the encoding of `t` (no version byte) to `out`.
pub fn encode_into(out: &mut Vec<u8>, t: &Term) {
    match t {
        Term::Atom(a) => atom(out, a),
        Term::Int(i) => int(out, *i),
        Term::Big(b) => {
            let (sign, digits) = b.to_bytes_le();
            big(out, sign == Sign::Minus, &digits);
        }
        Term::Float(f) => {
            out.push(tag::NEW_FLOAT);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Term::Pid(p) => pid(out, p),
        Term::Port(p) => {
            if p.id > u64::from(u32::MAX) {
                out.push(tag::V4_PORT);
                atom(out, &p.node);
                out.extend_from_slice(&p.id.to_be_bytes());
            } else {
                out.push(tag::NEW_PORT);
                atom(out, &p.node);
                out.extend_from_slice(&(p.id as u32).to_be_bytes());
            }
            out.extend_from_slice(&p.creation.to_be_bytes());
        }
        Term::Ref(r) => {
            out.push(tag::NEWER_REFERENCE);
            out.extend_from_slice(&(r.ids.len() as u16).to_be_bytes());
            atom(out, &r.node);
            out.extend_from_slice(&r.creation.to_be_bytes());
            for id in &r.ids {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Term::Tuple(items) => {
            if items.len() < 256 {
                out.push(tag::SMALL_TUPLE);
                out.push(items.len() as u8);
            } else {
                out.push(tag::LARGE_TUPLE);
                out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            }
            items.iter().for_each(|i| encode_into(out, i));
        }
        Term::Nil => out.push(tag::NIL),
        Term::String(s) => string_or_list(out, s),
        Term::List(items, tail) if matches!(**tail, Term::Nil) && is_byte_list(items) => {
            // OTP writes a proper list of small integers as STRING_EXT, whatever its origin;
            // equal terms must encode equally.
            out.push(tag::STRING);
            out.extend_from_slice(&(items.len() as u16).to_be_bytes());
            out.extend(items.iter().filter_map(|i| match i {
                Term::Int(b) => u8::try_from(*b).ok(),
                _ => None,
            }));
        }
        Term::List(items, tail) => {
            out.push(tag::LIST);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            items.iter().for_each(|i| encode_into(out, i));
            encode_into(out, tail);
        }
        Term::Map(pairs) => {
            out.push(tag::MAP);
            out.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
            for (k, v) in pairs {
                encode_into(out, k);
                encode_into(out, v);
            }
        }
        Term::Binary(b) => {
            out.push(tag::BINARY);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        Term::BitBinary { data, bits } => {
            out.push(tag::BIT_BINARY);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.push(*bits);
            out.extend_from_slice(data);
        }
        Term::Export { module, function, arity } => {
            out.push(tag::EXPORT);
            atom(out, module);
            atom(out, function);
            out.push(tag::SMALL_INTEGER);
            out.push(*arity);
        }
        Term::Fun(f) => {
            let start = out.len();
            out.push(tag::NEW_FUN);
            out.extend_from_slice(&[0; 4]); // size, patched below
            out.push(f.arity);
            out.extend_from_slice(&f.uniq);
            out.extend_from_slice(&f.index.to_be_bytes());
            out.extend_from_slice(&(f.free_vars.len() as u32).to_be_bytes());
            atom(out, &f.module);
            int(out, f.old_index);
            int(out, f.old_uniq);
            pid(out, &f.pid);
            f.free_vars.iter().for_each(|v| encode_into(out, v));
            let size = ((out.len() - start - 1) as u32).to_be_bytes();
            if let Some(slot) = out.get_mut(start + 1..start + 5) {
                slot.copy_from_slice(&size);
            }
        }
    }
}

/// Writes an atom as SMALL_ATOM_UTF8_EXT or ATOM_UTF8_EXT.
pub(crate) fn atom(out: &mut Vec<u8>, a: &Atom) {
    let b = a.as_str().as_bytes();
    if b.len() < 256 {
        out.push(tag::SMALL_ATOM_UTF8);
        out.push(b.len() as u8);
    } else {
        out.push(tag::ATOM_UTF8);
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn pid(out: &mut Vec<u8>, p: &Pid) {
    out.push(tag::NEW_PID);
    atom(out, &p.node);
    out.extend_from_slice(&p.id.to_be_bytes());
    out.extend_from_slice(&p.serial.to_be_bytes());
    out.extend_from_slice(&p.creation.to_be_bytes());
}

fn int(out: &mut Vec<u8>, i: i64) {
    if (0..=255).contains(&i) {
        out.push(tag::SMALL_INTEGER);
        out.push(i as u8);
    } else if let Ok(i) = i32::try_from(i) {
        out.push(tag::INTEGER);
        out.extend_from_slice(&i.to_be_bytes());
    } else {
        let mag = i.unsigned_abs().to_le_bytes();
        let n = 8 - mag.iter().rev().take_while(|b| **b == 0).count();
        big(out, i < 0, mag.get(..n).unwrap_or_default());
    }
}

fn big(out: &mut Vec<u8>, negative: bool, digits: &[u8]) {
    if digits.len() < 256 {
        out.push(tag::SMALL_BIG);
        out.push(digits.len() as u8);
    } else {
        out.push(tag::LARGE_BIG);
        out.extend_from_slice(&(digits.len() as u32).to_be_bytes());
    }
    out.push(u8::from(negative));
    out.extend_from_slice(digits);
}

/// Whether a proper list's elements fit STRING_EXT: 1 to 65535 integers in 0..=255.
fn is_byte_list(items: &[Term]) -> bool {
    !items.is_empty() && items.len() <= usize::from(u16::MAX) && items.iter().all(|i| matches!(i, Term::Int(0..=255)))
}

/// A byte list goes out as STRING_EXT when it fits (as OTP does), else as a LIST_EXT of ints.
fn string_or_list(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.push(tag::NIL);
    } else if s.len() <= usize::from(u16::MAX) {
        out.push(tag::STRING);
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    } else {
        out.push(tag::LIST);
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        for b in s {
            out.push(tag::SMALL_INTEGER);
            out.push(*b);
        }
        out.push(tag::NIL);
    }
}
