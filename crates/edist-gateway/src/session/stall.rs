//! Whether a local node has stopped reading what the gateway writes to it (it is frozen, or its
//! schedulers are), sans IO: OTP's busy distribution port, carried across the relay. The far
//! gateway is told, and stops reading from its node, whose port goes busy as it would towards
//! a frozen node over one OTP connection; until then, the lanes' holds keep the HOL fix.
//!
//! A frozen node's kernel still takes a trickle now and then (its receive queue is compacted
//! and the window opens a little), so "took nothing for a while" is not the test: the node
//! stopped reading when, over [`WINDOW`], it kept the writer waiting most of the time and took
//! less than [`STALL_BYTES`]. It reads again when a window says otherwise, or when the
//! writer caught up with everything that waited.

use std::time::{Duration, Instant};

/// How long the node is watched before it is judged.
pub const WINDOW: Duration = Duration::from_millis(50);

/// Less than this taken in a [`WINDOW`] by a node that kept the writer waiting: it stopped
/// reading (1.3 MB/s; a node that reads at all takes hundreds of MB/s on loopback).
pub const STALL_BYTES: usize = 64 << 10;

/// One [`WINDOW`] being measured: it opens when the node first keeps the writer waiting.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    waited: Duration,
    taken: usize,
}

/// Watches one node's socket from the writer's side; each method returns the new verdict when
/// it changes (`Some(true)`: stopped reading, `Some(false)`: reads again).
#[derive(Debug, Default)]
pub struct StallWatch {
    window: Option<Window>,
    stalled: bool,
}

impl StallWatch {
    /// Whether the node is judged to have stopped reading.
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// Whether a window is open (the node kept the writer waiting since it was last judged).
    pub fn watching(&self) -> bool {
        self.window.is_some()
    }

    /// Until when a write that waits for the node may wait before the window is judged.
    pub fn deadline(&self, now: Instant) -> Instant {
        self.window.map_or(now, |w| w.start) + WINDOW
    }

    /// The node took `n` bytes at once, without keeping the writer waiting.
    pub fn took(&mut self, now: Instant, n: usize) -> Option<bool> {
        if let Some(w) = self.window.as_mut() {
            w.taken = w.taken.saturating_add(n);
        }
        self.judge(now)
    }

    /// The writer waited for the node from `from` to `to`, and it then took `n` bytes (0: the
    /// wait ended at the [`deadline`](Self::deadline)).
    pub fn waited(&mut self, from: Instant, to: Instant, n: usize) -> Option<bool> {
        let w = self.window.get_or_insert(Window { start: from, waited: Duration::ZERO, taken: 0 });
        w.waited += to.saturating_duration_since(from);
        w.taken = w.taken.saturating_add(n);
        self.judge(to)
    }

    /// Everything that waited for the node was taken: it reads.
    pub fn caught_up(&mut self) -> Option<bool> {
        self.window = None;
        self.verdict(false)
    }

    fn judge(&mut self, now: Instant) -> Option<bool> {
        let w = self.window?;
        let span = now.saturating_duration_since(w.start);
        if span < WINDOW {
            return None;
        }
        self.window = None;
        // Waiting most of the window: a node that keeps up hardly makes the writer wait.
        let stalled = w.waited * 4 >= span * 3 && w.taken < STALL_BYTES;
        tracing::trace!(waited = ?w.waited, taken = w.taken, stalled, "node's reading judged");
        self.verdict(stalled)
    }

    fn verdict(&mut self, stalled: bool) -> Option<bool> {
        (stalled != self.stalled).then(|| {
            self.stalled = stalled;
            stalled
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_node_that_takes_nothing_is_stalled_after_a_window() {
        let t = Instant::now();
        let mut s = StallWatch::default();
        assert_eq!(s.deadline(t), t + WINDOW);
        assert!(!s.watching());
        assert_eq!(s.waited(t, t + ms(20), 4096), None);
        assert!(s.watching(), "a wait opens a window");
        assert_eq!(s.deadline(t + ms(20)), t + WINDOW, "the window keeps its start");
        assert_eq!(s.waited(t + ms(20), t + WINDOW, 0), Some(true));
        assert!(s.stalled());
        // Still nothing: no new verdict.
        assert_eq!(s.waited(t + WINDOW, t + WINDOW * 2, 0), None);
        assert!(s.stalled());
    }

    #[test]
    fn a_trickle_is_not_reading() {
        let t = Instant::now();
        let mut s = StallWatch::default();
        // A frozen node's kernel takes a few KiB every 40 ms.
        let mut now = t;
        let mut verdicts = vec![];
        for _ in 0..10 {
            verdicts.extend(s.waited(now, now + ms(40), 4096));
            now += ms(40);
            verdicts.extend(s.took(now, 100));
        }
        assert_eq!(verdicts, vec![true], "stalled once, never back");
    }

    #[test]
    fn a_node_that_reads_is_not_stalled() {
        let t = Instant::now();
        let mut s = StallWatch::default();
        // It keeps the writer waiting all the time but takes a lot: a busy but reading node.
        let mut now = t;
        for _ in 0..20 {
            assert_eq!(s.waited(now, now + ms(10), 256 << 10), None);
            now += ms(10);
        }
        // It took little, but hardly made the writer wait: the writer had little to write.
        for _ in 0..20 {
            assert_eq!(s.waited(now, now + ms(1), 10), None);
            now += ms(10);
            assert_eq!(s.took(now, 10), None);
        }
        assert!(!s.stalled());
    }

    #[test]
    fn a_stalled_node_reads_again() {
        let t = Instant::now();
        let mut s = StallWatch::default();
        assert_eq!(s.waited(t, t + WINDOW, 0), Some(true));
        // A window in which it takes plenty.
        let t = t + WINDOW;
        assert_eq!(s.waited(t, t + ms(30), 1 << 20), None);
        assert_eq!(s.waited(t + ms(30), t + ms(60), 1 << 20), Some(false));
        // Or the writer catches up.
        assert_eq!(s.waited(t + ms(60), t + ms(60) + WINDOW, 0), Some(true));
        assert_eq!(s.caught_up(), Some(false));
        assert_eq!(s.caught_up(), None);
    }
}
