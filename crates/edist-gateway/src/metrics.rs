//! Metrics of one gateway instance: counters, gauges and a histogram, owned by the gateway (no
//! global registry, so several gateways in one process each count their own traffic), read by
//! `edist status` ([`Metrics::snapshot`]) and served to Prometheus by [`http`] when
//! `[metrics] listen` is set.
//!
//! Hot paths hold an [`Arc`] to their peer's (and lane's) atomics, taken once per session
//! ([`Metrics::session`]); the maps behind a mutex are touched only when a session, link or
//! refusal starts.

mod exposition;
pub mod http;
pub use exposition::CONTENT_TYPE;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `[metrics]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint (`GET /metrics`), e.g. `127.0.0.1:9108`; none (the
    /// default) serves no metrics.
    pub listen: Option<SocketAddr>,
}

/// Upper bounds (seconds) of the time-in-gateway histogram buckets: 10 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 14] =
    [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 1e-1, 2.5e-1, 1.0];

/// A histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS`], then `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (one per [`LATENCY_BUCKETS`] entry, then `+Inf`), sum in seconds,
    /// count.
    pub fn read(&self) -> (Vec<u64>, f64, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (cumulative, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, self.count.load(Ordering::Relaxed))
    }
}

/// Traffic counters of one direction (and lane) of one peer.
#[derive(Debug, Default)]
pub struct Traffic {
    bytes: AtomicU64,
    messages: AtomicU64,
    fragments: AtomicU64,
    /// Packets queued right now (summed over the relays through this peer and lane).
    queued: AtomicI64,
}

/// What a distribution packet is, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An empty packet (a tick).
    Tick,
    /// A whole message.
    Message,
    /// The first fragment of a message.
    FirstFragment,
    /// A later fragment.
    Fragment,
}

impl Kind {
    /// Classifies a packet (with its 4-byte length prefix, uncompressed).
    pub fn of(packet: &[u8]) -> Kind {
        // §6.3: 131,68 is a whole message, 131,69 the first fragment of one, 131,70 a later
        // fragment. Anything else (no dist header) is one message too.
        match packet.get(4..6) {
            None => Kind::Tick,
            Some([131, 69]) => Kind::FirstFragment,
            Some([131, 70]) => Kind::Fragment,
            Some(_) => Kind::Message,
        }
    }
}

impl Traffic {
    /// Counts one packet of `bytes` bytes.
    fn count(&self, kind: Kind, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let (messages, fragments) = match kind {
            Kind::Tick => (0, 0),
            Kind::Message => (1, 0),
            Kind::FirstFragment => (1, 1),
            Kind::Fragment => (0, 1),
        };
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.fragments.fetch_add(fragments, Ordering::Relaxed);
    }

    fn read(&self) -> TrafficCounts {
        TrafficCounts {
            bytes: self.bytes.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            fragments: self.fragments.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

/// A reading of [`Traffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficCounts {
    pub bytes: u64,
    pub messages: u64,
    pub fragments: u64,
    /// Packets queued at the time of the reading.
    pub queued: u64,
}

/// Everything counted for one peer gateway.
#[derive(Debug, Default)]
struct PeerStats {
    /// Towards the peer, by lane (0 is the relay stream itself).
    out: Mutex<Vec<Arc<Traffic>>>,
    /// From the peer (all lanes: incoming lanes do not say their index).
    inbound: Arc<Traffic>,
    /// Relays not reading from their local node because the far node stopped reading.
    paused: AtomicU64,
    /// Relays whose local node stopped reading (the far gateway was told).
    stalled: AtomicU64,
}

impl PeerStats {
    fn lane(&self, i: usize) -> Arc<Traffic> {
        let mut out = lock(&self.out);
        while out.len() <= i {
            out.push(Arc::default());
        }
        out.get(i).cloned().unwrap_or_default()
    }
}

/// What a failed relayed handshake counts as. The error says (a session's, in
/// `session/shell.rs`), so that the metrics need not import the session, which reports into them.
pub trait HandshakeOutcome {
    /// A short fixed label: `refused`, `timeout`, `bad_cookie`, `bad_handshake` or `error`.
    fn outcome(&self) -> &'static str;
}

/// A gateway instance's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    peers: Mutex<BTreeMap<String, Arc<PeerStats>>>,
    /// (peer, reason) -> count.
    refusals: Mutex<BTreeMap<(String, String), u64>>,
    /// (peer, reason) -> count of what a role in audit mode would have refused (it passed).
    audits: Mutex<BTreeMap<(String, String), u64>>,
    /// (peer, direction, outcome) -> count.
    handshakes: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
    /// (peer, outcome) -> count, for the QUIC + hello handshakes of fabric links.
    link_handshakes: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// (peer, "up" | "down") -> count.
    link_events: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Time from a packet's arrival at the gateway to its write onward, by direction.
    latency_out: Arc<Histogram>,
    latency_in: Arc<Histogram>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *lock(m).entry(k).or_default() += 1;
}

impl Metrics {
    /// Counts a refusal of something `peer` (a gateway or a node name) asked for, e.g. by policy;
    /// `reason` is a short fixed word (it becomes a label: no free text, no node names).
    pub fn refused(&self, peer: &str, reason: &str) {
        bump(&self.refusals, (peer.to_string(), reason.to_string()));
    }

    /// Counts what the policy would have refused of `peer` in audit mode (it passed); `reason`
    /// as for [`Metrics::refused`].
    pub fn audited(&self, peer: &str, reason: &str) {
        bump(&self.audits, (peer.to_string(), reason.to_string()));
    }

    /// Counts the outcome of a relayed handshake with a node behind `peer`; `outgoing` when a
    /// local node dialled. Passes the result through, so the call wraps the handshake.
    pub fn handshake<T, E: HandshakeOutcome>(&self, peer: &str, outgoing: bool, r: Result<T, E>) -> Result<T, E> {
        let dir = if outgoing { "out" } else { "in" };
        let what = match &r {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        bump(&self.handshakes, (peer.to_string(), dir, what));
        r
    }

    /// Counts a fabric link handshake (QUIC, mutual TLS, hello) with `peer` (`""`: unknown).
    pub fn link_handshake(&self, peer: &str, ok: bool) {
        bump(&self.link_handshakes, (peer.to_string(), if ok { "ok" } else { "failed" }));
    }

    /// Counts a link to `peer` coming up.
    pub fn link_up(&self, peer: &str) {
        bump(&self.link_events, (peer.to_string(), "up"));
    }

    /// Counts a link to `peer` going down.
    pub fn link_down(&self, peer: &str) {
        bump(&self.link_events, (peer.to_string(), "down"));
    }

    fn peer(&self, peer: &str) -> Arc<PeerStats> {
        lock(&self.peers).entry(peer.to_string()).or_default().clone()
    }

    /// The handle a relayed connection through `peer` counts its traffic with.
    pub fn session(&self, peer: &str) -> SessionMetrics {
        let peer = self.peer(peer);
        let inbound = InMetrics {
            traffic: peer.inbound.clone(),
            latency: self.latency_in.clone(),
            depth: DepthSlot { target: Some(peer.inbound.clone()), mine: 0 },
        };
        SessionMetrics { out: OutMetrics { peer, lanes: vec![], latency: self.latency_out.clone() }, inbound }
    }

    /// Bytes of all peers: (received, sent).
    pub fn totals(&self) -> (u64, u64) {
        self.snapshot().traffic.iter().fold((0, 0), |(i, o), p| (i + p.inbound.bytes, o + p.outbound().bytes))
    }

    /// Everything counted so far.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut traffic = vec![];
        for (name, p) in lock(&self.peers).iter() {
            let lanes: Vec<TrafficCounts> = lock(&p.out).iter().map(|t| t.read()).collect();
            traffic.push(PeerTraffic {
                peer: name.clone(),
                inbound: p.inbound.read(),
                lanes,
                paused: p.paused.load(Ordering::Relaxed),
                stalled: p.stalled.load(Ordering::Relaxed),
            });
        }
        let flat2 = |m: &Mutex<BTreeMap<(String, &'static str), u64>>| {
            lock(m).iter().map(|((p, o), n)| (p.clone(), o.to_string(), *n)).collect::<Vec<_>>()
        };
        MetricsSnapshot {
            traffic,
            refusals: lock(&self.refusals).iter().map(|((p, r), n)| (p.clone(), r.clone(), *n)).collect(),
            audits: lock(&self.audits).iter().map(|((p, r), n)| (p.clone(), r.clone(), *n)).collect(),
            handshakes: lock(&self.handshakes)
                .iter()
                .map(|((p, d, o), n)| (p.clone(), d.to_string(), o.to_string(), *n))
                .collect(),
            link_handshakes: flat2(&self.link_handshakes),
            link_events: flat2(&self.link_events),
        }
    }

    /// The Prometheus text exposition of these metrics plus `gauges` (name, help, value),
    /// which the caller reads from its state at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        exposition::render(self, gauges, &[])
    }

    /// [`Metrics::render`] plus gauges per peer gateway: (name, help, [(peer, value)]).
    pub fn render_with(&self, gauges: &[(&str, &str, u64)], per_peer: &[PeerGauge<'_>]) -> String {
        exposition::render(self, gauges, per_peer)
    }
}

/// A gauge with a value per peer gateway: name, help, (peer, value) pairs.
pub type PeerGauge<'a> = (&'a str, &'a str, Vec<(String, u64)>);

/// What [`Metrics`] counted, for `edist status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Per peer gateway, in name order.
    pub traffic: Vec<PeerTraffic>,
    /// (peer, reason, count).
    pub refusals: Vec<(String, String, u64)>,
    /// (peer, reason, count) of what roles in audit mode would have refused (it passed).
    #[serde(default)]
    pub audits: Vec<(String, String, u64)>,
    /// (peer, direction, outcome, count) of relayed handshakes.
    pub handshakes: Vec<(String, String, String, u64)>,
    /// (peer, outcome, count) of fabric link handshakes.
    pub link_handshakes: Vec<(String, String, u64)>,
    /// (peer, "up" | "down", count).
    pub link_events: Vec<(String, String, u64)>,
}

/// Traffic with one peer gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTraffic {
    pub peer: String,
    /// Received from the peer, all lanes.
    pub inbound: TrafficCounts,
    /// Sent to the peer, by lane (index = lane number).
    pub lanes: Vec<TrafficCounts>,
    /// Relays not reading from their local node now, because the far node stopped reading.
    #[serde(default)]
    pub paused: u64,
    /// Relays whose local node stopped reading now (the far gateway was told).
    #[serde(default)]
    pub stalled: u64,
}

impl PeerTraffic {
    /// Sent to the peer, all lanes.
    pub fn outbound(&self) -> TrafficCounts {
        self.lanes.iter().fold(TrafficCounts::default(), |a, l| TrafficCounts {
            bytes: a.bytes + l.bytes,
            messages: a.messages + l.messages,
            fragments: a.fragments + l.fragments,
            queued: a.queued + l.queued,
        })
    }
}

/// This relay's share of a queue-depth gauge shared by all relays through a peer: set from
/// the relay's own queue length, withdrawn when the relay ends.
#[derive(Debug, Default)]
pub struct DepthSlot {
    target: Option<Arc<Traffic>>,
    mine: i64,
}

impl DepthSlot {
    /// This relay's queue now holds `len` packets.
    pub fn set(&mut self, len: usize) {
        let len = len as i64;
        if let Some(t) = &self.target {
            t.queued.fetch_add(len - self.mine, Ordering::Relaxed);
        }
        self.mine = len;
    }
}

impl Drop for DepthSlot {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// One relayed connection's handle on its peer's counters; [`SessionMetrics::split`] gives
/// the two directions to the two halves of the relay.
#[derive(Debug)]
pub struct SessionMetrics {
    out: OutMetrics,
    inbound: InMetrics,
}

impl SessionMetrics {
    /// (towards the peer, from the peer).
    pub fn split(self) -> (OutMetrics, InMetrics) {
        (self.out, self.inbound)
    }
}

/// One relay's share of a per-peer count of relays in a state (paused, stalled): counted while
/// set, and no longer once dropped.
#[derive(Debug)]
pub struct RelayState {
    peer: Arc<PeerStats>,
    count: fn(&PeerStats) -> &AtomicU64,
    on: bool,
}

impl RelayState {
    /// Whether the relay is in the state.
    pub fn is_set(&self) -> bool {
        self.on
    }

    /// Enters (`true`) or leaves the state.
    pub fn set(&mut self, on: bool) {
        if on != self.on {
            self.on = on;
            let c = (self.count)(&self.peer);
            match on {
                true => c.fetch_add(1, Ordering::Relaxed),
                false => c.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }
}

impl Drop for RelayState {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Counters of a relay's traffic towards the peer gateway.
#[derive(Debug)]
pub struct OutMetrics {
    peer: Arc<PeerStats>,
    /// The lanes' counters, taken on first use.
    lanes: Vec<Option<Arc<Traffic>>>,
    latency: Arc<Histogram>,
}

impl OutMetrics {
    fn traffic(&mut self, lane: usize) -> Arc<Traffic> {
        if self.lanes.len() <= lane {
            self.lanes.resize(lane + 1, None);
        }
        match self.lanes.get_mut(lane) {
            Some(Some(t)) => t.clone(),
            Some(slot) => slot.insert(self.peer.lane(lane)).clone(),
            None => self.peer.lane(lane),
        }
    }

    /// A packet of `kind` goes to lane `lane` as `wire_bytes` bytes (after compression).
    pub fn sent(&mut self, lane: usize, kind: Kind, wire_bytes: usize) {
        self.traffic(lane).count(kind, wire_bytes);
    }

    /// Whether this relay does not read from its node because the far node stopped reading.
    pub fn paused(&self) -> RelayState {
        RelayState { peer: self.peer.clone(), count: |p| &p.paused, on: false }
    }

    /// Whether this relay's node stopped reading (it is the far side's relay that pauses).
    pub fn stalled(&self) -> RelayState {
        RelayState { peer: self.peer.clone(), count: |p| &p.stalled, on: false }
    }

    /// The handle of lane `lane`'s writer.
    pub fn lane(&mut self, lane: usize) -> LaneMetrics {
        LaneMetrics { latency: self.latency.clone(), depth: DepthSlot { target: Some(self.traffic(lane)), mine: 0 } }
    }
}

/// The queue and latency of one outgoing lane of one relay, moved into its writer task.
#[derive(Debug)]
pub struct LaneMetrics {
    latency: Arc<Histogram>,
    depth: DepthSlot,
}

impl LaneMetrics {
    /// A packet was written to the lane `since` it arrived from the local node; `left` packets
    /// wait behind it.
    pub fn written(&mut self, since: Instant, left: usize) {
        self.latency.observe(since.elapsed());
        self.depth.set(left);
    }
}

/// Counters of a relay's traffic from the peer gateway.
#[derive(Debug)]
pub struct InMetrics {
    traffic: Arc<Traffic>,
    latency: Arc<Histogram>,
    depth: DepthSlot,
}

impl InMetrics {
    /// One packet from the peer was written to the local node `since` it arrived on its lane;
    /// `left` packets wait behind it.
    pub fn received(&mut self, packet: &[u8], since: Instant, left: usize) {
        self.traffic.count(Kind::of(packet), packet.len());
        self.latency.observe(since.elapsed());
        self.depth.set(left);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn packets_are_classified_and_queues_withdrawn() {
        let m = Metrics::default();
        let (mut o, mut r) = m.session("gw-b").split();
        let mut l2 = o.lane(2);
        let t = Instant::now();
        for p in [packet(&[131, 68, 0, 1]), packet(&[131, 69, 0, 1, 2]), packet(&[131, 70, 0])] {
            o.sent(2, Kind::of(&p), p.len());
        }
        l2.written(t, 1);
        r.received(&packet(&[]), t, 5);
        r.received(&packet(&[112, 1]), t, 4);
        let s = m.snapshot();
        let p = &s.traffic[0];
        assert_eq!(p.lanes.len(), 3);
        assert_eq!(p.lanes[2], TrafficCounts { bytes: 24, messages: 2, fragments: 2, queued: 1 });
        assert_eq!(p.inbound, TrafficCounts { bytes: 10, messages: 1, fragments: 0, queued: 4 });
        // A second relay adds its own queue; ending relays withdraw theirs.
        let (_o2, mut r2) = m.session("gw-b").split();
        r2.received(&packet(&[131, 68]), t, 2);
        assert_eq!(m.snapshot().traffic[0].inbound.queued, 6);
        drop((r, l2, o));
        assert_eq!(m.snapshot().traffic[0].inbound.queued, 2);
        assert_eq!(m.snapshot().traffic[0].lanes[2].queued, 0);
        drop(r2);
        assert_eq!(m.totals(), (16, 24));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(5));
        let (b, sum, n) = h.read();
        assert_eq!((b[0], b[8], b[13], b[14], n), (1, 2, 2, 3, 3));
        assert!((sum - 5.003005).abs() < 1e-6);
    }

    #[test]
    fn refusals_and_outcomes_are_counted() {
        let m = Metrics::default();
        m.refused("gw-b", "policy");
        m.refused("gw-b", "policy");
        m.refused("gw-c", "unknown_node");
        struct TimedOut;
        impl HandshakeOutcome for TimedOut {
            fn outcome(&self) -> &'static str {
                "timeout"
            }
        }
        let _ = m.handshake::<(), _>("gw-b", true, Err(TimedOut));
        let _ = m.handshake::<_, TimedOut>("gw-b", false, Ok(1));
        let s = m.snapshot();
        assert_eq!(s.refusals, vec![("gw-b".into(), "policy".into(), 2), ("gw-c".into(), "unknown_node".into(), 1)]);
        assert_eq!(s.handshakes.len(), 2);
        assert!(s.handshakes.contains(&("gw-b".into(), "out".into(), "timeout".into(), 1)));
    }
}
