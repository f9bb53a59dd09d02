//! The gateway's local control port: where the `edist_epmd` plug of every BEAM node on this
//! host registers its name and looks other nodes up.
//!
//! The wire protocol is EPMD's (reference §1, codecs in [`edist_proto::epmd`]), with one
//! edist-specific meaning: PORT_PLEASE2_REQ carries the **full** node name (`b@hostB`) and
//! the answer is the loopback port where that node, or the gateway impersonating it, accepts
//! distribution connections.
//!
//! * ALIVE2_REQ registers a node in a [`LocalDirectory`] under the name it carries: the full
//!   name (`b@10.0.0.2`, `b@host.example.com`) as the plug sends it, or, from a client that
//!   sends only the alive part as epmd expects, `alive@<this host>` (see [`full_node_name`]).
//!   The connection stays open for the node's lifetime, and its close drops the
//!   [`Registration`], which unregisters.
//! * PORT_PLEASE2_REQ is answered from [`LocalDirectory::lookup`] (which may wait, bounded, for
//!   a name the directory does not know yet), NAMES_REQ from [`LocalDirectory::names`]; both
//!   connections close after the answer, as with epmd. Each connection has a task of its own,
//!   so a lookup that waits holds up nobody else.
//! * DUMP, KILL and STOP are not served: the connection is closed.
//!
//! Only loopback peers are served; the number of connections waiting for or being answered is
//! bounded, and so is the number of live registrations; a request must arrive complete within
//! a timeout and is at most [`epmd::MAX_REQUEST_LEN`] bytes. Nothing a peer sends can panic
//! the server.

use super::plug::{Plug, Reports};
use crate::fabric::link::BoxFuture;
use edist_proto::epmd::{self, Alive2Resp, NamesResp, NodeInfo, Port2Resp, Request};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// The default address of the control port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:4370";

/// Where the gateway keeps the nodes of its own host.
pub trait LocalDirectory: Send + Sync {
    /// Registers `name` listening for distribution on loopback `port`: a full node name
    /// (`alive@host`, any host part), or an alive part alone for `alive@<this host>`. The name
    /// stays registered until the returned [`Registration`] is dropped. `plug` is the line to
    /// the node's plug on this registration (it may never speak).
    fn register(&self, name: &str, port: u16, plug: Plug) -> Result<Registration, RegisterError>;
    /// The loopback port where `full_name` (`name@host`, local or remote) accepts
    /// distribution connections, if it is known now.
    fn resolve(&self, full_name: &str) -> Option<u16>;
    /// [`LocalDirectory::resolve`], for PORT_PLEASE2: a directory that can still learn of
    /// `full_name` (a gateway asking the fabric) may wait for it, briefly — `net_kernel` waits
    /// for this answer. By default, what `resolve` knows now.
    fn lookup<'a>(&'a self, full_name: &'a str) -> BoxFuture<'a, Option<u16>> {
        Box::pin(std::future::ready(self.resolve(full_name)))
    }
    /// The registered local nodes: alive name and port, as NAMES_REQ lists them.
    fn names(&self) -> Vec<(String, u16)>;
    /// The gateway's status as JSON, served for DUMP_REQ (what `edist status` sends).
    fn status_json(&self) -> String {
        "{}".to_string()
    }
}

/// A live registration: the node's creation, and a guard chosen by the directory whose drop
/// unregisters the name.
pub struct Registration {
    creation: u32,
    _guard: Box<dyn Send>,
}

impl Registration {
    /// A registration with `creation` (which should be >= 4, see reference §1) that lasts as
    /// long as `guard` lives.
    pub fn new(creation: u32, guard: Box<dyn Send>) -> Registration {
        Registration { creation, _guard: guard }
    }

    /// The creation handed to the node.
    pub fn creation(&self) -> u32 {
        self.creation
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("creation", &self.creation).finish_non_exhaustive()
    }
}

/// Why a name was not registered. The plug makes OTP report every one of them as "the name
/// ... seems to be in use by another Erlang node" (ALIVE2 has a single error code).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The full name is registered already (or, for a gateway, known as a remote node).
    #[error("the name is already registered")]
    Duplicate,
    /// The directory is gone or shutting down.
    #[error("the directory is unavailable")]
    Unavailable,
    /// The alive name is not acceptable.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The directory refuses for another reason (policy, capacity, ...).
    #[error("registration refused: {0}")]
    Refused(String),
}

/// The full node name a registration of `name` stands for: `name` itself when it has a host
/// part (`b@10.0.0.2`: long names, FQDNs and host parts other than this host's are kept as the
/// node has them, since other nodes dial exactly that name), else `name@default_host`.
///
/// Refused: an empty alive or host part, more than one `@`, control characters (the NAMES
/// answer is line-based), and names over 255 bytes (OTP's limit for atoms).
pub fn full_node_name(name: &str, default_host: &str) -> Result<String, RegisterError> {
    let invalid = |reason| RegisterError::InvalidName { name: name.to_owned(), reason };
    let full = match name.split_once('@') {
        Some(_) => name.to_owned(),
        None => format!("{name}@{default_host}"),
    };
    let (alive, host) = full.split_once('@').ok_or_else(|| invalid("no host part"))?;
    if alive.is_empty() || host.is_empty() {
        return Err(invalid("empty alive or host part"));
    }
    if host.contains('@') {
        return Err(invalid("more than one '@'"));
    }
    if full.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    if full.len() > 255 {
        return Err(invalid("longer than 255 bytes"));
    }
    Ok(full)
}

/// Limits of the control server.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Connections that have not registered a node (waiting for a request or being answered).
    pub max_connections: usize,
    /// Live registrations (each keeps its connection open).
    pub max_registrations: usize,
    /// Time allowed for a complete request to arrive.
    pub request_timeout: Duration,
    /// Time allowed for writing an answer.
    pub write_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            max_connections: 256,
            max_registrations: 4096,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves the control protocol on `listener` with the default [`ControlConfig`] until the
/// future is dropped. Dropping it closes every connection and so drops every registration.
pub async fn serve(listener: TcpListener, registry: Arc<dyn LocalDirectory>) {
    serve_with(listener, registry, ControlConfig::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(listener: TcpListener, registry: Arc<dyn LocalDirectory>, config: ControlConfig) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let reg_slots = Arc::new(Semaphore::new(config.max_registrations));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        tracing::warn!("control port: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !is_loopback(&peer) {
                    tracing::warn!(%peer, "control port: refused a connection from a non-loopback peer");
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "control port: too many connections, refused one");
                    continue;
                };
                let conn = Conn {
                    stream,
                    peer,
                    registry: registry.clone(),
                    config: config.clone(),
                    reg_slots: reg_slots.clone(),
                    local_port,
                };
                tasks.spawn(conn.run(permit));
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        tracing::error!("control port: a connection task panicked: {e}");
                    }
                }
            }
        }
    }
}

fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<dyn LocalDirectory>,
    config: Arc<ControlConfig>,
    reg_slots: Arc<Semaphore>,
    local_port: u16,
}

impl Conn {
    async fn run(mut self, permit: OwnedSemaphorePermit) {
        let request = match timeout(self.config.request_timeout, read_request(&mut self.stream)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return, // closed before sending anything
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, "control port: bad request: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "control port: no complete request in time");
                return;
            }
        };
        match request {
            Request::Alive2(req) => self.register(req, permit).await,
            Request::PortPlease2 { name } => {
                let resp = match self.registry.lookup(&name).await {
                    Some(port) => {
                        tracing::debug!(%name, port, "control port: resolved");
                        Port2Resp::Ok(NodeInfo {
                            port,
                            node_type: epmd::NODE_TYPE_NORMAL,
                            protocol: epmd::PROTOCOL_TCP,
                            high: epmd::DIST_HIGH,
                            low: epmd::DIST_LOW,
                            name: name.clone(),
                            extra: Vec::new(),
                        })
                    }
                    None => {
                        tracing::debug!(%name, "control port: unknown node");
                        Port2Resp::Err(1)
                    }
                };
                // Encoding fails only for names the decoder would not have accepted.
                let bytes = resp.encode().unwrap_or_else(|_| vec![epmd::PORT2_RESP, 1]);
                self.answer(&bytes).await;
            }
            Request::Names => {
                let entries = self
                    .registry
                    .names()
                    .into_iter()
                    .filter(|(name, _)| epmd::validate_name(name).is_ok() && !name.contains('\n'))
                    .collect();
                let resp = NamesResp { epmd_port: u32::from(self.local_port), entries };
                let bytes = resp.encode().unwrap_or_else(|_| u32::from(self.local_port).to_be_bytes().to_vec());
                self.answer(&bytes).await;
            }
            Request::Dump => {
                // edist's own meaning of DUMP: the gateway's status, as JSON after the port.
                let mut bytes = u32::from(self.local_port).to_be_bytes().to_vec();
                bytes.extend_from_slice(self.registry.status_json().as_bytes());
                self.answer(&bytes).await;
            }
            other => {
                tracing::debug!(peer = %self.peer, tag = other.tag(), "control port: request not served");
            }
        }
    }

    async fn register(mut self, req: epmd::Alive2Req, permit: OwnedSemaphorePermit) {
        let (plug, mut commands) = Plug::new();
        let result = match self.reg_slots.clone().try_acquire_owned() {
            Ok(slot) => self.registry.register(&req.name, req.port, plug.clone()).map(|reg| (reg, slot)),
            Err(_) => {
                Err(RegisterError::Refused(format!("{} registrations are live already", self.config.max_registrations)))
            }
        };
        let (registration, slot) = match result {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(name = %req.name, port = req.port, "control port: registration refused: {e}");
                let resp = Alive2Resp { result: 1, creation: 0 };
                let bytes = if req.high >= 6 { resp.encode() } else { resp.encode_v5().unwrap_or_default() };
                self.answer(&bytes).await;
                return;
            }
        };
        let creation = registration.creation();
        let bytes = if req.high >= 6 {
            Alive2Resp { result: 0, creation }.encode()
        } else {
            // A version-5 node only knows 2-bit creations.
            Alive2Resp { result: 0, creation: creation % 3 + 1 }.encode_v5().unwrap_or_default()
        };
        if !self.write(&bytes).await {
            return;
        }
        tracing::info!(name = %req.name, port = req.port, creation, "control port: node registered");
        // From now on this connection counts against the registrations, not the requests.
        drop(permit);
        // The node stays registered until it closes the connection. A plug reports on it and
        // takes commands (see `plug`); anything else a node sends is ignored, as epmd does.
        let mut reports = Reports::default();
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                n = self.stream.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        for r in reports.push(buf.get(..n).unwrap_or_default()) {
                            tracing::debug!(name = %req.name, "control port: plug reports {r:?}");
                            plug.report(&r);
                        }
                    }
                },
                Some(c) = commands.recv() => {
                    if !self.write(&c).await {
                        break;
                    }
                }
            }
        }
        drop(registration);
        drop(slot);
        tracing::info!(name = %req.name, port = req.port, "control port: node unregistered");
    }

    /// Writes a one-shot answer and closes.
    async fn answer(mut self, bytes: &[u8]) {
        if self.write(bytes).await {
            let _ = timeout(self.config.write_timeout, self.stream.shutdown()).await;
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> bool {
        match timeout(self.config.write_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, "control port: write failed: {e}");
                false
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "control port: write timed out");
                false
            }
        }
    }
}

#[derive(Debug, Error)]
enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Epmd(#[from] epmd::EpmdError),
    #[error("connection closed inside a request")]
    Truncated,
}

/// Reads one request; `Ok(None)` when the peer closed without sending a byte. The buffer never
/// exceeds one maximal request plus one read.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, ReadError> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 512];
    loop {
        if let Some((req, _)) = Request::decode(&buf)? {
            return Ok(Some(req));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(ReadError::Truncated) };
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// An in-memory [`LocalDirectory`]: local nodes only, `alive@host` for the host given at
/// construction, random creations.
pub struct StaticDirectory {
    host: String,
    nodes: Arc<Mutex<HashMap<String, StaticEntry>>>,
    next_id: AtomicU64,
}

struct StaticEntry {
    alive: String,
    port: u16,
    id: u64,
}

/// Unregisters its entry when dropped (unless the entry was replaced meanwhile).
struct StaticGuard {
    nodes: Weak<Mutex<HashMap<String, StaticEntry>>>,
    full_name: String,
    id: u64,
}

impl Drop for StaticGuard {
    fn drop(&mut self) {
        if let Some(nodes) = self.nodes.upgrade() {
            let mut nodes = nodes.lock().unwrap_or_else(|e| e.into_inner());
            if nodes.get(&self.full_name).is_some_and(|e| e.id == self.id) {
                nodes.remove(&self.full_name);
            }
        }
    }
}

impl StaticDirectory {
    /// A directory for the nodes of `host` (the host part of their names, as `erl -sname`
    /// or `-name` sees it).
    pub fn new(host: impl Into<String>) -> StaticDirectory {
        StaticDirectory { host: host.into(), nodes: Default::default(), next_id: AtomicU64::new(1) }
    }

    /// The host part of the names this directory registers.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Debug for StaticDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticDirectory").field("host", &self.host).field("names", &self.names()).finish()
    }
}

impl LocalDirectory for StaticDirectory {
    fn register(&self, name: &str, port: u16, _plug: Plug) -> Result<Registration, RegisterError> {
        let full_name = full_node_name(name, &self.host)?;
        let alive = full_name.split('@').next().unwrap_or_default().to_owned();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            if nodes.contains_key(&full_name) {
                return Err(RegisterError::Duplicate);
            }
            nodes.insert(full_name.clone(), StaticEntry { alive, port, id });
        }
        let creation = rand::Rng::gen_range(&mut rand::thread_rng(), 4..=u32::MAX);
        let guard = StaticGuard { nodes: Arc::downgrade(&self.nodes), full_name, id };
        Ok(Registration::new(creation, Box::new(guard)))
    }

    fn resolve(&self, full_name: &str) -> Option<u16> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(full_name).map(|e| e.port)
    }

    fn names(&self) -> Vec<(String, u16)> {
        let mut out: Vec<(String, u16)> =
            self.nodes.lock().unwrap_or_else(|e| e.into_inner()).values().map(|e| (e.alive.clone(), e.port)).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use epmd::Alive2Req;
    use std::time::Instant;

    async fn start(config: ControlConfig) -> (SocketAddr, Arc<StaticDirectory>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = Arc::new(StaticDirectory::new("h"));
        let task = tokio::spawn(serve_with(listener, dir.clone(), config));
        (addr, dir, task)
    }

    async fn register(addr: SocketAddr, name: &str, port: u16) -> (TcpStream, Alive2Resp) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&Request::Alive2(Alive2Req::new(name, port, false)).encode().unwrap()).await.unwrap();
        let mut b = [0u8; 6];
        s.read_exact(&mut b).await.unwrap();
        let (resp, _) = Alive2Resp::decode(&b).unwrap().unwrap();
        (s, resp)
    }

    async fn one_shot(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        out
    }

    async fn port_please(addr: SocketAddr, name: &str) -> Port2Resp {
        let b = one_shot(addr, &Request::PortPlease2 { name: name.into() }.encode().unwrap()).await;
        Port2Resp::decode(&b).unwrap().unwrap().0
    }

    async fn names(addr: SocketAddr) -> NamesResp {
        NamesResp::decode_complete(&one_shot(addr, &Request::Names.encode().unwrap()).await).unwrap()
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn register_resolve_names_unregister() {
        let (addr, dir, _task) = start(ControlConfig::default()).await;
        let (a, resp) = register(addr, "a", 1000).await;
        assert_eq!(resp.result, 0);
        assert!(resp.creation >= 4);
        let (_b, resp) = register(addr, "b", 2000).await;
        assert_eq!(resp.result, 0);

        match port_please(addr, "a@h").await {
            Port2Resp::Ok(info) => {
                assert_eq!(info.port, 1000);
                assert_eq!(info.name, "a@h");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(port_please(addr, "a").await, Port2Resp::Err(1));
        assert_eq!(port_please(addr, "a@other").await, Port2Resp::Err(1));
        let n = names(addr).await;
        assert_eq!(n.epmd_port, u32::from(addr.port()));
        assert_eq!(n.entries, vec![("a".to_string(), 1000), ("b".to_string(), 2000)]);

        // The plug sends full names: a long name keeps its host part.
        let (long, resp) = register(addr, "l@10.0.0.9", 3000).await;
        assert_eq!(resp.result, 0);
        assert!(matches!(port_please(addr, "l@10.0.0.9").await, Port2Resp::Ok(NodeInfo { port: 3000, .. })));
        assert_eq!(port_please(addr, "l@h").await, Port2Resp::Err(1));
        assert_eq!(register(addr, "a@h", 3001).await.1.result, 1, "a@h is a, registered already");
        drop(long);
        until("l to unregister", || dir.resolve("l@10.0.0.9").is_none()).await;

        // A duplicate is refused with result 1; the original stays.
        let (_dup, resp) = register(addr, "a", 3000).await;
        assert_eq!(resp.result, 1);
        assert_eq!(dir.resolve("a@h"), Some(1000));

        // Closing the registration socket unregisters.
        drop(a);
        until("a to unregister", || dir.resolve("a@h").is_none()).await;
        assert_eq!(names(addr).await.entries, vec![("b".to_string(), 2000)]);
        // ... and the name can be taken again.
        let (_a2, resp) = register(addr, "a", 1001).await;
        assert_eq!(resp.result, 0);
        assert_eq!(dir.resolve("a@h"), Some(1001));
    }

    #[tokio::test]
    async fn dropping_the_server_unregisters_everything() {
        let (addr, dir, task) = start(ControlConfig::default()).await;
        let (mut a, _) = register(addr, "a", 1000).await;
        assert_eq!(dir.names().len(), 1);
        task.abort();
        let _ = task.await;
        until("a to unregister", || dir.names().is_empty()).await;
        let mut b = [0u8; 1];
        assert_eq!(timeout(Duration::from_secs(5), a.read(&mut b)).await.unwrap().unwrap_or(0), 0);
    }

    #[tokio::test]
    async fn garbage_and_refused_requests_close_the_connection() {
        let (addr, _dir, _task) = start(ControlConfig::default()).await;
        for req in [
            &b"\x00\x00"[..],
            b"\xff\xff",
            b"\x00\x01q",
            b"\x00\x02nn",
            b"\x00\x01z",
            b"\x00\x01k",
            b"\x00\x02sa",
            b"\x00\x05x\x00\x01M",
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            if req == b"\x00\x05x\x00\x01M" {
                // Declared length 5, only 4 bytes: the server waits; close our side.
                s.shutdown().await.unwrap();
            }
            let mut out = Vec::new();
            timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().ok();
            assert!(out.is_empty(), "{req:?} got {out:?}");
        }
        // Still serving.
        assert!(names(addr).await.entries.is_empty());
        // DUMP is edist's status request: the port, then the directory's JSON.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x00\x01d").await.unwrap();
        let mut out = Vec::new();
        timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
        assert_eq!(out.get(4..), Some(&b"{}"[..]));
    }

    #[tokio::test]
    async fn slow_requests_time_out_and_connections_are_bounded() {
        let config =
            ControlConfig { max_connections: 2, request_timeout: Duration::from_millis(300), ..Default::default() };
        let (addr, _dir, _task) = start(config).await;
        let mut idle1 = TcpStream::connect(addr).await.unwrap();
        let mut idle2 = TcpStream::connect(addr).await.unwrap();
        idle2.write_all(b"\x00").await.unwrap(); // half a length prefix
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The third connection is refused at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        let t0 = Instant::now();
        assert_eq!(timeout(Duration::from_secs(5), third.read(&mut b)).await.unwrap().unwrap_or(0), 0);
        assert!(t0.elapsed() < Duration::from_millis(250));
        // The idle ones are closed after the request timeout.
        for s in [&mut idle1, &mut idle2] {
            assert_eq!(timeout(Duration::from_secs(5), s.read(&mut b)).await.unwrap().unwrap_or(0), 0);
        }
        // Then there is room again.
        assert!(names(addr).await.entries.is_empty());
    }

    #[tokio::test]
    async fn registrations_do_not_hold_request_slots() {
        let config = ControlConfig { max_connections: 1, max_registrations: 2, ..Default::default() };
        let (addr, _dir, _task) = start(config).await;
        let (_a, r) = register(addr, "a", 1).await;
        assert_eq!(r.result, 0);
        let (_b, r) = register(addr, "b", 2).await;
        assert_eq!(r.result, 0);
        let (_c, r) = register(addr, "c", 3).await;
        assert_eq!(r.result, 1, "the third registration exceeds max_registrations");
        assert_eq!(names(addr).await.entries.len(), 2);
    }

    #[test]
    fn static_directory_rules() {
        let d = StaticDirectory::new("host");
        for bad in ["", "@h", "a@", "a@b@c", "a\nb", "a@b\n"] {
            assert!(matches!(d.register(bad, 1, Plug::new().0), Err(RegisterError::InvalidName { .. })), "{bad:?}");
        }
        // A full name keeps its host part, whatever it is.
        let long = d.register("l@10.0.0.2", 7, Plug::new().0).unwrap();
        assert_eq!(d.resolve("l@10.0.0.2"), Some(7));
        assert_eq!(d.resolve("l@host"), None);
        drop(long);
        let r = d.register("x", 5, Plug::new().0).unwrap();
        assert!(r.creation() >= 4);
        assert_eq!(d.register("x", 6, Plug::new().0).unwrap_err(), RegisterError::Duplicate);
        assert_eq!(
            d.register("x@host", 6, Plug::new().0).unwrap_err(),
            RegisterError::Duplicate,
            "the same node, spelt in full"
        );
        assert_eq!(d.resolve("x@host"), Some(5));
        assert_eq!(d.names(), vec![("x".into(), 5)]);
        drop(r);
        assert_eq!(d.resolve("x@host"), None);
        assert!(d.names().is_empty());
        // A guard outliving its directory is harmless.
        let r = d.register("y", 1, Plug::new().0).unwrap();
        drop(d);
        drop(r);
    }
}
