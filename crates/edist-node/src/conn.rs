//! Connections: the async shell around the sans-IO handshake, framing and reassembly.

use crate::mailbox::Event;
use crate::node::{split_node, Inner};
use crate::{epmd, NodeError};
use bytes::BytesMut;
use edist_proto::dist::control::{decode_message, encode_message, Control, Message};
use edist_proto::dist::fragment::{frame_message, Reassembler, FRAGMENT_SIZE};
use edist_proto::dist::frame::{Frame, FrameDecoder, TICK};
use edist_proto::dist::handshake::{
    Acceptor, AcceptorConfig, AcceptorEvent, Connected, HandshakeError, Initiator, InitiatorConfig, InitiatorEvent,
    Status,
};
use edist_proto::dist::header::{parse_packet, AtomCache, Packet};
use edist_proto::dist::lane::{LaneId, Lanes};
use edist_proto::dist::DFlags;
use edist_proto::etf::{Limits, Pid};
use edist_proto::{Atom, Term};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// A handle to a live connection; clones share it.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) peer: Atom,
    pub(crate) flags: DFlags,
    /// Whether we dialled (rather than accepted) this connection.
    pub(crate) outgoing: bool,
    tx: mpsc::Sender<(LaneId, Vec<Vec<u8>>)>,
    seq: Arc<AtomicU64>,
    closed: Arc<Closed>,
}

#[derive(Default)]
struct Closed {
    flag: AtomicBool,
    notify: Notify,
}

impl Closed {
    fn close(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    async fn wait(&self) {
        let n = self.notify.notified();
        if self.flag.load(Ordering::SeqCst) {
            return;
        }
        n.await
    }
}

impl Conn {
    /// Encodes and queues one message (fragmented when large).
    pub(crate) async fn send(&self, ctrl: &Control, payload: Option<&Term>) -> Result<(), NodeError> {
        let (c, p) = encode_message(ctrl, payload);
        let mut packets = Vec::with_capacity(1 + p.len() / FRAGMENT_SIZE);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        frame_message(&mut packets, self.flags, seq, &c, &p, FRAGMENT_SIZE);
        let lane = ctrl.sender().map(|p| LaneId::from(p.id)).unwrap_or(0);
        self.tx.send((lane, packets)).await.map_err(|_| NodeError::ConnectionClosed(self.peer.to_string()))
    }

    /// Sends a signal built for EXIT_PAYLOAD peers, downgrading it for old peers.
    pub(crate) async fn send_signal(&self, ctrl: Control, payload: Option<Term>) -> Result<(), NodeError> {
        if self.flags.has(DFlags::EXIT_PAYLOAD) {
            return self.send(&ctrl, payload.as_ref()).await;
        }
        let reason = payload.unwrap_or(Term::atom("normal"));
        let old = match ctrl {
            Control::PayloadExit { from, to } => Control::Exit { from, to, reason },
            Control::PayloadExit2 { from, to } => Control::Exit2 { from, to, reason },
            Control::PayloadMonitorPExit { from, to, reference } => {
                Control::MonitorPExit { from, to, reference, reason }
            }
            other => other,
        };
        self.send(&old, None).await
    }

    pub(crate) async fn send_exit(&self, from: &Pid, to: &Pid, reason: Term, exit2: bool) -> Result<(), NodeError> {
        let ctrl = if exit2 {
            Control::PayloadExit2 { from: from.clone(), to: to.clone() }
        } else {
            Control::PayloadExit { from: from.clone(), to: to.clone() }
        };
        self.send_signal(ctrl, Some(reason)).await
    }

    /// Closes the connection (both directions stop; peers see nodedown).
    pub(crate) fn close(&self) {
        self.closed.close();
    }
}

fn io_err(node: &Atom) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::Io { node: node.to_string(), source: e }
}

/// Dials `node`: epmd lookup on its host, then the handshake as initiator. `abort` fires when
/// the peer dialled us at the same moment and we let its attempt win (`ok_simultaneous`).
pub(crate) async fn dial(inner: Arc<Inner>, node: Atom, abort: Arc<Notify>) -> Result<Conn, NodeError> {
    let to = inner.cfg.setup_timeout;
    let attempt = tokio::select! {
        r = dial_attempt(&inner, &node) => r,
        _ = abort.notified() => Err(NodeError::Handshake { node: node.to_string(), source: HandshakeError::Rejected(Status::OkSimultaneous) }),
    };
    match attempt {
        Ok(c) => Ok(c),
        // Simultaneous connect and the other attempt wins: wait for it to arrive.
        Err(NodeError::Handshake {
            source: HandshakeError::Rejected(Status::Nok | Status::OkSimultaneous | Status::Alive),
            ..
        }) => {
            let deadline = Instant::now() + to;
            while Instant::now() < deadline {
                if let Some(c) = inner.conn_if_up(&node) {
                    return Ok(c);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(NodeError::HandshakeTimeout(node.to_string()))
        }
        Err(e) => Err(e),
    }
}

async fn dial_attempt(inner: &Arc<Inner>, node: &Atom) -> Result<Conn, NodeError> {
    let node = node.clone();
    let (alive, host) = split_node(node.as_str())?;
    let to = inner.cfg.setup_timeout;
    let addr = match inner.cfg.gateway {
        // Through a gateway: it knows every node by its full name and answers a loopback port.
        Some(gw) => {
            let info = epmd::EpmdClient::new(gw)
                .gateway_port_please(node.as_str())
                .await
                .map_err(|e| NodeError::Epmd { host: gw.to_string(), source: e })?
                .ok_or_else(|| NodeError::NoSuchNode(node.to_string()))?;
            SocketAddr::new(gw.ip(), info.port)
        }
        None => {
            let host_addr = timeout(to, tokio::net::lookup_host((host, inner.cfg.epmd_port)))
                .await
                .map_err(|_| NodeError::Timeout)?
                .map_err(io_err(&node))?
                .find(|a| a.is_ipv4())
                .ok_or_else(|| NodeError::BadNodeName(node.to_string()))?;
            let info = epmd::port_please(host_addr, alive)
                .await
                .map_err(|e| NodeError::Epmd { host: host.to_string(), source: e })?
                .ok_or_else(|| NodeError::NoSuchNode(node.to_string()))?;
            SocketAddr::new(host_addr.ip(), info.port)
        }
    };
    let mut stream =
        timeout(to, TcpStream::connect(addr)).await.map_err(|_| NodeError::Timeout)?.map_err(io_err(&node))?;
    let _ = stream.set_nodelay(true);
    let hs = Initiator::new(InitiatorConfig {
        name: inner.name.to_string(),
        flags: inner.flags,
        creation: inner.creation,
        cookie: inner.cfg.cookie.as_bytes().to_vec(),
        challenge: rand::random(),
        peer: node.to_string(),
    });
    let (c, rest) = initiate(inner, &mut stream, hs, to, &node).await?;
    Ok(start_connection(inner.clone(), stream, c, rest, true))
}

async fn read_some(stream: &mut TcpStream, buf: &mut [u8], to: Duration, node: &Atom) -> Result<usize, NodeError> {
    match timeout(to, stream.read(buf)).await {
        Err(_) => Err(NodeError::HandshakeTimeout(node.to_string())),
        Ok(Err(e)) => Err(io_err(node)(e)),
        Ok(Ok(0)) => Err(NodeError::ConnectionClosed(node.to_string())),
        Ok(Ok(n)) => Ok(n),
    }
}

async fn initiate(
    inner: &Inner,
    stream: &mut TcpStream,
    mut hs: Initiator,
    to: Duration,
    node: &Atom,
) -> Result<(Connected, Vec<u8>), NodeError> {
    let herr = |e| NodeError::Handshake { node: node.to_string(), source: e };
    let mut buf = vec![0u8; 4096];
    let mut replied = false;
    loop {
        let out = hs.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io_err(node))?;
        }
        match hs.poll().map_err(herr)? {
            Some(InitiatorEvent::Status(Status::Alive)) => {
                let busy = {
                    let st = inner.lock();
                    st.conns.contains_key(node) || st.accepting.contains(node)
                };
                if busy {
                    // A connection from the peer is up or coming up: keep that one.
                    hs.answer_alive(false).map_err(herr)?;
                    let _ = stream.write_all(&hs.take_output()).await;
                    return Err(herr(HandshakeError::Rejected(Status::Alive)));
                }
                // The peer still holds a connection we no longer have: it is dead, replace it.
                hs.answer_alive(true).map_err(herr)?;
            }
            Some(InitiatorEvent::Status(st @ (Status::Nok | Status::NotAllowed))) => {
                return Err(herr(HandshakeError::Rejected(st)));
            }
            Some(InitiatorEvent::Status(_)) => {}
            Some(InitiatorEvent::Challenge { .. }) => {
                hs.reply().map_err(herr)?;
                replied = true;
            }
            Some(InitiatorEvent::Connected(c)) => return Ok((c, hs.take_remaining())),
            None => {
                let n = match read_some(stream, &mut buf, to, node).await {
                    // OTP closes without a word when our digest is wrong.
                    Err(NodeError::ConnectionClosed(_)) if replied => {
                        return Err(NodeError::CookieRejected(node.to_string()))
                    }
                    r => r?,
                };
                hs.handle(buf.get(..n).unwrap_or_default()).map_err(herr)?;
            }
        }
    }
}

/// Accepts connections until the node is gone.
pub(crate) async fn accept_loop(inner: Weak<Inner>, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(inner) = inner.upgrade() else { return };
        tokio::spawn(async move {
            if let Err(e) = accept(inner, stream).await {
                warn!(%peer, "incoming connection failed: {e}");
            }
        });
    }
}

async fn accept(inner: Arc<Inner>, stream: TcpStream) -> Result<(), NodeError> {
    let mut peer = None;
    let r = accept_handshake(&inner, stream, &mut peer).await;
    if let Some(p) = peer {
        inner.lock().accepting.remove(&p);
    }
    r
}

/// The acceptor's handshake; `accepting` names the peer once known (for simultaneous connects).
async fn accept_handshake(
    inner: &Arc<Inner>,
    mut stream: TcpStream,
    accepting: &mut Option<Atom>,
) -> Result<(), NodeError> {
    let _ = stream.set_nodelay(true);
    let to = inner.cfg.setup_timeout;
    let unknown = Atom::from("(incoming)");
    let mut hs = Acceptor::new(AcceptorConfig {
        name: inner.name.to_string(),
        flags: inner.flags,
        creation: inner.creation,
        cookie: inner.cfg.cookie.as_bytes().to_vec(),
        challenge: rand::random(),
    });
    let mut peer = unknown.clone();
    let mut buf = vec![0u8; 4096];
    loop {
        let herr = |e| NodeError::Handshake { node: peer.to_string(), source: e };
        let ev = hs.poll();
        let out = hs.take_output();
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io_err(&peer))?;
        }
        match ev.map_err(herr)? {
            Some(AcceptorEvent::Name { name, .. }) => {
                peer = Atom::from(name.as_str());
                let status = {
                    let mut st = inner.lock();
                    st.accepting.insert(peer.clone());
                    *accepting = Some(peer.clone());
                    if st.conns.contains_key(&peer) {
                        Status::Alive
                    } else if let Some(abort) = st.dialing.get(&peer) {
                        // Both sides dial at once: the greater name keeps its own attempt
                        // (net_kernel's rule); the smaller gives way and drops its own.
                        if inner.name.as_str() > peer.as_str() {
                            Status::Nok
                        } else {
                            abort.notify_one();
                            Status::OkSimultaneous
                        }
                    } else {
                        Status::Ok
                    }
                };
                let stop = status == Status::Nok;
                hs.respond(status).map_err(|e| NodeError::Handshake { node: peer.to_string(), source: e })?;
                if stop {
                    stream.write_all(&hs.take_output()).await.map_err(io_err(&peer))?;
                    return Ok(());
                }
            }
            Some(AcceptorEvent::AliveAnswer(true)) => {
                if let Some(old) = inner.conn_if_up(&peer) {
                    old.close();
                }
            }
            Some(AcceptorEvent::AliveAnswer(false)) => return Ok(()),
            Some(AcceptorEvent::Authenticated) => {
                let c = hs.complete().map_err(herr)?;
                stream.write_all(&hs.take_output()).await.map_err(io_err(&peer))?;
                let rest = hs.take_remaining();
                start_connection(inner.clone(), stream, c, rest, false);
                return Ok(());
            }
            None => {
                let n = read_some(&mut stream, &mut buf, to, &peer).await?;
                hs.handle(buf.get(..n).unwrap_or_default())
                    .map_err(|e| NodeError::Handshake { node: peer.to_string(), source: e })?;
            }
        }
    }
}

/// Registers a connected stream and starts its reader and writer.
fn start_connection(inner: Arc<Inner>, stream: TcpStream, c: Connected, rest: Vec<u8>, outgoing: bool) -> Conn {
    let peer = Atom::from(c.peer.as_str());
    info!(peer = %peer, flags = format!("{:#x}", c.flags.0), "connected");
    let (tx, rx) = mpsc::channel(64);
    let conn = Conn {
        id: CONN_IDS.fetch_add(1, Ordering::Relaxed),
        peer: peer.clone(),
        flags: c.flags,
        outgoing,
        tx,
        seq: Arc::new(AtomicU64::new(1)),
        closed: Arc::new(Closed::default()),
    };
    let winner = inner.add_conn(peer.clone(), conn.clone());
    let (r, w) = stream.into_split();
    let tick = (inner.cfg.tick_time / 4).min(Duration::from_secs(15));
    tokio::spawn(writer(w, rx, conn.closed.clone(), tick, Arc::downgrade(&inner)));
    let inner2 = inner.clone();
    let conn2 = conn.clone();
    tokio::spawn(async move {
        let res = reader(inner2.clone(), r, conn2.clone(), rest).await;
        match res {
            Ok(()) | Err(ReadError::Eof | ReadError::Closed) => info!(peer = %conn2.peer, "connection closed"),
            Err(e) => warn!(peer = %conn2.peer, "connection dropped: {e}"),
        }
        conn2.close();
        inner2.connection_lost(&conn2.peer, conn2.id);
    });
    winner
}

/// Writes queued messages, interleaving the fragments of different senders (see [`Lanes`]),
/// and ticks when idle.
async fn writer(
    w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<(LaneId, Vec<Vec<u8>>)>,
    closed: Arc<Closed>,
    tick: Duration,
    inner: Weak<Inner>,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let mut lanes = Lanes::new();
    let mut last = Instant::now();
    'run: loop {
        tokio::select! {
            m = rx.recv() => {
                let Some((lane, packets)) = m else { break };
                lanes.push(lane, packets);
            }
            _ = tokio::time::sleep_until(last + tick) => {
                if w.write_all(&TICK).await.is_err() || w.flush().await.is_err() {
                    break;
                }
                last = Instant::now();
                continue;
            }
            _ = closed.wait() => break,
        }
        // Drain the lanes one packet at a time, taking in whatever else gets queued meanwhile.
        while !lanes.is_empty() {
            while let Ok((lane, packets)) = rx.try_recv() {
                lanes.push(lane, packets);
            }
            if let Some(i) = inner.upgrade() {
                i.stats.peak_active_lanes.fetch_max(lanes.active() as u64, Ordering::Relaxed);
            }
            let Some(p) = lanes.pop() else { break };
            if w.write_all(&p).await.is_err() || closed.flag.load(Ordering::SeqCst) {
                break 'run;
            }
        }
        if w.flush().await.is_err() {
            break;
        }
        last = Instant::now();
    }
    let _ = w.shutdown().await;
    closed.close();
}

/// Errors that end a connection from the reading side.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("peer not responding (no data for {0:?})")]
    NotResponding(Duration),
    #[error("peer closed the connection")]
    Eof,
    #[error("closed locally")]
    Closed,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame: {0}")]
    Frame(#[from] edist_proto::dist::frame::FrameError),
    #[error("header: {0}")]
    Header(#[from] edist_proto::dist::header::HeaderError),
    #[error("fragment: {0}")]
    Fragment(#[from] edist_proto::dist::fragment::FragmentError),
    #[error("message: {0}")]
    Message(#[from] edist_proto::dist::ControlError),
}

async fn reader(
    inner: Arc<Inner>,
    mut r: tokio::net::tcp::OwnedReadHalf,
    conn: Conn,
    rest: Vec<u8>,
) -> Result<(), ReadError> {
    let max = inner.cfg.max_message;
    let decoder = FrameDecoder::new(max + 64);
    // At most `max` bytes buffered across all messages being reassembled on this connection.
    let mut reasm = Reassembler::new(4096, max, max);
    let mut cache = AtomCache::default();
    let limits = Limits { max_inflated: max, ..Limits::default() };
    let mut buf = BytesMut::with_capacity(64 * 1024);
    buf.extend_from_slice(&rest);
    loop {
        while let Some(frame) = decoder.decode(&mut buf)? {
            let Frame::Data(data) = frame else { continue };
            let msg = match parse_packet(&data, conn.flags, &mut cache)? {
                Packet::Message { atom_refs, body, versioned } => {
                    Some(decode_message(body, &atom_refs, versioned, &limits)?)
                }
                Packet::FragmentStart { seq, fragments, atom_refs, body } => {
                    match reasm.start(seq, fragments, atom_refs, body)? {
                        Some(m) => Some(decode_message(&m.body, &m.atom_refs, false, &limits)?),
                        None => {
                            inner.stats.fragmented_received.fetch_add(1, Ordering::Relaxed);
                            inner.stats.peak_open_reassemblies.fetch_max(reasm.open() as u64, Ordering::Relaxed);
                            None
                        }
                    }
                }
                Packet::FragmentCont { seq, fragment, body } => match reasm.cont(seq, fragment, body)? {
                    Some(m) => Some(decode_message(&m.body, &m.atom_refs, false, &limits)?),
                    None => None,
                },
            };
            if let Some(m) = msg {
                dispatch(&inner, &conn, m).await;
            }
        }
        if buf.capacity() - buf.len() < 8192 {
            buf.reserve(64 * 1024);
        }
        tokio::select! {
            res = timeout(inner.cfg.tick_time, r.read_buf(&mut buf)) => match res {
                Err(_) => return Err(ReadError::NotResponding(inner.cfg.tick_time)),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(0)) => return Err(ReadError::Eof),
                Ok(Ok(_)) => {}
            },
            _ = conn.closed.wait() => return Err(ReadError::Closed),
        }
    }
}

/// Acts on one incoming message.
async fn dispatch(inner: &Arc<Inner>, conn: &Conn, m: Message) {
    use Control::*;
    let Message { control, payload } = m;
    debug!(peer = %conn.peer, op = control.op(), "received");
    let payload_or = |t: Option<Term>| t.unwrap_or(Term::atom("normal"));
    match control {
        Send { to } | SendTT { to, .. } => {
            if let Some(id) = inner.resolve(&to) {
                inner.deliver(id, Event::Message { from: None, msg: payload_or(payload) });
            }
        }
        SendSender { from, to } | SendSenderTT { from, to, .. } => {
            if let Some(id) = inner.resolve(&to) {
                inner.deliver(id, Event::Message { from: Some(from), msg: payload_or(payload) });
            }
        }
        RegSend { from, to } | RegSendTT { from, to, .. } => {
            if let Some(id) = inner.whereis(&to) {
                inner.deliver(id, Event::Message { from: Some(from), msg: payload_or(payload) });
            }
        }
        AliasSend { .. } | AliasSendTT { .. } => {
            // Mailboxes create no aliases (our calls use plain reference tags), so none can be
            // live: OTP drops sends to inactive aliases too.
            debug!(peer = %conn.peer, "alias send to an unknown alias dropped");
        }
        Link { from, to } => {
            if !inner.incoming_link(&from, &to) {
                let _ = conn.send_exit(&to, &from, Term::atom("noproc"), false).await;
            }
        }
        Unlink { from, to } => inner.incoming_unlink(&from, &to),
        UnlinkId { id, from, to } => {
            inner.incoming_unlink(&from, &to);
            let _ = conn.send(&UnlinkIdAck { id, from: to, to: from }, None).await;
        }
        UnlinkIdAck { .. } | NodeLink | GroupLeader { .. } => {}
        Exit { from, to, reason } | ExitTT { from, to, reason, .. } => inner.incoming_exit(&from, &to, reason, false),
        Exit2 { from, to, reason } | Exit2TT { from, to, reason, .. } => inner.incoming_exit(&from, &to, reason, true),
        PayloadExit { from, to } | PayloadExitTT { from, to, .. } => {
            inner.incoming_exit(&from, &to, payload_or(payload), false)
        }
        PayloadExit2 { from, to } | PayloadExit2TT { from, to, .. } => {
            inner.incoming_exit(&from, &to, payload_or(payload), true)
        }
        MonitorP { from, to, reference } => {
            if !inner.incoming_monitor(&from, &to, &reference) {
                let down = PayloadMonitorPExit { from: to, to: from, reference };
                let _ = conn.send_signal(down, Some(Term::atom("noproc"))).await;
            }
        }
        DemonitorP { to, reference, .. } => inner.incoming_demonitor(&to, &reference),
        MonitorPExit { from, to, reference, reason } => inner.incoming_down(&to, from, reference, reason),
        PayloadMonitorPExit { from, to, reference } => inner.incoming_down(&to, from, reference, payload_or(payload)),
        SpawnRequest { req_id, from, module, function, arity, opts, .. }
        | SpawnRequestTT { req_id, from, module, function, arity, opts, .. } => {
            crate::rpc::serve_spawn(inner.clone(), conn.clone(), req_id, from, module, function, arity, opts, payload)
                .await;
        }
        SpawnReply { req_id, to, flags, result } | SpawnReplyTT { req_id, to, flags, result, .. } => {
            if let Some(id) = inner.resolve(&to) {
                inner.deliver(id, Event::SpawnReply { req_id, flags, result });
            }
        }
    }
}
