//! Build an owned [`Term`] from bytes.

use super::reader::{AtomText, Reader, Token};
use super::term::{Atom, Fun, Pid, Port, Ref, Term};
use super::{inflate, tag, DecodeError, Limits};
use num_bigint::{BigInt, Sign};

/// Decodes one term with its leading version byte 131 and checks nothing follows it.
pub fn decode_versioned(buf: &[u8], limits: &Limits) -> Result<Term, DecodeError> {
    let mut r = Reader::new(buf);
    let v = r.u8()?;
    if v != tag::VERSION {
        return Err(DecodeError::BadVersion(v));
    }
    let t = Decoder::new(limits).term(&mut r)?;
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(t)
}

/// Decodes one term (no version byte) from the reader's position.
pub fn decode(r: &mut Reader<'_>, limits: &Limits) -> Result<Term, DecodeError> {
    Decoder::new(limits).term(r)
}

/// A term decoder with limits and, inside a dist header, the header's atom-cache references.
pub struct Decoder<'l> {
    limits: &'l Limits,
    atom_refs: &'l [Atom],
}

impl<'l> Decoder<'l> {
    /// A decoder without atom-cache references.
    pub fn new(limits: &'l Limits) -> Self {
        Decoder { limits, atom_refs: &[] }
    }

    /// A decoder resolving ATOM_CACHE_REF through `atom_refs` (the header's reference list).
    pub fn with_atom_refs(limits: &'l Limits, atom_refs: &'l [Atom]) -> Self {
        Decoder { limits, atom_refs }
    }

    /// Decodes one term from the reader's position.
    pub fn term(&self, r: &mut Reader<'_>) -> Result<Term, DecodeError> {
        self.term_at(r, 1)
    }

    fn atom(&self, a: AtomText<'_>) -> Result<Atom, DecodeError> {
        match a {
            AtomText::Text(t) => Ok(Atom::from(t.as_ref())),
            AtomText::CacheRef(i) => self.atom_refs.get(usize::from(i)).cloned().ok_or(DecodeError::BadAtomCacheRef(i)),
        }
    }

    fn children(&self, r: &mut Reader<'_>, n: u64, depth: u32) -> Result<Vec<Term>, DecodeError> {
        if depth >= self.limits.max_depth {
            return Err(DecodeError::TooDeep(self.limits.max_depth));
        }
        // The count was checked against the input; still grow gradually (a term is larger
        // than its encoding).
        let mut v = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            v.push(self.term_at(r, depth + 1)?);
        }
        Ok(v)
    }

    fn term_at(&self, r: &mut Reader<'_>, depth: u32) -> Result<Term, DecodeError> {
        let tok = r.token()?;
        Ok(match tok {
            Token::Atom(a) => Term::Atom(self.atom(a)?),
            Token::Int(i) => Term::Int(i),
            Token::Big { negative, digits } => {
                let sign = if negative { Sign::Minus } else { Sign::Plus };
                Term::from_bigint(BigInt::from_bytes_le(sign, digits))
            }
            Token::Float(f) => Term::Float(f),
            Token::Pid { node, id, serial, creation } => {
                Term::Pid(Pid { node: self.atom(node)?, id, serial, creation })
            }
            Token::Port { node, id, creation } => Term::Port(Port { node: self.atom(node)?, id, creation }),
            Token::Ref { node, creation, ids } => Term::Ref(Ref {
                node: self.atom(node)?,
                creation,
                ids: ids.chunks_exact(4).filter_map(|c| <[u8; 4]>::try_from(c).ok()).map(u32::from_be_bytes).collect(),
            }),
            Token::Tuple(n) => Term::Tuple(self.children(r, u64::from(n), depth)?),
            Token::Map(n) => {
                let mut flat = self.children(r, 2 * u64::from(n), depth)?.into_iter();
                let mut pairs = Vec::with_capacity(n.min(1024) as usize);
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    pairs.push((k, v));
                }
                Term::Map(pairs)
            }
            Token::Nil => Term::Nil,
            Token::String(s) => Term::String(s.to_vec()),
            Token::List(n) => {
                let mut items = self.children(r, u64::from(n) + 1, depth)?;
                let tail = items.pop().unwrap_or(Term::Nil);
                if items.is_empty() {
                    // LIST_EXT with zero elements: only the tail is the term.
                    tail
                } else {
                    Term::List(items, Box::new(tail))
                }
            }
            Token::Binary(b) => Term::Binary(b.to_vec()),
            Token::BitBinary { data, bits } => {
                if bits == 8 {
                    Term::Binary(data.to_vec())
                } else {
                    Term::BitBinary { data: data.to_vec(), bits }
                }
            }
            Token::Export { module, function, arity } => {
                Term::Export { module: self.atom(module)?, function: self.atom(function)?, arity }
            }
            Token::Fun { arity, uniq, index, module, old_index, old_uniq, pid, num_free } => {
                let free_vars = self.children(r, u64::from(num_free), depth)?;
                Term::Fun(Box::new(Fun {
                    arity,
                    uniq,
                    index,
                    module: self.atom(module)?,
                    old_index,
                    old_uniq,
                    pid: Pid { node: self.atom(pid.0)?, id: pid.1, serial: pid.2, creation: pid.3 },
                    free_vars,
                }))
            }
            Token::Compressed { size, data } => {
                if depth > 1 {
                    return Err(DecodeError::UnknownTag { tag: tag::COMPRESSED, offset: r.position() });
                }
                let inner = inflate(size, data, self.limits)?;
                let mut ir = Reader::new(&inner);
                let t = self.term_at(&mut ir, depth)?;
                if ir.remaining() != 0 {
                    return Err(DecodeError::TrailingBytes(ir.remaining()));
                }
                t
            }
        })
    }
}
