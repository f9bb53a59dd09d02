//! External Term Format (reference §8).
//!
//! [`Reader`] is the bounded cursor every decoder reads through; [`walk`] validates a term and
//! reports its pieces to a [`Visitor`] without allocating; [`decode`] builds an owned [`Term`];
//! [`encode`] writes one. [`text`] parses and prints Erlang term syntax.

mod decode;
mod encode;
mod error;
mod keys;
mod reader;
pub mod tag;
mod term;
pub mod text;
mod walk;

pub use decode::{decode, decode_versioned, Decoder};
pub use encode::{encode, encode_into, encode_versioned, encoded_len_hint};
pub use error::DecodeError;
pub use keys::term_hash;
pub use reader::{AtomText, Reader, Token};
pub use term::{Atom, Fun, Pid, Port, Ref, Term};
pub use text::{parse, ParseError};
pub use walk::{skip, walk, NoopVisitor, Visitor};

/// Bounds applied while decoding untrusted terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting depth of tuples, lists, maps and funs.
    pub max_depth: u32,
    /// Maximum size a compressed term (tag 80) may inflate to.
    pub max_inflated: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 1024, max_inflated: 64 << 20 }
    }
}

/// Inflates a compressed term's zlib data to exactly `size` bytes, growing the buffer only as
/// output actually appears (a tiny input claiming a huge size costs nothing).
pub(crate) fn inflate(size: u32, data: &[u8], limits: &Limits) -> Result<Vec<u8>, DecodeError> {
    let size = size as usize;
    if size > limits.max_inflated {
        return Err(DecodeError::InflateTooLarge(size as u64));
    }
    let mut out = Vec::with_capacity(size.min(64 << 10));
    let mut z = flate2::Decompress::new(true);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= size {
                // Full: the stream must end here with nothing more to produce.
                let mut probe = Vec::with_capacity(1);
                let consumed = z.total_in() as usize;
                let st = z
                    .decompress_vec(
                        data.get(consumed..).unwrap_or_default(),
                        &mut probe,
                        flate2::FlushDecompress::Finish,
                    )
                    .map_err(|_| DecodeError::BadCompression)?;
                return if st == flate2::Status::StreamEnd && probe.is_empty() {
                    Ok(out)
                } else {
                    Err(DecodeError::BadCompression)
                };
            }
            out.reserve((size - out.len()).min(out.capacity().max(64 << 10)));
        }
        let consumed = z.total_in() as usize;
        let before = out.len();
        let st = z
            .decompress_vec(data.get(consumed..).unwrap_or_default(), &mut out, flate2::FlushDecompress::Finish)
            .map_err(|_| DecodeError::BadCompression)?;
        if out.len() > size {
            return Err(DecodeError::BadCompression);
        }
        match st {
            flate2::Status::StreamEnd => {
                return if out.len() == size { Ok(out) } else { Err(DecodeError::BadCompression) };
            }
            _ if out.len() == before && z.total_in() as usize == consumed && out.len() < out.capacity() => {
                return Err(DecodeError::BadCompression);
            }
            _ => {}
        }
    }
}
