//! The gateway: [`Gateway`] and `Inner`, which composes its parts (`gateway/`: the node
//! `registry`, the `links` to other gateways, the `local` side, `announce`ments, `roles`). The
//! relayed connections between them are in [`crate::session`].

use crate::config::Config;
use crate::fabric::discovery::{self, Discovery};
use crate::fabric::envelope::Sealer;
use crate::fabric::gossip::{self, Command};
use crate::fabric::identity::TlsIdentity;
use crate::fabric::join::{JoinError, Joining};
use crate::fabric::link::Transport;
use crate::fabric::options::QuicOptions;
use crate::local::control::{self, LocalDirectory};
use crate::lookup;
use crate::metrics::{self, Metrics, MetricsSnapshot};
use crate::policy;
use crate::session::relay::Forwarded;
use crate::session::{budget, sync};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
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
use links::{accept_loop, reap_idle_links, seed_loop, LinkTable, Links};
pub(crate) use links::{link_to, LinkHold};
use local::Directory;
pub(crate) use local::{dynamic_name, OutboundGuard};
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
    pub(crate) cfg: Config,
    /// The local nodes' cookie; `None` only without a fabric, where nothing is relayed.
    pub(crate) cookie: Option<String>,
    /// Links to peer gateways, dial loops, members' addresses.
    links: Links,
    /// Local and remote nodes, impersonators, peers' grants.
    registry: Mutex<Registry<AbortHandle>>,
    pub(crate) metrics: Metrics,
    pub(crate) sessions: AtomicU64,
    /// Mergers of the sessions through this gateway, by session id (for lanes).
    pub(crate) mergers: Mutex<HashMap<u64, sync::Merger>>,
    /// Bytes all sessions together may hold towards the fabric.
    pub(crate) buffer: budget::Budget,
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
    /// Sessions this gateway forwards (`[fabric] relay`), by session id.
    pub(crate) forwards: Mutex<HashMap<u64, Forwarded>>,
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
            links: Links::new(&cfg),
            registry: Mutex::new(Registry::new(&cfg.host)),
            metrics: Metrics::default(),
            sessions: AtomicU64::new(0),
            mergers: Mutex::new(HashMap::new()),
            buffer: budget::Budget::new(cfg.fabric.gateway_buffer),
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
                max_datagram: cfg.fabric.max_datagram.unwrap_or_else(crate::fabric::options::host_max_datagram),
                stream_window: cfg.fabric.stream_window,
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// The links' table. Never held together with the registry.
    fn links(&self) -> MutexGuard<'_, LinkTable> {
        lock(&self.links.table)
    }

    /// The registry. Never held together with the links' table.
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry<AbortHandle>> {
        lock(&self.registry)
    }

    /// The local nodes' `net_ticktime` as configured (a node's plug may report another).
    pub(crate) fn configured_ticktime(&self) -> Duration {
        Duration::from_secs(self.cfg.local.net_ticktime)
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
            relays_open: self.sessions.load(Ordering::Relaxed),
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
