//! What the policy remembers about one peer gateway, shared by the lanes of all its relayed
//! connections (both directions): the atoms it may send for free and those it was charged for,
//! its rate buckets, and its capabilities — the pids, aliases and ports the nodes here handed
//! to it, the links and monitors local processes made with its processes, the spawn requests
//! local processes sent it.
//!
//! Everything is bounded: per kind at most the role's `max_grants` entries (the oldest half is
//! forgotten when full, so the cost per insertion stays constant), at most [`MAX_LEARNED`]
//! learned atoms, at most [`MAX_NODES`] node names. Entries made on a relayed connection go with
//! it ([`PeerState::forget_session`]): OTP ends links and monitors with the connection, and a
//! capability handed on a connection lasts while one connection that handed it lasts.

use super::otp;
use edist_proto::etf::{AtomText, Pid, Port, Ref, Token};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Atoms learned from what local nodes send to a peer, at most.
pub const MAX_LEARNED: usize = 16_384;
/// Node names a peer's capabilities may mention, at most (beyond, pids of further nodes are not
/// granted: fail closed).
pub const MAX_NODES: usize = 4096;
/// Relayed connections a capability remembers having been handed on.
const SESSIONS_PER_GRANT: usize = 4;

/// A pid, port or reference, with its node name interned (cheap to hash and copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Pid { node: u16, id: u32, serial: u32, creation: u32 },
    Port { node: u16, id: u64, creation: u32 },
    Ref { node: u16, creation: u32, len: u8, ids: [u32; 5] },
}

/// Node names, interned.
#[derive(Debug, Default)]
struct Nodes {
    ids: HashMap<Box<str>, u16>,
}

impl Nodes {
    fn get(&self, name: &str) -> Option<u16> {
        self.ids.get(name).copied()
    }

    fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(id) = self.get(name) {
            return Some(id);
        }
        if self.ids.len() >= MAX_NODES {
            return None;
        }
        let id = u16::try_from(self.ids.len()).ok()?;
        self.ids.insert(name.into(), id);
        Some(id)
    }
}

fn ref_ids(words: impl Iterator<Item = u32>) -> Option<(u8, [u32; 5])> {
    let mut ids = [0u32; 5];
    let mut n = 0u8;
    for w in words {
        *ids.get_mut(usize::from(n))? = w;
        n += 1;
    }
    Some((n, ids))
}

/// A pid, port or reference as it appears in a message.
pub(crate) enum Thing<'a> {
    Pid(&'a Pid),
    Port(&'a Port),
    Ref(&'a Ref),
    /// A token of a walked term (a pid, port or reference token; others are ignored).
    Token(&'a Token<'a>),
}

impl Thing<'_> {
    /// Its node's name (`None` for an atom-cache reference, which relays never carry).
    pub(crate) fn node(&self) -> Option<&str> {
        match self {
            Thing::Pid(p) => Some(p.node.as_str()),
            Thing::Port(p) => Some(p.node.as_str()),
            Thing::Ref(r) => Some(r.node.as_str()),
            Thing::Token(Token::Pid { node, .. } | Token::Port { node, .. } | Token::Ref { node, .. }) => match node {
                AtomText::Text(t) => Some(t.as_ref()),
                AtomText::CacheRef(_) => None,
            },
            Thing::Token(_) => None,
        }
    }

    fn key(&self, node: u16) -> Option<Key> {
        Some(match self {
            Thing::Pid(p) => Key::Pid { node, id: p.id, serial: p.serial, creation: p.creation },
            Thing::Port(p) => Key::Port { node, id: p.id, creation: p.creation },
            Thing::Ref(r) => {
                let (len, ids) = ref_ids(r.ids.iter().copied())?;
                Key::Ref { node, creation: r.creation, len, ids }
            }
            Thing::Token(Token::Pid { id, serial, creation, .. }) => {
                Key::Pid { node, id: *id, serial: *serial, creation: *creation }
            }
            Thing::Token(Token::Port { id, creation, .. }) => Key::Port { node, id: *id, creation: *creation },
            Thing::Token(Token::Ref { creation, ids, .. }) => {
                let words = ids.chunks_exact(4).filter_map(|c| <[u8; 4]>::try_from(c).ok()).map(u32::from_be_bytes);
                let (len, ids) = ref_ids(words)?;
                Key::Ref { node, creation: *creation, len, ids }
            }
            Thing::Token(_) => return None,
        })
    }
}

/// A map whose entries carry a use stamp; when full, the older half goes (amortised O(1)).
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, (u64, V)>,
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Bounded { map: HashMap::new() }
    }
}

impl<K: Eq + Hash + Copy, V> Bounded<K, V> {
    fn insert(&mut self, k: K, v: V, stamp: u64, max: usize) {
        if self.map.len() >= max.max(1) && !self.map.contains_key(&k) {
            let mut stamps: Vec<u64> = self.map.values().map(|(s, _)| *s).collect();
            let mid = stamps.len() / 2;
            let (_, median, _) = stamps.select_nth_unstable(mid);
            let median = *median;
            self.map.retain(|_, (s, _)| *s > median);
        }
        self.map.insert(k, (stamp, v));
    }

    fn get_mut(&mut self, k: &K, stamp: u64) -> Option<&mut V> {
        self.map.get_mut(k).map(|(s, v)| {
            *s = stamp;
            v
        })
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(_, v)| v)
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(_, v)| v)
    }

    fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(|k, (_, v)| f(k, v));
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A pid, alias or port the peer may address.
#[derive(Debug)]
struct Grant {
    /// Relayed connections it was handed on (0: free slot).
    sessions: [u64; SESSIONS_PER_GRANT],
    /// A process the peer had spawned here: it may link to it and send it exit signals.
    owned: bool,
}

impl Grant {
    fn add(&mut self, session: u64) {
        if self.sessions.contains(&session) {
            return;
        }
        match self.sessions.iter_mut().find(|s| **s == 0) {
            Some(slot) => *slot = session,
            None => {
                // Full: the oldest connection's claim goes.
                self.sessions.rotate_left(1);
                if let Some(last) = self.sessions.last_mut() {
                    *last = session;
                }
            }
        }
    }
}

/// Who made a link between a local process and a peer process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkBy {
    /// A local process linked (or spawned with a link) to the peer's process.
    Local,
    /// The peer linked to (or spawned linked) a process it had spawned here.
    Peer,
}

#[derive(Debug)]
struct LinkEntry {
    /// Who made it (shown in debug output; both kinds let the peer's exits through).
    #[allow(dead_code)]
    by: LinkBy,
    session: u64,
}

#[derive(Debug)]
struct MonitorEntry {
    /// The local process that monitors the peer's.
    local: Key,
    session: u64,
}

#[derive(Debug)]
struct SpawnEntry {
    parent: Key,
    link: bool,
    monitor: bool,
    session: u64,
}

/// The capabilities of one peer gateway.
#[derive(Debug, Default)]
pub(crate) struct Capabilities {
    nodes: Nodes,
    grants: Bounded<Key, Grant>,
    /// (local pid, peer pid).
    links: Bounded<(Key, Key), LinkEntry>,
    /// Monitors local processes hold on peer processes, by reference.
    monitors: Bounded<Key, MonitorEntry>,
    /// Spawn requests local processes sent to the peer, by request id.
    spawns: Bounded<Key, SpawnEntry>,
    clock: u64,
}

impl Capabilities {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The key of `t`, if its node is known (lookups never intern: unknown means not granted).
    fn key(&self, t: &Thing<'_>) -> Option<Key> {
        let node = self.nodes.get(t.node()?)?;
        t.key(node)
    }

    fn key_interned(&mut self, t: &Thing<'_>) -> Option<Key> {
        let node = self.nodes.intern(t.node()?)?;
        t.key(node)
    }

    /// The nodes here handed `t` to the peer on connection `session`.
    pub(crate) fn grant(&mut self, t: &Thing<'_>, session: u64, max: usize) {
        let Some(k) = self.key_interned(t) else { return };
        let stamp = self.tick();
        match self.grants.get_mut(&k, stamp) {
            Some(g) => g.add(session),
            None => {
                let mut g = Grant { sessions: [0; SESSIONS_PER_GRANT], owned: false };
                g.add(session);
                self.grants.insert(k, g, stamp, max);
            }
        }
    }

    /// A process the peer had spawned here (it may link to it and signal it).
    pub(crate) fn grant_owned(&mut self, pid: &Pid, session: u64, max: usize) {
        self.grant(&Thing::Pid(pid), session, max);
        if let Some(k) = self.key(&Thing::Pid(pid)) {
            if let Some(g) = self.grants.get_mut(&k, self.clock) {
                g.owned = true;
            }
        }
    }

    /// Whether the peer may address `t`.
    pub(crate) fn granted(&mut self, t: &Thing<'_>) -> bool {
        let Some(k) = self.key(t) else { return false };
        let stamp = self.tick();
        self.grants.get_mut(&k, stamp).is_some()
    }

    /// Whether `pid` is a process the peer spawned here.
    pub(crate) fn owned(&self, pid: &Pid) -> bool {
        self.key(&Thing::Pid(pid)).and_then(|k| self.grants.get(&k)).is_some_and(|g| g.owned)
    }

    /// A local process ended (its link exit or `DOWN` went to the peer): what pointed at it goes.
    pub(crate) fn process_ended(&mut self, pid: &Pid) {
        let Some(k) = self.key(&Thing::Pid(pid)) else { return };
        self.grants.remove(&k);
        self.links.retain(|(local, _), _| *local != k);
        self.monitors.retain(|_, m| m.local != k);
    }

    pub(crate) fn add_link(&mut self, local: &Pid, peer: &Pid, by: LinkBy, session: u64, max: usize) {
        let (Some(l), Some(p)) = (self.key_interned(&Thing::Pid(local)), self.key_interned(&Thing::Pid(peer))) else {
            return;
        };
        let stamp = self.tick();
        self.links.insert((l, p), LinkEntry { by, session }, stamp, max);
    }

    pub(crate) fn has_link(&self, local: &Pid, peer: &Pid) -> bool {
        match (self.key(&Thing::Pid(local)), self.key(&Thing::Pid(peer))) {
            (Some(l), Some(p)) => self.links.get(&(l, p)).is_some(),
            _ => false,
        }
    }

    pub(crate) fn remove_link(&mut self, local: &Pid, peer: &Pid) {
        if let (Some(l), Some(p)) = (self.key(&Thing::Pid(local)), self.key(&Thing::Pid(peer))) {
            self.links.remove(&(l, p));
        }
    }

    /// Local process `local` monitors a peer process (or name) under `reference`.
    pub(crate) fn add_monitor(&mut self, reference: &Ref, local: &Pid, session: u64, max: usize) {
        let (Some(r), Some(l)) = (self.key_interned(&Thing::Ref(reference)), self.key_interned(&Thing::Pid(local)))
        else {
            return;
        };
        let stamp = self.tick();
        self.monitors.insert(r, MonitorEntry { local: l, session }, stamp, max);
    }

    /// Whether `local` holds a monitor under `reference` (the peer may answer it with `DOWN`).
    pub(crate) fn has_monitor(&self, reference: &Ref, local: &Pid) -> bool {
        match (self.key(&Thing::Ref(reference)), self.key(&Thing::Pid(local))) {
            (Some(r), Some(l)) => self.monitors.get(&r).is_some_and(|m| m.local == l),
            _ => false,
        }
    }

    pub(crate) fn remove_monitor(&mut self, reference: &Ref) {
        if let Some(r) = self.key(&Thing::Ref(reference)) {
            self.monitors.remove(&r);
        }
    }

    /// Local process `parent` asked the peer to spawn a process (`link`/`monitor` options).
    pub(crate) fn add_spawn(&mut self, req: &Ref, parent: &Pid, link: bool, monitor: bool, session: u64, max: usize) {
        let (Some(r), Some(p)) = (self.key_interned(&Thing::Ref(req)), self.key_interned(&Thing::Pid(parent))) else {
            return;
        };
        let stamp = self.tick();
        self.spawns.insert(r, SpawnEntry { parent: p, link, monitor, session }, stamp, max);
    }

    /// The `(link, monitor)` options of `parent`'s spawn request `req` still waiting for its
    /// answer, if there is one.
    pub(crate) fn spawn_pending(&self, req: &Ref, parent: &Pid) -> Option<(bool, bool)> {
        let r = self.key(&Thing::Ref(req))?;
        let p = self.key(&Thing::Pid(parent))?;
        self.spawns.get(&r).filter(|s| s.parent == p).map(|s| (s.link, s.monitor))
    }

    /// The peer answers spawn request `req` of `parent`: `(link, monitor)` it asked for, and the
    /// request is done; `None` if there is no such request.
    pub(crate) fn take_spawn(&mut self, req: &Ref, parent: &Pid) -> Option<(bool, bool)> {
        let r = self.key(&Thing::Ref(req))?;
        let p = self.key(&Thing::Pid(parent))?;
        if self.spawns.get(&r)?.parent != p {
            return None;
        }
        self.spawns.remove(&r).map(|s| (s.link, s.monitor))
    }

    /// A relayed connection ended: its links, monitors and spawn requests end with it (as in
    /// OTP), and capabilities handed only on it are forgotten.
    pub(crate) fn forget_session(&mut self, session: u64) {
        self.links.retain(|_, l| l.session != session);
        self.monitors.retain(|_, m| m.session != session);
        self.spawns.retain(|_, s| s.session != session);
        self.grants.retain(|_, g| {
            for s in g.sessions.iter_mut().filter(|s| **s == session) {
                *s = 0;
            }
            g.sessions.iter().any(|s| *s != 0)
        });
    }

    /// (grants, links, monitors, spawns) held now.
    pub(crate) fn counts(&self) -> (usize, usize, usize, usize) {
        (self.grants.len(), self.links.len(), self.monitors.len(), self.spawns.len())
    }
}

/// The atoms of one peer gateway.
#[derive(Debug, Default)]
pub(crate) struct Atoms {
    /// New atoms it sent that reached a node here (counted against the budget).
    charged: HashSet<Box<str>>,
    /// Atoms the nodes here sent to it: they exist here, so they are free.
    learned: HashSet<Box<str>>,
}

impl Atoms {
    /// Whether `atom` costs nothing: OTP's common atoms, learned or already charged ones.
    pub(crate) fn known(&self, atom: &str) -> bool {
        otp::common_atom(atom) || self.learned.contains(atom) || self.charged.contains(atom)
    }

    pub(crate) fn learn(&mut self, atom: &str) {
        if self.learned.len() < MAX_LEARNED && !self.known(atom) {
            self.learned.insert(atom.into());
        }
    }

    pub(crate) fn charged(&self) -> usize {
        self.charged.len()
    }

    pub(crate) fn charge(&mut self, atoms: impl IntoIterator<Item = Box<str>>, budget: usize) {
        for a in atoms {
            if budget != 0 && self.charged.len() >= budget {
                return;
            }
            self.charged.insert(a);
        }
    }
}

/// A token bucket (rate per second, burst of one second), lazily refilled.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    level: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Takes `n`, going into debt; returns how long to wait until the debt is paid.
    pub(crate) fn take(&mut self, rate: u64, n: u64, now: Instant) -> Duration {
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let elapsed = self.at.map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.level = (self.level + elapsed * rate).min(rate) - n as f64;
        self.at = Some(now);
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / rate)
        }
    }
}

/// What a peer gateway has used of its role's shared limits, and its capabilities.
#[derive(Debug, Default)]
pub struct PeerState {
    pub(crate) atoms: Atoms,
    pub(crate) messages: Bucket,
    pub(crate) bytes: Bucket,
    /// Refused messages: inspecting them costs too, so a flood of them is slowed (its own
    /// lanes only), at [`REFUSED_RATE_FACTOR`] times the role's message rate.
    pub(crate) refused: Bucket,
    pub(crate) caps: Capabilities,
}

/// Refused messages per second a peer may send before its lanes slow down, as a multiple of
/// its role's `messages_per_sec` (at least [`REFUSED_RATE_MIN`]).
pub const REFUSED_RATE_FACTOR: u64 = 10;
/// The least refused-message rate.
pub const REFUSED_RATE_MIN: u64 = 10_000;

/// A snapshot for `edist status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerUsage {
    /// New atoms charged so far.
    pub atoms_charged: u64,
    /// Atoms learned from what the nodes here sent.
    pub atoms_learned: u64,
    /// Pids, aliases and ports the peer may address.
    pub grants: u64,
    /// Links between local processes and the peer's.
    pub links: u64,
    /// Monitors local processes hold on the peer's processes.
    pub monitors: u64,
}

/// One peer gateway under a restricted role, for `edist status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerReport {
    pub peer: String,
    /// Its role's name.
    pub role: String,
    /// The role is in audit mode (nothing refused, only counted).
    pub audit: bool,
    /// The role's atom budget (0: unlimited).
    pub atom_budget: u64,
    /// New atoms it may still send (`None`: unlimited).
    pub atoms_left: Option<u64>,
    pub usage: PeerUsage,
}

impl PeerReport {
    /// The report of `peer` under role `role` (named `name`), using `usage`.
    pub fn new(peer: String, name: String, role: &super::Role, usage: PeerUsage) -> PeerReport {
        let budget = role.atom_budget as u64;
        let atoms_left = (budget != 0).then(|| budget.saturating_sub(usage.atoms_charged));
        PeerReport { peer, role: name, audit: role.audit, atom_budget: budget, atoms_left, usage }
    }
}

impl PeerState {
    /// Distinct new atoms the peer has had let through.
    pub fn atoms_seen(&self) -> usize {
        self.atoms.charged()
    }

    /// A relayed connection of this peer ended.
    pub fn forget_session(&mut self, session: u64) {
        self.caps.forget_session(session);
    }

    /// What the peer uses now.
    pub fn usage(&self) -> PeerUsage {
        let (grants, links, monitors, _) = self.caps.counts();
        PeerUsage {
            atoms_charged: self.atoms.charged() as u64,
            atoms_learned: self.atoms.learned.len() as u64,
            grants: grants as u64,
            links: links as u64,
            monitors: monitors as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edist_proto::etf::Atom;

    fn pid(node: &str, n: u32) -> Pid {
        Pid { node: Atom::from(node), id: n, serial: 0, creation: 1 }
    }

    #[test]
    fn bounded_maps_forget_the_older_half_when_full() {
        let mut b: Bounded<u32, ()> = Bounded::default();
        for i in 0..100u32 {
            b.insert(i, (), u64::from(i), 10);
        }
        assert!(b.len() <= 10);
        assert!(b.get(&99).is_some(), "the newest stays");
        assert!(b.get(&0).is_none());
    }

    #[test]
    fn grants_go_with_their_sessions_and_their_processes() {
        let mut c = Capabilities::default();
        let (a, b) = (pid("srv@h", 1), pid("srv@h", 2));
        c.grant(&Thing::Pid(&a), 1, 100);
        c.grant(&Thing::Pid(&a), 2, 100);
        c.grant(&Thing::Pid(&b), 1, 100);
        assert!(c.granted(&Thing::Pid(&a)) && c.granted(&Thing::Pid(&b)));
        assert!(!c.granted(&Thing::Pid(&pid("srv@h", 3))));
        assert!(!c.granted(&Thing::Pid(&pid("other@h", 1))), "an unknown node grants nothing");
        c.forget_session(1);
        assert!(c.granted(&Thing::Pid(&a)), "still handed on session 2");
        assert!(!c.granted(&Thing::Pid(&b)));
        c.process_ended(&a);
        assert!(!c.granted(&Thing::Pid(&a)));
    }

    #[test]
    fn links_monitors_and_spawns_are_per_pair_and_end_with_the_session() {
        let mut c = Capabilities::default();
        let (l, p) = (pid("srv@h", 1), pid("dev@h", 9));
        c.add_link(&l, &p, LinkBy::Local, 7, 100);
        assert!(c.has_link(&l, &p) && !c.has_link(&p, &l));
        let r = Ref { node: Atom::from("srv@h"), creation: 1, ids: vec![1, 2, 3] };
        c.add_monitor(&r, &l, 7, 100);
        assert!(c.has_monitor(&r, &l) && !c.has_monitor(&r, &pid("srv@h", 2)));
        c.add_spawn(&r, &l, true, false, 7, 100);
        assert_eq!(c.take_spawn(&r, &pid("srv@h", 2)), None, "another parent's request");
        assert_eq!(c.take_spawn(&r, &l), Some((true, false)));
        assert_eq!(c.take_spawn(&r, &l), None, "answered once");
        c.forget_session(7);
        assert!(!c.has_link(&l, &p) && !c.has_monitor(&r, &l));
    }

    #[test]
    fn node_names_are_bounded() {
        let mut c = Capabilities::default();
        for i in 0..(MAX_NODES + 10) {
            c.grant(&Thing::Pid(&pid(&format!("n{i}@h"), 1)), 1, usize::MAX);
        }
        assert!(c.granted(&Thing::Pid(&pid("n0@h", 1))));
        assert!(!c.granted(&Thing::Pid(&pid(&format!("n{}@h", MAX_NODES + 5), 1))), "fails closed");
    }
}
