//! What `edist status` shows of the fabric besides the registry: the links and why each is
//! open, the gateways membership knows and their state, the role each peer has here.

use super::links::LinkTable;
use super::Inner;
use crate::fabric::link::Closed;
use crate::fabric::membership::MemberState;
use serde::{Deserialize, Serialize};

/// Why a link to a peer gateway was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkReason {
    /// We dialled it: a `[[peers]]` entry with an `addr`.
    Configured,
    /// We dialled it: it answered at a `[fabric] seeds` address.
    Seed,
    /// We dialled it on demand (membership): a local node connected to one of its nodes.
    Traffic,
    /// It dialled us.
    Accepted,
}

impl LinkReason {
    /// The word logs and JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkReason::Configured => "configured",
            LinkReason::Seed => "seed",
            LinkReason::Traffic => "traffic",
            LinkReason::Accepted => "accepted",
        }
    }

    /// What `edist status` says.
    pub fn describe(self) -> &'static str {
        match self {
            LinkReason::Configured => "dialled: [[peers]] entry",
            LinkReason::Seed => "dialled: answered at a seed address",
            LinkReason::Traffic => "dialled: a local node connected to one of its nodes",
            LinkReason::Accepted => "it dialled us",
        }
    }
}

/// One link, for `edist status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub peer: String,
    /// This gateway's number for the link (a peer can have two for a while: both dialled).
    pub id: u64,
    pub why: LinkReason,
    /// The peer's fabric address as seen on the link.
    pub remote: String,
    /// Serial of the certificate the peer presented when the link was set up.
    pub serial: String,
    /// Relayed connections it carries now.
    pub relays: u64,
    /// Milliseconds it has carried no relayed connection (0 while it carries one).
    pub idle_ms: u64,
    /// Milliseconds since it came up.
    pub up_ms: u64,
    /// Round-trip time, congestion window and losses (QUIC links).
    #[serde(default)]
    pub path: Option<crate::fabric::link::PathStats>,
}

/// A gateway membership knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    /// Its fabric address.
    pub fabric: String,
    pub state: MemberState,
    /// Whether a link to it is up (links open on traffic).
    pub linked: bool,
}

/// The role a peer gateway's nodes get here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRole {
    pub peer: String,
    pub role: String,
    /// `config` (its `[[peers]]` entry), `certificate` (its certificate's grant) or `default`
    /// (`[policy] default_role`).
    pub from: String,
}

/// The links in the state, by peer then link number.
pub(super) fn links(st: &LinkTable) -> Vec<LinkStatus> {
    let now = tokio::time::Instant::now();
    let mut out: Vec<LinkStatus> = st
        .all()
        .map(|(peer, l)| LinkStatus {
            peer: peer.to_string(),
            id: l.link_id,
            why: l.why,
            remote: l.conn.remote_address().to_string(),
            serial: l.serial.clone(),
            relays: l.usage.sessions.load(std::sync::atomic::Ordering::Relaxed),
            idle_ms: millis(l.usage.idle_for()),
            up_ms: millis(now.duration_since(l.since)),
            path: l.conn.path(),
        })
        .collect();
    out.sort_by(|a, b| (&a.peer, a.id).cmp(&(&b.peer, b.id)));
    out
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a link ended, in words for the log.
pub(super) fn closed_text(c: Option<&Closed>) -> String {
    match c {
        None => "closed".into(),
        Some(Closed::Locally) => "closed here".into(),
        Some(Closed::ByPeer { code, reason }) => format!("closed by the peer (code {code}: {reason})"),
        Some(Closed::Lost(why)) => format!("lost: {why}"),
    }
}

impl Inner {
    /// Membership's view, one entry per gateway (its latest life), by name.
    pub(super) fn member_statuses(&self) -> Vec<MemberStatus> {
        let known = super::lock(&self.gossip_traffic.members).clone();
        let mut latest: std::collections::BTreeMap<String, (u64, MemberStatus)> = Default::default();
        let st = self.links();
        for (id, state) in known {
            let entry = MemberStatus {
                name: id.name.clone(),
                fabric: id.fabric.to_string(),
                state,
                linked: st.is_linked(&id.name),
            };
            match latest.get(&id.name) {
                Some((bump, _)) if *bump > id.bump => {}
                _ => {
                    latest.insert(id.name.clone(), (id.bump, entry));
                }
            }
        }
        latest.into_values().map(|(_, m)| m).collect()
    }

    /// The role of every peer gateway this one knows of: linked, configured or a member.
    pub(super) fn peer_roles(&self, linked: &[String], members: &[MemberStatus]) -> Vec<PeerRole> {
        let live = self.live();
        let mut names: std::collections::BTreeSet<String> = linked.iter().cloned().collect();
        names.extend(live.peers.iter().map(|p| p.name.clone()));
        names.extend(members.iter().map(|m| m.name.clone()));
        names
            .into_iter()
            .map(|peer| {
                let configured = live.peers.iter().find(|p| p.name == peer).and_then(|p| p.role.clone());
                let certified = self.registry().grant(&peer).and_then(|g| g.role.clone());
                let (role, from) = match (configured, certified) {
                    (Some(r), _) => (r, "config"),
                    (None, Some(r)) => (r, "certificate"),
                    (None, None) => (live.default_role.clone(), "default"),
                };
                PeerRole { peer, role, from: from.into() }
            })
            .collect()
    }
}
