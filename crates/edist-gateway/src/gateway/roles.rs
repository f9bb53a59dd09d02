//! What each peer gateway (or device) is allowed here: its role (config, certificate or
//! default), what it may claim (its grant with the config over it), whether it is revoked,
//! whether this gateway relays for it; the ingress policy of its relayed connections, and
//! refusals logged and counted.

use super::{lock, Inner};
use crate::policy;
use crate::session::sync;
use std::sync::Arc;

impl Inner {
    /// What each peer gateway under a restricted role uses of it, by peer name.
    pub(super) fn policy_reports(&self) -> Vec<policy::PeerReport> {
        let peers: Vec<(String, policy::SharedPeer)> =
            lock(&self.peer_budgets).iter().map(|(p, s)| (p.clone(), s.clone())).collect();
        let mut out: Vec<policy::PeerReport> = peers
            .into_iter()
            .map(|(peer, state)| {
                let (name, role) = self.role_of(&peer);
                let usage = state.lock().unwrap_or_else(|e| e.into_inner()).usage();
                policy::PeerReport::new(peer, name, &role, usage)
            })
            .collect();
        out.sort_by(|a, b| a.peer.cmp(&b.peer));
        out
    }

    /// The role of peer gateway `peer`, and its name: its config entry's, else its
    /// certificate's, else `policy.default_role`.
    pub(crate) fn role_of(&self, peer: &str) -> (String, Arc<policy::Role>) {
        if peer.contains('@') {
            // A device (a node name; no gateway name has an '@'): for reports.
            return (self.cfg.devices.role.clone(), self.device_role(None));
        }
        let live = self.live();
        let name = self.peer_role(peer).unwrap_or_else(|| live.default_role.clone());
        // Validated with the config; an unknown name cannot get here, but fail closed anyway.
        let role = live.roles.get(&name).cloned().unwrap_or_else(|| Arc::new(policy::Role::device()));
        (name, role)
    }

    /// The ingress policy for a relayed connection between local node `local` and `remote`,
    /// a node of `peer`'s; `None` when its role lets every packet through untouched.
    pub(crate) fn inbound_policy(
        self: &Arc<Self>,
        peer: &str,
        (local, remote): (&str, &str),
    ) -> Option<Arc<sync::InboundPolicy>> {
        let (_, role) = self.role_of(peer);
        if role.is_open() {
            return None;
        }
        let shared = lock(&self.peer_budgets).entry(peer.to_string()).or_default().clone();
        let weak = Arc::downgrade(self);
        let peer_name = peer.to_string();
        Some(Arc::new(sync::InboundPolicy {
            session: policy::Session::new(role, shared, local, remote),
            on_refuse: Box::new(move |r| {
                if let Some(inner) = weak.upgrade() {
                    inner.refuse_by_policy(&peer_name, r);
                }
            }),
        }))
    }

    /// Logs (once per burst) and counts a refusal.
    pub(crate) fn refuse(&self, peer: &str, reason: &str, what: &str) {
        let filed = self.refusals.record(peer, reason, "", what, false);
        self.metrics.refused(&filed, reason);
    }

    /// Logs (the first of each target at once, then once per burst) and counts a refusal of
    /// the policy, or in audit mode what it would have refused.
    pub(super) fn refuse_by_policy(&self, peer: &str, r: &policy::Refusal) {
        let reason = r.reason.as_str();
        let filed = self.refusals.record(peer, reason, &r.target, &r.detail, r.audit);
        match r.audit {
            true => self.metrics.audited(&filed, reason),
            false => self.metrics.refused(&filed, reason),
        }
    }

    /// The role of a peer gateway: its config entry's, else its certificate's.
    pub(super) fn peer_role(&self, peer: &str) -> Option<String> {
        let configured = self.peer_config(peer).and_then(|p| p.role);
        configured.or_else(|| self.registry().grant(peer).and_then(|g| g.role.clone()))
    }

    /// What a peer gateway may claim: its certificate's grant, with the config's `nodes` over it.
    pub(super) fn effective_grant(&self, peer: &str, mut grant: crate::pki::Grant) -> crate::pki::Grant {
        if let Some(nodes) = self.peer_config(peer).and_then(|p| p.nodes) {
            grant.nodes = nodes;
        }
        grant
    }

    /// `[[peers]]` entry of `name`, as last (re)loaded.
    pub(crate) fn peer_config(&self, name: &str) -> Option<crate::config::PeerConfig> {
        self.live().peers.iter().find(|p| p.name == name).cloned()
    }

    /// Whether this gateway relays for `gateway`: `[fabric] relay` is on and `gateway` is a
    /// peer that dials in and cannot be dialled (no `addr`).
    pub(crate) fn relays_for(&self, gateway: &str) -> bool {
        self.cfg.fabric.relay && self.peer_config(gateway).is_some_and(|p| p.addr.is_none())
    }

    pub(super) fn is_revoked(&self, peer: &str, serial: &str) -> bool {
        self.live().is_revoked(peer, serial)
    }
}
