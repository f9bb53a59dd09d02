//! Stopping a gateway in order (SIGTERM, SIGINT):
//!
//! 1. stop taking new work: the local control port closes (every node's plug sees its
//!    registration end, releases what it held and tries to register again every 2 s), no new
//!    link is accepted or dialled, no new relayed connection is accepted from peers or from
//!    local nodes; peers hear that the local nodes are gone;
//! 2. let the relayed connections drain: wait, at most the drain bound, until nothing is
//!    queued in the gateway in either direction;
//! 3. close every link with [`CLOSE_SHUTDOWN`], which peers take as an orderly goodbye (their
//!    sessions with this gateway's nodes end at once, their nodes see `nodedown` in milliseconds
//!    instead of after the idle timeout), and wait until the close notices are out;
//! 4. end what is left; the loopback connections close, so local nodes see `nodedown` for the
//!    remote nodes.

use super::{lock, Gateway, Inner};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tracing::info;

/// Application close code of a link whose gateway shuts down in order (from 0x100 up: the
/// gateway's own codes, see [`crate::fabric::close`]).
pub const CLOSE_SHUTDOWN: u32 = 0x100;

/// How long the close notices may take to leave, at most.
const CLOSE_NOTICE_WAIT: Duration = Duration::from_secs(1);
/// How long relayed connections may take to end once their links closed, at most.
const RELAYS_END_WAIT: Duration = Duration::from_millis(500);

/// What [`Gateway::shutdown_gracefully`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every queue emptied within the bound.
    pub drained: bool,
    /// Links closed with [`CLOSE_SHUTDOWN`].
    pub links_closed: usize,
    /// Relayed connections still open when the gateway stopped.
    pub relays_left: u64,
    /// From the start of the shutdown to its end.
    pub took: Duration,
}

impl Gateway {
    /// Stops the gateway in order (see the module docs), letting relayed connections drain for
    /// at most `drain`.
    pub async fn shutdown_gracefully(&self, drain: Duration) -> ShutdownReport {
        let start = Instant::now();
        let inner = &self.inner;
        let relays_at_start = inner.sessions.load(Ordering::Relaxed);
        info!(relays = relays_at_start, drain_ms = drain.as_millis() as u64, "shutting down");
        inner.closing.store(true, Ordering::Relaxed);
        inner.stop_intake();
        // Nobody dials this gateway's impersonators from now on.
        let impersonators = inner.registry().take_impersonators();
        for task in impersonators {
            task.abort();
        }

        let deadline = start + drain;
        let drained = loop {
            if inner.queued() == 0 {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };

        let links = inner.links().conns();
        for l in &links {
            l.close(CLOSE_SHUTDOWN, b"the gateway is shutting down");
        }
        if let Some(t) = &self.transport {
            t.close();
            let _ = tokio::time::timeout(CLOSE_NOTICE_WAIT, t.wait_closed()).await;
        }
        let ends = Instant::now() + RELAYS_END_WAIT;
        while inner.sessions.load(Ordering::Relaxed) > 0 && Instant::now() < ends {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shutdown();
        let report = ShutdownReport {
            drained,
            links_closed: links.len(),
            relays_left: inner.sessions.load(Ordering::Relaxed),
            took: start.elapsed(),
        };
        info!(
            drained = report.drained,
            links_closed = report.links_closed,
            relays_left = report.relays_left,
            took_ms = report.took.as_millis() as u64,
            "gateway stopped"
        );
        report
    }
}

impl Inner {
    /// Stops the tasks that take new work: the local control port, the fabric's accepts,
    /// seeds and dial loops.
    pub(super) fn stop_intake(&self) {
        for t in lock(&self.intake).drain(..) {
            t.abort();
        }
        self.links.stop_dialers();
    }

    /// Packets queued in the gateway now, both directions, all peers.
    fn queued(&self) -> u64 {
        self.metrics.snapshot().traffic.iter().map(|p| p.inbound.queued + p.outbound().queued).sum()
    }
}
