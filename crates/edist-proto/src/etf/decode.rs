//! Build an owned [`Term`] from bytes.

use super::keys::KeyCheck;
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
        self.term_at(r, 1, true)
    }

    fn atom(&self, a: AtomText<'_>) -> Result<Atom, DecodeError> {
        match a {
            AtomText::Text(t) => Ok(Atom::from(t.as_ref())),
            AtomText::CacheRef(i) => self.atom_refs.get(usize::from(i)).cloned().ok_or(DecodeError::BadAtomCacheRef(i)),
        }
    }

    /// Decodes the term at `depth`. Nesting is handled with an explicit stack, not recursion:
    /// a term `max_depth` deep must not need `max_depth` call frames (a few KiB each in debug
    /// builds, which overflowed a 2 MiB thread stack). A compressed term is only allowed at the
    /// top (`compressed_ok`), as in OTP; its inflated content may not be compressed again.
    fn term_at(&self, r: &mut Reader<'_>, depth: u32, compressed_ok: bool) -> Result<Term, DecodeError> {
        let mut stack: Vec<Open> = Vec::new();
        // Maps with a repeated key are refused, as OTP refuses them (and as `walk` does).
        let mut keys = KeyCheck::default();
        loop {
            let level = depth.saturating_add(stack.len() as u32);
            let tok = r.token()?;
            if !matches!(tok, Token::Compressed { .. }) {
                keys.token(&tok, r.position())?;
            }
            let mut done = match tok {
                Token::Tuple(_) | Token::Map(_) | Token::List(_) | Token::Fun { .. } => {
                    let n = tok.children();
                    // Only a compound with children nests deeper, as `walk` counts: an empty
                    // tuple, map or fun at the limit is within it (fuzz finding etf_term #1).
                    if n > 0 && level >= self.limits.max_depth {
                        return Err(DecodeError::TooDeep(self.limits.max_depth));
                    }
                    let kind = match tok {
                        Token::Tuple(_) => Kind::Tuple,
                        Token::Map(_) => Kind::Map,
                        Token::List(_) => Kind::List,
                        Token::Fun { arity, uniq, index, module, old_index, old_uniq, pid, .. } => {
                            Kind::Fun(Box::new(Fun {
                                arity,
                                uniq,
                                index,
                                module: self.atom(module)?,
                                old_index,
                                old_uniq,
                                pid: Pid { node: self.atom(pid.0)?, id: pid.1, serial: pid.2, creation: pid.3 },
                                free_vars: Vec::new(),
                            }))
                        }
                        _ => return Err(DecodeError::Malformed { what: "compound", offset: r.position() }),
                    };
                    // The count was checked against the input; still grow gradually (a term
                    // is larger than its encoding).
                    let open = Open { kind, items: Vec::with_capacity(n.min(1024) as usize), total: n };
                    if n > 0 {
                        stack.push(open);
                        continue;
                    }
                    open.close()
                }
                Token::Compressed { size, data } => {
                    if level > 1 || !compressed_ok {
                        return Err(DecodeError::UnknownTag { tag: tag::COMPRESSED, offset: r.position() });
                    }
                    let inner = inflate(size, data, self.limits)?;
                    let mut ir = Reader::new(&inner);
                    let t = self.term_at(&mut ir, level, false)?;
                    if ir.remaining() != 0 {
                        return Err(DecodeError::TrailingBytes(ir.remaining()));
                    }
                    t
                }
                scalar => self.scalar(scalar)?,
            };
            // Hand the finished term to its parent, closing every parent it completes.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Ok(done);
                };
                top.items.push(done);
                if (top.items.len() as u64) < top.total {
                    break;
                }
                match stack.pop() {
                    Some(open) => done = open.close(),
                    None => return Err(DecodeError::Malformed { what: "compound", offset: r.position() }),
                }
            }
        }
    }

    /// A token without children as a term.
    fn scalar(&self, tok: Token<'_>) -> Result<Term, DecodeError> {
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
            Token::Nil => Term::Nil,
            Token::String(s) => Term::String(s.to_vec()),
            Token::Binary(b) => Term::Binary(b.to_vec()),
            Token::BitBinary { data, bits } => {
                if bits == 8 {
                    Term::Binary(data.to_vec())
                } else {
                    // Unused low bits of the last byte are padding: OTP zeroes them.
                    let mut data = data.to_vec();
                    if let Some(last) = data.last_mut() {
                        *last &= 0xffu8 << (8 - bits);
                    }
                    Term::BitBinary { data, bits }
                }
            }
            Token::Export { module, function, arity } => {
                Term::Export { module: self.atom(module)?, function: self.atom(function)?, arity }
            }
            Token::Tuple(_) | Token::Map(_) | Token::List(_) | Token::Fun { .. } | Token::Compressed { .. } => {
                return Err(DecodeError::Malformed { what: "compound", offset: 0 })
            }
        })
    }
}

/// A compound term whose children are being decoded.
struct Open {
    kind: Kind,
    items: Vec<Term>,
    /// How many children it has (for a list: its elements and the tail).
    total: u64,
}

enum Kind {
    Tuple,
    /// Keys and values alternate in `items`.
    Map,
    /// The last item is the tail.
    List,
    /// `items` are the free variables.
    Fun(Box<Fun>),
}

impl Open {
    fn close(self) -> Term {
        let Open { kind, mut items, .. } = self;
        match kind {
            Kind::Tuple => Term::Tuple(items),
            Kind::Map => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut flat = items.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    pairs.push((k, v));
                }
                Term::Map(pairs)
            }
            Kind::List => {
                let tail = items.pop().unwrap_or(Term::Nil);
                if items.is_empty() {
                    // LIST_EXT with zero elements: only the tail is the term.
                    tail
                } else {
                    // `[1 | [2]]` and `[1 | "ab"]` are the lists `[1,2]` and `[1,97,98]`, as
                    // OTP decodes them: a list tail joins the list.
                    match tail {
                        Term::List(more, t) => {
                            items.extend(more);
                            Term::List(items, t)
                        }
                        Term::String(s) => {
                            items.extend(s.into_iter().map(|b| Term::Int(i64::from(b))));
                            Term::List(items, Box::new(Term::Nil))
                        }
                        t => Term::List(items, Box::new(t)),
                    }
                }
            }
            Kind::Fun(mut f) => {
                f.free_vars = items;
                Term::Fun(f)
            }
        }
    }
}
