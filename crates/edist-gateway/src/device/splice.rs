//! One distribution connection of a device, spliced at the hub: the device's TLS stream on one
//! side, a loopback TCP connection on the other (to a local node, or to the listener of a
//! remote node's impersonation, whose relay carries it over the fabric and answers ticks).
//!
//! During the handshake both directions are read message by message ([`HandshakeWatch`]);
//! after it, what the device sends goes packet by packet through the ingress policy of its role,
//! exactly as a peer gateway's nodes' packets do, and what it is sent is shown to the egress
//! observer (the capabilities the device is handed). Under an open role bytes pass untouched.

use super::proto::{HandshakeWatch, ProtoError, Role};
use crate::policy::{Role as PolicyRole, Session, SharedPeer};
use crate::session::sync::OnRefuse;
use bytes::{Buf, BytesMut};
use edist_proto::codec::{FrameError, Split, U32Frames};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a handshake through the hub may take, all messages together (OTP's own
/// `net_setuptime` is 7 s per step).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a spliced connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpliceError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] ProtoError),
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("packet of {len} bytes from the device, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    Policy(String),
}

/// The role a device's traffic is held to, and where refusals go.
pub struct PolicyHook {
    pub role: Arc<PolicyRole>,
    pub shared: SharedPeer,
    pub on_refuse: OnRefuse,
}

/// A device connection to splice.
pub struct Splice {
    /// The device's node name (its certificate's grant).
    pub device: String,
    /// The device's part in the handshake (initiator: it dialled).
    pub role: Role,
    /// Present the ends to each other as hidden nodes.
    pub hide: bool,
    /// `None`: the device's role lets everything through.
    pub policy: Option<PolicyHook>,
    /// The node at the other end when known beforehand (the one the device dialled).
    pub other: Option<String>,
    /// Largest packet accepted from the device.
    pub max_packet: usize,
    /// Fires when the device is gone (its control connection ended).
    pub cancel: CancellationToken,
}

/// Bytes read from a stream and not consumed yet; every read appends, so a read abandoned in a
/// `select!` loses nothing.
struct Reader<R> {
    r: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(r: R, buf: BytesMut) -> Self {
        Reader { r, buf }
    }

    /// Ensures `n` bytes are buffered; false at end of stream.
    async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            // Reserve no more than what arrives in one read: a length claimed by the peer is
            // only ever a bound, never an allocation.
            self.buf.reserve((n - self.buf.len()).min(64 << 10));
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next u16-framed message body, or `None` at end of stream.
    async fn message(&mut self, max: usize) -> Result<Option<BytesMut>, SpliceError> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let Some(&len) = self.buf.first_chunk::<2>() else { return Ok(None) };
        let len = usize::from(u16::from_be_bytes(len));
        if len > max {
            return Err(ProtoError::TooLong(len).into());
        }
        if !self.fill(2 + len).await? {
            return Ok(None);
        }
        self.buf.advance(2);
        Ok(Some(self.buf.split_to(len)))
    }

    /// The next u32-framed packet, prefix included, or `None` at end of stream.
    async fn packet(&mut self, max: usize) -> Result<Option<Vec<u8>>, SpliceError> {
        let frames = U32Frames::new(max);
        loop {
            match frames.split(&mut self.buf) {
                Ok(Split::Frame(f)) => return Ok(Some(f.into_frame().to_vec())),
                Ok(Split::Need(n)) => {
                    if !self.fill(self.buf.len() + n).await? {
                        return Ok(None);
                    }
                }
                Err(FrameError::TooLarge { len, max }) => {
                    return Err(SpliceError::TooLarge { len: usize::try_from(len).unwrap_or(usize::MAX), max })
                }
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e).into()),
            }
        }
    }
}

async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(body.len()).map_err(|_| std::io::Error::other("handshake message too long"))?;
    let mut f = Vec::with_capacity(2 + body.len());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(body);
    w.write_all(&f).await?;
    w.flush().await
}

impl Splice {
    /// Carries the connection until either side closes, the policy finds a packet malformed,
    /// or the device goes. `dev_buf`: bytes of the device's stream read past its preface.
    pub async fn run<D>(self, dev: D, dev_buf: BytesMut, local: tokio::net::TcpStream) -> Result<(), SpliceError>
    where
        D: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let cancel = self.cancel.clone();
        tokio::select! {
            r = self.carry(dev, dev_buf, local) => r,
            _ = cancel.cancelled() => Ok(()),
        }
    }

    async fn carry<D>(self, dev: D, dev_buf: BytesMut, local: tokio::net::TcpStream) -> Result<(), SpliceError>
    where
        D: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let _ = local.set_nodelay(true);
        let (dev_r, mut dev_w) = tokio::io::split(dev);
        let (loc_r, mut loc_w) = local.into_split();
        let mut dev_r = Reader::new(dev_r, dev_buf);
        let mut loc_r = Reader::new(loc_r, BytesMut::new());
        let other_role = match self.role {
            Role::Initiator => Role::Acceptor,
            Role::Acceptor => Role::Initiator,
        };
        let mut dev_watch = HandshakeWatch::new(self.role, Some(&self.device), self.hide);
        let mut loc_watch = HandshakeWatch::new(other_role, None, self.hide);
        let max = super::proto::MAX_HANDSHAKE_FRAME;
        let handshake = async {
            while !(dev_watch.done() && loc_watch.done()) {
                tokio::select! {
                    m = dev_r.message(max), if !dev_watch.done() => {
                        let Some(mut m) = m? else { return Ok(false) };
                        dev_watch.message(&mut m)?;
                        write_message(&mut loc_w, &m).await?;
                    }
                    m = loc_r.message(max), if !loc_watch.done() => {
                        let Some(mut m) = m? else { return Ok(false) };
                        loc_watch.message(&mut m)?;
                        write_message(&mut dev_w, &m).await?;
                    }
                }
            }
            Ok::<bool, SpliceError>(true)
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Err(_) => return Err(SpliceError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
            Ok(r) => {
                if !r? {
                    return Ok(());
                }
            }
        }
        let other = loc_watch.name.clone().or(self.other.clone()).unwrap_or_default();
        tracing::info!(device = %self.device, %other, "device connection up");
        let Some(hook) = self.policy else {
            // An open role: bytes pass untouched both ways.
            tokio::select! {
                r = copy(dev_r, loc_w) => r?,
                r = copy(loc_r, dev_w) => r?,
            }
            return Ok(());
        };
        // The device is the policy's "remote" node: what it sends is ingress.
        let session = Session::new(hook.role, hook.shared, &other, &self.device);
        let (reply_tx, reply_rx) = mpsc::channel(256);
        tokio::select! {
            r = up(dev_r, loc_w, session.clone(), hook.on_refuse, reply_tx, self.max_packet) => r,
            r = down(loc_r, dev_w, session, reply_rx) => r,
        }
    }
}

/// Copies what is buffered and then everything else, flushing after each read (TLS buffers
/// what it is given until flushed).
async fn copy<R, W>(mut r: Reader<R>, mut w: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !r.buf.is_empty() {
            w.write_all(&r.buf).await?;
            w.flush().await?;
            r.buf.clear();
        }
        r.buf.reserve(16 << 10);
        if r.r.read_buf(&mut r.buf).await? == 0 {
            return w.shutdown().await;
        }
    }
}

/// The device's packets, through the ingress policy, to the local side.
async fn up<R, W>(
    mut r: Reader<R>,
    mut w: W,
    session: Arc<Session>,
    on_refuse: OnRefuse,
    replies: mpsc::Sender<Vec<u8>>,
    max_packet: usize,
) -> Result<(), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ingress = session.ingress();
    while let Some(p) = r.packet(max_packet).await? {
        let verdict = ingress.packet(p, std::time::Instant::now()).map_err(|e| SpliceError::Policy(e.to_string()))?;
        if let Some(refusal) = &verdict.refused {
            on_refuse(refusal);
        }
        for reply in verdict.reply {
            // Waits while the device does not read its answers: it is the one sending too much.
            if replies.send(reply).await.is_err() {
                return Ok(());
            }
        }
        if !verdict.wait.is_zero() {
            // Over the role's rates: the device waits (TCP pushes back to it).
            tokio::time::sleep(verdict.wait).await;
        }
        for f in verdict.forward {
            w.write_all(&f).await?;
        }
    }
    w.shutdown().await?;
    Ok(())
}

/// The local side's packets (shown to the egress observer) and the policy's answers, to the
/// device.
async fn down<R, W>(
    mut r: Reader<R>,
    mut w: W,
    session: Arc<Session>,
    mut replies: mpsc::Receiver<Vec<u8>>,
) -> Result<(), SpliceError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut egress = session.egress();
    // The local side is ours (a node of this host, or a relay): its packets are bounded by
    // OTP's fragmentation, this only guards against a runaway.
    const MAX_LOCAL_PACKET: usize = 1 << 30;
    loop {
        tokio::select! {
            p = r.packet(MAX_LOCAL_PACKET) => {
                let Some(p) = p? else { break };
                egress.packet(&p);
                w.write_all(&p).await?;
                w.flush().await?;
            }
            Some(reply) = replies.recv() => {
                w.write_all(&reply).await?;
                w.flush().await?;
            }
        }
    }
    w.shutdown().await?;
    Ok(())
}
