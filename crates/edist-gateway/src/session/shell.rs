//! The relayed handshake's async shell: a local BEAM dials a remote node, its gateway completes
//! the handshake as that node, the remote gateway completes it with the real node as the dialler,
//! and then both legs carry the same bytes (DESIGN facts 3, 5, 6).
//!
//! The handshake on both legs is [`super::handshake`] (sans-IO, with the cookie rules and a
//! diagram of each step); here is its async shell, which only moves its bytes between the
//! node's socket and the session's stream and times each step out. Then [`super::pump`]
//! carries the connection.

use crate::session::handshake::{FarLeg, Leg, LegError, LocalDial, NearLeg, Need};
use crate::wire::{Msg, On};
use bytes::BytesMut;
use edist_proto::dist::handshake::HandshakeError;
use edist_proto::dist::DFlags;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Per-step timeout of a relayed handshake (OTP's `net_setuptime` is 7 s).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(7);

/// Why a relayed connection ended before or while carrying traffic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
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
    Refused(crate::session::refusal::SessionRefusal),
}

impl From<LegError> for SessionError {
    fn from(e: LegError) -> Self {
        match e {
            LegError::Handshake(e) => SessionError::Handshake(e),
            LegError::Unexpected(m) => SessionError::Unexpected(m),
            LegError::Refused(r) => SessionError::Refused(crate::session::refusal::SessionRefusal::Leg(r)),
            LegError::NodeClosed => SessionError::LocalClosed,
        }
    }
}

/// Reads messages from a session stream, keeping what follows the last one (raw bytes).
pub struct MsgReader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    /// Wraps the receiving side of a stream.
    pub fn new(r: R) -> Self {
        MsgReader { r, buf: BytesMut::with_capacity(4096) }
    }

    /// The next message, within [`STEP_TIMEOUT`]; one of a kind that does not belong `on` this
    /// part of the stream is an error ([`crate::wire::WireError::WrongStream`]) that ends it.
    pub async fn next(&mut self, what: &'static str, on: On) -> Result<Msg, SessionError> {
        loop {
            if let Some(m) = Msg::decode_on(&mut self.buf, on)? {
                return Ok(m);
            }
            let n = timeout(STEP_TIMEOUT, self.r.read_buf(&mut self.buf))
                .await
                .map_err(|_| SessionError::Timeout(what))??;
            if n == 0 {
                return Err(SessionError::StreamClosed);
            }
        }
    }

    /// The stream and the bytes already read past the last message.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.r, self.buf)
    }
}

async fn read_sock(sock: &mut TcpStream, buf: &mut [u8], what: &'static str) -> Result<usize, SessionError> {
    match timeout(STEP_TIMEOUT, sock.read(buf)).await {
        Err(_) => Err(SessionError::Timeout(what)),
        Ok(Ok(0)) => Err(SessionError::LocalClosed),
        Ok(r) => Ok(r?),
    }
}

/// A near leg answering a local node that dialled `target` (a remote node of that `creation`),
/// as `target`, with this gateway's cookie.
pub fn near_leg(target: &str, creation: u32, cookie: &str) -> NearLeg {
    NearLeg::new(target, creation, cookie.as_bytes(), rand::random())
}

/// The initiator's side, step 1: reads the local node's `send_name` on a connection to the
/// listener impersonating the node it dialled; the caller then opens the far leg
/// ([`NearLeg::open`]) or refuses ([`NearLeg::refuse`]).
pub async fn read_local_name(sock: &mut TcpStream, leg: &mut NearLeg) -> Result<LocalDial, SessionError> {
    let mut buf = [0u8; 1024];
    while let Need::Node(what) = leg.need() {
        let n = read_sock(sock, &mut buf, what).await?;
        leg.node_bytes(buf.get(..n).unwrap_or_default())?;
    }
    leg.dial().cloned().ok_or(SessionError::Handshake(HandshakeError::OutOfOrder("no name")))
}

/// The initiator's side, steps 2–4, once the session stream is open and the leg's `Open` was
/// sent: mirror the far node's status and challenge to the local node, check its digest, let
/// the far side finish, then ack ([`NearLeg`]). Returns bytes the local node sent after its
/// reply.
pub async fn finish_local_leg<R, W>(
    sock: &mut TcpStream,
    leg: &mut NearLeg,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
) -> Result<Vec<u8>, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    run_leg(sock, leg, msgs, tx).await?;
    Ok(leg.take_remaining())
}

/// The far side: dial the real local node `to` as `from` and mirror the handshake over the
/// session stream ([`FarLeg`]). Returns the connected socket and bytes the node sent after its
/// ack. `hide`: `from` is presented to `to` as a hidden node, and `to` to `from` (its role
/// says so).
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
    hide: bool,
) -> Result<(TcpStream, Vec<u8>), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sock = timeout(STEP_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| SessionError::Timeout("connect"))??;
    let _ = sock.set_nodelay(true);
    let mut leg = FarLeg::new(from, to, flags, creation, cookie.as_bytes(), rand::random(), hide);
    run_leg(&mut sock, &mut leg, msgs, tx).await?;
    Ok((sock, leg.take_remaining()))
}

/// Moves a leg's bytes until it is connected: reads what it needs (each step within
/// [`STEP_TIMEOUT`]) and sends what it queued, also before returning its error.
async fn run_leg<L, R, W>(
    sock: &mut TcpStream,
    leg: &mut L,
    msgs: &mut MsgReader<R>,
    tx: &mut W,
) -> Result<(), SessionError>
where
    L: Leg,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = [0u8; 1024];
    loop {
        send_queued(sock, leg, tx).await?;
        let step = match leg.need() {
            Need::Node(what) => match read_sock(sock, &mut buf, what).await {
                Ok(n) => leg.node_bytes(buf.get(..n).unwrap_or_default()),
                Err(e @ (SessionError::LocalClosed | SessionError::Io(_))) => match leg.node_closed() {
                    LegError::NodeClosed => {
                        send_queued(sock, leg, tx).await?;
                        return Err(e);
                    }
                    verdict => Err(verdict),
                },
                Err(e) => return Err(e),
            },
            Need::Peer(what) => leg.peer_msg(msgs.next(what, On::Relay).await?),
            Need::Done if leg.connected().is_some() => return Ok(()),
            Need::Done => return Err(HandshakeError::OutOfOrder("the leg is over").into()),
            Need::Decision => return Err(HandshakeError::OutOfOrder("the leg waits for a decision").into()),
        };
        if let Err(e) = step {
            send_queued(sock, leg, tx).await?;
            return Err(e.into());
        }
    }
}

/// Sends what a leg queued: bytes to its node, messages to the peer gateway.
async fn send_queued<L: Leg, W: AsyncWrite + Unpin>(
    sock: &mut TcpStream,
    leg: &mut L,
    tx: &mut W,
) -> Result<(), SessionError> {
    let out = leg.take_node_output();
    if !out.is_empty() {
        sock.write_all(&out).await?;
    }
    while let Some(m) = leg.poll_peer() {
        tx.write_all(&m.encode()).await?;
    }
    Ok(())
}

// A session's errors as the handshake metrics count them: here, so that the metrics do not
// import the session (which reports into them).
impl crate::metrics::HandshakeOutcome for SessionError {
    fn outcome(&self) -> &'static str {
        use SessionError as E;
        match self {
            E::Refused(_) => "refused",
            E::Timeout(_) => "timeout",
            E::Handshake(edist_proto::dist::handshake::HandshakeError::BadDigest) => "bad_cookie",
            E::Handshake(_) => "bad_handshake",
            _ => "error",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Both legs of a relayed handshake against a real socket on one side and a scripted peer
    //! gateway on the other: cookies other than the gateway's, with gateways that relay them end
    //! to end and with older ones that do not.
    use super::*;
    use crate::session::handshake::E2E_COOKIES;
    use edist_proto::dist::handshake::{
        digest, Acceptor, AcceptorConfig, AcceptorEvent, Connected, Initiator, InitiatorConfig, InitiatorEvent, Status,
    };
    use tokio::io::{duplex, split, DuplexStream, ReadHalf, WriteHalf};
    use tokio::net::TcpListener;

    async fn loopback() -> (TcpListener, u16) {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    /// A node `a@h` dialling `b@h` with `cookie` over `sock`, as OTP's initiator does.
    async fn node_dials(mut sock: TcpStream, cookie: &[u8]) -> Result<Connected, HandshakeError> {
        let mut init = Initiator::new(InitiatorConfig {
            name: "a@h".into(),
            flags: DFlags::edist_default(true),
            creation: 5,
            cookie: cookie.to_vec(),
            challenge: 77,
            peer: "b@h".into(),
        });
        let mut buf = [0u8; 1024];
        loop {
            sock.write_all(&init.take_output()).await.unwrap();
            match init.poll()? {
                Some(InitiatorEvent::Challenge { .. }) => init.reply()?,
                Some(InitiatorEvent::Connected(c)) => return Ok(c),
                Some(_) => {}
                None => match sock.read(&mut buf).await {
                    Ok(n) if n > 0 => init.handle(&buf[..n])?,
                    _ => return Err(HandshakeError::OutOfOrder("closed")),
                },
            }
        }
    }

    /// A node `b@h` accepting with `cookie`, as OTP's acceptor does (it closes on a bad digest).
    async fn node_accepts(l: TcpListener, cookie: &[u8]) -> Result<Connected, HandshakeError> {
        let (mut sock, _) = l.accept().await.unwrap();
        let mut acc = Acceptor::new(AcceptorConfig {
            name: "b@h".into(),
            flags: DFlags::edist_default(true),
            creation: 9,
            cookie: cookie.to_vec(),
            challenge: 555,
        });
        let mut buf = [0u8; 1024];
        loop {
            let ev = acc.poll()?;
            match ev {
                Some(AcceptorEvent::Name { .. }) => acc.respond(Status::Ok)?,
                Some(AcceptorEvent::Authenticated) => {
                    let c = acc.complete()?;
                    sock.write_all(&acc.take_output()).await.unwrap();
                    return Ok(c);
                }
                Some(_) => {}
                None => {
                    sock.write_all(&acc.take_output()).await.unwrap();
                    match sock.read(&mut buf).await {
                        Ok(n) if n > 0 => acc.handle(&buf[..n])?,
                        _ => return Err(HandshakeError::OutOfOrder("closed")),
                    }
                }
            }
        }
    }

    type Half = (MsgReader<ReadHalf<DuplexStream>>, WriteHalf<DuplexStream>);

    fn stream() -> (Half, Half) {
        let (a, b) = duplex(1 << 16);
        let ((ar, aw), (br, bw)) = (split(a), split(b));
        ((MsgReader::new(ar), aw), (MsgReader::new(br), bw))
    }

    /// The near gateway (cookie `x`) between node a (cookie `ca`) and a scripted far gateway
    /// whose node uses `cb`; `e2e`: the far gateway relays cookies end to end. Returns what the
    /// near gateway and the node got, and the messages the far gateway received.
    async fn near(ca: &'static [u8], cb: &'static [u8], e2e: bool) -> (Result<(), SessionError>, bool, Vec<Msg>) {
        let (l, port) = loopback().await;
        let node =
            tokio::spawn(async move { node_dials(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), ca).await });
        let (mut sock, _) = l.accept().await.unwrap();
        let mut leg = near_leg("b@h", 9, "x");
        read_local_name(&mut sock, &mut leg).await.unwrap();
        leg.open(1, None, false).unwrap();
        let ((mut msgs, mut tx), (mut far_msgs, mut far_tx)) = stream();
        let far = tokio::spawn(async move {
            let flags = DFlags::edist_default(true).0;
            far_tx.write_all(&Msg::Status("ok".into()).encode()).await.unwrap();
            let ch = match e2e {
                true => Msg::ChallengeOf { flags, creation: 9, challenge: 555 },
                false => Msg::Challenge { flags, creation: 9 },
            };
            far_tx.write_all(&ch.encode()).await.unwrap();
            let mut got = Vec::new();
            while let Ok(m) = far_msgs.next("far", On::Relay).await {
                let answer = match &m {
                    // The far node uses the gateway's cookie for a (its gateway's is "y").
                    Msg::Proceed if cb == b"y" => Msg::Connected,
                    Msg::Proceed => Msg::BadCookie,
                    Msg::Reply { challenge, digest: d } if *d == digest(555, cb) => Msg::Ack(digest(*challenge, cb)),
                    _ => Msg::BadCookie,
                };
                got.push(m);
                far_tx.write_all(&answer.encode()).await.unwrap();
            }
            got
        });
        let r = finish_local_leg(&mut sock, &mut leg, &mut msgs, &mut tx).await.map(|_| ());
        drop((sock, msgs, tx));
        let connected = node.await.unwrap().is_ok();
        (r, connected, far.await.unwrap())
    }

    #[tokio::test]
    async fn the_near_gateway_checks_its_cookie_and_passes_others_to_the_far_node() {
        // The gateway's cookie: checked here, the far gateway finishes with its own.
        let (r, ok, got) = near(b"x", b"y", true).await;
        assert!(r.is_ok() && ok, "{r:?}");
        assert_eq!(got, vec![Msg::Proceed]);
        // Another cookie, the far node's for a: its digest over the far node's challenge goes
        // there with a's challenge, the far node's ack comes back and a accepts it.
        let (r, ok, got) = near(b"c", b"c", true).await;
        assert!(r.is_ok() && ok, "{r:?}");
        assert_eq!(got, vec![Msg::Reply { challenge: 77, digest: digest(555, b"c") }]);
        // A cookie the far node does not use for a: refused there, reported as a bad cookie.
        let (r, ok, _) = near(b"c", b"d", true).await;
        assert!(matches!(r, Err(SessionError::Handshake(HandshakeError::BadDigest))), "{r:?}");
        assert!(!ok);
        // The gateway's cookie, but the far node uses another for a: refused there too.
        let (r, ok, _) = near(b"x", b"d", true).await;
        assert!(matches!(r, Err(SessionError::Handshake(HandshakeError::BadDigest))), "{r:?}");
        assert!(!ok);
        // An older far gateway (`Challenge`): only the gateway's cookie, and nothing of another
        // cookie leaves the host.
        let (r, ok, got) = near(b"x", b"y", false).await;
        assert!(r.is_ok() && ok, "{r:?}");
        assert_eq!(got, vec![Msg::Proceed]);
        let (r, ok, got) = near(b"c", b"c", false).await;
        assert!(matches!(r, Err(SessionError::Handshake(HandshakeError::BadDigest))), "{r:?}");
        assert!(!ok && got.is_empty(), "{got:?}");
    }

    /// The far gateway (cookie `y`) dialling node b (cookie `cb` for a) for a scripted near
    /// gateway whose node a answers with `ca`; `e2e`: the `Open` said the near gateway relays
    /// cookies end to end. Returns the far leg's result, b's, and what the near gateway got.
    async fn far(ca: &'static [u8], cb: &'static [u8], e2e: bool) -> (bool, bool, Vec<Msg>) {
        let (l, port) = loopback().await;
        let b = tokio::spawn(node_accepts(l, cb));
        let ((mut msgs, mut tx), (mut near_msgs, mut near_tx)) = stream();
        let near = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(m) = near_msgs.next("near", On::Relay).await {
                let answer = match &m {
                    Msg::ChallengeOf { challenge, .. } if ca != b"x" => {
                        Some(Msg::Reply { challenge: 77, digest: digest(*challenge, ca) })
                    }
                    Msg::Challenge { .. } | Msg::ChallengeOf { .. } => Some(Msg::Proceed),
                    _ => None,
                };
                got.push(m);
                if let Some(a) = answer {
                    near_tx.write_all(&a.encode()).await.unwrap();
                }
            }
            got
        });
        let flags = DFlags(DFlags::edist_default(true).0 | if e2e { E2E_COOKIES } else { 0 });
        let r = dial_local_target(port, "a@h", "b@h", flags, 5, "y", &mut msgs, &mut tx, false).await;
        let ok = r.is_ok();
        drop((r, msgs, tx));
        (ok, b.await.unwrap().is_ok(), near.await.unwrap())
    }

    #[tokio::test]
    async fn the_far_gateway_lets_its_node_judge_another_cookie() {
        // The near gateway vouched (Proceed): the far gateway's own cookie towards b.
        let (ok, b_ok, got) = far(b"x", b"y", true).await;
        assert!(ok && b_ok, "{got:?}");
        assert!(matches!(got.get(1), Some(Msg::ChallengeOf { challenge: 555, .. })), "{got:?}");
        assert_eq!(got.last(), Some(&Msg::Connected));
        // A relayed digest b accepts: b's ack goes back, a digest over a's challenge.
        let (ok, b_ok, got) = far(b"c", b"c", true).await;
        assert!(ok && b_ok, "{got:?}");
        assert_eq!(got.last(), Some(&Msg::Ack(digest(77, b"c"))));
        // One b refuses: b closes, the near gateway hears BadCookie.
        let (ok, b_ok, got) = far(b"c", b"d", true).await;
        assert!(!ok && !b_ok, "{got:?}");
        assert_eq!(got.last(), Some(&Msg::BadCookie));
        // b does not take the gateway's cookie for a.
        let (ok, b_ok, got) = far(b"x", b"d", true).await;
        assert!(!ok && !b_ok, "{got:?}");
        assert_eq!(got.last(), Some(&Msg::BadCookie));
        // An older near gateway: `Challenge` without the challenge, no BadCookie it would not know.
        let (ok, b_ok, got) = far(b"x", b"y", false).await;
        assert!(ok && b_ok, "{got:?}");
        assert!(matches!(got.get(1), Some(Msg::Challenge { .. })), "{got:?}");
        let (ok, _, got) = far(b"x", b"d", false).await;
        assert!(!ok && !got.contains(&Msg::BadCookie), "{got:?}");
    }

    #[test]
    fn session_errors_count_as_their_handshake_outcome() {
        use crate::metrics::HandshakeOutcome;
        use edist_proto::dist::handshake::HandshakeError;
        assert_eq!(SessionError::Timeout("x").outcome(), "timeout");
        assert_eq!(SessionError::Refused(crate::session::refusal::SessionRefusal::ShuttingDown).outcome(), "refused");
        assert_eq!(SessionError::Handshake(HandshakeError::BadDigest).outcome(), "bad_cookie");
        assert_eq!(SessionError::StreamClosed.outcome(), "error");
    }

    #[tokio::test]
    async fn a_reader_takes_its_own_kinds_and_ends_at_another() {
        use crate::wire::{On, WireError};
        let ((mut msgs, _), (_, mut tx)) = stream();
        tx.write_all(&Msg::Status("ok".into()).encode()).await.unwrap();
        tx.write_all(&Msg::NodeDown("a@h".into()).encode()).await.unwrap();
        assert_eq!(msgs.next("status", On::Relay).await.unwrap(), Msg::Status("ok".into()));
        let r = msgs.next("status", On::Relay).await;
        assert!(
            matches!(r, Err(SessionError::Wire(WireError::WrongStream { on: On::Relay, .. }))),
            "a node change on a relay stream: {r:?}"
        );
        // The same kind is fine on a control stream.
        let ((mut msgs, _), (_, mut tx)) = stream();
        tx.write_all(&Msg::NodeDown("a@h".into()).encode()).await.unwrap();
        assert_eq!(msgs.next("control", On::Control).await.unwrap(), Msg::NodeDown("a@h".into()));
    }
}
