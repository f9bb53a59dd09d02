//! Facing the nodes of this host: the control port's view of the gateway ([`Directory`]),
//! registrations and the guards that end them, local nodes that only connect out
//! ([`OutboundGuard`]), dynamic names, and lookups (a name known now, or what the fabric says
//! within `[local] lookup_wait_ms`, see [`crate::lookup`]), which open the listeners that
//! impersonate remote nodes.

use super::registry::{self, Outbound, Resolved};
use super::{lock, Inner};
use crate::fabric::gossip::Command;
use crate::fabric::link;
use crate::local::control::{LocalDirectory, RegisterError, Registration};
use crate::local::plug::Plug;
use crate::lookup::{self, Answer, Plan};
use crate::session::open::impersonate;
use crate::wire::{Msg, NodeInfo};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

impl Inner {
    /// The loopback port of `full_name` from what the gateway knows now: a local node's own, or
    /// that of a listener impersonating a remote node (opened here if need be).
    pub(super) fn resolve_now(self: &Arc<Self>, full_name: &str) -> Option<u16> {
        let mut reg = self.registry();
        match reg.resolve(full_name, self.cfg.local.max_listeners) {
            Resolved::Device => {
                drop(reg);
                return self.device_port(full_name);
            }
            // None for a node that only connects out: nobody can dial it, as with OTP.
            Resolved::Local(port) => return port,
            Resolved::Impersonated(port) => return Some(port),
            Resolved::Unknown => return None,
            Resolved::Impersonate => {}
        }
        // Open a loopback listener impersonating this node (std, so this stays synchronous).
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).ok()?;
        listener.set_nonblocking(true).ok()?;
        let port = listener.local_addr().ok()?.port();
        let listener = TcpListener::from_std(listener).ok()?;
        let task = tokio::spawn(impersonate(Arc::downgrade(self), listener, full_name.to_string())).abort_handle();
        reg.add_impersonator(full_name, port, task);
        debug!(node = %full_name, port, "impersonating");
        Some(port)
    }

    /// Whether `full_name` is a node the gateway knows, local or remote (dialable or not).
    pub(super) fn knows(&self, full_name: &str) -> bool {
        self.registry().knows(full_name)
    }

    /// [`Inner::resolve_now`], or, for a name not known yet, what the fabric says within
    /// `[local] lookup_wait_ms` (see [`crate::lookup`]): the owner's answer, "nobody has it"
    /// from every member, or the node list of a peer whose link comes up.
    pub(super) async fn lookup(self: &Arc<Self>, full_name: &str) -> Option<u16> {
        if let Some(port) = self.resolve_now(full_name) {
            return Some(port);
        }
        let plan = lookup::plan(self.lookup_situation());
        // Known without a port (a local node that does not listen, no listener left to
        // impersonate with): the fabric has nothing to add.
        if plan == Plan::Unknown || self.knows(full_name) {
            return None;
        }
        let t0 = tokio::time::Instant::now();
        let asked = t0.into_std();
        let deadline = t0 + Duration::from_millis(self.cfg.local.lookup_wait_ms);
        let likely = if plan == Plan::AskMembers { self.likely_owners(full_name) } else { Vec::new() };
        debug!(node = %full_name, ?plan, ?likely, "lookup: not known here, asking the fabric");
        let mut wait = Waiting { inner: self, name: full_name, answer: None };
        let found = loop {
            if wait.answer.is_none() {
                // Joins the lookup in flight, or starts one (again, after one settled).
                let Some(joined) = lock(&self.waiters).join(full_name) else {
                    warn!(node = %full_name, "lookup: too many lookups waiting for the fabric; answering unknown");
                    break None;
                };
                wait.answer = Some(joined.answer);
            }
            let answer = wait.answer.as_mut().map(|a| *a.borrow_and_update());
            if let Some(port) = self.resolve_now(full_name) {
                break Some(port);
            }
            if self.knows(full_name) {
                break None;
            }
            let now = tokio::time::Instant::now();
            let given_up = match plan {
                Plan::AskMembers => answer.is_some_and(|a| a.unknown_to(asked)),
                Plan::AwaitLists => lookup::plan(self.lookup_situation()) != Plan::AwaitLists,
                Plan::Unknown => true,
            };
            if given_up || now >= deadline {
                break None;
            }
            if plan == Plan::AskMembers {
                if let Some(g) = self.gossip.get() {
                    let _ = g.send(Command::Lookup { name: full_name.to_string(), likely: likely.clone(), asked });
                }
            }
            let next = deadline.min(now + lookup::POLL);
            if let Some(a) = wait.answer.as_mut() {
                if let Ok(Err(_)) = tokio::time::timeout_at(next, a.changed()).await {
                    // Settled, and its value seen: join (or start) the next one.
                    wait.leave();
                }
            }
        };
        let ms = t0.elapsed().as_millis();
        match found {
            Some(port) => info!(node = %full_name, port, ms, "lookup: found through the fabric"),
            None => debug!(node = %full_name, ms, "lookup: unknown"),
        }
        found
    }

    /// What a lookup of an unknown name can hope for, now.
    pub(super) fn lookup_situation(&self) -> lookup::Situation {
        let reg = self.registry();
        let cfg = &self.cfg;
        // A peer's list comes over its own link, or through the gateway it is reached `via`.
        let peers_missing = cfg.peers.iter().any(|p| !reg.is_listed(&p.name));
        let seeds_missing = !cfg.fabric.seeds.is_empty() && reg.none_listed();
        lookup::Situation {
            fabric: self.transport.get().is_some(),
            membership: cfg.fabric.membership && self.gossip.get().is_some(),
            may_wait: cfg.local.lookup_wait_ms > 0,
            uptime: self.started.elapsed(),
            lists_missing: peers_missing || seeds_missing,
        }
    }

    /// The gateways likely to own `name`, to ask first.
    pub(super) fn likely_owners(&self, name: &str) -> Vec<String> {
        lookup::likely_owners(name, self.registry().owners())
    }
}

/// The control server's view of the gateway.
pub(super) struct Directory(pub(super) Weak<Inner>);

pub(super) struct LocalGuard {
    pub(super) inner: Weak<Inner>,
    pub(super) name: String,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else { return };
        if inner.registry().unregister_local(&self.name) {
            info!(node = %self.name, "local node gone");
            inner.broadcast(Msg::NodeDown(self.name.clone()));
        }
    }
}

impl LocalDirectory for Directory {
    fn register(&self, name: &str, port: u16, plug: Plug) -> Result<Registration, RegisterError> {
        let inner = self.0.upgrade().ok_or(RegisterError::Unavailable)?;
        let creation = registry::fresh_creation(rand::random());
        let name = inner.registry().register_local(name, port, creation, plug)?;
        info!(node = %name, port, "local node registered");
        inner.broadcast(Msg::NodeUp(NodeInfo { name: name.clone(), creation }));
        Ok(Registration::new(creation, Box::new(LocalGuard { inner: self.0.clone(), name })))
    }

    fn resolve(&self, full_name: &str) -> Option<u16> {
        self.0.upgrade()?.resolve_now(full_name)
    }

    fn lookup<'a>(&'a self, full_name: &'a str) -> link::BoxFuture<'a, Option<u16>> {
        Box::pin(async move { self.0.upgrade()?.lookup(full_name).await })
    }

    fn status_json(&self) -> String {
        self.0.upgrade().and_then(|i| serde_json::to_string(&i.status()).ok()).unwrap_or_else(|| "{}".into())
    }

    fn names(&self) -> Vec<(String, u16)> {
        let Some(inner) = self.0.upgrade() else { return vec![] };
        let names = inner.registry().alive_names();
        names
    }
}

/// A lookup's place among the [`lookup::Waiters`], given up when the lookup ends, however it ends
/// (the control connection may go away mid-wait).
struct Waiting<'a> {
    inner: &'a Inner,
    name: &'a str,
    answer: Option<tokio::sync::watch::Receiver<Answer>>,
}

impl Waiting<'_> {
    fn leave(&mut self) {
        if self.answer.take().is_some() {
            lock(&self.inner.waiters).leave(self.name);
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A local node that does not listen (`-dist_listen false`, a dynamic name) is known, and
/// announced to the fabric, while it has relayed connections: the far gateway accepts a
/// connection only from a node its gateway announced. Dropping the last guard forgets it.
pub(crate) struct OutboundGuard {
    inner: Arc<Inner>,
    name: String,
}

impl OutboundGuard {
    /// Admits `name` dialling out. `Ok(None)`: a registered node, nothing to hold. Refused when
    /// the name is a remote node's.
    /// `dynamic`: the name was given here ([`dynamic_name`]).
    pub(crate) fn admit(
        inner: &Arc<Inner>,
        name: &str,
        creation: u32,
        dynamic: bool,
    ) -> Result<Option<OutboundGuard>, String> {
        let held = inner.registry().hold_outbound(name, creation, dynamic)?;
        match held {
            Outbound::Registered => return Ok(None),
            Outbound::Held => {}
            Outbound::New => {
                info!(node = %name, "local node connects out without listening");
                inner.broadcast(Msg::NodeUp(NodeInfo { name: name.to_string(), creation }));
            }
        }
        Ok(Some(OutboundGuard { inner: inner.clone(), name: name.to_string() }))
    }
}

impl Drop for OutboundGuard {
    fn drop(&mut self) {
        let last = self.inner.registry().release_outbound(&self.name);
        if last {
            info!(node = %self.name, "local node without a listener has no relayed connection left");
            self.inner.broadcast(Msg::NodeDown(self.name.clone()));
        }
    }
}

/// A name for a node that asked for one (see [`registry::Registry::dynamic_name`]).
pub(crate) fn dynamic_name(inner: &Inner, host: &str) -> (String, u32) {
    inner.registry().dynamic_name(host, rand::random::<u64>)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::gateway::Gateway;

    #[tokio::test]
    async fn nodes_that_do_not_listen_are_held_while_connected_and_names_keep_their_host() {
        let mut cfg = Config { host: "gwhost".into(), ..Config::default() };
        cfg.local.control = "127.0.0.1:0".parse().unwrap();
        cfg.fabric.certs = std::env::temp_dir().join(format!("edist-no-certs-{}", std::process::id()));
        let gw = Gateway::start(cfg).await.unwrap();
        let dir = Directory(Arc::downgrade(&gw.inner));
        // Full names keep their host part; an alive part alone gets the gateway's.
        let long = dir.register("b@10.0.0.2", 1000, Plug::new().0).unwrap();
        let short = dir.register("c", 1001, Plug::new().0).unwrap();
        assert_eq!(dir.resolve("b@10.0.0.2"), Some(1000));
        assert_eq!(dir.resolve("c@gwhost"), Some(1001));
        assert!(matches!(dir.register("b@10.0.0.2", 1, Plug::new().0), Err(RegisterError::Duplicate)));
        // A node that does not listen: listed while it has connections, never resolvable.
        let g1 = OutboundGuard::admit(&gw.inner, "n@elsewhere", 7, false).unwrap();
        let g2 = OutboundGuard::admit(&gw.inner, "n@elsewhere", 7, false).unwrap();
        assert!(g1.is_some() && g2.is_some());
        assert!(
            OutboundGuard::admit(&gw.inner, "b@10.0.0.2", 5, false).unwrap().is_none(),
            "registered: nothing to hold"
        );
        let st = gw.status();
        assert_eq!(st.outbound_only, vec!["n@elsewhere".to_string()]);
        assert_eq!(st.local_nodes, vec![("b@10.0.0.2".to_string(), 1000), ("c@gwhost".to_string(), 1001)]);
        assert_eq!(dir.resolve("n@elsewhere"), None);
        assert!(matches!(dir.register("n@elsewhere", 1, Plug::new().0), Err(RegisterError::Duplicate)));
        let mut names = dir.names();
        names.sort();
        assert_eq!(names, vec![("b".to_string(), 1000), ("c".to_string(), 1001)]);
        drop(g1);
        assert_eq!(gw.status().outbound_only.len(), 1);
        drop(g2);
        assert!(gw.status().outbound_only.is_empty());
        // A remote node's name is not for a local node to take.
        let far = crate::pki::Grant { nodes: vec!["*".into()], ..Default::default() };
        gw.inner.registry().set_grant("gw-far", far);
        gw.inner.registry().admit_remote("gw-far", &NodeInfo { name: "r@far".into(), creation: 4 }).unwrap();
        assert!(OutboundGuard::admit(&gw.inner, "r@far", 5, false).is_err());
        // Dynamic names: at the node's host, never one in use.
        let (name, creation) = dynamic_name(&gw.inner, "hosta");
        assert!(name.ends_with("@hosta") && creation >= 4, "{name}");
        // A dynamic name whose node is gone is given again first, with its next creation, as
        // OTP's net_kernel does; a name given to a node that is still there never.
        let g = OutboundGuard::admit(&gw.inner, &name, creation, true).unwrap();
        let (other, _) = dynamic_name(&gw.inner, "hosta");
        assert_ne!(other, name, "in use");
        drop(g);
        assert_eq!(dynamic_name(&gw.inner, "hosta"), (name.clone(), registry::next_creation(creation)));
        assert_ne!(dynamic_name(&gw.inner, "hosta").0, name, "given once");
        assert_eq!(dynamic_name(&gw.inner, "hostb").0.split_once('@').map(|x| x.1), Some("hostb"));
        drop((long, short));
        assert!(gw.status().local_nodes.is_empty());
        gw.shutdown();
    }

    #[tokio::test]
    async fn without_a_fabric_a_name_not_known_is_unknown_at_once() {
        let mut cfg = Config { host: "gwhost".into(), ..Config::default() };
        cfg.local.control = "127.0.0.1:0".parse().unwrap();
        cfg.fabric.certs = std::env::temp_dir().join(format!("edist-no-certs-{}", std::process::id()));
        let gw = Gateway::start(cfg).await.unwrap();
        let dir = Directory(Arc::downgrade(&gw.inner));
        let _c = dir.register("c", 1001, Plug::new().0).unwrap();
        assert_eq!(dir.lookup("c@gwhost").await, Some(1001));
        let t = std::time::Instant::now();
        assert_eq!(dir.lookup("zz@nowhere").await, None);
        assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
        assert!(lock(&gw.inner.waiters).is_empty());
        gw.shutdown();
    }
}
