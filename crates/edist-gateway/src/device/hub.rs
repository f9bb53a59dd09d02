//! The hub's side of devices: TLS termination, the control connection of each device, and
//! the device's distribution connections both ways (see [`super::proto`] for the frames).
//!
//! A registered device is, to the rest of the gateway, a local node listening on a loopback
//! port of its own: local nodes and relays from the fabric dial that port as they would any
//! local node's. Each connection accepted there is parked, the device is asked over its control
//! connection to open a TLS connection answering it, and the two are spliced
//! ([`super::splice`]). A connection the device dials names its target in its preface; the
//! hub resolves the target as the plug would and splices the device to it.

use super::proto::{HubMsg, Preface, Role, DEVICE_BEAT};
use super::splice::{PolicyHook, Splice};
use crate::fabric::link::BoxFuture;
use bytes::{Buf, BytesMut};
use edist_proto::codec::Reader;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a new TLS connection may take to finish its handshake and send its preface.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to a device waits for the device to answer it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the hub needs from its gateway.
pub trait HubHost: Send + Sync + 'static {
    /// Makes device node `name` a local node, announced to the fabric, until the returned
    /// guard drops; its loopback port comes from [`Hub::listen_for`] when someone dials it.
    fn register(&self, name: &str, creation: u32) -> Result<Box<dyn Send + Sync>, String>;
    /// The loopback port at which node `name` is reached (a local node's, or an impersonation
    /// listener's for a remote one), as the plug's lookup answers.
    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<u16>>;
    /// The role of a device (its certificate's `role`, else the hub's `[devices] role`):
    /// whether it is hidden, its policy (`None`: open) and its largest packet.
    fn policy(&self, device: &str, cert_role: Option<&str>) -> (bool, Option<PolicyHook>, usize);
    /// Whether a device certificate (its name or serial) is revoked.
    fn is_revoked(&self, device: &str, serial: &str) -> bool;
    /// Logs and counts a refusal.
    fn refuse(&self, who: &str, reason: &str, what: &str);
}

/// A device with a control connection up.
struct Device {
    conn: u64,
    serial: String,
    /// What its control connection shares with the hub.
    shared: Arc<Shared>,
    /// The loopback port where it is dialled, once someone did.
    port: Option<u16>,
    cancel: CancellationToken,
    /// The gateway's registration of the node.
    _registered: Box<dyn Send + Sync>,
}

/// Most connections to one device that may wait to be asked for at once.
const MAX_REQUESTS: usize = 64;

/// What a device's control connection shares with the rest of the hub: the connections to the
/// device waiting to be asked for (oldest first), and when the device was last heard from.
/// (Not a channel nor a timer per connection: an idle device should cost as little as possible;
/// a bounded channel allocates a block of slots up front, and the hub's sweep finds silent
/// devices for all of them.)
#[derive(Default)]
struct Shared {
    ids: Mutex<std::collections::VecDeque<u64>>,
    ready: tokio::sync::Notify,
    /// Milliseconds since the hub started at which the device last sent something.
    heard_ms: AtomicU64,
    /// Set by the sweep that closed the connection for its silence.
    silent: AtomicBool,
}

impl Shared {
    /// False when too many wait already.
    fn push(&self, id: u64) -> bool {
        let mut ids = lock(&self.ids);
        if ids.len() >= MAX_REQUESTS {
            return false;
        }
        ids.push_back(id);
        drop(ids);
        self.ready.notify_one();
        true
    }

    fn take(&self) -> Vec<u64> {
        lock(&self.ids).drain(..).collect()
    }
}

/// A connection to a device waiting for the device's answer.
struct Pending {
    device: String,
    sock: TcpStream,
}

/// Settings of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub idle_timeout: Duration,
    pub max_devices: usize,
}

/// The devices' hub in a gateway.
pub struct Hub {
    host: Arc<dyn HubHost>,
    cfg: HubConfig,
    devices: Mutex<HashMap<String, Device>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_conn: AtomicU64,
    /// What `Shared::heard_ms` counts from.
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// Why the hub refused a device connection: the `reason` label of the refusal metrics and
/// log ([`DeviceRefusal::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRefusal {
    /// The certificate is not a device's.
    Cert,
    /// The device's certificate is revoked.
    Revoked,
    /// No preface, a malformed one, or a frame over the limit on the control connection.
    Preface,
    /// The device used a name its certificate does not grant.
    Name,
    /// The device dialled without a control connection, or itself.
    Unknown,
    /// Over the hub's limit of devices.
    Limit,
    /// The device's distribution handshake broke the rules ([`super::proto::HandshakeWatch`]).
    Handshake,
}

impl DeviceRefusal {
    /// The label, as in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRefusal::Cert => "device_cert",
            DeviceRefusal::Revoked => "revoked",
            DeviceRefusal::Preface => "device_preface",
            DeviceRefusal::Name => "device_name",
            DeviceRefusal::Unknown => "device_unknown",
            DeviceRefusal::Limit => "device_limit",
            DeviceRefusal::Handshake => "device_handshake",
        }
    }
}

impl std::fmt::Display for DeviceRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a device connection was refused or ended.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("{reason}: {what}")]
    Policy { reason: DeviceRefusal, what: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn refused(reason: DeviceRefusal, what: impl Into<String>) -> Refused {
    Refused::Policy { reason, what: what.into() }
}

impl Hub {
    pub fn new(host: Arc<dyn HubHost>, cfg: HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            host,
            cfg,
            devices: Mutex::default(),
            pending: Mutex::default(),
            next_conn: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    /// The devices connected now.
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.devices).keys().cloned().collect();
        v.sort();
        v
    }

    /// The loopback port at which device `name` is dialled: its listener is opened on the first
    /// call and lives as long as the device's control connection. `None`: not connected.
    pub fn listen_for(self: &Arc<Self>, name: &str) -> Option<u16> {
        let mut devices = lock(&self.devices);
        let d = devices.get_mut(name)?;
        if let Some(port) = d.port {
            return Some(port);
        }
        // std, so that this stays synchronous (the plug's lookups call it).
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).ok()?;
        listener.set_nonblocking(true).ok()?;
        let port = listener.local_addr().ok()?.port();
        let listener = TcpListener::from_std(listener).ok()?;
        d.port = Some(port);
        let (shared, cancel) = (d.shared.clone(), d.cancel.clone());
        drop(devices);
        debug!(device = %name, port, "device listener opened");
        tokio::spawn(self.clone().answer_listener(listener, name.to_string(), shared, cancel));
        Some(port)
    }

    /// Closes the control connection (and so every connection) of each device whose
    /// certificate is revoked now; returns their names.
    pub fn close_revoked(&self) -> Vec<String> {
        let devices = lock(&self.devices);
        let gone: Vec<String> = devices
            .iter()
            .filter(|(n, d)| self.host.is_revoked(n, &d.serial))
            .map(|(n, d)| {
                d.cancel.cancel();
                n.clone()
            })
            .collect();
        gone
    }

    /// Accepts device connections on `listener` until the task is aborted.
    /// Also sweeps for devices silent for the idle timeout.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: tokio_rustls::TlsAcceptor) {
        let mut sweep = tokio::time::interval(sweep_period(self.cfg.idle_timeout));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = sweep.tick() => {
                    self.sweep();
                    continue;
                }
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                // Out of descriptors or similar: back off rather than spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let hub = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.connection(tcp, from, tls).await {
                    hub.ended(from, e);
                }
            });
        }
    }

    fn ended(&self, from: SocketAddr, e: Refused) {
        match e {
            Refused::Policy { reason, what } => {
                self.host.refuse(&from.ip().to_string(), reason.as_str(), &what);
                info!(%from, "device connection refused: {reason}: {what}");
            }
            Refused::Io(e) => debug!(%from, "device connection ended: {e}"),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes the control connection of every device silent for the idle timeout.
    fn sweep(&self) {
        let now = self.now_ms();
        let idle = u64::try_from(self.cfg.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        for d in lock(&self.devices).values() {
            if now.saturating_sub(d.shared.heard_ms.load(Ordering::Relaxed)) > idle {
                d.shared.silent.store(true, Ordering::Relaxed);
                d.cancel.cancel();
            }
        }
    }

    async fn connection(
        self: &Arc<Self>,
        tcp: TcpStream,
        from: SocketAddr,
        tls: tokio_rustls::TlsAcceptor,
    ) -> Result<(), Refused> {
        let _ = tcp.set_nodelay(true);
        let start = async {
            let mut tls = tls.accept(tcp).await?;
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
            let grant = cert.map(|c| crate::pki::certificate_grant(&c)).unwrap_or_default();
            let Some(device) = grant.device.clone().filter(|d| !d.is_empty()) else {
                return Err(refused(
                    DeviceRefusal::Cert,
                    "a certificate that is not a device's (edist certs issue --device)",
                ));
            };
            if self.host.is_revoked(&device, &grant.serial) {
                return Err(refused(
                    DeviceRefusal::Revoked,
                    format!("device {device}: certificate {} is revoked", grant.serial),
                ));
            }
            let mut buf = BytesMut::new();
            let body =
                read_frame(&mut tls, &mut buf, 1024).await?.ok_or_else(|| refused(DeviceRefusal::Preface, "none"))?;
            let preface = Preface::parse(&body).map_err(|e| refused(DeviceRefusal::Preface, e.to_string()))?;
            Ok((tls, buf, device, grant, preface))
        };
        let (tls, buf, device, grant, preface) = tokio::time::timeout(PREFACE_TIMEOUT, Box::pin(start))
            .await
            .map_err(|_| refused(DeviceRefusal::Preface, format!("none from {from} within {PREFACE_TIMEOUT:?}")))??;
        let refuse_here = |reason: DeviceRefusal, what: String| {
            self.host.refuse(&device, reason.as_str(), &what);
            info!(%device, %from, "device connection refused: {reason}: {what}");
            Ok(())
        };
        match preface {
            Preface::Control { creation, name } => {
                if name != device {
                    let why = format!("control connection as {name}, but the certificate grants {device}");
                    let mut tls = tls;
                    let _ = tls.write_all(&HubMsg::Refused(why.clone()).frame()).await;
                    let _ = tls.flush().await;
                    return refuse_here(DeviceRefusal::Name, why);
                }
                // A task of its own, as small as it can be (the connection's task, sized for the
                // largest of these branches, ends here): idle devices are many.
                // The TLS stream boxed out here, or it would be in the task inline as well.
                let (hub, tls, serial) = (self.clone(), Box::new(tls), grant.serial);
                tokio::spawn(async move {
                    if let Err(e) = hub.clone().control(tls, buf, device, serial, creation).await {
                        hub.ended(from, e);
                    }
                });
                Ok(())
            }
            Preface::Dial { target } => {
                let Some(cancel) = lock(&self.devices).get(&device).map(|d| d.cancel.child_token()) else {
                    return refuse_here(
                        DeviceRefusal::Unknown,
                        format!("{device} dialled {target} without a control connection"),
                    );
                };
                if target == device {
                    return refuse_here(DeviceRefusal::Unknown, format!("{device} dialled itself"));
                }
                let Some(port) = self.host.lookup(&target).await else {
                    debug!(%device, %target, "device dialled an unknown node");
                    return Ok(());
                };
                let sock = TcpStream::connect(("127.0.0.1", port)).await?;
                Box::pin(self.splice(tls, buf, sock, device, grant.role, Role::Initiator, Some(target), cancel)).await
            }
            Preface::Answer { id } => {
                let parked = lock(&self.pending).remove(&id);
                let Some(p) = parked else {
                    debug!(%device, id, "device answered a connection no longer waiting");
                    return Ok(());
                };
                if p.device != device {
                    return refuse_here(DeviceRefusal::Name, format!("{device} answered a connection to {}", p.device));
                }
                let Some(cancel) = lock(&self.devices).get(&device).map(|d| d.cancel.child_token()) else {
                    return Ok(());
                };
                Box::pin(self.splice(tls, buf, p.sock, device, grant.role, Role::Acceptor, None, cancel)).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn splice(
        &self,
        tls: Tls,
        buf: BytesMut,
        sock: TcpStream,
        device: String,
        cert_role: Option<String>,
        role: Role,
        other: Option<String>,
        cancel: CancellationToken,
    ) -> Result<(), Refused> {
        let (hide, policy, max_packet) = self.host.policy(&device, cert_role.as_deref());
        let splice = Splice { device: device.clone(), role, hide, policy, other, max_packet, cancel };
        if let Err(e) = splice.run(tls, buf, sock).await {
            match e {
                super::splice::SpliceError::Handshake(e) => {
                    self.host.refuse(&device, DeviceRefusal::Handshake.as_str(), &e.to_string());
                    info!(%device, "device connection refused: {e}");
                }
                e => info!(%device, "device connection ended: {e}"),
            }
        }
        Ok(())
    }

    /// A device's control connection: registers the node, asks the device for connections to
    /// it, answers its heartbeats; the node is gone when it ends. Its future is kept small:
    /// no split halves, no timer (the hub's sweep closes silent devices), a few bytes of buffer.
    async fn control(
        self: Arc<Self>,
        mut tls: Box<Tls>,
        first: BytesMut,
        device: String,
        serial: String,
        creation: u32,
    ) -> Result<(), Refused> {
        // What the device sent after its preface and is not yet a whole frame.
        let mut pend = [0u8; CONTROL_BUF];
        let mut plen = first.len();
        if plen > CONTROL_BUF - 18 {
            return Err(refused(DeviceRefusal::Preface, format!("{plen} bytes before the hub's welcome")));
        }
        if let Some(p) = pend.get_mut(..plen) {
            p.copy_from_slice(&first);
        }
        drop(first);
        // A device that connects again replaces its old connection (gone quiet behind a NAT,
        // say): the old one closes and its node goes down first.
        let old = lock(&self.devices).remove(&device);
        if let Some(old) = old {
            info!(%device, "device connected again: its previous connection closes");
            old.cancel.cancel();
            drop(old);
        }
        if lock(&self.devices).len() >= self.cfg.max_devices {
            let why = format!("{} devices connected already ([devices] max_devices)", self.cfg.max_devices);
            let _ = tls.write_all(&HubMsg::Refused(why.clone()).frame()).await;
            let _ = tls.flush().await;
            return Err(refused(DeviceRefusal::Limit, why));
        }
        let registered = match self.host.register(&device, creation) {
            Ok(g) => g,
            Err(why) => {
                let _ = tls.write_all(&HubMsg::Refused(why.clone()).frame()).await;
                let _ = tls.flush().await;
                return Err(refused(DeviceRefusal::Name, why));
            }
        };
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared::default());
        shared.heard_ms.store(self.now_ms(), Ordering::Relaxed);
        let entry = Device {
            conn,
            serial,
            shared: shared.clone(),
            port: None,
            cancel: cancel.clone(),
            _registered: registered,
        };
        lock(&self.devices).insert(device.clone(), entry);
        info!(%device, "device connected");
        let idle_ms = u32::try_from(self.cfg.idle_timeout.as_millis()).unwrap_or(u32::MAX);
        let ended: Result<&str, Refused> = async {
            tls.write_all(&HubMsg::Welcome { idle_timeout_ms: idle_ms }.frame()).await?;
            tls.flush().await?;
            loop {
                // Whole frames first (the preface may have come with some).
                loop {
                    match next_frame(&mut pend, &mut plen)? {
                        None => break,
                        Some(true) => {
                            tls.write_all(&HubMsg::Beat.frame()).await?;
                            tls.flush().await?;
                        }
                        Some(false) => return Ok("sent something other than a heartbeat"),
                    }
                }
                tokio::select! {
                    _ = shared.ready.notified() => {
                        for id in shared.take() {
                            tls.write_all(&HubMsg::Incoming { id }.frame()).await?;
                        }
                        tls.flush().await?;
                    }
                    n = tls.read(pend.get_mut(plen..).unwrap_or_default()) => {
                        match n? {
                            0 => return Ok("closed"),
                            n => plen += n,
                        }
                        shared.heard_ms.store(self.now_ms(), Ordering::Relaxed);
                    }
                    _ = cancel.cancelled() => {
                        return Ok(if shared.silent.load(Ordering::Relaxed) {
                            "silent for the idle timeout"
                        } else {
                            "replaced or revoked"
                        });
                    }
                }
            }
        }
        .await;
        let why = match ended {
            Ok(why) => why.to_string(),
            Err(e) => e.to_string(),
        };
        cancel.cancel();
        let mine = {
            let mut devices = lock(&self.devices);
            match devices.get(&device) {
                Some(d) if d.conn == conn => devices.remove(&device),
                _ => None,
            }
        };
        drop(mine);
        info!(%device, "device disconnected: {why}");
        Ok(())
    }

    /// Accepts connections to a device on its loopback port, and asks the device for each.
    async fn answer_listener(
        self: Arc<Self>,
        listener: TcpListener,
        device: String,
        shared: Arc<Shared>,
        cancel: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = cancel.cancelled() => return,
            };
            let Ok((sock, peer)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if !peer.ip().is_loopback() {
                continue;
            }
            let id: u64 = rand::random();
            lock(&self.pending).insert(id, Pending { device: device.clone(), sock });
            if !shared.push(id) {
                warn!(%device, "device has too many connections waiting for its answer: one dropped");
                lock(&self.pending).remove(&id);
                continue;
            }
            let hub = Arc::downgrade(&self);
            tokio::spawn(async move {
                tokio::time::sleep(ANSWER_TIMEOUT).await;
                // Unanswered: the dialler sees the connection close (pang).
                if let Some(hub) = hub.upgrade() {
                    if lock(&hub.pending).remove(&id).is_some() {
                        debug!(id, "device did not answer a connection in time");
                    }
                }
            });
        }
    }
}

/// What a control connection buffers of the device's frames (a heartbeat is 3 bytes, and no
/// other frame comes from a device on it).
const CONTROL_BUF: usize = 64;

/// The longest frame body a device may send on its control connection.
const CONTROL_FRAME: usize = 16;

/// Takes the next whole frame off `pend[..plen]`: `Some(true)` a heartbeat, `Some(false)`
/// anything else, `None` none whole yet.
fn next_frame(pend: &mut [u8; CONTROL_BUF], plen: &mut usize) -> Result<Option<bool>, Refused> {
    let mut r = Reader::new(pend.get(..*plen).unwrap_or_default());
    let Ok(len) = r.u16().map(usize::from) else { return Ok(None) };
    if len > CONTROL_FRAME {
        return Err(refused(DeviceRefusal::Preface, format!("a frame of {len} bytes")));
    }
    let Ok(body) = r.bytes(len) else { return Ok(None) };
    let beat = body == [DEVICE_BEAT];
    pend.copy_within(2 + len..*plen, 0);
    *plen -= 2 + len;
    Ok(Some(beat))
}

/// How often the hub looks for silent devices: an eighth of the idle timeout, within
/// 50 ms..1 s (a device is found silent within that much after its timeout).
fn sweep_period(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Reads one u16-framed frame body of at most `max` bytes; `None` at end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<BytesMut>, Refused> {
    loop {
        if let Some(&len) = buf.first_chunk::<2>() {
            let len = usize::from(u16::from_be_bytes(len));
            if len > max {
                return Err(refused(DeviceRefusal::Preface, format!("a frame of {len} bytes")));
            }
            if buf.len() >= 2 + len {
                buf.advance(2);
                return Ok(Some(buf.split_to(len)));
            }
        }
        buf.reserve(256);
        if r.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_labels_are_the_metrics_labels() {
        use DeviceRefusal::*;
        let labels: Vec<&str> =
            [Cert, Revoked, Preface, Name, Unknown, Limit, Handshake].map(DeviceRefusal::as_str).into();
        assert_eq!(
            labels,
            [
                "device_cert",
                "revoked",
                "device_preface",
                "device_name",
                "device_unknown",
                "device_limit",
                "device_handshake"
            ]
        );
        assert_eq!(refused(Preface, "none").to_string(), "device_preface: none");
    }

    #[test]
    fn control_frames_are_taken_whole_and_bounded() {
        let mut pend = [0u8; CONTROL_BUF];
        // A heartbeat and half of the next one.
        pend[..5].copy_from_slice(&[0, 1, DEVICE_BEAT, 0, 1]);
        let mut plen = 5;
        assert_eq!(next_frame(&mut pend, &mut plen).unwrap(), Some(true));
        assert_eq!(plen, 2);
        assert_eq!(next_frame(&mut pend, &mut plen).unwrap(), None);
        pend[2] = DEVICE_BEAT;
        plen = 3;
        assert_eq!(next_frame(&mut pend, &mut plen).unwrap(), Some(true));
        assert_eq!(plen, 0);
        // Anything else is reported as such; a long frame is refused before it is whole.
        pend[..4].copy_from_slice(&[0, 2, 9, 9]);
        plen = 4;
        assert_eq!(next_frame(&mut pend, &mut plen).unwrap(), Some(false));
        pend[..2].copy_from_slice(&[0, 17]);
        plen = 2;
        assert!(next_frame(&mut pend, &mut plen).is_err());
    }

    #[test]
    fn the_sweep_runs_often_enough_and_not_too_often() {
        assert_eq!(sweep_period(Duration::from_secs(15)), Duration::from_secs(1));
        assert_eq!(sweep_period(Duration::from_millis(1600)), Duration::from_millis(200));
        assert_eq!(sweep_period(Duration::from_millis(100)), Duration::from_millis(50));
    }
}
