//! The EPMD wire protocol (reference §1), client and server side, without IO.
//!
//! Every request is `[u16 Length][Request]`; responses carry no length prefix. EPMD answers one
//! request per TCP connection and closes it, except after ALIVE2, whose connection stays open for
//! as long as the node is registered (closing it unregisters the name).
//!
//! * Client side: build a [`Request`], send [`Request::encode`], then feed the bytes received so
//!   far to [`Alive2Resp::decode`] / [`Port2Resp::decode`] until they return `Some`, or collect
//!   everything up to the close and call [`NamesResp::decode_complete`].
//! * Server side: feed received bytes to [`Request::decode`] and answer with the `encode` of the
//!   matching response type.
//!
//! Limits follow `epmd` itself (`erts/epmd/src/epmd_int.h`): a node name is 1..=255 characters
//! of UTF-8 (so at most [`MAX_NAME_LEN`] bytes) without NUL bytes, the extra field is at most
//! [`MAX_EXTRA_LEN`] bytes and a request frame at most [`MAX_REQUEST_LEN`] bytes. Decoders never
//! size an allocation from an untrusted length beyond these limits and never panic.

use crate::codec::Reader;
use thiserror::Error;

/// Request tag of ALIVE2_REQ (`'x'`).
pub const ALIVE2_REQ: u8 = 120;
/// Response tag of ALIVE2_X_RESP (`'v'`, 32-bit creation; distribution version 6).
pub const ALIVE2_X_RESP: u8 = 118;
/// Response tag of the old ALIVE2_RESP (`'y'`, 16-bit creation; distribution version 5).
pub const ALIVE2_RESP: u8 = 121;
/// Request tag of PORT_PLEASE2_REQ (`'z'`).
pub const PORT_PLEASE2_REQ: u8 = 122;
/// Response tag of PORT2_RESP (`'w'`).
pub const PORT2_RESP: u8 = 119;
/// Request tag of NAMES_REQ (`'n'`).
pub const NAMES_REQ: u8 = 110;
/// Request tag of DUMP_REQ (`'d'`).
pub const DUMP_REQ: u8 = 100;
/// Request tag of KILL_REQ (`'k'`).
pub const KILL_REQ: u8 = 107;
/// Request tag of STOP_REQ (`'s'`).
pub const STOP_REQ: u8 = 115;

/// Node type of a normal Erlang node (`'M'`).
pub const NODE_TYPE_NORMAL: u8 = 77;
/// Node type of a hidden node or C node (`'H'`).
pub const NODE_TYPE_HIDDEN: u8 = 72;
/// Protocol 0: TCP/IPv4.
pub const PROTOCOL_TCP: u8 = 0;
/// Highest distribution version OTP 25 announces.
pub const DIST_HIGH: u16 = 6;
/// Lowest distribution version OTP 25 announces.
pub const DIST_LOW: u16 = 5;

/// Default EPMD TCP port.
pub const DEFAULT_PORT: u16 = 4369;

/// Maximum node name length in characters (an atom's limit).
pub const MAX_NAME_CHARS: usize = 255;
/// Maximum node name length in bytes (255 characters of up to 4 UTF-8 bytes; epmd's MAXSYMLEN).
pub const MAX_NAME_LEN: usize = 255 * 4;
/// Maximum length of the extra field in bytes (epmd's MAXSYMLEN).
pub const MAX_EXTRA_LEN: usize = 255 * 4;
/// Maximum request length (the u16 length field's value) epmd accepts: its input buffer is
/// `3 * MAXSYMLEN` bytes including the 2-byte length prefix, minus one byte for a terminator.
pub const MAX_REQUEST_LEN: usize = 3 * MAX_NAME_LEN - 3;

/// Size of an ok PORT2_RESP up to and including the name length.
const PORT2_FIXED: usize = 12;

/// Why EPMD bytes could not be decoded or a value could not be encoded. Every variant is a
/// property of the input, never a bug.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EpmdError {
    /// A request's length field is 0.
    #[error("empty EPMD request")]
    EmptyRequest,
    /// A request is longer than [`MAX_REQUEST_LEN`].
    #[error("EPMD request of {len} bytes exceeds the maximum of {max}")]
    RequestTooLarge { len: usize, max: usize },
    /// A request tag this codec does not know.
    #[error("unknown EPMD request tag {0}")]
    UnknownRequest(u8),
    /// A response starts with a tag other than the expected one(s).
    #[error("unexpected tag {got} in {what}")]
    UnexpectedTag { what: &'static str, got: u8 },
    /// A node name is empty, contains NUL, is not UTF-8, or is too long.
    #[error("invalid node name: {0}")]
    InvalidName(&'static str),
    /// The extra field is longer than [`MAX_EXTRA_LEN`].
    #[error("extra field of {0} bytes exceeds the maximum of {MAX_EXTRA_LEN}")]
    ExtraTooLong(usize),
    /// A length field inside a request points beyond the request's end.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: &'static str },
    /// Bytes remain inside a request frame after the request.
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes { what: &'static str, count: usize },
    /// A complete response (one ended by the connection closing) is cut short.
    #[error("{0} ends early")]
    Truncated(&'static str),
    /// A line of a NAMES response is not `name <name> at port <port>\n`.
    #[error("malformed line {line} in NAMES response")]
    BadNamesLine { line: usize },
    /// The old ALIVE2_RESP carries only a 16-bit creation.
    #[error("creation {0} does not fit a 16-bit ALIVE2_RESP")]
    CreationTooLarge(u32),
    /// PORT2_RESP error code 0 means success; it cannot encode an error.
    #[error("PORT2_RESP error code 0 is the success code")]
    ZeroErrorCode,
}

/// Checks a node name (the part before `@`) against epmd's rules.
pub fn validate_name(name: &str) -> Result<(), EpmdError> {
    if name.is_empty() {
        return Err(EpmdError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME_LEN || name.chars().count() > MAX_NAME_CHARS {
        return Err(EpmdError::InvalidName("longer than 255 characters"));
    }
    if name.bytes().any(|b| b == 0) {
        return Err(EpmdError::InvalidName("contains a NUL byte"));
    }
    Ok(())
}

fn name_from_bytes(bytes: &[u8]) -> Result<String, EpmdError> {
    if bytes.len() > MAX_NAME_LEN {
        return Err(EpmdError::InvalidName("longer than 255 characters"));
    }
    let name = std::str::from_utf8(bytes).map_err(|_| EpmdError::InvalidName("not UTF-8"))?;
    validate_name(name)?;
    Ok(name.to_owned())
}

fn check_extra(extra: &[u8]) -> Result<(), EpmdError> {
    if extra.len() > MAX_EXTRA_LEN {
        Err(EpmdError::ExtraTooLong(extra.len()))
    } else {
        Ok(())
    }
}

/// ALIVE2_REQ: register a node name and its distribution port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alive2Req {
    /// The node's distribution listen port.
    pub port: u16,
    /// [`NODE_TYPE_NORMAL`] or [`NODE_TYPE_HIDDEN`].
    pub node_type: u8,
    /// [`PROTOCOL_TCP`].
    pub protocol: u8,
    /// Highest distribution version supported.
    pub high: u16,
    /// Lowest distribution version supported.
    pub low: u16,
    /// The node name (the part before `@`).
    pub name: String,
    /// Opaque extra data, normally empty.
    pub extra: Vec<u8>,
}

impl Alive2Req {
    /// Whether the node registered as hidden.
    pub fn is_hidden(&self) -> bool {
        self.node_type == NODE_TYPE_HIDDEN
    }

    /// The request OTP 25 sends: TCP, versions 6..5, no extra data.
    pub fn new(name: impl Into<String>, port: u16, hidden: bool) -> Self {
        Alive2Req {
            port,
            node_type: if hidden { NODE_TYPE_HIDDEN } else { NODE_TYPE_NORMAL },
            protocol: PROTOCOL_TCP,
            high: DIST_HIGH,
            low: DIST_LOW,
            name: name.into(),
            extra: Vec::new(),
        }
    }
}

/// A request to EPMD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Register a node; the connection must stay open while registered.
    Alive2(Alive2Req),
    /// Look up the port of a node name.
    PortPlease2 { name: String },
    /// List registered names.
    Names,
    /// Debug dump of all names, registered or old.
    Dump,
    /// Ask epmd to terminate.
    Kill,
    /// Forcibly unregister a name (needs `-relaxed_command_check`).
    Stop { name: String },
}

impl Request {
    /// The request tag byte.
    pub fn tag(&self) -> u8 {
        match self {
            Request::Alive2(_) => ALIVE2_REQ,
            Request::PortPlease2 { .. } => PORT_PLEASE2_REQ,
            Request::Names => NAMES_REQ,
            Request::Dump => DUMP_REQ,
            Request::Kill => KILL_REQ,
            Request::Stop { .. } => STOP_REQ,
        }
    }

    /// The request with its u16 length prefix. Fails only when a name or the extra field breaks
    /// epmd's limits (which also keeps every length within its u16 field).
    pub fn encode(&self) -> Result<Vec<u8>, EpmdError> {
        let mut body = Vec::with_capacity(32);
        body.push(self.tag());
        match self {
            Request::Alive2(req) => {
                put_node(&mut body, req)?;
            }
            Request::PortPlease2 { name } | Request::Stop { name } => {
                validate_name(name)?;
                body.extend_from_slice(name.as_bytes());
            }
            Request::Names | Request::Dump | Request::Kill => {}
        }
        // The limits above keep the body far below MAX_REQUEST_LEN.
        let len = u16::try_from(body.len())
            .map_err(|_| EpmdError::RequestTooLarge { len: body.len(), max: MAX_REQUEST_LEN })?;
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Server side: decodes one request from the start of `buf`. `Ok(None)` means more bytes are
    /// needed; `Ok(Some((request, consumed)))` gives the request and the bytes it took, length
    /// prefix included.
    pub fn decode(buf: &[u8]) -> Result<Option<(Request, usize)>, EpmdError> {
        let mut c = Reader::new(buf);
        let Some(len) = c.u16().ok() else { return Ok(None) };
        let len = usize::from(len);
        if len == 0 {
            return Err(EpmdError::EmptyRequest);
        }
        if len > MAX_REQUEST_LEN {
            return Err(EpmdError::RequestTooLarge { len, max: MAX_REQUEST_LEN });
        }
        let Some(body) = c.bytes(len).ok() else {
            return Ok(None);
        };
        Ok(Some((Self::decode_body(body)?, len + 2)))
    }

    /// Decodes a request without its length prefix (the whole frame).
    pub fn decode_body(body: &[u8]) -> Result<Request, EpmdError> {
        let mut c = Reader::new(body);
        let tag = c.u8().ok().ok_or(EpmdError::EmptyRequest)?;
        let req = match tag {
            ALIVE2_REQ => {
                const WHAT: &str = "ALIVE2_REQ";
                let short = EpmdError::Malformed { what: WHAT, reason: "shorter than its fields" };
                let port = c.u16().ok().ok_or_else(|| short.clone())?;
                let node_type = c.u8().ok().ok_or_else(|| short.clone())?;
                let protocol = c.u8().ok().ok_or_else(|| short.clone())?;
                let high = c.u16().ok().ok_or_else(|| short.clone())?;
                let low = c.u16().ok().ok_or_else(|| short.clone())?;
                let nlen = usize::from(c.u16().ok().ok_or_else(|| short.clone())?);
                if nlen > MAX_NAME_LEN {
                    return Err(EpmdError::InvalidName("longer than 255 characters"));
                }
                let name = c
                    .bytes(nlen)
                    .ok()
                    .ok_or(EpmdError::Malformed { what: WHAT, reason: "name length beyond the end" })?;
                let name = name_from_bytes(name)?;
                let elen = usize::from(c.u16().ok().ok_or_else(|| short.clone())?);
                if elen > MAX_EXTRA_LEN {
                    return Err(EpmdError::ExtraTooLong(elen));
                }
                let extra = c
                    .bytes(elen)
                    .ok()
                    .ok_or(EpmdError::Malformed { what: WHAT, reason: "extra length beyond the end" })?
                    .to_vec();
                no_trailing(&c, WHAT)?;
                Request::Alive2(Alive2Req { port, node_type, protocol, high, low, name, extra })
            }
            PORT_PLEASE2_REQ => {
                let mut name = c.take_rest();
                // epmd accepts (and R3-era nodes send) one NUL terminator.
                if let Some((0, head)) = name.split_last() {
                    name = head;
                }
                Request::PortPlease2 { name: name_from_bytes(name)? }
            }
            STOP_REQ => Request::Stop { name: name_from_bytes(c.take_rest())? },
            NAMES_REQ | DUMP_REQ | KILL_REQ => {
                let (req, what) = match tag {
                    NAMES_REQ => (Request::Names, "NAMES_REQ"),
                    DUMP_REQ => (Request::Dump, "DUMP_REQ"),
                    _ => (Request::Kill, "KILL_REQ"),
                };
                no_trailing(&c, what)?;
                req
            }
            other => return Err(EpmdError::UnknownRequest(other)),
        };
        Ok(req)
    }
}

/// The node fields shared by ALIVE2_REQ and PORT2_RESP.
fn put_node(out: &mut Vec<u8>, n: &Alive2Req) -> Result<(), EpmdError> {
    validate_name(&n.name)?;
    check_extra(&n.extra)?;
    out.extend_from_slice(&n.port.to_be_bytes());
    out.push(n.node_type);
    out.push(n.protocol);
    out.extend_from_slice(&n.high.to_be_bytes());
    out.extend_from_slice(&n.low.to_be_bytes());
    put_u16_len(out, n.name.as_bytes());
    put_u16_len(out, &n.extra);
    Ok(())
}

fn put_u16_len(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers have checked `bytes.len() <= MAX_NAME_LEN`, far below u16::MAX.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn no_trailing(c: &Reader<'_>, what: &'static str) -> Result<(), EpmdError> {
    match c.remaining() {
        0 => Ok(()),
        count => Err(EpmdError::TrailingBytes { what, count }),
    }
}

/// ALIVE2_X_RESP (`'v'`) or the old ALIVE2_RESP (`'y'`): the answer to ALIVE2_REQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alive2Resp {
    /// 0 = registered; anything else = refused (epmd uses 1, e.g. for a name in use).
    pub result: u8,
    /// The node's creation (epmd sends 99 along with a failure).
    pub creation: u32,
}

impl Alive2Resp {
    /// Server side: the ALIVE2_X_RESP (`'v'`) form, for nodes announcing version 6.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(6);
        out.push(ALIVE2_X_RESP);
        out.push(self.result);
        out.extend_from_slice(&self.creation.to_be_bytes());
        out
    }

    /// Server side: the old ALIVE2_RESP (`'y'`) form with a 16-bit creation.
    pub fn encode_v5(&self) -> Result<Vec<u8>, EpmdError> {
        let creation = u16::try_from(self.creation).map_err(|_| EpmdError::CreationTooLarge(self.creation))?;
        let mut out = Vec::with_capacity(4);
        out.push(ALIVE2_RESP);
        out.push(self.result);
        out.extend_from_slice(&creation.to_be_bytes());
        Ok(out)
    }

    /// Client side: decodes either form from the start of `buf`; `Ok(None)` = need more bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(Alive2Resp, usize)>, EpmdError> {
        let mut c = Reader::new(buf);
        let Some(tag) = c.u8().ok() else { return Ok(None) };
        let Some(result) = c.u8().ok() else {
            return match tag {
                ALIVE2_X_RESP | ALIVE2_RESP => Ok(None),
                got => Err(EpmdError::UnexpectedTag { what: "ALIVE2 response", got }),
            };
        };
        let creation = match tag {
            ALIVE2_X_RESP => c.u32().ok(),
            ALIVE2_RESP => c.u16().ok().map(u32::from),
            got => return Err(EpmdError::UnexpectedTag { what: "ALIVE2 response", got }),
        };
        Ok(creation.map(|creation| (Alive2Resp { result, creation }, c.position())))
    }
}

/// A registered node as PORT2_RESP describes it: the same fields, in the same layout, as the
/// ALIVE2_REQ that registered it.
pub type NodeInfo = Alive2Req;

/// PORT2_RESP: the answer to PORT_PLEASE2_REQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port2Resp {
    /// The name is registered.
    Ok(NodeInfo),
    /// The name is not registered (epmd sends code 1).
    Err(u8),
}

impl Port2Resp {
    /// Server side encoding. Fails for an invalid name or extra field, or for `Err(0)`.
    pub fn encode(&self) -> Result<Vec<u8>, EpmdError> {
        match self {
            Port2Resp::Err(0) => Err(EpmdError::ZeroErrorCode),
            Port2Resp::Err(code) => Ok(vec![PORT2_RESP, *code]),
            Port2Resp::Ok(info) => {
                let mut out = Vec::with_capacity(PORT2_FIXED + 2 + info.name.len() + info.extra.len());
                out.extend_from_slice(&[PORT2_RESP, 0]);
                put_node(&mut out, info)?;
                Ok(out)
            }
        }
    }

    /// Client side: decodes from the start of `buf`; `Ok(None)` = need more bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(Port2Resp, usize)>, EpmdError> {
        let mut c = Reader::new(buf);
        let Some(tag) = c.u8().ok() else { return Ok(None) };
        if tag != PORT2_RESP {
            return Err(EpmdError::UnexpectedTag { what: "PORT2_RESP", got: tag });
        }
        let Some(result) = c.u8().ok() else {
            return Ok(None);
        };
        if result != 0 {
            return Ok(Some((Port2Resp::Err(result), c.position())));
        }
        let (Some(port), Some(node_type), Some(protocol), Some(high), Some(low), Some(nlen)) =
            (c.u16().ok(), c.u8().ok(), c.u8().ok(), c.u16().ok(), c.u16().ok(), c.u16().ok())
        else {
            return Ok(None);
        };
        let nlen = usize::from(nlen);
        if nlen > MAX_NAME_LEN {
            return Err(EpmdError::InvalidName("longer than 255 characters"));
        }
        let Some(name) = c.bytes(nlen).ok() else {
            return Ok(None);
        };
        let name = name_from_bytes(name)?;
        let Some(elen) = c.u16().ok() else { return Ok(None) };
        let elen = usize::from(elen);
        if elen > MAX_EXTRA_LEN {
            return Err(EpmdError::ExtraTooLong(elen));
        }
        let Some(extra) = c.bytes(elen).ok() else {
            return Ok(None);
        };
        let info = NodeInfo { port, node_type, protocol, high, low, name, extra: extra.to_vec() };
        Ok(Some((Port2Resp::Ok(info), c.position())))
    }
}

/// NAMES_RESP: epmd's port, then one `name <name> at port <port>\n` line per registered node.
/// The response has no length; it ends when epmd closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamesResp {
    /// The port epmd listens on.
    pub epmd_port: u32,
    /// Registered names and their distribution ports, in epmd's order.
    pub entries: Vec<(String, u16)>,
}

impl NamesResp {
    /// Server side encoding. Fails for an invalid name (a newline is rejected too, since it
    /// would break the line format).
    pub fn encode(&self) -> Result<Vec<u8>, EpmdError> {
        let mut out = Vec::with_capacity(4 + self.entries.len() * 32);
        out.extend_from_slice(&self.epmd_port.to_be_bytes());
        for (name, port) in &self.entries {
            validate_name(name)?;
            if name.contains('\n') {
                return Err(EpmdError::InvalidName("contains a newline"));
            }
            out.extend_from_slice(format!("name {name} at port {port}\n").as_bytes());
        }
        Ok(out)
    }

    /// Client side: decodes the whole response, i.e. every byte received until epmd closed the
    /// connection.
    pub fn decode_complete(buf: &[u8]) -> Result<NamesResp, EpmdError> {
        let mut c = Reader::new(buf);
        let epmd_port = c.u32().ok().ok_or(EpmdError::Truncated("NAMES response"))?;
        let mut text = c.take_rest();
        let mut entries = Vec::new();
        let mut line_no = 0;
        while !text.is_empty() {
            line_no += 1;
            let Some(nl) = text.iter().position(|b| *b == b'\n') else {
                return Err(EpmdError::Truncated("NAMES response"));
            };
            let line = text.get(..nl).unwrap_or_default();
            text = text.get(nl + 1..).unwrap_or_default();
            let bad = EpmdError::BadNamesLine { line: line_no };
            let line = std::str::from_utf8(line).map_err(|_| bad.clone())?;
            let body = line.strip_prefix("name ").ok_or_else(|| bad.clone())?;
            // A name never contains " at port ", but search from the right to be safe.
            let (name, port) = body.rsplit_once(" at port ").ok_or_else(|| bad.clone())?;
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad);
            }
            let port: u16 = port.parse().map_err(|_| bad.clone())?;
            validate_name(name).map_err(|_| bad)?;
            entries.push((name.to_owned(), port));
        }
        Ok(NamesResp { epmd_port, entries })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// §1: ALIVE2_REQ for "probe" at port 9999, as OTP 25.2.3 sends it.
    const ALIVE2_PROBE: &str = "0012 78 270f 4d 00 0006 0005 0005 70726f6265 0000";
    /// §1: PORT2_RESP for "probe".
    const PORT2_PROBE: &str = "77 00 270f 4d 00 0006 0005 0005 70726f6265 0000";

    fn probe_info() -> NodeInfo {
        NodeInfo {
            port: 9999,
            node_type: NODE_TYPE_NORMAL,
            protocol: PROTOCOL_TCP,
            high: 6,
            low: 5,
            name: "probe".into(),
            extra: vec![],
        }
    }

    #[test]
    fn alive2_req_matches_capture() {
        let req = Request::Alive2(Alive2Req::new("probe", 9999, false));
        let bytes = req.encode().unwrap();
        assert_eq!(bytes, hex(ALIVE2_PROBE));
        assert_eq!(Request::decode(&bytes).unwrap(), Some((req, bytes.len())));
    }

    #[test]
    fn alive2_hidden_node_type() {
        let bytes = Request::Alive2(Alive2Req::new("h", 1, true)).encode().unwrap();
        assert_eq!(bytes[5], NODE_TYPE_HIDDEN);
    }

    #[test]
    fn alive2_resp_v_matches_capture() {
        let bytes = hex("76 00 6b057b3e");
        let resp = Alive2Resp { result: 0, creation: 1_795_521_342 };
        assert_eq!(Alive2Resp::decode(&bytes).unwrap(), Some((resp, 6)));
        assert_eq!(resp.encode(), bytes);
        // duplicate name
        let dup = Alive2Resp::decode(&hex("76 01 00000063")).unwrap().unwrap().0;
        assert_eq!(dup, Alive2Resp { result: 1, creation: 99 });
    }

    #[test]
    fn alive2_resp_old_y() {
        let bytes = hex("79 00 0003");
        let resp = Alive2Resp { result: 0, creation: 3 };
        assert_eq!(Alive2Resp::decode(&bytes).unwrap(), Some((resp, 4)));
        assert_eq!(resp.encode_v5().unwrap(), bytes);
        assert_eq!(Alive2Resp { result: 0, creation: 70_000 }.encode_v5(), Err(EpmdError::CreationTooLarge(70_000)));
    }

    #[test]
    fn alive2_resp_incremental() {
        let bytes = hex("76 00 6b057b3e ff ff");
        for n in 0..6 {
            assert_eq!(Alive2Resp::decode(&bytes[..n]).unwrap(), None, "prefix {n}");
        }
        // consumed excludes what follows
        assert_eq!(Alive2Resp::decode(&bytes).unwrap().unwrap().1, 6);
        assert!(matches!(Alive2Resp::decode(&[0x77]), Err(EpmdError::UnexpectedTag { got: 0x77, .. })));
        assert!(Alive2Resp::decode(b"\x00\x00\x00\x00\x00\x00").is_err());
    }

    #[test]
    fn port2_resp_matches_capture() {
        let bytes = hex(PORT2_PROBE);
        let resp = Port2Resp::Ok(probe_info());
        assert_eq!(Port2Resp::decode(&bytes).unwrap(), Some((resp.clone(), bytes.len())));
        assert_eq!(resp.encode().unwrap(), bytes);
        for n in 0..bytes.len() {
            assert_eq!(Port2Resp::decode(&bytes[..n]).unwrap(), None, "prefix {n}");
        }
    }

    #[test]
    fn port2_resp_unknown_matches_capture() {
        let bytes = hex("77 01");
        assert_eq!(Port2Resp::decode(&bytes).unwrap(), Some((Port2Resp::Err(1), 2)));
        assert_eq!(Port2Resp::Err(1).encode().unwrap(), bytes);
        assert_eq!(Port2Resp::Err(0).encode(), Err(EpmdError::ZeroErrorCode));
        assert!(Port2Resp::decode(&hex("76 01")).is_err());
    }

    #[test]
    fn port2_resp_with_extra_round_trip() {
        let mut info = probe_info();
        info.name = "nöde".into();
        info.extra = vec![1, 2, 3];
        info.node_type = NODE_TYPE_HIDDEN;
        let resp = Port2Resp::Ok(info);
        let bytes = resp.encode().unwrap();
        assert_eq!(Port2Resp::decode(&bytes).unwrap(), Some((resp, bytes.len())));
    }

    #[test]
    fn names_resp_matches_capture() {
        let mut bytes = hex("00001111");
        bytes.extend_from_slice(b"name probe at port 9999\n");
        let resp = NamesResp { epmd_port: 4369, entries: vec![("probe".into(), 9999)] };
        assert_eq!(NamesResp::decode_complete(&bytes).unwrap(), resp);
        assert_eq!(resp.encode().unwrap(), bytes);
    }

    #[test]
    fn names_resp_empty_and_several() {
        assert_eq!(
            NamesResp::decode_complete(&hex("00001111")).unwrap(),
            NamesResp { epmd_port: 4369, entries: vec![] }
        );
        let resp =
            NamesResp { epmd_port: 4400, entries: vec![("a".into(), 1), ("b_c".into(), 65535), ("d".into(), 40000)] };
        assert_eq!(NamesResp::decode_complete(&resp.encode().unwrap()).unwrap(), resp);
    }

    #[test]
    fn names_resp_rejects_garbage() {
        let with = |text: &[u8]| {
            let mut b = hex("00001111");
            b.extend_from_slice(text);
            NamesResp::decode_complete(&b)
        };
        assert_eq!(with(b"name probe at port 9999"), Err(EpmdError::Truncated("NAMES response")));
        assert_eq!(with(b"name probe at port 99999\n"), Err(EpmdError::BadNamesLine { line: 1 }));
        assert_eq!(with(b"name a at port 1\nnam b at port 2\n"), Err(EpmdError::BadNamesLine { line: 2 }));
        assert_eq!(with(b"name  at port 1\n"), Err(EpmdError::BadNamesLine { line: 1 }));
        assert_eq!(with(b"name a at port +1\n"), Err(EpmdError::BadNamesLine { line: 1 }));
        assert_eq!(with(b"name \xff at port 1\n"), Err(EpmdError::BadNamesLine { line: 1 }));
        assert_eq!(NamesResp::decode_complete(&[0, 0, 0x11]), Err(EpmdError::Truncated("NAMES response")));
        let bad = NamesResp { epmd_port: 1, entries: vec![("a\nb".into(), 1)] };
        assert!(bad.encode().is_err());
    }

    #[test]
    fn request_round_trips() {
        let mut full = Alive2Req::new("x".repeat(MAX_NAME_CHARS), 65535, true);
        full.extra = vec![7; MAX_EXTRA_LEN];
        let reqs = [
            Request::Alive2(Alive2Req::new("n", 0, false)),
            Request::Alive2(Alive2Req::new("ü".repeat(MAX_NAME_CHARS), 1, false)),
            Request::Alive2(full),
            Request::PortPlease2 { name: "probe".into() },
            Request::Names,
            Request::Dump,
            Request::Kill,
            Request::Stop { name: "probe".into() },
        ];
        for req in reqs {
            let bytes = req.encode().unwrap();
            assert!(bytes.len() - 2 <= MAX_REQUEST_LEN);
            assert_eq!(Request::decode(&bytes).unwrap(), Some((req.clone(), bytes.len())), "{req:?}");
            for n in 0..bytes.len() {
                assert_eq!(Request::decode(&bytes[..n]).unwrap(), None, "{req:?} prefix {n}");
            }
            // A following request stays unconsumed.
            let mut two = bytes.clone();
            two.extend_from_slice(&Request::Names.encode().unwrap());
            assert_eq!(Request::decode(&two).unwrap().unwrap().1, bytes.len());
        }
    }

    #[test]
    fn simple_request_bytes() {
        assert_eq!(Request::Names.encode().unwrap(), [0, 1, b'n']);
        assert_eq!(Request::Dump.encode().unwrap(), [0, 1, b'd']);
        assert_eq!(Request::Kill.encode().unwrap(), [0, 1, b'k']);
        assert_eq!(Request::PortPlease2 { name: "probe".into() }.encode().unwrap(), b"\x00\x06zprobe");
        assert_eq!(Request::Stop { name: "probe".into() }.encode().unwrap(), b"\x00\x06sprobe");
    }

    #[test]
    fn port_please_accepts_nul_terminator() {
        assert_eq!(
            Request::decode(b"\x00\x07zprobe\x00").unwrap(),
            Some((Request::PortPlease2 { name: "probe".into() }, 9))
        );
    }

    #[test]
    fn encode_rejects_bad_names() {
        let enc = |name: &str| Request::PortPlease2 { name: name.into() }.encode();
        assert!(matches!(enc(""), Err(EpmdError::InvalidName(_))));
        assert!(matches!(enc("a\0b"), Err(EpmdError::InvalidName(_))));
        assert!(matches!(enc(&"x".repeat(256)), Err(EpmdError::InvalidName(_))));
        assert!(enc(&"x".repeat(255)).is_ok());
        let mut req = Alive2Req::new("n", 1, false);
        req.extra = vec![0; MAX_EXTRA_LEN + 1];
        assert_eq!(Request::Alive2(req).encode(), Err(EpmdError::ExtraTooLong(MAX_EXTRA_LEN + 1)));
        assert!(Request::Alive2(Alive2Req::new("x".repeat(70_000), 1, false)).encode().is_err());
    }

    #[test]
    fn decode_rejects_bad_requests() {
        assert_eq!(Request::decode(&[0, 0]), Err(EpmdError::EmptyRequest));
        assert!(matches!(Request::decode(&[0xff, 0xff]), Err(EpmdError::RequestTooLarge { .. })));
        assert_eq!(Request::decode(b"\x00\x01q"), Err(EpmdError::UnknownRequest(b'q')));
        assert!(matches!(Request::decode(b"\x00\x02nn"), Err(EpmdError::TrailingBytes { .. })));
        assert!(matches!(Request::decode(b"\x00\x01z"), Err(EpmdError::InvalidName(_))));
        assert!(matches!(Request::decode(b"\x00\x03za\xff"), Err(EpmdError::InvalidName(_))));
        assert!(matches!(Request::decode(b"\x00\x04za\x00b"), Err(EpmdError::InvalidName(_))));
        // ALIVE2 whose name length points past the frame
        let mut b = hex(ALIVE2_PROBE);
        b[12] = 0x40;
        assert!(matches!(Request::decode(&b), Err(EpmdError::Malformed { .. })));
        // ALIVE2 with an over-long name length
        b[11] = 0x04;
        b[12] = 0x00;
        assert!(matches!(Request::decode(&b), Err(EpmdError::InvalidName(_))));
        // ALIVE2 with an empty name
        let b = hex("000d 78 270f 4d 00 0006 0005 0000 0000");
        assert!(matches!(Request::decode(&b), Err(EpmdError::InvalidName(_))));
        // ALIVE2 shorter than its fixed part
        let b = hex("0005 78 270f 4d 00");
        assert!(matches!(Request::decode(&b), Err(EpmdError::Malformed { .. })));
        // ALIVE2 with bytes after the extra field
        let mut b = hex(ALIVE2_PROBE);
        b[1] += 1;
        b.push(0);
        assert!(matches!(Request::decode(&b), Err(EpmdError::TrailingBytes { .. })));
    }

    /// Deterministic xorshift so the garbage test needs no extra crate.
    fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                (*seed >> 24) as u8
            })
            .collect()
    }

    fn decode_everything(b: &[u8]) {
        if let Ok(Some((_, n))) = Request::decode(b) {
            assert!(n <= b.len());
        }
        if let Ok(Some((_, n))) = Alive2Resp::decode(b) {
            assert!(n <= b.len());
        }
        if let Ok(Some((_, n))) = Port2Resp::decode(b) {
            assert!(n <= b.len());
        }
        let _ = NamesResp::decode_complete(b);
        let _ = Request::decode_body(b);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for len in 0..64 {
            for _ in 0..200 {
                decode_everything(&garbage(&mut seed, len));
            }
        }
        // Garbage behind valid prefixes reaches the deeper fields.
        for prefix in [hex(ALIVE2_PROBE), hex(PORT2_PROBE), hex("00001111")] {
            for cut in 0..prefix.len() {
                for _ in 0..50 {
                    let mut b = prefix[..cut].to_vec();
                    b.extend(garbage(&mut seed, 24));
                    decode_everything(&b);
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn prop_arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..2200)) {
            decode_everything(&b);
        }

        #[test]
        fn prop_alive2_round_trip(
            name in "[a-zA-Z0-9_\\-.é]{1,64}",
            port: u16, hidden: bool, high: u16, low: u16,
            extra in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut req = Alive2Req::new(name, port, hidden);
            req.high = high;
            req.low = low;
            req.extra = extra;
            let req = Request::Alive2(req);
            let bytes = req.encode().unwrap();
            proptest::prop_assert_eq!(Request::decode(&bytes).unwrap(), Some((req, bytes.len())));
        }
    }
}
