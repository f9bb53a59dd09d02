//! The membership socket: moves [`Membership`]'s datagrams through a UDP socket, sealed and
//! opened by [`super::envelope`], and runs its timers.

use super::envelope::{Opener, Sealer, MAX_DATAGRAM};
use super::membership::{MemberId, Membership, Output};
use crate::pki::Grant;
use crate::wire::NodeInfo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

/// What the gateway tells membership.
#[derive(Debug)]
pub enum Command {
    /// Our local nodes are now these.
    Nodes(Vec<NodeInfo>),
    /// Ask the gateway at this membership address to let us in.
    Announce(SocketAddr),
    /// Whose node is `name`? Ask the `likely` owners first (see [`Membership::lookup`]); the
    /// caller's question began at `asked`. Sent again while waiting, to ask again whoever has
    /// not answered.
    Lookup { name: String, likely: Vec<String>, asked: Instant },
}

/// What membership tells the gateway.
#[derive(Debug)]
pub enum Event {
    /// A gateway is a member (again).
    Up(MemberId),
    /// A gateway is gone.
    Down(MemberId),
    /// A gateway's complete node list, signed by it; `grant` is its certificate's.
    Nodes { gateway: String, nodes: Vec<NodeInfo>, grant: Arc<Grant> },
    /// A gateway says `node` is its own (answering a lookup), signed by it; `grant` is its
    /// certificate's.
    Node { gateway: String, node: NodeInfo, grant: Arc<Grant> },
    /// Every member says `name` is not its node, answering a question asked at `since`.
    Unknown { name: String, since: Instant },
    /// A datagram was refused.
    Refused { from: SocketAddr, why: String },
}

/// Bytes through the membership socket.
#[derive(Debug, Default)]
pub struct Traffic {
    /// UDP payload bytes sent.
    pub tx: std::sync::atomic::AtomicU64,
    /// UDP payload bytes received.
    pub rx: std::sync::atomic::AtomicU64,
    /// The members and their states, as of the last second (for `edist status`).
    pub members: std::sync::Mutex<Vec<(MemberId, super::membership::MemberState)>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// Runs membership on `sock` until `commands` closes.
pub async fn run(
    sock: UdpSocket,
    mut m: Membership,
    sealer: Sealer,
    mut opener: Opener,
    mut commands: mpsc::UnboundedReceiver<Command>,
    traffic: Arc<Traffic>,
    events: impl Fn(Event) + Send,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (timer_tx, mut timers) = mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    // The grant of the last verified sender, for the node lists its datagram completes.
    let mut last_grant: Option<Arc<Grant>> = None;
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                traffic.rx.fetch_add(n as u64, Relaxed);
                let Some(dg) = buf.get(..n) else { continue };
                match opener.open(dg, now_ms()) {
                    Ok(o) => {
                        if let Err(e) = m.handle_datagram(&o.sender, o.payload, Instant::now()) {
                            events(Event::Refused { from, why: format!("{}: {e}", o.sender) });
                        }
                        last_grant = Some(o.grant.clone());
                    }
                    Err(e) => events(Event::Refused { from, why: e.to_string() }),
                }
            }
            c = commands.recv() => match c {
                Some(Command::Nodes(nodes)) => m.set_local_nodes(nodes),
                Some(Command::Announce(addr)) => m.announce(addr),
                Some(Command::Lookup { name, likely, asked }) => m.lookup(&name, &likely, asked, Instant::now()),
                None => return,
            },
            Some(t) = timers.recv() => m.handle_timer(t),
            _ = tick.tick() => {
                m.tick(Instant::now());
                *traffic.members.lock().unwrap_or_else(|e| e.into_inner()) = m.states();
            }
        }
        while let Some(out) = m.poll() {
            match out {
                Output::Send { to, payload } => match sealer.seal(&payload, now_ms()) {
                    Ok(dg) => match sock.send_to(&dg, to).await {
                        Ok(n) => _ = traffic.tx.fetch_add(n as u64, Relaxed),
                        Err(e) => debug!(%to, "membership datagram not sent: {e}"),
                    },
                    Err(e) => debug!(%to, "membership datagram not sealed: {e}"),
                },
                Output::Timer { after, timer } => {
                    let tx = timer_tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(timer);
                    });
                }
                Output::Up(id) => events(Event::Up(id)),
                Output::Down(id) => events(Event::Down(id)),
                Output::Nodes { gateway, nodes } => {
                    let grant = last_grant.clone().unwrap_or_default();
                    events(Event::Nodes { gateway, nodes, grant })
                }
                Output::Node { gateway, node } => {
                    let grant = last_grant.clone().unwrap_or_default();
                    events(Event::Node { gateway, node, grant })
                }
                Output::Unknown { name, since } => events(Event::Unknown { name, since }),
            }
        }
    }
}
