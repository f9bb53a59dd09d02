//! Lookups of node names the gateway does not know (yet).
//!
//! A node's registration reaches the other gateways a little after the node is up: with
//! membership, a gossiped digest and then a pull (up to a second or so); with static peers, an
//! announcement on the link, or the whole list once a link comes up. A PORT_PLEASE2 for the
//! node in that window must not fail at once: `global` would then fail its transitive connect
//! and disconnect a healthy node. So the control port's lookup of an unknown name waits,
//! bounded by `[local] lookup_wait_ms`, for what the fabric can still say:
//!
//! * with membership, the members are asked ([`crate::fabric::membership::Membership::lookup`]):
//!   the owner answers with the node, and once every member has said no the answer is "unknown"
//!   without waiting out the bound;
//! * with static peers, only while the gateway is starting ([`STARTUP_GRACE`]) and a peer has
//!   not sent its node list yet: a link coming up brings every node of that peer. Afterwards
//!   every peer's list is complete and kept current on the link, and a peer without a link is
//!   down: its nodes are unknown, as OTP says of a node that is not there.
//!
//! Nothing here remembers a negative answer: every lookup of an unknown name asks afresh, so a
//! node that registers right after an "unknown" is found by the next lookup. Concurrent lookups
//! of one name share one question ([`Waiters`]), and a "nobody has it" counts only for callers
//! that asked before the question did ([`Answer::Unknown`]).
//!
//! The decisions are sans IO; the waiting itself is in `gateway/local.rs` (`Inner::lookup`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long after its start a gateway with static peers waits, in lookups of unknown names, for
/// the node lists of peers that have not sent theirs yet.
pub const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// How often a waiting lookup looks again (and, with membership, asks again whoever has not
/// answered; membership itself spaces the datagrams).
pub const POLL: Duration = Duration::from_millis(50);

/// More likely owners than this means the host part says nothing: ask everyone at once.
const MAX_LIKELY: usize = 4;

/// Where a lookup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Still asking.
    Asking,
    /// The node was admitted to the registry: resolve it again.
    Known,
    /// Nobody has it, say the answers to a question asked at `since`: true for a caller who
    /// asked no later than that (a node that came since may have been missed).
    Unknown { since: Instant },
}

impl Answer {
    /// Whether this settles the lookup of a caller who asked at `asked` as "unknown".
    pub fn unknown_to(self, asked: Instant) -> bool {
        matches!(self, Answer::Unknown { since } if since >= asked)
    }
}

/// What a lookup of an unknown name can still hope for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: answer "unknown" now.
    Unknown,
    /// Ask the members (membership on).
    AskMembers,
    /// Wait for the node lists of peers whose links are coming up (static peers, at start).
    AwaitLists,
}

/// What the gateway is, as far as lookups are concerned.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// It has a fabric (certificates): there are other gateways to hear from.
    pub fabric: bool,
    /// `[fabric] membership`.
    pub membership: bool,
    /// `[local] lookup_wait_ms` is not zero.
    pub may_wait: bool,
    /// Time since the gateway started.
    pub uptime: Duration,
    /// A peer (`[[peers]]`, or with only seeds, any gateway at all) has not sent its node list
    /// since the gateway started.
    pub lists_missing: bool,
}

/// What to do about a name the registry does not have.
pub fn plan(s: Situation) -> Plan {
    if !s.fabric || !s.may_wait {
        return Plan::Unknown;
    }
    if s.membership {
        return Plan::AskMembers;
    }
    if s.lists_missing && s.uptime < STARTUP_GRACE {
        return Plan::AwaitLists;
    }
    Plan::Unknown
}

/// The host part of a full node name.
fn host_part(name: &str) -> Option<&str> {
    name.split_once('@').map(|(_, h)| h)
}

/// The gateways likely to own `name`: those whose known nodes share its host part (nodes of a
/// host register with that host's gateway). Empty when there is no such gateway, or too many
/// for the guess to be worth a round trip (every host with the same short name, say).
pub fn likely_owners<'a>(name: &str, known: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let Some(host) = host_part(name) else { return Vec::new() };
    let owners: BTreeSet<&str> =
        known.into_iter().filter(|(node, _)| host_part(node) == Some(host)).map(|(_, gw)| gw).collect();
    if owners.len() > MAX_LIKELY {
        return Vec::new();
    }
    owners.into_iter().map(str::to_owned).collect()
}

/// A lookup joined: where it stands, and whether this caller started it (and so asks).
#[derive(Debug)]
pub struct Joined {
    pub answer: watch::Receiver<Answer>,
    pub first: bool,
}

/// Lookups in flight, one per name however many callers wait for it; at most `max`.
#[derive(Debug)]
pub struct Waiters {
    pending: HashMap<String, watch::Sender<Answer>>,
    max: usize,
}

impl Waiters {
    pub fn new(max: usize) -> Waiters {
        Waiters { pending: HashMap::new(), max }
    }

    /// Joins the lookup of `name`, starting one if there is none; `None` when `max` lookups
    /// are in flight already (the caller answers "unknown": memory stays bounded).
    pub fn join(&mut self, name: &str) -> Option<Joined> {
        if let Some(tx) = self.pending.get(name) {
            return Some(Joined { answer: tx.subscribe(), first: false });
        }
        if self.pending.len() >= self.max {
            return None;
        }
        let (tx, answer) = watch::channel(Answer::Asking);
        self.pending.insert(name.to_owned(), tx);
        Some(Joined { answer, first: true })
    }

    /// The lookup of `name`, if any, is over: its waiters see `answer`, and the next lookup of
    /// the name starts afresh (no answer is kept).
    pub fn settle(&mut self, name: &str, answer: Answer) {
        if let Some(tx) = self.pending.remove(name) {
            tx.send_replace(answer);
        }
    }

    /// A waiter of `name` has gone (its receiver dropped): the lookup is forgotten once
    /// nobody waits for it.
    pub fn leave(&mut self, name: &str) {
        if self.pending.get(name).is_some_and(|tx| tx.receiver_count() == 0) {
            self.pending.remove(name);
        }
    }

    /// Lookups in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn situation() -> Situation {
        Situation { fabric: true, membership: false, may_wait: true, uptime: Duration::ZERO, lists_missing: false }
    }

    #[test]
    fn what_an_unknown_name_waits_for() {
        let s = situation();
        // A single host has nobody to ask; a zero wait never waits.
        assert_eq!(plan(Situation { fabric: false, membership: true, ..s }), Plan::Unknown);
        assert_eq!(plan(Situation { may_wait: false, membership: true, ..s }), Plan::Unknown);
        // Membership: the members are asked, whenever.
        let m = Situation { membership: true, uptime: Duration::from_secs(3600), ..s };
        assert_eq!(plan(m), Plan::AskMembers);
        // Static peers: every list is in and kept current on the links: unknown is unknown.
        assert_eq!(plan(s), Plan::Unknown);
        // ... unless a peer's list is still to come while the gateway starts.
        assert_eq!(plan(Situation { lists_missing: true, ..s }), Plan::AwaitLists);
        let late = Situation { lists_missing: true, uptime: STARTUP_GRACE, ..s };
        assert_eq!(plan(late), Plan::Unknown, "a peer down for good does not slow every lookup");
    }

    #[test]
    fn likely_owners_share_the_host_part() {
        let known = [("a@h1", "gw-1"), ("b@h1", "gw-1"), ("c@h2", "gw-2"), ("d@10.0.0.3", "gw-3")];
        assert_eq!(likely_owners("x@h1", known), ["gw-1"]);
        assert_eq!(likely_owners("x@10.0.0.3", known), ["gw-3"]);
        assert!(likely_owners("x@h9", known).is_empty());
        assert!(likely_owners("nohost", known).is_empty());
        // The same host part behind many gateways (one short host name everywhere): no guess.
        let same: Vec<(String, String)> = (0..6).map(|i| (format!("n{i}@h"), format!("gw-{i}"))).collect();
        let same = same.iter().map(|(n, g)| (n.as_str(), g.as_str()));
        assert!(likely_owners("x@h", same).is_empty());
        let two = [("a@h", "gw-1"), ("b@h", "gw-2"), ("c@h", "gw-1")];
        assert_eq!(likely_owners("x@h", two), ["gw-1", "gw-2"]);
    }

    #[test]
    fn one_lookup_per_name_settled_once_and_never_remembered() {
        let mut w = Waiters::new(2);
        let t0 = Instant::now();
        let a = w.join("b@h").unwrap();
        let b = w.join("b@h").unwrap();
        assert!(a.first && !b.first, "the second caller shares the first one's question");
        assert_eq!(w.len(), 1);
        w.settle("b@h", Answer::Unknown { since: t0 });
        assert!(a.answer.borrow().unknown_to(t0));
        // A caller who asked after the question began may have missed a node that came since.
        assert!(!b.answer.borrow().unknown_to(t0 + Duration::from_millis(1)));
        assert!(!Answer::Known.unknown_to(t0) && !Answer::Asking.unknown_to(t0));
        // The next lookup asks afresh.
        let c = w.join("b@h").unwrap();
        assert!(c.first);
        assert_eq!(*c.answer.borrow(), Answer::Asking);
        w.settle("b@h", Answer::Known);
        assert_eq!(*c.answer.borrow(), Answer::Known);
        assert!(w.is_empty());
        // Settling a name nobody looks up is harmless.
        w.settle("zz@h", Answer::Known);
    }

    #[test]
    fn lookups_are_bounded_and_forgotten_when_nobody_waits() {
        let mut w = Waiters::new(2);
        let x = w.join("x@h").unwrap();
        let y = w.join("y@h").unwrap();
        assert!(w.join("z@h").is_none(), "at most two in flight");
        let y2 = w.join("y@h").unwrap();
        drop(y);
        w.leave("y@h");
        assert_eq!(w.len(), 2, "y2 still waits");
        drop(y2);
        w.leave("y@h");
        assert_eq!(w.len(), 1);
        assert!(w.join("z@h").is_some());
        drop(x);
    }
}
