//! The Prometheus exposition of a gateway's metrics, written by the `prometheus-client` crate
//! (text format 0.0.4, as before: same names, labels and content type).
//!
//! The gateway keeps its own counters (atomics on the hot paths, see [`super::Metrics`]); at
//! each scrape a [`Collector`] reads them once and hands them to the library's encoder, which
//! owns the format: `# HELP`/`# TYPE` lines, the `_total` suffix of counters, label escaping,
//! cumulative histogram buckets.

use super::{Histogram, Metrics, MetricsSnapshot, PeerTraffic, TrafficCounts, LATENCY_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of one sample, as (name, value).
type Labels = Vec<(&'static str, String)>;

/// One histogram series: its `direction` label, per-bucket counts (not cumulative; the encoder
/// sums them), sum, count.
#[derive(Debug)]
struct Series {
    direction: &'static str,
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Series {
    fn read(direction: &'static str, h: &Histogram) -> Series {
        let (cumulative, sum, count) = h.read();
        let mut prev = 0;
        let bounds = LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets = bounds
            .zip(cumulative)
            .map(|(bound, c)| {
                let n = c.saturating_sub(prev);
                prev = c;
                (bound, n)
            })
            .collect();
        Series { direction, buckets, sum, count }
    }
}

/// A gauge per peer gateway: name, help, (peer, value) rows.
type PeerGauges = (String, String, Vec<(String, u64)>);

/// Everything one scrape shows, read once at the start of the scrape.
#[derive(Debug)]
struct Scrape {
    gauges: Vec<(String, String, u64)>,
    /// Gauges per peer gateway.
    per_peer: Vec<PeerGauges>,
    snapshot: MetricsSnapshot,
    latency: [Series; 2],
}

/// Reads one field of [`TrafficCounts`].
type Field = fn(&TrafficCounts) -> u64;

impl Scrape {
    fn counters(&self, e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, u64)]) -> Fmt {
        let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauges(&self, e: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, u64)]) -> Fmt {
        let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn traffic(&self, e: &mut DescriptorEncoder) -> Fmt {
        for (name, help, field) in [
            (
                "edist_relays_paused",
                "Relayed connections not read from their local node now, because the far node stopped reading",
                (|p| p.paused) as fn(&PeerTraffic) -> u64,
            ),
            ("edist_relays_stalled", "Relayed connections whose local node stopped reading now", |p| p.stalled),
        ] {
            let rows: Vec<(Labels, u64)> =
                self.snapshot.traffic.iter().map(|p| (vec![("peer", p.peer.clone())], field(p))).collect();
            self.gauges(e, name, help, &rows)?;
        }
        let mut sent: Vec<(Labels, TrafficCounts)> = vec![];
        let mut received: Vec<(Labels, TrafficCounts)> = vec![];
        for p in &self.snapshot.traffic {
            for (lane, t) in p.lanes.iter().enumerate() {
                sent.push((vec![("peer", p.peer.clone()), ("lane", lane.to_string())], *t));
            }
            received.push((vec![("peer", p.peer.clone())], p.inbound));
        }
        let families: [(&str, bool, &str, Field); 4] = [
            ("bytes", true, "Bytes of distribution packets", |t| t.bytes),
            ("messages", true, "Distribution messages (a fragmented message counts once)", |t| t.messages),
            ("fragments", true, "Fragments of fragmented messages", |t| t.fragments),
            ("queued_packets", false, "Packets queued in the gateway now", |t| t.queued),
        ];
        for (name, counter, help, field) in families {
            for (dir, rows, what) in [
                ("sent", &sent, "towards a peer gateway, by lane"),
                ("received", &received, "from a peer gateway towards local nodes"),
            ] {
                let rows: Vec<(Labels, u64)> = rows.iter().map(|(l, t)| (l.clone(), field(t))).collect();
                let (name, help) = (format!("edist_{dir}_{name}"), format!("{help}, {what}"));
                match counter {
                    true => self.counters(e, &name, &help, &rows)?,
                    false => self.gauges(e, &name, &help, &rows)?,
                }
            }
        }
        Ok(())
    }
}

type Fmt = Result<(), std::fmt::Error>;

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Fmt {
        for (name, help, v) in &self.gauges {
            self.gauges(&mut e, name, help, &[(vec![], *v)])?;
        }
        for (name, help, values) in &self.per_peer {
            let rows: Vec<(Labels, u64)> = values.iter().map(|(p, v)| (vec![("peer", p.clone())], *v)).collect();
            self.gauges(&mut e, name, help, &rows)?;
        }
        self.traffic(&mut e)?;
        let s = &self.snapshot;
        let rows = s.audits.iter().map(|(p, r, n)| (vec![("peer", p.clone()), ("reason", r.clone())], *n));
        let help = "What roles in audit mode would have refused (it passed), by peer and reason";
        self.counters(&mut e, "edist_policy_audit", help, &rows.collect::<Vec<_>>())?;
        let rows = s.refusals.iter().map(|(p, r, n)| (vec![("peer", p.clone()), ("reason", r.clone())], *n));
        self.counters(&mut e, "edist_refusals", "Requests refused, by peer and reason", &rows.collect::<Vec<_>>())?;
        let rows = s
            .handshakes
            .iter()
            .map(|(p, d, o, n)| (vec![("peer", p.clone()), ("direction", d.clone()), ("outcome", o.clone())], *n));
        let help = "Relayed distribution handshakes, by outcome";
        self.counters(&mut e, "edist_handshakes", help, &rows.collect::<Vec<_>>())?;
        let rows = s.link_handshakes.iter().map(|(p, o, n)| (vec![("peer", p.clone()), ("outcome", o.clone())], *n));
        let help = "Fabric link handshakes (QUIC, mutual TLS, hello)";
        self.counters(&mut e, "edist_link_handshakes", help, &rows.collect::<Vec<_>>())?;
        let rows = s.link_events.iter().map(|(p, ev, n)| (vec![("peer", p.clone()), ("event", ev.clone())], *n));
        let help = "Peer gateways going up (first link) or down (last link)";
        self.counters(&mut e, "edist_link_events", help, &rows.collect::<Vec<_>>())?;
        let help = "Time a packet spends in the gateway, from its arrival to its write onward";
        let mut family = e.encode_descriptor("edist_gateway_packet_seconds", help, None, MetricType::Histogram)?;
        for h in &self.latency {
            let labels = [("direction", h.direction)];
            family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// Renders everything; `gauges` are (name, help, value) read by the caller at scrape time.
pub(super) fn render(m: &Metrics, gauges: &[(&str, &str, u64)], per_peer: &[super::PeerGauge<'_>]) -> String {
    let scrape = Scrape {
        gauges: gauges.iter().map(|(n, h, v)| (n.to_string(), h.to_string(), *v)).collect(),
        per_peer: per_peer.iter().map(|(n, h, v)| (n.to_string(), h.to_string(), v.clone())).collect(),
        snapshot: m.snapshot(),
        latency: [Series::read("out", &m.latency_out), Series::read("in", &m.latency_in)],
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail; an encoder error would leave a partial page, which
    // Prometheus rejects as a whole, so it is not worth more than an empty one.
    match prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        Ok(()) => out,
        Err(_) => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn exposition_has_families_labels_and_escapes() {
        let m = Metrics::default();
        m.refused("gw-\"x\"", "policy");
        m.link_up("gw-b");
        let (mut o, mut r) = m.session("gw-b").split();
        o.sent(1, crate::metrics::Kind::Message, 6);
        o.lane(1).written(Instant::now() - Duration::from_millis(2), 0);
        r.received(&[0, 0, 0, 2, 131, 68], Instant::now(), 0);
        // A relay that pauses counts while it does; a dropped one (its session ended) no longer.
        let (mut paused, mut gone) = (o.paused(), o.paused());
        paused.set(true);
        gone.set(true);
        drop(gone);
        let mut stalled = o.stalled();
        stalled.set(true);
        stalled.set(false);
        let t = m.render(&[("edist_local_nodes", "Local nodes", 3)]);
        assert!(t.contains("# TYPE edist_local_nodes gauge\nedist_local_nodes 3\n"), "{t}");
        assert!(t.contains("# TYPE edist_sent_bytes_total counter\n"), "{t}");
        assert!(t.contains("edist_sent_bytes_total{peer=\"gw-b\",lane=\"1\"} 6\n"), "{t}");
        assert!(t.contains("edist_sent_messages_total{peer=\"gw-b\",lane=\"0\"} 0\n"), "{t}");
        assert!(t.contains("edist_received_messages_total{peer=\"gw-b\"} 1\n"), "{t}");
        assert!(t.contains("# TYPE edist_sent_queued_packets gauge\n"), "{t}");
        assert!(t.contains("# TYPE edist_relays_paused gauge\nedist_relays_paused{peer=\"gw-b\"} 1\n"), "{t}");
        assert!(t.contains("edist_relays_stalled{peer=\"gw-b\"} 0\n"), "{t}");
        assert!(t.contains("edist_refusals_total{peer=\"gw-\\\"x\\\"\",reason=\"policy\"} 1\n"), "{t}");
        assert!(t.contains("edist_link_events_total{peer=\"gw-b\",event=\"up\"} 1\n"), "{t}");
        assert!(t.contains("# TYPE edist_gateway_packet_seconds histogram\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_bucket{direction=\"out\",le=\"0.001\"} 0\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_bucket{direction=\"out\",le=\"0.0025\"} 1\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_bucket{direction=\"out\",le=\"+Inf\"} 1\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_count{direction=\"in\"} 1\n"), "{t}");
        // Every sample line is `name[{labels}] value` with a numeric value.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
