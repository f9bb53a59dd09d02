//! Relayed distribution connections: a local BEAM dials a remote node, its gateway completes
//! the handshake as that node, the remote gateway completes it with the real node as the dialler,
//! and then both legs carry the same bytes (DESIGN facts 3, 5, 6).
//!
//! The handshake on both legs is `session::handshake` (sans-IO, with the cookie rules and a
//! diagram of each step); here is its async shell, which only moves its bytes between the
//! node's socket and the relay stream and times each step out. Then [`pump`] carries the
//! connection.

use crate::config;
use crate::fabric::link::Link;
use crate::lane_frame::{self, maybe_compress, Decoded, Frame, LaneCtl};
use crate::local::plug::Plug;
use crate::policy::{Refusal, Session};
use crate::session::handshake::{FarLeg, Leg, LegError, NearLeg, Need};
use crate::wire::Msg;
use bytes::BytesMut;
use edist_proto::dist::handshake::HandshakeError;
use edist_proto::dist::lane::{Route, Router, Sender};
use edist_proto::dist::DFlags;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

pub use crate::session::handshake::{hidden_mask, LocalDial, E2E_COOKIES, RELAY_MASK};

/// Per-step timeout of a relayed handshake (OTP's `net_setuptime` is 7 s).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(7);

/// Why a relayed connection ended before or while carrying traffic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer gateway: {0}")]
    Wire(#[from] crate::wire::WireError),
    #[error("peer gateway closed the relay stream")]
    StreamClosed,
    #[error("local node closed the connection during the handshake")]
    LocalClosed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected message from the peer gateway: {0:?}")]
    Unexpected(Msg),
    #[error("refused: {0}")]
    Refused(String),
}

impl From<LegError> for RelayError {
    fn from(e: LegError) -> Self {
        match e {
            LegError::Handshake(e) => RelayError::Handshake(e),
            LegError::Unexpected(m) => RelayError::Unexpected(m),
            LegError::Refused(r) => RelayError::Refused(r.to_string()),
            LegError::NodeClosed => RelayError::LocalClosed,
        }
    }
}

/// Reads messages from a relay stream, keeping what follows the last one (raw bytes).
pub struct MsgReader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    /// Wraps the receiving side of a stream.
    pub fn new(r: R) -> Self {
        MsgReader { r, buf: BytesMut::with_capacity(4096) }
    }

    /// The next message, within [`STEP_TIMEOUT`].
    pub async fn next(&mut self, what: &'static str) -> Result<Msg, RelayError> {
        loop {
            if let Some(m) = Msg::decode(&mut self.buf)? {
                return Ok(m);
            }
            let n = timeout(STEP_TIMEOUT, self.r.read_buf(&mut self.buf))
                .await
                .map_err(|_| RelayError::Timeout(what))??;
            if n == 0 {
                return Err(RelayError::StreamClosed);
            }
        }
    }

    /// The stream and the bytes already read past the last message.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.r, self.buf)
    }
}

async fn read_sock(sock: &mut TcpStream, buf: &mut [u8], what: &'static str) -> Result<usize, RelayError> {
    match timeout(STEP_TIMEOUT, sock.read(buf)).await {
        Err(_) => Err(RelayError::Timeout(what)),
        Ok(Ok(0)) => Err(RelayError::LocalClosed),
        Ok(r) => Ok(r?),
    }
}

/// A near leg answering a local node that dialled `target` (a remote node of that `creation`),
/// as `target`, with this gateway's cookie.
pub fn near_leg(target: &str, creation: u32, cookie: &str) -> NearLeg {
    NearLeg::new(target, creation, cookie.as_bytes(), rand::random())
}

/// The initiator's side, step 1: reads the local node's `send_name` on a connection to the
/// listener impersonating the node it dialled; the caller then opens the far leg
/// ([`NearLeg::open`]) or refuses ([`NearLeg::refuse`]).
pub async fn read_local_name(sock: &mut TcpStream, leg: &mut NearLeg) -> Result<LocalDial, RelayError> {
    let mut buf = [0u8; 1024];
    while let Need::Node(what) = leg.need() {
        let n = read_sock(sock, &mut buf, what).await?;
        leg.node_bytes(buf.get(..n).unwrap_or_default())?;
    }
    leg.dial().cloned().ok_or(RelayError::Handshake(HandshakeError::OutOfOrder("no name")))
}

/// The initiator's side, steps 2–4, once the relay stream is open and the leg's `Open` was
/// sent: mirror the far node's status and challenge to the local node, check its digest, let
/// the far side finish, then ack ([`NearLeg`]). Returns bytes the local node sent after its
/// reply.
pub async fn finish_local_leg<R, W>(
    sock: &mut TcpStream,
    leg: &mut NearLeg,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
) -> Result<Vec<u8>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    run_leg(sock, leg, msgs, tx).await?;
    Ok(leg.take_remaining())
}

/// The far side: dial the real local node `to` as `from` and mirror the handshake over the
/// relay stream ([`FarLeg`]). Returns the connected socket and bytes the node sent after its
/// ack. `hide`: `from` is presented to `to` as a hidden node, and `to` to `from` (its role
/// says so).
#[allow(clippy::too_many_arguments)]
pub async fn dial_local_target<R, W>(
    port: u16,
    from: &str,
    to: &str,
    flags: DFlags,
    creation: u32,
    cookie: &str,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
    hide: bool,
) -> Result<(TcpStream, Vec<u8>), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sock = timeout(STEP_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| RelayError::Timeout("connect"))??;
    let _ = sock.set_nodelay(true);
    let mut leg = FarLeg::new(from, to, flags, creation, cookie.as_bytes(), rand::random(), hide);
    run_leg(&mut sock, &mut leg, msgs, tx).await?;
    Ok((sock, leg.take_remaining()))
}

/// Moves a leg's bytes until it is connected: reads what it needs (each step within
/// [`STEP_TIMEOUT`]) and sends what it queued, also before returning its error.
async fn run_leg<L, R, W>(
    sock: &mut TcpStream,
    leg: &mut L,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
) -> Result<(), RelayError>
where
    L: Leg,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = [0u8; 1024];
    loop {
        send_queued(sock, leg, tx).await?;
        let step = match leg.need() {
            Need::Node(what) => match read_sock(sock, &mut buf, what).await {
                Ok(n) => leg.node_bytes(buf.get(..n).unwrap_or_default()),
                Err(e @ (RelayError::LocalClosed | RelayError::Io(_))) => match leg.node_closed() {
                    LegError::NodeClosed => {
                        send_queued(sock, leg, tx).await?;
                        return Err(e);
                    }
                    verdict => Err(verdict),
                },
                Err(e) => return Err(e),
            },
            Need::Peer(what) => leg.peer_msg(msgs.next(what).await?),
            Need::Done if leg.connected().is_some() => return Ok(()),
            Need::Done => return Err(HandshakeError::OutOfOrder("the leg is over").into()),
            Need::Decision => return Err(HandshakeError::OutOfOrder("the leg waits for a decision").into()),
        };
        if let Err(e) = step {
            send_queued(sock, leg, tx).await?;
            return Err(e.into());
        }
    }
}

/// Sends what a leg queued: bytes to its node, messages to the peer gateway.
async fn send_queued<L: Leg, W: AsyncWrite + Unpin>(
    sock: &mut TcpStream,
    leg: &mut L,
    tx: &mut W,
) -> Result<(), RelayError> {
    let out = leg.take_node_output();
    if !out.is_empty() {
        sock.write_all(&out).await?;
    }
    while let Some(m) = leg.poll_peer() {
        tx.write_all(&m.encode()).await?;
    }
    Ok(())
}

/// How a relay spreads traffic over lanes, and how much it may hold.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// Bulk lanes per relayed connection and direction besides the ordered lane (the relay
    /// stream): a large message takes the one with the fewest bytes queued (see [`Router`]).
    pub lanes: u64,
    /// Bytes this relay may hold on their way to the peer gateway, all lanes together: the
    /// relay keeps reading from its node (so a small message can overtake a queued large one)
    /// until this is used up, then stops (backpressure).
    pub relay_buffer: usize,
    /// The same bound for all relays of the gateway together (shared).
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

/// A local node's `net_ticktime`, as its plug last reported it (it can change at run time,
/// `net_kernel:set_net_ticktime/1`), or the configured one.
#[derive(Debug, Clone)]
pub struct Ticktime {
    configured: Duration,
    /// Milliseconds reported by the node; 0: none yet.
    reported: Arc<std::sync::atomic::AtomicU64>,
}

impl Ticktime {
    /// A ticktime the node has not reported yet.
    pub fn new(configured: Duration) -> Self {
        Ticktime { configured, reported: Arc::default() }
    }

    /// The same, following what the node reports into `reported` (milliseconds).
    pub fn reported_into(configured: Duration, reported: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Ticktime { configured, reported }
    }

    /// The node's ticktime now (at least a second).
    pub fn get(&self) -> Duration {
        match self.reported.load(Ordering::Relaxed) {
            0 => self.configured,
            ms => Duration::from_millis(ms),
        }
        .max(Duration::from_secs(1))
    }

    /// The node's ticktime in milliseconds, as told to the peer gateway.
    fn millis(&self) -> u64 {
        u64::try_from(self.get().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the node may stay silent before it counts as missing its ticks: it ticks every
    /// quarter of its ticktime unless it sent something, so a gap of up to half of it is normal.
    /// With the far node's ticktime known (`peer`), the stricter of the two: a node that ticks
    /// too slowly for a far node with a shorter ticktime goes silent for it, and the far node
    /// disconnects it as OTP does (erl_distribution_SUITE `tick_change`).
    fn silent_after(&self, peer: Option<Duration>) -> Duration {
        let after = |t: Duration| t / 2 + t / 20 + Duration::from_millis(200);
        let own = after(self.get());
        peer.map_or(own, |p| own.min(after(p.max(Duration::from_secs(1)))))
    }

    /// How often the gateway ticks towards the node when nothing else goes there.
    fn tick_every(&self) -> Duration {
        (self.get() / 4).min(Duration::from_secs(1))
    }
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

/// A byte budget: queued packets hold part of it until their lane has written them.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, u32::MAX as usize);
        Budget { sem: Arc::new(Semaphore::new(total)), total }
    }

    /// Takes `n` bytes, waiting while the budget is used up. A packet larger than the whole
    /// budget takes all of it, so it still passes, alone.
    async fn take(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().acquire_many_owned(n.clamp(1, self.total) as u32).await.ok()
    }

    /// Bytes currently held.
    pub fn used(&self) -> usize {
        self.total - self.sem.available_permits()
    }
}

/// What a queued packet holds of the relay's and the gateway's budgets.
type Held = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// One frame queued for a lane: when its packet arrived, the frame, and what it holds of the
/// budgets and of its sender's share (`None` for a control frame, which is not a packet).
type Queued = (std::time::Instant, Vec<u8>, Option<(Held, Option<SenderBytes>)>);

/// Bytes of one sender waiting in a relay's lanes.
type SenderBytes = Arc<AtomicUsize>;

/// How long a sender's queued bytes may take to drain before the plug holds it back: what edist
/// keeps in front of a link is sized by time, not bytes.
const HOLD_AFTER: Duration = Duration::from_millis(50);
/// A sender's share before its lanes' rate is known, and its bounds.
const SHARE_START: usize = 1 << 20;
const SHARE_MIN: usize = 128 << 10;
const SHARE_MAX: usize = 8 << 20;
/// A packet this large may start a fragmented message: its sender's pid is noted.
const LARGE_PACKET: usize = 16 << 10;
/// Senders whose queued bytes are tracked per relay (beyond, the idle ones are forgotten).
const MAX_TRACKED: usize = 4096;

/// Per-sender bytes waiting in one relay's lanes, and the senders held back (sans IO but for
/// the counters the lane writers decrement).
///
/// A sender whose bytes pass its share is held by the node's plug (suspended, so only it stops:
/// the relay keeps reading the node's socket and everyone else's messages flow). Held senders
/// go again oldest first, once their own bytes fell to half the share and the relay's queue (all
/// senders') is within it: a released sender sends on for a while before a new hold reaches it
/// (a hold is asynchronous), so releasing everyone at once would queue that much times their
/// number. Releasing everything is the owner's job when the relay ends.
#[derive(Debug, Default)]
struct Holds {
    senders: std::collections::HashMap<u64, SenderBytes>,
    /// Held senders, with the order they were held in.
    held: std::collections::HashMap<u64, (u64, edist_proto::etf::Pid)>,
    holds_made: u64,
    /// The pid of each sender with a large message under way: its continuation fragments name
    /// none, and a sender may pass its share in the middle of a message.
    pids: std::collections::HashMap<u64, edist_proto::etf::Pid>,
}

impl Holds {
    /// The counter to charge a frame of `key` to.
    fn counter(&mut self, key: u64) -> SenderBytes {
        if self.senders.len() >= MAX_TRACKED && !self.senders.contains_key(&key) {
            let held = &self.held;
            self.senders.retain(|k, c| c.load(Ordering::Relaxed) > 0 || held.contains_key(k));
            let senders = &self.senders;
            self.pids.retain(|k, _| senders.contains_key(k));
        }
        self.senders.entry(key).or_default().clone()
    }

    /// Notes the pid of `key` if `packet` (a large one: the first fragment of a message, say)
    /// names it.
    fn remember(&mut self, key: u64, packet: &[u8]) {
        if let Some(pid) = packet.get(4..).and_then(edist_proto::dist::lane::sender_pid) {
            if self.pids.len() < MAX_TRACKED || self.pids.contains_key(&key) {
                self.pids.insert(key, pid);
            }
        }
    }

    /// After queueing `packet` of `key`: the pid to hold, if the sender is now over `share`.
    fn over(&mut self, key: u64, packet: &[u8], share: usize) -> Option<edist_proto::etf::Pid> {
        let queued = self.senders.get(&key)?.load(Ordering::Relaxed);
        if queued <= share || self.held.contains_key(&key) {
            return None;
        }
        let pid =
            packet.get(4..).and_then(edist_proto::dist::lane::sender_pid).or_else(|| self.pids.get(&key).cloned())?;
        self.holds_made += 1;
        self.held.insert(key, (self.holds_made, pid.clone()));
        Some(pid)
    }

    /// Held senders to release now: oldest first, those whose bytes fell to half of `share`,
    /// while the relay's queue, counting half a share for each one released, stays within it.
    fn drained(&mut self, share: usize) -> Vec<edist_proto::etf::Pid> {
        let queued = |k: &u64| self.senders.get(k).map_or(0, |c| c.load(Ordering::Relaxed));
        let mut total: usize = self.senders.keys().map(queued).sum();
        let mut oldest: Vec<(u64, u64)> = self.held.iter().map(|(k, (n, _))| (*n, *k)).collect();
        oldest.sort_unstable();
        let mut done = Vec::new();
        for (_, k) in oldest {
            if total > share {
                break;
            }
            if queued(&k) <= share / 2 {
                total += share / 2;
                done.push(k);
            }
        }
        done.iter().filter_map(|k| self.held.remove(k)).map(|(_, p)| p).collect()
    }

    fn any_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Every held sender, forgotten.
    fn release_all(&mut self) -> Vec<edist_proto::etf::Pid> {
        self.held.drain().map(|(_, (_, p))| p).collect()
    }
}

/// A relay's [`Holds`] and the plug that applies them. Whatever is still held when the relay
/// ends is released, however it ends (the pump's halves are dropped when another part ends).
struct HeldSenders {
    holds: Holds,
    plug: Option<Plug>,
}

impl HeldSenders {
    fn hold(&self, pid: &edist_proto::etf::Pid) {
        if let Some(p) = &self.plug {
            p.hold(pid);
        }
    }

    /// Releases the held senders whose bytes fell to half of `share`.
    fn release_drained(&mut self, share: usize) {
        for pid in self.holds.drained(share) {
            if let Some(p) = &self.plug {
                p.release(&pid);
            }
        }
    }

    /// Releases every held sender.
    fn release_all(&mut self) {
        for pid in self.holds.release_all() {
            if let Some(p) = &self.plug {
                p.release(&pid);
            }
        }
    }
}

impl Drop for HeldSenders {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Bytes per second the lanes of a relay write, smoothed: how fast a sender's share drains.
#[derive(Debug, Default)]
struct Rate {
    written: AtomicUsize,
}

impl Rate {
    /// A sender's share: what the lanes write in [`HOLD_AFTER`], within bounds; `per_s` the
    /// latest measurement (0: none yet).
    fn share(per_s: f64) -> usize {
        if per_s <= 0.0 {
            return SHARE_START;
        }
        ((per_s * HOLD_AFTER.as_secs_f64()) as usize).clamp(SHARE_MIN, SHARE_MAX)
    }
}

/// The queue of one outgoing lane.
type LaneTx = mpsc::UnboundedSender<Queued>;

/// Where the lanes of one relayed connection deliver what they bring from the fabric.
#[derive(Clone)]
pub struct Merger {
    /// Packets (with their u32 length prefix) on their way to the local node, from all lanes,
    /// with the time each arrived.
    pub to_node: mpsc::Sender<Stamped>,
    /// Replies the policy makes for the peer (a refused rpc's error), sent on lane 0.
    pub replies: mpsc::UnboundedSender<Vec<u8>>,
    /// The peer gateway whose relay this is (a lane from another peer is refused).
    pub peer: Arc<str>,
    /// The ingress policy towards the local node; `None`: packets pass untouched.
    pub policy: Option<Arc<InboundPolicy>>,
    /// What the lanes delivered, both ways (the ordering rule's barriers and reports).
    pub sync: Arc<LaneSync>,
}

/// A packet and the time it arrived at the gateway (for the time-in-gateway histogram).
pub type Stamped = (std::time::Instant, Vec<u8>);

/// The receiving ends of a relay's [`Merger`]: packets for the local node, replies for the peer.
pub type MergerRx = (mpsc::Receiver<Stamped>, mpsc::UnboundedReceiver<Vec<u8>>);

/// Called with each refusal (or, in audit mode, each would-be refusal).
pub type OnRefuse = Box<dyn Fn(&Refusal) + Send + Sync>;

/// What a relay needs to inspect packets under its peer's role.
pub struct InboundPolicy {
    /// The connection under the peer gateway's role (role, the peer's shared state, the nodes).
    pub session: Arc<Session>,
    /// Called for each refusal (logging once per burst and counting are the gateway's).
    pub on_refuse: OnRefuse,
}

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

/// Lanes of one relayed connection and direction, at most (lane indices are one byte).
const MAX_LANES: usize = 256;

/// The lanes' progress, shared by a relay's pump and its incoming lanes: how much each
/// incoming lane delivered to the node (lanes wait on each other's counts at barriers, and the
/// peer hears of it), and how much of our outgoing lanes the peer reports delivered.
#[derive(Debug, Default)]
pub struct LaneSync {
    state: std::sync::Mutex<SyncState>,
    /// Wakes incoming lanes waiting at a barrier.
    progress: tokio::sync::Notify,
    /// Wakes the pump: the peer reported deliveries (for the router).
    pump: tokio::sync::Notify,
    /// Wakes the reporter: a bulk lane delivered what the peer has not heard of.
    report: tokio::sync::Notify,
    /// Our outgoing bulk lanes' flows, by lane (grown on demand).
    flows: std::sync::Mutex<Vec<Arc<LaneFlow>>>,
}

/// A lane, frames and bytes (as they crossed the link) delivered of it.
type Delivery = (u8, u64, u64);

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
    /// The relay ended: nobody waits any more.
    closed: bool,
    /// The far node missed its ticks ([`LaneCtl::Silent`]): no ticks towards ours.
    peer_silent: bool,
    /// The far node's `net_ticktime` in milliseconds, as its gateway said ([`LaneCtl::Alive`]);
    /// 0: not known.
    peer_ticktime_ms: u64,
    /// The far gateway relays its node's ticks ([`LaneCtl::Tick`]): ours gets those, and no
    /// others.
    peer_ticks: bool,
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
    fn delivered(&self, lane: u8, bytes: usize) {
        let mut st = self.state();
        set_at(&mut st.delivered, lane as usize, |d: &mut (u64, u64)| *d = (d.0 + 1, d.1 + bytes as u64));
        if lane != 0 {
            st.report_due = true;
            drop(st);
            self.report.notify_one();
        }
        self.progress.notify_waiters();
    }

    /// Waits until incoming lane `lane` delivered `count` frames; false once the relay ended.
    async fn after(&self, lane: u8, count: u64) -> bool {
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
    fn flow(&self, lane: u8) -> Arc<LaneFlow> {
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = Arc::default();
        set_at(&mut flows, lane as usize, |x: &mut Arc<LaneFlow>| f = x.clone());
        f
    }

    /// The peer reports our outgoing lane `lane` delivered `count` frames, `bytes` bytes.
    fn peer_delivered(&self, lane: u8, count: u64, bytes: u64) {
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
    fn take_received(&self) -> Vec<Delivery> {
        std::mem::take(&mut self.state().peer_delivered)
    }

    /// Reports to send: lanes that delivered more since the last call.
    fn take_reports(&self) -> Vec<Delivery> {
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

    fn set_peer_silent(&self) {
        self.state().peer_silent = true;
    }

    /// The far node speaks, with this `net_ticktime` (0: not said); `ticks`: its gateway
    /// relays its ticks.
    fn set_peer_alive(&self, ticktime_ms: u64, ticks: bool) {
        let mut st = self.state();
        st.peer_silent = false;
        st.peer_ticks |= ticks;
        if ticktime_ms > 0 {
            st.peer_ticktime_ms = ticktime_ms;
        }
    }

    /// Whether the far gateway relays its node's ticks (then they go to the far gateway too).
    fn peer_ticks(&self) -> bool {
        self.state().peer_ticks
    }

    /// Whether this gateway ticks towards its node when it has nothing else to write: only
    /// while the far gateway does not relay its node's ticks (a gateway that predates them)
    /// and has not said its node went silent.
    fn ticks_here(&self) -> bool {
        let st = self.state();
        !st.peer_ticks && !st.peer_silent
    }

    /// The far node's `net_ticktime`, when its gateway said it.
    fn peer_ticktime(&self) -> Option<Duration> {
        Some(self.state().peer_ticktime_ms).filter(|&ms| ms > 0).map(Duration::from_millis)
    }

    /// The relay ended: lanes waiting at a barrier give up.
    pub fn close(&self) {
        self.state().closed = true;
        self.progress.notify_waiters();
    }
}

/// Splits a byte stream into frames; `None` at a clean end.
struct Frames<R> {
    r: R,
    buf: BytesMut,
    /// A lane from the fabric: compressed and control frames are allowed.
    fabric: bool,
}

/// Bytes a frame reader asks for at least, per read.
const READ_CHUNK: usize = 16 * 1024;

/// An empty packet: a tick.
const TICK: [u8; 4] = [0; 4];

/// The shortest gap between two of a node's ticks relayed to the far gateway.
const TICK_RELAY_GAP: Duration = Duration::from_millis(100);

impl<R: AsyncRead + Unpin> Frames<R> {
    fn new(r: R, pending: &[u8], fabric: bool) -> Self {
        // Small to start: most connections are idle most of the time. Large packets grow it.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(pending);
        Frames { r, buf, fabric }
    }

    /// The next frame, and its length on the stream.
    async fn next(&mut self) -> std::io::Result<Option<(Frame, usize)>> {
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

/// Carries a connected relay until either side ends, then ends both (fact 9).
///
/// Towards the fabric, a [`Router`] puts each packet on a lane (the ordering rule): lane 0, the
/// relay stream itself, carries small messages in the node's order; lanes 1..=`lanes` are
/// unidirectional streams opened on first use for large messages. From the fabric, packets of
/// all lanes (lane 0 here, the others through `merger_rx`, fed by [`feed_lane`]) are written to
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
    metrics: crate::metrics::RelayMetrics,
) -> Result<(), RelayError>
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
    // Lane 0 ending (the far side closed the relay stream, or the link died) ends the relay.
    let mut lane0_in = tokio::spawn(feed_lane(0, Frames::new(rx, pending_to_sock, true), merger));
    let ticktime = lanes_cfg.net_ticktime.clone();
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
                        sw.write_all(&TICK).await?;
                    }
                    continue;
                }
            };
            sw.write_all(&p).await?;
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
        let (lane0_tx, lane0_rx) = mpsc::unbounded_channel();
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
            let (p, route) = tokio::select! {
                p = from_node.next_packet() => match p? {
                    Some(p) => {
                        heard = tokio::time::Instant::now();
                        let lane0 = lanes.first().and_then(|l| l.as_ref());
                        let tt = ticktime.millis();
                        if silent || tt != told {
                            (silent, told) = (false, tt);
                            let alive = LaneCtl::Alive { ticktime_ms: tt, ticks: true };
                            if lane0.is_none_or(|l| l.send(control(alive)).is_err()) {
                                break;
                            }
                        }
                        // A tick crosses as a control frame, to a gateway that relays it.
                        if p == TICK {
                            if sync.peer_ticks() && ticked.is_none_or(|t| heard >= t + TICK_RELAY_GAP) {
                                ticked = Some(heard);
                                if lane0.is_none_or(|l| l.send(control(LaneCtl::Tick)).is_err()) {
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
                // The node missed its ticks: the far node stops getting them too.
                _ = tokio::time::sleep_until(heard + ticktime.silent_after(sync.peer_ticktime())), if !silent => {
                    silent = true;
                    if lanes.first().and_then(|l| l.as_ref()).is_none_or(|l| l.send(control(LaneCtl::Silent)).is_err()) {
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
            let barriers = route.after.iter().map(|(l, c)| control(LaneCtl::After { lane: *l as u8, count: *c }));
            if barriers.chain([(arrived, p, Some(((r, g), charged)))]).any(|f| ltx.send(f).is_err()) {
                break;
            }
        }
        if node_closed {
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
        // The far side ended the relay stream after all it sent (its bulk lanes reported
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

/// How long a relay whose one side closed may take to deliver what that side sent before.
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// What a bulk lane has written and the peer reports delivered, in bytes on the link: its writer
/// keeps about two congestion windows outstanding, so bulk data waits in the lane's queue (whose
/// senders are held back) rather than in the transport's buffer, in front of everyone.
#[derive(Debug, Default)]
struct LaneFlow {
    written: std::sync::atomic::AtomicU64,
    delivered: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
}

/// A bulk lane's flow and the link it goes over.
type Flow = (Arc<LaneFlow>, Option<Arc<dyn Link>>);

/// Bounds of what a bulk lane keeps outstanding; the default where the transport does not say.
const FLOW_MIN: u64 = 128 << 10;
const FLOW_MAX: u64 = 16 << 20;
const FLOW_DEFAULT: u64 = 4 << 20;

impl LaneFlow {
    fn delivered(&self, bytes: u64) {
        self.delivered.fetch_max(bytes, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// What a lane may keep outstanding on `link` now.
    fn window(link: Option<&dyn Link>) -> u64 {
        match link.and_then(|l| l.in_flight_hint()) {
            Some(cwnd) => cwnd.saturating_mul(2).clamp(FLOW_MIN, FLOW_MAX),
            None => FLOW_DEFAULT,
        }
    }

    /// Waits until `n` more bytes fit in `window` (or nothing is outstanding).
    async fn room(&self, n: usize, window: u64) {
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

/// Awaits `f`, logging at debug level if it takes longer than a second (a lane stuck at a
/// barrier, on flow control or on the transport says so in the log).
async fn noted<T>(what: &str, lane: u64, f: impl std::future::Future<Output = T>) -> T {
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
            if lane0.send(control(LaneCtl::Delivered { lane, count, bytes })).is_err() {
                return Ok(());
            }
        }
    }
}

/// A control frame, queued for a lane.
fn control(c: LaneCtl) -> Queued {
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

/// Feeds the frames of incoming lane `lane` to the relay's merger: packets through the policy,
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
            Frame::Ctl(LaneCtl::Alive { ticktime_ms, ticks }) => {
                merger.sync.set_peer_alive(ticktime_ms, ticks);
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
/// past it) to the relay's merger.
pub async fn feed_lane_stream(
    lane: u8,
    rx: crate::fabric::link::RecvStream,
    pending: &[u8],
    merger: Merger,
) -> std::io::Result<()> {
    feed_lane(lane, Frames::new(rx, pending, true), merger).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod hold_tests {
    use super::*;
    use edist_proto::dist::control::{encode_message, Control};
    use edist_proto::etf::{Atom, Pid, Term};

    fn pid(id: u32) -> Pid {
        Pid { node: Atom::from("a@h"), id, serial: 0, creation: 1 }
    }

    /// A whole SEND_SENDER packet from `from`, length prefix included.
    fn packet(from: u32) -> Vec<u8> {
        let (ctrl, pl) = encode_message(&Control::SendSender { from: pid(from), to: pid(9) }, Some(&Term::Int(1)));
        let mut body = vec![131, 68, 0];
        body.extend_from_slice(&ctrl);
        body.extend_from_slice(&pl);
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn a_sender_over_its_share_is_held_once_and_released_at_half() {
        let mut h = Holds::default();
        let c = h.counter(1);
        c.fetch_add(900, Ordering::Relaxed);
        assert_eq!(h.over(1, &packet(1), 1000), None, "within its share");
        c.fetch_add(200, Ordering::Relaxed);
        assert_eq!(h.over(1, &packet(1), 1000), Some(pid(1)));
        assert_eq!(h.over(1, &packet(1), 1000), None, "held already");
        assert!(h.any_held());
        // The lane writes some of it: not yet at half the share.
        c.fetch_sub(400, Ordering::Relaxed);
        assert!(h.drained(1000).is_empty());
        c.fetch_sub(300, Ordering::Relaxed);
        assert_eq!(h.drained(1000), vec![pid(1)]);
        assert!(!h.any_held());
        // A packet without a sender pid cannot be held (a SEND).
        let c2 = h.counter(2);
        c2.fetch_add(5000, Ordering::Relaxed);
        assert_eq!(h.over(2, &[0, 0, 0, 3, 131, 68, 0], 1000), None);
        // Everything held is let go at the end.
        c.fetch_add(5000, Ordering::Relaxed);
        assert!(h.over(1, &packet(1), 1000).is_some());
        assert_eq!(h.release_all(), vec![pid(1)]);
        assert!(!h.any_held());
    }

    #[test]
    fn held_senders_go_again_oldest_first_while_the_relay_queue_has_room() {
        let mut h = Holds::default();
        let (a, b, c) = (h.counter(1), h.counter(2), h.counter(3));
        for (k, ctr) in [(1, &a), (2, &b), (3, &c)] {
            ctr.fetch_add(1500, Ordering::Relaxed);
            assert_eq!(h.over(k, &packet(k as u32), 1000), Some(pid(k as u32)));
        }
        // Each drained to half its share, but together over it: nobody goes yet.
        for ctr in [&a, &b, &c] {
            ctr.store(400, Ordering::Relaxed);
        }
        assert!(h.drained(1000).is_empty());
        // Room for one: the oldest goes (counting half a share for what it will send next).
        for ctr in [&a, &b, &c] {
            ctr.store(200, Ordering::Relaxed);
        }
        assert_eq!(h.drained(1000), vec![pid(1)]);
        // More room: the next two, oldest first.
        a.store(0, Ordering::Relaxed);
        b.store(0, Ordering::Relaxed);
        assert_eq!(h.drained(1000), vec![pid(2), pid(3)]);
        assert!(!h.any_held());
    }

    #[test]
    fn a_sender_passing_its_share_mid_message_is_held_at_a_continuation() {
        let (ctrl, pl) =
            encode_message(&Control::SendSender { from: pid(3), to: pid(9) }, Some(&Term::Binary(vec![7; 300_000])));
        let mut packets = Vec::new();
        let flags = DFlags(DFlags::FRAGMENTS | DFlags::DIST_HDR_ATOM_CACHE);
        edist_proto::dist::fragment::frame_message(&mut packets, flags, 5, &ctrl, &pl, 65_536);
        assert!(packets.len() > 2);
        let mut h = Holds::default();
        let c = h.counter(3);
        h.remember(3, &packets[0]);
        c.fetch_add(packets[0].len(), Ordering::Relaxed);
        assert_eq!(h.over(3, &packets[0], 100_000), None, "within its share");
        c.fetch_add(packets[1].len(), Ordering::Relaxed);
        assert_eq!(edist_proto::dist::lane::sender_pid(&packets[1][4..]), None, "a continuation names nobody");
        assert_eq!(h.over(3, &packets[1], 100_000), Some(pid(3)));
    }

    #[test]
    fn shares_follow_the_rate_within_bounds() {
        assert_eq!(Rate::share(0.0), SHARE_START);
        assert_eq!(Rate::share(1.0), SHARE_MIN);
        assert_eq!(Rate::share(12.5e6), 625_000);
        assert_eq!(Rate::share(1e12), SHARE_MAX);
    }
}

#[cfg(test)]
mod tick_tests {
    use super::*;

    #[test]
    fn silence_is_judged_by_the_stricter_ticktime_of_the_two_nodes() {
        let secs = Duration::from_secs;
        let t = Ticktime::new(secs(10));
        // Alone: a node ticking every 2.5 s is silent after 5.7 s.
        assert_eq!(t.silent_after(None), Duration::from_millis(5700));
        // A far node with a ticktime of 1 s counts it gone after about 1 s: its gateway hears
        // silence after 0.75 s, before the near node's next tick.
        assert_eq!(t.silent_after(Some(secs(1))), Duration::from_millis(750));
        assert!(t.silent_after(Some(secs(1))) < secs(10) / 4);
        // A far node more patient than ours changes nothing.
        assert_eq!(t.silent_after(Some(secs(60))), t.silent_after(None));
        // The far ticktime is at least a second, like ours.
        assert_eq!(t.silent_after(Some(Duration::ZERO)), Duration::from_millis(750));
        // Ticking every quarter of its own ticktime, a node is never silent by its own measure.
        let fast = Ticktime::new(secs(1));
        assert!(fast.silent_after(Some(secs(10))) > fast.tick_every());
    }

    #[test]
    fn the_far_ticktime_comes_with_alive_and_zero_means_unknown() {
        let sync = LaneSync::default();
        assert_eq!(sync.peer_ticktime(), None);
        sync.set_peer_alive(0, false);
        assert_eq!(sync.peer_ticktime(), None, "a gateway that does not tell its ticktime");
        sync.set_peer_alive(4000, false);
        assert_eq!(sync.peer_ticktime(), Some(Duration::from_secs(4)));
        // A gateway that predates relayed ticks: ours ticks here until told the far node is silent.
        assert!(sync.ticks_here() && !sync.peer_ticks());
        sync.set_peer_silent();
        assert!(!sync.ticks_here());
        sync.set_peer_alive(0, false);
        assert!(sync.ticks_here());
        assert_eq!(sync.peer_ticktime(), Some(Duration::from_secs(4)), "kept until told otherwise");
    }

    #[test]
    fn a_gateway_that_relays_ticks_is_the_only_source_of_them() {
        let sync = LaneSync::default();
        sync.set_peer_alive(60_000, true);
        assert!(sync.peer_ticks());
        assert!(!sync.ticks_here(), "our node gets the far node's ticks, and no others");
        // Said once, kept: a later `Alive` (after a silence) does not take it back.
        sync.set_peer_silent();
        sync.set_peer_alive(60_000, false);
        assert!(sync.peer_ticks() && !sync.ticks_here());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cookie_tests {
    //! Both legs of a relayed handshake against a real socket on one side and a scripted peer
    //! gateway on the other: cookies other than the gateway's, with gateways that relay them end
    //! to end and with older ones that do not.
    use super::*;
    use edist_proto::dist::handshake::{
        digest, Acceptor, AcceptorConfig, AcceptorEvent, Connected, Initiator, InitiatorConfig, InitiatorEvent, Status,
    };
    use tokio::io::{duplex, split, DuplexStream, ReadHalf, WriteHalf};
    use tokio::net::TcpListener;

    async fn loopback() -> (TcpListener, u16) {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    /// A node `a@h` dialling `b@h` with `cookie` over `sock`, as OTP's initiator does.
    async fn node_dials(mut sock: TcpStream, cookie: &[u8]) -> Result<Connected, HandshakeError> {
        let mut init = Initiator::new(InitiatorConfig {
            name: "a@h".into(),
            flags: DFlags::edist_default(true),
            creation: 5,
            cookie: cookie.to_vec(),
            challenge: 77,
            peer: "b@h".into(),
        });
        let mut buf = [0u8; 1024];
        loop {
            sock.write_all(&init.take_output()).await.unwrap();
            match init.poll()? {
                Some(InitiatorEvent::Challenge { .. }) => init.reply()?,
                Some(InitiatorEvent::Connected(c)) => return Ok(c),
                Some(_) => {}
                None => match sock.read(&mut buf).await {
                    Ok(n) if n > 0 => init.handle(&buf[..n])?,
                    _ => return Err(HandshakeError::OutOfOrder("closed")),
                },
            }
        }
    }

    /// A node `b@h` accepting with `cookie`, as OTP's acceptor does (it closes on a bad digest).
    async fn node_accepts(l: TcpListener, cookie: &[u8]) -> Result<Connected, HandshakeError> {
        let (mut sock, _) = l.accept().await.unwrap();
        let mut acc = Acceptor::new(AcceptorConfig {
            name: "b@h".into(),
            flags: DFlags::edist_default(true),
            creation: 9,
            cookie: cookie.to_vec(),
            challenge: 555,
        });
        let mut buf = [0u8; 1024];
        loop {
            let ev = acc.poll()?;
            match ev {
                Some(AcceptorEvent::Name { .. }) => acc.respond(Status::Ok)?,
                Some(AcceptorEvent::Authenticated) => {
                    let c = acc.complete()?;
                    sock.write_all(&acc.take_output()).await.unwrap();
                    return Ok(c);
                }
                Some(_) => {}
                None => {
                    sock.write_all(&acc.take_output()).await.unwrap();
                    match sock.read(&mut buf).await {
                        Ok(n) if n > 0 => acc.handle(&buf[..n])?,
                        _ => return Err(HandshakeError::OutOfOrder("closed")),
                    }
                }
            }
        }
    }

    type Half = (MsgReader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>);

    fn stream() -> (Half, Half) {
        let (a, b) = duplex(1 << 16);
        let ((ar, aw), (br, bw)) = (split(a), split(b));
        ((MsgReader::new(ar), aw), (MsgReader::new(br), bw))
    }

    /// The near gateway (cookie `x`) between node a (cookie `ca`) and a scripted far gateway
    /// whose node uses `cb`; `e2e`: the far gateway relays cookies end to end. Returns what the
    /// near gateway and the node got, and the messages the far gateway received.
    async fn near(ca: &'static [u8], cb: &'static [u8], e2e: bool) -> (Result<(), RelayError>, bool, Vec<Msg>) {
        let (l, port) = loopback().await;
        let node =
            tokio::spawn(async move { node_dials(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), ca).await });
        let (mut sock, _) = l.accept().await.unwrap();
        let mut leg = near_leg("b@h", 9, "x");
        read_local_name(&mut sock, &mut leg).await.unwrap();
        leg.open(1, None, false).unwrap();
        let ((mut msgs, mut tx), (mut far_msgs, mut far_tx)) = stream();
        let far = tokio::spawn(async move {
            let flags = DFlags::edist_default(true).0;
            far_tx.write_all(&Msg::Status("ok".into()).encode()).await.unwrap();
            let ch = match e2e {
                true => Msg::ChallengeOf { flags, creation: 9, challenge: 555 },
                false => Msg::Challenge { flags, creation: 9 },
            };
            far_tx.write_all(&ch.encode()).await.unwrap();
            let mut got = Vec::new();
            while let Ok(m) = far_msgs.next("far").await {
                let answer = match &m {
                    // The far node uses the gateway's cookie for a (its gateway's is "y").
                    Msg::Proceed if cb == b"y" => Msg::Connected,
                    Msg::Proceed => Msg::BadCookie,
                    Msg::Reply { challenge, digest: d } if *d == digest(555, cb) => Msg::Ack(digest(*challenge, cb)),
                    _ => Msg::BadCookie,
                };
                got.push(m);
                far_tx.write_all(&answer.encode()).await.unwrap();
            }
            got
        });
        let r = finish_local_leg(&mut sock, &mut leg, &mut msgs, &mut tx).await.map(|_| ());
        drop((sock, msgs, tx));
        let connected = node.await.unwrap().is_ok();
        (r, connected, far.await.unwrap())
    }

    #[tokio::test]
    async fn the_near_gateway_checks_its_cookie_and_passes_others_to_the_far_node() {
        // The gateway's cookie: checked here, the far gateway finishes with its own.
        let (r, ok, got) = near(b"x", b"y", true).await;
        assert!(r.is_ok() && ok, "{r:?}");
        assert_eq!(got, vec![Msg::Proceed]);
        // Another cookie, the far node's for a: its digest over the far node's challenge goes
        // there with a's challenge, the far node's ack comes back and a accepts it.
        let (r, ok, got) = near(b"c", b"c", true).await;
        assert!(r.is_ok() && ok, "{r:?}");
        assert_eq!(got, vec![Msg::Reply { challenge: 77, digest: digest(555, b"c") }]);
        // A cookie the far node does not use for a: refused there, reported as a bad cookie.
        let (r, ok, _) = near(b"c", b"d", true).await;
        assert!(matches!(r, Err(RelayError::Handshake(HandshakeError::BadDigest))), "{r:?}");
        assert!(!ok);
        // The gateway's cookie, but the far node uses another for a: refused there too.
        let (r, ok, _) = near(b"x", b"d", true).await;
        assert!(matches!(r, Err(RelayError::Handshake(HandshakeError::BadDigest))), "{r:?}");
        assert!(!ok);
        // An older far gateway (`Challenge`): only the gateway's cookie, and nothing of another
        // cookie leaves the host.
        let (r, ok, got) = near(b"x", b"y", false).await;
        assert!(r.is_ok() && ok, "{r:?}");
        assert_eq!(got, vec![Msg::Proceed]);
        let (r, ok, got) = near(b"c", b"c", false).await;
        assert!(matches!(r, Err(RelayError::Handshake(HandshakeError::BadDigest))), "{r:?}");
        assert!(!ok && got.is_empty(), "{got:?}");
    }

    /// The far gateway (cookie `y`) dialling node b (cookie `cb` for a) for a scripted near
    /// gateway whose node a answers with `ca`; `e2e`: the `Open` said the near gateway relays
    /// cookies end to end. Returns the far leg's result, b's, and what the near gateway got.
    async fn far(ca: &'static [u8], cb: &'static [u8], e2e: bool) -> (bool, bool, Vec<Msg>) {
        let (l, port) = loopback().await;
        let b = tokio::spawn(node_accepts(l, cb));
        let ((mut msgs, mut tx), (mut near_msgs, mut near_tx)) = stream();
        let near = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(m) = near_msgs.next("near").await {
                let answer = match &m {
                    Msg::ChallengeOf { challenge, .. } if ca != b"x" => {
                        Some(Msg::Reply { challenge: 77, digest: digest(*challenge, ca) })
                    }
                    Msg::Challenge { .. } | Msg::ChallengeOf { .. } => Some(Msg::Proceed),
                    _ => None,
                };
                got.push(m);
                if let Some(a) = answer {
                    near_tx.write_all(&a.encode()).await.unwrap();
                }
            }
            got
        });
        let flags = DFlags(DFlags::edist_default(true).0 | if e2e { E2E_COOKIES } else { 0 });
        let r = dial_local_target(port, "a@h", "b@h", flags, 5, "y", &mut msgs, &mut tx, false).await;
        let ok = r.is_ok();
        drop((r, msgs, tx));
        (ok, b.await.unwrap().is_ok(), near.await.unwrap())
    }

    #[tokio::test]
    async fn the_far_gateway_lets_its_node_judge_another_cookie() {
        // The near gateway vouched (Proceed): the far gateway's own cookie towards b.
        let (ok, b_ok, got) = far(b"x", b"y", true).await;
        assert!(ok && b_ok, "{got:?}");
        assert!(matches!(got.get(1), Some(Msg::ChallengeOf { challenge: 555, .. })), "{got:?}");
        assert_eq!(got.last(), Some(&Msg::Connected));
        // A relayed digest b accepts: b's ack goes back, a digest over a's challenge.
        let (ok, b_ok, got) = far(b"c", b"c", true).await;
        assert!(ok && b_ok, "{got:?}");
        assert_eq!(got.last(), Some(&Msg::Ack(digest(77, b"c"))));
        // One b refuses: b closes, the near gateway hears BadCookie.
        let (ok, b_ok, got) = far(b"c", b"d", true).await;
        assert!(!ok && !b_ok, "{got:?}");
        assert_eq!(got.last(), Some(&Msg::BadCookie));
        // b does not take the gateway's cookie for a.
        let (ok, b_ok, got) = far(b"x", b"d", true).await;
        assert!(!ok && !b_ok, "{got:?}");
        assert_eq!(got.last(), Some(&Msg::BadCookie));
        // An older near gateway: `Challenge` without the challenge, no BadCookie it would not know.
        let (ok, b_ok, got) = far(b"x", b"y", false).await;
        assert!(ok && b_ok, "{got:?}");
        assert!(matches!(got.get(1), Some(Msg::Challenge { .. })), "{got:?}");
        let (ok, _, got) = far(b"x", b"d", false).await;
        assert!(!ok && !got.contains(&Msg::BadCookie), "{got:?}");
    }
}
