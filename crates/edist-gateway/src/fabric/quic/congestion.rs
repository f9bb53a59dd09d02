//! Congestion control of QUIC links: quinn's BBR, with its window capped to what the path
//! carries in its round trip plus a few milliseconds.
//!
//! Why: quinn's BBR adds the largest burst of ACKs it saw ("ACK aggregation") to its window.
//! Gateways share a host's cores with BEAMs, so a peer gateway that is not scheduled for a few
//! milliseconds acknowledges in bursts, and the window grows to hundreds of KiB beyond the
//! path's bandwidth-delay product. The excess waits in the bottleneck's queue, and every small
//! message of the ordered lane waits behind it: 15 ms pings behind bulk lanes at 100 Mbit,
//! with a 280 KiB window and a 14 ms smoothed RTT, in one `bench/run hol` of three.
//!
//! The cap is BBR's own pacing rate (its bandwidth estimate times its gain) times the least
//! round trip seen plus an allowance: [`QUEUE_ALLOWANCE`] up to [`FULL_CAP_RATE`], growing with
//! the square of the rate above it. It never goes below [`MIN_CAP`]. Measured with
//! `bench/run hol` on a busy 2-core host: pings behind bulk lanes at 100 Mbit 1.8–3.0 ms p50
//! (15–17 ms uncapped in the runs that bloated); unshaped bulk and 1%-loss goodput unchanged
//! within the runs' noise.

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How much longer than the least round trip a link's bytes in flight may take to drain.
pub const QUEUE_ALLOWANCE: Duration = Duration::from_millis(2);

/// The smallest cap, so that a gateway slowed down by its host's other work still moves data.
pub const MIN_CAP: u64 = 32 << 10;

/// Up to this rate (bytes per second: 200 Mbit/s) the allowance is [`QUEUE_ALLOWANCE`]; above it,
/// it grows with the square of the rate, so that fast links, where the gateways' CPU rather
/// than the link limits, keep the deep pipeline they need (a byte of queue costs less time
/// there), and the cap stops binding at all well before a core's worth of traffic.
pub const FULL_CAP_RATE: f64 = 25e6;

/// Builds capped BBR controllers.
#[derive(Debug, Clone)]
pub struct CappedBbrConfig {
    bbr: Arc<BbrConfig>,
}

impl Default for CappedBbrConfig {
    fn default() -> Self {
        let mut bbr = BbrConfig::default();
        bbr.initial_window(INITIAL_WINDOW);
        CappedBbrConfig { bbr: Arc::new(bbr) }
    }
}

/// BBR's initial window (quinn's default: 240 KB). quinn's BBR leaves its startup at the first
/// round trip that saw a loss without 25% more bandwidth: on a path with random loss that is
/// the first round trip, when its bandwidth estimate is this window over the round trip, and it
/// did not probe its way up from there. Through 1% loss at 40 ms round trips, 240 KB left half
/// the links at ~5.7 MB/s for good (the others reached 10.3 MB/s); with 1 MiB, every run
/// reached 10.2–11.1 MB/s, and pings behind bulk at 100 Mbit (`bench/run hol`) did not change.
/// Pacing spreads the window over the first round trip, so it is not one burst.
pub const INITIAL_WINDOW: u64 = 1 << 20;

impl ControllerFactory for CappedBbrConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(CappedBbr { bbr: self.bbr.clone().build(now, current_mtu), min_rtt: None })
    }
}

/// BBR whose window is capped by [`cap`].
struct CappedBbr {
    bbr: Box<dyn Controller>,
    /// The least round trip seen, once one was.
    min_rtt: Option<Duration>,
}

/// The window BBR may use: `window`, capped to `pacing_bps` (bits per second) times
/// `min_rtt + QUEUE_ALLOWANCE`, not below [`MIN_CAP`]; uncapped until both are known.
pub fn cap(window: u64, pacing_bps: Option<u64>, min_rtt: Option<Duration>) -> u64 {
    match (pacing_bps, min_rtt) {
        (Some(bps), Some(rtt)) if bps > 0 => {
            let rate = (bps / 8) as f64;
            let allowance = QUEUE_ALLOWANCE.as_secs_f64() * (rate / FULL_CAP_RATE).max(1.0).powi(2);
            let drained = rate * (rtt.as_secs_f64() + allowance);
            window.min((drained as u64).max(MIN_CAP))
        }
        _ => window,
    }
}

impl Controller for CappedBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.min_rtt = Some(rtt.min());
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_acked: Option<u64>) {
        self.bbr.on_end_acks(now, in_flight, app_limited, largest_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        self.bbr.on_congestion_event(now, sent, persistent, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        cap(self.bbr.window(), self.bbr.metrics().pacing_rate, self.min_rtt)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.bbr.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(CappedBbr { bbr: self.bbr.clone_box(), min_rtt: self.min_rtt })
    }

    fn initial_window(&self) -> u64 {
        self.bbr.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_start_with_a_mebibyte_window() {
        let c = Arc::new(CappedBbrConfig::default()).build(Instant::now(), 1200);
        assert_eq!((c.initial_window(), c.window()), (INITIAL_WINDOW, INITIAL_WINDOW));
    }

    #[test]
    fn the_cap_is_the_pacing_rate_over_the_least_round_trip_plus_the_allowance() {
        let ms = Duration::from_millis;
        // 200 Mbit/s, 0.5 ms round trip: 25 MB/s x 2.5 ms.
        assert_eq!(cap(300_000, Some(200_000_000), Some(Duration::from_micros(500))), 62_500);
        // A window under the cap is left alone.
        assert_eq!(cap(20_000, Some(200_000_000), Some(Duration::from_micros(500))), 20_000);
        // Twice that rate: four times the allowance (8 ms).
        assert_eq!(cap(u64::MAX, Some(400_000_000), Some(ms(1))), 450_000);
        // 1 Gbit/s over a 40 ms WAN: the whole bandwidth-delay product and then some.
        assert!(cap(u64::MAX, Some(1_000_000_000), Some(ms(40))) > 125_000_000 / 1000 * 40);
        // Slow links keep their floor.
        assert_eq!(cap(100_000, Some(20_000_000), Some(ms(1))), MIN_CAP);
        // Nothing known yet: BBR's own window.
        assert_eq!(cap(100_000, None, Some(ms(1))), 100_000);
        assert_eq!(cap(100_000, Some(0), Some(ms(1))), 100_000);
        assert_eq!(cap(100_000, Some(1_000_000_000), None), 100_000);
    }
}
