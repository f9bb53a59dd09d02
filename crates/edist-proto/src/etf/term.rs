//! The owned term type used by APIs (the hot path walks borrowed bytes instead).

use num_bigint::BigInt;
use num_traits::ToPrimitive;
use std::fmt;
use std::sync::Arc;

/// An atom. Cheap to clone; at most 255 characters when encoded.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Atom(Arc<str>);

impl Atom {
    /// The atom's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom(Arc::from(s))
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom(Arc::from(s))
    }
}

impl fmt::Debug for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.0)
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Atom {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Atom {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// A process identifier (NEW_PID_EXT).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid {
    pub node: Atom,
    pub id: u32,
    pub serial: u32,
    pub creation: u32,
}

/// A port identifier (V4_PORT_EXT / NEW_PORT_EXT).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub node: Atom,
    pub id: u64,
    pub creation: u32,
}

/// A reference (NEWER_REFERENCE_EXT); `ids` holds 1 to 5 words.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ref {
    pub node: Atom,
    pub creation: u32,
    pub ids: Vec<u32>,
}

/// A fun (NEW_FUN_EXT).
#[derive(Debug, Clone, PartialEq)]
pub struct Fun {
    pub arity: u8,
    pub uniq: [u8; 16],
    pub index: u32,
    pub module: Atom,
    pub old_index: i64,
    pub old_uniq: i64,
    pub pid: Pid,
    pub free_vars: Vec<Term>,
}

/// An Erlang term.
///
/// Integers that fit an `i64` are always [`Term::Int`]; [`Term::Big`] holds only the rest, so
/// equal integers compare equal. A list of bytes may arrive as [`Term::String`] (STRING_EXT);
/// it compares equal to the same list written as [`Term::List`].
#[derive(Debug, Clone)]
pub enum Term {
    Atom(Atom),
    Int(i64),
    Big(BigInt),
    Float(f64),
    Pid(Pid),
    Port(Port),
    Ref(Ref),
    Tuple(Vec<Term>),
    /// The empty list `[]`.
    Nil,
    /// A list of bytes in STRING_EXT form (a proper list of integers 0..=255).
    String(Vec<u8>),
    /// A non-empty list; `tail` is [`Term::Nil`] for a proper list.
    List(Vec<Term>, Box<Term>),
    Map(Vec<(Term, Term)>),
    Binary(Vec<u8>),
    /// A bitstring: `bits` (1..=8) of the last byte are used.
    BitBinary {
        data: Vec<u8>,
        bits: u8,
    },
    Fun(Box<Fun>),
    Export {
        module: Atom,
        function: Atom,
        arity: u8,
    },
}

impl Term {
    /// An atom term.
    pub fn atom(s: &str) -> Term {
        Term::Atom(Atom::from(s))
    }

    /// A tuple term.
    pub fn tuple(items: impl Into<Vec<Term>>) -> Term {
        Term::Tuple(items.into())
    }

    /// A proper list term (`[]` when empty).
    pub fn list(items: impl Into<Vec<Term>>) -> Term {
        let items = items.into();
        if items.is_empty() {
            Term::Nil
        } else {
            Term::List(items, Box::new(Term::Nil))
        }
    }

    /// A binary term.
    pub fn binary(bytes: impl Into<Vec<u8>>) -> Term {
        Term::Binary(bytes.into())
    }

    /// An integer term from a big integer, normalised to [`Term::Int`] when it fits.
    pub fn from_bigint(b: BigInt) -> Term {
        match b.to_i64() {
            Some(i) => Term::Int(i),
            None => Term::Big(b),
        }
    }

    /// The atom's text, if this is an atom.
    pub fn as_atom(&self) -> Option<&Atom> {
        match self {
            Term::Atom(a) => Some(a),
            _ => None,
        }
    }

    /// The elements, if this is a tuple.
    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(t) => Some(t),
            _ => None,
        }
    }

    /// The pid, if this is a pid.
    pub fn as_pid(&self) -> Option<&Pid> {
        match self {
            Term::Pid(p) => Some(p),
            _ => None,
        }
    }

    /// The reference, if this is a reference.
    pub fn as_ref(&self) -> Option<&Ref> {
        match self {
            Term::Ref(r) => Some(r),
            _ => None,
        }
    }

    /// The integer, if this is an integer that fits an `i64`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Term::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of a proper list (`[]`, STRING_EXT or LIST_EXT with a `[]` tail).
    pub fn to_proper_list(&self) -> Option<Vec<Term>> {
        match self {
            Term::Nil => Some(Vec::new()),
            Term::String(s) => Some(s.iter().map(|b| Term::Int(i64::from(*b))).collect()),
            Term::List(items, tail) if matches!(**tail, Term::Nil) => Some(items.clone()),
            _ => None,
        }
    }

    /// Elements of a list seen as an iterator-friendly view without copying, when proper.
    fn list_view(&self) -> Option<ListView<'_>> {
        match self {
            Term::Nil => Some(ListView::Bytes(&[])),
            Term::String(s) => Some(ListView::Bytes(s)),
            Term::List(items, tail) => Some(ListView::Terms(items, tail)),
            _ => None,
        }
    }
}

enum ListView<'a> {
    Bytes(&'a [u8]),
    Terms(&'a [Term], &'a Term),
}

impl PartialEq for Term {
    fn eq(&self, other: &Term) -> bool {
        use Term::*;
        match (self, other) {
            (Atom(a), Atom(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Big(a), Big(b)) => a == b,
            (Float(a), Float(b)) => a == b,
            (Pid(a), Pid(b)) => a == b,
            (Port(a), Port(b)) => a == b,
            (Ref(a), Ref(b)) => a == b,
            (Tuple(a), Tuple(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            (Binary(a), Binary(b)) => a == b,
            (BitBinary { data: a, bits: x }, BitBinary { data: b, bits: y }) => a == b && x == y,
            (Fun(a), Fun(b)) => a == b,
            (Export { module: m1, function: f1, arity: a1 }, Export { module: m2, function: f2, arity: a2 }) => {
                m1 == m2 && f1 == f2 && a1 == a2
            }
            (Nil | String(_) | List(..), Nil | String(_) | List(..)) => match (self.list_view(), other.list_view()) {
                (Some(ListView::Bytes(a)), Some(ListView::Bytes(b))) => a == b,
                (Some(ListView::Terms(a, ta)), Some(ListView::Terms(b, tb))) => a == b && ta == tb,
                (Some(ListView::Bytes(s)), Some(ListView::Terms(t, tail)))
                | (Some(ListView::Terms(t, tail)), Some(ListView::Bytes(s))) => {
                    matches!(tail, Nil)
                        && s.len() == t.len()
                        && s.iter().zip(t).all(|(b, t)| matches!(t, Int(i) if *i == i64::from(*b)))
                }
                _ => false,
            },
            _ => false,
        }
    }
}

impl From<i64> for Term {
    fn from(i: i64) -> Self {
        Term::Int(i)
    }
}

impl From<Atom> for Term {
    fn from(a: Atom) -> Self {
        Term::Atom(a)
    }
}

impl From<Pid> for Term {
    fn from(p: Pid) -> Self {
        Term::Pid(p)
    }
}

impl From<Ref> for Term {
    fn from(r: Ref) -> Self {
        Term::Ref(r)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::text::write_term(f, self)
    }
}
