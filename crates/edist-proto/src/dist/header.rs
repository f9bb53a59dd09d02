//! Dist headers (reference §6): `131,68` normal, `131,69` first fragment, `131,70` continuation,
//! and the `112` pass-through envelope; plus the receiver's atom cache (§6.2).

use super::flags::DFlags;
use crate::etf::{tag, Atom, DecodeError, Reader};
use thiserror::Error;

const DIST_HEADER: u8 = 68;
const DIST_FRAG_HEADER: u8 = 69;
const DIST_FRAG_CONT: u8 = 70;
const PASS_THROUGH: u8 = 112;

/// Errors in a dist header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("empty packet")]
    Empty,
    #[error("unknown envelope {0:?}")]
    BadEnvelope([u8; 2]),
    #[error("pass-through (112) packet on a connection that negotiated dist headers")]
    UnexpectedPassThrough,
    #[error("dist header on a connection that negotiated none")]
    UnexpectedHeader,
    #[error("fragment header without FRAGMENTS negotiated")]
    FragmentsNotNegotiated,
    #[error("atom cache reference to empty slot {0}")]
    EmptyCacheSlot(usize),
    #[error("fragment id 0 is invalid")]
    ZeroFragmentId,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The receiver's atom cache of one connection direction: 8 segments × 256 slots.
#[derive(Debug, Clone)]
pub struct AtomCache {
    slots: Vec<Option<Atom>>,
}

impl Default for AtomCache {
    fn default() -> Self {
        AtomCache { slots: vec![None; 2048] }
    }
}

/// One received packet, split at its header.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet<'a> {
    /// A whole message: control term then optional payload term, without version bytes
    /// (or with them, after a 112 pass-through: `versioned` says which).
    Message { atom_refs: Vec<Atom>, body: &'a [u8], versioned: bool },
    /// The first fragment of a message of `fragments` fragments.
    FragmentStart { seq: u64, fragments: u64, atom_refs: Vec<Atom>, body: &'a [u8] },
    /// A later fragment.
    FragmentCont { seq: u64, fragment: u64, body: &'a [u8] },
}

/// Splits a packet (without its length prefix) under the negotiated flags.
pub fn parse_packet<'a>(data: &'a [u8], flags: DFlags, cache: &mut AtomCache) -> Result<Packet<'a>, HeaderError> {
    let mut r = Reader::new(data);
    let first = r.u8().map_err(|_| HeaderError::Empty)?;
    if first == PASS_THROUGH {
        if flags.uses_dist_header() {
            return Err(HeaderError::UnexpectedPassThrough);
        }
        return Ok(Packet::Message { atom_refs: Vec::new(), body: r.rest(), versioned: true });
    }
    let kind = r.u8()?;
    if first != tag::VERSION || !matches!(kind, DIST_HEADER | DIST_FRAG_HEADER | DIST_FRAG_CONT) {
        return Err(HeaderError::BadEnvelope([first, kind]));
    }
    if !flags.uses_dist_header() {
        return Err(HeaderError::UnexpectedHeader);
    }
    if kind != DIST_HEADER && !flags.has(DFlags::FRAGMENTS) {
        return Err(HeaderError::FragmentsNotNegotiated);
    }
    match kind {
        DIST_HEADER => {
            let atom_refs = atom_refs(&mut r, cache)?;
            Ok(Packet::Message { atom_refs, body: r.rest(), versioned: false })
        }
        DIST_FRAG_HEADER => {
            let seq = r.u64()?;
            let fragments = r.u64()?;
            if fragments == 0 {
                return Err(HeaderError::ZeroFragmentId);
            }
            let atom_refs = atom_refs(&mut r, cache)?;
            Ok(Packet::FragmentStart { seq, fragments, atom_refs, body: r.rest() })
        }
        _ => {
            let seq = r.u64()?;
            let fragment = r.u64()?;
            if fragment == 0 {
                return Err(HeaderError::ZeroFragmentId);
            }
            Ok(Packet::FragmentCont { seq, fragment, body: r.rest() })
        }
    }
}

/// Reads the atom-cache part of a header (§6.2), updating `cache` with new entries.
fn atom_refs(r: &mut Reader<'_>, cache: &mut AtomCache) -> Result<Vec<Atom>, HeaderError> {
    let n = usize::from(r.u8()?);
    if n == 0 {
        return Ok(Vec::new());
    }
    let flag_bytes = r.take(n / 2 + 1)?;
    let nibble = |i: usize| -> u8 {
        let b = flag_bytes.get(i / 2).copied().unwrap_or(0);
        if i.is_multiple_of(2) {
            b & 0x0f
        } else {
            b >> 4
        }
    };
    let long_atoms = nibble(n) & 1 == 1;
    let mut refs = Vec::with_capacity(n);
    for i in 0..n {
        let f = nibble(i);
        let slot = usize::from(f & 7) * 256 + usize::from(r.u8()?);
        if f & 8 != 0 {
            let len = if long_atoms { usize::from(r.u16()?) } else { usize::from(r.u8()?) };
            let at = r.position();
            let text = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::BadAtom(at))?;
            if text.chars().count() > 255 {
                return Err(DecodeError::BadAtom(at).into());
            }
            let atom = Atom::from(text);
            if let Some(s) = cache.slots.get_mut(slot) {
                *s = Some(atom.clone());
            }
            refs.push(atom);
        } else {
            let atom = cache.slots.get(slot).cloned().flatten().ok_or(HeaderError::EmptyCacheSlot(slot))?;
            refs.push(atom);
        }
    }
    Ok(refs)
}

/// Writes the header of a whole message: `131,68,0` (no atom-cache refs), or `112` when the
/// connection negotiated no dist header.
pub fn put_message_header(out: &mut Vec<u8>, flags: DFlags) {
    if flags.uses_dist_header() {
        out.extend_from_slice(&[tag::VERSION, DIST_HEADER, 0]);
    } else {
        out.push(PASS_THROUGH);
    }
}

/// Writes the header of a first fragment.
pub fn put_fragment_start(out: &mut Vec<u8>, seq: u64, fragments: u64) {
    out.extend_from_slice(&[tag::VERSION, DIST_FRAG_HEADER]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&fragments.to_be_bytes());
    out.push(0);
}

/// Writes the header of a continuation fragment.
pub fn put_fragment_cont(out: &mut Vec<u8>, seq: u64, fragment: u64) {
    out.extend_from_slice(&[tag::VERSION, DIST_FRAG_CONT]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&fragment.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DFlags = DFlags(0xD_07DF_7FBD);

    #[test]
    fn real_atom_cache_header_from_otp() {
        // §6.2 example: 4 new refs, then a control and payload term using them.
        let mut p = vec![131, 68, 4, 0x88, 0xdc, 0x00, 0x22, 4];
        p.extend_from_slice(b"b@vm");
        p.extend_from_slice(&[0x05, 0]);
        p.extend_from_slice(&[0x78, 3]);
        p.extend_from_slice(b"rex");
        p.extend_from_slice(&[0x61, 16]);
        p.extend_from_slice(b"features_request");
        p.extend_from_slice(&[0x68, 0x04, 0x61, 0x06]);
        let mut cache = AtomCache::default();
        let Packet::Message { atom_refs, body, .. } = parse_packet(&p, F, &mut cache).unwrap() else { panic!() };
        let names: Vec<&str> = atom_refs.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["b@vm", "", "rex", "features_request"]);
        assert_eq!(body, &[0x68, 0x04, 0x61, 0x06]);
        // A later message reuses slot 0x22 (segment 0) as an old entry.
        let p2 = [131, 68, 1, 0x00, 0x22];
        let Packet::Message { atom_refs, .. } = parse_packet(&p2, F, &mut cache).unwrap() else { panic!() };
        assert_eq!(atom_refs[0].as_str(), "b@vm");
        // An old entry for an empty slot is an error, not a panic.
        assert_eq!(parse_packet(&[131, 68, 1, 0x00, 0x99], F, &mut cache), Err(HeaderError::EmptyCacheSlot(0x99)));
    }

    #[test]
    fn envelopes_follow_the_flags() {
        let mut c = AtomCache::default();
        assert_eq!(parse_packet(&[112, 131], F, &mut c), Err(HeaderError::UnexpectedPassThrough));
        let none = DFlags(F.0 & !(DFlags::FRAGMENTS | DFlags::DIST_HDR_ATOM_CACHE));
        assert!(matches!(parse_packet(&[112, 131, 106], none, &mut c), Ok(Packet::Message { versioned: true, .. })));
        assert_eq!(parse_packet(&[131, 68, 0], none, &mut c), Err(HeaderError::UnexpectedHeader));
        assert_eq!(parse_packet(&[1, 2], F, &mut c), Err(HeaderError::BadEnvelope([1, 2])));
        assert_eq!(parse_packet(&[], F, &mut c), Err(HeaderError::Empty));
    }
}
