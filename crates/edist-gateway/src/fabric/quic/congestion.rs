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
//! the square of the rate above it. It never goes below [`MIN_CAP`]. The pacing rate counts at
//! most [`MAX_PACING_GAIN`] times what the link delivered lately, because quinn's BBR estimate
//! jumps when a busy host handles a burst of ACKs at once; and before BBR has an estimate, a
//! link's rate is taken to be [`FULL_CAP_RATE`]. Measured with
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
        Box::new(CappedBbr {
            bbr: self.bbr.clone().build(now, current_mtu),
            min_rtt: None,
            delivered: DeliveryRate::default(),
        })
    }
}

/// BBR whose window is capped by [`cap`].
struct CappedBbr {
    bbr: Box<dyn Controller>,
    /// The least round trip seen, once one was.
    min_rtt: Option<Duration>,
    /// What the link delivered lately, measured over intervals long enough to smooth out ACK bursts.
    delivered: DeliveryRate,
}

/// The window BBR may use: `window`, capped to `rate` (bytes per second) times
/// `min_rtt + QUEUE_ALLOWANCE`, not below [`MIN_CAP`]. Before BBR has a rate (a link that has
/// only carried small messages has none), the rate is taken to be [`FULL_CAP_RATE`]: a link's
/// first bulk transfer then queues a few milliseconds at a slow bottleneck, not its whole
/// initial window (80 ms at 100 Mbit/s). Uncapped until a round trip was measured.
pub fn cap(window: u64, rate: Option<u64>, min_rtt: Option<Duration>) -> u64 {
    let Some(rtt) = min_rtt else { return window };
    let rate = rate.filter(|&r| r > 0).map_or(FULL_CAP_RATE, |r| r as f64);
    let allowance = QUEUE_ALLOWANCE.as_secs_f64() * (rate / FULL_CAP_RATE).max(1.0).powi(2);
    let drained = rate * (rtt.as_secs_f64() + allowance);
    window.min((drained as u64).max(MIN_CAP))
}

/// How far BBR's pacing rate may exceed what the link delivered lately (bytes per second, over
/// [`DeliveryRate`]'s intervals) before the cap uses the delivered rate instead. quinn's BBR
/// takes its bandwidth samples from one ACK to the next: a gateway that was not scheduled for a
/// while handles a burst of ACKs at once, and its estimate jumps to tens of Gbit/s (seen:
/// 111 Gbit/s on a 100 Mbit/s link). The cap's allowance grows with the square of the rate, so
/// such an estimate lifted the cap entirely, and pings behind bulk lanes waited 15-60 ms. 2
/// still lets BBR's startup double what the link delivers every round trip.
pub const MAX_PACING_GAIN: u64 = 2;

/// The shortest interval [`DeliveryRate`] measures over (or the least round trip, if longer).
const DELIVERY_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes acknowledged per second over intervals of at least [`DELIVERY_INTERVAL`] and a round
/// trip, leaving out intervals in which the link was limited by what it had to send.
#[derive(Debug, Clone, Default)]
struct DeliveryRate {
    /// Start of the current interval and the bytes acknowledged in it.
    start: Option<Instant>,
    acked: u64,
    /// Whether the sender was application-limited at some ACK of the current interval.
    limited: bool,
    /// The two latest rates of full intervals that were not application-limited.
    recent: [u64; 2],
}

impl DeliveryRate {
    fn on_ack(&mut self, now: Instant, bytes: u64, app_limited: bool, min_rtt: Duration) {
        let Some(start) = self.start else {
            // The first ACK opens an interval; its bytes were sent before it.
            self.start = Some(now);
            return;
        };
        self.acked += bytes;
        self.limited |= app_limited;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < DELIVERY_INTERVAL.max(min_rtt) {
            return;
        }
        if !self.limited {
            let rate = (self.acked as f64 / elapsed.as_secs_f64()) as u64;
            self.recent = [self.recent[1], rate];
        }
        *self = DeliveryRate { start: Some(now), recent: self.recent, ..Default::default() };
    }

    /// The larger of the two latest rates, once there is one.
    fn estimate(&self) -> Option<u64> {
        Some(self.recent[0].max(self.recent[1])).filter(|&r| r > 0)
    }
}

impl Controller for CappedBbr {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.min_rtt = Some(rtt.min());
        self.delivered.on_ack(now, bytes, app_limited, rtt.min());
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
        let bound = self.delivered.estimate().map_or(u64::MAX, |d| d.saturating_mul(MAX_PACING_GAIN));
        let rate = self.bbr.metrics().pacing_rate.map(|bps| (bps / 8).min(bound));
        cap(self.bbr.window(), rate, self.min_rtt)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.bbr.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(CappedBbr { bbr: self.bbr.clone_box(), min_rtt: self.min_rtt, delivered: self.delivered.clone() })
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
    fn the_cap_is_the_rate_over_the_least_round_trip_plus_the_allowance() {
        let ms = Duration::from_millis;
        // 200 Mbit/s, 0.5 ms round trip: 25 MB/s x 2.5 ms.
        assert_eq!(cap(300_000, Some(25_000_000), Some(Duration::from_micros(500))), 62_500);
        // A window under the cap is left alone.
        assert_eq!(cap(20_000, Some(25_000_000), Some(Duration::from_micros(500))), 20_000);
        // Twice that rate: four times the allowance (8 ms).
        assert_eq!(cap(u64::MAX, Some(50_000_000), Some(ms(1))), 450_000);
        // 1 Gbit/s over a 40 ms WAN: the whole bandwidth-delay product and then some.
        assert!(cap(u64::MAX, Some(125_000_000), Some(ms(40))) > 125_000_000 / 1000 * 40);
        // Slow links keep their floor.
        assert_eq!(cap(100_000, Some(2_500_000), Some(ms(1))), MIN_CAP);
        // No rate yet: 200 Mbit/s is assumed, so a link's first bulk transfer does not put its
        // whole initial window into a slow bottleneck's queue; a 40 ms path keeps the window.
        assert_eq!(cap(INITIAL_WINDOW, None, Some(ms(1))), 75_000);
        assert_eq!(cap(INITIAL_WINDOW, Some(0), Some(ms(1))), 75_000);
        assert_eq!(cap(INITIAL_WINDOW, None, Some(ms(40))), INITIAL_WINDOW);
        // No round trip yet: BBR's own window.
        assert_eq!(cap(INITIAL_WINDOW, Some(125_000_000), None), INITIAL_WINDOW);
    }

    #[test]
    fn delivery_rate_spans_bursts_of_acks_and_skips_idle_intervals() {
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let rtt = Duration::from_micros(100);
        let mut d = DeliveryRate::default();
        assert_eq!(d.estimate(), None);
        // 12.5 MB/s: 1,250 bytes every 100 µs, for 20 ms.
        for i in 0..=200 {
            d.on_ack(at(i * 100), 1250, false, rtt);
        }
        let steady = d.estimate().expect("a rate");
        assert!((12_000_000..=13_000_000).contains(&steady), "{steady}");
        // The gateway was not scheduled for 5 ms, then handles 50 ACKs at once: per ACK that
        // would be tens of GB/s; over the interval it stays within 1.5x.
        for _ in 0..50 {
            d.on_ack(at(25_000), 1250, false, rtt);
        }
        for i in 1..=50 {
            d.on_ack(at(25_000 + i * 100), 1250, false, rtt);
        }
        let burst = d.estimate().expect("a rate");
        assert!(burst < 19_000_000, "{burst}");
        // Intervals in which the sender had nothing to send do not lower it.
        for i in 1..=100 {
            d.on_ack(at(30_000 + i * 1000), 100, true, rtt);
        }
        assert!(d.estimate().expect("a rate") >= steady);
        // Over a long path the interval is the round trip.
        let mut d = DeliveryRate::default();
        for i in 0..=30 {
            d.on_ack(at(i * 1000), 10_000, false, Duration::from_millis(40));
        }
        assert_eq!(d.estimate(), None, "30 ms of a 40 ms round trip");
    }

    /// A controller that reports a huge window and the given pacing rate (bits per second).
    #[derive(Clone)]
    struct Bloated(Option<u64>);

    impl Controller for Bloated {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            u64::MAX / 2
        }
        fn metrics(&self) -> ControllerMetrics {
            let mut m = Arc::new(BbrConfig::default()).build(Instant::now(), 1200).metrics();
            (m.congestion_window, m.pacing_rate) = (self.window(), self.0);
            m
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            INITIAL_WINDOW
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    #[test]
    fn an_inflated_estimate_does_not_lift_the_cap() {
        let capped = |pacing_bps, recent| {
            CappedBbr {
                bbr: Box::new(Bloated(pacing_bps)),
                min_rtt: Some(Duration::from_micros(100)),
                delivered: DeliveryRate { recent, ..Default::default() },
            }
            .window()
        };
        // BBR at 111 Gbit/s on a link that delivered 12.5 MB/s: 2x that over 2.1 ms.
        assert_eq!(capped(Some(111_000_000_000), [12_500_000, 12_000_000]), 2 * 12_500_000 * 21 / 10_000);
        // A sane estimate is used as it is.
        assert_eq!(capped(Some(160_000_000), [12_500_000, 12_000_000]), 20_000_000 * 21 / 10_000);
        // Nothing delivered yet: BBR's estimate; no estimate at all: 200 Mbit/s.
        assert_eq!(capped(Some(160_000_000), [0, 0]), 20_000_000 * 21 / 10_000);
        assert_eq!(capped(None, [0, 0]), 25_000_000 * 21 / 10_000);
    }
}
