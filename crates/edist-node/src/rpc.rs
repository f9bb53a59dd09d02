//! rpc in both directions, and the node's system process.
//!
//! Outgoing: `rpc:call` in OTP 23+ is `erpc:call`, a `spawn_request` of
//! `erpc:execute_call(Ref, M, F, A)` with a monitor; the spawned process exits with
//! `{Ref, return, Value}` (or `throw`/`exit`/`error`), which arrives as the monitor's DOWN reason
//! (reference §9.4). Incoming: the same spawn requests are answered by Rust handlers registered
//! with [`Node::register_rpc`](crate::Node::register_rpc).

use crate::conn::Conn;
use crate::mailbox::Event;
use crate::node::Inner;
use crate::{Node, NodeError, RpcError};
use edist_proto::dist::control::{Control, ProcRef};
use edist_proto::etf::{Pid, Ref};
use edist_proto::{Atom, Term};
use std::io::Write;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// How a Rust rpc handler fails; becomes the caller's exception.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcFailure {
    /// `error:Reason` (e.g. `badarg`).
    Error(Term),
    /// `exit:Reason`.
    Exit(Term),
    /// `throw:Value`.
    Throw(Term),
}

/// A Rust function callable from other nodes.
pub(crate) type Handler = Arc<dyn Fn(Vec<Term>) -> Result<Term, RpcFailure> + Send + Sync>;

pub(crate) fn install_builtins(inner: &Arc<Inner>) {
    let name = inner.name.clone();
    if let Ok(mut h) = inner.handlers.lock() {
        h.insert(("erlang".into(), "node".into()), Arc::new(move |_| Ok(Term::Atom(name.clone()))));
    }
    let weak = Arc::downgrade(inner);
    if let Ok(mut h) = inner.handlers.lock() {
        h.insert(
            ("erlang".into(), "nodes".into()),
            Arc::new(move |_| {
                let nodes = weak.upgrade().map(|i| i.lock().conns.keys().cloned().map(Term::Atom).collect::<Vec<_>>());
                Ok(Term::list(nodes.unwrap_or_default()))
            }),
        );
    }
}

pub(crate) async fn call(
    node: &Node,
    target: &str,
    module: &str,
    function: &str,
    args: Vec<Term>,
    timeout: Duration,
) -> Result<Term, RpcError> {
    let inner = &node.inner;
    let mut mb = node.mailbox();
    let target = Atom::from(target);
    let conn = inner.connection(&target).await?;
    let req_id = inner.make_ref();
    let res_ref = inner.make_ref();
    inner.note_monitor(&mb.pid, &req_id, ProcRef::Name(Atom::from("erpc")), target.clone());
    let ctrl = Control::SpawnRequest {
        req_id: req_id.clone(),
        from: mb.pid.clone(),
        group_leader: inner.sys.clone(),
        module: Atom::from("erpc"),
        function: Atom::from("execute_call"),
        arity: 4,
        opts: Term::list([Term::atom("monitor")]),
    };
    let call_args =
        Term::list([Term::Ref(res_ref.clone()), Term::atom(module), Term::atom(function), Term::list(args)]);
    conn.send(&ctrl, Some(&call_args)).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match mb.recv_timeout(left).await? {
            Event::SpawnReply { req_id: r, result, .. } if r == req_id && result.as_pid().is_none() => {
                return Err(RpcError::SpawnRefused(result));
            }
            Event::Down { reference, reason, .. } if reference == req_id => return erpc_result(&res_ref, reason),
            _ => {}
        }
    }
}

/// Interprets the exit reason of `erpc:execute_call/4`.
fn erpc_result(res_ref: &Ref, reason: Term) -> Result<Term, RpcError> {
    if let Term::Tuple(items) = &reason {
        if items.first() == Some(&Term::Ref(res_ref.clone())) {
            let class = items.get(1).and_then(Term::as_atom).map(|a| a.to_string()).unwrap_or_default();
            let value = items.get(2).cloned().unwrap_or(Term::Nil);
            return match class.as_str() {
                "return" => Ok(value),
                _ => Err(RpcError::Raised { class, reason: value }),
            };
        }
    }
    Err(RpcError::Down(reason))
}

/// Answers a SPAWN_REQUEST from a peer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_spawn(
    inner: Arc<Inner>,
    conn: Conn,
    req_id: Ref,
    from: Pid,
    module: Atom,
    function: Atom,
    arity: u8,
    opts: Term,
    args: Option<Term>,
) {
    let args = args.and_then(|a| a.to_proper_list()).unwrap_or_default();
    let opts = opts.to_proper_list().unwrap_or_default();
    let monitor = opts.iter().any(|o| *o == Term::atom("monitor"));
    let link = opts.iter().any(|o| *o == Term::atom("link"));
    let (m, f) = (module.as_str(), function.as_str());
    // erpc:execute_call(Ref, M, F, A) and erpc:execute_cast(M, F, A) carry the real call.
    let (res_ref, call) = match (m, f, arity, args.as_slice()) {
        ("erpc", "execute_call", 4, [r, m, f, a]) => (Some(r.clone()), Some((m.clone(), f.clone(), a.clone()))),
        ("erpc", "execute_cast", 3, [m, f, a]) => (None, Some((m.clone(), f.clone(), a.clone()))),
        _ => (None, None),
    };
    let Some((cm, cf, ca)) = call else {
        let reply = Control::SpawnReply { req_id, to: from, flags: 0, result: Term::atom("notsup") };
        let _ = conn.send(&reply, None).await;
        return;
    };
    let pid = inner.new_pid();
    let flags = u32::from(link) | (u32::from(monitor) << 1);
    let reply = Control::SpawnReply { req_id: req_id.clone(), to: from.clone(), flags, result: Term::Pid(pid.clone()) };
    if conn.send(&reply, None).await.is_err() {
        return;
    }
    let handler = match (cm.as_atom(), cf.as_atom()) {
        (Some(m), Some(f)) => inner.handlers.lock().ok().and_then(|h| h.get(&(m.to_string(), f.to_string())).cloned()),
        _ => None,
    };
    tokio::spawn(async move {
        let args = ca.to_proper_list();
        let r = res_ref.clone().unwrap_or(Term::Nil);
        // OTP's own exceptions: undef carries the call in its stack trace.
        let raised = |class: &str, reason: Term, stack: Term| match class {
            "error" => Term::tuple([r.clone(), Term::atom("error"), reason, stack]),
            _ => Term::tuple([r.clone(), Term::atom(class), reason]),
        };
        let reason = match (handler, args) {
            (Some(h), Some(args)) => {
                let n = args.len();
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(args))) {
                    Ok(Ok(v)) => Term::tuple([r.clone(), Term::atom("return"), v]),
                    Ok(Err(RpcFailure::Throw(v))) => raised("throw", v, Term::Nil),
                    Ok(Err(RpcFailure::Exit(v))) => raised("exit", v, Term::Nil),
                    Ok(Err(RpcFailure::Error(v))) => raised("error", v, Term::Nil),
                    Err(_) => {
                        let why = Term::tuple([Term::atom("rust_panic"), cm.clone(), cf.clone(), Term::Int(n as i64)]);
                        raised("error", why, Term::Nil)
                    }
                }
            }
            (None, Some(args)) => {
                let stack = Term::list([Term::tuple([cm.clone(), cf.clone(), Term::list(args), Term::Nil])]);
                raised("error", Term::atom("undef"), stack)
            }
            (_, None) => raised("error", Term::atom("badarg"), Term::Nil),
        };
        if res_ref.is_none() {
            return;
        }
        if monitor {
            let down =
                Control::PayloadMonitorPExit { from: ProcRef::Pid(pid.clone()), to: from.clone(), reference: req_id };
            let _ = conn.send_signal(down, Some(reason.clone())).await;
        }
        if link {
            let _ = conn.send_exit(&pid, &from, reason, false).await;
        }
    });
}

/// The node's system process: `net_kernel` (answers `is_auth`, i.e. `net_adm:ping`) and the
/// group leader of our rpc calls (answers io requests, printing output to stdout).
pub(crate) async fn system_process(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Event>) {
    while let Some(ev) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let Event::Message { msg, .. } = ev else { continue };
        let Some(items) = msg.as_tuple() else { continue };
        match items {
            // {'$gen_call', {From, Tag}, {is_auth, Node}}
            [call, from, req] if *call == Term::atom("$gen_call") => {
                let Some([pid, tag]) = from.as_tuple().and_then(|t| <&[Term; 2]>::try_from(t).ok()) else { continue };
                let Some(pid) = pid.as_pid() else { continue };
                let is_auth =
                    req.as_tuple().and_then(|t| t.first()).map(|t| *t == Term::atom("is_auth")).unwrap_or(false);
                let answer = if is_auth {
                    Term::atom("yes")
                } else {
                    Term::tuple([Term::atom("error"), Term::atom("unsupported")])
                };
                let _ = reply(&inner, pid, tag, answer).await;
            }
            // {io_request, From, ReplyAs, Request}
            [io, from, reply_as, request] if *io == Term::atom("io_request") => {
                let Some(from) = from.as_pid() else { continue };
                let answer = io_answer(request);
                let msg = Term::tuple([Term::atom("io_reply"), reply_as.clone(), answer]);
                let _ = inner.send_to_pid(&inner.sys, from, msg).await;
            }
            _ => {}
        }
    }
}

/// Replies to a `gen:call`: `[alias | Ref]` tags go by ALIAS_SEND, plain tags to the pid.
async fn reply(inner: &Arc<Inner>, pid: &Pid, tag: &Term, answer: Term) -> Result<(), NodeError> {
    let msg = Term::tuple([tag.clone(), answer]);
    if let Term::List(head, tail) = tag {
        if let (Some(Term::Atom(a)), Term::Ref(alias)) = (head.first(), tail.as_ref()) {
            if *a == "alias" && !pid.node.as_str().is_empty() {
                let conn = inner.connection(&pid.node).await?;
                return conn
                    .send(&Control::AliasSend { from: inner.sys.clone(), alias: alias.clone() }, Some(&msg))
                    .await;
            }
        }
    }
    inner.send_to_pid(&inner.sys, pid, msg).await
}

fn io_answer(request: &Term) -> Term {
    let text = match request.as_tuple() {
        Some([op, _enc, chars]) if *op == Term::atom("put_chars") => chardata(chars),
        Some([op, chars]) if *op == Term::atom("put_chars") => chardata(chars),
        Some([op, _enc, m, f, a]) if *op == Term::atom("put_chars") => {
            // io:format sends {put_chars, Enc, io_lib, format, [Format, Args]}: the group
            // leader formats. We do the common directives.
            match (m.as_atom(), f.as_atom(), a.to_proper_list().as_deref()) {
                (Some(m), Some(f), Some([fmt, args])) if *m == "io_lib" && *f == "format" => {
                    chardata(fmt).map(|fmt| io_format(&fmt, &args.to_proper_list().unwrap_or_default()))
                }
                _ => None,
            }
        }
        _ => None,
    };
    match text {
        Some(t) => {
            let mut out = std::io::stdout();
            let _ = out.write_all(t.as_bytes());
            let _ = out.flush();
            Term::atom("ok")
        }
        None => Term::tuple([Term::atom("error"), Term::atom("enotsup")]),
    }
}

/// Flattens chardata (binaries, strings, nested lists) into a String.
fn chardata(t: &Term) -> Option<String> {
    let mut s = String::new();
    fn go(t: &Term, s: &mut String, depth: u32) -> Option<()> {
        if depth > 100 {
            return None;
        }
        match t {
            Term::Binary(b) => s.push_str(&String::from_utf8_lossy(b)),
            Term::String(b) => s.extend(b.iter().map(|c| char::from(*c))),
            Term::Nil => {}
            Term::Int(c) => s.push(char::from_u32(u32::try_from(*c).ok()?)?),
            Term::List(items, tail) => {
                for i in items {
                    go(i, s, depth + 1)?;
                }
                go(tail, s, depth + 1)?;
            }
            _ => return None,
        }
        Some(())
    }
    go(t, &mut s, 0).map(|_| s)
}

/// A subset of `io_lib:format/2`: `~p ~w ~s ~n ~c ~b ~B ~f ~e ~g ~i ~~` with modifiers and
/// field widths skipped. Unknown directives print as written.
fn io_format(fmt: &str, args: &[Term]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        let mut spec = String::from("~");
        while let Some(&d) = chars.peek() {
            if d.is_ascii_digit() || matches!(d, '.' | '*' | '-' | 't' | 'l') {
                spec.push(d);
                chars.next();
            } else {
                break;
            }
        }
        let Some(d) = chars.next() else {
            out.push_str(&spec);
            break;
        };
        match d {
            'n' => out.push('\n'),
            '~' => out.push('~'),
            'p' | 'P' | 'w' | 'W' | 'b' | 'B' | 'f' | 'e' | 'g' => {
                if let Some(a) = args.next() {
                    out.push_str(&a.to_string());
                }
            }
            's' => match args.next() {
                Some(Term::Atom(a)) => out.push_str(a.as_str()),
                Some(a) => out.push_str(&chardata(a).unwrap_or_else(|| a.to_string())),
                None => {}
            },
            'c' => {
                if let Some(ch) = args.next().and_then(Term::as_int).and_then(|i| char::from_u32(i as u32)) {
                    out.push(ch);
                }
            }
            'i' => {
                args.next();
            }
            other => {
                out.push_str(&spec);
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_format_subset() {
        let args = [Term::atom("world"), Term::binary(b"bin".to_vec()), Term::Int(42)];
        assert_eq!(io_format("hello ~p ~s ~w~n~~", &args), "hello world bin 42\n~");
        assert_eq!(io_format("~10.3f|~q", &[Term::Float(1.5)]), "1.5|~q");
    }
}
