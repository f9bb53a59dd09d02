//! Relayed distribution connections: a local BEAM dials a remote node, its gateway completes
//! the handshake as that node, the remote gateway completes it with the real node as the dialler,
//! and then both legs carry the same bytes (DESIGN facts 3, 5, 6).
//!
//! ```text
//!  a ──send_name──▶ GA ──Open{a,b,flags}──▶ GB ──send_name(a)──▶ b
//!  a ◀─status,chal─ GA ◀─Status,Challenge── GB ◀─status,chal──── b
//!  a ──reply──────▶ GA (digest checked) ─Proceed─▶ GB ──reply───▶ b
//!  a ◀─ack──────── GA ◀──────Connected───── GB ◀─ack──────────── b
//!  a ◀════════ raw distribution bytes on the QUIC stream ═══════▶ b
//! ```
//! Both legs negotiate `a.flags & b.flags & RELAY_MASK`: the far side gets the initiator's
//! flags, the initiator gets the far side's challenge flags. The cookie stays on each host.

use crate::policy::{Ingress, Reason, Role, SharedPeer};
use crate::wire::Msg;
use bytes::BytesMut;
use edist_proto::dist::handshake::{
    Acceptor, AcceptorConfig, AcceptorEvent, HandshakeError, Initiator, InitiatorConfig, InitiatorEvent, Status,
};
use edist_proto::dist::lane::{Assigner, Classifier};
use edist_proto::dist::DFlags;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

/// Flags a relay never lets through: the atom cache needs per-connection state on both ends,
/// and a dynamic name is given by the dialler's own gateway (the far leg dials under it).
pub const RELAY_MASK: u64 =
    !(DFlags::DIST_HDR_ATOM_CACHE | DFlags::ATOM_CACHE | DFlags::HIDDEN_ATOM_CACHE | DFlags::NAME_ME);

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

fn parse_status(s: &str) -> Status {
    match s {
        "ok" => Status::Ok,
        "ok_simultaneous" => Status::OkSimultaneous,
        "nok" => Status::Nok,
        "alive" => Status::Alive,
        _ => Status::NotAllowed,
    }
}

fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::OkSimultaneous => "ok_simultaneous",
        Status::Nok => "nok",
        Status::Alive => "alive",
        Status::NotAllowed | Status::Named { .. } => "not_allowed",
    }
}

/// What the initiator's gateway learned from the local node's `send_name`.
#[derive(Debug, Clone)]
pub struct LocalDial {
    pub from: String,
    pub flags: DFlags,
    pub creation: u32,
}

/// The initiator's side, step 1: reads the local node's `send_name` on a connection to the
/// listener impersonating `target`.
pub async fn read_local_name(sock: &mut TcpStream, acc: &mut Acceptor) -> Result<LocalDial, RelayError> {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(ev) = acc.poll()? {
            return match ev {
                AcceptorEvent::Name { name, flags, creation } => Ok(LocalDial { from: name, flags, creation }),
                other => Err(RelayError::Handshake(HandshakeError::OutOfOrder(match other {
                    AcceptorEvent::AliveAnswer(_) => "alive answer before status",
                    _ => "event before name",
                }))),
            };
        }
        let out = acc.take_output();
        sock.write_all(&out).await?;
        let n = read_sock(sock, &mut buf, "send_name").await?;
        acc.handle(buf.get(..n).unwrap_or_default())?;
    }
}

/// A new acceptor impersonating `target` towards a local node.
pub fn impersonating_acceptor(target: &str, creation: u32, cookie: &str) -> Acceptor {
    Acceptor::new(AcceptorConfig {
        name: target.to_string(),
        flags: DFlags(0),
        creation,
        cookie: cookie.as_bytes().to_vec(),
        challenge: rand::random(),
    })
}

/// The initiator's side, steps 2–4, once the relay stream is open and `Open` was sent: mirror
/// the far node's status and challenge to the local node, check the local node's digest, let
/// the far side finish, then ack. Returns bytes the local node sent after its reply.
///
/// `named`: the name and creation given to a local node that asked for a dynamic name; it
/// gets them as its status (`named:`) in place of the far node's `ok`.
pub async fn finish_local_leg<R, W>(
    sock: &mut TcpStream,
    acc: &mut Acceptor,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
    named: Option<(String, u32)>,
) -> Result<Vec<u8>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let status = match msgs.next("status").await? {
        Msg::Status(s) => parse_status(&s),
        Msg::Refused(r) => {
            // The far node is unknown or unreachable: the local node sees `not_allowed`.
            acc.respond(Status::NotAllowed)?;
            sock.write_all(&acc.take_output()).await?;
            return Err(RelayError::Refused(r));
        }
        m => return Err(RelayError::Unexpected(m)),
    };
    if matches!(status, Status::Nok | Status::NotAllowed) {
        acc.respond(status.clone())?;
        sock.write_all(&acc.take_output()).await?;
        return Err(RelayError::Refused(format!("far node answered {}", status_text(&status))));
    }
    let mut buf = [0u8; 1024];
    let alive = status == Status::Alive;
    if alive {
        // The far node still holds a connection from ours: forward `alive` faithfully and
        // carry the local node's answer back; the challenge follows once the far side sends it.
        acc.set_defer_challenge(true);
        acc.respond(Status::Alive)?;
        sock.write_all(&acc.take_output()).await?;
        let answer = loop {
            match acc.poll()? {
                Some(AcceptorEvent::AliveAnswer(a)) => break a,
                Some(_) => return Err(RelayError::Handshake(HandshakeError::OutOfOrder("expected the alive answer"))),
                None => {
                    let n = read_sock(sock, &mut buf, "alive answer").await?;
                    acc.handle(buf.get(..n).unwrap_or_default())?;
                }
            }
        };
        tx.write_all(&Msg::AliveAnswer(answer).encode()).await?;
        if !answer {
            return Err(RelayError::Refused("the local node kept its old connection".into()));
        }
    }
    match msgs.next("challenge").await? {
        Msg::Challenge { flags, creation } => {
            let flags = match named {
                // As OTP's acceptor answers a node that asks for a name: NAME_ME in place of
                // PUBLISHED, or the node refuses the connection (dist_util:do_setnode).
                Some(_) => (flags & RELAY_MASK & !DFlags::PUBLISHED) | DFlags::NAME_ME,
                None => flags & RELAY_MASK,
            };
            acc.set_flags(DFlags(flags));
            acc.set_creation(creation);
        }
        m => return Err(RelayError::Unexpected(m)),
    }
    match named {
        _ if alive => acc.send_challenge_now()?,
        Some((name, creation)) => acc.respond(Status::Named { name, creation })?,
        None => acc.respond(status)?,
    }
    sock.write_all(&acc.take_output()).await?;
    loop {
        match acc.poll()? {
            Some(AcceptorEvent::Authenticated) => break,
            Some(_) => return Err(RelayError::Handshake(HandshakeError::OutOfOrder("unexpected event"))),
            None => {
                let n = read_sock(sock, &mut buf, "challenge reply").await?;
                acc.handle(buf.get(..n).unwrap_or_default())?;
            }
        }
    }
    // The local node knows the cookie: only now does the far node hear from it (fact 5).
    tx.write_all(&Msg::Proceed.encode()).await?;
    match msgs.next("connected").await? {
        Msg::Connected => {}
        Msg::Refused(r) => return Err(RelayError::Refused(r)),
        m => return Err(RelayError::Unexpected(m)),
    }
    acc.complete()?;
    sock.write_all(&acc.take_output()).await?;
    Ok(acc.take_remaining())
}

/// The far side: dial the real local node `to` as `from` and mirror the handshake over the
/// relay stream. Returns the connected socket and bytes the node sent after its ack.
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
) -> Result<(TcpStream, Vec<u8>), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sock = timeout(STEP_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| RelayError::Timeout("connect"))??;
    let _ = sock.set_nodelay(true);
    let mut init = Initiator::new(InitiatorConfig {
        name: from.to_string(),
        flags: DFlags(flags.0 & RELAY_MASK),
        creation,
        cookie: cookie.as_bytes().to_vec(),
        challenge: rand::random(),
        peer: to.to_string(),
    });
    let mut buf = [0u8; 1024];
    loop {
        let out = init.take_output();
        if !out.is_empty() {
            sock.write_all(&out).await?;
        }
        match init.poll()? {
            Some(InitiatorEvent::Status(Status::Alive)) => {
                // Forwarded faithfully: the dialling node decides (fact 6).
                tx.write_all(&Msg::Status("alive".into()).encode()).await?;
                match msgs.next("alive answer").await? {
                    Msg::AliveAnswer(a) => {
                        init.answer_alive(a)?;
                        if !a {
                            sock.write_all(&init.take_output()).await?;
                            return Err(RelayError::Refused(format!("{from} kept its old connection to {to}")));
                        }
                    }
                    m => return Err(RelayError::Unexpected(m)),
                }
            }
            Some(InitiatorEvent::Status(st)) => {
                tx.write_all(&Msg::Status(status_text(&st).into()).encode()).await?;
                if matches!(st, Status::Nok | Status::NotAllowed | Status::Named { .. }) {
                    return Err(RelayError::Refused(format!("{to} answered {}", status_text(&st))));
                }
            }
            Some(InitiatorEvent::Challenge { flags, creation, .. }) => {
                tx.write_all(&Msg::Challenge { flags: flags.0, creation }.encode()).await?;
                match msgs.next("proceed").await? {
                    Msg::Proceed => init.reply()?,
                    m => return Err(RelayError::Unexpected(m)),
                }
            }
            Some(InitiatorEvent::Connected(_)) => {
                tx.write_all(&Msg::Connected.encode()).await?;
                return Ok((sock, init.take_remaining()));
            }
            None => {
                let n = read_sock(&mut sock, &mut buf, "handshake").await?;
                init.handle(buf.get(..n).unwrap_or_default())?;
            }
        }
    }
}

/// How a relay spreads traffic over lanes, and how much it may hold.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// Lanes per relayed connection and direction besides the default lane (the relay
    /// stream): each new sender goes to the lane with the fewest bytes queued and stays there,
    /// so one sender's large message only delays the senders that share its lane.
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
    /// The local node's `net_ticktime`: ticks are answered here instead of crossing the fabric
    /// (the gateway ticks every second, or quarter of it if less), and a node silent for this
    /// long is hung.
    pub net_ticktime: Duration,
}

impl Default for LaneConfig {
    fn default() -> Self {
        LaneConfig {
            lanes: 8,
            relay_buffer: 32 << 20,
            gateway_buffer: Budget::new(256 << 20),
            compress_above: None,
            socket_buffer: None,
            net_ticktime: Duration::from_secs(60),
        }
    }
}

/// Senders a relay remembers the lane of (beyond, senders are hashed onto lanes).
const MAX_SENDERS: usize = 65_536;

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

/// The queue of one outgoing lane: packets with what they hold of the budgets.
type LaneTx = mpsc::UnboundedSender<(std::time::Instant, Vec<u8>, Held)>;

/// Marks an lz4-compressed packet on a lane (packets are far below 2 GiB, so the bit is free).
/// The receiver always understands it; only the sender's config decides to compress.
const COMPRESSED: u32 = 1 << 31;

/// The lane frame of one packet (length prefix included): compressed when that pays.
fn maybe_compress(packet: Vec<u8>, above: Option<usize>) -> Vec<u8> {
    let Some(payload) = packet.get(4..) else { return packet };
    match above {
        Some(t) if payload.len() > t => {
            let c = lz4_flex::compress_prepend_size(payload);
            if c.len() + 16 >= payload.len() {
                return packet;
            }
            let mut out = Vec::with_capacity(4 + c.len());
            out.extend_from_slice(&(c.len() as u32 | COMPRESSED).to_be_bytes());
            out.extend_from_slice(&c);
            out
        }
        _ => packet,
    }
}

/// Inflates a compressed lane frame's body into a plain packet, refusing sizes over the limit.
fn decompress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let size = body
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| bad("short compressed packet"))?;
    if size as usize > MAX_PACKET {
        return Err(bad("compressed packet inflates over the relay limit"));
    }
    let plain =
        lz4_flex::decompress_size_prepended(body).map_err(|e| bad(&format!("corrupt compressed packet: {e}")))?;
    let mut out = Vec::with_capacity(4 + plain.len());
    out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
    out.extend_from_slice(&plain);
    Ok(out)
}

/// Largest packet relayed (OTP fragments at 64 KiB; a peer that does not fragment may send
/// more).
const MAX_PACKET: usize = 256 << 20;

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
}

/// A packet and the time it arrived at the gateway (for the time-in-gateway histogram).
pub type Stamped = (std::time::Instant, Vec<u8>);

/// The receiving ends of a relay's [`Merger`]: packets for the local node, replies for the peer.
pub type MergerRx = (mpsc::Receiver<Stamped>, mpsc::UnboundedReceiver<Vec<u8>>);

/// Called with each refusal and its description.
pub type OnRefuse = Box<dyn Fn(Reason, &str) + Send + Sync>;

/// What an incoming lane needs to inspect packets under its peer's role.
pub struct InboundPolicy {
    /// The peer gateway's role.
    pub role: Arc<Role>,
    /// The peer's shared budgets (atoms, rates).
    pub peer: SharedPeer,
    /// Called for each refusal (logging once per burst and counting are the gateway's).
    pub on_refuse: OnRefuse,
}

/// Opens a lane stream towards the peer gateway (the `Lane` frame is sent by the caller).
pub type LaneOpener = Box<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<crate::fabric::link::SendStream>> + Send>,
        > + Send
        + Sync,
>;

/// Splits a byte stream into whole packets with their length prefix; `None` at a clean end.
struct Packets<R> {
    r: R,
    buf: BytesMut,
    /// A lane from the fabric: compressed frames are allowed (and inflated).
    fabric: bool,
    /// The stream is dead when a read waits longer than this (a node's ticks keep it alive).
    silence: Option<Duration>,
}

/// Bytes a packet reader asks for at least, per read.
const READ_CHUNK: usize = 16 * 1024;

/// An empty packet: a tick.
const TICK: [u8; 4] = [0; 4];

impl<R: AsyncRead + Unpin> Packets<R> {
    fn new(r: R, pending: &[u8], fabric: bool) -> Self {
        // Small to start: most connections are idle most of the time. Large packets grow it.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        buf.extend_from_slice(pending);
        Packets { r, buf, fabric, silence: None }
    }

    async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(hdr) = self.buf.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) {
                let raw = u32::from_be_bytes(hdr);
                let compressed = self.fabric && raw & COMPRESSED != 0;
                let len = if compressed { raw & !COMPRESSED } else { raw } as usize;
                if len > MAX_PACKET {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "packet over the relay limit"));
                }
                if self.buf.len() >= 4 + len {
                    let frame = self.buf.split_to(4 + len);
                    return match compressed {
                        true => decompress(frame.get(4..).unwrap_or_default()).map(Some),
                        false => Ok(Some(frame.to_vec())),
                    };
                }
                // Grow with the bytes that actually arrive, not with the claimed length.
                self.buf.reserve((4 + len - self.buf.len()).min(1 << 20));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            let read = self.r.read_buf(&mut self.buf);
            let n = match self.silence {
                Some(d) => timeout(d, read).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "the local node sent nothing, not even a tick")
                })??,
                None => read.await?,
            };
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// Carries a connected relay until either side ends, then ends both (fact 9).
///
/// Towards the fabric, packets are spread over lanes by their sender ([`Classifier`]): lane 0
/// is the relay stream itself, lanes 1..=`lanes` are unidirectional streams opened on first
/// use. From the fabric, packets of all lanes (lane 0 here, the others through `merger_rx`,
/// fed by [`feed_lane`]) are written to the local node whole, interleaved at packet boundaries.
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
    // Lane 0 in: its packets join the merger like any other lane's.
    // Lane 0 ending (the far side closed the relay stream, or the link died) ends the relay.
    let mut lane0_in = tokio::spawn(feed_lane(Packets::new(rx, pending_to_sock, true), merger));
    let ticktime = lanes_cfg.net_ticktime.max(Duration::from_secs(1));
    // Whatever reaches the node keeps its connection alive; with nothing to write, a tick does
    // (as the far node would, had its ticks crossed). Every second at least, so that a node
    // whose own ticktime is shorter than the configured one stays connected too.
    let tick_every = (ticktime / 4).min(Duration::from_secs(1));
    let down = async {
        loop {
            let (t, p) = match timeout(tick_every, merger_rx.recv()).await {
                Ok(Some(tp)) => tp,
                Ok(None) => break,
                Err(_) => {
                    sw.write_all(&TICK).await?;
                    continue;
                }
            };
            if p == TICK {
                continue; // from a peer gateway that still relays ticks
            }
            sw.write_all(&p).await?;
            m_in.received(&p, t, merger_rx.len());
        }
        Ok::<(), std::io::Error>(())
    };
    let up = async {
        let mut from_node = Packets::new(sr, pending_to_stream, false);
        // The node ticks every quarter of its ticktime when idle: silent for all of it, it hangs.
        from_node.silence = Some(ticktime);
        let mut classifier = Classifier::new();
        let relay_budget = Budget::new(lanes_cfg.relay_buffer);
        let mut lanes: Vec<Option<LaneTx>> = (0..=lanes_cfg.lanes).map(|_| None).collect();
        // Bytes queued per lane (for the assignment of new senders), kept by the lane writers.
        let queued: Vec<Arc<AtomicUsize>> = (0..=lanes_cfg.lanes).map(|_| Arc::default()).collect();
        let mut assigner = Assigner::new(lanes_cfg.lanes, MAX_SENDERS);
        let mut writers = tokio::task::JoinSet::new();
        let (lane0_tx, lane0_rx) = mpsc::unbounded_channel();
        let q0 = queued.first().cloned().unwrap_or_default();
        writers.spawn(write_lane(lane0_rx, Box::pin(async move { Ok::<W, std::io::Error>(tx) }), m_out.lane(0), q0));
        if let Some(slot) = lanes.get_mut(0) {
            *slot = Some(lane0_tx);
        }
        loop {
            let (p, lane) = tokio::select! {
                p = from_node.next() => match p? {
                    // Ticks stay here: the far node gets its own from its gateway.
                    Some(p) if p == TICK => continue,
                    Some(p) => {
                        let load = |l: u64| queued.get(l as usize).map_or(0, |q| q.load(Ordering::Relaxed));
                        let lane = classifier.classify(p.get(4..).unwrap_or_default()).map(|k| assigner.lane(k, load));
                        (p, lane.unwrap_or(0) as usize)
                    }
                    None => break,
                },
                // The policy's answers to refused requests of the peer's nodes.
                Some(r) = replies_rx.recv() => (r, 0),
            };
            let arrived = std::time::Instant::now();
            let Some(slot) = lanes.get_mut(lane) else { continue };
            if slot.is_none() {
                let (ltx, lrx) = mpsc::unbounded_channel();
                let q = queued.get(lane).cloned().unwrap_or_default();
                writers.spawn(write_lane(lrx, open_lane(), m_out.lane(lane), q));
                *slot = Some(ltx);
            }
            let kind = crate::metrics::Kind::of(&p);
            let p = maybe_compress(p, lanes_cfg.compress_above);
            m_out.sent(lane, kind, p.len());
            // Lanes are unbounded queues; the budgets bound them all together.
            let (Some(r), Some(g)) = (relay_budget.take(p.len()).await, lanes_cfg.gateway_buffer.take(p.len()).await)
            else {
                break;
            };
            let held = (r, g);
            if let Some(q) = queued.get(lane) {
                q.fetch_add(p.len(), Ordering::Relaxed);
            }
            let sent = match slot {
                Some(ltx) => ltx.send((arrived, p, held)).is_ok(),
                None => false,
            };
            if !sent {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let r = tokio::select! {
        r = up => r,
        r = down => r,
        r = &mut lane0_in => r.unwrap_or(Ok(())),
    };
    lane0_in.abort();
    Ok(r?)
}

/// Writes the packets queued for one lane to its stream, opened by `open`.
async fn write_lane<W, F>(
    mut packets: mpsc::UnboundedReceiver<(std::time::Instant, Vec<u8>, Held)>,
    open: F,
    mut metrics: crate::metrics::LaneMetrics,
    queued: Arc<AtomicUsize>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    F: std::future::Future<Output = std::io::Result<W>>,
{
    let mut w = open.await?;
    while let Some((t, p, held)) = packets.recv().await {
        w.write_all(&p).await?;
        queued.fetch_sub(p.len(), Ordering::Relaxed);
        drop(held);
        metrics.written(t, packets.len());
    }
    w.shutdown().await
}

/// Feeds the packets of one incoming lane to the relay's merger, through the policy.
async fn feed_lane<R: AsyncRead + Unpin>(mut lane: Packets<R>, merger: Merger) -> std::io::Result<()> {
    let Some(policy) = merger.policy.clone() else {
        while let Some(p) = lane.next().await? {
            if merger.to_node.send((std::time::Instant::now(), p)).await.is_err() {
                break;
            }
        }
        return Ok(());
    };
    let mut ingress = Ingress::new(policy.role.clone(), policy.peer.clone());
    while let Some(p) = lane.next().await? {
        let wait = ingress.delay(&p, std::time::Instant::now());
        if !wait.is_zero() {
            // Over the role's rate: this lane (and through QUIC flow control, its sender) waits.
            tokio::time::sleep(wait).await;
        }
        let verdict =
            ingress.packet(p).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        if let Some((reason, why)) = &verdict.refused {
            (policy.on_refuse)(*reason, why);
        }
        for r in verdict.reply {
            let _ = merger.replies.send(r);
        }
        for f in verdict.forward {
            if merger.to_node.send((std::time::Instant::now(), f)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Feeds an incoming lane stream (after its `Lane` frame; `pending` are bytes already read
/// past it) to the relay's merger.
pub async fn feed_lane_stream(
    rx: crate::fabric::link::RecvStream,
    pending: &[u8],
    merger: Merger,
) -> std::io::Result<()> {
    feed_lane(Packets::new(rx, pending, true), merger).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips_and_refuses_bombs() {
        let mut packet = vec![0, 0, 0, 0];
        packet.extend(std::iter::repeat_n(7u8, 100_000));
        let len = (packet.len() - 4) as u32;
        packet[..4].copy_from_slice(&len.to_be_bytes());
        let framed = maybe_compress(packet.clone(), Some(1024));
        assert!(framed.len() < 2000);
        let hdr = u32::from_be_bytes(framed[..4].try_into().unwrap());
        assert!(hdr & COMPRESSED != 0);
        assert_eq!(decompress(&framed[4..]).unwrap(), packet);
        // Incompressible or small packets go as they are.
        assert_eq!(maybe_compress(packet.clone(), None), packet);
        assert_eq!(maybe_compress(vec![0, 0, 0, 1, 9], Some(0)), vec![0, 0, 0, 1, 9]);
        // A size prefix claiming 4 GiB is refused before inflating.
        assert!(decompress(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
        assert!(decompress(&[1, 0]).is_err());
    }
}
