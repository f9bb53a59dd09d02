//! Transport and timing options of links, read by both transports (keep-alive and idle
//! timeout) and by QUIC alone (stream allowances, congestion control).

use std::time::Duration;

/// Default interval of keep-alives on an idle link (`[fabric] keep_alive_ms`).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// Default time after which a silent link is dead (`[fabric] idle_timeout_ms`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Default maximum of concurrent streams of each kind a peer may open on a link.
pub const DEFAULT_MAX_STREAMS: u32 = 1024;

/// Transport and timing options of gateway links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    /// Interval of QUIC keep-alive (PING) frames on an otherwise idle link. Default 500 ms.
    pub keep_alive: Duration,
    /// A link that hears nothing for this long is dead (QUIC's idle timeout; TLS over TCP watches for it too); the
    /// effective value is the smaller of both peers'. Default 1.5 s.
    pub idle_timeout: Duration,
    /// Concurrent bidirectional streams (relayed connections' ordered lanes) a peer may open,
    /// at most. Default 1024.
    pub max_bidi_streams: u32,
    /// Concurrent unidirectional streams (bulk lanes, control streams) a peer may open, at most.
    /// Default 1024.
    pub max_uni_streams: u32,
    /// Concurrent streams of each kind a peer may open on a new link; raised as the peer opens
    /// them, up to `max_bidi_streams` / `max_uni_streams` ([`super::quic::QuicLink`]). quinn keeps state for
    /// every stream the peer may open: 1024 of each made ~135 KiB of an idle link's end.
    /// Default 8.
    pub initial_streams: u32,
    /// Congestion control of the links. Default BBR.
    pub congestion: Congestion,
    /// Largest UDP payload MTU discovery looks for (and that peers may send us), 1200 to
    /// [`MAX_DATAGRAM`]. Default [`DEFAULT_MAX_DATAGRAM`] (Ethernet). With jumbo frames,
    /// [`MAX_DATAGRAM`] carries bulk data in 4.5x fewer packets, each of which costs a gateway
    /// about as much as its bytes; it also costs every link ~8 KiB more memory per end (quinn
    /// keeps a send buffer as large as its largest probe), which is why the gateway picks it
    /// only on a host with jumbo frames ([`host_max_datagram`]).
    pub max_datagram: u16,
    /// Bytes a peer may send on one stream ahead of what the gateway has relayed (QUIC's
    /// per-stream receive window), [`MIN_STREAM_WINDOW`] to [`MAX_STREAM_WINDOW`]. Default
    /// [`DEFAULT_STREAM_WINDOW`].
    pub stream_window: u32,
}

/// The default [`QuicOptions::stream_window`]: quinn's own (12.5 MB/s over a 100 ms round trip).
/// A lost datagram holds its stream's window until it is repaired, so on long lossy paths a
/// larger window carries more (bench/README.md, "Loss: other rates"), at the cost of longer
/// waits for small messages behind bulk lanes under loss and of memory: a link may hold this
/// much per stream for a relay whose node does not read.
pub const DEFAULT_STREAM_WINDOW: u32 = 1_250_000;
/// The smallest [`QuicOptions::stream_window`]: one large datagram burst.
pub const MIN_STREAM_WINDOW: u32 = 64 << 10;
/// The largest [`QuicOptions::stream_window`].
pub const MAX_STREAM_WINDOW: u32 = 64 << 20;

/// The default [`QuicOptions::max_datagram`]: a 1500-byte Ethernet frame less IPv6 and UDP
/// headers (quinn's own default).
pub const DEFAULT_MAX_DATAGRAM: u16 = 1452;

/// The largest [`QuicOptions::max_datagram`]. quinn hands the kernel up to ten datagrams per
/// send (UDP GSO), and the kernel takes at most 65,507 bytes per send: with larger datagrams
/// every full send failed, and quinn counted its datagrams as lost.
pub const MAX_DATAGRAM: u16 = 6550;

/// The [`QuicOptions::max_datagram`] for this host: [`DEFAULT_MAX_DATAGRAM`] unless one of its
/// network interfaces (loopback aside) has jumbo frames (Linux's `/sys/class/net`).
pub fn host_max_datagram() -> u16 {
    let mtus = std::fs::read_dir("/sys/class/net").into_iter().flatten().flatten().filter_map(|e| {
        let text = std::fs::read_to_string(e.path().join("mtu")).ok()?;
        Some((e.file_name().to_string_lossy().into_owned(), text.trim().parse().ok()?))
    });
    max_datagram_for(mtus)
}

/// [`host_max_datagram`] for interfaces `(name, mtu)`: the largest MTU less IPv6 and UDP
/// headers, within Ethernet's and [`MAX_DATAGRAM`].
fn max_datagram_for(interfaces: impl IntoIterator<Item = (String, u32)>) -> u16 {
    let largest = interfaces.into_iter().filter(|(name, _)| name != "lo").map(|(_, mtu)| mtu).max().unwrap_or(0);
    let payload = largest.saturating_sub(48).clamp(DEFAULT_MAX_DATAGRAM.into(), MAX_DATAGRAM.into());
    u16::try_from(payload).unwrap_or(DEFAULT_MAX_DATAGRAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumbo_frames_raise_max_datagram() {
        let ifs = |v: &[(&str, u32)]| v.iter().map(|(n, m)| (n.to_string(), *m)).collect::<Vec<_>>();
        assert_eq!(max_datagram_for(ifs(&[("lo", 65536), ("eth0", 1500)])), DEFAULT_MAX_DATAGRAM);
        assert_eq!(max_datagram_for(ifs(&[("lo", 65536)])), DEFAULT_MAX_DATAGRAM);
        assert_eq!(max_datagram_for(ifs(&[("eth0", 1400), ("wg0", 1420)])), DEFAULT_MAX_DATAGRAM);
        assert_eq!(max_datagram_for(ifs(&[("eth0", 1500), ("eth1", 4000)])), 3952);
        assert_eq!(max_datagram_for(ifs(&[("eth0", 9000)])), MAX_DATAGRAM);
        assert!(host_max_datagram() >= DEFAULT_MAX_DATAGRAM);
    }
}

/// Congestion controllers of the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based: keeps the bottleneck's queue short, so small messages behind bulk traffic
    /// wait less, and tolerates random loss. quinn's BBR with its window capped to about 2 ms
    /// of queue at the bottleneck on links up to 200 Mbit/s ([`super::quic::congestion`]).
    #[default]
    Bbr,
    /// quinn's BBR as it is: it adds bursts of acknowledgements to its window, which can queue
    /// tens of milliseconds at a slow bottleneck when a gateway's host is busy.
    #[serde(rename = "bbr-uncapped")]
    BbrUncapped,
    /// Loss-based (quinn's own default): fills the bottleneck's queue.
    Cubic,
    /// Loss-based, classic.
    NewReno,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            keep_alive: DEFAULT_KEEP_ALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_bidi_streams: DEFAULT_MAX_STREAMS,
            max_uni_streams: DEFAULT_MAX_STREAMS,
            initial_streams: 8,
            congestion: Congestion::default(),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            stream_window: DEFAULT_STREAM_WINDOW,
        }
    }
}
