//! Erlang term text: print a [`Term`] the way `io:format("~p")` does (on one line), and parse
//! Erlang term syntax back into a [`Term`].
//!
//! Printing follows `~p` with these choices for a Rust (UTF-8) world:
//!
//! * elements are separated by `,` without a space (as `~w` and one-line `~p` do); maps use
//!   `#{k => v,k2 => v2}`;
//! * atoms are quoted only when needed (`'hello world'`, `'Abc'`, `''`, reserved words); non
//!   Latin-1 characters are written as themselves (`'日本'`, as `~tp` does);
//! * a list prints as a string when it is a proper list of printable Latin-1 characters (the
//!   default `+pc latin1` rule), otherwise as `[1,2,3]` / `[a|b]`;
//! * a binary prints as `<<"héllo"/utf8>>` when it is printable UTF-8 with non-ASCII characters,
//!   as `<<"abc">>` when it is printable Latin-1, otherwise as `<<1,2,3>>`; bitstrings as
//!   `<<1,2,3:5>>`;
//! * floats use OTP's shortest round-trip form (`float_to_list(F, [short])`: `1.0`, `3.14`,
//!   `1.0e100`, `1.0e3`);
//! * pids, ports, references and funs, which have no source syntax, print with the node name in
//!   place of OTP's local node number: `<b@host.84.0>`, `#Port<b@host.3>`,
//!   `#Ref<b@host.3.2.1>` (id words most significant first, as OTP prints them),
//!   `#Fun<erl_eval.45.65746770>` (module, old index, old uniq); exports as `fun m:f/1`.
//!
//! [`parse`] reads atoms, integers (`16#FF`, `$a`, bignums), floats, strings, binaries
//! (`<<"abc">>`, `<<1,2,3:5>>`, `<<"é"/utf8>>`, `/integer`, `/float`, `/utf8|16|32`,
//! `/big|little`, `/signed|unsigned`, `:Size`, `unit:N`), tuples, lists, improper lists, maps,
//! `fun M:F/A` exports, `%` comments and an optional trailing `.`. Nesting is bounded by
//! [`MAX_DEPTH`] so hostile input cannot overflow the stack.

use super::encode::encode;
use super::term::{Atom, Term};
use num_bigint::{BigInt, Sign};
use num_traits::{One, ToPrimitive};
use std::collections::HashMap;
use std::fmt::{self, Write};
use thiserror::Error;

/// Maximum nesting of tuples, lists, maps and binaries [`parse`] accepts.
pub const MAX_DEPTH: usize = 512;

/// Maximum size of a binary [`parse`] builds (16 MiB), so a short text cannot allocate much.
pub const MAX_BINARY_BYTES: u64 = 16 << 20;

const MAX_ATOM_CHARS: usize = 255;

/// Reserved words: an atom spelled like one must be quoted. `maybe` and `else` are only
/// reserved from OTP 27 on (or with the `maybe_expr` feature), so they are quoted when printed
/// but accepted bare when parsed.
const RESERVED: &[&str] = &[
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case", "catch", "cond", "div",
    "end", "fun", "if", "let", "not", "of", "or", "orelse", "receive", "rem", "try", "when", "xor", "maybe", "else",
];

// ------------------------------------------------------------------------------------------------
// Printing
// ------------------------------------------------------------------------------------------------

/// Writes a term as Erlang term text (see the module documentation for the format).
///
/// Works with an explicit stack, so arbitrarily deep terms cannot overflow the call stack.
pub fn write_term(f: &mut fmt::Formatter<'_>, t: &Term) -> fmt::Result {
    write_to(f, t)
}

enum Job<'a> {
    Term(&'a Term),
    Byte(u8),
    Lit(&'static str),
}

fn write_to<W: Write>(w: &mut W, t: &Term) -> fmt::Result {
    let mut stack = vec![Job::Term(t)];
    while let Some(job) = stack.pop() {
        let t = match job {
            Job::Lit(s) => {
                w.write_str(s)?;
                continue;
            }
            Job::Byte(b) => {
                write!(w, "{b}")?;
                continue;
            }
            Job::Term(t) => t,
        };
        match t {
            Term::Atom(a) => write_atom(w, a.as_str())?,
            Term::Int(i) => write!(w, "{i}")?,
            Term::Big(b) => write!(w, "{b}")?,
            Term::Float(x) => write_float(w, *x)?,
            Term::Pid(p) => {
                w.write_char('<')?;
                write_node(w, p.node.as_str())?;
                write!(w, ".{}.{}>", p.id, p.serial)?;
            }
            Term::Port(p) => {
                w.write_str("#Port<")?;
                write_node(w, p.node.as_str())?;
                write!(w, ".{}>", p.id)?;
            }
            Term::Ref(r) => {
                w.write_str("#Ref<")?;
                write_node(w, r.node.as_str())?;
                for id in r.ids.iter().rev() {
                    write!(w, ".{id}")?;
                }
                w.write_char('>')?;
            }
            Term::Fun(fun) => {
                w.write_str("#Fun<")?;
                write_atom(w, fun.module.as_str())?;
                write!(w, ".{}.{}>", fun.old_index, fun.old_uniq)?;
            }
            Term::Export { module, function, arity } => {
                w.write_str("fun ")?;
                write_atom(w, module.as_str())?;
                w.write_char(':')?;
                write_atom(w, function.as_str())?;
                write!(w, "/{arity}")?;
            }
            Term::Tuple(items) => {
                w.write_char('{')?;
                stack.push(Job::Lit("}"));
                push_seq(&mut stack, items.iter().map(Job::Term));
            }
            Term::Map(pairs) => {
                w.write_str("#{")?;
                stack.push(Job::Lit("}"));
                for (i, (k, v)) in pairs.iter().enumerate().rev() {
                    stack.push(Job::Term(v));
                    stack.push(Job::Lit(" => "));
                    stack.push(Job::Term(k));
                    if i > 0 {
                        stack.push(Job::Lit(","));
                    }
                }
            }
            Term::Nil | Term::String(_) | Term::List(..) => {
                let (elems, tail) = flatten_list(t);
                if elems.is_empty() {
                    // `[]`, or a zero-length LIST_EXT, which is just its tail.
                    match tail {
                        None => w.write_str("[]")?,
                        Some(tail) => stack.push(Job::Term(tail)),
                    }
                } else if tail.is_none() && elems.iter().all(|e| e.byte().is_some_and(printable_latin1)) {
                    w.write_char('"')?;
                    for b in elems.iter().filter_map(Elem::byte) {
                        write_quoted_char(w, char::from(b), '"')?;
                    }
                    w.write_char('"')?;
                } else {
                    w.write_char('[')?;
                    stack.push(Job::Lit("]"));
                    if let Some(tail) = tail {
                        stack.push(Job::Term(tail));
                        stack.push(Job::Lit("|"));
                    }
                    push_seq(
                        &mut stack,
                        elems.into_iter().map(|e| match e {
                            Elem::Term(t) => Job::Term(t),
                            Elem::Byte(b) => Job::Byte(b),
                        }),
                    );
                }
            }
            Term::Binary(b) => write_binary(w, b)?,
            Term::BitBinary { data, bits } => write_bitstring(w, data, *bits)?,
        }
    }
    Ok(())
}

/// Pushes `items` so that they pop in order, separated by `,`.
fn push_seq<'a>(stack: &mut Vec<Job<'a>>, items: impl DoubleEndedIterator<Item = Job<'a>> + ExactSizeIterator) {
    for (i, job) in items.enumerate().rev() {
        stack.push(job);
        if i > 0 {
            stack.push(Job::Lit(","));
        }
    }
}

#[derive(Clone, Copy)]
enum Elem<'a> {
    Term(&'a Term),
    Byte(u8),
}

impl Elem<'_> {
    fn byte(&self) -> Option<u8> {
        match self {
            Elem::Byte(b) => Some(*b),
            Elem::Term(Term::Int(i)) => u8::try_from(*i).ok(),
            Elem::Term(_) => None,
        }
    }
}

/// The elements of a list (following list-valued tails) and its final tail (`None` for `[]`).
fn flatten_list(mut t: &Term) -> (Vec<Elem<'_>>, Option<&Term>) {
    let mut elems = Vec::new();
    loop {
        match t {
            Term::Nil => return (elems, None),
            Term::String(s) => {
                elems.extend(s.iter().map(|b| Elem::Byte(*b)));
                return (elems, None);
            }
            Term::List(items, tail) => {
                elems.extend(items.iter().map(Elem::Term));
                t = tail;
            }
            other => return (elems, Some(other)),
        }
    }
}

/// `io_lib:printable_latin1_list/1` for one character.
fn printable_latin1(b: u8) -> bool {
    matches!(b, 32..=126 | 160..=255 | 8..=13 | 27)
}

/// `io_lib:printable_unicode_list/1` for one character.
fn printable_unicode(c: char) -> bool {
    let c = u32::from(c);
    matches!(c, 32..=126 | 8..=13 | 27 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Writes one character inside a quoted atom (`q = '\''`) or string (`q = '"'`) like
/// `io_lib:write_string/2`.
fn write_quoted_char<W: Write>(w: &mut W, c: char, q: char) -> fmt::Result {
    match c {
        c if c == q => {
            w.write_char('\\')?;
            w.write_char(c)
        }
        '\\' => w.write_str("\\\\"),
        ' '..='~' => w.write_char(c),
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\t' => w.write_str("\\t"),
        '\u{b}' => w.write_str("\\v"),
        '\u{8}' => w.write_str("\\b"),
        '\u{c}' => w.write_str("\\f"),
        '\u{1b}' => w.write_str("\\e"),
        '\u{7f}' => w.write_str("\\d"),
        c if u32::from(c) < 0xA0 => write!(w, "\\{:03o}", u32::from(c)),
        c => w.write_char(c),
    }
}

/// Whether a character may start an unquoted atom: `a..z`, `ß..ÿ` except `÷`.
fn atom_start(c: char) -> bool {
    c.is_ascii_lowercase() || (('ß'..='ÿ').contains(&c) && c != '÷')
}

/// Whether a character may continue an unquoted atom.
fn name_char(c: char) -> bool {
    atom_start(c) || c.is_ascii_alphanumeric() || c == '_' || c == '@' || (('À'..='Þ').contains(&c) && c != '×')
}

fn atom_needs_quotes(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if atom_start(c) => !chars.all(name_char) || RESERVED.contains(&s),
        _ => true,
    }
}

fn write_atom<W: Write>(w: &mut W, s: &str) -> fmt::Result {
    if atom_needs_quotes(s) {
        w.write_char('\'')?;
        for c in s.chars() {
            write_quoted_char(w, c, '\'')?;
        }
        w.write_char('\'')
    } else {
        w.write_str(s)
    }
}

/// Writes a node name inside a pid, port or ref: as is when it looks like one (`a@host.com`),
/// otherwise as a quoted atom, so a hostile name cannot break the line or the brackets.
fn write_node<W: Write>(w: &mut W, node: &str) -> fmt::Result {
    if !node.is_empty() && node.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | '-')) {
        w.write_str(node)
    } else {
        write_atom(w, node)
    }
}

fn write_binary<W: Write>(w: &mut W, b: &[u8]) -> fmt::Result {
    if let Ok(s) = std::str::from_utf8(b) {
        if !s.is_ascii() && s.chars().all(printable_unicode) {
            w.write_str("<<\"")?;
            for c in s.chars() {
                write_quoted_char(w, c, '"')?;
            }
            return w.write_str("\"/utf8>>");
        }
    }
    if !b.is_empty() && b.iter().all(|b| printable_latin1(*b)) {
        w.write_str("<<\"")?;
        for c in b {
            write_quoted_char(w, char::from(*c), '"')?;
        }
        return w.write_str("\">>");
    }
    w.write_str("<<")?;
    for (i, c) in b.iter().enumerate() {
        if i > 0 {
            w.write_char(',')?;
        }
        write!(w, "{c}")?;
    }
    w.write_str(">>")
}

fn write_bitstring<W: Write>(w: &mut W, data: &[u8], bits: u8) -> fmt::Result {
    let Some((last, whole)) = data.split_last() else {
        return w.write_str("<<>>");
    };
    if bits >= 8 || bits == 0 {
        return write_binary(w, data);
    }
    w.write_str("<<")?;
    for c in whole {
        write!(w, "{c},")?;
    }
    write!(w, "{}:{bits}>>", last >> (8 - bits))
}

/// Writes a float like OTP's `float_to_list(F, [short])` (which `~p` uses since OTP 25): the
/// shortest digits that read back as the same float, in fixed notation when that is not longer
/// (roughly), in scientific notation for large or tiny magnitudes and from 2^53 on.
fn write_float<W: Write>(w: &mut W, x: f64) -> fmt::Result {
    if !x.is_finite() {
        // No Erlang float is NaN or infinite; print something recognisable.
        return write!(w, "{x}");
    }
    if x.is_sign_negative() {
        w.write_char('-')?;
    }
    if x == 0.0 {
        return w.write_str("0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Ryu does: "d.ddde-N".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let sci_exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let even = tie_to_even(x.abs(), digits, sci_exp);
    let digits = even.as_deref().unwrap_or(digits);
    let olength = digits.len() as i64;
    let ryu_exp = sci_exp - (olength - 1);
    let output: u64 = digits.parse().unwrap_or(0);
    // The choice made by OTP's erts/emulator/ryu/to_chars.h.
    let (lower, upper) = if olength == 1 {
        (-4, 2)
    } else if sci_exp >= 10 {
        (-(olength + 2), 2)
    } else {
        (-(olength + 2), 1)
    };
    let fixed = (lower..=upper).contains(&ryu_exp)
        && !((output >= 1 << 53 && ryu_exp == 0)
            || (output > (1 << 52) / 5 && ryu_exp == 1)
            || (output > (1 << 51) / 25 && ryu_exp == 2));
    if fixed {
        let whole = olength + ryu_exp;
        if ryu_exp >= 0 {
            w.write_str(digits)?;
            for _ in 0..ryu_exp {
                w.write_char('0')?;
            }
            w.write_str(".0")
        } else if whole > 0 {
            let (a, b) = (digits.get(..whole as usize), digits.get(whole as usize..));
            write!(w, "{}.{}", a.unwrap_or(""), b.unwrap_or(""))
        } else {
            w.write_str("0.")?;
            for _ in 0..-whole {
                w.write_char('0')?;
            }
            w.write_str(digits)
        }
    } else {
        let (first, rest) = (digits.get(..1).unwrap_or("0"), digits.get(1..).unwrap_or(""));
        let rest = if rest.is_empty() { "0" } else { rest };
        write!(w, "{first}.{rest}e{sci_exp}")
    }
}

/// Ryu breaks a tie between two equally short, equally near digit strings towards the even one;
/// Rust's shortest formatting rounds the tie up. When `x` lies exactly halfway between
/// `digits - 1` and `digits` (or `digits` and `digits + 1`) in the last place, returns the even
/// candidate if it also reads back as `x`.
fn tie_to_even(x: f64, digits: &str, sci_exp: i64) -> Option<String> {
    let n = digits.len();
    // Cheap filter: one more significant digit must be a 5 for a tie.
    let one_more = format!("{:.*e}", n, x);
    if !one_more.split_once('e')?.0.ends_with('5') {
        return None;
    }
    // The exact expansion (a double has at most 767 significant digits).
    let exact = format!("{:.800e}", x);
    let (mantissa, exp) = exact.split_once('e')?;
    if exp.parse::<i64>().ok()? != sci_exp {
        return None;
    }
    let all: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let (head, rest) = (all.get(..n)?, all.get(n..)?);
    let mut rest = rest.chars();
    if rest.next()? != '5' || !rest.all(|c| c == '0') {
        return None;
    }
    let t: u64 = head.parse().ok()?;
    let even = if t & 1 == 0 { t } else { t.checked_add(1)? }.to_string();
    if even.len() != n || even == digits {
        return None;
    }
    let text = format!("{}.{}e{sci_exp}", even.get(..1)?, even.get(1..)?);
    (text.parse::<f64>().ok()? == x).then(|| even.trim_end_matches('0').to_owned()).filter(|s| !s.is_empty())
}

// ------------------------------------------------------------------------------------------------
// Parsing
// ------------------------------------------------------------------------------------------------

/// Why Erlang term text could not be parsed. Offsets are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input ended inside a term.
    #[error("unexpected end of input at offset {offset}")]
    UnexpectedEnd { offset: usize },
    /// A character that cannot appear here.
    #[error("unexpected {found:?} at offset {offset}, expected {expected}")]
    Unexpected { offset: usize, found: char, expected: &'static str },
    /// A malformed number: bad base, digit out of range, float out of range.
    #[error("invalid number at offset {offset}")]
    BadNumber { offset: usize },
    /// A malformed escape sequence or a character code that is not a character.
    #[error("invalid escape sequence or character at offset {offset}")]
    BadEscape { offset: usize },
    /// A string, quoted atom or character literal is not closed.
    #[error("unterminated {what} starting at offset {offset}")]
    Unterminated { offset: usize, what: &'static str },
    /// An atom of more than 255 characters.
    #[error("atom longer than 255 characters at offset {offset}")]
    AtomTooLong { offset: usize },
    /// A variable where a term was expected (terms are ground).
    #[error("variable {name} at offset {offset} is not a term")]
    Variable { offset: usize, name: String },
    /// A reserved word used as a bare atom.
    #[error("reserved word `{word}` at offset {offset} must be quoted to be an atom")]
    ReservedWord { offset: usize, word: String },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("term nested deeper than {limit} at offset {offset}")]
    TooDeep { offset: usize, limit: usize },
    /// A binary segment this parser cannot build, or a binary over [`MAX_BINARY_BYTES`].
    #[error("invalid binary segment at offset {offset}: {reason}")]
    BadSegment { offset: usize, reason: &'static str },
    /// Something other than whitespace (or one `.`) follows the term.
    #[error("unexpected input after the term at offset {offset}")]
    Trailing { offset: usize },
}

impl ParseError {
    /// The byte offset in the input the error refers to.
    pub fn offset(&self) -> usize {
        match self {
            ParseError::UnexpectedEnd { offset }
            | ParseError::Unexpected { offset, .. }
            | ParseError::BadNumber { offset }
            | ParseError::BadEscape { offset }
            | ParseError::Unterminated { offset, .. }
            | ParseError::AtomTooLong { offset }
            | ParseError::Variable { offset, .. }
            | ParseError::ReservedWord { offset, .. }
            | ParseError::TooDeep { offset, .. }
            | ParseError::BadSegment { offset, .. }
            | ParseError::Trailing { offset } => *offset,
        }
    }
}

/// Parses one Erlang term written in Erlang syntax, optionally followed by `.`.
///
/// Integers that fit an `i64` become [`Term::Int`], others [`Term::Big`]; a string whose
/// characters are all ≤ 255 becomes [`Term::String`], otherwise a [`Term::List`] of code points;
/// `[a|[b]]` is normalised to `[a,b]`; a map key given twice keeps its last value (as Erlang
/// does).
pub fn parse(s: &str) -> Result<Term, ParseError> {
    let mut p = Parser { src: s, pos: 0, depth: 0 };
    let t = p.term()?;
    p.skip_ws();
    if p.peek() == Some('.') {
        p.pos += 1;
        p.skip_ws();
    }
    if p.pos < s.len() {
        return Err(ParseError::Trailing { offset: p.pos });
    }
    Ok(t)
}

impl std::str::FromStr for Term {
    type Err = ParseError;

    /// Parses Erlang term text; see [`parse`].
    fn from_str(s: &str) -> Result<Term, ParseError> {
        parse(s)
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
}

enum Number {
    Int(BigInt),
    Float(f64),
}

impl Number {
    fn into_term(self) -> Term {
        match self {
            Number::Int(i) => Term::from_bigint(i),
            Number::Float(f) => Term::Float(f),
        }
    }
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.rest().chars().nth(n)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    /// An error for whatever is at the current position.
    fn unexpected(&self, expected: &'static str) -> ParseError {
        match self.peek() {
            Some(found) => ParseError::Unexpected { offset: self.pos, found, expected },
            None => ParseError::UnexpectedEnd { offset: self.pos },
        }
    }

    fn expect(&mut self, c: char, expected: &'static str) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    /// Skips whitespace (as erl_scan: characters up to space, and U+0080..U+00A0) and `%`
    /// comments.
    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c <= ' ' || ('\u{80}'..='\u{a0}').contains(&c) {
                self.pos += c.len_utf8();
            } else if c == '%' {
                let rest = self.rest();
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else {
                break;
            }
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::TooDeep { offset: self.pos, limit: MAX_DEPTH });
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn term(&mut self) -> Result<Term, ParseError> {
        self.skip_ws();
        let at = self.pos;
        let c = self.peek().ok_or(ParseError::UnexpectedEnd { offset: at })?;
        match c {
            '{' | '[' | '#' | '<' => {
                self.enter()?;
                let t = match c {
                    '{' => self.tuple(),
                    '[' => self.list(),
                    '#' => self.map(),
                    _ => self.binary(),
                }?;
                self.leave();
                Ok(t)
            }
            '"' => Ok(chars_to_term(self.string_chars()?)),
            '\'' => Ok(Term::Atom(self.quoted_atom()?)),
            '$' | '0'..='9' | '-' | '+' => Ok(self.signed_number()?.into_term()),
            c if atom_start(c) => {
                let word = self.bare_word();
                if word == "fun" {
                    return self.export();
                }
                check_bare_atom(word, at)?;
                Ok(Term::Atom(Atom::from(word)))
            }
            c if c.is_ascii_uppercase() || c == '_' || (('À'..='Þ').contains(&c) && c != '×') => {
                Err(ParseError::Variable { offset: at, name: self.bare_word().to_owned() })
            }
            _ => Err(self.unexpected("a term")),
        }
    }

    fn tuple(&mut self) -> Result<Term, ParseError> {
        self.bump();
        self.skip_ws();
        let mut items = Vec::new();
        if self.eat('}') {
            return Ok(Term::Tuple(items));
        }
        loop {
            items.push(self.term()?);
            self.skip_ws();
            if self.eat(',') {
                continue;
            }
            self.expect('}', "',' or '}'")?;
            return Ok(Term::Tuple(items));
        }
    }

    fn list(&mut self) -> Result<Term, ParseError> {
        self.bump();
        self.skip_ws();
        if self.eat(']') {
            return Ok(Term::Nil);
        }
        let mut items = Vec::new();
        loop {
            items.push(self.term()?);
            self.skip_ws();
            if self.eat(',') {
                continue;
            }
            let tail = if self.eat('|') {
                let tail = self.term()?;
                self.skip_ws();
                tail
            } else {
                Term::Nil
            };
            self.expect(']', "',', '|' or ']'")?;
            return Ok(make_list(items, tail));
        }
    }

    fn map(&mut self) -> Result<Term, ParseError> {
        self.bump();
        self.skip_ws();
        self.expect('{', "'{' after '#'")?;
        self.skip_ws();
        let mut pairs: Vec<(Term, Term)> = Vec::new();
        if self.eat('}') {
            return Ok(Term::Map(pairs));
        }
        // Keys are compared by value, as `=:=` in OTP 25 does (`"ab"` and `[97,98]`, `0.0` and
        // `-0.0`, maps in any order are one key; see `etf::term_hash`); a repeated key keeps the
        // last value, in the first key's place, so the map encodes as OTP accepts it.
        let mut seen: HashMap<u128, usize> = HashMap::new();
        loop {
            let k = self.term()?;
            self.skip_ws();
            if !self.eat_str("=>") {
                return Err(self.unexpected("'=>'"));
            }
            let v = self.term()?;
            let encoded = encode(&k);
            let key = super::term_hash(&encoded).unwrap_or(u128::MAX - pairs.len() as u128);
            match seen.get(&key).and_then(|i| pairs.get_mut(*i)) {
                Some(slot) => slot.1 = v,
                None => {
                    seen.insert(key, pairs.len());
                    pairs.push((k, v));
                }
            }
            self.skip_ws();
            if self.eat(',') {
                continue;
            }
            self.expect('}', "',' or '}'")?;
            return Ok(Term::Map(pairs));
        }
    }

    fn binary(&mut self) -> Result<Term, ParseError> {
        self.bump();
        self.expect('<', "'<<'")?;
        let mut bits = Bits::default();
        self.skip_ws();
        if !self.eat_str(">>") {
            loop {
                self.segment(&mut bits)?;
                self.skip_ws();
                if self.eat(',') {
                    continue;
                }
                if self.eat_str(">>") {
                    break;
                }
                return Err(self.unexpected("',' or '>>'"));
            }
        }
        Ok(bits.into_term())
    }

    fn segment(&mut self, bits: &mut Bits) -> Result<(), ParseError> {
        self.skip_ws();
        let at = self.pos;
        let value = match self.peek() {
            Some('"') => SegValue::Chars(self.string_chars()?),
            Some('$' | '0'..='9' | '-' | '+') => SegValue::Num(self.signed_number()?),
            _ => return Err(self.unexpected("a binary segment")),
        };
        self.skip_ws();
        let size = if self.eat(':') {
            self.skip_ws();
            let s = self.pos;
            let digits = self.digit_run(10)?;
            Some(digits.parse::<u64>().map_err(|_| ParseError::BadNumber { offset: s })?)
        } else {
            None
        };
        self.skip_ws();
        let mut spec = Spec::default();
        if self.eat('/') {
            loop {
                self.skip_ws();
                let wat = self.pos;
                let word = self.bare_word();
                match word {
                    "integer" => spec.kind = Kind::Integer,
                    "float" => spec.kind = Kind::Float,
                    "binary" | "bytes" => spec.kind = Kind::Binary,
                    "utf8" => spec.kind = Kind::Utf8,
                    "utf16" => spec.kind = Kind::Utf16,
                    "utf32" => spec.kind = Kind::Utf32,
                    "big" => spec.little = false,
                    "little" => spec.little = true,
                    "signed" | "unsigned" => {}
                    "unit" => {
                        self.skip_ws();
                        self.expect(':', "':' after unit")?;
                        self.skip_ws();
                        let s = self.pos;
                        let digits = self.digit_run(10)?;
                        let unit = digits.parse::<u64>().ok().filter(|u| (1..=256).contains(u));
                        spec.unit = Some(unit.ok_or(ParseError::BadNumber { offset: s })?);
                    }
                    "" => return Err(self.unexpected("a type specifier")),
                    _ => return Err(ParseError::BadSegment { offset: wat, reason: "unsupported type specifier" }),
                }
                self.skip_ws();
                if !self.eat('-') {
                    break;
                }
            }
        }
        apply_segment(bits, value, size, &spec, at)
    }

    /// A run of digits of `base` with `_` separators between digits; at least one digit.
    fn digit_run(&mut self, base: u32) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            match self.peek() {
                Some(c) if c.is_digit(base) => {
                    out.push(c);
                    self.pos += 1;
                }
                Some('_') if !out.is_empty() && self.peek_at(1).is_some_and(|c| c.is_digit(base)) => {
                    self.pos += 1;
                }
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(self.unexpected("a digit"));
        }
        Ok(out)
    }

    /// A number with an optional sign: integer, `Base#Digits`, `$c` or float.
    fn signed_number(&mut self) -> Result<Number, ParseError> {
        let negative = match self.peek() {
            Some('-') => {
                self.bump();
                self.skip_ws();
                true
            }
            Some('+') => {
                self.bump();
                self.skip_ws();
                false
            }
            _ => false,
        };
        let at = self.pos;
        let n = match self.peek() {
            Some('$') => {
                self.bump();
                Number::Int(BigInt::from(self.char_literal(at)?))
            }
            Some('0'..='9') => self.unsigned_number()?,
            _ => return Err(self.unexpected("a number")),
        };
        Ok(match (negative, n) {
            (false, n) => n,
            (true, Number::Int(i)) => Number::Int(-i),
            (true, Number::Float(f)) => Number::Float(-f),
        })
    }

    fn unsigned_number(&mut self) -> Result<Number, ParseError> {
        let at = self.pos;
        let digits = self.digit_run(10)?;
        if self.peek() == Some('#') && self.peek_at(1).is_some_and(|c| c.is_ascii_alphanumeric()) {
            let base = digits.parse::<u32>().ok().filter(|b| (2..=36).contains(b));
            let base = base.ok_or(ParseError::BadNumber { offset: at })?;
            self.bump();
            let digits = self.digit_run(base)?;
            let i = BigInt::parse_bytes(digits.as_bytes(), base).ok_or(ParseError::BadNumber { offset: at })?;
            return Ok(Number::Int(i));
        }
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            let frac = self.digit_run(10)?;
            let mut text = format!("{digits}.{frac}");
            if matches!(self.peek(), Some('e' | 'E')) {
                let (sign, first) = match self.peek_at(1) {
                    Some(s @ ('+' | '-')) => (Some(s), self.peek_at(2)),
                    other => (None, other),
                };
                if first.is_some_and(|c| c.is_ascii_digit()) {
                    self.bump();
                    text.push('e');
                    if let Some(s) = sign {
                        self.bump();
                        text.push(s);
                    }
                    text.push_str(&self.digit_run(10)?);
                }
            }
            let f = text.parse::<f64>().ok().filter(|f| f.is_finite()).ok_or(ParseError::BadNumber { offset: at })?;
            return Ok(Number::Float(f));
        }
        if digits.len() <= 18 {
            let i = digits.parse::<i64>().map_err(|_| ParseError::BadNumber { offset: at })?;
            return Ok(Number::Int(BigInt::from(i)));
        }
        let i = BigInt::parse_bytes(digits.as_bytes(), 10).ok_or(ParseError::BadNumber { offset: at })?;
        Ok(Number::Int(i))
    }

    /// The character after `$` (already consumed); `start` is the offset of the `$`.
    fn char_literal(&mut self, start: usize) -> Result<u32, ParseError> {
        match self.bump() {
            None => Err(ParseError::Unterminated { offset: start, what: "character literal" }),
            Some('\\') => self.escape(),
            Some(c) => Ok(u32::from(c)),
        }
    }

    /// An escape sequence after `\` (already consumed), as erl_scan reads them.
    fn escape(&mut self) -> Result<u32, ParseError> {
        let at = self.pos.saturating_sub(1);
        let bad = || ParseError::BadEscape { offset: at };
        let c = self.bump().ok_or(ParseError::UnexpectedEnd { offset: self.pos })?;
        Ok(match c {
            'b' => 8,
            'd' => 127,
            'e' => 27,
            'f' => 12,
            'n' => 10,
            'r' => 13,
            's' => 32,
            't' => 9,
            'v' => 11,
            '0'..='7' => {
                let mut v = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                v
            }
            'x' => {
                if self.eat('{') {
                    let mut v: u32 = 0;
                    let mut n = 0;
                    while let Some(d) = self.peek().and_then(|c| c.to_digit(16)) {
                        self.pos += 1;
                        n += 1;
                        v = v.checked_mul(16).and_then(|v| v.checked_add(d)).ok_or_else(bad)?;
                    }
                    if n == 0 || !self.eat('}') || v > 0x10FFFF {
                        return Err(bad());
                    }
                    v
                } else {
                    let hi = self.bump().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
                    let lo = self.bump().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
                    hi * 16 + lo
                }
            }
            '^' => {
                let c = self.bump().ok_or_else(bad)?;
                u32::from(c) & 31
            }
            other => u32::from(other),
        })
    }

    /// One or more adjacent string literals (`"ab" "cd"` is `"abcd"`), as code points.
    fn string_chars(&mut self) -> Result<Vec<u32>, ParseError> {
        let mut out = Vec::new();
        loop {
            let start = self.pos;
            self.bump();
            loop {
                match self.bump() {
                    None => return Err(ParseError::Unterminated { offset: start, what: "string" }),
                    Some('"') => break,
                    Some('\\') => out.push(self.escape()?),
                    Some(c) => out.push(u32::from(c)),
                }
            }
            let after = self.pos;
            self.skip_ws();
            if self.peek() != Some('"') {
                self.pos = after;
                return Ok(out);
            }
        }
    }

    fn quoted_atom(&mut self) -> Result<Atom, ParseError> {
        let start = self.pos;
        self.bump();
        let mut s = String::new();
        let mut n = 0usize;
        loop {
            let c = match self.bump() {
                None => return Err(ParseError::Unterminated { offset: start, what: "quoted atom" }),
                Some('\'') => break,
                Some('\\') => {
                    let at = self.pos - 1;
                    let v = self.escape()?;
                    char::from_u32(v).ok_or(ParseError::BadEscape { offset: at })?
                }
                Some(c) => c,
            };
            s.push(c);
            n += 1;
        }
        if n > MAX_ATOM_CHARS {
            return Err(ParseError::AtomTooLong { offset: start });
        }
        Ok(Atom::from(s))
    }

    /// A run of name characters (possibly empty).
    fn bare_word(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest.char_indices().find(|(_, c)| !name_char(*c)).map_or(rest.len(), |(i, _)| i);
        self.pos += end;
        rest.get(..end).unwrap_or("")
    }

    /// An atom, bare or quoted (inside `fun M:F/A`).
    fn atom(&mut self) -> Result<Atom, ParseError> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            Some('\'') => self.quoted_atom(),
            Some(c) if atom_start(c) => {
                let word = self.bare_word();
                check_bare_atom(word, at)?;
                Ok(Atom::from(word))
            }
            _ => Err(self.unexpected("an atom")),
        }
    }

    /// `fun M:F/A` after the `fun`.
    fn export(&mut self) -> Result<Term, ParseError> {
        let module = self.atom()?;
        self.skip_ws();
        self.expect(':', "':'")?;
        let function = self.atom()?;
        self.skip_ws();
        self.expect('/', "'/'")?;
        self.skip_ws();
        let at = self.pos;
        let arity = self.digit_run(10)?.parse::<u8>().map_err(|_| ParseError::BadNumber { offset: at })?;
        Ok(Term::Export { module, function, arity })
    }
}

fn check_bare_atom(word: &str, at: usize) -> Result<(), ParseError> {
    if RESERVED.contains(&word) && word != "maybe" && word != "else" {
        return Err(ParseError::ReservedWord { offset: at, word: word.to_owned() });
    }
    if word.chars().count() > MAX_ATOM_CHARS {
        return Err(ParseError::AtomTooLong { offset: at });
    }
    Ok(())
}

/// A string's code points as a term: [`Term::String`] when all fit a byte.
fn chars_to_term(chars: Vec<u32>) -> Term {
    if chars.is_empty() {
        Term::Nil
    } else if chars.iter().all(|c| *c <= 255) {
        Term::String(chars.into_iter().map(|c| c as u8).collect())
    } else {
        Term::List(chars.into_iter().map(|c| Term::Int(i64::from(c))).collect(), Box::new(Term::Nil))
    }
}

/// `[items | tail]`, merging a list-valued tail into the items.
fn make_list(mut items: Vec<Term>, tail: Term) -> Term {
    match tail {
        Term::Nil => {}
        Term::String(s) => items.extend(s.into_iter().map(|b| Term::Int(i64::from(b)))),
        Term::List(more, tail) => {
            items.extend(more);
            return Term::List(items, tail);
        }
        other => return Term::List(items, Box::new(other)),
    }
    Term::List(items, Box::new(Term::Nil))
}

// ------------------------------------------------------------------------------------------------
// Binary construction
// ------------------------------------------------------------------------------------------------

enum SegValue {
    Chars(Vec<u32>),
    Num(Number),
}

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum Kind {
    #[default]
    Integer,
    Float,
    Binary,
    Utf8,
    Utf16,
    Utf32,
}

#[derive(Default)]
struct Spec {
    kind: Kind,
    little: bool,
    unit: Option<u64>,
}

/// A bitstring under construction; bits fill each byte from the most significant end.
#[derive(Default)]
struct Bits {
    data: Vec<u8>,
    len: u64,
}

impl Bits {
    fn reserve(&self, nbits: u64, at: usize) -> Result<(), ParseError> {
        match self.len.checked_add(nbits) {
            Some(n) if n <= MAX_BINARY_BYTES * 8 => Ok(()),
            _ => Err(ParseError::BadSegment { offset: at, reason: "binary too large" }),
        }
    }

    fn push_bit(&mut self, bit: bool) {
        let off = self.len % 8;
        if off == 0 {
            self.data.push(0);
        }
        if bit {
            if let Some(last) = self.data.last_mut() {
                *last |= 0x80 >> off;
            }
        }
        self.len += 1;
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        if self.len & 7 == 0 {
            self.data.extend_from_slice(bytes);
            self.len += 8 * bytes.len() as u64;
        } else {
            for b in bytes {
                for i in (0..8).rev() {
                    self.push_bit(b >> i & 1 == 1);
                }
            }
        }
    }

    /// Pushes `v` modulo 2^nbits in `nbits` bits.
    fn push_int(&mut self, v: &BigInt, nbits: u64, little: bool, at: usize) -> Result<(), ParseError> {
        self.reserve(nbits, at)?;
        if nbits == 0 {
            return Ok(());
        }
        let nbytes = nbits.div_ceil(8) as usize;
        let mag = match v.to_i128() {
            // Two's complement truncation, without big arithmetic for the usual segments.
            Some(x) if nbits <= 64 => {
                let m = (x as u128) & ((1u128 << nbits) - 1);
                m.to_be_bytes().to_vec()
            }
            _ => {
                let modulus = BigInt::one() << nbits;
                let mut m = v % &modulus;
                if m.sign() == Sign::Minus {
                    m += &modulus;
                }
                m.to_bytes_be().1
            }
        };
        let mut bytes = vec![0u8; nbytes.saturating_sub(mag.len())];
        bytes.extend(mag.iter().skip(mag.len().saturating_sub(nbytes)));
        if little {
            if nbits & 7 != 0 {
                return Err(ParseError::BadSegment { offset: at, reason: "little-endian size must be whole bytes" });
            }
            bytes.reverse();
        }
        let skip = nbytes as u64 * 8 - nbits;
        if skip == 0 {
            self.push_bytes(&bytes);
        } else {
            for i in skip..nbytes as u64 * 8 {
                let byte = bytes.get((i / 8) as usize).copied().unwrap_or(0);
                self.push_bit(byte >> (7 - i % 8) & 1 == 1);
            }
        }
        Ok(())
    }

    fn push_char(&mut self, c: u32, kind: Kind, little: bool, at: usize) -> Result<(), ParseError> {
        let ch = char::from_u32(c).ok_or(ParseError::BadSegment { offset: at, reason: "not a Unicode character" })?;
        let mut buf = Vec::with_capacity(4);
        match kind {
            Kind::Utf8 => buf.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
            Kind::Utf16 => {
                for u in ch.encode_utf16(&mut [0; 2]) {
                    buf.extend_from_slice(&if little { u.to_le_bytes() } else { u.to_be_bytes() });
                }
            }
            _ => buf.extend_from_slice(&if little { c.to_le_bytes() } else { c.to_be_bytes() }),
        }
        self.reserve(8 * buf.len() as u64, at)?;
        self.push_bytes(&buf);
        Ok(())
    }

    fn into_term(self) -> Term {
        match self.len % 8 {
            0 => Term::Binary(self.data),
            bits => Term::BitBinary { data: self.data, bits: bits as u8 },
        }
    }
}

fn apply_segment(
    bits: &mut Bits,
    value: SegValue,
    size: Option<u64>,
    spec: &Spec,
    at: usize,
) -> Result<(), ParseError> {
    let bad = |reason| ParseError::BadSegment { offset: at, reason };
    let utf = matches!(spec.kind, Kind::Utf8 | Kind::Utf16 | Kind::Utf32);
    if utf && (size.is_some() || spec.unit.is_some()) {
        return Err(bad("utf segments take no size"));
    }
    let unit = spec.unit.unwrap_or(if spec.kind == Kind::Binary { 8 } else { 1 });
    let size_bits = |default: u64| -> Result<u64, ParseError> {
        match size {
            Some(s) => s.checked_mul(unit).ok_or(bad("binary too large")),
            None => Ok(default),
        }
    };
    match (value, spec.kind) {
        (SegValue::Chars(chars), Kind::Binary) => {
            if size.is_some() {
                return Err(bad("string segments of type binary take no size"));
            }
            let bytes: Option<Vec<u8>> = chars.iter().map(|c| u8::try_from(*c).ok()).collect();
            let bytes = bytes.ok_or(bad("character over 255 in a byte string"))?;
            bits.reserve(8 * bytes.len() as u64, at)?;
            bits.push_bytes(&bytes);
            Ok(())
        }
        (SegValue::Chars(chars), Kind::Integer) => {
            let n = size_bits(8)?;
            if size.is_none() && chars.iter().any(|c| *c > 255) {
                return Err(bad("character over 255 in a byte string (use /utf8)"));
            }
            for c in chars {
                bits.push_int(&BigInt::from(c), n, spec.little, at)?;
            }
            Ok(())
        }
        (SegValue::Chars(chars), kind) if utf => {
            for c in chars {
                bits.push_char(c, kind, spec.little, at)?;
            }
            Ok(())
        }
        (SegValue::Num(Number::Int(i)), kind) if utf => {
            let c = i.to_u32().ok_or(bad("not a Unicode character"))?;
            bits.push_char(c, kind, spec.little, at)
        }
        (SegValue::Num(Number::Int(i)), Kind::Integer) => bits.push_int(&i, size_bits(8)?, spec.little, at),
        (SegValue::Num(n), Kind::Float) => {
            let f = match n {
                Number::Int(i) => i.to_f64().filter(|f| f.is_finite()).ok_or(bad("integer too large for a float"))?,
                Number::Float(f) => f,
            };
            let bytes = match size_bits(64)? {
                64 => f.to_bits().to_be_bytes().to_vec(),
                32 => {
                    let g = f as f32;
                    if !g.is_finite() {
                        return Err(bad("float too large for 32 bits"));
                    }
                    g.to_bits().to_be_bytes().to_vec()
                }
                _ => return Err(bad("float size must be 32 or 64")),
            };
            let mut bytes = bytes;
            if spec.little {
                bytes.reverse();
            }
            bits.reserve(8 * bytes.len() as u64, at)?;
            bits.push_bytes(&bytes);
            Ok(())
        }
        (SegValue::Num(Number::Float(_)), _) => Err(bad("a float segment needs /float")),
        _ => Err(bad("value does not match the segment type")),
    }
}

#[cfg(test)]
#[allow(clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::etf::{Fun, Pid, Port, Ref};

    fn p(s: &str) -> Term {
        match parse(s) {
            Ok(t) => t,
            Err(e) => panic!("parse {s:?}: {e}"),
        }
    }

    fn show(s: &str) -> String {
        p(s).to_string()
    }

    fn a(s: &str) -> Term {
        Term::atom(s)
    }

    fn i(v: i64) -> Term {
        Term::Int(v)
    }

    fn big(s: &str) -> Term {
        Term::from_bigint(BigInt::parse_bytes(s.as_bytes(), 10).unwrap_or_default())
    }

    #[test]
    fn prints_the_brief_example() {
        assert_eq!(show(r#"[<<"abc">>, 42, {ok, "x"}]"#), r#"[<<"abc">>,42,{ok,"x"}]"#);
    }

    #[test]
    fn prints_atoms_quoted_only_when_needed() {
        for (atom, text) in [
            ("hello", "hello"),
            ("hello world", "'hello world'"),
            ("Abc", "'Abc'"),
            ("", "''"),
            ("and", "'and'"),
            ("end", "'end'"),
            ("fun", "'fun'"),
            ("maybe", "'maybe'"),
            ("a@b_C9", "a@b_C9"),
            ("héllo", "héllo"),
            ("日本", "'日本'"),
            ("it's", "'it\\'s'"),
            ("a\\b", "'a\\\\b'"),
            ("a\"b", "'a\"b'"),
            ("a\nb", "'a\\nb'"),
            ("a b\u{80}", "'a b\\200'"),
            ("_x", "'_x'"),
            ("9", "'9'"),
            ("nonode@nohost", "nonode@nohost"),
            ("a.b", "'a.b'"),
        ] {
            assert_eq!(a(atom).to_string(), text, "atom {atom:?}");
            assert_eq!(p(text), a(atom), "parse {text}");
        }
    }

    #[test]
    fn prints_numbers() {
        assert_eq!(i(42).to_string(), "42");
        assert_eq!(i(-5).to_string(), "-5");
        assert_eq!(i(i64::MIN).to_string(), "-9223372036854775808");
        assert_eq!(big("1180591620717411303424").to_string(), "1180591620717411303424");
        assert_eq!(big("-1267650600228229401496703205376").to_string(), "-1267650600228229401496703205376");
    }

    #[test]
    #[allow(clippy::approx_constant)]
    fn prints_floats_like_otp() {
        // Expected strings are what OTP 25's `io:format("~p", [F])` prints.
        for (f, text) in [
            (1.0, "1.0"),
            (3.14, "3.14"),
            (1.0e100, "1.0e100"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (12340.0, "12340.0"),
            (123400.0, "1.234e5"),
            (0.00012, "1.2e-4"),
            (1.0e15, "1.0e15"),
            (1.0e16, "1.0e16"),
            (123456789012345.0, "123456789012345.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (12345678901234567.0, "1.2345678901234568e16"),
            (9007199254740992.0, "9.007199254740992e15"),
            (1.0e-5, "1.0e-5"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-7"),
            (5.0e-324, "5.0e-324"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (2.5e22, "2.5e22"),
            (-1.5, "-1.5"),
            (-2.0e3, "-2.0e3"),
        ] {
            assert_eq!(Term::Float(f).to_string(), text, "float {f:e}");
            let back = p(text);
            assert!(matches!(back, Term::Float(g) if g.to_bits() == f.to_bits()), "parse {text} = {back:?}");
        }
        // Exact ties between two shortest candidates go to the even digit, as in Ryu.
        for (bits, text) in [
            (0x431e_3026_b52d_f869_u64, "2124298026974746.2"),
            (0x4281_913e_cd0c_d840, "2414440194459.0312"),
            (0x4286_a99b_eb30_6540, "3114715145740.6562"),
        ] {
            assert_eq!(Term::Float(f64::from_bits(bits)).to_string(), text);
            assert!(matches!(p(text), Term::Float(g) if g.to_bits() == bits));
        }
    }

    #[test]
    fn prints_lists_and_strings() {
        assert_eq!(show("[1,2,3]"), "[1,2,3]");
        assert_eq!(show("\"abc\""), "\"abc\"");
        assert_eq!(show("[97,98,99]"), "\"abc\"");
        assert_eq!(show(r#""a\"b\\c\n\t\e\v\b\f""#), r#""a\"b\\c\n\t\e\v\b\f""#);
        assert_eq!(show("[1000,2000]"), "[1000,2000]");
        assert_eq!(show("\"\\x{3e8}\\x{7d0}\""), "[1000,2000]");
        assert_eq!(show("[127]"), "[127]");
        assert_eq!(show("[8,9]"), "\"\\b\\t\"");
        assert_eq!(show("[160,255]"), "\"\u{a0}ÿ\"");
        assert_eq!(show("[]"), "[]");
        assert_eq!(show("\"\""), "[]");
        assert_eq!(show("[[]]"), "[[]]");
        assert_eq!(show("[a|b]"), "[a|b]");
        assert_eq!(show("[a,b|c]"), "[a,b|c]");
        assert_eq!(show("[$a|b]"), "[97|b]");
        assert_eq!(show("[1|[2,3]]"), "[1,2,3]");
        assert_eq!(show("[$a|\"bc\"]"), "\"abc\"");
        assert_eq!(show("[a|\"bc\"]"), "[a,98,99]");
        assert_eq!(show("\"ab\" \"cd\""), "\"abcd\"");
        // A string tail of a LIST_EXT term is followed when printing.
        let t = Term::List(vec![i(97)], Box::new(Term::String(b"bc".to_vec())));
        assert_eq!(t.to_string(), "\"abc\"");
        let t = Term::List(vec![i(1)], Box::new(Term::String(b"bc".to_vec())));
        assert_eq!(t.to_string(), "[1,98,99]");
    }

    #[test]
    fn prints_binaries() {
        assert_eq!(show("<<\"abc\">>"), "<<\"abc\">>");
        assert_eq!(show("<<1,2,3>>"), "<<1,2,3>>");
        assert_eq!(show("<<>>"), "<<>>");
        assert_eq!(show("<<\"a\\nb\">>"), "<<\"a\\nb\">>");
        assert_eq!(show("<<\"héllo\"/utf8>>"), "<<\"héllo\"/utf8>>");
        assert_eq!(p("<<\"héllo\"/utf8>>"), Term::binary("héllo".as_bytes()));
        assert_eq!(show("<<\"日本\"/utf8>>"), "<<\"日本\"/utf8>>");
        assert_eq!(show("<<\"é\">>"), "<<\"é\">>");
        assert_eq!(p("<<\"é\">>"), Term::binary([233u8]));
        assert_eq!(show("<<1,2,3:5>>"), "<<1,2,3:5>>");
        assert_eq!(p("<<1,2,3:5>>"), Term::BitBinary { data: vec![1, 2, 24], bits: 5 });
        assert_eq!(show("<<1:3>>"), "<<1:3>>");
        assert_eq!(show("<<\"ab\",3:2>>"), "<<97,98,3:2>>");
        assert_eq!(show("<<0,255>>"), "<<0,255>>");
    }

    #[test]
    fn prints_compounds() {
        assert_eq!(show("{a, b}"), "{a,b}");
        assert_eq!(show("{}"), "{}");
        assert_eq!(show("#{a => 1, \"b\" => [x]}"), "#{a => 1,\"b\" => [x]}");
        assert_eq!(show("#{}"), "#{}");
        assert_eq!(show("#{ k => #{ } }"), "#{k => #{}}");
        assert_eq!(show("{a,-1,[-2|-3]}"), "{a,-1,[-2|-3]}");
        assert_eq!(show("fun lists:map/2"), "fun lists:map/2");
        assert_eq!(show("fun 'A':'b c'/0"), "fun 'A':'b c'/0");
    }

    #[test]
    fn prints_identifiers_with_node_names() {
        let node = Atom::from("b@host");
        let pid = Pid { node: node.clone(), id: 84, serial: 0, creation: 7 };
        assert_eq!(Term::Pid(pid.clone()).to_string(), "<b@host.84.0>");
        assert_eq!(Term::Port(Port { node: node.clone(), id: 3, creation: 7 }).to_string(), "#Port<b@host.3>");
        let r = Ref { node: node.clone(), creation: 7, ids: vec![128180, 3045851138, 4142721698] };
        assert_eq!(Term::Ref(r).to_string(), "#Ref<b@host.4142721698.3045851138.128180>");
        let f = Fun {
            arity: 0,
            uniq: [0; 16],
            index: 5,
            module: Atom::from("erl_eval"),
            old_index: 45,
            old_uniq: 65746770,
            pid,
            free_vars: vec![i(1)],
        };
        assert_eq!(Term::Fun(Box::new(f)).to_string(), "#Fun<erl_eval.45.65746770>");
        let odd = Pid { node: Atom::from("x\n>y"), id: 1, serial: 2, creation: 0 };
        assert_eq!(Term::Pid(odd).to_string(), "<'x\\n>y'.1.2>");
        let dotted = Pid { node: Atom::from("a@host.example.com"), id: 1, serial: 2, creation: 0 };
        assert_eq!(Term::Pid(dotted).to_string(), "<a@host.example.com.1.2>");
        let e = Term::Export { module: Atom::from("m"), function: Atom::from("f"), arity: 1 };
        assert_eq!(e.to_string(), "fun m:f/1");
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(p("42"), i(42));
        assert_eq!(p("-42"), i(-42));
        assert_eq!(p("- 42"), i(-42));
        assert_eq!(p("+7"), i(7));
        assert_eq!(p("1_000_000"), i(1_000_000));
        assert_eq!(p("16#FF"), i(255));
        assert_eq!(p("16#ff"), i(255));
        assert_eq!(p("-16#10"), i(-16));
        assert_eq!(p("2#1010"), i(10));
        assert_eq!(p("36#Zz"), i(35 * 36 + 35));
        assert_eq!(p("$a"), i(97));
        assert_eq!(p("$ "), i(32));
        assert_eq!(p("$\\n"), i(10));
        assert_eq!(p("$\\x{1F600}"), i(0x1F600));
        assert_eq!(p("$\\101"), i(65));
        assert_eq!(p("$\\^a"), i(1));
        assert_eq!(p("$\\'"), i(39));
        assert_eq!(p("-$a"), i(-97));
        assert_eq!(p("9223372036854775807"), i(i64::MAX));
        assert_eq!(p("-9223372036854775808"), i(i64::MIN));
        assert_eq!(p("9223372036854775808"), big("9223372036854775808"));
        assert_eq!(p("18446744073709551616"), big("18446744073709551616"));
        assert_eq!(p("16#10000000000000000"), big("18446744073709551616"));
        assert!(matches!(p("1.5"), Term::Float(f) if f == 1.5));
        assert!(matches!(p("-2.0e3"), Term::Float(f) if f == -2000.0));
        assert!(matches!(p("2.5E-3"), Term::Float(f) if f == 0.0025));
        assert!(matches!(p("1.0e+2"), Term::Float(f) if f == 100.0));
        assert_eq!(p("1."), i(1));
        assert!(matches!(parse("1.0e400"), Err(ParseError::BadNumber { offset: 0 })));
        assert!(matches!(parse("37#1"), Err(ParseError::BadNumber { .. })));
        assert!(matches!(parse("2#12"), Err(ParseError::Trailing { offset: 3 })));
        assert!(matches!(parse("1e5"), Err(ParseError::Trailing { offset: 1 })));
    }

    #[test]
    fn parses_atoms_and_strings() {
        assert_eq!(p("ok."), a("ok"));
        assert_eq!(p("  ok  .  "), a("ok"));
        assert_eq!(p("'hello world'"), a("hello world"));
        assert_eq!(p("'\\x{65E5}\\x{672C}'"), a("日本"));
        assert_eq!(p("'日本'"), a("日本"));
        assert_eq!(p("''"), a(""));
        assert_eq!(p("'a\\sb'"), a("a b"));
        assert_eq!(p("maybe"), a("maybe"));
        assert_eq!(p("\"abc\""), Term::String(b"abc".to_vec()));
        assert_eq!(p("\"é\""), Term::String(vec![233]));
        assert_eq!(p("\"日\""), Term::list([i(0x65E5)]));
        assert_eq!(p("\"a\\x41\\101\\d\""), Term::String(vec![97, 65, 65, 127]));
        assert_eq!(p("% comment\n[1, % another\n 2]"), Term::list([i(1), i(2)]));
        assert_eq!(p(&format!("'{}'", "x".repeat(255))), a(&"x".repeat(255)));
        assert!(matches!(parse(&format!("'{}'", "x".repeat(256))), Err(ParseError::AtomTooLong { offset: 0 })));
        assert!(matches!(parse(&"x".repeat(256)), Err(ParseError::AtomTooLong { offset: 0 })));
    }

    #[test]
    fn parses_compounds() {
        assert_eq!(p("{a, {b, []}}"), Term::tuple([a("a"), Term::tuple([a("b"), Term::Nil])]));
        assert_eq!(p("[a|b]"), Term::List(vec![a("a")], Box::new(a("b"))));
        assert_eq!(p("[a|[b|[]]]"), Term::list([a("a"), a("b")]));
        assert_eq!(p("[a|[b|c]]"), Term::List(vec![a("a"), a("b")], Box::new(a("c"))));
        assert_eq!(p("#{a => 1, b => [2]}"), Term::Map(vec![(a("a"), i(1)), (a("b"), Term::list([i(2)]))]));
        assert_eq!(p("#{a => 1, b => 2, a => 3}"), Term::Map(vec![(a("a"), i(3)), (a("b"), i(2))]));
        assert_eq!(p("#{\"ab\" => 1, [97,98] => 2}"), Term::Map(vec![(Term::String(b"ab".to_vec()), i(2))]));
        assert_eq!(p("#{1 => a, 1.0 => b}").to_string(), "#{1 => a,1.0 => b}");
        assert_eq!(p("fun 'a b':c/3"), Term::Export { module: Atom::from("a b"), function: Atom::from("c"), arity: 3 });
    }

    #[test]
    fn parses_binaries() {
        assert_eq!(p("<<>>"), Term::binary([]));
        assert_eq!(p("<< 1 , 2 , 3 >>"), Term::binary([1, 2, 3]));
        assert_eq!(p("<<\"abc\">>"), Term::binary(*b"abc"));
        assert_eq!(p("<<\"abc\"/binary>>"), Term::binary(*b"abc"));
        assert_eq!(p("<<-1>>"), Term::binary([255]));
        assert_eq!(p("<<256>>"), Term::binary([0]));
        assert_eq!(p("<<1:16>>"), Term::binary([0, 1]));
        assert_eq!(p("<<1:16/little>>"), Term::binary([1, 0]));
        assert_eq!(p("<<-2:16/signed-big>>"), Term::binary([0xff, 0xfe]));
        assert_eq!(p("<<1:4, 15:4>>"), Term::binary([0x1f]));
        assert_eq!(p("<<1:1>>"), Term::BitBinary { data: vec![0x80], bits: 1 });
        assert_eq!(p("<<16#FFFF:12>>"), Term::BitBinary { data: vec![0xff, 0xf0], bits: 4 });
        assert_eq!(p("<<1:3, 2:16>>"), Term::BitBinary { data: vec![0x20, 0x00, 0x40], bits: 3 });
        assert_eq!(p("<<1:100>>"), Term::BitBinary { data: [vec![0; 12], vec![0x10]].concat(), bits: 4 });
        assert_eq!(p("<<2:2/unit:8>>"), Term::binary([0, 2]));
        assert_eq!(p("<<$é/utf8>>"), Term::binary("é".as_bytes()));
        assert_eq!(p("<<\"€\"/utf16>>"), Term::binary([0x20, 0xac]));
        assert_eq!(p("<<\"€\"/utf16-little>>"), Term::binary([0xac, 0x20]));
        assert_eq!(p("<<\"A\"/utf32>>"), Term::binary([0, 0, 0, 65]));
        assert_eq!(p("<<1.5/float>>"), Term::binary(1.5f64.to_be_bytes()));
        assert_eq!(p("<<1.5:32/float>>"), Term::binary(1.5f32.to_be_bytes()));
        assert_eq!(p("<<1/float-little>>"), Term::binary(1.0f64.to_le_bytes()));
        assert_eq!(p("<<\"ab\":16>>"), Term::binary([0, 97, 0, 98]));
        assert!(matches!(parse("<<\"日\">>"), Err(ParseError::BadSegment { offset: 2, .. })));
        assert!(matches!(parse("<<1.5>>"), Err(ParseError::BadSegment { .. })));
        assert!(matches!(parse("<<1/utf8:8>>"), Err(ParseError::Unexpected { .. })));
        assert!(matches!(parse("<<16#110000/utf8>>"), Err(ParseError::BadSegment { .. })));
        assert!(matches!(parse("<<0:99999999999>>"), Err(ParseError::BadSegment { .. })));
        assert!(matches!(parse("<<0:18446744073709551615/unit:8>>"), Err(ParseError::BadSegment { .. })));
        assert!(matches!(parse("<<1/foo>>"), Err(ParseError::BadSegment { .. })));
    }

    #[test]
    fn reports_errors_with_positions() {
        assert_eq!(parse(""), Err(ParseError::UnexpectedEnd { offset: 0 }));
        assert_eq!(parse("{a,"), Err(ParseError::UnexpectedEnd { offset: 3 }));
        assert_eq!(parse("{a b}"), Err(ParseError::Unexpected { offset: 3, found: 'b', expected: "',' or '}'" }));
        assert_eq!(parse("X"), Err(ParseError::Variable { offset: 0, name: "X".into() }));
        assert_eq!(parse("[_]"), Err(ParseError::Variable { offset: 1, name: "_".into() }));
        assert_eq!(parse("[end]"), Err(ParseError::ReservedWord { offset: 1, word: "end".into() }));
        assert_eq!(parse("\"abc"), Err(ParseError::Unterminated { offset: 0, what: "string" }));
        assert_eq!(parse("'abc"), Err(ParseError::Unterminated { offset: 0, what: "quoted atom" }));
        assert_eq!(parse("a b"), Err(ParseError::Trailing { offset: 2 }));
        assert_eq!(parse("a.."), Err(ParseError::Trailing { offset: 2 }));
        assert_eq!(parse("\"\\x{110000}\""), Err(ParseError::BadEscape { offset: 1 }));
        assert_eq!(parse("'\\x{D800}'"), Err(ParseError::BadEscape { offset: 1 }));
        assert!(matches!(parse("#{a := 1}"), Err(ParseError::Unexpected { offset: 4, .. })));
        assert!(matches!(parse("<1>"), Err(ParseError::Unexpected { offset: 1, .. })));
        assert!(matches!(parse("$"), Err(ParseError::Unterminated { offset: 0, .. })));
        assert_eq!(parse("{a b}").map_err(|e| e.offset()), Err(3));
        assert_eq!(ParseError::Trailing { offset: 9 }.to_string(), "unexpected input after the term at offset 9");
    }

    #[test]
    fn bounds_nesting() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        for open in ["[", "{", "#{a=>", "[a|"] {
            let deep = open.repeat(100_000);
            assert!(matches!(parse(&deep), Err(ParseError::TooDeep { limit: MAX_DEPTH, .. })), "{open}");
        }
        let deep = "<<".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn prints_deep_terms_without_recursion() {
        let mut t = Term::Nil;
        for _ in 0..100_000 {
            t = Term::tuple([t]);
        }
        let s = t.to_string();
        assert_eq!(s.len(), 100_000 * 2 + 2);
        // Tear down iteratively too (Drop of a deep term recurses).
        while let Term::Tuple(mut items) = t {
            t = items.pop().unwrap_or(Term::Nil);
        }
    }

    #[test]
    fn round_trips_many_terms() {
        let terms = vec![
            a("ok"),
            a(""),
            a("hello world"),
            a("Ünïcødé ☃"),
            a("\u{0}\u{1f}\u{7f}\u{80}\u{9f}\u{a0}"),
            a("'\"\\"),
            i(0),
            i(-1),
            i(255),
            i(256),
            i(i64::MAX),
            i(i64::MIN),
            big("-1267650600228229401496703205376"),
            big(&"9".repeat(2000)),
            Term::Float(0.0),
            Term::Float(-0.0),
            Term::Float(f64::MAX),
            Term::Float(f64::MIN_POSITIVE),
            Term::Float(5e-324),
            Term::Float(0.1 + 0.2),
            Term::Float(-1.5e-300),
            Term::Nil,
            Term::String(b"hello".to_vec()),
            Term::String(vec![0, 1, 2, 255]),
            Term::String((0..=255).collect()),
            Term::list([i(1000), i(-1), a("x")]),
            Term::List(vec![a("a"), a("b")], Box::new(a("c"))),
            Term::List(vec![i(1)], Box::new(Term::binary(*b"x"))),
            Term::tuple([]),
            Term::tuple([a("a"), Term::tuple([Term::tuple([])]), Term::Nil]),
            Term::Map(vec![]),
            Term::Map(vec![
                (a("k"), Term::Map(vec![(i(1), Term::String(b"v".to_vec()))])),
                (Term::Nil, Term::tuple([])),
            ]),
            Term::binary([]),
            Term::binary(*b"plain text"),
            Term::binary("ünïcødé ☃ 日本".as_bytes()),
            Term::binary([0xff, 0xfe, 0]),
            Term::binary((0..=255).collect::<Vec<u8>>()),
            Term::binary([233, 10, 34, 92]),
            Term::BitBinary { data: vec![1, 2, 24], bits: 5 },
            Term::BitBinary { data: vec![0xfe], bits: 7 },
            Term::BitBinary { data: vec![0x80], bits: 1 },
            Term::Export { module: Atom::from("lists"), function: Atom::from("map"), arity: 2 },
            Term::Export { module: Atom::from("Mod"), function: Atom::from("end"), arity: 255 },
        ];
        for t in terms {
            let s = t.to_string();
            assert!(!s.contains('\n'), "{s}");
            match parse(&s) {
                Ok(back) => assert_eq!(back, t, "round trip of {s}"),
                Err(e) => panic!("parse of printed {s:?}: {e}"),
            }
        }
    }

    #[test]
    fn from_str_parses() {
        let t: Term = "{ok, [1,2]}.".parse().unwrap_or(Term::Nil);
        assert_eq!(t, Term::tuple([a("ok"), Term::list([i(1), i(2)])]));
    }
}
