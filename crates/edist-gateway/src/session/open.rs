//! Setting up a relayed connection, on both gateways: a local node dials a listener that
//! impersonates a remote node (`impersonate`, `session_from_local`), or a peer gateway opens a
//! stream for one of its nodes to a local node (`session_to_local`); then `carry` runs the
//! data phase ([`super::pump`]) with the session's `MergerGuard` and `lane_opener`.
use super::relay::forward_lane;
use crate::fabric::link::{Link, RecvStream, SendStream};
use crate::gateway::{dynamic_name, link_to, lock, Inner, LinkHold, OutboundGuard};
use crate::session::refusal::SessionRefusal;
use crate::session::shell::MsgReader;
use crate::session::{pump, shell, sync, ticks};
use crate::wire::Msg;
use edist_proto::dist::DFlags;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info};

impl Inner {
    /// Lane settings of sessions towards `peer`.
    pub(crate) fn lanes(&self, peer: &str) -> pump::LaneConfig {
        let compress = self.live().peers.iter().any(|p| p.name == peer && p.compress);
        pump::LaneConfig {
            lanes: self.cfg.fabric.lanes,
            relay_buffer: self.cfg.fabric.relay_buffer,
            gateway_buffer: self.buffer.clone(),
            socket_buffer: Some(self.cfg.local.socket_buffer),
            net_ticktime: ticks::Ticktime::new(self.configured_ticktime()),
            plug: None,
            link: None,
            compress_above: compress.then_some(self.cfg.fabric.compress_threshold),
        }
    }
}

/// Accepts local nodes' connections to a remote node `target`.
pub(crate) async fn impersonate(inner: Weak<Inner>, listener: TcpListener, target: String) {
    loop {
        let Ok((sock, peer)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let Some(inner) = inner.upgrade() else { return };
        let target = target.clone();
        tokio::spawn(async move {
            inner.sessions.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = session_from_local(&inner, sock, &target).await {
                info!(%target, "relay ended: {e}");
            }
            inner.sessions.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

pub(crate) async fn session_from_local(
    inner: &Arc<Inner>,
    mut sock: TcpStream,
    target: &str,
) -> Result<(), shell::SessionError> {
    let _ = sock.set_nodelay(true);
    let (creation, gateway) = {
        let reg = inner.registry();
        let r = reg.remote(target).ok_or_else(|| {
            shell::SessionError::Refused(SessionRefusal::UnknownTarget { target: target.to_string() })
        })?;
        (r.creation, r.gateway.clone())
    };
    let Some(cookie) = inner.cookie.as_deref() else {
        return Err(shell::SessionError::Refused(SessionRefusal::NoCookieToCheck));
    };
    let mut leg = shell::near_leg(target, creation, cookie);
    let dial = shell::read_local_name(&mut sock, &mut leg).await?;
    // A node with a dynamic name (NAME_ME) sent only its host: name it here, as the node it
    // dialled would, and dial the far node under that name.
    let named = dial.flags.has(DFlags::NAME_ME).then(|| dynamic_name(inner, &dial.from));
    let (from, from_creation) = named.clone().unwrap_or((dial.from.clone(), dial.creation));
    // Registered nodes dial out under their own name (not checked against the creation we
    // handed out: a node that re-registered after a gateway restart keeps the creation it
    // started with); a node that does not listen is announced for as long as it has relayed
    // connections. Either way the node proves the cookie below before the far node hears
    // from it; until then the name is only claimed, and the claim goes with the connection.
    let _outbound = match OutboundGuard::admit(inner, &from, from_creation, named.is_some()) {
        Ok(g) => g,
        Err(why) => {
            let why = SessionRefusal::MayNotDialOut { from: from.clone(), why: why.to_string() };
            inner.metrics.refused("local", why.metric_reason().unwrap_or_default());
            leg.refuse()?;
            sock.write_all(&leg.take_node_output()).await?;
            return Err(shell::SessionError::Refused(why));
        }
    };
    let (conn, link_peer, _hold, (mut tx, rx)) = open_session_stream(inner, &gateway).await?;
    let session_id: u64 = rand::random();
    // A role that hides the far node: it sees ours as hidden, and ours it (NearLeg::open).
    let hide = inner.role_of(&gateway).1.hidden;
    let open = leg.open(session_id, named, hide)?;
    AsyncWriteExt::write_all(&mut tx, &open.encode()).await?;
    let (merger, rxs) = MergerGuard::register(inner, session_id, (&gateway, &link_peer), (&from, target));
    let mut msgs = MsgReader::new(rx);
    let done = shell::finish_local_leg(&mut sock, &mut leg, &mut msgs, &mut tx).await;
    if let Err(shell::SessionError::Handshake(edist_proto::dist::handshake::HandshakeError::BadDigest)) = &done {
        // What the dialled node would log (dist_util), and why it happens behind a gateway;
        // once per burst, since any local process can try.
        inner.refuse(
            "local",
            "bad_cookie",
            &format!(
                "a handshake: ** Connection attempt from node {from} rejected. Invalid challenge reply. ** \
                 ({from} dialled {target}, and they do not use the same cookie for each other; across \
                 hosts, a node using its gateway's cookie counts as using the far gateway's)"
            ),
        );
    }
    let leftover = inner.metrics.handshake(&gateway, true, done)?;
    info!(%from, to = %target, "relayed connection up");
    carry(inner, sock, msgs, tx, &leftover, (merger, rxs), conn, session_id, (&from, &gateway)).await
}

/// A new stream for a relayed connection to `gateway`'s nodes, on its link (opened if need be).
pub(crate) async fn open_session_stream(
    inner: &Arc<Inner>,
    gateway: &str,
) -> Result<(Arc<dyn Link>, String, LinkHold, (SendStream, RecvStream)), shell::SessionError> {
    let mut error = None;
    // Twice: the link may close under us (the far side found it idle), then a fresh one.
    for _ in 0..2 {
        let (conn, peer, hold) = link_to(inner, gateway).await?;
        match conn.open_bi().await {
            Ok(s) => return Ok((conn, peer, hold, s)),
            Err(e) => error = Some(e),
        }
    }
    Err(shell::SessionError::Refused(SessionRefusal::LinkFailed {
        gateway: gateway.to_string(),
        error: error.map(|e| e.to_string()).unwrap_or_default(),
    }))
}

/// The data phase of a session, on either gateway (see [`pump::pump`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn carry(
    inner: &Arc<Inner>,
    sock: TcpStream,
    msgs: MsgReader<RecvStream>,
    tx: SendStream,
    leftover: &[u8],
    (merger, rxs): (MergerGuard, sync::MergerRx),
    conn: Arc<dyn Link>,
    session_id: u64,
    (node, peer_gateway): (&str, &str),
) -> Result<(), shell::SessionError> {
    let (rx, buf) = msgs.into_parts();
    let mut lanes = inner.lanes(peer_gateway);
    lanes.link = Some(conn.clone());
    // The local node's plug, where it has one: its ticktime, and holds on its senders.
    let plug = inner.registry().local(node).and_then(|l| l.plug.clone());
    if let Some(plug) = plug {
        lanes.net_ticktime = ticks::Ticktime::reported_into(inner.configured_ticktime(), plug.ticktime_ms());
        lanes.plug = Some(plug);
    }
    pump::pump(
        sock,
        rx,
        tx,
        leftover,
        &buf,
        merger.tx(),
        rxs,
        lane_opener(conn, session_id),
        lanes,
        inner.metrics.session(peer_gateway),
    )
    .await
}

/// Opens lane streams of session `session_id` on `conn`.
pub(crate) fn lane_opener(conn: Arc<dyn Link>, session_id: u64) -> pump::LaneOpener {
    Box::new(move |lane| {
        let conn = conn.clone();
        Box::pin(async move {
            let mut s = conn.open_uni().await?;
            s.write_all(&Msg::Lane { relay: session_id, lane }.encode()).await?;
            Ok(s)
        })
    })
}

/// A session's merger, registered for incoming lanes while the session lives.
pub(crate) struct MergerGuard {
    inner: Arc<Inner>,
    id: u64,
    tx: sync::Merger,
}

impl MergerGuard {
    /// `origin` is the gateway whose nodes are on the other end (its role applies), `link_peer`
    /// the gateway the link goes to (only it may add lanes): the same unless relayed.
    /// `nodes`: (local node, remote node) of the connection.
    pub(crate) fn register(
        inner: &Arc<Inner>,
        id: u64,
        (origin, link_peer): (&str, &str),
        nodes: (&str, &str),
    ) -> (MergerGuard, sync::MergerRx) {
        let (to_node, rx) = mpsc::channel(64);
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let tx = sync::Merger {
            to_node,
            replies,
            peer: link_peer.into(),
            policy: inner.inbound_policy(origin, nodes),
            sync: Arc::default(),
        };
        lock(&inner.mergers).insert(id, tx.clone());
        (MergerGuard { inner: inner.clone(), id, tx }, (rx, replies_rx))
    }

    pub(crate) fn tx(&self) -> sync::Merger {
        self.tx.clone()
    }
}

impl Drop for MergerGuard {
    fn drop(&mut self) {
        self.tx.sync.close();
        lock(&self.inner.mergers).remove(&self.id);
    }
}

/// How long an `Open` from a node its gateway has not announced yet waits for the announcement.
pub(crate) const ANNOUNCEMENT_WAIT: Duration = Duration::from_secs(1);

/// An `Open` from a peer gateway: `from` (behind `origin`, the peer itself unless the peer
/// relays for us and forwarded it) dials `to`.
pub(crate) struct OpenReq {
    pub(crate) relay: u64,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) flags: u64,
    pub(crate) creation: u32,
    pub(crate) origin: Option<String>,
}

/// True once `from` is a node `gateway` announced; a node that just registered over there
/// dials at once, and its announcement travels on another stream of the link: it may arrive a
/// little after the `Open`, so wait for it briefly.
pub(crate) async fn announced_by(inner: &Inner, from: &str, gateway: &str) -> bool {
    let deadline = tokio::time::Instant::now() + ANNOUNCEMENT_WAIT;
    loop {
        let known = inner.registry().owner_of(from).map(|g| g == gateway);
        match known {
            Some(known) => return known,
            None if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
            None => return false,
        }
    }
}

pub(crate) async fn session_to_local(
    inner: Arc<Inner>,
    conn: Arc<dyn Link>,
    peer_gateway: String,
    mut tx: SendStream,
    mut msgs: MsgReader<RecvStream>,
    open: OpenReq,
) -> Result<(), shell::SessionError> {
    let OpenReq { relay: session_id, from, to, flags, creation, origin } = open;
    let port = inner.local_port(&to);
    if port.is_none() && origin.is_none() && inner.cfg.fabric.relay {
        let target = inner.registry().owner_of(&to).map(str::to_string);
        // Between a gateway we relay for and any other.
        if let Some(target) = target.filter(|g| inner.relays_for(g) || inner.relays_for(&peer_gateway)) {
            let open = Msg::Open { relay: session_id, from, to, flags, creation };
            return super::relay::forward(&inner, conn, &peer_gateway, tx, msgs, open, &target).await;
        }
    }
    // The dialler must be a node its own gateway announced (no claiming others' names), or,
    // forwarded by a relay, one that relay vouches for: it relays for us, or our config says
    // we reach the dialler's gateway through it.
    let vouched = origin.as_deref().is_some_and(|o| {
        inner.peer_config(&peer_gateway).is_some_and(|p| p.relay)
            || inner.peer_config(o).and_then(|p| p.via).as_deref() == Some(peer_gateway.as_str())
    });
    let allowed = match &origin {
        Some(_) => vouched && inner.registry().local(&from).is_none(),
        None => announced_by(&inner, &from, &peer_gateway).await,
    };
    let Some(port) = port.filter(|_| allowed) else {
        let why = SessionRefusal::NotHere { from: from.clone(), to: to.clone(), peer: peer_gateway.clone() };
        let _ = tx.write_all(&Msg::Refused(why.wire()).encode()).await;
        inner.metrics.refused(&peer_gateway, why.metric_reason().unwrap_or_default());
        return Err(shell::SessionError::Refused(why));
    };
    let origin = origin.unwrap_or_else(|| peer_gateway.clone());
    let Some(cookie) = inner.cookie.as_deref() else {
        let why = SessionRefusal::NoCookieForLocal { from: from.clone(), to: to.clone() };
        let _ = tx.write_all(&Msg::Refused(why.wire()).encode()).await;
        return Err(shell::SessionError::Refused(why));
    };
    let (merger, rxs) = MergerGuard::register(&inner, session_id, (&origin, &peer_gateway), (&to, &from));
    // A role that hides the peer's nodes: the handshake makes this a hidden connection both ways.
    let hide = inner.role_of(&origin).1.hidden;
    let dialled =
        shell::dial_local_target(port, &from, &to, DFlags(flags), creation, cookie, &mut msgs, &mut tx, hide).await;
    let (sock, leftover) = inner.metrics.handshake(&origin, false, dialled)?;
    info!(%from, %to, via = ?(origin != peer_gateway).then_some(&peer_gateway), "relayed connection up");
    carry(&inner, sock, msgs, tx, &leftover, (merger, rxs), conn, session_id, (&to, &origin)).await
}

/// Joins a bulk lane the peer opened (its `Lane` frame read) to its session: its packets join
/// that session's merger. Only the peer whose session it is may add lanes to it; a lane of a
/// session this gateway forwards goes on to the other link ([`forward_lane`]).
pub(crate) async fn join_lane(inner: &Arc<Inner>, peer: &str, (relay, lane): (u64, u8), msgs: MsgReader<RecvStream>) {
    let (rx, pending) = msgs.into_parts();
    let Some(merger) = lock(&inner.mergers).get(&relay).filter(|m| *m.peer == *peer).cloned() else {
        if let Err(e) = forward_lane(inner, (relay, lane), peer, rx, &pending).await {
            debug!(%peer, "forwarded lane of relay {relay:#x} ended: {e}");
        }
        return;
    };
    if let Err(e) = pump::feed_lane_stream(lane, rx, &pending, merger).await {
        debug!(%peer, "lane of relay {relay:#x} ended: {e}");
    }
}
