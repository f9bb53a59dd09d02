//! The Prometheus text exposition format (version 0.0.4) of a gateway's metrics.

use super::{Histogram, Metrics, MetricsSnapshot, TrafficCounts, LATENCY_BUCKETS};
use std::fmt::Write;

/// Reads one field of [`TrafficCounts`].
type Field = fn(&TrafficCounts) -> u64;

/// Escapes a label value (`\`, `"` and newlines, as the format requires).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes `# HELP` and `# TYPE` of a family.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample; `labels` as (name, value) pairs.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", esc(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A family of traffic counters or gauges, one field of [`TrafficCounts`] per sample.
fn traffic_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: &[(Vec<(&str, String)>, TrafficCounts)],
    field: Field,
) {
    head(out, name, kind, help);
    for (labels, t) in rows {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sample(out, name, &l, field(t));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, series: &[(&str, &Histogram)]) {
    head(out, name, "histogram", help);
    for (dir, h) in series {
        let (buckets, sum, count) = h.read();
        for (i, n) in buckets.iter().enumerate() {
            let le = LATENCY_BUCKETS.get(i).map(|b| b.to_string()).unwrap_or_else(|| "+Inf".into());
            sample(out, &format!("{name}_bucket"), &[("direction", dir), ("le", &le)], n);
        }
        sample(out, &format!("{name}_sum"), &[("direction", dir)], sum);
        sample(out, &format!("{name}_count"), &[("direction", dir)], count);
    }
}

/// Renders everything; `gauges` are (name, help, value) read by the caller at scrape time.
pub(super) fn render(
    m: &Metrics,
    s: &MetricsSnapshot,
    gauges: &[(&str, &str, u64)],
    per_peer: &[super::PeerGauge<'_>],
) -> String {
    let mut out = String::with_capacity(8192);
    for (name, help, v) in gauges {
        head(&mut out, name, "gauge", help);
        sample(&mut out, name, &[], v);
    }
    for (name, help, values) in per_peer {
        head(&mut out, name, "gauge", help);
        for (peer, v) in values {
            sample(&mut out, name, &[("peer", peer)], v);
        }
    }

    let mut sent = vec![];
    let mut received = vec![];
    for p in &s.traffic {
        for (lane, t) in p.lanes.iter().enumerate() {
            sent.push((vec![("peer", p.peer.clone()), ("lane", lane.to_string())], *t));
        }
        received.push((vec![("peer", p.peer.clone())], p.inbound));
    }
    let families: [(&str, &str, &str, Field); 4] = [
        ("bytes_total", "counter", "Bytes of distribution packets", |t| t.bytes),
        ("messages_total", "counter", "Distribution messages (a fragmented message counts once)", |t| t.messages),
        ("fragments_total", "counter", "Fragments of fragmented messages", |t| t.fragments),
        ("queued_packets", "gauge", "Packets queued in the gateway now", |t| t.queued),
    ];
    for (suffix, kind, help, f) in families {
        traffic_family(
            &mut out,
            &format!("edist_sent_{suffix}"),
            kind,
            &format!("{help}, towards a peer gateway, by lane"),
            &sent,
            f,
        );
        traffic_family(
            &mut out,
            &format!("edist_received_{suffix}"),
            kind,
            &format!("{help}, from a peer gateway towards local nodes"),
            &received,
            f,
        );
    }

    head(&mut out, "edist_refusals_total", "counter", "Requests refused, by peer and reason");
    for (p, r, n) in &s.refusals {
        sample(&mut out, "edist_refusals_total", &[("peer", p), ("reason", r)], n);
    }
    head(
        &mut out,
        "edist_policy_audit_total",
        "counter",
        "What roles in audit mode would have refused (it passed), by peer and reason",
    );
    for (p, r, n) in &s.audits {
        sample(&mut out, "edist_policy_audit_total", &[("peer", p), ("reason", r)], n);
    }
    head(&mut out, "edist_handshakes_total", "counter", "Relayed distribution handshakes, by outcome");
    for (p, d, o, n) in &s.handshakes {
        sample(&mut out, "edist_handshakes_total", &[("peer", p), ("direction", d), ("outcome", o)], n);
    }
    head(&mut out, "edist_link_handshakes_total", "counter", "Fabric link handshakes (QUIC, mutual TLS, hello)");
    for (p, o, n) in &s.link_handshakes {
        sample(&mut out, "edist_link_handshakes_total", &[("peer", p), ("outcome", o)], n);
    }
    head(&mut out, "edist_link_events_total", "counter", "Links to peer gateways going up or down");
    for (p, e, n) in &s.link_events {
        sample(&mut out, "edist_link_events_total", &[("peer", p), ("event", e)], n);
    }
    histogram(
        &mut out,
        "edist_gateway_packet_seconds",
        "Time a packet spends in the gateway, from its arrival to its write onward",
        &[("out", &m.latency_out), ("in", &m.latency_in)],
    );
    out
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
        let (mut o, mut r) = m.relay("gw-b").split();
        o.sent(1, crate::metrics::Kind::Message, 6);
        o.lane(1).written(Instant::now() - Duration::from_millis(2), 0);
        r.received(&[0, 0, 0, 2, 131, 68], Instant::now(), 0);
        let t = m.render(&[("edist_local_nodes", "Local nodes", 3)]);
        assert!(t.contains("# TYPE edist_local_nodes gauge\nedist_local_nodes 3\n"), "{t}");
        assert!(t.contains("edist_sent_bytes_total{peer=\"gw-b\",lane=\"1\"} 6\n"), "{t}");
        assert!(t.contains("edist_sent_messages_total{peer=\"gw-b\",lane=\"0\"} 0\n"), "{t}");
        assert!(t.contains("edist_received_messages_total{peer=\"gw-b\"} 1\n"), "{t}");
        assert!(t.contains("edist_refusals_total{peer=\"gw-\\\"x\\\"\",reason=\"policy\"} 1\n"), "{t}");
        assert!(t.contains("edist_link_events_total{peer=\"gw-b\",event=\"up\"} 1\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_bucket{direction=\"out\",le=\"0.001\"} 0\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_bucket{direction=\"out\",le=\"+Inf\"} 1\n"), "{t}");
        assert!(t.contains("edist_gateway_packet_seconds_count{direction=\"in\"} 1\n"), "{t}");
        // Every sample line is `name[{labels}] value` with a numeric value.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
