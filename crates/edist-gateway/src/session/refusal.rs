//! Why a gateway refuses a relayed connection ([`SessionRefusal`]), with each reason's texts
//! built here: what the session error says (its `Display`, today's log text) and what goes to
//! the peer gateway in `Msg::Refused` ([`SessionRefusal::wire`]). A peer's own text is kept as
//! received ([`SessionRefusal::Leg`] with [`Refusal::Peer`]).

use crate::session::handshake::Refusal;
use std::fmt;

/// Why a relayed connection was refused, here or by someone on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionRefusal {
    /// A local node dialled a node no peer gateway announced.
    UnknownTarget { target: String },
    /// No cookie configured: a local node's handshake cannot be checked.
    NoCookieToCheck,
    /// A local node may not dial out under this name (taken, say).
    MayNotDialOut { from: String, why: String },
    /// No stream to the peer gateway on its link (fresh or not).
    LinkFailed { gateway: String, error: String },
    /// No link to the peer gateway and none to dial.
    NoLink { gateway: String },
    /// Dialling the peer gateway failed.
    DialFailed { gateway: String, addr: String, error: String },
    /// A peer's `Open` for a node not here, or from a node that is not the peer's.
    NotHere { from: String, to: String, peer: String },
    /// A peer's `Open`, with no cookie to dial the local node with.
    NoCookieForLocal { from: String, to: String },
    /// A relay stream forwarded for a node the peer did not announce.
    NotForwardable { from: String, peer: String },
    /// The gateway is shutting down: no new relay streams.
    ShuttingDown,
    /// Refused on a leg of the handshake: the peer gateway's text (as received), the dialled
    /// node's answer, or the dialling node keeping its old connection.
    Leg(Refusal),
}

impl SessionRefusal {
    /// The reason label of the refusal metric, for the refusals it counts.
    pub fn metric_reason(&self) -> Option<&'static str> {
        match self {
            SessionRefusal::MayNotDialOut { .. } => Some("name_taken"),
            SessionRefusal::NotHere { .. } | SessionRefusal::NotForwardable { .. } => Some("unknown_node"),
            _ => None,
        }
    }

    /// What goes to the peer gateway in `Msg::Refused`.
    pub fn wire(&self) -> String {
        match self {
            SessionRefusal::NotHere { from, to, peer } => format!("{to} is not here or {from} is not {peer}'s"),
            SessionRefusal::NoCookieForLocal { .. } => "no cookie for the local nodes".into(),
            SessionRefusal::NotForwardable { from, peer } => format!("{from} is not {peer}'s"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionRefusal::UnknownTarget { target } => write!(f, "{target} is unknown"),
            SessionRefusal::NoCookieToCheck => f.write_str("no cookie to check local nodes with"),
            SessionRefusal::MayNotDialOut { from, why } => write!(f, "{from} may not dial out: {why}"),
            SessionRefusal::LinkFailed { gateway, error } => write!(f, "link to {gateway}: {error}"),
            SessionRefusal::NoLink { gateway } => write!(f, "no link to {gateway}"),
            SessionRefusal::DialFailed { gateway, addr, error } => write!(f, "dialling {gateway} at {addr}: {error}"),
            SessionRefusal::NotHere { from, to, .. } => write!(f, "{from} -> {to}"),
            SessionRefusal::NoCookieForLocal { from, to } => write!(f, "{from} -> {to}: no cookie for the local nodes"),
            SessionRefusal::NotForwardable { from, peer } => write!(f, "forwarding {from}: not {peer}'s"),
            SessionRefusal::ShuttingDown => f.write_str("the gateway is shutting down"),
            SessionRefusal::Leg(r) => write!(f, "{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_texts_are_todays() {
        let (from, to, peer) = ("a@h".to_string(), "b@h".to_string(), "gw".to_string());
        let r = SessionRefusal::NotHere { from: from.clone(), to: to.clone(), peer: peer.clone() };
        assert_eq!((r.to_string(), r.wire()), ("a@h -> b@h".into(), "b@h is not here or a@h is not gw's".into()));
        let r = SessionRefusal::NoCookieForLocal { from: from.clone(), to };
        assert_eq!(r.wire(), "no cookie for the local nodes");
        assert_eq!(r.to_string(), "a@h -> b@h: no cookie for the local nodes");
        let r = SessionRefusal::NotForwardable { from, peer };
        assert_eq!((r.to_string(), r.wire()), ("forwarding a@h: not gw's".into(), "a@h is not gw's".into()));
        assert_eq!(r.metric_reason(), Some("unknown_node"));
        assert_eq!(SessionRefusal::ShuttingDown.wire(), "the gateway is shutting down");
        assert_eq!(SessionRefusal::UnknownTarget { target: "b@h".into() }.to_string(), "b@h is unknown");
        let peer_text = SessionRefusal::Leg(Refusal::Peer("b@h is not here".into()));
        assert_eq!(peer_text.to_string(), "b@h is not here");
    }
}
