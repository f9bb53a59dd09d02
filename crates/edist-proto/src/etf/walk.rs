//! Validate and walk a term without building it — the gateway's hot path.

use super::keys::KeyCheck;
use super::reader::{AtomText, Reader, Token};
use super::{inflate, DecodeError, Limits};

/// Receives every token of a walked term, in order.
pub trait Visitor<'a> {
    /// Called for each token; return an error to stop the walk.
    fn token(&mut self, token: &Token<'a>, depth: u32) -> Result<(), DecodeError> {
        let _ = (token, depth);
        Ok(())
    }

    /// Called for each token inside a compressed term (whose bytes live only during the walk,
    /// hence no `'a`); `depth` counts from the compressed term's own level.
    fn inflated_token(&mut self, token: &Token<'_>, depth: u32) -> Result<(), DecodeError> {
        let _ = (token, depth);
        Ok(())
    }
}

/// The `inflated_token` method of some visitor (a trait object, so that walking an inflated term
/// instantiates `walk_in` once, not once per nesting level).
trait InflatedSink {
    fn sink(&mut self, token: &Token<'_>, depth: u32) -> Result<(), DecodeError>;
}

impl<'a, V: Visitor<'a>> InflatedSink for V {
    fn sink(&mut self, token: &Token<'_>, depth: u32) -> Result<(), DecodeError> {
        self.inflated_token(token, depth)
    }
}

/// Hands the tokens of an inflated term to the outer visitor's `inflated_token`.
struct Inflated<'v>(&'v mut dyn InflatedSink);

impl<'b> Visitor<'b> for Inflated<'_> {
    fn token(&mut self, token: &Token<'b>, depth: u32) -> Result<(), DecodeError> {
        self.0.sink(token, depth)
    }

    fn inflated_token(&mut self, token: &Token<'_>, depth: u32) -> Result<(), DecodeError> {
        self.0.sink(token, depth)
    }
}

/// A visitor that does nothing (plain validation).
pub struct NoopVisitor;
impl Visitor<'_> for NoopVisitor {}

/// Validates one term at the reader's position and leaves the reader after it.
///
/// `atom_refs` is the number of atom-cache references the enclosing dist header defined (0 when
/// there is none); a reference beyond it is an error. Compressed terms are inflated (bounded by
/// `limits.max_inflated`), validated, and reported through [`Visitor::inflated_token`].
pub fn walk<'a, V: Visitor<'a>>(
    r: &mut Reader<'a>,
    limits: &Limits,
    atom_refs: usize,
    visitor: &mut V,
) -> Result<(), DecodeError> {
    walk_in(r, limits, atom_refs, visitor, true)
}

/// [`walk`]; `compressed_ok` is false inside an inflated term, which may not be compressed
/// again (as in OTP; nested compression would also recurse once per level).
fn walk_in<'a, V: Visitor<'a>>(
    r: &mut Reader<'a>,
    limits: &Limits,
    atom_refs: usize,
    visitor: &mut V,
    compressed_ok: bool,
) -> Result<(), DecodeError> {
    // Remaining children at each open level; its length is the current depth.
    let mut stack: Vec<u64> = Vec::with_capacity(16);
    stack.push(1);
    // Maps with a repeated key are refused, as OTP refuses them.
    let mut keys = KeyCheck::default();
    while let Some(top) = stack.last_mut() {
        if *top == 0 {
            stack.pop();
            continue;
        }
        *top -= 1;
        let depth = stack.len() as u32;
        let token = r.token()?;
        check_atoms(&token, atom_refs)?;
        if !matches!(token, Token::Compressed { .. }) {
            keys.token(&token, r.position())?;
        }
        if let Token::Compressed { size, data } = &token {
            if depth > 1 || !compressed_ok {
                return Err(DecodeError::UnknownTag { tag: super::tag::COMPRESSED, offset: r.position() });
            }
            let inner = inflate(*size, data, limits)?;
            let mut ir = Reader::new(&inner);
            walk_in(&mut ir, limits, atom_refs, &mut Inflated(&mut *visitor), false)?;
            if ir.remaining() != 0 {
                return Err(DecodeError::TrailingBytes(ir.remaining()));
            }
            continue;
        }
        visitor.token(&token, depth)?;
        let children = token.children();
        if children > 0 {
            if depth >= limits.max_depth {
                return Err(DecodeError::TooDeep(limits.max_depth));
            }
            stack.push(children);
        }
    }
    Ok(())
}

/// Skips one term, returning how many bytes it took.
pub fn skip(buf: &[u8], limits: &Limits) -> Result<usize, DecodeError> {
    let mut r = Reader::new(buf);
    walk(&mut r, limits, 0, &mut NoopVisitor)?;
    Ok(r.position())
}

fn check_atoms(token: &Token<'_>, atom_refs: usize) -> Result<(), DecodeError> {
    let check = |a: &AtomText<'_>| match a {
        AtomText::CacheRef(i) if usize::from(*i) >= atom_refs => Err(DecodeError::BadAtomCacheRef(*i)),
        _ => Ok(()),
    };
    match token {
        Token::Atom(a) | Token::Pid { node: a, .. } | Token::Port { node: a, .. } | Token::Ref { node: a, .. } => {
            check(a)
        }
        Token::Export { module, function, .. } => {
            check(module)?;
            check(function)
        }
        Token::Fun { module, pid, .. } => {
            check(module)?;
            check(&pid.0)
        }
        _ => Ok(()),
    }
}
