//! Fragmented messages (reference §6.3): reassembly on receive, splitting on send.
//!
//! Fragment ids count down to 1; fragments of one sequence arrive in order, but sequences from
//! different senders interleave freely, and a sequence id may be reused once its message is
//! complete. Reassembly is bounded: a cap on open sequences and on bytes buffered in all of them.

use super::flags::DFlags;
use super::frame::put_len;
use super::header::{put_fragment_cont, put_fragment_start, put_message_header};
use crate::etf::Atom;
use std::collections::HashMap;
use thiserror::Error;

/// OTP's fragment size (`ERTS_DIST_FRAGMENT_SIZE`): 64 KiB of control + payload per fragment.
pub const FRAGMENT_SIZE: usize = 64 * 1024;

/// Reassembly errors; each one means the peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FragmentError {
    #[error("fragment for unknown sequence {0:#x}")]
    UnknownSequence(u64),
    #[error("sequence {0:#x} started again while still open")]
    DuplicateSequence(u64),
    #[error("sequence {seq:#x}: fragment {got} arrived, {expected} was expected")]
    OutOfOrder { seq: u64, expected: u64, got: u64 },
    #[error("more than {0} fragmented messages open at once")]
    TooManyOpen(usize),
    #[error("fragmented message exceeds {0} bytes")]
    TooLarge(usize),
}

/// A message reassembled from its fragments.
#[derive(Debug, Clone, PartialEq)]
pub struct Reassembled {
    pub atom_refs: Vec<Atom>,
    /// Control term then optional payload term, without version bytes.
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Partial {
    next: u64,
    atom_refs: Vec<Atom>,
    body: Vec<u8>,
}

/// Reassembles fragmented messages of one connection direction.
#[derive(Debug)]
pub struct Reassembler {
    open: HashMap<u64, Partial>,
    max_open: usize,
    max_message: usize,
    max_total: usize,
    buffered: usize,
}

impl Reassembler {
    /// Bounds: open sequences, bytes per message, bytes buffered across all open sequences.
    pub fn new(max_open: usize, max_message: usize, max_total: usize) -> Self {
        Reassembler { open: HashMap::new(), max_open, max_message, max_total, buffered: 0 }
    }

    /// Number of messages being reassembled.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Bytes buffered across open sequences.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    fn grow(&mut self, by: usize, len_after: usize) -> Result<(), FragmentError> {
        if len_after > self.max_message {
            return Err(FragmentError::TooLarge(self.max_message));
        }
        if self.buffered + by > self.max_total {
            return Err(FragmentError::TooLarge(self.max_total));
        }
        self.buffered += by;
        Ok(())
    }

    /// Drops a message being reassembled (refused midway); its bytes no longer count.
    pub fn abandon(&mut self, seq: u64) {
        if let Some(p) = self.open.remove(&seq) {
            self.buffered -= p.body.len();
        }
    }

    /// A first fragment (`131,69`). Returns the message at once if it has only one fragment.
    pub fn start(
        &mut self,
        seq: u64,
        fragments: u64,
        atom_refs: Vec<Atom>,
        body: &[u8],
    ) -> Result<Option<Reassembled>, FragmentError> {
        if self.open.contains_key(&seq) {
            return Err(FragmentError::DuplicateSequence(seq));
        }
        if fragments <= 1 {
            if body.len() > self.max_message {
                return Err(FragmentError::TooLarge(self.max_message));
            }
            return Ok(Some(Reassembled { atom_refs, body: body.to_vec() }));
        }
        if self.open.len() >= self.max_open {
            return Err(FragmentError::TooManyOpen(self.max_open));
        }
        self.grow(body.len(), body.len())?;
        self.open.insert(seq, Partial { next: fragments - 1, atom_refs, body: body.to_vec() });
        Ok(None)
    }

    /// A continuation fragment (`131,70`). Returns the message when this was its last fragment.
    pub fn cont(&mut self, seq: u64, fragment: u64, body: &[u8]) -> Result<Option<Reassembled>, FragmentError> {
        let (next, len) = match self.open.get(&seq) {
            Some(p) => (p.next, p.body.len()),
            None => return Err(FragmentError::UnknownSequence(seq)),
        };
        if fragment != next {
            return Err(FragmentError::OutOfOrder { seq, expected: next, got: fragment });
        }
        self.grow(body.len(), len + body.len())?;
        let Some(p) = self.open.get_mut(&seq) else { return Err(FragmentError::UnknownSequence(seq)) };
        p.body.extend_from_slice(body);
        p.next -= 1;
        if fragment > 1 {
            return Ok(None);
        }
        let done = self.open.remove(&seq).ok_or(FragmentError::UnknownSequence(seq))?;
        self.buffered -= done.body.len();
        Ok(Some(Reassembled { atom_refs: done.atom_refs, body: done.body }))
    }
}

/// Frames one message (control and payload already encoded, no version bytes) for sending,
/// appending each packet with its u32 length prefix to `out`. Splits into fragments of
/// `fragment_size` when the connection negotiated FRAGMENTS and the message is larger.
pub fn frame_message(
    out: &mut Vec<Vec<u8>>,
    flags: DFlags,
    seq: u64,
    ctrl: &[u8],
    payload: &[u8],
    fragment_size: usize,
) {
    let total = ctrl.len() + payload.len();
    if !flags.has(DFlags::FRAGMENTS) || total <= fragment_size || fragment_size == 0 {
        let mut p = Vec::with_capacity(total + 12);
        let versioned = !flags.uses_dist_header();
        let hdr_len = if versioned { 1 + 1 + usize::from(!payload.is_empty()) } else { 3 };
        put_len(&mut p, total + hdr_len);
        put_message_header(&mut p, flags);
        if versioned {
            p.push(crate::etf::tag::VERSION);
        }
        p.extend_from_slice(ctrl);
        if versioned && !payload.is_empty() {
            p.push(crate::etf::tag::VERSION);
        }
        p.extend_from_slice(payload);
        out.push(p);
        return;
    }
    let first_part = fragment_size.saturating_sub(ctrl.len()).min(payload.len());
    let (head, rest) = payload.split_at(first_part);
    let fragments = 1 + rest.len().div_ceil(fragment_size) as u64;
    let mut p = Vec::with_capacity(ctrl.len() + head.len() + 23);
    put_len(&mut p, 19 + ctrl.len() + head.len());
    put_fragment_start(&mut p, seq, fragments);
    p.extend_from_slice(ctrl);
    p.extend_from_slice(head);
    out.push(p);
    for (i, chunk) in rest.chunks(fragment_size).enumerate() {
        let mut p = Vec::with_capacity(chunk.len() + 22);
        put_len(&mut p, 18 + chunk.len());
        put_fragment_cont(&mut p, seq, fragments - 1 - i as u64);
        p.extend_from_slice(chunk);
        out.push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::super::header::{parse_packet, AtomCache, Packet};
    use super::*;

    const F: DFlags = DFlags(0xD_07DF_5FBD);

    fn feed(r: &mut Reassembler, pkts: &[Vec<u8>]) -> Vec<Reassembled> {
        let mut cache = AtomCache::default();
        let mut done = Vec::new();
        for p in pkts {
            let m = match parse_packet(&p[4..], F, &mut cache).unwrap() {
                Packet::FragmentStart { seq, fragments, atom_refs, body } => {
                    r.start(seq, fragments, atom_refs, body).unwrap()
                }
                Packet::FragmentCont { seq, fragment, body } => r.cont(seq, fragment, body).unwrap(),
                Packet::Message { atom_refs, body, .. } => Some(Reassembled { atom_refs, body: body.to_vec() }),
            };
            done.extend(m);
        }
        done
    }

    #[test]
    fn split_then_reassemble_interleaved_with_reused_ids() {
        let a: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        frame_message(&mut pa, F, 1, b"CTRL", &a, FRAGMENT_SIZE);
        frame_message(&mut pb, F, 2, b"ctl", &b, FRAGMENT_SIZE);
        assert_eq!(pa.len(), 4);
        assert_eq!(pa[0].len(), 4 + 19 + FRAGMENT_SIZE);
        // Interleave a and b, then send a again under the same sequence id.
        let mut mixed = Vec::new();
        for i in 0..4 {
            mixed.extend(pa.get(i).cloned());
            mixed.extend(pb.get(i).cloned());
        }
        mixed.extend(pa.iter().cloned());
        let mut r = Reassembler::new(8, 1 << 20, 1 << 21);
        let done = feed(&mut r, &mixed);
        assert_eq!(done.len(), 3);
        assert_eq!(done[0].body, [b"ctl".as_ref(), &b].concat());
        assert_eq!(done[1].body, [b"CTRL".as_ref(), &a].concat());
        assert_eq!(done[2].body, done[1].body);
        assert_eq!((r.open(), r.buffered()), (0, 0));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut r = Reassembler::new(1, 100, 150);
        assert_eq!(r.cont(5, 1, b"x"), Err(FragmentError::UnknownSequence(5)));
        assert_eq!(r.start(1, 3, vec![], b"abc"), Ok(None));
        assert_eq!(r.start(1, 3, vec![], b"abc"), Err(FragmentError::DuplicateSequence(1)));
        assert_eq!(r.start(2, 3, vec![], b"abc"), Err(FragmentError::TooManyOpen(1)));
        assert_eq!(r.cont(1, 1, b"x"), Err(FragmentError::OutOfOrder { seq: 1, expected: 2, got: 1 }));
        assert_eq!(r.cont(1, 2, &[0; 200]), Err(FragmentError::TooLarge(100)));
    }

    #[test]
    fn small_message_and_pass_through() {
        let mut out = Vec::new();
        frame_message(&mut out, F, 0, &[1], &[2], FRAGMENT_SIZE);
        assert_eq!(out[0], [0, 0, 0, 5, 131, 68, 0, 1, 2]);
        out.clear();
        let none = DFlags(F.0 & !(DFlags::FRAGMENTS | DFlags::DIST_HDR_ATOM_CACHE));
        frame_message(&mut out, none, 0, &[1], &[2], FRAGMENT_SIZE);
        assert_eq!(out[0], [0, 0, 0, 5, 112, 131, 1, 131, 2]);
    }
}
