//! The data phase of a session: [`pump`] carries a connected session until either side ends.
//! Packets from the node go out on lanes (`write_lane`), packets from the fabric come in on
//! lanes (`feed_lane`, [`feed_lane_stream`]) and are merged back into the node's socket; ticks
//! cross as [`LaneCtl::Tick`]. `Frames` splits a stream into frames.

use super::budget::{Budget, Held};
use super::hold::{HeldSenders, Holds, Rate, SenderBytes, LARGE_PACKET};
use super::shell::SessionError;
use super::stall::StallWatch;
use super::sync::{Flow, LaneFlow, LaneSync, Merger, MergerRx, MAX_LANES};
use super::ticks::Ticktime;
use crate::config;
use crate::fabric::link::Link;
use crate::lane_frame::{self, maybe_compress, Decoded, Frame, LaneCtl};
use crate::local::plug::Plug;
use crate::metrics::RelayState;
use bytes::BytesMut;
use edist_proto::dist::lane::{Route, Router, Sender};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How a session spreads traffic over lanes, and how much it may hold.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// Bulk lanes per relayed connection and direction besides the ordered lane (the session
    /// stream): a large message takes the one with the fewest bytes queued (see [`Router`]).
    pub lanes: u64,
    /// Bytes this session may hold on their way to the peer gateway, all lanes together: the
    /// relay keeps reading from its node (so a small message can overtake a queued large one)
    /// until this is used up, then stops (backpressure).
    pub relay_buffer: usize,
    /// The same bound for all sessions of the gateway together (shared).
    pub gateway_buffer: Budget,
    /// Compress (lz4) packets larger than this towards the peer gateway; `None`: never.
    pub compress_above: Option<usize>,
    /// Kernel receive buffer of the loopback connection from the node; `None`: the kernel's.
    pub socket_buffer: Option<usize>,
    /// The local node's `net_ticktime`. Ticks cross the fabric ([`LaneCtl::Tick`]); towards a
    /// far gateway that predates that, this gateway ticks its node every second (or a quarter
    /// of it if less) and says when its node went silent for over half of it ([`LaneCtl::Silent`]).
    pub net_ticktime: Ticktime,
    /// The local node's plug: holds back a process that sends more than its lane carries soon.
    pub plug: Option<Plug>,
    /// The link the lanes go over (how much it holds in flight sizes the bulk lanes' windows).
    pub link: Option<Arc<dyn Link>>,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig {
            lanes: config::DEFAULT_LANES,
            relay_buffer: config::DEFAULT_RELAY_BUFFER,
            gateway_buffer: Budget::new(config::DEFAULT_GATEWAY_BUFFER),
            compress_above: None,
            socket_buffer: None,
            net_ticktime: Ticktime::new(Duration::from_secs(config::DEFAULT_NET_TICKTIME)),
            plug: None,
            link: None,
        }
    }
}

/// One frame queued for a lane: when its packet arrived, the frame, and what it holds of the
/// budgets and of its sender's share (`None` for a control frame, which is not a packet).
type Queued = (std::time::Instant, Vec<u8>, Option<(Held, Option<SenderBytes>)>);

/// The queue of one outgoing lane.
type LaneTx = mpsc::UnboundedSender<Queued>;

/// Opens a lane stream towards the peer gateway for lane `n` (the `Lane` frame is sent by the
/// opener).
pub type LaneOpener = Box<
    dyn Fn(
            u8,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<crate::fabric::link::SendStream>> + Send>,
        > + Send
        + Sync,
>;

/// Splits a byte stream into frames; `None` at a clean end.
pub(super) struct Frames<R> {
    r: R,
    buf: BytesMut,
    /// A lane from the fabric: compressed and control frames are allowed.
    fabric: bool,
}

/// Bytes a frame reader asks for at least, per read.
const READ_CHUNK: usize = 16 * 1024;

/// An empty packet: a tick.
pub(super) const TICK: [u8; 4] = [0; 4];

/// The shortest gap between two of a node's ticks relayed to the far gateway.
const TICK_RELAY_GAP: Duration = Duration::from_millis(100);

impl<R: AsyncRead + Unpin> Frames<R> {
    pub(super) fn new(r: R, pending: &[u8], fabric: bool) -> Self {
        // Small to start: most connections are idle most of the time. Large packets grow it.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(pending);
        Frames { r, buf, fabric }
    }

    /// The next frame, and its length on the stream.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<(Frame, usize)>> {
        loop {
            let before = self.buf.len();
            match lane_frame::decode(&mut self.buf, self.fabric)? {
                Decoded::Frame(f) => return Ok(Some((f, before - self.buf.len()))),
                // Grow with the bytes that actually arrive, not with the claimed length.
                Decoded::Need(n) => self.buf.reserve(n.clamp(READ_CHUNK / 2, 1 << 20)),
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next distribution packet from a node (which sends no control frames).
    async fn next_packet(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self.next().await? {
            Some((Frame::Packet(p), _)) => Ok(Some(p)),
            Some((Frame::Ctl(_), _)) => {
                Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "control frame from a node"))
            }
            None => Ok(None),
        }
    }
}

/// Carries a connected session until either side ends, then ends both (fact 9).
///
/// Towards the fabric, a [`Router`] puts each packet on a lane (the ordering rule): lane 0, the
/// session stream itself, carries small messages in the node's order; lanes 1..=`lanes` are
/// unidirectional streams opened on first use for large messages. From the fabric, packets of
/// all lanes (lane 0 here, the others through `merger_rx`, fed by `feed_lane`) are written to
/// the local node whole, interleaved at packet boundaries, barriers respected.
#[allow(clippy::too_many_arguments)]
pub async fn pump<R, W>(
    sock: TcpStream,
    rx: R,
    tx: W,
    pending_to_stream: &[u8],
    pending_to_sock: &[u8],
    merger: Merger,
    (mut merger_rx, mut replies_rx): MergerRx,
    open_lane: LaneOpener,
    lanes_cfg: LaneConfig,
    metrics: crate::metrics::SessionMetrics,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    if let Some(n) = lanes_cfg.socket_buffer {
        // Best effort: the kernel's autotuning (up to tcp_rmem's maximum) also works, only with
        // more bytes in front of every small message.
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(n);
    }
    let (sr, mut sw) = sock.into_split();
    let (mut m_out, mut m_in) = metrics.split();
    let sync = merger.sync.clone();
    // What the node sends the peer, shown to the policy (the peer's capabilities, free atoms).
    let mut egress = merger.policy.as_ref().map(|p| p.session.egress());
    // Lane 0 in: its packets join the merger like any other lane's.
    // Lane 0 ending (the far side closed the session stream, or the link died) ends the session.
    let mut lane0_in = tokio::spawn(feed_lane(0, Frames::new(rx, pending_to_sock, true), merger));
    let ticktime = lanes_cfg.net_ticktime.clone();
    let (lane0_tx, lane0_rx) = mpsc::unbounded_channel();
    // Weak: the session's end (every lane sender dropped) must not wait for the down half.
    let mut stall = NodeStall {
        watch: StallWatch::default(),
        sync: sync.clone(),
        lane0: lane0_tx.downgrade(),
        shown: m_out.stalled(),
    };
    // Whatever reaches the node keeps its connection alive. The far node's ticks come relayed
    // (so our node's tick timer sees the far node's silences as over one OTP connection);
    // from a far gateway that predates relayed ticks, this gateway ticks when it has nothing
    // else to write, unless that gateway said its node missed its ticks.
    let down = async {
        loop {
            let (t, p) = match timeout(ticktime.tick_every(), merger_rx.recv()).await {
                Ok(Some(tp)) => tp,
                Ok(None) => break,
                Err(_) => {
                    if sync.ticks_here() {
                        write_node(&mut sw, &TICK, &mut stall).await?;
                    }
                    stall.caught_up();
                    continue;
                }
            };
            write_node(&mut sw, &p, &mut stall).await?;
            if merger_rx.is_empty() {
                stall.caught_up();
            }
            if p == TICK {
                continue;
            }
            m_in.received(&p, t, merger_rx.len());
        }
        Ok::<(), std::io::Error>(())
    };
    let up = async {
        let mut from_node = Frames::new(sr, pending_to_stream, false);
        // When the node last sent anything, whether the far gateway was told it went silent,
        // and the node's ticktime as last told to it (0: not yet).
        let mut heard = tokio::time::Instant::now();
        let mut silent = false;
        let mut told = 0;
        // When the node's last tick went to the far gateway (a node that floods empty packets
        // sends the far side ten a second at most).
        let mut ticked: Option<tokio::time::Instant> = None;
        let relay_budget = Budget::new(lanes_cfg.relay_buffer);
        let bulk = lanes_cfg.lanes.min(MAX_LANES as u64 - 1);
        let mut lanes: Vec<Option<LaneTx>> = (0..=bulk).map(|_| None).collect();
        // Bytes queued per lane (for the choice of a lane for a large message), kept by the
        // lane writers.
        let queued: Vec<Arc<AtomicUsize>> = (0..=bulk).map(|_| Arc::default()).collect();
        let mut router = Router::new(bulk);
        let mut node_closed = false;
        let mut held = HeldSenders { holds: Holds::default(), plug: lanes_cfg.plug.clone() };
        // What the lanes wrote, sampled while senders are held, to size their share.
        let rate = Arc::new(Rate::default());
        let (mut per_s, mut sampled) = (0.0f64, (std::time::Instant::now(), 0usize));
        let mut writers = tokio::task::JoinSet::new();
        // The far node stopped reading (its gateway said so): ours is not read either, until
        // it reads again or ours closes its end. Counted in the peer's metrics while set.
        let mut paused = m_out.paused();
        let mut node_hung_up = false;
        // When a paused pump next looks whether its node closed (a deadline, so that the other
        // arms firing, such as held senders' 5 ms, do not put it off for ever).
        let mut hang_up_check = tokio::time::Instant::now();
        let q0 = queued.first().cloned().unwrap_or_default();
        writers.spawn(write_lane(
            0,
            lane0_rx,
            Box::pin(async move { Ok::<W, std::io::Error>(tx) }),
            m_out.lane(0),
            q0,
            rate.clone(),
            None,
        ));
        // Delivery reports go out on lane 0 whatever this loop waits for (budgets): the peer's
        // bulk lanes wait for them, and the peer may be waiting for ours in turn.
        let mut reporter = tokio::task::JoinSet::new();
        reporter.spawn(report_deliveries(sync.clone(), lane0_tx.clone()));
        if let Some(slot) = lanes.get_mut(0) {
            *slot = Some(lane0_tx);
        }
        loop {
            let stalled = sync.peer_stalled() && !node_hung_up;
            if stalled != paused.is_set() {
                paused.set(stalled);
                tracing::debug!(paused = stalled, "far node stopped reading: not reading from ours (or reads again)");
                // Our node's silence while it was not read is not its own.
                heard = tokio::time::Instant::now();
                hang_up_check = heard + PAUSED_CHECK;
            }
            let (p, route) = tokio::select! {
                p = from_node.next_packet(), if !paused.is_set() => match p? {
                    Some(p) => {
                        heard = tokio::time::Instant::now();
                        let lane0 = lanes.first().and_then(|l| l.as_ref());
                        let tt = ticktime.millis();
                        if silent || tt != told {
                            (silent, told) = (false, tt);
                            let alive = LaneCtl::Alive { ticktime_ms: tt, ticks: true, stalls: true };
                            if lane0.is_none_or(|l| l.send(lane_ctl(alive)).is_err()) {
                                break;
                            }
                        }
                        // A tick crosses as a control frame, to a gateway that relays it.
                        if p == TICK {
                            if sync.peer_ticks() && ticked.is_none_or(|t| heard >= t + TICK_RELAY_GAP) {
                                ticked = Some(heard);
                                if lane0.is_none_or(|l| l.send(lane_ctl(LaneCtl::Tick)).is_err()) {
                                    break;
                                }
                            }
                            continue;
                        }
                        // Before it is queued: what it hands the peer exists before the peer can use it.
                        if let Some(e) = egress.as_mut() {
                            e.packet(&p);
                        }
                        let load = |l: u64| queued.get(l as usize).map_or(0, |q| q.load(Ordering::Relaxed));
                        let route = router.route(p.get(4..).unwrap_or_default(), load);
                        (p, route)
                    }
                    None => {
                        node_closed = true;
                        break;
                    }
                },
                // The policy's answers to refused requests of the peer's nodes.
                Some(r) = replies_rx.recv() => {
                    router.ordered_frame();
                    (r, Route::default())
                }
                // Held senders whose lanes drained go again.
                _ = tokio::time::sleep(Duration::from_millis(5)), if held.holds.any_held() => {
                    let now = std::time::Instant::now();
                    let total = rate.written.load(Ordering::Relaxed);
                    let dt = now.duration_since(sampled.0).as_secs_f64();
                    if dt >= 0.05 {
                        let r = total.saturating_sub(sampled.1) as f64 / dt;
                        per_s = if per_s == 0.0 { r } else { 0.7 * per_s + 0.3 * r };
                        sampled = (now, total);
                    }
                    held.release_drained(Rate::share(per_s));
                    continue;
                }
                // Not reading, our node's closing would go unseen: look for it now and then.
                _ = tokio::time::sleep_until(hang_up_check), if paused.is_set() => {
                    use futures_util::FutureExt;
                    hang_up_check += PAUSED_CHECK;
                    let ready = from_node.r.ready(tokio::io::Interest::READABLE).now_or_never();
                    node_hung_up = matches!(ready, Some(Ok(r)) if r.is_read_closed()) || matches!(ready, Some(Err(_)));
                    continue;
                }
                // The node missed its ticks: the far node stops getting them too.
                _ = tokio::time::sleep_until(heard + ticktime.silent_after(sync.peer_ticktime())), if !silent && !paused.is_set() => {
                    silent = true;
                    if lanes.first().and_then(|l| l.as_ref()).is_none_or(|l| l.send(lane_ctl(LaneCtl::Silent)).is_err()) {
                        break;
                    }
                    continue;
                }
                // The peer's delivery reports: senders leave bulk lanes whose frames arrived.
                _ = sync.pump.notified() => {
                    for (lane, count, _) in sync.take_received() {
                        router.delivered(lane.into(), count);
                    }
                    continue;
                }
            };
            let arrived = std::time::Instant::now();
            let lane = route.lane as usize;
            let Some(slot) = lanes.get_mut(lane) else { continue };
            if slot.is_none() {
                let (ltx, lrx) = mpsc::unbounded_channel();
                let q = queued.get(lane).cloned().unwrap_or_default();
                let flow = Some((sync.flow(lane as u8), lanes_cfg.link.clone()));
                writers.spawn(write_lane(
                    lane as u64,
                    lrx,
                    open_lane(lane as u8),
                    m_out.lane(lane),
                    q,
                    rate.clone(),
                    flow,
                ));
                *slot = Some(ltx);
            }
            let kind = crate::metrics::Kind::of(&p);
            let p = maybe_compress(p, lanes_cfg.compress_above);
            m_out.sent(lane, kind, p.len());
            // Lanes are unbounded queues; the budgets bound them all together.
            let (Some(r), Some(g)) = (
                noted("relay budget", route.lane, relay_budget.take(p.len())).await,
                noted("gateway budget", route.lane, lanes_cfg.gateway_buffer.take(p.len())).await,
            ) else {
                break;
            };
            if let Some(q) = queued.get(lane) {
                q.fetch_add(p.len(), Ordering::Relaxed);
            }
            // Charged to its sender (if a plug can hold it back), which is held once over its share.
            let holding = held.holds.any_held();
            let mut hold = None;
            let charged = match (route.sender, held.plug.as_ref().filter(|p| p.speaks())) {
                (Sender::Pid(key), Some(_)) => {
                    if lane != 0 || p.len() > LARGE_PACKET {
                        held.holds.remember(key, &p);
                    }
                    let c = held.holds.counter(key);
                    c.fetch_add(p.len(), Ordering::Relaxed);
                    hold = held.holds.over(key, &p, Rate::share(per_s));
                    Some(c)
                }
                _ => None,
            };
            if let Some(pid) = hold {
                if !holding {
                    // The rate the lanes drain at is sampled while anyone is held.
                    sampled = (std::time::Instant::now(), rate.written.load(Ordering::Relaxed));
                }
                tracing::debug!(?pid, share = Rate::share(per_s), "sender held");
                held.hold(&pid);
            }
            let Some(ltx) = slot.as_ref() else { break };
            let barriers = route.after.iter().map(|(l, c)| lane_ctl(LaneCtl::After { lane: *l as u8, count: *c }));
            if barriers.chain([(arrived, p, Some(((r, g), charged)))]).any(|f| ltx.send(f).is_err()) {
                break;
            }
        }
        if node_closed {
            tracing::debug!("node closed its connection: draining the lanes");
            // The node closed its connection: what it sent before still reaches the far node,
            // as on a TCP connection. The bulk lanes first (the far gateway reports them
            // delivered), then the rest of lane 0, whose end closes the far side.
            let _ = timeout(CLOSE_DRAIN, async {
                loop {
                    for (lane, count, _) in sync.take_received() {
                        router.delivered(lane.into(), count);
                    }
                    if router.busy_lanes() == 0 {
                        break;
                    }
                    sync.pump.notified().await;
                }
            })
            .await;
            reporter.abort_all();
            drop(lanes);
            let _ = timeout(CLOSE_DRAIN, async { while writers.join_next().await.is_some() {} }).await;
            // Let the link send the lanes' ends before this task closes the node's socket (tens
            // of µs): the far node's `nodedown` waits for them, ours does not.
            tokio::task::yield_now().await;
            tracing::debug!("lanes drained and ended");
        }
        Ok::<(), std::io::Error>(())
    };
    let (r, far_closed) = {
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => (r, false),
            r = &mut down => match r {
                // The node's socket failed: what the node sent before it went still goes out
                // (the up half sees the socket's end soon).
                Err(e) => (timeout(CLOSE_DRAIN, &mut up).await.unwrap_or(Err(e)), false),
                Ok(()) => (Ok(()), false),
            },
            r = &mut lane0_in => match r {
                Ok(Ok(())) => (Ok(()), true),
                Ok(Err(e)) => (Err(e), false),
                Err(_) => (Ok(()), false),
            },
        }
    };
    if far_closed {
        tracing::debug!("far side ended the session: closing the node's connection");
        // The far side ended the session stream after all it sent (its bulk lanes reported
        // delivered first): what is queued for the node reaches it before the connection ends.
        let _ = timeout(CLOSE_DRAIN, async {
            while let Ok((_, p)) = merger_rx.try_recv() {
                if p != TICK {
                    sw.write_all(&p).await?;
                }
            }
            sw.shutdown().await
        })
        .await;
    }
    lane0_in.abort();
    sync.close();
    Ok(r?)
}

/// How long a session whose one side closed may take to deliver what that side sent before.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// How often a pump that does not read from its node (the far node stopped reading) looks
/// whether its node closed its end.
const PAUSED_CHECK: Duration = Duration::from_millis(500);

/// Whether our node stopped reading, told to the far gateway when that changes.
struct NodeStall {
    watch: StallWatch,
    sync: Arc<LaneSync>,
    lane0: mpsc::WeakUnboundedSender<Queued>,
    /// The verdict, counted in the peer's metrics.
    shown: RelayState,
}

impl NodeStall {
    /// The node took `n` bytes at once.
    fn took(&mut self, n: usize) {
        // No clock read per packet while the node keeps up (no window open).
        if self.watch.watching() {
            let v = self.watch.took(std::time::Instant::now(), n);
            self.tell(v);
        }
    }

    /// The writer waited for the node since `from`; it then took `n` bytes.
    fn waited(&mut self, from: std::time::Instant, n: usize) {
        let v = self.watch.waited(from, std::time::Instant::now(), n);
        self.tell(v);
    }

    /// Everything that waited for the node was taken.
    fn caught_up(&mut self) {
        let v = self.watch.caught_up();
        self.tell(v);
    }

    /// Tells the far gateway (if it understands) a new verdict of the watch.
    fn tell(&mut self, verdict: Option<bool>) {
        let Some(stalled) = verdict else { return };
        tracing::debug!(stalled, "node stopped reading (or reads again)");
        self.shown.set(stalled);
        if let (true, Some(lane0)) = (self.sync.peer_stalls(), self.lane0.upgrade()) {
            let _ = lane0.send(lane_ctl(LaneCtl::Stalled(stalled)));
        }
    }
}

/// Writes `p` to the node whole, watching whether the node still reads ([`StallWatch`]).
async fn write_node<W: AsyncWrite + Unpin>(w: &mut W, p: &[u8], stall: &mut NodeStall) -> std::io::Result<()> {
    use futures_util::FutureExt;
    let mut rest = p;
    while !rest.is_empty() {
        // `write` is cancel-safe: an attempt that timed out wrote nothing.
        let n = match w.write(rest).now_or_never() {
            Some(n) => {
                let n = n?;
                stall.took(n);
                n
            }
            None => {
                let from = std::time::Instant::now();
                let until = tokio::time::Instant::from_std(stall.watch.deadline(from));
                let n = match tokio::time::timeout_at(until, w.write(rest)).await {
                    Ok(n) => Some(n?),
                    Err(_) => None,
                };
                stall.waited(from, n.unwrap_or(0));
                match n {
                    Some(n) => n,
                    None => continue,
                }
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        rest = rest.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// Awaits `f`, logging at debug level if it takes longer than a second (a lane stuck at a
/// barrier, on flow control or on the transport says so in the log).
pub(super) async fn noted<T>(what: &str, lane: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(f);
    match timeout(Duration::from_secs(1), &mut f).await {
        Ok(v) => v,
        Err(_) => {
            let t = std::time::Instant::now();
            tracing::debug!(lane, "lane waits on {what} for over 1 s");
            let v = f.await;
            tracing::debug!(lane, "lane waited on {what} for {:?} more", t.elapsed());
            v
        }
    }
}

/// Sends what our incoming bulk lanes delivered to the peer, as it happens (coalesced).
async fn report_deliveries(sync: Arc<LaneSync>, lane0: LaneTx) -> std::io::Result<()> {
    loop {
        sync.report.notified().await;
        for (lane, count, bytes) in sync.take_reports() {
            if lane0.send(lane_ctl(LaneCtl::Delivered { lane, count, bytes })).is_err() {
                return Ok(());
            }
        }
    }
}

/// A control frame, queued for a lane.
fn lane_ctl(c: LaneCtl) -> Queued {
    (std::time::Instant::now(), c.encode(), None)
}

/// Writes the frames queued for one lane to its stream, opened by `open`.
async fn write_lane<W, F>(
    lane: u64,
    mut frames: mpsc::UnboundedReceiver<Queued>,
    open: F,
    mut metrics: crate::metrics::LaneMetrics,
    queued: Arc<AtomicUsize>,
    rate: Arc<Rate>,
    flow: Option<Flow>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    F: std::future::Future<Output = std::io::Result<W>>,
{
    let mut w = open.await?;
    while let Some((t, p, held)) = frames.recv().await {
        if let (Some((flow, link)), Some(_)) = (&flow, &held) {
            noted("flow", lane, flow.room(p.len(), LaneFlow::window(link.as_deref()))).await;
        }
        noted("write", lane, w.write_all(&p)).await?;
        if let (Some((flow, _)), Some(_)) = (&flow, &held) {
            flow.written.fetch_add(p.len() as u64, Ordering::Relaxed);
        }
        if let Some((held, sender)) = held {
            queued.fetch_sub(p.len(), Ordering::Relaxed);
            if let Some(s) = sender {
                s.fetch_sub(p.len(), Ordering::Relaxed);
            }
            rate.written.fetch_add(p.len(), Ordering::Relaxed);
            drop(held);
            metrics.written(t, frames.len());
        }
    }
    w.shutdown().await
}

/// Feeds the frames of incoming lane `lane` to the session's merger: packets through the policy,
/// in order, each after the barriers in front of it.
async fn feed_lane<R: AsyncRead + Unpin>(lane: u8, mut frames: Frames<R>, merger: Merger) -> std::io::Result<()> {
    let mut ingress = merger.policy.as_ref().map(|p| p.session.ingress());
    while let Some((f, wire)) = frames.next().await? {
        let p = match f {
            Frame::Packet(p) => p,
            Frame::Ctl(LaneCtl::After { lane: other, count }) => {
                if !noted("barrier", lane.into(), merger.sync.after(other, count)).await {
                    return Ok(());
                }
                continue;
            }
            Frame::Ctl(LaneCtl::Delivered { lane: ours, count, bytes }) => {
                merger.sync.peer_delivered(ours, count, bytes);
                continue;
            }
            Frame::Ctl(LaneCtl::Silent) => {
                merger.sync.set_peer_silent();
                continue;
            }
            Frame::Ctl(LaneCtl::Alive { ticktime_ms, ticks, stalls }) => {
                merger.sync.set_peer_alive(ticktime_ms, ticks, stalls);
                continue;
            }
            Frame::Ctl(LaneCtl::Stalled(stalled)) => {
                merger.sync.set_peer_stalled(stalled);
                continue;
            }
            // In its place among the lane's packets, as the far node wrote it; not a frame the
            // barriers count.
            Frame::Ctl(LaneCtl::Tick) => {
                if noted("node", lane.into(), merger.to_node.send((std::time::Instant::now(), TICK.to_vec())))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                continue;
            }
        };
        let forward = match (&mut ingress, &merger.policy) {
            (Some(ingress), Some(policy)) => {
                // Inspected first, then rated: only what passes counts against the role's
                // rates, so refused traffic does not delay the peer's allowed traffic.
                let verdict = ingress
                    .packet(p, std::time::Instant::now())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
                if let Some(refusal) = &verdict.refused {
                    (policy.on_refuse)(refusal);
                }
                for r in verdict.reply {
                    let _ = merger.replies.send(r);
                }
                if !verdict.wait.is_zero() {
                    // Over the role's rate: this lane (and through QUIC flow control, its sender) waits.
                    tokio::time::sleep(verdict.wait).await;
                }
                verdict.forward
            }
            _ => vec![p],
        };
        for f in forward {
            if noted("node", lane.into(), merger.to_node.send((std::time::Instant::now(), f))).await.is_err() {
                return Ok(());
            }
        }
        merger.sync.delivered(lane, wire);
    }
    Ok(())
}

/// Feeds incoming lane stream `lane` (after its `Lane` frame; `pending` are bytes already read
/// past it) to the session's merger.
pub async fn feed_lane_stream(
    lane: u8,
    rx: crate::fabric::link::RecvStream,
    pending: &[u8],
    merger: Merger,
) -> std::io::Result<()> {
    feed_lane(lane, Frames::new(rx, pending, true), merger).await
}
