//! Erlang term text: parse and print (placeholder, being written).
use super::term::Term;
use std::fmt;

/// Writes a term as Erlang term text.
pub fn write_term(f: &mut fmt::Formatter<'_>, t: &Term) -> fmt::Result {
    write!(f, "{t:?}")
}
