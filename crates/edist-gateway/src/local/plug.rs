//! The gateway's line to a node's plug (`edist_epmd`), on the node's registration connection.
//!
//! After the EPMD registration answer both sides may send frames `[u32 length][term]` (external
//! term format; the plug reads them with `{packet, 4}`):
//!
//! * plug → gateway: `{edist_plug, 1, NetTicktimeSeconds}` first — without it the connection
//!   stays a plain registration and nothing is sent to it — then `{net_ticktime, Seconds}`
//!   whenever the node's ticktime changes (`net_kernel:set_net_ticktime/1`);
//! * gateway → plug: `{hold, Pid}` — that process sends more than its lane can carry soon, so
//!   the plug suspends it — and `{release, Pid}` once its lane has drained. The plug never
//!   holds system processes and resumes everything it holds when this connection closes.
//!
//! Decoding is sans IO ([`Reports`]); [`Plug`] is the handle the relays use.

use edist_proto::codec::{Peeked, U32Frames};
use edist_proto::etf::{self, Limits, Pid, Term};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest frame a plug may send.
const MAX_FRAME: usize = 4096;
/// The plug's `{packet, 4}` frames.
const FRAMES: U32Frames = U32Frames::new(MAX_FRAME);

/// What a plug reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The plug speaks this protocol; the node's ticktime (seconds).
    Hello { ticktime: u64 },
    /// The node's ticktime changed (seconds).
    Ticktime(u64),
}

/// Splits what a registration connection sends into [`Report`]s. Anything that is not a plug's
/// hello at the start, or a frame that breaks the format later, turns the reader off: the rest is
/// ignored, as epmd ignores what a registered node sends.
#[derive(Debug, Default)]
pub struct Reports {
    buf: Vec<u8>,
    hello: bool,
    off: bool,
}

impl Reports {
    /// Takes bytes read from the connection; returns the reports they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Report> {
        let mut out = Vec::new();
        if self.off {
            return out;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let len = match FRAMES.peek(&self.buf) {
                Ok(Peeked::Frame { len, .. }) => len,
                Ok(Peeked::Need(_)) => break,
                Err(_) => {
                    self.turn_off();
                    break;
                }
            };
            let Some(frame) = self.buf.get(4..4 + len) else { break };
            match (self.hello, parse(frame)) {
                (false, Some(r @ Report::Hello { .. })) | (true, Some(r @ Report::Ticktime(_))) => {
                    self.hello = true;
                    out.push(r);
                }
                _ => {
                    self.turn_off();
                    break;
                }
            }
            self.buf.drain(..4 + len);
        }
        out
    }

    fn turn_off(&mut self) {
        self.off = true;
        self.buf = Vec::new();
    }
}

fn parse(frame: &[u8]) -> Option<Report> {
    let t = etf::decode_versioned(frame, &Limits::default()).ok()?;
    let items = t.as_tuple()?;
    let seconds = |t: &Term| t.as_int().and_then(|s| u64::try_from(s).ok()).filter(|s| *s > 0);
    match items {
        [tag, vsn, tick] if tag.as_atom()?.as_str() == "edist_plug" && vsn.as_int()? >= 1 => {
            Some(Report::Hello { ticktime: seconds(tick)? })
        }
        [tag, tick] if tag.as_atom()?.as_str() == "net_ticktime" => Some(Report::Ticktime(seconds(tick)?)),
        _ => None,
    }
}

/// One command frame for the plug.
fn command(verb: &str, pid: &Pid) -> Vec<u8> {
    let body = etf::encode_versioned(&Term::tuple([Term::atom(verb), Term::Pid(pid.clone())]));
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A registered node's plug, as the relays see it: whether it speaks, its ticktime, and the
/// way to hold and release its processes.
#[derive(Debug, Clone)]
pub struct Plug {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::UnboundedSender<Vec<u8>>,
    speaks: AtomicBool,
    /// Milliseconds; 0 until the plug said.
    ticktime_ms: Arc<AtomicU64>,
}

impl Plug {
    /// A handle and the frames to write to the registration connection.
    pub fn new() -> (Plug, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Inner { commands, speaks: AtomicBool::new(false), ticktime_ms: Arc::default() };
        (Plug { inner: Arc::new(inner) }, rx)
    }

    /// Applies a report from the connection.
    pub fn report(&self, r: &Report) {
        let (Report::Hello { ticktime } | Report::Ticktime(ticktime)) = r;
        self.inner.ticktime_ms.store(ticktime.saturating_mul(1000), Ordering::Relaxed);
        self.inner.speaks.store(true, Ordering::Relaxed);
    }

    /// Whether a plug answered on this registration (so holds reach somebody).
    pub fn speaks(&self) -> bool {
        self.inner.speaks.load(Ordering::Relaxed) && !self.inner.commands.is_closed()
    }

    /// The node's ticktime in milliseconds as reported (0: not reported), kept current.
    pub fn ticktime_ms(&self) -> Arc<AtomicU64> {
        self.inner.ticktime_ms.clone()
    }

    /// Asks the plug to suspend `pid`; false if no plug listens.
    pub fn hold(&self, pid: &Pid) -> bool {
        self.speaks() && self.inner.commands.send(command("hold", pid)).is_ok()
    }

    /// Asks the plug to resume `pid`.
    pub fn release(&self, pid: &Pid) {
        let _ = self.inner.commands.send(command("release", pid));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(t: &Term) -> Vec<u8> {
        let body = etf::encode_versioned(t);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_plug_says_hello_then_ticktimes_in_any_pieces() {
        let mut r = Reports::default();
        let hello = frame(&Term::tuple([Term::atom("edist_plug"), Term::Int(1), Term::Int(60)]));
        let tick = frame(&Term::tuple([Term::atom("net_ticktime"), Term::Int(5)]));
        let all: Vec<u8> = [hello, tick.clone()].concat();
        let mut got = Vec::new();
        for b in all.chunks(3) {
            got.extend(r.push(b));
        }
        assert_eq!(got, vec![Report::Hello { ticktime: 60 }, Report::Ticktime(5)]);
        let (plug, _rx) = Plug::new();
        assert!(!plug.speaks());
        for g in &got {
            plug.report(g);
        }
        assert!(plug.speaks());
        assert_eq!(plug.ticktime_ms().load(Ordering::Relaxed), 5000);
    }

    #[test]
    fn anything_else_turns_the_reader_off() {
        // Not a hello first (an old plug's stray bytes, a Rust node, garbage).
        let tick = frame(&Term::tuple([Term::atom("net_ticktime"), Term::Int(5)]));
        let mut r = Reports::default();
        assert!(r.push(&tick).is_empty());
        let hello = frame(&Term::tuple([Term::atom("edist_plug"), Term::Int(1), Term::Int(60)]));
        assert!(r.push(&hello).is_empty(), "off for good");
        // A huge length, a zero ticktime, a term that is no tuple.
        for bad in [
            vec![0xff, 0xff, 0xff, 0xff],
            frame(&Term::tuple([Term::atom("edist_plug"), Term::Int(1), Term::Int(0)])),
            frame(&Term::Int(3)),
        ] {
            let mut r = Reports::default();
            assert!(r.push(&bad).is_empty());
            assert!(r.push(&hello).is_empty());
        }
    }

    #[test]
    fn commands_are_framed_terms_and_need_a_plug() {
        let (plug, mut rx) = Plug::new();
        let pid = Pid { node: etf::Atom::from("a@h"), id: 7, serial: 0, creation: 3 };
        assert!(!plug.hold(&pid), "nobody listens before the hello");
        plug.report(&Report::Hello { ticktime: 60 });
        assert!(plug.hold(&pid));
        let f = rx.try_recv().unwrap();
        let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 4);
        let t = etf::decode_versioned(&f[4..], &Limits::default()).unwrap();
        assert_eq!(t, Term::tuple([Term::atom("hold"), Term::Pid(pid)]));
        drop(rx);
        assert!(!plug.speaks(), "the connection is gone");
    }
}
