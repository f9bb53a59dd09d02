//! `edist status`: asks a running gateway over its local control port, once or (`--watch`)
//! every interval, with throughput rates computed between refreshes.

use anyhow::{bail, Context, Result};
use edist_gateway::gateway::StatusReport;
use edist_gateway::metrics::PeerTraffic;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches the gateway's status report.
pub async fn fetch(gateway: SocketAddr) -> Result<StatusReport> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(gateway))
        .await
        .context("timed out")?
        .with_context(|| format!("no gateway at {gateway} (is `edist gateway` running?)"))?;
    s.write_all(&[0, 1, b'd']).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await.context("timed out")??;
    let Some(json) = buf.get(4..) else { bail!("the gateway at {gateway} gave no status") };
    serde_json::from_slice(json).context("the gateway's status is not valid JSON")
}

/// How `edist status` shows the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub json: bool,
    /// Refresh until interrupted (or `count` refreshes).
    pub watch: bool,
    pub interval: Duration,
    /// Refreshes to show with `watch` (none: until interrupted).
    pub count: Option<u64>,
}

pub async fn run(gateway: SocketAddr, o: Options) -> Result<()> {
    if !o.watch {
        let r = fetch(gateway).await?;
        if o.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", render(&r, &[]));
        }
        return Ok(());
    }
    // ANSI clear only for a terminal: piped output gets plain blocks, one after another.
    let clear = !o.json && std::io::stdout().is_terminal();
    let mut prev: Option<(Instant, StatusReport)> = None;
    let mut shown = 0u64;
    loop {
        // A gateway restarting is worth watching too: say so and keep refreshing.
        let r = match fetch(gateway).await {
            Ok(r) => r,
            Err(e) => {
                let mut out = std::io::stdout().lock();
                if o.json {
                    let line = serde_json::json!({ "time_ms": unix_ms(), "error": format!("{e:#}") });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "gateway at {gateway}: {e:#}")?;
                }
                out.flush()?;
                drop(out);
                prev = None;
                shown += 1;
                if o.count.is_some_and(|c| shown >= c) {
                    bail!("the gateway at {gateway} did not answer");
                }
                tokio::time::sleep(o.interval).await;
                continue;
            }
        };
        let now = Instant::now();
        let rates = prev.as_ref().map(|(t, p)| rates(p, &r, now.duration_since(*t))).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        if o.json {
            let line = WatchLine { time_ms: unix_ms(), status: &r, rates: &rates };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            if clear {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            writeln!(out, "{}", render(&r, &rates))?;
        }
        out.flush()?;
        drop(out);
        shown += 1;
        if o.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        prev = Some((now, r));
        tokio::time::sleep(o.interval).await;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One refresh of `--watch --json`.
#[derive(Serialize)]
struct WatchLine<'a> {
    time_ms: u64,
    status: &'a StatusReport,
    /// Empty on the first refresh (no previous reading).
    rates: &'a [PeerRate],
}

/// Throughput with one peer gateway between two refreshes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerRate {
    pub peer: String,
    pub in_bytes_per_s: f64,
    pub out_bytes_per_s: f64,
    pub in_msgs_per_s: f64,
    pub out_msgs_per_s: f64,
}

/// Rates per peer from two readings `dt` apart (a peer new in `cur` counts from zero).
pub fn rates(prev: &StatusReport, cur: &StatusReport, dt: Duration) -> Vec<PeerRate> {
    let secs = dt.as_secs_f64().max(1e-3);
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    cur.metrics
        .traffic
        .iter()
        .map(|c| {
            let p = prev.metrics.traffic.iter().find(|p| p.peer == c.peer).cloned().unwrap_or_default();
            let (pi, po, ci, co) = (p.inbound, p.outbound(), c.inbound, c.outbound());
            PeerRate {
                peer: c.peer.clone(),
                in_bytes_per_s: per_s(pi.bytes, ci.bytes),
                out_bytes_per_s: per_s(po.bytes, co.bytes),
                in_msgs_per_s: per_s(pi.messages, ci.messages),
                out_msgs_per_s: per_s(po.messages, co.messages),
            }
        })
        .collect()
}

/// Bytes in a short human unit.
fn human(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

fn traffic_line(t: &PeerTraffic, rate: Option<&PeerRate>) -> String {
    let (i, o) = (t.inbound, t.outbound());
    let mut s = format!(
        "in {} / {} msgs  out {} / {} msgs  queued in {} out {}",
        human(i.bytes as f64),
        i.messages,
        human(o.bytes as f64),
        o.messages,
        i.queued,
        o.queued
    );
    // Backpressure across the relay, as OTP's busy distribution port: worth seeing at a glance.
    if t.stalled > 0 {
        let _ = write!(s, "  {} local node(s) not reading", t.stalled);
    }
    if t.paused > 0 {
        let _ = write!(s, "  {} relay(s) paused (far node not reading)", t.paused);
    }
    if let Some(r) = rate {
        let _ = write!(
            s,
            "  now in {}/s {:.0} msg/s, out {}/s {:.0} msg/s",
            human(r.in_bytes_per_s),
            r.in_msgs_per_s,
            human(r.out_bytes_per_s),
            r.out_msgs_per_s
        );
    }
    s
}

/// The text view of a report (with rates when there was a previous reading).
pub fn render(r: &StatusReport, rates: &[PeerRate]) -> String {
    let mut s = String::new();
    let _ =
        writeln!(s, "gateway {}  relays open {}  bytes in {}  out {}", r.name, r.relays_open, r.bytes_in, r.bytes_out);
    let _ = writeln!(s, "local nodes:");
    for (n, p) in &r.local_nodes {
        let _ = writeln!(s, "  {n:<40} port {p}");
    }
    for n in &r.outbound_only {
        let _ = writeln!(s, "  {n:<40} connects out only (no listener)");
    }
    let _ = writeln!(s, "peer gateways:");
    let mut known: Vec<&str> = r.peers.iter().map(String::as_str).collect();
    known.extend(r.roles.iter().map(|p| p.peer.as_str()));
    known.extend(r.metrics.traffic.iter().map(|t| t.peer.as_str()));
    known.sort();
    known.dedup();
    for p in known {
        let up = if r.peers.iter().any(|x| x == p) { "link up" } else { "no link" };
        let role = match r.roles.iter().find(|x| x.peer == p) {
            Some(x) => format!("role {} ({})", x.role, x.from),
            None => String::new(),
        };
        let _ = writeln!(s, "  {p:<20} {up:<8} {role}");
        for l in r.links.iter().filter(|l| l.peer == p) {
            let _ = writeln!(
                s,
                "    link {:<3} {} at {}, {} relayed connections, up {}{}{}",
                l.id,
                l.why.describe(),
                l.remote,
                l.relays,
                duration(l.up_ms),
                if l.relays == 0 { format!(", idle {}", duration(l.idle_ms)) } else { String::new() },
                l.path.map_or(String::new(), |p| format!(
                    "; rtt {:.2} ms, cwnd {} KiB, lost {} of {} packets{}",
                    p.rtt_us as f64 / 1000.0,
                    p.cwnd / 1024,
                    p.lost_packets,
                    p.sent_packets,
                    if p.mtu > 0 { format!(", datagrams {} B", p.mtu) } else { String::new() }
                ))
            );
        }
    }
    if !r.members.is_empty() {
        let _ = writeln!(s, "membership:");
        for m in &r.members {
            let state = serde_json::to_value(m.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            let linked = if m.linked { "linked" } else { "" };
            let _ = writeln!(s, "  {:<20} {:<8} {:<22} {linked}", m.name, state.unwrap_or_default(), m.fabric);
        }
    }
    let _ = writeln!(s, "traffic and lanes:");
    for t in &r.metrics.traffic {
        let _ = writeln!(s, "  {:<20} {}", t.peer, traffic_line(t, rates.iter().find(|x| x.peer == t.peer)));
        for (i, l) in t.lanes.iter().enumerate().filter(|(_, l)| l.bytes > 0 || l.queued > 0) {
            let _ = writeln!(
                s,
                "    lane {i:<2} out {:>10} {:>8} msgs {:>6} frags  queued {}",
                human(l.bytes as f64),
                l.messages,
                l.fragments,
                l.queued
            );
        }
    }
    let _ = writeln!(s, "link events:");
    for (p, e, n) in &r.metrics.link_events {
        let _ = writeln!(s, "  {p:<20} {e:<5} {n}");
    }
    let _ = writeln!(s, "handshakes:");
    for (p, d, o, n) in &r.metrics.handshakes {
        let _ = writeln!(s, "  {p:<20} {d:<4} {o:<14} {n}");
    }
    let _ = writeln!(s, "refusals:");
    for (p, why, n) in &r.metrics.refusals {
        let _ = writeln!(s, "  {p:<20} {why:<20} {n}");
    }
    if !r.metrics.audits.is_empty() {
        let _ = writeln!(s, "audit (would refuse, passed):");
        for (p, why, n) in &r.metrics.audits {
            let _ = writeln!(s, "  {p:<20} {why:<20} {n}");
        }
    }
    if !r.policy.is_empty() {
        let _ = writeln!(s, "policy:");
        for p in &r.policy {
            let atoms = match p.atoms_left {
                Some(left) => format!("atoms left {left} of {}", p.atom_budget),
                None => "atoms unlimited".into(),
            };
            let u = &p.usage;
            let _ = writeln!(
                s,
                "  {:<20} role {}{}  {atoms}  grants {}  links {}  monitors {}",
                p.peer,
                p.role,
                if p.audit { " (audit)" } else { "" },
                u.grants,
                u.links,
                u.monitors
            );
        }
    }
    let _ = writeln!(s, "remote nodes:");
    for (n, g) in &r.remote_nodes {
        let _ = writeln!(s, "  {n:<40} via {g}");
    }
    let _ = writeln!(s, "impersonated on loopback:");
    for (n, p) in &r.impersonated {
        let _ = writeln!(s, "  {n:<40} port {p}");
    }
    if let Some(rl) = &r.reload {
        let outcome = match &rl.error {
            Some(e) => format!("failed, running on the previous configuration: {e}"),
            None => "applied".into(),
        };
        let _ = writeln!(s, "last reload (#{}): {outcome}", rl.count);
    }
    s
}

/// Milliseconds in a short human unit.
fn duration(ms: u64) -> String {
    match ms {
        ms if ms >= 3_600_000 => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
        ms if ms >= 60_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        ms if ms >= 1000 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use edist_gateway::fabric::link::PathStats;
    use edist_gateway::fabric::membership::MemberState;
    use edist_gateway::gateway::{LinkReason, LinkStatus, MemberStatus, PeerRole};
    use edist_gateway::metrics::{MetricsSnapshot, TrafficCounts};

    fn report(bytes_in: u64, msgs_out: u64) -> StatusReport {
        let lane = TrafficCounts { bytes: msgs_out * 10, messages: msgs_out, fragments: 0, queued: 0 };
        StatusReport {
            name: "gw-a".into(),
            local_nodes: vec![("a@10.0.0.1".into(), 4242)],
            outbound_only: vec!["dyn@hosta".into()],
            remote_nodes: vec![],
            peers: vec!["gw-b".into()],
            impersonated: vec![],
            relays_open: 0,
            bytes_in,
            bytes_out: 0,
            metrics: MetricsSnapshot {
                traffic: vec![PeerTraffic {
                    peer: "gw-b".into(),
                    inbound: TrafficCounts { bytes: bytes_in, messages: 0, fragments: 0, queued: 0 },
                    lanes: vec![lane, lane],
                    paused: 0,
                    stalled: 2,
                }],
                refusals: vec![("gw-b".into(), "policy".into(), 3)],
                ..Default::default()
            },
            policy: vec![edist_gateway::policy::PeerReport {
                peer: "gw-b".into(),
                role: "device".into(),
                audit: false,
                atom_budget: 10,
                atoms_left: Some(4),
                usage: Default::default(),
            }],
            members: vec![MemberStatus {
                name: "gw-c".into(),
                fabric: "10.0.0.3:4371".into(),
                state: MemberState::Suspect,
                linked: false,
            }],
            links: vec![LinkStatus {
                peer: "gw-b".into(),
                id: 3,
                why: LinkReason::Seed,
                remote: "10.0.0.2:4371".into(),
                serial: "ab12".into(),
                relays: 0,
                idle_ms: 61_000,
                up_ms: 3_700_000,
                path: Some(PathStats {
                    rtt_us: 1_250,
                    cwnd: 48 << 10,
                    sent_packets: 900,
                    lost_packets: 3,
                    congestion_events: 1,
                    mtu: 1452,
                }),
            }],
            roles: vec![PeerRole { peer: "gw-b".into(), role: "device".into(), from: "certificate".into() }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_deltas_over_time_and_render_shows_them() {
        let r = rates(&report(1000, 5), &report(3000, 15), Duration::from_millis(500));
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].in_bytes_per_s, r[0].out_msgs_per_s, r[0].out_bytes_per_s), (4000.0, 40.0, 400.0));
        let text = render(&report(3000, 15), &r);
        assert!(text.contains("now in 4.0 kB/s 0 msg/s, out 400 B/s 40 msg/s"), "{text}");
        assert!(text.contains("lane 1"), "{text}");
        assert!(text.contains("policy") && text.contains(" 3\n"), "{text}");
        assert!(text.contains("role device  atoms left 4 of 10"), "{text}");
        assert!(text.contains("a@10.0.0.1") && text.contains("port 4242"), "{text}");
        assert!(text.contains("dyn@hosta") && text.contains("connects out only"), "{text}");
        assert!(text.contains("gw-b                 link up  role device (certificate)"), "{text}");
        assert!(text.contains("link 3   dialled: answered at a seed address at 10.0.0.2:4371"), "{text}");
        assert!(
            text.contains("up 1h01m, idle 1m01s; rtt 1.25 ms, cwnd 48 KiB, lost 3 of 900 packets, datagrams 1452 B"),
            "{text}"
        );
        assert!(text.contains("gw-c                 suspect  10.0.0.3:4371"), "{text}");
        assert!(text.contains("2 local node(s) not reading") && !text.contains("paused"), "{text}");
        // Counters that went backwards (a restarted gateway) give 0, not a huge rate.
        assert_eq!(rates(&report(3000, 15), &report(0, 0), Duration::from_secs(1))[0].in_bytes_per_s, 0.0);
    }
}
