//! What the policy knows of OTP's own protocols: the shape of a `gen_server` call (so a refused
//! call is answered at once), of `net_adm:ping`'s call to `net_kernel` (the only thing a role
//! with `ping` lets reach it), and the atoms every OTP node has (free of the atom budget).
//!
//! Checked against OTP 25's sources: `net_adm:ping/1` is
//! `gen:call({net_kernel, Node}, '$gen_call', {is_auth, node()}, infinity)`, and `gen:do_call/4`
//! for a remote process monitors it (`MONITOR_P`, by name here), sends
//! `{'$gen_call', {self(), [alias | Mref]}, Request}` and, on a `DOWN` for `Mref`, exits with
//! its reason. `net_kernel` answers `is_auth` with `yes` (`{[alias | Mref], yes}`, straight to
//! the caller's pid) and does nothing else for it.

use edist_proto::etf::{Atom, AtomText, Pid, Reader, Ref, Token};

/// A `gen_server`/`gen` call's `From`: the caller and the reference its reply and `DOWN` carry.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFrom {
    pub pid: Pid,
    pub reference: Ref,
}

fn atom_is(t: &Token<'_>, name: &str) -> bool {
    matches!(t, Token::Atom(AtomText::Text(a)) if a == name)
}

fn text(a: &AtomText<'_>) -> Option<Atom> {
    match a {
        AtomText::Text(t) => Some(Atom::from(t.as_ref())),
        AtomText::CacheRef(_) => None,
    }
}

fn pid(t: &Token<'_>) -> Option<Pid> {
    match t {
        Token::Pid { node, id, serial, creation } => {
            Some(Pid { node: text(node)?, id: *id, serial: *serial, creation: *creation })
        }
        _ => None,
    }
}

fn reference(t: &Token<'_>) -> Option<Ref> {
    match t {
        Token::Ref { node, creation, ids } => Some(Ref {
            node: text(node)?,
            creation: *creation,
            ids: ids.chunks_exact(4).filter_map(|c| <[u8; 4]>::try_from(c).ok()).map(u32::from_be_bytes).collect(),
        }),
        _ => None,
    }
}

/// Reads `{'$gen_call', {Pid, Tag}, ` from the start of a payload (no version byte), Tag being
/// `Ref` or `[alias | Ref]`; leaves the reader at the request. Only the first few tokens are
/// read, so this is cheap whatever the request's size.
fn call_head<'a>(r: &mut Reader<'a>) -> Option<CallFrom> {
    if !matches!(r.token().ok()?, Token::Tuple(3)) || !atom_is(&r.token().ok()?, "$gen_call") {
        return None;
    }
    if !matches!(r.token().ok()?, Token::Tuple(2)) {
        return None;
    }
    let pid = pid(&r.token().ok()?)?;
    let reference = match r.token().ok()? {
        t @ Token::Ref { .. } => reference(&t)?,
        // [alias | Mref]: one element, then the tail.
        Token::List(1) => {
            if !atom_is(&r.token().ok()?, "alias") {
                return None;
            }
            reference(&r.token().ok()?)?
        }
        _ => return None,
    };
    Some(CallFrom { pid, reference })
}

/// The caller of a `gen` call, if `payload` is one.
pub fn call_from(payload: &[u8]) -> Option<CallFrom> {
    call_head(&mut Reader::new(payload))
}

/// Whether `payload`, sent to `net_kernel` by `sender` (a process of node `remote`), is exactly
/// `net_adm:ping`'s call: `{'$gen_call', {Sender, Tag}, {is_auth, Node}}` with `Sender` and the
/// tag's reference the caller's own (so `net_kernel`'s `yes` goes back to the caller, never to
/// a process of ours), `Node` an atom, nothing else.
pub fn is_ping(payload: &[u8], sender: &Pid, remote: &str) -> bool {
    let mut r = Reader::new(payload);
    let Some(from) = call_head(&mut r) else { return false };
    if from.pid != *sender || from.pid.node.as_str() != remote || from.reference.node.as_str() != remote {
        return false;
    }
    let request = (|| {
        if !matches!(r.token().ok()?, Token::Tuple(2)) || !atom_is(&r.token().ok()?, "is_auth") {
            return None;
        }
        matches!(r.token().ok()?, Token::Atom(AtomText::Text(_))).then_some(())
    })();
    request.is_some() && r.remaining() == 0
}

/// Whether `atom` is one every OTP 25 node has (free of the atom budget): the atoms of the
/// distribution, `gen`, `sys`, `io`, `erpc` and `net_kernel` protocols and of common exit
/// reasons. Atoms the nodes here send to a peer are learned on top of these.
pub fn common_atom(atom: &str) -> bool {
    COMMON_ATOMS.binary_search(&atom).is_ok()
}

/// Sorted (checked by a test).
const COMMON_ATOMS: &[&str] = &[
    "",
    "$gen_call",
    "$gen_cast",
    "DOWN",
    "EXIT",
    "abandoned",
    "abort",
    "active",
    "alias",
    "all",
    "application",
    "async",
    "atom",
    "badarg",
    "badarith",
    "badarity",
    "badfun",
    "badkey",
    "badmap",
    "badmatch",
    "badrecord",
    "badrpc",
    "binary",
    "call",
    "case_clause",
    "cast",
    "change_code",
    "closed",
    "code_change",
    "continue",
    "data",
    "debug",
    "demonitor",
    "down",
    "eof",
    "error",
    "error_logger",
    "exit",
    "false",
    "file",
    "function_clause",
    "get",
    "get_chars",
    "get_geometry",
    "get_line",
    "get_modules",
    "get_password",
    "get_state",
    "get_status",
    "get_until",
    "getopts",
    "global",
    "handle_call",
    "handle_cast",
    "handle_info",
    "hidden",
    "if_clause",
    "ignore",
    "inactive",
    "infinity",
    "info",
    "init",
    "io_reply",
    "io_request",
    "is_auth",
    "kill",
    "killed",
    "latin1",
    "line",
    "link",
    "list",
    "mfa",
    "module",
    "monitor",
    "net_kernel",
    "nil",
    "no",
    "noconnect",
    "noconnection",
    "nodedown",
    "nodeup",
    "noproc",
    "noreply",
    "normal",
    "nosuspend",
    "not_found",
    "notsup",
    "ok",
    "port",
    "priority",
    "process",
    "put",
    "put_chars",
    "reason",
    "reply",
    "reply_demonitor",
    "reply_tag",
    "request",
    "requests",
    "resume",
    "return",
    "setopts",
    "shutdown",
    "spawn",
    "stacktrace",
    "start",
    "state",
    "stop",
    "suspend",
    "system",
    "system_limit",
    "terminate",
    "throw",
    "timeout",
    "timeout_value",
    "trap_exit",
    "true",
    "try_clause",
    "undef",
    "undefined",
    "unicode",
    "unlink",
    "value",
    "visible",
    "warning",
    "yes",
];

#[cfg(test)]
mod tests {
    use super::*;
    use edist_proto::etf::{encode, Term};

    fn pid(node: &str) -> Pid {
        Pid { node: Atom::from(node), id: 7, serial: 0, creation: 3 }
    }
    fn rf(node: &str) -> Ref {
        Ref { node: Atom::from(node), creation: 3, ids: vec![1, 2, 3] }
    }
    /// `{'$gen_call', {Pid, [alias | Ref]}, Req}` as OTP 25's `gen:do_call/4` sends it.
    pub(crate) fn call(from: &Pid, r: &Ref, req: Term) -> Term {
        let tag = Term::List(vec![Term::atom("alias")], Box::new(Term::Ref(r.clone())));
        Term::tuple([Term::atom("$gen_call"), Term::tuple([Term::Pid(from.clone()), tag]), req])
    }

    #[test]
    fn common_atoms_are_sorted() {
        assert!(COMMON_ATOMS.windows(2).all(|w| w[0] < w[1]));
        assert!(common_atom("$gen_call") && common_atom("noproc") && !common_atom("rex"));
    }

    #[test]
    fn calls_and_pings_are_recognised_exactly() {
        let (p, r) = (pid("dev@h"), rf("dev@h"));
        let ping = encode(&call(&p, &r, Term::tuple([Term::atom("is_auth"), Term::atom("dev@h")])));
        assert_eq!(call_from(&ping), Some(CallFrom { pid: p.clone(), reference: r.clone() }));
        assert!(is_ping(&ping, &p, "dev@h"));
        // Old-style tag (a plain reference) is a call too.
        let old = Term::tuple([
            Term::atom("$gen_call"),
            Term::tuple([Term::Pid(p.clone()), Term::Ref(r.clone())]),
            Term::tuple([Term::atom("is_auth"), Term::atom("x")]),
        ]);
        assert!(is_ping(&encode(&old), &p, "dev@h"));
        // Anything else to net_kernel is not a ping.
        for req in [
            Term::tuple([Term::atom("disconnect"), Term::atom("trusted@h")]),
            Term::tuple([Term::atom("connect"), Term::atom("normal"), Term::atom("x@h")]),
            Term::tuple([Term::atom("is_auth"), Term::atom("x"), Term::Nil]),
            Term::tuple([Term::atom("is_auth"), Term::Int(1)]),
        ] {
            assert!(!is_ping(&encode(&call(&p, &r, req)), &p, "dev@h"));
        }
        // The reply must go to the caller itself: not to a pid or alias of ours.
        let ours = encode(&call(&pid("srv@h"), &r, Term::tuple([Term::atom("is_auth"), Term::atom("x")])));
        assert!(!is_ping(&ours, &pid("srv@h"), "dev@h"));
        let alias_of_ours = encode(&call(&p, &rf("srv@h"), Term::tuple([Term::atom("is_auth"), Term::atom("x")])));
        assert!(!is_ping(&alias_of_ours, &p, "dev@h"));
        assert!(!is_ping(&ping, &pid("dev@h2"), "dev@h"), "sent by another process");
        // Trailing bytes after the request: not the call.
        let mut longer = ping.clone();
        longer.push(106);
        assert!(!is_ping(&longer, &p, "dev@h"));
        assert_eq!(call_from(&encode(&Term::atom("x"))), None);
    }
}
