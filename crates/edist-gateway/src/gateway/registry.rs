//! The registry: which nodes the gateway knows and who owns each. Local nodes (registered
//! through the control port, devices through the hub, and nodes that only connect out while
//! they have relayed connections), remote nodes and the peer gateway that announced each,
//! the listeners impersonating remote nodes, the names and grants of peer gateways, and the
//! pool of dynamic names. Sans-IO: no socket, clock or random number; the gateway does the
//! IO around it (announcing, logging, opening and closing listeners) from what its methods
//! return.

use crate::local::control::{full_node_name, RegisterError};
use crate::local::plug::Plug;
use crate::pki::Grant;
use crate::wire::NodeInfo;
use std::collections::{HashMap, HashSet};

/// A node of this host.
#[derive(Debug)]
pub(crate) struct LocalNode {
    /// Where it accepts distribution connections; `None` for a node that only connects out
    /// (`-dist_listen false`, a dynamic name): it never registered, and is known while it has
    /// relayed connections (see [`Registry::hold_outbound`]).
    pub(super) port: Option<u16>,
    pub(super) creation: u32,
    /// Relayed connections a node without `port` has open.
    outbound: usize,
    /// A dynamic name given here ([`Registry::dynamic_name`]): back to the pool when the node
    /// is gone.
    dynamic: bool,
    /// The line to its plug, on its registration.
    pub(crate) plug: Option<Plug>,
    /// A device connected through the hub (`[devices]`): known while its control connection
    /// lasts; `port` is opened when someone first dials it.
    pub(super) device: bool,
}

/// A node of another host, as its gateway announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteNode {
    pub(crate) creation: u32,
    /// The peer gateway that owns it.
    pub(crate) gateway: String,
}

/// Why a name cannot be taken: a node has it already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Taken {
    /// A local node.
    Local,
    /// A remote node, of this gateway.
    Remote(String),
}

/// Why an announcement of a remote node is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotAdmitted {
    /// The name is outside the announcing gateway's grant (or it has none).
    OutsideGrant,
    /// A local node or another gateway's node has it.
    Taken,
}

impl NotAdmitted {
    /// The refusal reason, as logged and counted.
    pub(super) fn reason(self) -> &'static str {
        match self {
            NotAdmitted::OutsideGrant => "name_claim",
            NotAdmitted::Taken => "name_taken",
        }
    }
}

/// What [`Registry::hold_outbound`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    /// A node that listens (or a device): nothing to hold.
    Registered,
    /// One more relayed connection of a node already held.
    Held,
    /// A node new here: announce it.
    New,
}

/// What [`Registry::resolve`] found for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resolved {
    /// A local node, and its port (`None`: it does not listen; nobody can dial it, as with OTP).
    Local(Option<u16>),
    /// A device nobody has dialled yet: its listener is to be opened.
    Device,
    /// A remote node, through the listener impersonating it.
    Impersonated(u16),
    /// A remote node without a listener yet, and room for one: open it and file it
    /// ([`Registry::add_impersonator`]).
    Impersonate,
    /// Not known here (or no room for another listener).
    Unknown,
}

/// The node tables. `L` is what keeps a listener impersonating a remote node open (a task's
/// handle in the gateway): the registry hands it back when the node is gone, to be closed.
#[derive(Debug)]
pub(crate) struct Registry<L> {
    /// The host of names registered without one.
    host: String,
    local: HashMap<String, LocalNode>,
    remote: HashMap<String, RemoteNode>,
    /// Listeners impersonating remote nodes: their port and handle.
    impersonators: HashMap<String, (u16, L)>,
    /// Gateways whose node list has come (over a link, membership or a relay) since the start:
    /// until each peer's has, a lookup of an unknown name may wait for it (see `lookup`).
    listed: HashSet<String>,
    /// Dynamic names whose nodes are gone, by host, with their next creation: given again
    /// first, as OTP's `net_kernel` does (a node that reconnects gets its name back).
    dyn_pool: HashMap<String, Vec<(String, u32)>>,
    /// What linked or member gateways' certificates grant, before the config's overrides.
    certified: HashMap<String, Grant>,
    /// What each peer gateway may claim (its certificate's grant, and the config's over it).
    granted: HashMap<String, Grant>,
}

impl<L> Registry<L> {
    /// An empty registry of a gateway whose host is `host`.
    pub(super) fn new(host: &str) -> Registry<L> {
        Registry {
            host: host.to_string(),
            local: HashMap::new(),
            remote: HashMap::new(),
            impersonators: HashMap::new(),
            listed: HashSet::new(),
            dyn_pool: HashMap::new(),
            certified: HashMap::new(),
            granted: HashMap::new(),
        }
    }

    fn taken(&self, name: &str) -> Option<Taken> {
        if self.local.contains_key(name) {
            return Some(Taken::Local);
        }
        self.remote.get(name).map(|r| Taken::Remote(r.gateway.clone()))
    }

    // ---- Local nodes.

    /// Registers a node that listens on `port` under `name` (an alive part alone gets the
    /// gateway's host); returns its full name. A name any node has, local or remote, is a
    /// duplicate.
    pub(super) fn register_local(
        &mut self,
        name: &str,
        port: u16,
        creation: u32,
        plug: Plug,
    ) -> Result<String, RegisterError> {
        let name = full_node_name(name, &self.host)?;
        if self.taken(&name).is_some() {
            return Err(RegisterError::Duplicate);
        }
        let node =
            LocalNode { port: Some(port), creation, outbound: 0, dynamic: false, plug: Some(plug), device: false };
        self.local.insert(name.clone(), node);
        Ok(name)
    }

    /// Registers device `name` (a full name, from its certificate), which has no port until
    /// someone dials it ([`Registry::set_device_port`]).
    pub(super) fn register_device(&mut self, name: &str, creation: u32) -> Result<(), Taken> {
        if let Some(t) = self.taken(name) {
            return Err(t);
        }
        let node = LocalNode { port: None, creation, outbound: 0, dynamic: false, plug: None, device: true };
        self.local.insert(name.to_string(), node);
        Ok(())
    }

    /// Forgets local node `name` (its registration ended); false if it was not there.
    pub(super) fn unregister_local(&mut self, name: &str) -> bool {
        self.local.remove(name).is_some()
    }

    /// Admits local node `name` dialling out with `creation`: a node that does not listen is
    /// held (and announced) while it has relayed connections. `dynamic`: the name was given
    /// here ([`Registry::dynamic_name`]). Refused when the name is a remote node's; the name
    /// must be a full one (`alive@host`).
    pub(super) fn hold_outbound(&mut self, name: &str, creation: u32, dynamic: bool) -> Result<Outbound, String> {
        full_node_name(name, &self.host).map_err(|e| e.to_string())?;
        if let Some(r) = self.remote.get(name) {
            return Err(format!("{name} is a node behind {}", r.gateway));
        }
        match self.local.get_mut(name) {
            Some(l) if l.port.is_some() || l.device => Ok(Outbound::Registered),
            Some(l) => {
                l.outbound += 1;
                Ok(Outbound::Held)
            }
            None => {
                let node = LocalNode { port: None, creation, outbound: 1, dynamic, plug: None, device: false };
                self.local.insert(name.to_string(), node);
                Ok(Outbound::New)
            }
        }
    }

    /// One relayed connection of a node held by [`Registry::hold_outbound`] ended. True when
    /// it was its last: the node is forgotten (a dynamic name goes back to the pool, with its
    /// next creation), to be announced gone.
    pub(super) fn release_outbound(&mut self, name: &str) -> bool {
        let last = match self.local.get_mut(name) {
            Some(l) if l.port.is_none() => {
                l.outbound = l.outbound.saturating_sub(1);
                l.outbound == 0
            }
            _ => false,
        };
        if !last {
            return false;
        }
        if let Some(LocalNode { dynamic: true, creation, .. }) = self.local.remove(name) {
            if let Some((_, host)) = name.split_once('@') {
                let free = (name.to_string(), next_creation(creation));
                self.dyn_pool.entry(host.to_string()).or_default().push(free);
            }
        }
        true
    }

    /// A name for a node that asked for one (a dynamic name, `-sname undefined`: `NAME_ME` in
    /// its handshake, `host` in place of its name), as OTP's `net_kernel` makes them: the last
    /// one freed at that host, with its next creation (a node that disconnected and connects
    /// again gets its name back, erl_distribution_SUITE `dyn_node_name`), else a random
    /// base-36 number at the node's host, with a fresh creation. `random` gives the numbers.
    /// The name is not taken until the node is held ([`Registry::hold_outbound`]).
    pub(crate) fn dynamic_name(&mut self, host: &str, mut random: impl FnMut() -> u64) -> (String, u32) {
        while let Some(free) = self.dyn_pool.get_mut(host).and_then(|p| p.pop()) {
            if self.taken(&free.0).is_none() {
                return free;
            }
        }
        loop {
            let name = format!("{}@{host}", base36(random()));
            if self.taken(&name).is_none() {
                return (name, fresh_creation(random()));
            }
        }
    }

    /// Local node `name`.
    pub(crate) fn local(&self, name: &str) -> Option<&LocalNode> {
        self.local.get(name)
    }

    /// Device `name`'s listener is open on `port`.
    pub(super) fn set_device_port(&mut self, name: &str, port: u16) {
        if let Some(l) = self.local.get_mut(name).filter(|l| l.device) {
            l.port = Some(port);
        }
    }

    /// The local nodes, as announced to peers.
    pub(super) fn local_list(&self) -> Vec<NodeInfo> {
        self.local.iter().map(|(n, l)| NodeInfo { name: n.clone(), creation: l.creation }).collect()
    }

    /// The local nodes that listen (devices too, with 0 until dialled), by name.
    pub(super) fn local_ports(&self) -> Vec<(String, u16)> {
        let mut out: Vec<_> = self
            .local
            .iter()
            .filter_map(|(n, l)| Some((n.clone(), if l.device { l.port.unwrap_or(0) } else { l.port? })))
            .collect();
        out.sort();
        out
    }

    /// The local nodes that only connect out, by name.
    pub(super) fn outbound_only(&self) -> Vec<String> {
        let mut out: Vec<_> =
            self.local.iter().filter(|(_, l)| l.port.is_none() && !l.device).map(|(n, _)| n.clone()).collect();
        out.sort();
        out
    }

    /// EPMD's `NAMES`: the alive part and port of each local node that listens.
    pub(super) fn alive_names(&self) -> Vec<(String, u16)> {
        self.local
            .iter()
            .filter_map(|(n, l)| Some((n.split('@').next().unwrap_or_default().to_string(), l.port?)))
            .collect()
    }

    // ---- Remote nodes.

    /// Files node `n` as `peer` announced it, if the peer may claim that name: it matches the
    /// peer's grant, and no local node or node of another gateway has it.
    pub(super) fn admit_remote(&mut self, peer: &str, n: &NodeInfo) -> Result<(), NotAdmitted> {
        if !self.granted.get(peer).is_some_and(|g| g.allows(&n.name)) {
            return Err(NotAdmitted::OutsideGrant);
        }
        if self.local.contains_key(&n.name) || self.remote.get(&n.name).is_some_and(|r| r.gateway != peer) {
            return Err(NotAdmitted::Taken);
        }
        self.remote.insert(n.name.clone(), RemoteNode { creation: n.creation, gateway: peer.to_string() });
        Ok(())
    }

    /// Forgets the remote nodes `pred` picks; returns the handles of the listeners that
    /// impersonated them, to be closed.
    pub(super) fn forget_remote(&mut self, pred: impl Fn(&str, &RemoteNode) -> bool) -> Vec<L> {
        let gone: Vec<String> = self.remote.iter().filter(|(n, r)| pred(n, r)).map(|(n, _)| n.clone()).collect();
        let mut closed = vec![];
        for n in gone {
            self.remote.remove(&n);
            closed.extend(self.impersonators.remove(&n).map(|(_, l)| l));
        }
        closed
    }

    /// Forgets the nodes of gateway `gateway` (see [`Registry::forget_remote`]).
    pub(super) fn forget_gateway(&mut self, gateway: &str) -> Vec<L> {
        self.forget_remote(|_, r| r.gateway == gateway)
    }

    /// `gateway`'s node list has come.
    pub(super) fn mark_listed(&mut self, gateway: &str) {
        self.listed.insert(gateway.to_string());
    }

    /// Whether `gateway`'s node list has come since the start.
    pub(super) fn is_listed(&self, gateway: &str) -> bool {
        self.listed.contains(gateway)
    }

    /// Whether no gateway's node list has come yet.
    pub(super) fn none_listed(&self) -> bool {
        self.listed.is_empty()
    }

    /// Remote node `name`.
    pub(crate) fn remote(&self, name: &str) -> Option<&RemoteNode> {
        self.remote.get(name)
    }

    /// The gateway that owns remote node `name`.
    pub(crate) fn owner_of(&self, name: &str) -> Option<&str> {
        self.remote.get(name).map(|r| r.gateway.as_str())
    }

    /// The nodes of gateway `gateway`.
    pub(super) fn nodes_of(&self, gateway: &str) -> Vec<NodeInfo> {
        let mut out: Vec<_> = self
            .remote
            .iter()
            .filter(|(_, r)| r.gateway == gateway)
            .map(|(n, r)| NodeInfo { name: n.clone(), creation: r.creation })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Every remote node and its gateway, by name.
    pub(super) fn remote_nodes(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self.remote.iter().map(|(n, r)| (n.clone(), r.gateway.clone())).collect();
        out.sort();
        out
    }

    /// Every remote node and its gateway, unordered.
    pub(super) fn owners(&self) -> impl Iterator<Item = (&str, &str)> {
        self.remote.iter().map(|(n, r)| (n.as_str(), r.gateway.as_str()))
    }

    /// Whether `name` is a node the gateway knows, local or remote (dialable or not).
    pub(super) fn knows(&self, name: &str) -> bool {
        self.taken(name).is_some()
    }

    // ---- Impersonation.

    /// The loopback port of `name` from what the registry holds now: a local node's own, or
    /// that of a listener impersonating a remote node; with fewer than `max_listeners` open,
    /// a remote node without one is to be impersonated.
    pub(super) fn resolve(&self, name: &str, max_listeners: usize) -> Resolved {
        if let Some(l) = self.local.get(name) {
            return match l.port {
                None if l.device => Resolved::Device,
                port => Resolved::Local(port),
            };
        }
        if let Some((port, _)) = self.impersonators.get(name) {
            return Resolved::Impersonated(*port);
        }
        if !self.remote.contains_key(name) || self.impersonators.len() >= max_listeners {
            return Resolved::Unknown;
        }
        Resolved::Impersonate
    }

    /// Files the listener impersonating remote node `name`, on `port`.
    pub(super) fn add_impersonator(&mut self, name: &str, port: u16, handle: L) {
        self.impersonators.insert(name.to_string(), (port, handle));
    }

    /// The listeners impersonating remote nodes, by name.
    pub(super) fn impersonated(&self) -> Vec<(String, u16)> {
        let mut out: Vec<_> = self.impersonators.iter().map(|(n, (p, _))| (n.clone(), *p)).collect();
        out.sort();
        out
    }

    /// Takes every impersonating listener's handle, to close them (shutting down).
    pub(super) fn take_impersonators(&mut self) -> Vec<L> {
        self.impersonators.drain().map(|(_, (_, l))| l).collect()
    }

    // ---- Grants of peer gateways.

    /// What `peer` may claim.
    pub(super) fn grant(&self, peer: &str) -> Option<&Grant> {
        self.granted.get(peer)
    }

    /// Sets what `peer` may claim.
    pub(super) fn set_grant(&mut self, peer: &str, grant: Grant) {
        self.granted.insert(peer.to_string(), grant);
    }

    /// Sets what `peer` may claim unless it has a grant already (membership's view does not
    /// replace a link's).
    pub(super) fn grant_unless_known(&mut self, peer: &str, grant: Grant) {
        self.granted.entry(peer.to_string()).or_insert(grant);
    }

    /// Files what `peer`'s certificate grants; `replace`: over what was filed before.
    pub(super) fn certify(&mut self, peer: &str, grant: &Grant, replace: bool) {
        match replace {
            true => {
                self.certified.insert(peer.to_string(), grant.clone());
            }
            false => {
                self.certified.entry(peer.to_string()).or_insert_with(|| grant.clone());
            }
        }
    }

    /// What each known peer's certificate grants.
    pub(super) fn certified(&self) -> Vec<(String, Grant)> {
        self.certified.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Forgets `peer`'s certificate and grant (revoked).
    pub(super) fn forget_grants(&mut self, peer: &str) {
        self.certified.remove(peer);
        self.granted.remove(peer);
    }
}

/// A creation from a random number: 0 to 3 are never used.
pub(super) fn fresh_creation(random: u64) -> u32 {
    (random as u32).max(4)
}

/// The creation after `c`, as OTP's `net_kernel:next_creation/1`: 0 to 3 are never used.
pub(super) fn next_creation(c: u32) -> u32 {
    c.checked_add(1).filter(|&n| n >= 4).unwrap_or(4)
}

/// `n` in base 36, upper case, as `integer_to_list(N, 36)`.
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A registry whose impersonating listeners are named by a number.
    pub(crate) fn registry() -> Registry<u32> {
        Registry::new("gwhost")
    }

    fn node(name: &str, creation: u32) -> NodeInfo {
        NodeInfo { name: name.into(), creation }
    }

    fn grant(nodes: &[&str]) -> Grant {
        Grant { nodes: nodes.iter().map(|n| n.to_string()).collect(), ..Grant::default() }
    }

    /// Numbers from a fixed list, then from a counter.
    fn numbers(list: &[u64]) -> impl FnMut() -> u64 + '_ {
        let mut i = 0;
        move || {
            i += 1;
            list.get(i - 1).copied().unwrap_or(1000 + i as u64)
        }
    }

    #[test]
    fn base36_is_erlangs_integer_to_list_36() {
        // integer_to_list(N, 36) in Erlang.
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "Z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(u64::MAX), "3W5E11264SGSF");
    }

    #[test]
    fn creations_skip_0_to_3_as_otp_does() {
        assert_eq!((next_creation(4), next_creation(41), next_creation(u32::MAX)), (5, 42, 4));
        assert_eq!(next_creation(0), 4);
        assert_eq!((fresh_creation(0), fresh_creation(3), fresh_creation(9)), (4, 4, 9));
        // Only the low 32 bits count.
        assert_eq!(fresh_creation((7 << 32) | 5), 5);
    }

    #[test]
    fn local_nodes_register_with_full_names_and_once() {
        let mut reg = registry();
        assert_eq!(reg.register_local("a", 1000, 5, Plug::new().0).unwrap(), "a@gwhost");
        assert_eq!(reg.register_local("b@10.0.0.2", 1001, 6, Plug::new().0).unwrap(), "b@10.0.0.2");
        assert!(matches!(reg.register_local("a@gwhost", 1, 7, Plug::new().0), Err(RegisterError::Duplicate)));
        assert!(matches!(reg.register_local("a", 1, 7, Plug::new().0), Err(RegisterError::Duplicate)));
        assert!(matches!(reg.register_local("", 1, 7, Plug::new().0), Err(RegisterError::InvalidName { .. })));
        assert!(matches!(reg.register_local("x@y@z", 1, 7, Plug::new().0), Err(RegisterError::InvalidName { .. })));
        assert_eq!(reg.local_ports(), vec![("a@gwhost".into(), 1000), ("b@10.0.0.2".into(), 1001)]);
        let mut names = reg.alive_names();
        names.sort();
        assert_eq!(names, vec![("a".into(), 1000), ("b".into(), 1001)]);
        let mut list = reg.local_list();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(list, vec![node("a@gwhost", 5), node("b@10.0.0.2", 6)]);
        assert!(reg.local("a@gwhost").is_some_and(|l| l.plug.is_some() && !l.device));
        assert!(reg.knows("a@gwhost") && !reg.knows("a"));
        assert_eq!(reg.resolve("a@gwhost", 10), Resolved::Local(Some(1000)));
        // Unregistered: gone, and the name is free again.
        assert!(reg.unregister_local("a@gwhost"));
        assert!(!reg.unregister_local("a@gwhost"));
        assert_eq!(reg.resolve("a@gwhost", 10), Resolved::Unknown);
        assert_eq!(reg.register_local("a", 1002, 8, Plug::new().0).unwrap(), "a@gwhost");
    }

    #[test]
    fn a_remote_nodes_name_is_not_for_a_local_node() {
        let mut reg = registry();
        reg.set_grant("gw-far", grant(&["*"]));
        reg.admit_remote("gw-far", &node("r@far", 4)).unwrap();
        assert!(matches!(reg.register_local("r@far", 1, 5, Plug::new().0), Err(RegisterError::Duplicate)));
        assert_eq!(reg.register_device("r@far", 5), Err(Taken::Remote("gw-far".into())));
        let err = reg.hold_outbound("r@far", 5, false).unwrap_err();
        assert!(err.contains("gw-far"), "{err}");
        assert!(reg.local("r@far").is_none());
    }

    #[test]
    fn devices_are_local_nodes_without_a_port_until_dialled() {
        let mut reg = registry();
        reg.register_device("d@dev", 5).unwrap();
        assert_eq!(reg.register_device("d@dev", 6), Err(Taken::Local));
        assert!(matches!(reg.register_local("d@dev", 1, 5, Plug::new().0), Err(RegisterError::Duplicate)));
        assert_eq!(reg.resolve("d@dev", 10), Resolved::Device);
        assert_eq!(reg.local_ports(), vec![("d@dev".into(), 0)]);
        assert!(reg.outbound_only().is_empty());
        // A device dialling out is held by its registration, not by its connections.
        assert_eq!(reg.hold_outbound("d@dev", 5, false), Ok(Outbound::Registered));
        reg.set_device_port("d@dev", 4000);
        assert_eq!(reg.resolve("d@dev", 10), Resolved::Local(Some(4000)));
        assert_eq!(reg.local_ports(), vec![("d@dev".into(), 4000)]);
        // Only a device's port is set that way.
        reg.register_local("n", 1000, 5, Plug::new().0).unwrap();
        reg.set_device_port("n@gwhost", 1);
        assert_eq!(reg.resolve("n@gwhost", 10), Resolved::Local(Some(1000)));
        assert!(reg.unregister_local("d@dev"));
    }

    #[test]
    fn nodes_that_do_not_listen_are_held_while_they_have_connections() {
        let mut reg = registry();
        assert_eq!(reg.hold_outbound("n@elsewhere", 7, false), Ok(Outbound::New));
        assert_eq!(reg.hold_outbound("n@elsewhere", 7, false), Ok(Outbound::Held));
        assert_eq!(reg.outbound_only(), vec!["n@elsewhere".to_string()]);
        assert!(reg.local_ports().is_empty());
        assert_eq!(reg.resolve("n@elsewhere", 10), Resolved::Local(None));
        assert!(reg.alive_names().is_empty(), "not in NAMES: it does not listen");
        assert_eq!(reg.local_list(), vec![node("n@elsewhere", 7)]);
        assert!(matches!(reg.register_local("n@elsewhere", 1, 5, Plug::new().0), Err(RegisterError::Duplicate)));
        assert!(!reg.release_outbound("n@elsewhere"));
        assert_eq!(reg.outbound_only().len(), 1);
        assert!(reg.release_outbound("n@elsewhere"), "the last one");
        assert!(reg.outbound_only().is_empty() && !reg.knows("n@elsewhere"));
        assert!(!reg.release_outbound("n@elsewhere"));
        // A registered node dialling out: nothing to hold, nothing to release.
        reg.register_local("b", 1000, 5, Plug::new().0).unwrap();
        assert_eq!(reg.hold_outbound("b@gwhost", 9, false), Ok(Outbound::Registered));
        assert!(!reg.release_outbound("b@gwhost"));
        assert!(reg.local("b@gwhost").is_some());
    }

    #[test]
    fn outbound_names_must_be_full_names() {
        let mut reg = registry();
        assert!(reg.hold_outbound("@host", 7, false).is_err());
        assert!(reg.hold_outbound("a@", 7, false).is_err());
        assert!(reg.hold_outbound("a@b@c", 7, false).is_err());
        assert!(reg.local_list().is_empty());
    }

    #[test]
    fn dynamic_names_are_base36_at_the_nodes_host_and_never_in_use() {
        let mut reg = registry();
        let (name, creation) = reg.dynamic_name("hosta", numbers(&[36, 9]));
        assert_eq!((name.as_str(), creation), ("10@hosta", 9));
        // Not taken until held: asked again, the same numbers give the same name.
        assert_eq!(reg.dynamic_name("hosta", numbers(&[36, 9])).0, "10@hosta");
        assert_eq!(reg.hold_outbound(&name, creation, true), Ok(Outbound::New));
        // In use: the next number.
        assert_eq!(reg.dynamic_name("hosta", numbers(&[36, 37, 2])), ("11@hosta".into(), 4));
        // Nor a remote node's.
        reg.set_grant("gw", grant(&["*"]));
        reg.admit_remote("gw", &node("Z@hostb", 4)).unwrap();
        assert_eq!(reg.dynamic_name("hostb", numbers(&[35, 0, 7])), ("0@hostb".into(), 7));
    }

    #[test]
    fn a_dynamic_name_whose_node_is_gone_is_given_again_with_its_next_creation() {
        let mut reg = registry();
        let (name, creation) = reg.dynamic_name("hosta", numbers(&[100, 50]));
        assert_eq!(reg.hold_outbound(&name, creation, true), Ok(Outbound::New));
        assert_eq!(reg.hold_outbound(&name, creation, true), Ok(Outbound::Held));
        assert!(!reg.release_outbound(&name));
        assert!(reg.release_outbound(&name));
        // Back first, with the next creation, at its host only, and once.
        assert_eq!(reg.dynamic_name("hostb", numbers(&[1, 8])), ("1@hostb".into(), 8));
        assert_eq!(reg.dynamic_name("hosta", numbers(&[2, 8])), (name.clone(), 51));
        assert_eq!(reg.dynamic_name("hosta", numbers(&[2, 8])), ("2@hosta".into(), 8));
        // A name not given here does not go to the pool.
        assert_eq!(reg.hold_outbound("3@hosta", 5, false), Ok(Outbound::New));
        assert!(reg.release_outbound("3@hosta"));
        assert_eq!(reg.dynamic_name("hosta", numbers(&[4, 8])), ("4@hosta".into(), 8));
    }

    #[test]
    fn a_pooled_name_taken_meanwhile_is_skipped() {
        let mut reg = registry();
        assert_eq!(reg.hold_outbound("A@hosta", 10, true), Ok(Outbound::New));
        assert_eq!(reg.hold_outbound("B@hosta", 20, true), Ok(Outbound::New));
        assert!(reg.release_outbound("A@hosta"));
        assert!(reg.release_outbound("B@hosta"));
        // B's name came back last: given first, but a node registered under it since.
        reg.register_local("B@hosta", 1000, 5, Plug::new().0).unwrap();
        assert_eq!(reg.dynamic_name("hosta", numbers(&[])), ("A@hosta".into(), 11));
    }

    #[test]
    fn announcements_need_the_grant_and_a_free_name() {
        let mut reg = registry();
        // No grant: nothing is admitted.
        assert_eq!(reg.admit_remote("gw1", &node("a@h1", 4)), Err(NotAdmitted::OutsideGrant));
        reg.set_grant("gw1", grant(&["*@h1"]));
        reg.set_grant("gw2", grant(&["*"]));
        reg.admit_remote("gw1", &node("a@h1", 4)).unwrap();
        assert_eq!(reg.admit_remote("gw1", &node("a@h2", 4)), Err(NotAdmitted::OutsideGrant));
        // Another gateway's node, or a local one: taken.
        assert_eq!(reg.admit_remote("gw2", &node("a@h1", 5)), Err(NotAdmitted::Taken));
        reg.register_local("l", 1000, 5, Plug::new().0).unwrap();
        assert_eq!(reg.admit_remote("gw2", &node("l@gwhost", 5)), Err(NotAdmitted::Taken));
        // Its own node again: a new creation.
        reg.admit_remote("gw1", &node("a@h1", 9)).unwrap();
        assert_eq!(reg.remote("a@h1"), Some(&RemoteNode { creation: 9, gateway: "gw1".into() }));
        assert_eq!(reg.owner_of("a@h1"), Some("gw1"));
        assert_eq!(reg.owner_of("l@gwhost"), None);
        assert_eq!((NotAdmitted::OutsideGrant.reason(), NotAdmitted::Taken.reason()), ("name_claim", "name_taken"));
    }

    #[test]
    fn remote_nodes_by_gateway_and_forgotten_with_their_listeners() {
        let mut reg = registry();
        reg.set_grant("gw1", grant(&["*"]));
        reg.set_grant("gw2", grant(&["*"]));
        for (gw, n) in [("gw1", "a@h1"), ("gw1", "b@h1"), ("gw2", "c@h2")] {
            reg.admit_remote(gw, &node(n, 4)).unwrap();
        }
        assert_eq!(reg.nodes_of("gw1"), vec![node("a@h1", 4), node("b@h1", 4)]);
        assert_eq!(
            reg.remote_nodes(),
            vec![("a@h1".into(), "gw1".into()), ("b@h1".into(), "gw1".into()), ("c@h2".into(), "gw2".into())]
        );
        let mut owners: Vec<_> = reg.owners().collect();
        owners.sort();
        assert_eq!(owners, vec![("a@h1", "gw1"), ("b@h1", "gw1"), ("c@h2", "gw2")]);
        // Impersonated: a@h1 and c@h2.
        assert_eq!(reg.resolve("a@h1", 10), Resolved::Impersonate);
        reg.add_impersonator("a@h1", 5001, 1);
        reg.add_impersonator("c@h2", 5002, 2);
        assert_eq!(reg.resolve("a@h1", 10), Resolved::Impersonated(5001));
        assert_eq!(reg.impersonated(), vec![("a@h1".into(), 5001), ("c@h2".into(), 5002)]);
        // One node: its listener comes back to be closed.
        assert_eq!(reg.forget_remote(|n, r| n == "a@h1" && r.gateway == "gw1"), vec![1]);
        assert_eq!(reg.resolve("a@h1", 10), Resolved::Unknown);
        // A gateway's: all of them; a node without a listener gives nothing back.
        assert_eq!(reg.forget_gateway("gw1"), Vec::<u32>::new());
        assert_eq!(reg.nodes_of("gw1"), vec![]);
        assert_eq!(reg.forget_gateway("gw2"), vec![2]);
        assert!(reg.impersonated().is_empty() && reg.remote_nodes().is_empty());
    }

    #[test]
    fn impersonating_listeners_are_bounded_and_taken_at_shutdown() {
        let mut reg = registry();
        reg.set_grant("gw", grant(&["*"]));
        for n in ["a@h", "b@h", "c@h"] {
            reg.admit_remote("gw", &node(n, 4)).unwrap();
        }
        reg.add_impersonator("a@h", 5001, 1);
        reg.add_impersonator("b@h", 5002, 2);
        assert_eq!(reg.resolve("c@h", 2), Resolved::Unknown, "no room for a third");
        assert_eq!(reg.resolve("c@h", 3), Resolved::Impersonate);
        assert_eq!(reg.resolve("b@h", 2), Resolved::Impersonated(5002), "those open stay reachable");
        let mut taken = reg.take_impersonators();
        taken.sort();
        assert_eq!(taken, vec![1, 2]);
        assert!(reg.impersonated().is_empty());
        assert!(reg.knows("a@h"), "the nodes stay known");
    }

    #[test]
    fn node_lists_come_per_gateway() {
        let mut reg = registry();
        assert!(reg.none_listed() && !reg.is_listed("gw1"));
        reg.mark_listed("gw1");
        assert!(!reg.none_listed() && reg.is_listed("gw1") && !reg.is_listed("gw2"));
    }

    #[test]
    fn grants_and_certificates_of_peers() {
        let mut reg = registry();
        assert!(reg.grant("gw").is_none());
        reg.grant_unless_known("gw", grant(&["a*"]));
        reg.grant_unless_known("gw", grant(&["b*"]));
        assert_eq!(reg.grant("gw"), Some(&grant(&["a*"])), "a grant known stays");
        reg.set_grant("gw", grant(&["b*"]));
        assert_eq!(reg.grant("gw"), Some(&grant(&["b*"])));
        let (c1, c2) = (Grant { serial: "01".into(), ..grant(&["*"]) }, Grant { serial: "02".into(), ..grant(&["*"]) });
        reg.certify("gw", &c1, false);
        reg.certify("gw", &c2, false);
        assert_eq!(reg.certified(), vec![("gw".into(), c1.clone())], "membership does not replace");
        reg.certify("gw", &c2, true);
        assert_eq!(reg.certified(), vec![("gw".into(), c2)], "a link does");
        reg.forget_grants("gw");
        assert!(reg.grant("gw").is_none() && reg.certified().is_empty());
        // Without a grant, its announcements are refused.
        assert_eq!(reg.admit_remote("gw", &node("a@h", 4)), Err(NotAdmitted::OutsideGrant));
    }
}
