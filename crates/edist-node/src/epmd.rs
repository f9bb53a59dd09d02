//! Async EPMD client (reference §1) on tokio, over the sans-IO codec in [`edist_proto::epmd`].
//!
//! * [`register`] sends ALIVE2_REQ and returns a [`Registration`] that owns the connection: the
//!   name stays registered exactly as long as that value lives (epmd unregisters a name when its
//!   ALIVE2 connection closes; there is no unregister message).
//! * [`port_please`] looks a name up, [`names`] lists all registered names.
//!
//! Every operation (connect, send, receive) runs under one deadline, [`DEFAULT_TIMEOUT`] unless
//! an [`EpmdClient`] with another timeout is used, and every response is read into a bounded
//! buffer, so a silent or misbehaving epmd yields an error instead of a hang or unbounded memory.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use edist_proto::epmd::{self as codec, Alive2Req, Alive2Resp, EpmdError, NamesResp, Port2Resp, Request};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use edist_proto::epmd::NodeInfo;

/// Time allowed for a whole EPMD operation: connect, send the request, read the response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest NAMES response accepted (epmd's own limits make a line at most ~1 KiB).
pub const MAX_NAMES_RESPONSE: usize = 1 << 20;

/// Largest ALIVE2 / PORT2 response: tag, result, fixed fields, name and extra at their limits.
const MAX_SMALL_RESPONSE: usize = 16 + codec::MAX_NAME_LEN + codec::MAX_EXTRA_LEN;

/// The EPMD port: env `ERL_EPMD_PORT` if it holds a valid port number, else 4369.
pub fn default_epmd_port() -> u16 {
    match std::env::var("ERL_EPMD_PORT") {
        Ok(v) => match v.trim().parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                tracing::warn!(value = %v, "ignoring invalid ERL_EPMD_PORT, using {}", codec::DEFAULT_PORT);
                codec::DEFAULT_PORT
            }
        },
        Err(_) => codec::DEFAULT_PORT,
    }
}

/// The local epmd: `127.0.0.1:`[`default_epmd_port`]. (epmd only accepts ALIVE2 from local
/// addresses.)
pub fn default_epmd_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, default_epmd_port()))
}

/// Why an EPMD operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EpmdClientError {
    /// The TCP connection to epmd could not be made (is epmd running on that port?).
    #[error("cannot connect to epmd at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// epmd did not complete the operation in time.
    #[error("epmd at {addr} did not complete {op} within {timeout:?}")]
    Timeout { addr: SocketAddr, op: &'static str, timeout: Duration },
    /// Sending or receiving failed.
    #[error("i/o error during {op} with epmd at {addr}: {source}")]
    Io {
        addr: SocketAddr,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// epmd closed the connection before a complete response. epmd silently drops requests it
    /// considers invalid, and ALIVE2 requests from non-local addresses.
    #[error("epmd at {addr} closed the connection without a complete answer to {op}")]
    Closed { addr: SocketAddr, op: &'static str },
    /// epmd refused the registration: the name is already registered by another node.
    #[error("epmd at {addr} refused to register {name:?} (result {result}): the name is already taken")]
    NameTaken { addr: SocketAddr, name: String, result: u8 },
    /// The request could not be built (invalid name, extra field too long).
    #[error("invalid {op} request: {source}")]
    InvalidRequest {
        op: &'static str,
        #[source]
        source: EpmdError,
    },
    /// epmd's answer could not be decoded.
    #[error("malformed answer to {op} from epmd at {addr}: {source}")]
    Protocol {
        addr: SocketAddr,
        op: &'static str,
        #[source]
        source: EpmdError,
    },
    /// epmd's answer exceeds the size this client accepts.
    #[error("answer to {op} from epmd at {addr} exceeds {limit} bytes")]
    ResponseTooLarge { addr: SocketAddr, op: &'static str, limit: usize },
}

/// A live registration of a node name with epmd.
///
/// It owns the ALIVE2 connection: dropping it closes the socket, which makes epmd unregister
/// the name. Keep it alive for as long as the node should be reachable by name.
#[derive(Debug)]
pub struct Registration {
    /// The creation epmd assigned; goes into every pid, port and reference the node creates.
    pub creation: u32,
    name: String,
    port: u16,
    epmd: SocketAddr,
    stream: TcpStream,
}

impl Registration {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The distribution port registered for the name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The epmd the name is registered with.
    pub fn epmd_addr(&self) -> SocketAddr {
        self.epmd
    }

    /// Resolves when epmd closes the registration connection (epmd exited or was restarted, or
    /// the name was removed with `epmd -stop`): from then on the name is no longer registered.
    /// Cancel-safe; epmd never sends anything on this connection, stray bytes are ignored.
    pub async fn closed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 64];
        loop {
            if self.stream.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Unregisters the name now (same as dropping the value).
    pub fn unregister(self) {}
}

/// An incremental response decoder from the codec (`Ok(None)` = need more bytes).
type Decoder<T> = fn(&[u8]) -> Result<Option<(T, usize)>, EpmdError>;

/// An EPMD endpoint with a per-operation timeout. The free functions [`register`],
/// [`port_please`] and [`names`] use [`DEFAULT_TIMEOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpmdClient {
    addr: SocketAddr,
    timeout: Duration,
}

impl EpmdClient {
    /// A client for the epmd at `addr` with [`DEFAULT_TIMEOUT`].
    pub fn new(addr: SocketAddr) -> Self {
        EpmdClient { addr, timeout: DEFAULT_TIMEOUT }
    }

    /// The same client with another per-operation timeout.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        EpmdClient { timeout, ..self }
    }

    /// The epmd address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers `name` (the part before `@`) for distribution port `port`, as a hidden node if
    /// `hidden`, announcing distribution versions 6..5 like OTP 25.
    pub async fn register(&self, name: &str, port: u16, hidden: bool) -> Result<Registration, EpmdClientError> {
        self.register_req(Alive2Req::new(name, port, hidden)).await
    }

    /// Registers a full node name `alive@host` at an edist gateway's control port, which keeps
    /// the host part (long names, host parts other than the gateway's), as the plug does.
    pub async fn gateway_register(
        &self,
        full_name: &str,
        port: u16,
        hidden: bool,
    ) -> Result<Registration, EpmdClientError> {
        codec::validate_name(full_name).map_err(|source| EpmdClientError::InvalidRequest { op: "ALIVE2", source })?;
        self.register_unchecked(Alive2Req::new(full_name, port, hidden)).await
    }

    /// Registers with a fully specified ALIVE2_REQ.
    pub async fn register_req(&self, req: Alive2Req) -> Result<Registration, EpmdClientError> {
        check_alive_name(&req.name, "ALIVE2")?;
        self.register_unchecked(req).await
    }

    async fn register_unchecked(&self, req: Alive2Req) -> Result<Registration, EpmdClientError> {
        const OP: &str = "ALIVE2";
        let deadline = Instant::now() + self.timeout;
        let name = req.name.clone();
        let port = req.port;
        let mut stream = self.send(OP, &Request::Alive2(req), deadline).await?;
        let resp = self.read_decoded(&mut stream, OP, deadline, Alive2Resp::decode).await?;
        if resp.result != 0 {
            // epmd keeps even a refused ALIVE2 connection open; dropping `stream` closes it.
            return Err(EpmdClientError::NameTaken { addr: self.addr, name, result: resp.result });
        }
        tracing::debug!(epmd = %self.addr, %name, port, creation = resp.creation, "registered with epmd");
        Ok(Registration { creation: resp.creation, name, port, epmd: self.addr, stream })
    }

    /// Looks up `name` (the part before `@`); `None` when epmd does not know it.
    pub async fn port_please(&self, name: &str) -> Result<Option<NodeInfo>, EpmdClientError> {
        check_alive_name(name, "PORT_PLEASE2")?;
        self.port_please_unchecked(name).await
    }

    /// Looks up a full node name `alive@host` at an edist gateway's control port, which answers
    /// PORT_PLEASE2 for full names with the loopback port to dial.
    pub async fn gateway_port_please(&self, full_name: &str) -> Result<Option<NodeInfo>, EpmdClientError> {
        codec::validate_name(full_name)
            .map_err(|source| EpmdClientError::InvalidRequest { op: "PORT_PLEASE2", source })?;
        self.port_please_unchecked(full_name).await
    }

    async fn port_please_unchecked(&self, name: &str) -> Result<Option<NodeInfo>, EpmdClientError> {
        const OP: &str = "PORT_PLEASE2";
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.send(OP, &Request::PortPlease2 { name: name.to_owned() }, deadline).await?;
        match self.read_decoded(&mut stream, OP, deadline, Port2Resp::decode).await? {
            Port2Resp::Ok(info) => Ok(Some(info)),
            Port2Resp::Err(code) => {
                tracing::debug!(epmd = %self.addr, name, code, "epmd does not know the name");
                Ok(None)
            }
        }
    }

    /// Lists the registered names and their distribution ports.
    pub async fn names(&self) -> Result<Vec<(String, u16)>, EpmdClientError> {
        const OP: &str = "NAMES";
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.send(OP, &Request::Names, deadline).await?;
        // The response ends when epmd closes the connection.
        let mut buf = Vec::with_capacity(256);
        loop {
            let mut chunk = [0u8; 1024];
            let n = self.io(OP, deadline, stream.read(&mut chunk)).await?;
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_NAMES_RESPONSE {
                return Err(EpmdClientError::ResponseTooLarge { addr: self.addr, op: OP, limit: MAX_NAMES_RESPONSE });
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        match NamesResp::decode_complete(&buf) {
            Ok(resp) => Ok(resp.entries),
            // Nothing at all: epmd closed without answering.
            Err(EpmdError::Truncated(_)) if buf.is_empty() => Err(EpmdClientError::Closed { addr: self.addr, op: OP }),
            Err(source) => Err(EpmdClientError::Protocol { addr: self.addr, op: OP, source }),
        }
    }

    /// Connects and sends `req`.
    async fn send(&self, op: &'static str, req: &Request, deadline: Instant) -> Result<TcpStream, EpmdClientError> {
        let bytes = req.encode().map_err(|source| EpmdClientError::InvalidRequest { op, source })?;
        let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(self.timed_out(op)),
            Ok(Err(source)) => return Err(EpmdClientError::Connect { addr: self.addr, source }),
            Ok(Ok(s)) => s,
        };
        // Requests and responses are tiny; nodelay only avoids a Nagle delay on odd stacks.
        let _ = stream.set_nodelay(true);
        self.io(op, deadline, stream.write_all(&bytes)).await?;
        Ok(stream)
    }

    /// Reads until `decode` yields a value, within `deadline` and [`MAX_SMALL_RESPONSE`] bytes.
    async fn read_decoded<T>(
        &self,
        stream: &mut TcpStream,
        op: &'static str,
        deadline: Instant,
        decode: Decoder<T>,
    ) -> Result<T, EpmdClientError> {
        let mut buf = Vec::with_capacity(64);
        loop {
            match decode(&buf) {
                Ok(Some((value, used))) => {
                    if used < buf.len() {
                        tracing::debug!(epmd = %self.addr, op, extra = buf.len() - used, "ignoring bytes after the epmd response");
                    }
                    return Ok(value);
                }
                Ok(None) => {}
                Err(source) => return Err(EpmdClientError::Protocol { addr: self.addr, op, source }),
            }
            let room = MAX_SMALL_RESPONSE.saturating_sub(buf.len());
            if room == 0 {
                return Err(EpmdClientError::ResponseTooLarge { addr: self.addr, op, limit: MAX_SMALL_RESPONSE });
            }
            let mut chunk = [0u8; 512];
            let want = room.min(chunk.len());
            let n = self.io(op, deadline, stream.read(chunk.get_mut(..want).unwrap_or_default())).await?;
            if n == 0 {
                return Err(EpmdClientError::Closed { addr: self.addr, op });
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Runs one IO step under the operation deadline.
    async fn io<T>(
        &self,
        op: &'static str,
        deadline: Instant,
        fut: impl Future<Output = io::Result<T>>,
    ) -> Result<T, EpmdClientError> {
        match tokio::time::timeout_at(deadline, fut).await {
            Err(_) => Err(self.timed_out(op)),
            Ok(Err(source)) => Err(EpmdClientError::Io { addr: self.addr, op, source }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn timed_out(&self, op: &'static str) -> EpmdClientError {
        EpmdClientError::Timeout { addr: self.addr, op, timeout: self.timeout }
    }
}

/// epmd accepts `@` in names, but an Erlang node's alive part never contains one; passing a
/// full `name@host` is a caller mistake that epmd would only answer with "unknown".
fn check_alive_name(name: &str, op: &'static str) -> Result<(), EpmdClientError> {
    if name.contains('@') {
        return Err(EpmdClientError::InvalidRequest {
            op,
            source: EpmdError::InvalidName("contains '@': pass only the part before it"),
        });
    }
    codec::validate_name(name).map_err(|source| EpmdClientError::InvalidRequest { op, source })
}

/// Registers `name` (the part before `@`) with the epmd at `epmd` for distribution port `port`,
/// as a normal node (`'M'`) or a hidden one (`'H'`), protocol TCP, versions 6..5. The name stays
/// registered while the returned [`Registration`] lives. A name already in use gives
/// [`EpmdClientError::NameTaken`].
pub async fn register(epmd: SocketAddr, name: &str, port: u16, hidden: bool) -> Result<Registration, EpmdClientError> {
    EpmdClient::new(epmd).register(name, port, hidden).await
}

/// Looks up `name` (the part before `@`) at the epmd at `epmd`; `None` when it is not registered.
pub async fn port_please(epmd: SocketAddr, name: &str) -> Result<Option<NodeInfo>, EpmdClientError> {
    EpmdClient::new(epmd).port_please(name).await
}

/// Lists the names registered with the epmd at `epmd`, with their distribution ports.
pub async fn names(epmd: SocketAddr) -> Result<Vec<(String, u16)>, EpmdClientError> {
    EpmdClient::new(epmd).names().await
}
