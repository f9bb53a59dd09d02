//! What the gateway tells its peers (and membership) about its nodes, and what it learns of
//! theirs: announcements filed in the registry (or refused), node lists replaced, nodes
//! forgotten with their impersonators, the lists a relay passes on for the gateways it relays
//! for, and membership's events.

use super::registry::{NotAdmitted, RemoteNode};
use super::{lock, Inner};
use crate::fabric::close::CLOSE_NORMAL;
use crate::fabric::gossip::{Command, Event};
use crate::lookup::Answer;
use crate::wire::{Msg, NodeInfo};
use tracing::{debug, info};

impl Inner {
    /// Registers a node a peer announced, if the peer may claim that name: it matches the peer's
    /// grant, and no local node or node of another gateway has it.
    pub(super) fn admit_remote(&self, peer: &str, n: NodeInfo) {
        let admitted = self.registry().admit_remote(peer, &n);
        match admitted {
            Ok(()) => lock(&self.waiters).settle(&n.name, Answer::Known),
            Err(e) => {
                let why = match e {
                    NotAdmitted::OutsideGrant => "outside its node-name grant",
                    NotAdmitted::Taken => "a node of another gateway",
                };
                self.refuse(peer, e.reason(), &format!("announcement of {} ({why})", n.name));
            }
        }
    }

    /// The local nodes, as announced.
    pub(super) fn local_list(&self) -> Vec<NodeInfo> {
        self.registry().local_list()
    }

    /// Tells linked peers (and membership) that a local node came or went.
    pub(super) fn broadcast(&self, m: Msg) {
        self.links().tell(&m, |_| true);
        if let Some(g) = self.gossip.get() {
            let _ = g.send(Command::Nodes(self.local_list()));
        }
    }

    /// Replaces what `peer` says its nodes are, keeping the listeners of nodes still there.
    pub(super) fn replace_remote(&self, peer: &str, nodes: Vec<NodeInfo>) {
        let names: std::collections::HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        self.forget_remote(|n, r| r.gateway == peer && !names.contains(n));
        for n in nodes {
            self.admit_remote(peer, n);
        }
        // After the nodes: a lookup that sees the list in finds them registered.
        self.registry().mark_listed(peer);
    }

    /// What membership says.
    pub(super) fn membership_event(&self, e: Event) {
        match e {
            Event::Up(m) => {
                info!(peer = %m.name, addr = %m.fabric, "member up");
                self.links().member_up(m.name, m.fabric);
            }
            Event::Down(m) => {
                info!(peer = %m.name, "member down");
                let mut st = self.links();
                st.member_down(&m.name);
                for l in st.of(&m.name) {
                    l.conn.close(CLOSE_NORMAL, b"membership says you are gone");
                }
                drop(st);
                self.forget_gateway(&m.name);
            }
            Event::Nodes { gateway, nodes, grant } => {
                if self.is_revoked(&gateway, &grant.serial) {
                    self.refuse(&gateway, "revoked", &format!("membership: certificate {} is revoked", grant.serial));
                    return;
                }
                self.registry().certify(&gateway, &grant, false);
                let grant = self.effective_grant(&gateway, (*grant).clone());
                self.registry().grant_unless_known(&gateway, grant);
                self.replace_remote(&gateway, nodes);
            }
            Event::Node { gateway, node, grant } => {
                let name = node.name.clone();
                if self.is_revoked(&gateway, &grant.serial) {
                    self.refuse(&gateway, "revoked", &format!("membership: certificate {} is revoked", grant.serial));
                } else {
                    debug!(node = %name, %gateway, "lookup: the owner answered");
                    let grant = self.effective_grant(&gateway, (*grant).clone());
                    self.registry().grant_unless_known(&gateway, grant);
                    // Admitted as an announcement would be (grant, name taken): that settles
                    // the lookup; refused, the node is unknown here.
                    self.admit_remote(&gateway, node);
                }
                let admitted = self.registry().owner_of(&name) == Some(gateway.as_str());
                if !admitted {
                    // What the owner says is now: unknown to whoever asked before.
                    lock(&self.waiters).settle(&name, Answer::Unknown { since: std::time::Instant::now() });
                }
            }
            Event::Unknown { name, since } => {
                debug!(node = %name, "lookup: no member has it");
                lock(&self.waiters).settle(&name, Answer::Unknown { since });
            }
            Event::Refused { from, why } => self.refuse(&from.ip().to_string(), "membership", &why),
        }
    }

    /// For a peer that just linked: the node lists of the gateways this one relays for, and,
    /// if it relays for that peer, of every other gateway.
    pub(super) fn relayed_lists(&self, to: &str) -> Vec<Msg> {
        let gateways = self.links().linked();
        let gateways = gateways.into_iter().filter(|g| g != to && (self.relays_for(g) || self.relays_for(to)));
        let reg = self.registry();
        gateways.map(|g| Msg::RelayedNodes { nodes: reg.nodes_of(&g), gateway: g }).collect()
    }

    /// A relay's list of the nodes of a gateway it relays for: taken only if our config says we
    /// reach that gateway through this relay; the names must fit that gateway's `nodes` (from
    /// our config), else the relay's own grant.
    pub(super) fn relayed_nodes(&self, relay: &str, gateway: String, nodes: Vec<NodeInfo>) {
        if self.peer_config(&gateway).and_then(|p| p.via).as_deref() != Some(relay) {
            self.refuse(relay, "name_claim", &format!("nodes of {gateway}, which it does not relay for here"));
            return;
        }
        let relay_grant = self.registry().grant(relay).cloned().unwrap_or_default();
        let grant = self.effective_grant(&gateway, relay_grant);
        self.registry().set_grant(&gateway, grant);
        self.replace_remote(&gateway, nodes);
    }

    /// `gateway`'s nodes changed: if this gateway relays for it, tell the other peers; tell the
    /// peers it relays for in any case.
    pub(super) fn relayed_nodes_changed(&self, gateway: &str) {
        if !self.cfg.fabric.relay {
            return;
        }
        let everyone = self.relays_for(gateway);
        let nodes = self.registry().nodes_of(gateway);
        let m = Msg::RelayedNodes { gateway: gateway.to_string(), nodes };
        self.links().tell(&m, |name| name != gateway && (everyone || self.relays_for(name)));
    }

    /// Forgets remote nodes and closes their impersonators.
    pub(super) fn forget_remote(&self, pred: impl Fn(&str, &RemoteNode) -> bool) {
        let closed = self.registry().forget_remote(pred);
        for task in closed {
            task.abort();
        }
    }

    /// Forgets `gateway`'s nodes and closes their impersonators.
    pub(super) fn forget_gateway(&self, gateway: &str) {
        let closed = self.registry().forget_gateway(gateway);
        for task in closed {
            task.abort();
        }
    }
}
