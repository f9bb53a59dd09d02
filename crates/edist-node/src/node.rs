//! The node: its processes, names, links, monitors and connections.

use crate::conn::{self, Conn};
use crate::mailbox::{Event, Mailbox};
use crate::rpc::{Handler, RpcFailure};
use crate::{epmd, NodeError};
use edist_proto::dist::control::{Control, ProcRef};
use edist_proto::dist::DFlags;
use edist_proto::etf::{Pid, Ref};
use edist_proto::{Atom, Term};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Full node name, `name@host`.
    pub name: String,
    /// The cookie shared with the peers.
    pub cookie: String,
    /// Listen for incoming connections and register with the local epmd.
    pub listen: bool,
    /// Port of the epmd daemons (ours and the peers'); default `ERL_EPMD_PORT` or 4369.
    pub epmd_port: u16,
    /// Join through an edist gateway instead of epmd: register at its local control address and
    /// resolve every node name there, as BEAM nodes with the `edist_epmd` plug do.
    pub gateway: Option<SocketAddr>,
    /// Per-step handshake timeout (`net_setuptime`).
    pub setup_timeout: Duration,
    /// A peer silent this long is considered dead (`net_ticktime`).
    pub tick_time: Duration,
    /// Largest message accepted from a peer (also caps fragment reassembly).
    pub max_message: usize,
}

impl NodeConfig {
    /// A listening node with default timeouts.
    pub fn new(name: impl Into<String>, cookie: impl Into<String>) -> Self {
        NodeConfig {
            name: name.into(),
            cookie: cookie.into(),
            listen: true,
            epmd_port: epmd::default_epmd_port(),
            gateway: None,
            setup_timeout: Duration::from_secs(7),
            tick_time: Duration::from_secs(60),
            max_message: 256 << 20,
        }
    }
}

struct Proc {
    tx: mpsc::UnboundedSender<Event>,
    name: Option<Atom>,
    links: HashSet<Pid>,
    /// Monitors this process holds: reference → (target, target's node).
    monitoring: HashMap<Ref, (ProcRef, Atom)>,
    /// Monitors on this process: reference → watcher.
    monitored_by: HashMap<Ref, Pid>,
}

#[derive(Default)]
pub(crate) struct State {
    procs: HashMap<u32, Proc>,
    names: HashMap<Atom, u32>,
    pub(crate) conns: HashMap<Atom, Conn>,
    /// Nodes we are dialling right now (for simultaneous-connect resolution).
    pub(crate) dialing: HashMap<Atom, Arc<tokio::sync::Notify>>,
    /// Nodes whose incoming handshake is in progress.
    pub(crate) accepting: HashSet<Atom>,
}

/// Shared state of a node; connection tasks and mailboxes hold an `Arc` of it.
pub(crate) struct Inner {
    pub(crate) name: Atom,
    pub(crate) creation: u32,
    pub(crate) cfg: NodeConfig,
    pub(crate) flags: DFlags,
    next_id: AtomicU32,
    next_ref: AtomicU64,
    state: Mutex<State>,
    dial_locks: Mutex<HashMap<Atom, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) handlers: Mutex<HashMap<(String, String), Handler>>,
    /// The system process (net_kernel, group leader of our rpc calls).
    pub(crate) sys: Pid,
    pub(crate) stats: Stats,
    _registration: Mutex<Option<epmd::Registration>>,
}

/// Counters of a node's traffic.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) fragmented_received: AtomicU64,
    pub(crate) peak_open_reassemblies: AtomicU64,
    pub(crate) peak_active_lanes: AtomicU64,
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages received in more than one fragment.
    pub fragmented_received: u64,
    /// Most fragmented messages being reassembled at once on one connection (above 1 means
    /// a peer interleaved fragments of different messages).
    pub peak_open_reassemblies: u64,
    /// Most senders with packets waiting at once on one connection (above 1 means our
    /// writer interleaved their fragments).
    pub peak_active_lanes: u64,
}

/// A Rust-native Erlang node. Cheap to clone; the node lives while a clone does.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("name", &self.inner.name).finish()
    }
}

/// Splits `name@host`.
pub(crate) fn split_node(node: &str) -> Result<(&str, &str), NodeError> {
    match node.split_once('@') {
        Some((a, h)) if !a.is_empty() && !h.is_empty() => Ok((a, h)),
        _ => Err(NodeError::BadNodeName(node.to_string())),
    }
}

impl Node {
    /// Starts a node: listens and registers with epmd when `cfg.listen`.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let (alive, _host) = split_node(&cfg.name)?;
        let mut registration = None;
        let mut listener = None;
        let mut creation = rand::random::<u32>() | 4;
        if cfg.listen {
            // Behind a gateway, only the gateway (on loopback) may reach us.
            let ip = if cfg.gateway.is_some() { Ipv4Addr::LOCALHOST } else { Ipv4Addr::UNSPECIFIED };
            let l = tokio::net::TcpListener::bind((ip, 0))
                .await
                .map_err(|e| NodeError::Io { node: cfg.name.clone(), source: e })?;
            let port = l.local_addr().map_err(|e| NodeError::Io { node: cfg.name.clone(), source: e })?.port();
            let epmd_addr = cfg.gateway.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.epmd_port)));
            // epmd knows the nodes of one host and takes the alive part; a gateway takes the
            // full name, so a host part other than the gateway's own is kept.
            let client = epmd::EpmdClient::new(epmd_addr);
            let registered = match cfg.gateway {
                Some(_) => client.gateway_register(&cfg.name, port, true).await,
                None => client.register(alive, port, true).await,
            };
            let reg = registered.map_err(|e| match e {
                epmd::EpmdClientError::NameTaken { .. } => NodeError::NameTaken(cfg.name.clone()),
                e => NodeError::Epmd { host: "localhost".into(), source: e },
            })?;
            creation = reg.creation;
            registration = Some(reg);
            listener = Some(l);
        }
        let name = Atom::from(cfg.name.as_str());
        let sys = Pid { node: name.clone(), id: 0, serial: 0, creation };
        let inner = Arc::new(Inner {
            name,
            creation,
            flags: DFlags::edist_default(false),
            cfg,
            next_id: AtomicU32::new(1),
            next_ref: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            dial_locks: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
            sys: sys.clone(),
            stats: Stats::default(),
            _registration: Mutex::new(registration),
        });
        let sys_rx = inner.add_proc(0, Some(Atom::from("net_kernel")));
        tokio::spawn(crate::rpc::system_process(Arc::downgrade(&inner), sys_rx));
        crate::rpc::install_builtins(&inner);
        if let Some(l) = listener {
            tokio::spawn(conn::accept_loop(Arc::downgrade(&inner), l));
        }
        Ok(Node { inner })
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        self.inner.name.as_str()
    }

    /// Traffic counters.
    pub fn stats(&self) -> NodeStats {
        let s = &self.inner.stats;
        NodeStats {
            fragmented_received: s.fragmented_received.load(Ordering::Relaxed),
            peak_open_reassemblies: s.peak_open_reassemblies.load(Ordering::Relaxed),
            peak_active_lanes: s.peak_active_lanes.load(Ordering::Relaxed),
        }
    }

    /// This node's creation.
    pub fn creation(&self) -> u32 {
        self.inner.creation
    }

    /// A new anonymous mailbox.
    pub fn mailbox(&self) -> Mailbox {
        self.inner.new_mailbox(None)
    }

    /// A new mailbox registered as `name`.
    pub fn register(&self, name: &str) -> Result<Mailbox, NodeError> {
        let atom = Atom::from(name);
        if self.inner.lock().names.contains_key(&atom) {
            return Err(NodeError::NameTaken(name.to_string()));
        }
        Ok(self.inner.new_mailbox(Some(atom)))
    }

    /// Connects to `node` (no-op when connected).
    pub async fn connect(&self, node: &str) -> Result<(), NodeError> {
        self.inner.connection(&Atom::from(node)).await.map(|_| ())
    }

    /// Closes the connection to `node`, if any.
    pub fn disconnect(&self, node: &str) {
        if let Some(c) = self.inner.lock().conns.get(&Atom::from(node)) {
            c.close();
        }
    }

    /// Names of the connected nodes.
    pub fn nodes(&self) -> Vec<String> {
        self.inner.lock().conns.keys().map(|a| a.to_string()).collect()
    }

    /// `net_adm:ping/1`: true when `node` answers.
    pub async fn ping(&self, node: &str) -> bool {
        self.ping_result(node).await.is_ok()
    }

    /// Like [`Node::ping`] but says why a ping failed.
    pub async fn ping_result(&self, node: &str) -> Result<(), NodeError> {
        let mut mb = self.mailbox();
        let tag = self.inner.make_ref();
        let from = Term::tuple([Term::Pid(mb.pid.clone()), Term::Ref(tag.clone())]);
        let req = Term::tuple([Term::atom("is_auth"), Term::Atom(self.inner.name.clone())]);
        let call = Term::tuple([Term::atom("$gen_call"), from, req]);
        mb.send_named("net_kernel", node, call).await?;
        let deadline = tokio::time::Instant::now() + self.inner.cfg.setup_timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = mb.recv_message(left).await?;
            if let Some([t, reply]) = msg.as_tuple().and_then(|t| <&[Term; 2]>::try_from(t).ok()) {
                if *t == Term::Ref(tag.clone()) {
                    return if *reply == Term::atom("yes") { Ok(()) } else { Err(NodeError::Timeout) };
                }
            }
        }
    }

    /// Calls `module:function(args...)` on `node` the way OTP 25's `rpc:call` does
    /// (`spawn_request` of `erpc:execute_call/4`).
    pub async fn rpc(
        &self,
        node: &str,
        module: &str,
        function: &str,
        args: Vec<Term>,
        timeout: Duration,
    ) -> Result<Term, crate::RpcError> {
        crate::rpc::call(self, node, module, function, args, timeout).await
    }

    /// Makes `module:function/N` callable from other nodes by `rpc:call`/`erpc:call`.
    pub fn register_rpc<F>(&self, module: &str, function: &str, f: F)
    where
        F: Fn(Vec<Term>) -> Result<Term, RpcFailure> + Send + Sync + 'static,
    {
        if let Ok(mut h) = self.inner.handlers.lock() {
            h.insert((module.to_string(), function.to_string()), Arc::new(f));
        }
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough maps; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_proc(&self, id: u32, name: Option<Atom>) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        if let Some(n) = &name {
            st.names.insert(n.clone(), id);
        }
        st.procs.insert(
            id,
            Proc { tx, name, links: HashSet::new(), monitoring: HashMap::new(), monitored_by: HashMap::new() },
        );
        rx
    }

    pub(crate) fn new_pid(&self) -> Pid {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        Pid { node: self.name.clone(), id, serial: 0, creation: self.creation }
    }

    pub(crate) fn new_mailbox(self: &Arc<Self>, name: Option<Atom>) -> Mailbox {
        let pid = self.new_pid();
        let rx = self.add_proc(pid.id, name);
        Mailbox { inner: self.clone(), pid, rx }
    }

    pub(crate) fn make_ref(&self) -> Ref {
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed);
        Ref {
            node: self.name.clone(),
            creation: self.creation,
            ids: vec![n as u32 & 0x3ffff, (n >> 18) as u32, rand::random()],
        }
    }

    fn is_local(&self, pid: &Pid) -> bool {
        pid.node == self.name && pid.creation == self.creation
    }

    /// Delivers an event to a local process; false if it does not exist.
    pub(crate) fn deliver(&self, id: u32, ev: Event) -> bool {
        self.lock().procs.get(&id).map(|p| p.tx.send(ev).is_ok()).unwrap_or(false)
    }

    pub(crate) fn whereis(&self, name: &Atom) -> Option<u32> {
        self.lock().names.get(name).copied()
    }

    /// The connection to `node`, dialling it if needed.
    pub(crate) async fn connection(self: &Arc<Self>, node: &Atom) -> Result<Conn, NodeError> {
        if let Some(c) = self.lock().conns.get(node) {
            return Ok(c.clone());
        }
        let lock = {
            let mut locks = self.dial_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(node.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Some(c) = self.lock().conns.get(node) {
            return Ok(c.clone());
        }
        let abort = Arc::new(tokio::sync::Notify::new());
        self.lock().dialing.insert(node.clone(), abort.clone());
        let r = conn::dial(self.clone(), node.clone(), abort).await;
        self.lock().dialing.remove(node);
        r
    }

    pub(crate) fn conn_if_up(&self, node: &Atom) -> Option<Conn> {
        self.lock().conns.get(node).cloned()
    }

    /// Registers a new connection. When both nodes dialled each other and both attempts got
    /// through, both sides keep the one the greater node name initiated and close the other;
    /// otherwise the new connection replaces the old (a reconnect).
    pub(crate) fn add_conn(&self, node: Atom, c: Conn) -> Conn {
        let mut st = self.lock();
        if let Some(old) = st.conns.get(&node) {
            let we_are_greater = self.name.as_str() > node.as_str();
            if old.outgoing != c.outgoing && old.outgoing == we_are_greater {
                let old = old.clone();
                drop(st);
                c.close();
                return old;
            }
        }
        if let Some(old) = st.conns.insert(node, c.clone()) {
            old.close();
        }
        c
    }

    pub(crate) async fn send_to_pid(self: &Arc<Self>, from: &Pid, to: &Pid, msg: Term) -> Result<(), NodeError> {
        if self.is_local(to) {
            self.deliver(to.id, Event::Message { from: Some(from.clone()), msg });
            return Ok(());
        }
        let c = self.connection(&to.node).await?;
        let ctrl = if c.flags.has(DFlags::SEND_SENDER) {
            Control::SendSender { from: from.clone(), to: to.clone() }
        } else {
            Control::Send { to: to.clone() }
        };
        c.send(&ctrl, Some(&msg)).await
    }

    pub(crate) async fn send_to_name(
        self: &Arc<Self>,
        from: &Pid,
        name: &Atom,
        node: &Atom,
        msg: Term,
    ) -> Result<(), NodeError> {
        if *node == self.name {
            if let Some(id) = self.whereis(name) {
                self.deliver(id, Event::Message { from: Some(from.clone()), msg });
            }
            return Ok(());
        }
        let c = self.connection(node).await?;
        c.send(&Control::RegSend { from: from.clone(), to: name.clone() }, Some(&msg)).await
    }

    pub(crate) async fn link(self: &Arc<Self>, from: &Pid, to: &Pid) -> Result<(), NodeError> {
        if self.is_local(to) {
            let mut st = self.lock();
            if !st.procs.contains_key(&to.id) {
                drop(st);
                self.deliver(from.id, Event::Exit { from: to.clone(), reason: Term::atom("noproc"), exit2: false });
                return Ok(());
            }
            for (a, b) in [(from, to), (to, from)] {
                if let Some(p) = st.procs.get_mut(&a.id) {
                    p.links.insert(b.clone());
                }
            }
            return Ok(());
        }
        let c = self.connection(&to.node).await?;
        if let Some(p) = self.lock().procs.get_mut(&from.id) {
            p.links.insert(to.clone());
        }
        c.send(&Control::Link { from: from.clone(), to: to.clone() }, None).await
    }

    pub(crate) async fn unlink(self: &Arc<Self>, from: &Pid, to: &Pid) -> Result<(), NodeError> {
        let removed = self.lock().procs.get_mut(&from.id).map(|p| p.links.remove(to)).unwrap_or(false);
        if self.is_local(to) {
            if let Some(p) = self.lock().procs.get_mut(&to.id) {
                p.links.remove(from);
            }
            return Ok(());
        }
        if let (true, Some(c)) = (removed, self.conn_if_up(&to.node)) {
            let id = self.next_ref.fetch_add(1, Ordering::Relaxed);
            let ctrl = if c.flags.has(DFlags::UNLINK_ID) {
                Control::UnlinkId { id, from: from.clone(), to: to.clone() }
            } else {
                Control::Unlink { from: from.clone(), to: to.clone() }
            };
            c.send(&ctrl, None).await?;
        }
        Ok(())
    }

    pub(crate) async fn monitor(self: &Arc<Self>, from: &Pid, target: ProcRef, node: Atom) -> Result<Ref, NodeError> {
        let reference = self.make_ref();
        if node == self.name {
            let id = match &target {
                ProcRef::Pid(p) if self.is_local(p) => Some(p.id),
                ProcRef::Name(n) => self.whereis(n),
                ProcRef::Pid(_) => None,
            };
            let mut st = self.lock();
            match id.and_then(|id| st.procs.get_mut(&id)) {
                Some(p) => {
                    p.monitored_by.insert(reference.clone(), from.clone());
                    if let Some(me) = st.procs.get_mut(&from.id) {
                        me.monitoring.insert(reference.clone(), (target, node));
                    }
                }
                None => {
                    drop(st);
                    let ev = Event::Down { reference: reference.clone(), from: target, reason: Term::atom("noproc") };
                    self.deliver(from.id, ev);
                }
            }
            return Ok(reference);
        }
        let c = self.connection(&node).await?;
        if let Some(p) = self.lock().procs.get_mut(&from.id) {
            p.monitoring.insert(reference.clone(), (target.clone(), node));
        }
        c.send(&Control::MonitorP { from: from.clone(), to: target, reference: reference.clone() }, None).await?;
        Ok(reference)
    }

    /// Records a monitor this process holds without sending anything (rpc's spawn monitor).
    pub(crate) fn note_monitor(&self, from: &Pid, reference: &Ref, target: ProcRef, node: Atom) {
        if let Some(p) = self.lock().procs.get_mut(&from.id) {
            p.monitoring.insert(reference.clone(), (target, node));
        }
    }

    pub(crate) async fn demonitor(self: &Arc<Self>, from: &Pid, reference: &Ref) -> Result<(), NodeError> {
        let entry = self.lock().procs.get_mut(&from.id).and_then(|p| p.monitoring.remove(reference));
        let Some((target, node)) = entry else { return Ok(()) };
        if node == self.name {
            let mut st = self.lock();
            for p in st.procs.values_mut() {
                p.monitored_by.remove(reference);
            }
            return Ok(());
        }
        if let Some(c) = self.conn_if_up(&node) {
            c.send(&Control::DemonitorP { from: from.clone(), to: target, reference: reference.clone() }, None).await?;
        }
        Ok(())
    }

    pub(crate) async fn send_exit(
        self: &Arc<Self>,
        from: &Pid,
        to: &Pid,
        reason: Term,
        exit2: bool,
    ) -> Result<(), NodeError> {
        if self.is_local(to) {
            self.deliver(to.id, Event::Exit { from: from.clone(), reason, exit2 });
            return Ok(());
        }
        let c = self.connection(&to.node).await?;
        c.send_exit(from, to, reason, exit2).await
    }

    /// A local process ended: fire its links and monitors, free its name.
    pub(crate) fn process_ended(self: &Arc<Self>, pid: &Pid, reason: Term) {
        let Some(p) = ({
            let mut st = self.lock();
            let p = st.procs.remove(&pid.id);
            if let Some(n) = p.as_ref().and_then(|p| p.name.clone()) {
                st.names.remove(&n);
            }
            p
        }) else {
            return;
        };
        let mut remote: Vec<(Atom, Control, Option<Term>)> = Vec::new();
        for linked in p.links {
            if self.is_local(&linked) {
                if let Some(q) = self.lock().procs.get_mut(&linked.id) {
                    q.links.remove(pid);
                }
                self.deliver(linked.id, Event::Exit { from: pid.clone(), reason: reason.clone(), exit2: false });
            } else {
                let node = linked.node.clone();
                remote.push((node, Control::PayloadExit { from: pid.clone(), to: linked }, Some(reason.clone())));
            }
        }
        for (reference, watcher) in p.monitored_by {
            let from = match &p.name {
                Some(n) => ProcRef::Name(n.clone()),
                None => ProcRef::Pid(pid.clone()),
            };
            if self.is_local(&watcher) {
                self.deliver(
                    watcher.id,
                    Event::Down { reference, from: ProcRef::Pid(pid.clone()), reason: reason.clone() },
                );
            } else {
                let node = watcher.node.clone();
                remote.push((
                    node,
                    Control::PayloadMonitorPExit { from, to: watcher, reference },
                    Some(reason.clone()),
                ));
            }
        }
        for (reference, (target, node)) in p.monitoring {
            if let Some(c) = self.conn_if_up(&node) {
                remote.push((node, Control::DemonitorP { from: pid.clone(), to: target, reference }, None));
                let _ = c;
            }
        }
        if remote.is_empty() {
            return;
        }
        let inner = self.clone();
        // Dropping happens in sync code; the signals go out from a task.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for (node, ctrl, payload) in remote {
                    if let Some(c) = inner.conn_if_up(&node) {
                        let _ = c.send_signal(ctrl, payload).await;
                    }
                }
            });
        }
    }

    /// A connection went down: every link and monitor across it fires with `noconnection`.
    pub(crate) fn connection_lost(&self, node: &Atom, conn_id: u64) {
        let mut events = Vec::new();
        {
            let mut st = self.lock();
            match st.conns.get(node).map(|c| c.id) {
                Some(id) if id == conn_id => {
                    st.conns.remove(node);
                }
                // A duplicate that lost to another connection to the same node: the links
                // and monitors live on the other one.
                Some(_) => return,
                None => {}
            }
            for (id, p) in st.procs.iter_mut() {
                let gone: Vec<Pid> = p.links.iter().filter(|l| l.node == *node).cloned().collect();
                for l in gone {
                    p.links.remove(&l);
                    events.push((*id, Event::Exit { from: l, reason: Term::atom("noconnection"), exit2: false }));
                }
                let refs: Vec<Ref> =
                    p.monitoring.iter().filter(|(_, (_, n))| n == node).map(|(r, _)| r.clone()).collect();
                for r in refs {
                    if let Some((target, _)) = p.monitoring.remove(&r) {
                        events.push((
                            *id,
                            Event::Down { reference: r, from: target, reason: Term::atom("noconnection") },
                        ));
                    }
                }
                p.monitored_by.retain(|_, w| w.node != *node);
            }
        }
        for (id, ev) in events {
            self.deliver(id, ev);
        }
    }

    // --- incoming signals, called by the connection reader ---

    pub(crate) fn resolve(&self, pid: &Pid) -> Option<u32> {
        (self.is_local(pid) && self.lock().procs.contains_key(&pid.id)).then_some(pid.id)
    }

    pub(crate) fn incoming_link(&self, from: &Pid, to: &Pid) -> bool {
        self.resolve(to).and_then(|id| self.lock().procs.get_mut(&id).map(|p| p.links.insert(from.clone()))).is_some()
    }

    pub(crate) fn incoming_unlink(&self, from: &Pid, to: &Pid) {
        if let Some(p) = self.lock().procs.get_mut(&to.id) {
            p.links.remove(from);
        }
    }

    pub(crate) fn incoming_exit(&self, from: &Pid, to: &Pid, reason: Term, exit2: bool) {
        if !exit2 {
            let mut st = self.lock();
            // An exit over a link that no longer exists is ignored, as in OTP.
            if !st.procs.get_mut(&to.id).map(|p| p.links.remove(from)).unwrap_or(false) {
                return;
            }
        }
        if self.is_local(to) {
            self.deliver(to.id, Event::Exit { from: from.clone(), reason, exit2 });
        }
    }

    /// A remote MONITOR_P: true if the target exists (the monitor is recorded).
    pub(crate) fn incoming_monitor(&self, from: &Pid, target: &ProcRef, reference: &Ref) -> bool {
        let id = match target {
            ProcRef::Pid(p) => self.resolve(p),
            ProcRef::Name(n) => self.whereis(n),
        };
        let mut st = self.lock();
        match id.and_then(|id| st.procs.get_mut(&id)) {
            Some(p) => {
                p.monitored_by.insert(reference.clone(), from.clone());
                true
            }
            None => false,
        }
    }

    pub(crate) fn incoming_demonitor(&self, target: &ProcRef, reference: &Ref) {
        let id = match target {
            ProcRef::Pid(p) => Some(p.id),
            ProcRef::Name(n) => self.whereis(n),
        };
        if let Some(id) = id {
            if let Some(p) = self.lock().procs.get_mut(&id) {
                p.monitored_by.remove(reference);
            }
        }
    }

    pub(crate) fn incoming_down(&self, to: &Pid, from: ProcRef, reference: Ref, reason: Term) {
        let known =
            self.lock().procs.get_mut(&to.id).map(|p| p.monitoring.remove(&reference).is_some()).unwrap_or(false);
        if known && self.is_local(to) {
            self.deliver(to.id, Event::Down { reference, from, reason });
        }
    }
}
