//! Between the lanes of one session: the [`Merger`] the incoming lanes deliver into (through the
//! ingress policy), their progress ([`LaneSync`]: barriers, delivery reports, the far node's
//! ticks) and the outgoing bulk lanes' flow control (`LaneFlow`).

use crate::fabric::link::Link;
use crate::policy::{Refusal, Session};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where the lanes of one relayed connection deliver what they bring from the fabric.
#[derive(Clone)]
pub struct Merger {
    /// Packets (with their u32 length prefix) on their way to the local node, from all lanes,
    /// with the time each arrived.
    pub to_node: mpsc::Sender<Stamped>,
    /// Replies the policy makes for the peer (a refused rpc's error), sent on lane 0.
    pub replies: mpsc::UnboundedSender<Vec<u8>>,
    /// The peer gateway whose session this is (a lane from another peer is refused).
    pub peer: Arc<str>,
    /// The ingress policy towards the local node; `None`: packets pass untouched.
    pub policy: Option<Arc<InboundPolicy>>,
    /// What the lanes delivered, both ways (the ordering rule's barriers and reports).
    pub sync: Arc<LaneSync>,
}

/// A packet and the time it arrived at the gateway (for the time-in-gateway histogram).
pub type Stamped = (std::time::Instant, Vec<u8>);

/// The receiving ends of a session's [`Merger`]: packets for the local node, replies for the peer.
pub type MergerRx = (mpsc::Receiver<Stamped>, mpsc::UnboundedReceiver<Vec<u8>>);

/// Called with each refusal (or, in audit mode, each would-be refusal).
pub type OnRefuse = Box<dyn Fn(&Refusal) + Send + Sync>;

/// What a session needs to inspect packets under its peer's role.
pub struct InboundPolicy {
    /// The connection under the peer gateway's role (role, the peer's shared state, the nodes).
    pub session: Arc<Session>,
    /// Called for each refusal (logging once per burst and counting are the gateway's).
    pub on_refuse: OnRefuse,
}

/// Lanes of one relayed connection and direction, at most (lane indices are one byte).
pub(super) const MAX_LANES: usize = 256;

/// The lanes' progress, shared by a session's pump and its incoming lanes: how much each
/// incoming lane delivered to the node (lanes wait on each other's counts at barriers, and the
/// peer hears of it), and how much of our outgoing lanes the peer reports delivered.
#[derive(Debug, Default)]
pub struct LaneSync {
    state: std::sync::Mutex<SyncState>,
    /// Wakes incoming lanes waiting at a barrier.
    progress: tokio::sync::Notify,
    /// Wakes the pump: the peer reported deliveries (for the router).
    pub(super) pump: tokio::sync::Notify,
    /// Wakes the reporter: a bulk lane delivered what the peer has not heard of.
    pub(super) report: tokio::sync::Notify,
    /// Our outgoing bulk lanes' flows, by lane (grown on demand).
    flows: std::sync::Mutex<Vec<Arc<LaneFlow>>>,
    /// The far node stopped reading ([`LaneCtl::Stalled`]): the pump stops reading ours. Not
    /// in `state`: the pump looks at it for every packet of its node.
    peer_stalled: AtomicBool,
}

/// A lane, frames and bytes (as they crossed the link) delivered of it.
pub(super) type Delivery = (u8, u64, u64);

#[derive(Debug, Default)]
struct SyncState {
    /// Frames and bytes delivered to the node, per incoming lane.
    delivered: Vec<(u64, u64)>,
    /// Frames last reported to the peer, per incoming lane.
    reported: Vec<u64>,
    /// Some bulk lane delivered what the peer has not heard of.
    report_due: bool,
    /// What the peer reported of our outgoing lanes (taken by the pump).
    peer_delivered: Vec<Delivery>,
    /// The session ended: nobody waits any more.
    closed: bool,
    /// The far node missed its ticks ([`LaneCtl::Silent`]): no ticks towards ours.
    peer_silent: bool,
    /// The far node's `net_ticktime` in milliseconds, as its gateway said ([`LaneCtl::Alive`]);
    /// 0: not known.
    peer_ticktime_ms: u64,
    /// The far gateway relays its node's ticks ([`LaneCtl::Tick`]): ours gets those, and no
    /// others.
    peer_ticks: bool,
    /// The far gateway understands [`LaneCtl::Stalled`].
    peer_stalls: bool,
}

fn set_at<T: Default + Clone>(v: &mut Vec<T>, i: usize, f: impl FnOnce(&mut T)) {
    if i < MAX_LANES {
        if v.len() <= i {
            v.resize(i + 1, T::default());
        }
        if let Some(x) = v.get_mut(i) {
            f(x);
        }
    }
}

impl LaneSync {
    fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Incoming lane `lane` delivered one more frame of `bytes` bytes on the link. Bulk lanes
    /// are reported to the peer (coalesced by the pump): their sender keeps about a congestion
    /// window outstanding, and a sender leaves a bulk lane once its frames there are delivered.
    pub(super) fn delivered(&self, lane: u8, bytes: usize) {
        let mut st = self.state();
        set_at(&mut st.delivered, lane as usize, |d: &mut (u64, u64)| *d = (d.0 + 1, d.1 + bytes as u64));
        if lane != 0 {
            st.report_due = true;
            drop(st);
            self.report.notify_one();
        }
        self.progress.notify_waiters();
    }

    /// Waits until incoming lane `lane` delivered `count` frames; false once the session ended.
    pub(super) async fn after(&self, lane: u8, count: u64) -> bool {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state();
                if st.closed {
                    return false;
                }
                if st.delivered.get(lane as usize).map_or(0, |d| d.0) >= count {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// The flow of our outgoing lane `lane`.
    pub(super) fn flow(&self, lane: u8) -> Arc<LaneFlow> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = Arc::default();
        set_at(&mut flows, lane as usize, |x: &mut Arc<LaneFlow>| f = x.clone());
        f
    }

    /// The peer reports our outgoing lane `lane` delivered `count` frames, `bytes` bytes.
    pub(super) fn peer_delivered(&self, lane: u8, count: u64, bytes: u64) {
        // The lane's writer may go on at once, whatever the pump is doing.
        self.flow(lane).delivered(bytes);
        let mut st = self.state();
        let full = st.peer_delivered.len() >= MAX_LANES;
        match st.peer_delivered.iter_mut().find(|e| e.0 == lane) {
            Some(e) => *e = (lane, e.1.max(count), e.2.max(bytes)),
            None if !full => st.peer_delivered.push((lane, count, bytes)),
            None => {}
        }
        drop(st);
        self.pump.notify_one();
    }

    /// What the peer reported since the last call.
    pub(super) fn take_received(&self) -> Vec<Delivery> {
        std::mem::take(&mut self.state().peer_delivered)
    }

    /// Reports to send: lanes that delivered more since the last call.
    pub(super) fn take_reports(&self) -> Vec<Delivery> {
        let mut st = self.state();
        let mut out = Vec::new();
        if std::mem::take(&mut st.report_due) {
            let SyncState { delivered, reported, .. } = &mut *st;
            for (i, (frames, bytes)) in delivered.iter().enumerate().skip(1) {
                if *frames > reported.get(i).copied().unwrap_or(0) {
                    out.push((i as u8, *frames, *bytes));
                }
            }
            for (i, frames, _) in out.iter() {
                set_at(reported, *i as usize, |r: &mut u64| *r = *frames);
            }
        }
        out
    }

    pub(super) fn set_peer_silent(&self) {
        self.state().peer_silent = true;
    }

    /// The far node speaks, with this `net_ticktime` (0: not said); `ticks`: its gateway
    /// relays its ticks; `stalls`: it understands [`LaneCtl::Stalled`].
    pub(super) fn set_peer_alive(&self, ticktime_ms: u64, ticks: bool, stalls: bool) {
        let mut st = self.state();
        st.peer_silent = false;
        st.peer_ticks |= ticks;
        st.peer_stalls |= stalls;
        if ticktime_ms > 0 {
            st.peer_ticktime_ms = ticktime_ms;
        }
    }

    /// Whether the far gateway may be told that our node stopped reading.
    pub(super) fn peer_stalls(&self) -> bool {
        self.state().peer_stalls
    }

    /// The far node stopped reading (`true`) or reads again; wakes the pump.
    pub(super) fn set_peer_stalled(&self, stalled: bool) {
        self.peer_stalled.store(stalled, Ordering::Relaxed);
        self.pump.notify_one();
    }

    /// Whether the far node has stopped reading (then the pump does not read from ours).
    pub(super) fn peer_stalled(&self) -> bool {
        self.peer_stalled.load(Ordering::Relaxed)
    }

    /// Whether the far gateway relays its node's ticks (then they go to the far gateway too).
    pub(super) fn peer_ticks(&self) -> bool {
        self.state().peer_ticks
    }

    /// Whether this gateway ticks towards its node when it has nothing else to write: only
    /// while the far gateway does not relay its node's ticks (a gateway that predates them)
    /// and has not said its node went silent.
    pub(super) fn ticks_here(&self) -> bool {
        let st = self.state();
        !st.peer_ticks && !st.peer_silent
    }

    /// The far node's `net_ticktime`, when its gateway said it.
    pub(super) fn peer_ticktime(&self) -> Option<Duration> {
        Some(self.state().peer_ticktime_ms).filter(|&ms| ms > 0).map(Duration::from_millis)
    }

    /// The session ended: lanes waiting at a barrier give up.
    pub fn close(&self) {
        self.state().closed = true;
        self.progress.notify_waiters();
    }
}

/// What a bulk lane has written and the peer reports delivered, in bytes on the link: its writer
/// keeps about two congestion windows outstanding, so bulk data waits in the lane's queue (whose
/// senders are held back) rather than in the transport's buffer, in front of everyone.
#[derive(Debug, Default)]
pub(super) struct LaneFlow {
    pub(super) written: std::sync::atomic::AtomicU64,
    pub(super) delivered: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
}

/// A bulk lane's flow and the link it goes over.
pub(super) type Flow = (Arc<LaneFlow>, Option<Arc<dyn Link>>);

/// Bounds of what a bulk lane keeps outstanding; the default where the transport does not say.
const FLOW_MIN: u64 = 128 << 10;
const FLOW_MAX: u64 = 16 << 20;
const FLOW_DEFAULT: u64 = 4 << 20;

impl LaneFlow {
    pub(super) fn delivered(&self, bytes: u64) {
        self.delivered.fetch_max(bytes, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// What a lane may keep outstanding on `link` now.
    pub(super) fn window(link: Option<&dyn Link>) -> u64 {
        match link.and_then(|l| l.in_flight_hint()) {
            Some(cwnd) => cwnd.saturating_mul(2).clamp(FLOW_MIN, FLOW_MAX),
            None => FLOW_DEFAULT,
        }
    }

    /// Waits until `n` more bytes fit in `window` (or nothing is outstanding).
    pub(super) async fn room(&self, n: usize, window: u64) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let out = self.written.load(Ordering::Relaxed).saturating_sub(self.delivered.load(Ordering::Relaxed));
            if out == 0 || out.saturating_add(n as u64) <= window {
                return;
            }
            notified.await;
        }
    }
}
