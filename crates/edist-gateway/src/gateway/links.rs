//! Links to peer gateways: the table of links (each peer's, normally one, and how busy each
//! is), the loops that make them (accepting, dialling `[[peers]]`, dialling seeds, dialling on
//! demand for a relayed connection) and end them (idle ones, with membership), and what is
//! served on each link (`serve_link`: announcements on control streams, relayed connections
//! and their lanes).

use super::inventory;
use super::{lock, Inner, LinkReason, CLOSE_SHUTDOWN};
use crate::config::Config;
use crate::fabric::close::{CLOSE_IDLE, CLOSE_NORMAL, CLOSE_REVOKED};
use crate::fabric::discovery::Discovery;
use crate::fabric::link::{self, Closed, Link, Linked, RecvStream, Transport};
use crate::session::open::{join_lane, session_to_local, OpenReq};
use crate::session::refusal::SessionRefusal;
use crate::session::shell;
use crate::session::shell::MsgReader;
use crate::wire::{Msg, On};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info};

/// The link side of the gateway's state.
pub(super) struct Links {
    /// Links to each peer gateway, and members' addresses.
    pub(super) table: Mutex<LinkTable>,
    /// Dial loops of `[[peers]]` with an address, by peer.
    dialers: Mutex<HashMap<String, (std::net::SocketAddr, AbortHandle)>>,
    /// One dial at a time per peer gateway.
    dialling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The number of the next link.
    next_id: AtomicU64,
    /// What of the config the links go by.
    pub(super) settings: LinkSettings,
}

/// The links' part of the config, resolved once at start (none of it changes on a reload).
pub(super) struct LinkSettings {
    /// This gateway's name.
    pub(super) name: String,
    /// `[fabric] membership`: members are dialled on demand, and the registry is membership's.
    pub(super) membership: bool,
    /// `[fabric] link_idle_ms`: how long an unused link stays.
    pub(super) link_idle: Duration,
}

impl LinkSettings {
    fn new(cfg: &Config) -> LinkSettings {
        LinkSettings {
            name: cfg.name.clone(),
            membership: cfg.fabric.membership,
            link_idle: Duration::from_millis(cfg.fabric.link_idle_ms),
        }
    }
}

impl Links {
    /// No links yet, going by `cfg`.
    pub(super) fn new(cfg: &Config) -> Links {
        Links {
            table: Default::default(),
            dialers: Default::default(),
            dialling: Default::default(),
            next_id: AtomicU64::new(1),
            settings: LinkSettings::new(cfg),
        }
    }

    /// Stops every dial loop (shutting down).
    pub(super) fn stop_dialers(&self) {
        for (_, (_, t)) in lock(&self.dialers).drain() {
            t.abort();
        }
    }
}

/// One link to a peer gateway.
pub(super) struct Peer {
    pub(super) link_id: u64,
    pub(super) conn: Arc<dyn Link>,
    pub(super) control: mpsc::UnboundedSender<Msg>,
    pub(super) usage: Arc<LinkUsage>,
    /// Why it was opened, when, and the serial of the certificate the peer presented (for
    /// `edist status`).
    pub(super) why: LinkReason,
    pub(super) since: tokio::time::Instant,
    pub(super) serial: String,
}

/// How busy a link is: relayed connections on it, and since when it has had none.
#[derive(Debug)]
pub(super) struct LinkUsage {
    pub(super) sessions: AtomicU64,
    idle_since: Mutex<tokio::time::Instant>,
}

impl LinkUsage {
    fn new() -> Arc<LinkUsage> {
        Arc::new(LinkUsage { sessions: AtomicU64::new(0), idle_since: Mutex::new(tokio::time::Instant::now()) })
    }

    /// Counts a relayed connection on the link until the guard drops.
    pub(super) fn hold(self: &Arc<Self>) -> LinkHold {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        LinkHold(self.clone())
    }

    /// How long the link has carried nothing (zero while it carries something).
    pub(super) fn idle_for(&self) -> Duration {
        match self.sessions.load(Ordering::Relaxed) {
            0 => lock(&self.idle_since).elapsed(),
            _ => Duration::ZERO,
        }
    }
}

/// A relayed connection's hold on its link (see [`LinkUsage::hold`]).
pub(crate) struct LinkHold(Arc<LinkUsage>);

impl Drop for LinkHold {
    fn drop(&mut self) {
        let mut since = lock(&self.0.idle_since);
        if self.0.sessions.fetch_sub(1, Ordering::Relaxed) == 1 {
            *since = tokio::time::Instant::now();
        }
    }
}

/// The links to peer gateways and the addresses of members.
#[derive(Default)]
pub(super) struct LinkTable {
    /// Links to each peer gateway, oldest first. Normally one; when both gateways dial at
    /// once there are two for a moment: new sessions take the one that stays, and the other
    /// closes once it carries nothing ([`prune_duplicates_later`]).
    peers: HashMap<String, Vec<Peer>>,
    /// Fabric addresses of the gateways membership holds alive.
    members: HashMap<String, std::net::SocketAddr>,
}

impl LinkTable {
    /// Every link, with its peer's name.
    pub(super) fn all(&self) -> impl Iterator<Item = (&str, &Peer)> {
        self.peers.iter().flat_map(|(peer, links)| links.iter().map(move |l| (peer.as_str(), l)))
    }

    /// The links to `peer` (none, one, or two for a while).
    pub(super) fn of(&self, peer: &str) -> &[Peer] {
        self.peers.get(peer).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether `peer` has a link up.
    pub(super) fn is_linked(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// The peers with a link up, by name.
    pub(super) fn linked(&self) -> Vec<String> {
        let mut out: Vec<String> = self.peers.keys().cloned().collect();
        out.sort();
        out
    }

    /// Every link's connection (to close them all).
    pub(super) fn conns(&self) -> Vec<Arc<dyn Link>> {
        self.all().map(|(_, l)| l.conn.clone()).collect()
    }

    /// Sends `m` on the control stream of every link to a peer `to` picks.
    pub(super) fn tell(&self, m: &Msg, to: impl Fn(&str) -> bool) {
        for (_, l) in self.all().filter(|(peer, _)| to(peer)) {
            let _ = l.control.send(m.clone());
        }
    }

    /// Membership holds `name` alive, at fabric address `addr`.
    pub(super) fn member_up(&mut self, name: String, addr: std::net::SocketAddr) {
        self.members.insert(name, addr);
    }

    /// Membership says `name` is gone.
    pub(super) fn member_down(&mut self, name: &str) {
        self.members.remove(name);
    }

    /// Whether membership knows no other gateway.
    pub(super) fn no_members(&self) -> bool {
        self.members.is_empty()
    }
}

/// Application close code of a link closed because another link to the same peer is up (both
/// gateways dialled each other).
pub const CLOSE_DUPLICATE: u32 = 0x101;

/// How long two links to a peer may both stay up before one closes: long enough for both
/// gateways to see both (and for sessions just opened on either to settle on the other).
const DUPLICATE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Both gateways dial each other (each has the other in `[[peers]]`, or seeds, or traffic on
/// both sides at once), so a peer often gets two links. Both ends apply one rule, so they
/// agree without talking: the link the gateway with the smaller name dialled stays; the other
/// gateway closes the links it dialled itself, once they carry no relayed connection.
pub(super) fn prune_duplicates_later(inner: &Arc<Inner>, peer: &str) {
    if inner.links.settings.name.as_str() < peer {
        return;
    }
    let (weak, peer) = (Arc::downgrade(inner), peer.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(DUPLICATE_GRACE).await;
        let Some(inner) = weak.upgrade() else { return };
        let st = inner.links();
        let Some(links) = st.peers.get(&peer) else { return };
        if !links.iter().any(|l| l.why == LinkReason::Accepted) {
            return;
        }
        for l in links.iter().filter(|l| l.why != LinkReason::Accepted) {
            if l.usage.sessions.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                tracing::debug!(%peer, link = l.link_id, "closing our link: the peer's own link to us stays");
                l.conn.close(CLOSE_DUPLICATE, b"duplicate link: yours stays");
            }
        }
    });
}

/// The link new relayed connections to `peer` take: of two, the one that stays (see
/// [`prune_duplicates_later`]), so that none starts on a link about to close; else the newest.
pub(super) fn preferred<'a>(me: &str, peer: &str, links: &'a [Peer]) -> Option<&'a Peer> {
    let stays_dialled_by_me = me < peer;
    links.iter().rev().find(|l| (l.why != LinkReason::Accepted) == stays_dialled_by_me).or_else(|| links.last())
}

/// The link to `gateway` (or to the gateway it is reached through, `via`), held for a
/// relayed connection, and the gateway at its other end; with membership, one is dialled if
/// there is none.
pub(crate) async fn link_to(
    inner: &Arc<Inner>,
    gateway: &str,
) -> Result<(Arc<dyn Link>, String, LinkHold), shell::SessionError> {
    let via = inner.peer_config(gateway).and_then(|p| p.via.clone());
    let hop = via.unwrap_or_else(|| gateway.to_string());
    let newest = |inner: &Inner| {
        let st = inner.links();
        let link = st.peers.get(&hop).and_then(|l| preferred(&inner.links.settings.name, &hop, l));
        link.map(|p| (p.conn.clone(), hop.clone(), p.usage.hold()))
    };
    if let Some(l) = newest(inner) {
        return Ok(l);
    }
    let no_link = || shell::SessionError::Refused(SessionRefusal::NoLink { gateway: gateway.to_string() });
    let (Some(t), true) = (inner.transport.get(), inner.links.settings.membership) else { return Err(no_link()) };
    let gate = lock(&inner.links.dialling).entry(gateway.to_string()).or_default().clone();
    let _dialling = gate.lock().await;
    if let Some(l) = newest(inner) {
        return Ok(l);
    }
    let addr = inner.links().members.get(gateway).copied().ok_or_else(no_link)?;
    let link = t.dial(addr, Some(gateway)).await.map_err(|e| {
        inner.metrics.link_handshake(gateway, false);
        shell::SessionError::Refused(SessionRefusal::DialFailed {
            gateway: gateway.to_string(),
            addr: addr.to_string(),
            error: e.to_string(),
        })
    })?;
    tokio::spawn(run_link(inner.clone(), link, LinkReason::Traffic));
    // run_link files the link before its first await point.
    for _ in 0..100 {
        if let Some(l) = newest(inner) {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(no_link())
}

impl Inner {
    /// Makes the dial loops match `[[peers]]`: one per peer with an `addr`. Returns the peers
    /// now dialled anew and those no longer dialled.
    pub(super) fn sync_dialers(self: &Arc<Self>) -> (Vec<String>, Vec<String>) {
        let Some(t) = self.transport.get() else { return Default::default() };
        let wanted: std::collections::BTreeMap<String, std::net::SocketAddr> =
            self.live().peers.iter().filter_map(|p| Some((p.name.clone(), p.addr?))).collect();
        let mut dialers = lock(&self.links.dialers);
        let mut stopped = vec![];
        dialers.retain(|name, (addr, task)| {
            let keep = wanted.get(name) == Some(addr);
            if !keep {
                task.abort();
                stopped.push(name.clone());
            }
            keep
        });
        let mut started = vec![];
        for (name, addr) in wanted {
            if !dialers.contains_key(&name) {
                let task = tokio::spawn(dial_loop(self.clone(), t.clone(), name.clone(), addr)).abort_handle();
                dialers.insert(name.clone(), (addr, task));
                started.push(name);
            }
        }
        (started, stopped)
    }
}

pub(super) async fn accept_loop(inner: Arc<Inner>, transport: Arc<dyn Transport>) {
    while let Some((from, handshake)) = transport.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            match handshake.await {
                Ok(link) => run_link(inner, link, LinkReason::Accepted).await,
                // TLS refusals (no or foreign certificate, expired), silent or lying peers: the
                // peer is not known yet, so it is counted under its address.
                Err(e) => {
                    inner.metrics.link_handshake("", false);
                    inner.refuse(&from.ip().to_string(), "handshake", &format!("fabric connection: {e}"))
                }
            }
        });
    }
}

async fn dial_loop(inner: Arc<Inner>, transport: Arc<dyn Transport>, peer: String, addr: std::net::SocketAddr) {
    loop {
        if !inner.links().peers.contains_key(&peer) {
            match transport.dial(addr, Some(&peer)).await {
                Ok(link) => run_link(inner.clone(), link, LinkReason::Configured).await,
                Err(e) => {
                    inner.metrics.link_handshake(&peer, false);
                    debug!(%peer, %addr, "dial failed: {e}")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Dials the addresses the seed sources give, again every few seconds, unless a link to that
/// address is up; whoever answers (with a certificate of the cluster CA) becomes a peer.
pub(super) async fn seed_loop(inner: Arc<Inner>, transport: Arc<dyn Transport>, sources: Vec<Box<dyn Discovery>>) {
    // Who answered at each address (ourselves included). A link the seed dialled in to us
    // shows its source address, which over TCP is not its listening one, so the name is what
    // tells whether that gateway is linked already.
    let mut who = HashMap::<std::net::SocketAddr, String>::new();
    let me = inner.links.settings.name.as_str();
    loop {
        for source in &sources {
            for addr in source.discover().await {
                let linked = {
                    let st = inner.links();
                    let named = who.get(&addr).is_some_and(|n| n == me || st.peers.contains_key(n));
                    named || st.peers.values().flatten().any(|p| p.conn.remote_address() == addr)
                };
                if linked {
                    continue;
                }
                match transport.dial(addr, None).await {
                    Ok(link) if link.peer_name == me => {
                        link.link.close(CLOSE_NORMAL, b"that is me");
                        who.insert(addr, link.peer_name);
                    }
                    Ok(link) => {
                        debug!(peer = %link.peer_name, %addr, "seed answered");
                        who.insert(addr, link.peer_name.clone());
                        tokio::spawn(run_link(inner.clone(), link, LinkReason::Seed));
                    }
                    Err(e) => {
                        inner.metrics.link_handshake("", false);
                        debug!(%addr, "seed dial failed: {e}")
                    }
                }
            }
        }
        tokio::time::sleep(SEED_INTERVAL).await;
    }
}

/// How often seeds are looked up and dialled again.
const SEED_INTERVAL: Duration = Duration::from_secs(2);

/// Closes links that have carried no relayed connection for `[fabric] link_idle_ms`.
pub(super) async fn reap_idle_links(inner: Arc<Inner>) {
    let idle = inner.links.settings.link_idle;
    let mut every = tokio::time::interval((idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
    loop {
        every.tick().await;
        for p in inner.links().peers.values().flatten() {
            if p.usage.idle_for() >= idle {
                debug!(link = p.link_id, "closing an idle link");
                p.conn.close(CLOSE_IDLE, b"idle");
            }
        }
    }
}

/// Serves one link to another gateway until it closes. (Boxed: links open links, through
/// `link_to`, and a recursive future needs a name.)
pub(super) fn run_link(inner: Arc<Inner>, link: Linked, why: LinkReason) -> link::BoxFuture<'static, ()> {
    Box::pin(serve_link(inner, link, why))
}

async fn serve_link(inner: Arc<Inner>, link: Linked, why: LinkReason) {
    let peer = link.peer_name.clone();
    let conn = link.link.clone();
    if peer == inner.links.settings.name {
        // A seed that is our own address, seen from the accepting side.
        conn.close(CLOSE_NORMAL, b"that is me");
        return;
    }
    if inner.is_revoked(&peer, &link.grant.serial) {
        conn.close(CLOSE_REVOKED, b"certificate revoked");
        inner.refuse(&peer, "revoked", &format!("link: certificate {} is revoked", link.grant.serial));
        return;
    }
    let grant = inner.effective_grant(&peer, link.grant.clone());
    {
        let mut reg = inner.registry();
        reg.certify(&peer, &link.grant, true);
        reg.set_grant(&peer, grant);
    }
    let link_id = inner.links.next_id.fetch_add(1, Ordering::Relaxed);
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Msg>();
    let usage = LinkUsage::new();
    let first = {
        let mut st = inner.links();
        let links = st.peers.entry(peer.clone()).or_default();
        let since = tokio::time::Instant::now();
        let serial = link.grant.serial.clone();
        links.push(Peer {
            link_id,
            conn: conn.clone(),
            control: ctl_tx.clone(),
            usage: usage.clone(),
            why,
            since,
            serial,
        });
        links.len() == 1
    };
    inner.metrics.link_handshake(&peer, true);
    // Both gateways dial each other, so a peer may have two links for a while: the peer is up
    // once (log, `edist_link_events_total`), at its first link.
    if first {
        info!(%peer, link = link_id, why = why.as_str(), remote = %conn.remote_address(), "gateway link up");
        inner.metrics.link_up(&peer);
    } else {
        debug!(%peer, link = link_id, why = why.as_str(), "another link to the same peer (both dialled)");
        prune_duplicates_later(&inner, &peer);
    }
    let _ = ctl_tx.send(Msg::Control);
    let _ = ctl_tx.send(Msg::Nodes(inner.local_list()));
    for m in inner.relayed_lists(&peer) {
        let _ = ctl_tx.send(m);
    }
    // Our announcements go out on our own control stream.
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        let Ok(mut s) = writer_conn.open_uni().await else { return };
        while let Some(m) = ctl_rx.recv().await {
            if s.write_all(&m.encode()).await.is_err() {
                return;
            }
        }
    });
    let uni = {
        let (inner, peer, conn) = (inner.clone(), peer.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok(rx) = conn.accept_uni().await {
                let (inner, peer) = (inner.clone(), peer.clone());
                tokio::spawn(serve_incoming_stream(inner, peer, rx));
            }
        })
    };
    while let Ok((mut tx, rx)) = conn.accept_bi().await {
        if inner.closing.load(Ordering::Relaxed) {
            let _ = tx.write_all(&Msg::Refused(SessionRefusal::ShuttingDown.wire()).encode()).await;
            continue;
        }
        let (inner, peer, conn) = (inner.clone(), peer.clone(), conn.clone());
        let hold = usage.hold();
        tokio::spawn(async move {
            let _hold = hold;
            let mut msgs = MsgReader::new(rx);
            let mut first = msgs.next("open", On::BiFirst).await;
            let mut origin = None;
            if let Ok(Msg::Forwarded { origin: o }) = first {
                origin = Some(o);
                first = msgs.next("open", On::BiFirst).await;
            }
            match first {
                Ok(Msg::Open { relay, from, to, flags, creation }) => {
                    inner.sessions.fetch_add(1, Ordering::Relaxed);
                    let open = OpenReq { relay, from, to: to.clone(), flags, creation, origin };
                    if let Err(e) = session_to_local(inner.clone(), conn, peer, tx, msgs, open).await {
                        info!(%to, "relay ended: {e}");
                    }
                    inner.sessions.fetch_sub(1, Ordering::Relaxed);
                }
                // `On::BiFirst` admits `Open` and `Forwarded` only: this is a second `Forwarded`.
                Ok(other) => debug!(%peer, "relay stream: {other:?} where an open belongs"),
                Err(e) => debug!(%peer, "relay stream: {e}"),
            }
        });
    }
    writer.abort();
    uni.abort();
    let closed = conn.closed();
    let mut st = inner.links();
    // A link that died of silence says the peer (or the path to it) is gone: its sibling links
    // (both gateways dial, so there may be two) are as dead, only not noticed yet. Closing them
    // now keeps new sessions off them and lets the peer's nodes go down at once.
    let peer_gone = matches!(conn.closed(), Some(Closed::Lost(_)));
    let last = match st.peers.get_mut(&peer) {
        Some(links) => {
            links.retain(|l| l.link_id != link_id);
            if peer_gone {
                for l in links.iter() {
                    l.conn.close(CLOSE_NORMAL, b"a sibling link to the same peer timed out");
                }
            }
            links.is_empty()
        }
        None => false,
    };
    let shut_down = matches!(&closed, Some(Closed::ByPeer { code, .. }) if *code == u64::from(CLOSE_SHUTDOWN));
    if !last {
        debug!(%peer, link = link_id, reason = ?closed, "one of two links to the peer closed");
    } else if shut_down {
        info!(%peer, "gateway link down: the peer gateway shut down");
    } else {
        info!(%peer, reason = %inventory::closed_text(closed.as_ref()), "gateway link down");
    }
    if last {
        inner.metrics.link_down(&peer);
        st.peers.remove(&peer);
        drop(st);
        // A gateway that says it is going away takes its nodes with it, membership or not.
        if shut_down && inner.links.settings.membership {
            inner.forget_gateway(&peer);
        }
        // With membership the registry is membership's: a link closing (idle, say) says
        // nothing about the peer's nodes.
        if !inner.links.settings.membership {
            inner.forget_gateway(&peer);
            // And the gateways reached through it.
            let via: Vec<String> =
                inner.live().peers.iter().filter(|p| p.via.as_deref() == Some(&peer)).map(|p| p.name.clone()).collect();
            inner.forget_remote(|_, r| via.contains(&r.gateway));
        }
        inner.relayed_nodes_changed(&peer);
    }
}

/// Serves a stream the peer opened one way: a control stream (its announcements) or a bulk lane
/// of a session (see [`join_lane`]).
async fn serve_incoming_stream(inner: Arc<Inner>, peer: String, rx: RecvStream) {
    let mut msgs = MsgReader::new(rx);
    match msgs.next("control", On::UniFirst).await {
        Ok(Msg::Control) => read_announcements(&inner, &peer, msgs).await,
        Ok(Msg::Lane { relay, lane }) => join_lane(&inner, &peer, (relay, lane), msgs).await,
        // `On::UniFirst` admits nothing else.
        Ok(_) => {}
        Err(e) => debug!(%peer, "incoming stream: {e}"),
    }
}

/// Reads a peer's control stream: its node lists, and the nodes coming and going.
async fn read_announcements(inner: &Arc<Inner>, peer: &str, mut msgs: MsgReader<RecvStream>) {
    loop {
        // Control streams are long-lived: wait as long as it takes.
        let m = loop {
            match msgs.next("control", On::Control).await {
                Err(shell::SessionError::Timeout(_)) => continue,
                other => break other,
            }
        };
        match m {
            Ok(Msg::Nodes(nodes)) => {
                inner.replace_remote(peer, nodes);
                inner.relayed_nodes_changed(peer);
            }
            Ok(Msg::NodeUp(n)) => {
                inner.admit_remote(peer, n);
                inner.relayed_nodes_changed(peer);
            }
            Ok(Msg::NodeDown(name)) => {
                inner.forget_remote(|n, r| n == name && r.gateway == peer);
                inner.relayed_nodes_changed(peer);
            }
            Ok(Msg::RelayedNodes { gateway, nodes }) => inner.relayed_nodes(peer, gateway, nodes),
            // `On::Control` admits nothing else: another kind is an error, below.
            Ok(_) => {}
            Err(e) => {
                debug!(%peer, "control stream ended: {e}");
                return;
            }
        }
    }
}
