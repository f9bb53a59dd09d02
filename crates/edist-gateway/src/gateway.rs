//! The gateway: [`Gateway`] and `Inner`, which composes its parts (`gateway/`: the node
//! `registry`, the `links` to other gateways, the `local` side, `announce`ments, `roles`), and
//! the relayed connections between them (`relay_from_local`, `relay_to_local`, `carry`,
//! `forward`).

use crate::config::Config;
use crate::fabric::discovery::{self, Discovery};
use crate::fabric::envelope::Sealer;
use crate::fabric::gossip::{self, Command};
use crate::fabric::identity::TlsIdentity;
use crate::fabric::join::{JoinError, Joining};
use crate::fabric::link::{Link, RecvStream, SendStream, Transport};
use crate::fabric::options::QuicOptions;
use crate::local::control::{self, LocalDirectory};
use crate::lookup;
use crate::metrics::{self, Metrics, MetricsSnapshot};
use crate::policy;
use crate::relay::{self, MsgReader};
use crate::wire::Msg;
use edist_proto::dist::DFlags;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::info;

mod announce;
mod devices;
mod inventory;
mod links;
mod local;
mod registry;
mod reload;
mod roles;
mod shutdown;

pub use inventory::{LinkReason, LinkStatus, MemberStatus, PeerRole};
pub use links::CLOSE_DUPLICATE;
use links::{accept_loop, link_to, reap_idle_links, seed_loop, LinkHold, LinkTable, Links};
use local::{dynamic_name, Directory, OutboundGuard};
use registry::Registry;
use reload::Live;
pub use reload::{ReloadReport, ReloadStatus};
pub use shutdown::{ShutdownReport, CLOSE_SHUTDOWN};

/// Errors starting a gateway.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error(
        "no cookie for the local nodes, which a gateway with a fabric needs to check their handshakes with \
         nodes on other hosts: set `cookie` in the config, $EDIST_COOKIE, or ~/.erlang.cookie"
    )]
    NoCookie,
    #[error("fabric: {0}")]
    Fabric(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

pub(crate) struct Inner {
    cfg: Config,
    /// The local nodes' cookie; `None` only without a fabric, where nothing is relayed.
    cookie: Option<String>,
    /// Links to peer gateways, dial loops, members' addresses.
    links: Links,
    /// Local and remote nodes, impersonators, peers' grants.
    registry: Mutex<Registry<AbortHandle>>,
    metrics: Metrics,
    relays: AtomicU64,
    /// Mergers of the relayed connections through this gateway, by relay id (for lanes).
    mergers: Mutex<HashMap<u64, relay::Merger>>,
    /// Bytes all relays together may hold towards the fabric.
    buffer: relay::Budget,
    /// What a reload may change: peers, revocations, roles.
    live: Mutex<Arc<Live>>,
    /// The fabric's TLS material (reloadable), and membership's signer.
    creds: std::sync::OnceLock<Arc<crate::fabric::credentials::Credentials>>,
    sealer: std::sync::OnceLock<Sealer>,
    /// Tasks that take new work (local control, fabric accepts, seeds): stopped first on shutdown.
    intake: Mutex<Vec<AbortHandle>>,
    /// Set once a shutdown began: no new relayed connection is accepted.
    closing: std::sync::atomic::AtomicBool,
    /// The outcome of the last reload.
    last_reload: Mutex<Option<ReloadStatus>>,
    /// What each peer gateway has used of its role's shared limits (atoms, rates).
    peer_budgets: Mutex<HashMap<String, policy::SharedPeer>>,
    /// Refused traffic.
    refusals: crate::refusal_log::RefusalLog,
    /// The fabric's transport (for links opened on demand).
    transport: std::sync::OnceLock<Arc<dyn Transport>>,
    /// Membership, when `[fabric] membership` is on.
    gossip: std::sync::OnceLock<mpsc::UnboundedSender<Command>>,
    /// Bytes through the membership socket.
    gossip_traffic: Arc<gossip::Traffic>,
    /// Relayed connections this gateway forwards (`[fabric] relay`), by relay id.
    forwards: Mutex<HashMap<u64, Forwarded>>,
    /// Lookups of names not known yet, waiting for the fabric (see [`Inner::lookup`]).
    waiters: Mutex<lookup::Waiters>,
    /// When the gateway started.
    started: tokio::time::Instant,
    /// The hub of devices without a gateway, when `[devices] listen` is set.
    hub: std::sync::OnceLock<Arc<crate::device::Hub>>,
}

/// A running gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    transport: Option<Arc<dyn Transport>>,
    control_addr: std::net::SocketAddr,
    metrics_addr: Option<std::net::SocketAddr>,
    devices_addr: Option<std::net::SocketAddr>,
}

/// Links to peer gateways, for [`Gateway::link_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Live links (normally one per peer gateway).
    pub links: usize,
    /// Bytes sent on them since each link came up (UDP payload for QUIC, TCP payload for TLS/TCP).
    pub udp_tx_bytes: u64,
    /// Bytes received on them.
    pub udp_rx_bytes: u64,
    /// UDP payload bytes membership sent (since the gateway started).
    pub membership_tx_bytes: u64,
    /// UDP payload bytes membership received.
    pub membership_rx_bytes: u64,
}

/// A snapshot for `edist status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub name: String,
    /// Registered local nodes and their distribution ports.
    pub local_nodes: Vec<(String, u16)>,
    /// Local nodes that do not listen (`-dist_listen false`, dynamic names), known while they
    /// have relayed connections open.
    #[serde(default)]
    pub outbound_only: Vec<String>,
    pub remote_nodes: Vec<(String, String)>,
    pub peers: Vec<String>,
    pub impersonated: Vec<(String, u16)>,
    pub relays_open: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Traffic per peer and lane, refusals, handshake outcomes, link events.
    #[serde(default)]
    pub metrics: MetricsSnapshot,
    /// Per peer gateway under a restricted role: its role, atom budget left, capabilities held.
    #[serde(default)]
    pub policy: Vec<policy::PeerReport>,
    /// The gateways membership knows (`[fabric] membership`) and their state.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Every link to a peer gateway: why it is open, what it carries.
    #[serde(default)]
    pub links: Vec<LinkStatus>,
    /// The role of each known peer gateway here, and where it comes from.
    #[serde(default)]
    pub roles: Vec<PeerRole>,
    /// The gateway's process (`edist reload` signals it).
    #[serde(default)]
    pub pid: u32,
    /// The last reload (SIGHUP), if any.
    #[serde(default)]
    pub reload: Option<ReloadStatus>,
    /// Devices connected to this gateway as their hub (`[devices]`); each is also a local node.
    #[serde(default)]
    pub devices: Vec<String>,
}

impl Gateway {
    /// Starts the local control server and, when certificates for `cfg.name` exist, the fabric.
    pub async fn start(cfg: Config) -> Result<Gateway, GatewayError> {
        cfg.validate()?;
        let certs = &cfg.fabric.certs;
        let have_certs = certs.join(format!("{}.pem", cfg.name)).exists();
        // The cookie only checks the handshakes of relayed connections: a single host (no
        // fabric) relays nothing, since its nodes connect to each other directly.
        let cookie = cfg.cookie.clone().or_else(edist_node::cookie::default_cookie);
        if have_certs && cookie.is_none() {
            return Err(GatewayError::NoCookie);
        }
        let control_listener = TcpListener::bind(cfg.local.control).await.map_err(|e| GatewayError::Bind {
            what: "local control",
            addr: cfg.local.control,
            source: e,
        })?;
        let control_addr = control_listener.local_addr().unwrap_or(cfg.local.control);
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            cookie,
            links: Links::default(),
            registry: Mutex::new(Registry::new(&cfg.host)),
            metrics: Metrics::default(),
            relays: AtomicU64::new(0),
            mergers: Mutex::new(HashMap::new()),
            buffer: relay::Budget::new(cfg.fabric.gateway_buffer),
            live: Mutex::new(Arc::new(Live::new(&cfg)?)),
            creds: Default::default(),
            sealer: Default::default(),
            intake: Default::default(),
            closing: Default::default(),
            last_reload: Default::default(),
            peer_budgets: Mutex::new(HashMap::new()),
            refusals: Default::default(),
            transport: Default::default(),
            gossip: Default::default(),
            gossip_traffic: Default::default(),
            forwards: Default::default(),
            // One per control connection at most (the control port serves 256 at a time).
            waiters: Mutex::new(lookup::Waiters::new(control::ControlConfig::default().max_connections)),
            started: tokio::time::Instant::now(),
            hub: Default::default(),
        });
        let mut tasks = vec![];
        let dir: Arc<dyn LocalDirectory> = Arc::new(Directory(Arc::downgrade(&inner)));
        lock(&inner.intake).push(tokio::spawn(control::serve(control_listener, dir)).abort_handle());
        let mut metrics_addr = None;
        if let Some(addr) = cfg.metrics.listen {
            let (l, bound) =
                metrics::http::bind(addr).await.map_err(|e| GatewayError::Bind { what: "metrics", addr, source: e })?;
            let weak = Arc::downgrade(&inner);
            let render = Arc::new(move || weak.upgrade().map(|i| i.render_metrics()).unwrap_or_default());
            tasks.push(tokio::spawn(metrics::http::serve(l, render)).abort_handle());
            metrics_addr = Some(bound);
        }

        let mut transport = None;
        if have_certs {
            let id = TlsIdentity::load(certs, &cfg.name).map_err(|e| GatewayError::Fabric(e.to_string()))?;
            let creds = crate::fabric::credentials::Credentials::new(&id)
                .map_err(|e| GatewayError::Fabric(format!("{}: {e}", certs.display())))?;
            let _ = inner.creds.set(creds.clone());
            let opts = QuicOptions {
                keep_alive: Duration::from_millis(cfg.fabric.keep_alive_ms),
                idle_timeout: Duration::from_millis(cfg.fabric.idle_timeout_ms),
                congestion: cfg.fabric.congestion,
                ..QuicOptions::default()
            };
            let t = crate::fabric::bind(cfg.fabric.transport, cfg.fabric.listen, &creds, &opts, &cfg.name)
                .await
                .map_err(|e| GatewayError::Fabric(e.to_string()))?;
            lock(&inner.intake).push(tokio::spawn(accept_loop(inner.clone(), t.clone())).abort_handle());
            let _ = inner.transport.set(t.clone());
            if cfg.fabric.membership {
                let fabric = t.local_addr().map_err(|e| GatewayError::Fabric(e.to_string()))?;
                tasks.extend(start_membership(&inner, &id, fabric).await?);
            }
            if !cfg.fabric.membership {
                inner.sync_dialers();
            }
            if !cfg.fabric.seeds.is_empty() && !cfg.fabric.membership {
                let (st, dns) = discovery::from_config(&cfg.fabric.seeds);
                let sources: Vec<Box<dyn Discovery>> = vec![Box::new(st), Box::new(dns)];
                lock(&inner.intake).push(tokio::spawn(seed_loop(inner.clone(), t.clone(), sources)).abort_handle());
            }
            transport = Some(t);
        } else if !cfg.peers.is_empty() {
            return Err(GatewayError::Fabric(format!(
                "peers are configured but {} has no certificate for {} (run `edist certs issue {}`)",
                certs.display(),
                cfg.name,
                cfg.name
            )));
        }
        let devices_addr = devices::start(&inner).await?;
        let fabric = transport.as_ref().and_then(|t| t.local_addr().ok()).map(|a| a.to_string());
        info!(
            name = %cfg.name,
            control = %control_addr,
            fabric = fabric.as_deref().unwrap_or("none (no certificate: this host only)"),
            metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            "gateway started"
        );
        Ok(Gateway { inner, tasks: Arc::new(Mutex::new(tasks)), transport, control_addr, metrics_addr, devices_addr })
    }

    /// The local control address (for `-edist_gateway`).
    pub fn control_addr(&self) -> std::net::SocketAddr {
        self.control_addr
    }

    /// The fabric address actually bound.
    pub fn fabric_addr(&self) -> Option<std::net::SocketAddr> {
        self.transport.as_ref().and_then(|t| t.local_addr().ok())
    }

    /// Where devices connect (`[devices] listen`, as bound).
    pub fn devices_addr(&self) -> Option<std::net::SocketAddr> {
        self.devices_addr
    }

    /// The Prometheus endpoint's address, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// This gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What the gateway knows right now.
    pub fn status(&self) -> StatusReport {
        self.inner.status()
    }

    /// The links to peer gateways and what they have cost on the wire (UDP bytes, QUIC's own
    /// keep-alives, acks and handshakes included), and what membership has.
    pub fn link_stats(&self) -> LinkStats {
        let st = self.inner.links();
        let mut s = LinkStats::default();
        for (_, p) in st.all() {
            let (tx, rx) = p.conn.wire_bytes();
            s.links += 1;
            s.udp_tx_bytes += tx;
            s.udp_rx_bytes += rx;
        }
        s.membership_tx_bytes = self.inner.gossip_traffic.tx.load(Ordering::Relaxed);
        s.membership_rx_bytes = self.inner.gossip_traffic.rx.load(Ordering::Relaxed);
        s
    }

    /// Stops everything: links close (peers see this gateway's nodes go down), listeners close.
    pub fn shutdown(&self) {
        if let Some(t) = &self.transport {
            t.close();
        }
        self.inner.stop_intake();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let impersonators = self.inner.registry().take_impersonators();
        for task in impersonators {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// The links' table. Never held together with the registry.
    fn links(&self) -> MutexGuard<'_, LinkTable> {
        lock(&self.links.table)
    }

    /// The registry. Never held together with the links' table.
    fn registry(&self) -> MutexGuard<'_, Registry<AbortHandle>> {
        lock(&self.registry)
    }

    /// The local nodes' `net_ticktime` as configured (a node's plug may report another).
    fn configured_ticktime(&self) -> Duration {
        Duration::from_secs(self.cfg.local.net_ticktime)
    }

    /// Lane settings of relays towards `peer`.
    fn lanes(&self, peer: &str) -> relay::LaneConfig {
        let compress = self.live().peers.iter().any(|p| p.name == peer && p.compress);
        relay::LaneConfig {
            lanes: self.cfg.fabric.lanes,
            relay_buffer: self.cfg.fabric.relay_buffer,
            gateway_buffer: self.buffer.clone(),
            socket_buffer: Some(self.cfg.local.socket_buffer),
            net_ticktime: relay::Ticktime::new(self.configured_ticktime()),
            plug: None,
            link: None,
            compress_above: compress.then_some(self.cfg.fabric.compress_threshold),
        }
    }

    fn status(&self) -> StatusReport {
        let (local_nodes, outbound_only, remote_nodes, impersonated) = {
            let reg = self.registry();
            // A device nobody dialled yet has no port: shown with 0.
            (reg.local_ports(), reg.outbound_only(), reg.remote_nodes(), reg.impersonated())
        };
        let st = self.links();
        let peers = st.linked();
        let links = inventory::links(&st);
        drop(st);
        let (bytes_in, bytes_out) = self.metrics.totals();
        let members = self.member_statuses();
        let roles = self.peer_roles(&peers, &members);
        StatusReport {
            name: self.cfg.name.clone(),
            local_nodes,
            outbound_only,
            remote_nodes,
            peers,
            impersonated,
            relays_open: self.relays.load(Ordering::Relaxed),
            bytes_in,
            bytes_out,
            metrics: self.metrics.snapshot(),
            policy: self.policy_reports(),
            members,
            links,
            roles,
            pid: std::process::id(),
            reload: lock(&self.last_reload).clone(),
            devices: self.hub.get().map(|h| h.devices()).unwrap_or_default(),
        }
    }

    /// The Prometheus exposition: the counters plus gauges of the current state.
    fn render_metrics(&self) -> String {
        let st = self.status();
        let per = |f: fn(&policy::PeerReport) -> Option<u64>| {
            st.policy.iter().filter_map(|p| Some((p.peer.clone(), f(p)?))).collect::<Vec<_>>()
        };
        let per_peer = [
            (
                "edist_policy_atoms_left",
                "Atoms new to the local nodes a peer gateway may still send (its role's atom budget left)",
                per(|p| p.atoms_left),
            ),
            (
                "edist_policy_atoms_charged",
                "New atoms a peer gateway's nodes sent here",
                per(|p| Some(p.usage.atoms_charged)),
            ),
            (
                "edist_policy_grants",
                "Pids, aliases and ports handed to a peer gateway's nodes (its capabilities)",
                per(|p| Some(p.usage.grants)),
            ),
            ("edist_policy_links", "Links between local processes and a peer gateway's", per(|p| Some(p.usage.links))),
        ];
        self.metrics.render_with(&per_peer_scalars(&st), &per_peer)
    }
}

/// The gateway-wide gauges of a status.
fn per_peer_scalars(st: &StatusReport) -> Vec<(&'static str, &'static str, u64)> {
    let n = |v: usize| v as u64;
    vec![
        ("edist_local_nodes", "Local nodes registered", n(st.local_nodes.len())),
        ("edist_remote_nodes", "Remote nodes announced by peer gateways", n(st.remote_nodes.len())),
        ("edist_peer_links", "Peer gateways with a link up", n(st.peers.len())),
        ("edist_impersonated_nodes", "Loopback listeners impersonating remote nodes", n(st.impersonated.len())),
        ("edist_relays_open", "Relayed connections open", st.relays_open),
    ]
}

/// Accepts local nodes' connections to a remote node `target`.
async fn impersonate(inner: Weak<Inner>, listener: TcpListener, target: String) {
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
            inner.relays.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = relay_from_local(&inner, sock, &target).await {
                info!(%target, "relay ended: {e}");
            }
            inner.relays.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn relay_from_local(inner: &Arc<Inner>, mut sock: TcpStream, target: &str) -> Result<(), relay::RelayError> {
    let _ = sock.set_nodelay(true);
    let (creation, gateway) = {
        let reg = inner.registry();
        let r = reg.remote(target).ok_or_else(|| relay::RelayError::Refused(format!("{target} is unknown")))?;
        (r.creation, r.gateway.clone())
    };
    let Some(cookie) = inner.cookie.as_deref() else {
        return Err(relay::RelayError::Refused("no cookie to check local nodes with".into()));
    };
    let mut leg = relay::near_leg(target, creation, cookie);
    let dial = relay::read_local_name(&mut sock, &mut leg).await?;
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
            inner.metrics.refused("local", "name_taken");
            leg.refuse()?;
            sock.write_all(&leg.take_node_output()).await?;
            return Err(relay::RelayError::Refused(format!("{from} may not dial out: {why}")));
        }
    };
    let (conn, link_peer, _hold, (mut tx, rx)) = open_relay_stream(inner, &gateway).await?;
    let relay_id: u64 = rand::random();
    // A role that hides the far node: it sees ours as hidden, and ours it (NearLeg::open).
    let hide = inner.role_of(&gateway).1.hidden;
    let open = leg.open(relay_id, named, hide)?;
    AsyncWriteExt::write_all(&mut tx, &open.encode()).await?;
    let (merger, rxs) = MergerGuard::register(inner, relay_id, (&gateway, &link_peer), (&from, target));
    let mut msgs = MsgReader::new(rx);
    let done = relay::finish_local_leg(&mut sock, &mut leg, &mut msgs, &mut tx).await;
    if let Err(relay::RelayError::Handshake(edist_proto::dist::handshake::HandshakeError::BadDigest)) = &done {
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
    carry(inner, sock, msgs, tx, &leftover, (merger, rxs), conn, relay_id, (&from, &gateway)).await
}

/// A new stream for a relayed connection to `gateway`'s nodes, on its link (opened if need be).
async fn open_relay_stream(
    inner: &Arc<Inner>,
    gateway: &str,
) -> Result<(Arc<dyn Link>, String, LinkHold, (SendStream, RecvStream)), relay::RelayError> {
    let mut error = None;
    // Twice: the link may close under us (the far side found it idle), then a fresh one.
    for _ in 0..2 {
        let (conn, peer, hold) = link_to(inner, gateway).await?;
        match conn.open_bi().await {
            Ok(s) => return Ok((conn, peer, hold, s)),
            Err(e) => error = Some(e),
        }
    }
    Err(relay::RelayError::Refused(format!("link to {gateway}: {}", error.map(|e| e.to_string()).unwrap_or_default())))
}

/// The data phase of a relay, on either gateway (see [`relay::pump`]).
#[allow(clippy::too_many_arguments)]
async fn carry(
    inner: &Arc<Inner>,
    sock: TcpStream,
    msgs: MsgReader<RecvStream>,
    tx: SendStream,
    leftover: &[u8],
    (merger, rxs): (MergerGuard, relay::MergerRx),
    conn: Arc<dyn Link>,
    relay_id: u64,
    (node, peer_gateway): (&str, &str),
) -> Result<(), relay::RelayError> {
    let (rx, buf) = msgs.into_parts();
    let mut lanes = inner.lanes(peer_gateway);
    lanes.link = Some(conn.clone());
    // The local node's plug, where it has one: its ticktime, and holds on its senders.
    let plug = inner.registry().local(node).and_then(|l| l.plug.clone());
    if let Some(plug) = plug {
        lanes.net_ticktime = relay::Ticktime::reported_into(inner.configured_ticktime(), plug.ticktime_ms());
        lanes.plug = Some(plug);
    }
    relay::pump(
        sock,
        rx,
        tx,
        leftover,
        &buf,
        merger.tx(),
        rxs,
        lane_opener(conn, relay_id),
        lanes,
        inner.metrics.relay(peer_gateway),
    )
    .await
}

/// Opens lane streams of relay `relay_id` on `conn`.
fn lane_opener(conn: Arc<dyn Link>, relay_id: u64) -> relay::LaneOpener {
    Box::new(move |lane| {
        let conn = conn.clone();
        Box::pin(async move {
            let mut s = conn.open_uni().await?;
            s.write_all(&Msg::Lane { relay: relay_id, lane }.encode()).await?;
            Ok(s)
        })
    })
}

/// A relay's merger, registered for incoming lanes while the relay lives.
struct MergerGuard {
    inner: Arc<Inner>,
    id: u64,
    tx: relay::Merger,
}

impl MergerGuard {
    /// `origin` is the gateway whose nodes are on the other end (its role applies), `link_peer`
    /// the gateway the link goes to (only it may add lanes): the same unless relayed.
    /// `nodes`: (local node, remote node) of the connection.
    fn register(
        inner: &Arc<Inner>,
        id: u64,
        (origin, link_peer): (&str, &str),
        nodes: (&str, &str),
    ) -> (MergerGuard, relay::MergerRx) {
        let (to_node, rx) = mpsc::channel(64);
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let tx = relay::Merger {
            to_node,
            replies,
            peer: link_peer.into(),
            policy: inner.inbound_policy(origin, nodes),
            sync: Arc::default(),
        };
        lock(&inner.mergers).insert(id, tx.clone());
        (MergerGuard { inner: inner.clone(), id, tx }, (rx, replies_rx))
    }

    fn tx(&self) -> relay::Merger {
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
const ANNOUNCEMENT_WAIT: Duration = Duration::from_secs(1);

/// An `Open` from a peer gateway: `from` (behind `origin`, the peer itself unless the peer
/// relays for us and forwarded it) dials `to`.
struct OpenReq {
    relay: u64,
    from: String,
    to: String,
    flags: u64,
    creation: u32,
    origin: Option<String>,
}

/// True once `from` is a node `gateway` announced; a node that just registered over there
/// dials at once, and its announcement travels on another stream of the link: it may arrive a
/// little after the `Open`, so wait for it briefly.
async fn announced_by(inner: &Inner, from: &str, gateway: &str) -> bool {
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

async fn relay_to_local(
    inner: Arc<Inner>,
    conn: Arc<dyn Link>,
    peer_gateway: String,
    mut tx: SendStream,
    mut msgs: MsgReader<RecvStream>,
    open: OpenReq,
) -> Result<(), relay::RelayError> {
    let OpenReq { relay: relay_id, from, to, flags, creation, origin } = open;
    let port = inner.local_port(&to);
    if port.is_none() && origin.is_none() && inner.cfg.fabric.relay {
        let target = inner.registry().owner_of(&to).map(str::to_string);
        // Between a gateway we relay for and any other.
        if let Some(target) = target.filter(|g| inner.relays_for(g) || inner.relays_for(&peer_gateway)) {
            let open = Msg::Open { relay: relay_id, from, to, flags, creation };
            return forward(&inner, conn, &peer_gateway, tx, msgs, open, &target).await;
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
        let _ =
            tx.write_all(&Msg::Refused(format!("{to} is not here or {from} is not {peer_gateway}'s")).encode()).await;
        inner.metrics.refused(&peer_gateway, "unknown_node");
        return Err(relay::RelayError::Refused(format!("{from} -> {to}")));
    };
    let origin = origin.unwrap_or_else(|| peer_gateway.clone());
    let Some(cookie) = inner.cookie.as_deref() else {
        let _ = tx.write_all(&Msg::Refused("no cookie for the local nodes".into()).encode()).await;
        return Err(relay::RelayError::Refused(format!("{from} -> {to}: no cookie for the local nodes")));
    };
    let (merger, rxs) = MergerGuard::register(&inner, relay_id, (&origin, &peer_gateway), (&to, &from));
    // A role that hides the peer's nodes: the handshake makes this a hidden connection both ways.
    let hide = inner.role_of(&origin).1.hidden;
    let dialled =
        relay::dial_local_target(port, &from, &to, DFlags(flags), creation, cookie, &mut msgs, &mut tx, hide).await;
    let (sock, leftover) = inner.metrics.handshake(&origin, false, dialled)?;
    info!(%from, %to, via = ?(origin != peer_gateway).then_some(&peer_gateway), "relayed connection up");
    carry(&inner, sock, msgs, tx, &leftover, (merger, rxs), conn, relay_id, (&to, &origin)).await
}

/// Passes a relayed connection from `peer`'s node on to `target`, a gateway this one relays
/// for: its stream and lanes are spliced to new ones on the link to `target`. The target's
/// gateway sees who the dialler is behind (`Forwarded`) and applies its own policy.
async fn forward(
    inner: &Arc<Inner>,
    conn: Arc<dyn Link>,
    peer: &str,
    mut tx: SendStream,
    msgs: MsgReader<RecvStream>,
    open: Msg,
    target: &str,
) -> Result<(), relay::RelayError> {
    let Msg::Open { relay: relay_id, ref from, .. } = open else { return Ok(()) };
    let refuse = |why: String| relay::RelayError::Refused(why);
    if !announced_by(inner, from, peer).await {
        let _ = tx.write_all(&Msg::Refused(format!("{from} is not {peer}'s")).encode()).await;
        inner.metrics.refused(peer, "unknown_node");
        return Err(refuse(format!("forwarding {from}: not {peer}'s")));
    }
    let (out, _, _hold, (mut out_tx, mut out_rx)) = open_relay_stream(inner, target).await?;
    out_tx.write_all(&Msg::Forwarded { origin: peer.to_string() }.encode()).await?;
    out_tx.write_all(&open.encode()).await?;
    let _entry = ForwardGuard::register(inner, relay_id, (peer, conn), (target, out));
    let (mut rx, pending) = msgs.into_parts();
    out_tx.write_all(&pending).await?;
    info!(%from, via = %inner.cfg.name, %target, "forwarding a relayed connection");
    let there = tokio::io::copy(&mut rx, &mut out_tx);
    let back = tokio::io::copy(&mut out_rx, &mut tx);
    // Whichever way ends first ends the connection.
    tokio::select! {
        _ = there => {}
        _ = back => {}
    }
    Ok(())
}

/// The two links of a forwarded relayed connection, by relay id (for its lanes).
type Forwarded = ((String, Arc<dyn Link>), (String, Arc<dyn Link>));

/// A forwarded connection's entry in [`Inner::forwards`] while it lives.
struct ForwardGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl ForwardGuard {
    fn register(inner: &Arc<Inner>, id: u64, a: (&str, Arc<dyn Link>), b: (&str, Arc<dyn Link>)) -> ForwardGuard {
        lock(&inner.forwards).insert(id, ((a.0.to_string(), a.1), (b.0.to_string(), b.1)));
        ForwardGuard { inner: inner.clone(), id }
    }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        lock(&self.inner.forwards).remove(&self.id);
    }
}

/// Splices a lane of a forwarded connection, arriving from `peer`, to a new lane on the other link.
async fn forward_lane(
    inner: &Arc<Inner>,
    (relay, lane): (u64, u8),
    peer: &str,
    mut rx: RecvStream,
    pending: &[u8],
) -> std::io::Result<()> {
    let other = lock(&inner.forwards).get(&relay).and_then(|((a, la), (b, lb))| match peer {
        p if p == a => Some(lb.clone()),
        p if p == b => Some(la.clone()),
        _ => None,
    });
    let Some(other) = other else { return Ok(()) };
    let mut out = other.open_uni().await?;
    out.write_all(&Msg::Lane { relay, lane }.encode()).await?;
    out.write_all(pending).await?;
    tokio::io::copy(&mut rx, &mut out).await?;
    Ok(())
}

/// Starts membership (see [`crate::fabric::join`]) and the idle-link reaper.
async fn start_membership(
    inner: &Arc<Inner>,
    id: &TlsIdentity,
    fabric: std::net::SocketAddr,
) -> Result<Vec<AbortHandle>, GatewayError> {
    let cfg = &inner.cfg;
    let (st, dns) = discovery::from_config(&cfg.fabric.seeds);
    let peers = discovery::StaticSeeds(cfg.peers.iter().filter_map(|p| p.addr).collect());
    let sources: Vec<Box<dyn Discovery>> = vec![Box::new(st), Box::new(dns), Box::new(peers)];
    // The fabric's verifier: a reloaded ca.pem applies to membership datagrams too.
    let verifier = inner.creds.get().map(|c| c.client_verifier());
    let joining =
        Joining::bind(&cfg.name, fabric, cfg.fabric.advertise, sources, id, verifier).await.map_err(|e| match e {
            JoinError::Bind { addr, source } => GatewayError::Bind { what: "membership", addr, source },
            JoinError::Failed(why) => GatewayError::Fabric(format!("membership: {why}")),
        })?;
    let _ = inner.sealer.set(joining.sealer().clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Command::Nodes(inner.local_list()));
    let _ = inner.gossip.set(tx.clone());
    let weak = Arc::downgrade(inner);
    let on_event = move |e| {
        if let Some(i) = weak.upgrade() {
            i.membership_event(e)
        }
    };
    let lonely = {
        let inner = inner.clone();
        move || inner.links().no_members()
    };
    let mut tasks = joining.run((tx, rx), inner.gossip_traffic.clone(), on_event, lonely);
    tasks.push(tokio::spawn(reap_idle_links(inner.clone())).abort_handle());
    Ok(tasks)
}

// The relay's errors as the handshake metrics count them: here, where the two meet, so that
// the metrics do not import the relay (which reports into them).
impl metrics::HandshakeOutcome for relay::RelayError {
    fn outcome(&self) -> &'static str {
        use relay::RelayError as E;
        match self {
            E::Refused(_) => "refused",
            E::Timeout(_) => "timeout",
            E::Handshake(edist_proto::dist::handshake::HandshakeError::BadDigest) => "bad_cookie",
            E::Handshake(_) => "bad_handshake",
            _ => "error",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relay_errors_count_as_their_handshake_outcome() {
        use crate::metrics::HandshakeOutcome;
        use edist_proto::dist::handshake::HandshakeError;
        assert_eq!(relay::RelayError::Timeout("x").outcome(), "timeout");
        assert_eq!(relay::RelayError::Refused("x".into()).outcome(), "refused");
        assert_eq!(relay::RelayError::Handshake(HandshakeError::BadDigest).outcome(), "bad_cookie");
        assert_eq!(relay::RelayError::StreamClosed.outcome(), "error");
    }
}
