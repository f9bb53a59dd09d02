//! Control messages (reference §7) as typed values.
//!
//! A control message is a tuple `{Op, ...}`; some ops are followed by a payload term
//! ([`Control::has_payload`]). Decoding checks op and arity exactly, as OTP does: a peer that
//! sends anything else gets an error (and, in the node, loses its connection).

use crate::etf::{self, Atom, DecodeError, Decoder, Limits, Pid, Reader, Ref, Term};
use thiserror::Error;

/// Errors decoding a control message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("control message is not a tuple with an integer op")]
    NotAControl,
    #[error("unknown control op {0}")]
    UnknownOp(i64),
    #[error("control op {op}: bad arity or field {field}")]
    BadField { op: i64, field: &'static str },
    #[error("op {0} needs a payload term, none followed")]
    MissingPayload(i64),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A process reference in monitors: a pid, or a registered name (DIST_MONITOR_NAME).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProcRef {
    Pid(Pid),
    Name(Atom),
}

impl ProcRef {
    fn to_term(&self) -> Term {
        match self {
            ProcRef::Pid(p) => Term::Pid(p.clone()),
            ProcRef::Name(a) => Term::Atom(a.clone()),
        }
    }
}

/// Every control message of OTP 25–27 (ops 1–36).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Control {
    Link {
        from: Pid,
        to: Pid,
    },
    Send {
        to: Pid,
    },
    Exit {
        from: Pid,
        to: Pid,
        reason: Term,
    },
    Unlink {
        from: Pid,
        to: Pid,
    },
    NodeLink,
    RegSend {
        from: Pid,
        to: Atom,
    },
    GroupLeader {
        from: Pid,
        to: Pid,
    },
    Exit2 {
        from: Pid,
        to: Pid,
        reason: Term,
    },
    SendTT {
        to: Pid,
        token: Term,
    },
    ExitTT {
        from: Pid,
        to: Pid,
        token: Term,
        reason: Term,
    },
    RegSendTT {
        from: Pid,
        to: Atom,
        token: Term,
    },
    Exit2TT {
        from: Pid,
        to: Pid,
        token: Term,
        reason: Term,
    },
    MonitorP {
        from: Pid,
        to: ProcRef,
        reference: Ref,
    },
    DemonitorP {
        from: Pid,
        to: ProcRef,
        reference: Ref,
    },
    MonitorPExit {
        from: ProcRef,
        to: Pid,
        reference: Ref,
        reason: Term,
    },
    SendSender {
        from: Pid,
        to: Pid,
    },
    SendSenderTT {
        from: Pid,
        to: Pid,
        token: Term,
    },
    PayloadExit {
        from: Pid,
        to: Pid,
    },
    PayloadExitTT {
        from: Pid,
        to: Pid,
        token: Term,
    },
    PayloadExit2 {
        from: Pid,
        to: Pid,
    },
    PayloadExit2TT {
        from: Pid,
        to: Pid,
        token: Term,
    },
    PayloadMonitorPExit {
        from: ProcRef,
        to: Pid,
        reference: Ref,
    },
    SpawnRequest {
        req_id: Ref,
        from: Pid,
        group_leader: Pid,
        module: Atom,
        function: Atom,
        arity: u8,
        opts: Term,
    },
    SpawnRequestTT {
        req_id: Ref,
        from: Pid,
        group_leader: Pid,
        module: Atom,
        function: Atom,
        arity: u8,
        opts: Term,
        token: Term,
    },
    /// `result` is the new pid, or an error atom.
    SpawnReply {
        req_id: Ref,
        to: Pid,
        flags: u32,
        result: Term,
    },
    SpawnReplyTT {
        req_id: Ref,
        to: Pid,
        flags: u32,
        result: Term,
        token: Term,
    },
    AliasSend {
        from: Pid,
        alias: Ref,
    },
    AliasSendTT {
        from: Pid,
        alias: Ref,
        token: Term,
    },
    UnlinkId {
        id: u64,
        from: Pid,
        to: Pid,
    },
    UnlinkIdAck {
        id: u64,
        from: Pid,
        to: Pid,
    },
}

/// Op codes (`enum dop` in dist.h).
#[allow(missing_docs)]
pub mod op {
    pub const LINK: u8 = 1;
    pub const SEND: u8 = 2;
    pub const EXIT: u8 = 3;
    pub const UNLINK: u8 = 4;
    pub const NODE_LINK: u8 = 5;
    pub const REG_SEND: u8 = 6;
    pub const GROUP_LEADER: u8 = 7;
    pub const EXIT2: u8 = 8;
    pub const SEND_TT: u8 = 12;
    pub const EXIT_TT: u8 = 13;
    pub const REG_SEND_TT: u8 = 16;
    pub const EXIT2_TT: u8 = 18;
    pub const MONITOR_P: u8 = 19;
    pub const DEMONITOR_P: u8 = 20;
    pub const MONITOR_P_EXIT: u8 = 21;
    pub const SEND_SENDER: u8 = 22;
    pub const SEND_SENDER_TT: u8 = 23;
    pub const PAYLOAD_EXIT: u8 = 24;
    pub const PAYLOAD_EXIT_TT: u8 = 25;
    pub const PAYLOAD_EXIT2: u8 = 26;
    pub const PAYLOAD_EXIT2_TT: u8 = 27;
    pub const PAYLOAD_MONITOR_P_EXIT: u8 = 28;
    pub const SPAWN_REQUEST: u8 = 29;
    pub const SPAWN_REQUEST_TT: u8 = 30;
    pub const SPAWN_REPLY: u8 = 31;
    pub const SPAWN_REPLY_TT: u8 = 32;
    pub const ALIAS_SEND: u8 = 33;
    pub const ALIAS_SEND_TT: u8 = 34;
    pub const UNLINK_ID: u8 = 35;
    pub const UNLINK_ID_ACK: u8 = 36;
}

impl Control {
    /// The op code.
    pub fn op(&self) -> u8 {
        use Control::*;
        match self {
            Link { .. } => op::LINK,
            Send { .. } => op::SEND,
            Exit { .. } => op::EXIT,
            Unlink { .. } => op::UNLINK,
            NodeLink => op::NODE_LINK,
            RegSend { .. } => op::REG_SEND,
            GroupLeader { .. } => op::GROUP_LEADER,
            Exit2 { .. } => op::EXIT2,
            SendTT { .. } => op::SEND_TT,
            ExitTT { .. } => op::EXIT_TT,
            RegSendTT { .. } => op::REG_SEND_TT,
            Exit2TT { .. } => op::EXIT2_TT,
            MonitorP { .. } => op::MONITOR_P,
            DemonitorP { .. } => op::DEMONITOR_P,
            MonitorPExit { .. } => op::MONITOR_P_EXIT,
            SendSender { .. } => op::SEND_SENDER,
            SendSenderTT { .. } => op::SEND_SENDER_TT,
            PayloadExit { .. } => op::PAYLOAD_EXIT,
            PayloadExitTT { .. } => op::PAYLOAD_EXIT_TT,
            PayloadExit2 { .. } => op::PAYLOAD_EXIT2,
            PayloadExit2TT { .. } => op::PAYLOAD_EXIT2_TT,
            PayloadMonitorPExit { .. } => op::PAYLOAD_MONITOR_P_EXIT,
            SpawnRequest { .. } => op::SPAWN_REQUEST,
            SpawnRequestTT { .. } => op::SPAWN_REQUEST_TT,
            SpawnReply { .. } => op::SPAWN_REPLY,
            SpawnReplyTT { .. } => op::SPAWN_REPLY_TT,
            AliasSend { .. } => op::ALIAS_SEND,
            AliasSendTT { .. } => op::ALIAS_SEND_TT,
            UnlinkId { .. } => op::UNLINK_ID,
            UnlinkIdAck { .. } => op::UNLINK_ID_ACK,
        }
    }

    /// The process a signal comes from, where the message names one (SEND and SEND_TT do not).
    /// A spawn reply comes from the new process, so it stays ordered before that process's
    /// later signals.
    pub fn sender(&self) -> Option<&Pid> {
        use Control::*;
        match self {
            Link { from, .. }
            | Exit { from, .. }
            | Unlink { from, .. }
            | RegSend { from, .. }
            | GroupLeader { from, .. }
            | Exit2 { from, .. }
            | ExitTT { from, .. }
            | RegSendTT { from, .. }
            | Exit2TT { from, .. }
            | MonitorP { from, .. }
            | DemonitorP { from, .. }
            | SendSender { from, .. }
            | SendSenderTT { from, .. }
            | PayloadExit { from, .. }
            | PayloadExitTT { from, .. }
            | PayloadExit2 { from, .. }
            | PayloadExit2TT { from, .. }
            | SpawnRequest { from, .. }
            | SpawnRequestTT { from, .. }
            | AliasSend { from, .. }
            | AliasSendTT { from, .. }
            | UnlinkId { from, .. }
            | UnlinkIdAck { from, .. } => Some(from),
            MonitorPExit { from: ProcRef::Pid(p), .. } | PayloadMonitorPExit { from: ProcRef::Pid(p), .. } => Some(p),
            Send { .. } | SendTT { .. } | NodeLink | MonitorPExit { .. } | PayloadMonitorPExit { .. } => None,
            SpawnReply { result: Term::Pid(p), .. } | SpawnReplyTT { result: Term::Pid(p), .. } => Some(p),
            SpawnReply { .. } | SpawnReplyTT { .. } => None,
        }
    }

    /// Whether a payload term follows this control message.
    pub fn has_payload(&self) -> bool {
        op_has_payload(self.op())
    }

    /// The control tuple as a term.
    pub fn to_term(&self) -> Term {
        use Control::*;
        let o = |n: u8| Term::Int(i64::from(n));
        let p = |p: &Pid| Term::Pid(p.clone());
        let r = |r: &Ref| Term::Ref(r.clone());
        let a = |a: &Atom| Term::Atom(a.clone());
        let unused = || Term::atom("");
        let items = match self {
            Link { from, to } | Unlink { from, to } | GroupLeader { from, to } | SendSender { from, to } => {
                vec![o(self.op()), p(from), p(to)]
            }
            PayloadExit { from, to } | PayloadExit2 { from, to } => vec![o(self.op()), p(from), p(to)],
            Send { to } => vec![o(self.op()), unused(), p(to)],
            Exit { from, to, reason } | Exit2 { from, to, reason } => {
                vec![o(self.op()), p(from), p(to), reason.clone()]
            }
            NodeLink => vec![o(self.op())],
            RegSend { from, to } => vec![o(self.op()), p(from), unused(), a(to)],
            SendTT { to, token } => vec![o(self.op()), unused(), p(to), token.clone()],
            ExitTT { from, to, token, reason } | Exit2TT { from, to, token, reason } => {
                vec![o(self.op()), p(from), p(to), token.clone(), reason.clone()]
            }
            RegSendTT { from, to, token } => vec![o(self.op()), p(from), unused(), a(to), token.clone()],
            MonitorP { from, to, reference } | DemonitorP { from, to, reference } => {
                vec![o(self.op()), p(from), to.to_term(), r(reference)]
            }
            MonitorPExit { from, to, reference, reason } => {
                vec![o(self.op()), from.to_term(), p(to), r(reference), reason.clone()]
            }
            SendSenderTT { from, to, token }
            | PayloadExitTT { from, to, token }
            | PayloadExit2TT { from, to, token } => {
                vec![o(self.op()), p(from), p(to), token.clone()]
            }
            PayloadMonitorPExit { from, to, reference } => vec![o(self.op()), from.to_term(), p(to), r(reference)],
            SpawnRequest { req_id, from, group_leader, module, function, arity, opts } => vec![
                o(self.op()),
                r(req_id),
                p(from),
                p(group_leader),
                Term::tuple([a(module), a(function), Term::Int(i64::from(*arity))]),
                opts.clone(),
            ],
            SpawnRequestTT { req_id, from, group_leader, module, function, arity, opts, token } => vec![
                o(self.op()),
                r(req_id),
                p(from),
                p(group_leader),
                Term::tuple([a(module), a(function), Term::Int(i64::from(*arity))]),
                opts.clone(),
                token.clone(),
            ],
            SpawnReply { req_id, to, flags, result } => {
                vec![o(self.op()), r(req_id), p(to), Term::Int(i64::from(*flags)), result.clone()]
            }
            SpawnReplyTT { req_id, to, flags, result, token } => {
                vec![o(self.op()), r(req_id), p(to), Term::Int(i64::from(*flags)), result.clone(), token.clone()]
            }
            AliasSend { from, alias } => vec![o(self.op()), p(from), r(alias)],
            AliasSendTT { from, alias, token } => vec![o(self.op()), p(from), r(alias), token.clone()],
            UnlinkId { id, from, to } | UnlinkIdAck { id, from, to } => {
                vec![o(self.op()), Term::from_bigint((*id).into()), p(from), p(to)]
            }
        };
        Term::Tuple(items)
    }

    /// Parses a control tuple, checking op and arity exactly.
    pub fn from_term(t: Term) -> Result<Control, ControlError> {
        let Term::Tuple(items) = t else { return Err(ControlError::NotAControl) };
        let opn = items.first().and_then(Term::as_int).ok_or(ControlError::NotAControl)?;
        let bad = |field: &'static str| ControlError::BadField { op: opn, field };
        let mut it = items.into_iter().skip(1);
        let n = it.len();
        let mut next = |field: &'static str| it.next().ok_or(bad(field));
        let pid = |t: Term, f: &'static str| match t {
            Term::Pid(p) => Ok(p),
            _ => Err(bad(f)),
        };
        let rf = |t: Term, f: &'static str| match t {
            Term::Ref(r) => Ok(r),
            _ => Err(bad(f)),
        };
        let atom = |t: Term, f: &'static str| match t {
            Term::Atom(a) => Ok(a),
            _ => Err(bad(f)),
        };
        let proc = |t: Term, f: &'static str| match t {
            Term::Pid(p) => Ok(ProcRef::Pid(p)),
            Term::Atom(a) => Ok(ProcRef::Name(a)),
            _ => Err(bad(f)),
        };
        let arity = |want: usize| if n == want { Ok(()) } else { Err(bad("arity")) };
        let op = u8::try_from(opn).map_err(|_| ControlError::UnknownOp(opn))?;
        use Control::*;
        Ok(match op {
            op::LINK | op::UNLINK | op::GROUP_LEADER | op::SEND_SENDER | op::PAYLOAD_EXIT | op::PAYLOAD_EXIT2 => {
                arity(2)?;
                let from = pid(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                match op {
                    op::LINK => Link { from, to },
                    op::UNLINK => Unlink { from, to },
                    op::GROUP_LEADER => GroupLeader { from, to },
                    op::SEND_SENDER => SendSender { from, to },
                    op::PAYLOAD_EXIT => PayloadExit { from, to },
                    _ => PayloadExit2 { from, to },
                }
            }
            op::SEND => {
                arity(2)?;
                next("unused")?;
                Send { to: pid(next("to")?, "to")? }
            }
            op::EXIT | op::EXIT2 => {
                arity(3)?;
                let from = pid(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                let reason = next("reason")?;
                if op == op::EXIT {
                    Exit { from, to, reason }
                } else {
                    Exit2 { from, to, reason }
                }
            }
            op::NODE_LINK => {
                arity(0)?;
                NodeLink
            }
            op::REG_SEND => {
                arity(3)?;
                let from = pid(next("from")?, "from")?;
                next("unused")?;
                RegSend { from, to: atom(next("to")?, "to")? }
            }
            op::SEND_TT => {
                arity(3)?;
                next("unused")?;
                let to = pid(next("to")?, "to")?;
                SendTT { to, token: next("token")? }
            }
            op::EXIT_TT | op::EXIT2_TT => {
                arity(4)?;
                let from = pid(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                let token = next("token")?;
                let reason = next("reason")?;
                if op == op::EXIT_TT {
                    ExitTT { from, to, token, reason }
                } else {
                    Exit2TT { from, to, token, reason }
                }
            }
            op::REG_SEND_TT => {
                arity(4)?;
                let from = pid(next("from")?, "from")?;
                next("unused")?;
                let to = atom(next("to")?, "to")?;
                RegSendTT { from, to, token: next("token")? }
            }
            op::MONITOR_P | op::DEMONITOR_P => {
                arity(3)?;
                let from = pid(next("from")?, "from")?;
                let to = proc(next("to")?, "to")?;
                let reference = rf(next("ref")?, "ref")?;
                if op == op::MONITOR_P {
                    MonitorP { from, to, reference }
                } else {
                    DemonitorP { from, to, reference }
                }
            }
            op::MONITOR_P_EXIT => {
                arity(4)?;
                let from = proc(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                let reference = rf(next("ref")?, "ref")?;
                MonitorPExit { from, to, reference, reason: next("reason")? }
            }
            op::SEND_SENDER_TT | op::PAYLOAD_EXIT_TT | op::PAYLOAD_EXIT2_TT => {
                arity(3)?;
                let from = pid(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                let token = next("token")?;
                match op {
                    op::SEND_SENDER_TT => SendSenderTT { from, to, token },
                    op::PAYLOAD_EXIT_TT => PayloadExitTT { from, to, token },
                    _ => PayloadExit2TT { from, to, token },
                }
            }
            op::PAYLOAD_MONITOR_P_EXIT => {
                arity(3)?;
                let from = proc(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                PayloadMonitorPExit { from, to, reference: rf(next("ref")?, "ref")? }
            }
            op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT => {
                arity(if op == op::SPAWN_REQUEST { 5 } else { 6 })?;
                let req_id = rf(next("req_id")?, "req_id")?;
                let from = pid(next("from")?, "from")?;
                let group_leader = pid(next("group_leader")?, "group_leader")?;
                let (module, function, ar) = match next("mfa")? {
                    Term::Tuple(mfa) => match <[Term; 3]>::try_from(mfa) {
                        Ok([m, f, a]) => (atom(m, "module")?, atom(f, "function")?, a),
                        Err(_) => return Err(bad("mfa")),
                    },
                    _ => return Err(bad("mfa")),
                };
                let arity = ar.as_int().and_then(|a| u8::try_from(a).ok()).ok_or(bad("arity"))?;
                let opts = next("opts")?;
                if op == op::SPAWN_REQUEST {
                    SpawnRequest { req_id, from, group_leader, module, function, arity, opts }
                } else {
                    SpawnRequestTT { req_id, from, group_leader, module, function, arity, opts, token: next("token")? }
                }
            }
            op::SPAWN_REPLY | op::SPAWN_REPLY_TT => {
                arity(if op == op::SPAWN_REPLY { 4 } else { 5 })?;
                let req_id = rf(next("req_id")?, "req_id")?;
                let to = pid(next("to")?, "to")?;
                let flags = next("flags")?.as_int().and_then(|f| u32::try_from(f).ok()).ok_or(bad("flags"))?;
                let result = next("result")?;
                if op == op::SPAWN_REPLY {
                    SpawnReply { req_id, to, flags, result }
                } else {
                    SpawnReplyTT { req_id, to, flags, result, token: next("token")? }
                }
            }
            op::ALIAS_SEND => {
                arity(2)?;
                let from = pid(next("from")?, "from")?;
                AliasSend { from, alias: rf(next("alias")?, "alias")? }
            }
            op::ALIAS_SEND_TT => {
                arity(3)?;
                let from = pid(next("from")?, "from")?;
                let alias = rf(next("alias")?, "alias")?;
                AliasSendTT { from, alias, token: next("token")? }
            }
            op::UNLINK_ID | op::UNLINK_ID_ACK => {
                arity(3)?;
                let id = match next("id")? {
                    Term::Int(i) if i > 0 => i as u64,
                    Term::Big(b) => u64::try_from(b).map_err(|_| bad("id"))?,
                    _ => return Err(bad("id")),
                };
                let from = pid(next("from")?, "from")?;
                let to = pid(next("to")?, "to")?;
                if op == op::UNLINK_ID {
                    UnlinkId { id, from, to }
                } else {
                    UnlinkIdAck { id, from, to }
                }
            }
            _ => return Err(ControlError::UnknownOp(opn)),
        })
    }
}

/// Whether messages with this op code carry a payload term after the control tuple.
pub fn op_has_payload(op: u8) -> bool {
    matches!(
        op,
        op::SEND
            | op::REG_SEND
            | op::SEND_TT
            | op::REG_SEND_TT
            | op::SEND_SENDER
            | op::SEND_SENDER_TT
            | op::PAYLOAD_EXIT
            | op::PAYLOAD_EXIT_TT
            | op::PAYLOAD_EXIT2
            | op::PAYLOAD_EXIT2_TT
            | op::PAYLOAD_MONITOR_P_EXIT
            | op::SPAWN_REQUEST
            | op::SPAWN_REQUEST_TT
            | op::ALIAS_SEND
            | op::ALIAS_SEND_TT
    )
}

/// A decoded message: control plus optional payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub control: Control,
    pub payload: Option<Term>,
}

/// Decodes a message body (control then payload), as found after a dist header (`versioned`
/// false) or after a 112 pass-through byte (`versioned` true: each term has its 131).
pub fn decode_message(
    body: &[u8],
    atom_refs: &[Atom],
    versioned: bool,
    limits: &Limits,
) -> Result<Message, ControlError> {
    let mut r = Reader::new(body);
    let dec = Decoder::with_atom_refs(limits, atom_refs);
    let term = |r: &mut Reader<'_>| -> Result<Term, ControlError> {
        if versioned {
            let v = r.u8()?;
            if v != etf::tag::VERSION {
                return Err(DecodeError::BadVersion(v).into());
            }
        }
        Ok(dec.term(r)?)
    };
    let control = Control::from_term(term(&mut r)?)?;
    let payload = if control.has_payload() {
        if r.remaining() == 0 {
            return Err(ControlError::MissingPayload(i64::from(control.op())));
        }
        Some(term(&mut r)?)
    } else {
        None
    };
    if r.remaining() != 0 {
        return Err(ControlError::TrailingBytes(r.remaining()));
    }
    Ok(Message { control, payload })
}

/// Encodes a control (and payload) into two buffers, without version bytes.
pub fn encode_message(control: &Control, payload: Option<&Term>) -> (Vec<u8>, Vec<u8>) {
    let ctrl = etf::encode(&control.to_term());
    let payload = payload.map(etf::encode).unwrap_or_default();
    (ctrl, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u32) -> Pid {
        Pid { node: Atom::from("a@h"), id: n, serial: 0, creation: 5 }
    }
    fn rf() -> Ref {
        Ref { node: Atom::from("a@h"), creation: 5, ids: vec![1, 2, 3] }
    }

    #[test]
    fn every_control_round_trips() {
        let t = || Term::atom("tok");
        let all = vec![
            Control::Link { from: pid(1), to: pid(2) },
            Control::Send { to: pid(2) },
            Control::Exit { from: pid(1), to: pid(2), reason: Term::atom("kill") },
            Control::Unlink { from: pid(1), to: pid(2) },
            Control::NodeLink,
            Control::RegSend { from: pid(1), to: Atom::from("rex") },
            Control::GroupLeader { from: pid(1), to: pid(2) },
            Control::Exit2 { from: pid(1), to: pid(2), reason: Term::atom("x") },
            Control::SendTT { to: pid(2), token: t() },
            Control::ExitTT { from: pid(1), to: pid(2), token: t(), reason: Term::Int(1) },
            Control::RegSendTT { from: pid(1), to: Atom::from("n"), token: t() },
            Control::Exit2TT { from: pid(1), to: pid(2), token: t(), reason: Term::Nil },
            Control::MonitorP { from: pid(1), to: ProcRef::Name(Atom::from("n")), reference: rf() },
            Control::DemonitorP { from: pid(1), to: ProcRef::Pid(pid(3)), reference: rf() },
            Control::MonitorPExit {
                from: ProcRef::Pid(pid(3)),
                to: pid(1),
                reference: rf(),
                reason: Term::atom("noproc"),
            },
            Control::SendSender { from: pid(1), to: pid(2) },
            Control::SendSenderTT { from: pid(1), to: pid(2), token: t() },
            Control::PayloadExit { from: pid(1), to: pid(2) },
            Control::PayloadExitTT { from: pid(1), to: pid(2), token: t() },
            Control::PayloadExit2 { from: pid(1), to: pid(2) },
            Control::PayloadExit2TT { from: pid(1), to: pid(2), token: t() },
            Control::PayloadMonitorPExit { from: ProcRef::Name(Atom::from("n")), to: pid(2), reference: rf() },
            Control::SpawnRequest {
                req_id: rf(),
                from: pid(1),
                group_leader: pid(4),
                module: Atom::from("erpc"),
                function: Atom::from("execute_call"),
                arity: 4,
                opts: Term::list([Term::atom("monitor")]),
            },
            Control::SpawnRequestTT {
                req_id: rf(),
                from: pid(1),
                group_leader: pid(4),
                module: Atom::from("m"),
                function: Atom::from("f"),
                arity: 0,
                opts: Term::Nil,
                token: t(),
            },
            Control::SpawnReply { req_id: rf(), to: pid(1), flags: 2, result: Term::Pid(pid(9)) },
            Control::SpawnReplyTT { req_id: rf(), to: pid(1), flags: 0, result: Term::atom("badarg"), token: t() },
            Control::AliasSend { from: pid(1), alias: rf() },
            Control::AliasSendTT { from: pid(1), alias: rf(), token: t() },
            Control::UnlinkId { id: u64::MAX, from: pid(1), to: pid(2) },
            Control::UnlinkIdAck { id: 1, from: pid(2), to: pid(1) },
        ];
        for c in all {
            let payload = c.has_payload().then(|| Term::tuple([Term::atom("hello"), Term::Int(1)]));
            let (ctrl, pl) = encode_message(&c, payload.as_ref());
            let m = decode_message(&[ctrl, pl].concat(), &[], false, &Limits::default()).unwrap();
            assert_eq!(m.control, c);
            assert_eq!(m.payload, payload);
        }
    }

    #[test]
    fn reference_example_reg_send() {
        // §10a: {6, <py@vm.1.0>, '', sink} + {hello, 1}
        let mut body = vec![0x68, 4, 0x61, 6, 0x58, 0x77, 5];
        body.extend_from_slice(b"py@vm");
        body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x77, 0, 0x77, 4]);
        body.extend_from_slice(b"sink");
        body.extend_from_slice(&[0x68, 2, 0x77, 5]);
        body.extend_from_slice(b"hello");
        body.extend_from_slice(&[0x61, 1]);
        let m = decode_message(&body, &[], false, &Limits::default()).unwrap();
        let Control::RegSend { from, to } = &m.control else { panic!() };
        assert_eq!((from.id, from.creation, to.as_str()), (1, 0x11223344, "sink"));
        assert_eq!(m.payload, Some(Term::tuple([Term::atom("hello"), Term::Int(1)])));
        assert_eq!(
            encode_message(&m.control, m.payload.as_ref()),
            (body[..body.len() - 11].to_vec(), body[body.len() - 11..].to_vec())
        );
    }

    #[test]
    fn bad_arity_unknown_op_and_missing_payload() {
        let enc = |t: Term| etf::encode(&t);
        let l = Limits::default();
        assert!(matches!(
            decode_message(&enc(Term::tuple([Term::Int(1), Term::Pid(pid(1))])), &[], false, &l),
            Err(ControlError::BadField { .. })
        ));
        assert_eq!(
            decode_message(&enc(Term::tuple([Term::Int(99)])), &[], false, &l),
            Err(ControlError::UnknownOp(99))
        );
        assert_eq!(decode_message(&enc(Term::atom("x")), &[], false, &l), Err(ControlError::NotAControl));
        let send = Control::Send { to: pid(1) }.to_term();
        assert_eq!(decode_message(&enc(send), &[], false, &l), Err(ControlError::MissingPayload(2)));
    }
}
