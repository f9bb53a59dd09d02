//! The relay role (`[fabric] relay`): a gateway that passes others' relayed connections on
//! between two peer gateways that have no link of their own (behind NAT, say). The stream and
//! lanes of such a connection are spliced, byte for byte, to new ones on the other link.
use super::open::{announced_by, open_session_stream};
use crate::fabric::link::{Link, RecvStream, SendStream};
use crate::gateway::{lock, Inner};
use crate::session::refusal::SessionRefusal;
use crate::session::shell;
use crate::session::shell::MsgReader;
use crate::wire::Msg;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tracing::info;

/// Passes a relayed connection from `peer`'s node on to `target`, a gateway this one relays
/// for: its stream and lanes are spliced to new ones on the link to `target`. The target's
/// gateway sees who the dialler is behind (`Forwarded`) and applies its own policy.
pub(crate) async fn forward(
    inner: &Arc<Inner>,
    conn: Arc<dyn Link>,
    peer: &str,
    mut tx: SendStream,
    msgs: MsgReader<RecvStream>,
    open: Msg,
    target: &str,
) -> Result<(), shell::SessionError> {
    let Msg::Open { relay: session_id, ref from, .. } = open else { return Ok(()) };
    if !announced_by(inner, from, peer).await {
        let why = SessionRefusal::NotForwardable { from: from.clone(), peer: peer.to_string() };
        let _ = tx.write_all(&Msg::Refused(why.wire()).encode()).await;
        inner.metrics.refused(peer, why.metric_reason().unwrap_or_default());
        return Err(shell::SessionError::Refused(why));
    }
    let (out, _, _hold, (mut out_tx, mut out_rx)) = open_session_stream(inner, target).await?;
    out_tx.write_all(&Msg::Forwarded { origin: peer.to_string() }.encode()).await?;
    out_tx.write_all(&open.encode()).await?;
    let _entry = ForwardGuard::register(inner, session_id, (peer, conn), (target, out));
    let (mut rx, pending) = msgs.into_parts();
    out_tx.write_all(&pending).await?;
    info!(%from, via = %inner.cfg.name, %target, "forwarding a relayed connection");
    let there = tokio::io::copy(&mut rx, &mut out_tx);
    let back = tokio::io::copy(&mut out_rx, &mut tx);
    // Whichever way ends first ends the connection.
    tokio::select! {
        _ = there => {}
        _ = back => {}
    }
    Ok(())
}

/// The two links of a forwarded relayed connection, by relay id (for its lanes).
pub(crate) type Forwarded = ((String, Arc<dyn Link>), (String, Arc<dyn Link>));

/// A forwarded connection's entry in [`Inner::forwards`] while it lives.
struct ForwardGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl ForwardGuard {
    fn register(inner: &Arc<Inner>, id: u64, a: (&str, Arc<dyn Link>), b: (&str, Arc<dyn Link>)) -> ForwardGuard {
        lock(&inner.forwards).insert(id, ((a.0.to_string(), a.1), (b.0.to_string(), b.1)));
        ForwardGuard { inner: inner.clone(), id }
    }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        lock(&self.inner.forwards).remove(&self.id);
    }
}

/// Splices a lane of a forwarded connection, arriving from `peer`, to a new lane on the other link.
pub(crate) async fn forward_lane(
    inner: &Arc<Inner>,
    (relay, lane): (u64, u8),
    peer: &str,
    mut rx: RecvStream,
    pending: &[u8],
) -> std::io::Result<()> {
    let other = lock(&inner.forwards).get(&relay).and_then(|((a, la), (b, lb))| match peer {
        p if p == a => Some(lb.clone()),
        p if p == b => Some(la.clone()),
        _ => None,
    });
    let Some(other) = other else { return Ok(()) };
    let mut out = other.open_uni().await?;
    out.write_all(&Msg::Lane { relay, lane }.encode()).await?;
    out.write_all(pending).await?;
    tokio::io::copy(&mut rx, &mut out).await?;
    Ok(())
}
