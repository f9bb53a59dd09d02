//! Mailboxes: the Rust-side processes of a node.

use crate::node::Inner;
use crate::NodeError;
use edist_proto::dist::control::{Control, ProcRef};
use edist_proto::etf::{Pid, Ref};
use edist_proto::{Atom, Term};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a mailbox receives. Exit signals always arrive as [`Event::Exit`]: a mailbox behaves
/// like a process that traps exits.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message; `from` is known for SEND_SENDER and REG_SEND.
    Message { from: Option<Pid>, msg: Term },
    /// A linked process ended (`reason` `noconnection` when its node went away), or someone
    /// called `exit(Pid, Reason)` on this mailbox (`exit2` is then true).
    Exit { from: Pid, reason: Term, exit2: bool },
    /// A monitored process ended.
    Down { reference: Ref, from: ProcRef, reason: Term },
    /// The answer to a spawn request this mailbox made.
    SpawnReply { req_id: Ref, flags: u32, result: Term },
}

/// A process of the Rust node: it has a pid, may have a registered name, and receives
/// [`Event`]s. Dropping it ends the process: links and monitors on it fire with `normal`.
pub struct Mailbox {
    pub(crate) inner: Arc<Inner>,
    pub(crate) pid: Pid,
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("pid", &self.pid).finish()
    }
}

impl Mailbox {
    /// This mailbox's pid.
    pub fn pid(&self) -> &Pid {
        &self.pid
    }

    /// Receives the next event (`None` once the node has shut down).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Receives the next event, or `Err(Timeout)` after `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, NodeError> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(NodeError::Shutdown),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Receives the next plain message, skipping other events, within `timeout`.
    pub async fn recv_message(&mut self, timeout: Duration) -> Result<Term, NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Event::Message { msg, .. } = self.recv_timeout(left).await? {
                return Ok(msg);
            }
        }
    }

    /// Sends `msg` to a pid (local or remote; connects on demand).
    pub async fn send(&self, to: &Pid, msg: Term) -> Result<(), NodeError> {
        self.inner.send_to_pid(&self.pid, to, msg).await
    }

    /// Sends `msg` to the process registered as `name` on `node` (`{Name, Node} ! Msg`).
    pub async fn send_named(&self, name: &str, node: &str, msg: Term) -> Result<(), NodeError> {
        self.inner.send_to_name(&self.pid, &Atom::from(name), &Atom::from(node), msg).await
    }

    /// Links this mailbox to `pid`; its end arrives as [`Event::Exit`].
    pub async fn link(&self, pid: &Pid) -> Result<(), NodeError> {
        self.inner.link(&self.pid, pid).await
    }

    /// Removes a link (the new UNLINK_ID protocol).
    pub async fn unlink(&self, pid: &Pid) -> Result<(), NodeError> {
        self.inner.unlink(&self.pid, pid).await
    }

    /// Monitors `pid`; its end arrives as [`Event::Down`] with the returned reference.
    pub async fn monitor(&self, pid: &Pid) -> Result<Ref, NodeError> {
        self.inner.monitor(&self.pid, ProcRef::Pid(pid.clone()), pid.node.clone()).await
    }

    /// Monitors the process registered as `name` on `node`.
    pub async fn monitor_named(&self, name: &str, node: &str) -> Result<Ref, NodeError> {
        self.inner.monitor(&self.pid, ProcRef::Name(Atom::from(name)), Atom::from(node)).await
    }

    /// Removes a monitor.
    pub async fn demonitor(&self, reference: &Ref) -> Result<(), NodeError> {
        self.inner.demonitor(&self.pid, reference).await
    }

    /// Sends an exit signal (`exit(Pid, Reason)`).
    pub async fn exit(&self, to: &Pid, reason: Term) -> Result<(), NodeError> {
        self.inner.send_exit(&self.pid, to, reason, true).await
    }

    /// Sends a raw control message (and payload) to `node` — for tests and tools.
    pub async fn send_control(&self, node: &str, control: Control, payload: Option<Term>) -> Result<(), NodeError> {
        let conn = self.inner.connection(&Atom::from(node)).await?;
        conn.send(&control, payload.as_ref()).await
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.inner.process_ended(&self.pid, Term::atom("normal"));
    }
}
