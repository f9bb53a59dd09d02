//! Relayed distribution connections: a local BEAM dials a remote node, its gateway completes
//! the handshake as that node, the remote gateway completes it with the real node as the dialler,
//! and then both legs carry the same bytes (DESIGN facts 3, 5, 6).
//!
//! ```text
//!  a ──send_name──▶ GA ──Open{a,b,flags}──▶ GB ──send_name(a)──▶ b
//!  a ◀─status,chal─ GA ◀─Status,Challenge── GB ◀─status,chal──── b
//!  a ──reply──────▶ GA (digest checked) ─Proceed─▶ GB ──reply───▶ b
//!  a ◀─ack──────── GA ◀──────Connected───── GB ◀─ack──────────── b
//!  a ◀════════ raw distribution bytes on the QUIC stream ═══════▶ b
//! ```
//! Both legs negotiate `a.flags & b.flags & RELAY_MASK`: the far side gets the initiator's
//! flags, the initiator gets the far side's challenge flags. The cookie stays on each host.

use crate::wire::Msg;
use bytes::BytesMut;
use edist_proto::dist::handshake::{
    Acceptor, AcceptorConfig, AcceptorEvent, HandshakeError, Initiator, InitiatorConfig, InitiatorEvent, Status,
};
use edist_proto::dist::DFlags;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Flags a relay never lets through: the atom cache needs per-connection state on both ends,
/// and dynamic names cannot be impersonated.
pub const RELAY_MASK: u64 =
    !(DFlags::DIST_HDR_ATOM_CACHE | DFlags::ATOM_CACHE | DFlags::HIDDEN_ATOM_CACHE | DFlags::NAME_ME);

/// Per-step timeout of a relayed handshake (OTP's `net_setuptime` is 7 s).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(7);

/// Why a relayed connection ended before or while carrying traffic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer gateway: {0}")]
    Wire(#[from] crate::wire::WireError),
    #[error("peer gateway closed the relay stream")]
    StreamClosed,
    #[error("local node closed the connection during the handshake")]
    LocalClosed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected message from the peer gateway: {0:?}")]
    Unexpected(Msg),
    #[error("refused: {0}")]
    Refused(String),
}

/// Reads messages from a relay stream, keeping what follows the last one (raw bytes).
pub struct MsgReader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    /// Wraps the receiving side of a stream.
    pub fn new(r: R) -> Self {
        MsgReader { r, buf: BytesMut::with_capacity(4096) }
    }

    /// The next message, within [`STEP_TIMEOUT`].
    pub async fn next(&mut self, what: &'static str) -> Result<Msg, RelayError> {
        loop {
            if let Some(m) = Msg::decode(&mut self.buf)? {
                return Ok(m);
            }
            let n = timeout(STEP_TIMEOUT, self.r.read_buf(&mut self.buf))
                .await
                .map_err(|_| RelayError::Timeout(what))??;
            if n == 0 {
                return Err(RelayError::StreamClosed);
            }
        }
    }

    /// The stream and the bytes already read past the last message.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.r, self.buf)
    }
}

async fn read_sock(sock: &mut TcpStream, buf: &mut [u8], what: &'static str) -> Result<usize, RelayError> {
    match timeout(STEP_TIMEOUT, sock.read(buf)).await {
        Err(_) => Err(RelayError::Timeout(what)),
        Ok(Ok(0)) => Err(RelayError::LocalClosed),
        Ok(r) => Ok(r?),
    }
}

fn parse_status(s: &str) -> Status {
    match s {
        "ok" => Status::Ok,
        "ok_simultaneous" => Status::OkSimultaneous,
        "nok" => Status::Nok,
        "alive" => Status::Alive,
        _ => Status::NotAllowed,
    }
}

fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::OkSimultaneous => "ok_simultaneous",
        Status::Nok => "nok",
        Status::Alive => "alive",
        Status::NotAllowed | Status::Named { .. } => "not_allowed",
    }
}

/// What the initiator's gateway learned from the local node's `send_name`.
#[derive(Debug, Clone)]
pub struct LocalDial {
    pub from: String,
    pub flags: DFlags,
    pub creation: u32,
}

/// The initiator's side, step 1: reads the local node's `send_name` on a connection to the
/// listener impersonating `target`.
pub async fn read_local_name(sock: &mut TcpStream, acc: &mut Acceptor) -> Result<LocalDial, RelayError> {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(ev) = acc.poll()? {
            return match ev {
                AcceptorEvent::Name { name, flags, creation } => Ok(LocalDial { from: name, flags, creation }),
                other => Err(RelayError::Handshake(HandshakeError::OutOfOrder(match other {
                    AcceptorEvent::AliveAnswer(_) => "alive answer before status",
                    _ => "event before name",
                }))),
            };
        }
        let out = acc.take_output();
        sock.write_all(&out).await?;
        let n = read_sock(sock, &mut buf, "send_name").await?;
        acc.handle(buf.get(..n).unwrap_or_default())?;
    }
}

/// A new acceptor impersonating `target` towards a local node.
pub fn impersonating_acceptor(target: &str, creation: u32, cookie: &str) -> Acceptor {
    Acceptor::new(AcceptorConfig {
        name: target.to_string(),
        flags: DFlags(0),
        creation,
        cookie: cookie.as_bytes().to_vec(),
        challenge: rand::random(),
    })
}

/// The initiator's side, steps 2–4, once the relay stream is open and `Open` was sent: mirror
/// the far node's status and challenge to the local node, check the local node's digest, let
/// the far side finish, then ack. Returns bytes the local node sent after its reply.
pub async fn finish_local_leg<R, W>(
    sock: &mut TcpStream,
    acc: &mut Acceptor,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
) -> Result<Vec<u8>, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let status = match msgs.next("status").await? {
        Msg::Status(s) => parse_status(&s),
        Msg::Refused(r) => {
            // The far node is unknown or unreachable: the local node sees `not_allowed`.
            acc.respond(Status::NotAllowed)?;
            sock.write_all(&acc.take_output()).await?;
            return Err(RelayError::Refused(r));
        }
        m => return Err(RelayError::Unexpected(m)),
    };
    if matches!(status, Status::Nok | Status::NotAllowed) {
        acc.respond(status.clone())?;
        sock.write_all(&acc.take_output()).await?;
        return Err(RelayError::Refused(format!("far node answered {}", status_text(&status))));
    }
    let mut buf = [0u8; 1024];
    let alive = status == Status::Alive;
    if alive {
        // The far node still holds a connection from ours: forward `alive` faithfully and
        // carry the local node's answer back; the challenge follows once the far side sends it.
        acc.set_defer_challenge(true);
        acc.respond(Status::Alive)?;
        sock.write_all(&acc.take_output()).await?;
        let answer = loop {
            match acc.poll()? {
                Some(AcceptorEvent::AliveAnswer(a)) => break a,
                Some(_) => return Err(RelayError::Handshake(HandshakeError::OutOfOrder("expected the alive answer"))),
                None => {
                    let n = read_sock(sock, &mut buf, "alive answer").await?;
                    acc.handle(buf.get(..n).unwrap_or_default())?;
                }
            }
        };
        tx.write_all(&Msg::AliveAnswer(answer).encode()).await?;
        if !answer {
            return Err(RelayError::Refused("the local node kept its old connection".into()));
        }
    }
    match msgs.next("challenge").await? {
        Msg::Challenge { flags, creation } => {
            acc.set_flags(DFlags(flags & RELAY_MASK));
            acc.set_creation(creation);
        }
        m => return Err(RelayError::Unexpected(m)),
    }
    if alive {
        acc.send_challenge_now()?;
    } else {
        acc.respond(status)?;
    }
    sock.write_all(&acc.take_output()).await?;
    loop {
        match acc.poll()? {
            Some(AcceptorEvent::Authenticated) => break,
            Some(_) => return Err(RelayError::Handshake(HandshakeError::OutOfOrder("unexpected event"))),
            None => {
                let n = read_sock(sock, &mut buf, "challenge reply").await?;
                acc.handle(buf.get(..n).unwrap_or_default())?;
            }
        }
    }
    // The local node knows the cookie: only now does the far node hear from it (fact 5).
    tx.write_all(&Msg::Proceed.encode()).await?;
    match msgs.next("connected").await? {
        Msg::Connected => {}
        Msg::Refused(r) => return Err(RelayError::Refused(r)),
        m => return Err(RelayError::Unexpected(m)),
    }
    acc.complete()?;
    sock.write_all(&acc.take_output()).await?;
    Ok(acc.take_remaining())
}

/// The far side: dial the real local node `to` as `from` and mirror the handshake over the
/// relay stream. Returns the connected socket and bytes the node sent after its ack.
#[allow(clippy::too_many_arguments)]
pub async fn dial_local_target<R, W>(
    port: u16,
    from: &str,
    to: &str,
    flags: DFlags,
    creation: u32,
    cookie: &str,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
) -> Result<(TcpStream, Vec<u8>), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sock = timeout(STEP_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| RelayError::Timeout("connect"))??;
    let _ = sock.set_nodelay(true);
    let mut init = Initiator::new(InitiatorConfig {
        name: from.to_string(),
        flags: DFlags(flags.0 & RELAY_MASK),
        creation,
        cookie: cookie.as_bytes().to_vec(),
        challenge: rand::random(),
        peer: to.to_string(),
    });
    let mut buf = [0u8; 1024];
    loop {
        let out = init.take_output();
        if !out.is_empty() {
            sock.write_all(&out).await?;
        }
        match init.poll()? {
            Some(InitiatorEvent::Status(Status::Alive)) => {
                // Forwarded faithfully: the dialling node decides (fact 6).
                tx.write_all(&Msg::Status("alive".into()).encode()).await?;
                match msgs.next("alive answer").await? {
                    Msg::AliveAnswer(a) => {
                        init.answer_alive(a)?;
                        if !a {
                            sock.write_all(&init.take_output()).await?;
                            return Err(RelayError::Refused(format!("{from} kept its old connection to {to}")));
                        }
                    }
                    m => return Err(RelayError::Unexpected(m)),
                }
            }
            Some(InitiatorEvent::Status(st)) => {
                tx.write_all(&Msg::Status(status_text(&st).into()).encode()).await?;
                if matches!(st, Status::Nok | Status::NotAllowed | Status::Named { .. }) {
                    return Err(RelayError::Refused(format!("{to} answered {}", status_text(&st))));
                }
            }
            Some(InitiatorEvent::Challenge { flags, creation, .. }) => {
                tx.write_all(&Msg::Challenge { flags: flags.0, creation }.encode()).await?;
                match msgs.next("proceed").await? {
                    Msg::Proceed => init.reply()?,
                    m => return Err(RelayError::Unexpected(m)),
                }
            }
            Some(InitiatorEvent::Connected(_)) => {
                tx.write_all(&Msg::Connected.encode()).await?;
                return Ok((sock, init.take_remaining()));
            }
            None => {
                let n = read_sock(&mut sock, &mut buf, "handshake").await?;
                init.handle(buf.get(..n).unwrap_or_default())?;
            }
        }
    }
}

/// Carries bytes both ways until either side ends, then ends both. `pending_to_stream` and
/// `pending_to_sock` are bytes already read past the handshake.
pub async fn pump<R, W>(
    sock: TcpStream,
    mut rx: R,
    mut tx: W,
    pending_to_stream: &[u8],
    pending_to_sock: &[u8],
    counters: &crate::stats::LinkCounters,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sr, mut sw) = sock.into_split();
    if !pending_to_stream.is_empty() {
        tx.write_all(pending_to_stream).await?;
    }
    if !pending_to_sock.is_empty() {
        sw.write_all(pending_to_sock).await?;
    }
    let up = copy(&mut sr, &mut tx, |n| counters.add_out(n));
    let down = copy(&mut rx, &mut sw, |n| counters.add_in(n));
    // Teardown together (fact 9): whichever side ends first ends the other.
    let r = tokio::select! { r = up => r, r = down => r };
    Ok(r?)
}

/// Copies until end of stream, counting bytes.
async fn copy<R, W>(r: &mut R, w: &mut W, count: impl Fn(usize)) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(buf.get(..n).unwrap_or_default()).await?;
        count(n);
    }
}
