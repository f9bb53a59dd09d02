//! The gateway as the hub of devices without a gateway (see [`crate::device`]): a device is a
//! local node of this gateway, registered while its control connection lasts, whose traffic is
//! held to its role as a peer gateway's nodes' is.

use super::local::LocalGuard;
use super::{lock, Inner};
use crate::device::splice::PolicyHook;
use crate::device::{Hub, HubConfig, HubHost};
use crate::fabric::credentials::Credentials;
use crate::fabric::link::BoxFuture;
use crate::policy;
use crate::wire::{Msg, NodeInfo};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::info;

/// The largest packet a device under a role without a message limit may send (OTP fragments
/// messages at 64 KiB, so only a hostile device comes near).
const MAX_PACKET_UNLIMITED: usize = 64 << 20;

/// The hub's view of its gateway.
struct HubLink(Weak<Inner>);

impl HubHost for HubLink {
    fn register(&self, name: &str, creation: u32) -> Result<Box<dyn Send + Sync>, String> {
        let inner = self.0.upgrade().ok_or("the gateway is stopping")?;
        let registered = inner.registry().register_device(name, creation);
        if registered.is_err() {
            return Err(format!("{name} is a node of this host or of another gateway already"));
        }
        info!(node = %name, "device node registered");
        inner.broadcast(Msg::NodeUp(NodeInfo { name: name.to_string(), creation }));
        Ok(Box::new(LocalGuard { inner: self.0.clone(), name: name.to_string() }))
    }

    fn lookup<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<u16>> {
        Box::pin(async move { self.0.upgrade()?.lookup(name).await })
    }

    fn policy(&self, device: &str, cert_role: Option<&str>) -> (bool, Option<PolicyHook>, usize) {
        let Some(inner) = self.0.upgrade() else {
            // Stopping: fail closed.
            let role = Arc::new(policy::Role::device());
            let hook = PolicyHook { role, shared: Default::default(), on_refuse: Box::new(|_| {}) };
            return (true, Some(hook), 0);
        };
        let role = inner.device_role(cert_role);
        let max = match role.max_message {
            0 => MAX_PACKET_UNLIMITED,
            // A fragment's or message's header comes on top of the payload.
            m => m.saturating_add(4096),
        };
        if role.is_open() {
            return (role.hidden, None, max);
        }
        let shared = lock(&inner.peer_budgets).entry(device.to_string()).or_default().clone();
        let weak = self.0.clone();
        let who = device.to_string();
        let hook = PolicyHook {
            role: role.clone(),
            shared,
            on_refuse: Box::new(move |r| {
                if let Some(inner) = weak.upgrade() {
                    inner.refuse_by_policy(&who, r);
                }
            }),
        };
        (role.hidden, Some(hook), max)
    }

    fn is_revoked(&self, device: &str, serial: &str) -> bool {
        // Fail closed: a gateway going away takes no new device.
        self.0.upgrade().is_none_or(|i| i.is_revoked(device, serial))
    }

    fn refuse(&self, who: &str, reason: &str, what: &str) {
        if let Some(inner) = self.0.upgrade() {
            inner.refuse(who, reason, what);
        }
    }
}

impl Inner {
    /// The loopback port of local node `name`; for a device, its listener is opened on the
    /// first call (an idle device that nobody dials costs no socket here).
    pub(crate) fn local_port(&self, name: &str) -> Option<u16> {
        let l = self.registry().local(name).map(|l| (l.port, l.device));
        match l? {
            (None, true) => self.device_port(name),
            (port, _) => port,
        }
    }

    /// Opens (or finds) the loopback listener through which device `name` is dialled.
    pub(super) fn device_port(&self, name: &str) -> Option<u16> {
        let port = self.hub.get()?.listen_for(name)?;
        self.registry().set_device_port(name, port);
        Some(port)
    }

    /// The role of a device whose certificate names `cert_role` (or none): that role, else
    /// `[devices] role`; unknown names fail closed to the built-in device role.
    pub(super) fn device_role(&self, cert_role: Option<&str>) -> Arc<policy::Role> {
        let live = self.live();
        let name = cert_role.unwrap_or(&self.cfg.devices.role);
        live.roles.get(name).cloned().unwrap_or_else(|| Arc::new(policy::Role::device()))
    }
}

/// The TLS server side for devices: TLS 1.3, a client certificate of the cluster CA required
/// (a device's, checked after the handshake), no resumption (every connection verifies the
/// device's chain again; a revoked device cannot come back with a ticket).
fn tls_config(creds: &Arc<Credentials>) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut tls = rustls::ServerConfig::builder_with_provider(creds.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(creds.client_verifier())
        .with_cert_resolver(creds.clone());
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
}

/// Starts the hub on `[devices] listen`: returns the address bound.
pub(super) async fn start(inner: &Arc<Inner>) -> Result<Option<std::net::SocketAddr>, super::GatewayError> {
    let Some(addr) = inner.cfg.devices.listen else { return Ok(None) };
    let Some(creds) = inner.creds.get() else {
        return Err(super::GatewayError::Fabric(format!(
            "[devices] listen = {addr} needs this gateway's certificate ({}.pem in [fabric] certs)",
            inner.cfg.name
        )));
    };
    let tls = tls_config(creds).map_err(|e| super::GatewayError::Fabric(format!("devices: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| super::GatewayError::Bind {
        what: "devices",
        addr,
        source: e,
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let cfg = HubConfig {
        idle_timeout: Duration::from_millis(inner.cfg.devices.idle_timeout_ms),
        max_devices: inner.cfg.devices.max_devices,
    };
    let hub = Hub::new(Arc::new(HubLink(Arc::downgrade(inner))), cfg);
    let _ = inner.hub.set(hub.clone());
    let serve = hub.serve(listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls)));
    lock(&inner.intake).push(tokio::spawn(serve).abort_handle());
    info!(%bound, "devices hub listening");
    Ok(Some(bound))
}
