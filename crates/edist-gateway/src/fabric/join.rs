//! Starting membership (`[fabric] membership`): its socket next to the fabric's port, this
//! gateway's identity as a member (with the address others reach it at), the signer and the
//! opener of datagrams, and the announcements to seeds until another member is known.
//! [`Joining::bind`] does what can fail; [`Joining::run`] starts the tasks.

use super::discovery::Discovery;
use super::envelope::{Opener, Sealer};
use super::gossip::{self, Command, Event};
use super::identity::{crypto_provider, TlsIdentity};
use super::membership::{MemberId, Membership};
use super::tls::membership_verifier;
use rustls::server::danger::ClientCertVerifier;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::info;

/// How often seeds are looked up again while no other member is known.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);

/// The cluster size SWIM's timing is set for (see [`Membership::new`]).
const EXPECTED_GATEWAYS: u32 = 32;

/// Why membership did not start.
#[derive(Debug)]
pub enum JoinError {
    /// Its socket could not be bound.
    Bind { addr: SocketAddr, source: std::io::Error },
    /// No address to advertise, or no signer or verifier from the identity.
    Failed(String),
}

/// Membership, bound and not running yet.
pub struct Joining {
    sock: tokio::net::UdpSocket,
    me: MemberId,
    sealer: Sealer,
    opener: Opener,
    sources: Vec<Box<dyn Discovery>>,
}

/// The membership port of a gateway whose fabric listens on `fabric`.
pub fn gossip_addr(fabric: SocketAddr) -> SocketAddr {
    SocketAddr::new(fabric.ip(), fabric.port().wrapping_add(1))
}

impl Joining {
    /// Binds the membership socket of gateway `name`, whose fabric listens on `fabric`, and
    /// makes it a member: reached at `advertise`, else at the fabric's address, else at the
    /// local address of the route to the first of `sources` that resolves (seeds, peers),
    /// which are also those it announces itself to. Datagrams are signed with `id`'s key and
    /// checked with `verifier` (the fabric's, so that a reloaded CA applies), else against
    /// `id`'s CA.
    pub async fn bind(
        name: &str,
        fabric: SocketAddr,
        advertise: Option<IpAddr>,
        sources: Vec<Box<dyn Discovery>>,
        id: &TlsIdentity,
        verifier: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<Joining, JoinError> {
        let bind = gossip_addr(fabric);
        let sock = tokio::net::UdpSocket::bind(bind).await.map_err(|e| JoinError::Bind { addr: bind, source: e })?;
        let ip = match (advertise, fabric.ip()) {
            (Some(ip), _) => ip,
            (None, ip) if !ip.is_unspecified() => ip,
            (None, _) => route_to_first_seed(&sources).await.ok_or_else(|| {
                JoinError::Failed("set [fabric] advertise (no address to reach this gateway at)".into())
            })?,
        };
        let bump = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64);
        let me = MemberId {
            name: name.to_string(),
            gossip: gossip_addr(SocketAddr::new(ip, fabric.port())),
            fabric: SocketAddr::new(ip, fabric.port()),
            bump: bump.unwrap_or_default(),
        };
        let provider = crypto_provider();
        let failed = |e: &dyn std::fmt::Display| JoinError::Failed(e.to_string());
        let sealer = Sealer::new(&provider, &id.chain, &id.key).map_err(|e| failed(&e))?;
        let verifier = match verifier {
            Some(v) => v,
            None => membership_verifier(id).map_err(|e| failed(&e))?,
        };
        let opener = Opener::new(verifier, provider);
        Ok(Joining { sock, me, sealer, opener, sources })
    }

    /// The signer of this gateway's datagrams (a reload replaces its key).
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Starts membership: it takes `commands` (`tx` is their sender, for the announcements),
    /// counts its bytes and members in `traffic`, and tells `on_event` what it learns. While
    /// `lonely` says no other member is known, it announces itself to the sources every
    /// [`ANNOUNCE_INTERVAL`].
    pub fn run(
        self,
        (tx, commands): (mpsc::UnboundedSender<Command>, mpsc::UnboundedReceiver<Command>),
        traffic: Arc<gossip::Traffic>,
        on_event: impl Fn(Event) + Send + 'static,
        lonely: impl Fn() -> bool + Send + 'static,
    ) -> Vec<AbortHandle> {
        let Joining { sock, me, sealer, opener, sources } = self;
        info!(member = %me.name, gossip = %me.gossip, "membership started");
        let membership = Membership::new(me, EXPECTED_GATEWAYS);
        vec![
            tokio::spawn(gossip::run(sock, membership, sealer, opener, commands, traffic, on_event)).abort_handle(),
            tokio::spawn(announce_loop(tx, sources, lonely)).abort_handle(),
        ]
    }
}

/// The local address of the route to the first seed that resolves.
async fn route_to_first_seed(sources: &[Box<dyn Discovery>]) -> Option<IpAddr> {
    for source in sources {
        for addr in source.discover().await {
            let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            if sock.connect(addr).is_ok() {
                return sock.local_addr().ok().map(|a| a.ip());
            }
        }
    }
    None
}

/// Asks the seeds to let us join while membership knows no other gateway (SWIM's own periodic
/// announcements take over from there).
async fn announce_loop(
    tx: mpsc::UnboundedSender<Command>,
    sources: Vec<Box<dyn Discovery>>,
    lonely: impl Fn() -> bool + Send + 'static,
) {
    loop {
        if lonely() {
            for source in &sources {
                for addr in source.discover().await {
                    let _ = tx.send(Command::Announce(gossip_addr(addr)));
                }
            }
        }
        tokio::time::sleep(ANNOUNCE_INTERVAL).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_membership_port_is_the_fabrics_next() {
        let a: SocketAddr = "10.0.0.1:4370".parse().unwrap();
        assert_eq!(gossip_addr(a), "10.0.0.1:4371".parse().unwrap());
        assert_eq!(gossip_addr("[::1]:65535".parse().unwrap()).port(), 0);
    }
}
