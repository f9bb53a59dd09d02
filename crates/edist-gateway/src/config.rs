//! The gateway's TOML configuration. Every field has a default, so an empty file (or none)
//! serves a single host: local nodes find each other through the gateway, no fabric.
//!
//! ```toml
//! name = "gw-a"                    # this gateway's identity; must match its certificate
//! host = "hosta"                   # host part for registrations of an alive part alone (the
//!                                  # plug sends full names; default: short hostname)
//! cookie = "secret"                # cookie of the local BEAM nodes (default: $EDIST_COOKIE,
//!                                  # then ~/.erlang.cookie); it never leaves this host; only
//!                                  # needed with a fabric
//! threads = 1                      # runtime worker threads (default: half the cores, >= 1)
//!
//! [local]
//! control = "127.0.0.1:4370"       # where the edist_epmd plug registers and resolves
//! max_listeners = 1024             # loopback listeners impersonating remote nodes
//! socket_buffer = 65536            # receive buffer of relayed loopback connections (bytes)
//! net_ticktime = 60                # the local nodes' net_ticktime (s): ticks are answered here
//! lookup_wait_ms = 500             # an unknown name is asked of the fabric this long at most
//!
//! [fabric]
//! listen = "0.0.0.0:4371"          # QUIC (UDP) for other gateways
//! certs = "./edist-certs"          # ca.pem, <name>.pem, <name>.key from `edist certs`
//! keep_alive_ms = 500              # QUIC keep-alive
//! idle_timeout_ms = 1500           # a silent peer gateway is dead after this
//! lanes = 8                        # bulk lanes (QUIC streams) per relayed connection and direction
//! relay_buffer = 33554432         # bytes a relayed connection may hold towards the fabric
//! gateway_buffer = 268435456       # the same for all relays together: the memory bound
//! compress_threshold = 1024        # peers with `compress = true` get lz4 above this size
//! congestion = "bbr"               # QUIC congestion control: bbr, bbr-uncapped, cubic or newreno
//! max_datagram = 1452              # largest UDP payload MTU discovery tries (1200..=6550; default
//!                                  # 1452, up to 6550 on a host with jumbo frames)
//! stream_window = 1250000          # bytes a peer may send per QUIC stream ahead of the relay
//! transport = "quic"               # or "tcp": TLS over TCP where UDP is blocked
//! revoked = []                     # certificate serials (hex) or identities refused
//! seeds = ["gateways.internal:4371"] # DNS names (all their addresses) or ip:port to dial
//! membership = false               # SWIM between gateways, lazy links (UDP port + 1)
//! relay = false                    # relay for peers that dial in and cannot be dialled
//! link_idle_ms = 30000             # with membership: idle links close after this
//! advertise = "10.0.0.1"           # address others reach us at (default: listen's, or the route to a seed)
//! drain_ms = 5000                  # on SIGTERM: how long relayed connections may drain
//!
//! [[peers]]                        # other gateways by name (see also fabric.seeds)
//! name = "gw-b"
//! addr = "10.0.0.2:4371"
//! compress = false                 # lz4 for packets towards this peer (slow links)
//! role = "trusted"                 # what its nodes may do here (default: its certificate's role,
//!                                  # else policy.default_role)
//! nodes = ["b*@*"]                 # node names it may announce (default: its certificate's)
//! via = "gw-r"                     # cannot be dialled: reach it through gw-r (which relays)
//! relay = false                    # it relays for us: accept connections it forwards
//!
//! [[peers]]                        # a peer that only dials in (behind NAT): no addr
//! name = "gw-board7"
//! role = "device"
//!
//! [policy]
//! default_role = "trusted"         # role of peers without one: trusted, device, or [roles.*]
//!
//! [roles.device]                   # built-in; a table overrides single fields
//! spawn = []                       # "module:function/arity" globs a peer may spawn/rpc
//! deny_names = ["rex", "init"]     # registered names it may not send to or monitor
//! send_to_pids = true              # plain sends to pids
//! alias_send = true                # sends to aliases (gen_server/erpc replies)
//! links = true                     # links and their exit signals
//! monitors = true                  # monitors and DOWN signals
//! exit_signals = false             # exit/2 (remote kill)
//! group_leader = false             # group-leader changes
//! max_message = 8388608            # bytes per message (0: no limit)
//! max_depth = 64                   # term nesting (0: no limit)
//! atom_budget = 10000              # distinct atoms per peer gateway, ever (0: no limit)
//! messages_per_sec = 10000         # above: delayed, not dropped (0: no limit)
//! bytes_per_sec = 16777216         # likewise
//!
//! [metrics]
//! listen = "127.0.0.1:9108"        # Prometheus endpoint, GET /metrics (default: none, off)
//! ```

use crate::fabric::options::{DEFAULT_IDLE_TIMEOUT, DEFAULT_KEEP_ALIVE};
use crate::local::control;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

// Defaults that other files need too are written once, here or in the component that owns
// them: the control address is the local control port's (`control::DEFAULT_ADDR`), the link
// timings the fabric's (`fabric::options`). docs/config.md shows the same values
// (tests/config_doc.rs checks it).

/// Default bulk lanes per relayed connection and direction (`[fabric] lanes`).
pub const DEFAULT_LANES: u64 = 8;
/// Default bytes one relayed connection may hold towards the fabric (`[fabric] relay_buffer`).
pub const DEFAULT_RELAY_BUFFER: usize = 32 << 20;
/// Default bytes all relayed connections may hold together (`[fabric] gateway_buffer`).
pub const DEFAULT_GATEWAY_BUFFER: usize = 256 << 20;
/// Default `net_ticktime` of the local nodes in seconds, OTP's (`[local] net_ticktime`).
pub const DEFAULT_NET_TICKTIME: u64 = 60;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This gateway's identity (default: `gw-<host>`); must match its certificate's name.
    pub name: String,
    /// Host part of local nodes that register an alive part alone (default: the short host
    /// name). The plug registers full names, which keep their own host part.
    pub host: String,
    /// Cookie of the local BEAM nodes (default: `$EDIST_COOKIE`, then `~/.erlang.cookie`):
    /// their handshakes with nodes on other hosts are checked against it. Not needed without
    /// a fabric, where nothing is relayed.
    pub cookie: Option<String>,
    /// Worker threads of the gateway's runtime (default: half the cores, at least one; the
    /// gateway shares its host with BEAMs whose schedulers use every core).
    pub threads: Option<usize>,
    /// The local side.
    pub local: LocalConfig,
    /// The side towards other gateways.
    pub fabric: FabricConfig,
    /// Other gateways.
    pub peers: Vec<PeerConfig>,
    /// Ingress policy defaults.
    pub policy: PolicyConfig,
    /// Roles by name: tables over the built-in `trusted` and `device` roles, or new ones
    /// (starting from `trusted`). Fields: see [`crate::policy::Role`].
    pub roles: std::collections::BTreeMap<String, toml::Table>,
    /// The Prometheus endpoint (off by default).
    pub metrics: crate::metrics::MetricsConfig,
    /// Devices that connect with Erlang code only (`edist_device_dist`): this gateway is their
    /// hub (off by default; see docs/devices.md).
    pub devices: DevicesConfig,
}

/// The hub side of devices without a gateway (docs/devices.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// TCP address where device BEAMs connect over TLS 1.3 with their device certificates
    /// (default none: no devices).
    pub listen: Option<SocketAddr>,
    /// The role of devices whose certificate names none (default `device`).
    pub role: String,
    /// A device whose control connection has been silent this long is gone (default 15000
    /// ms); the device sends a heartbeat every third of it. A closed connection is noticed at
    /// once.
    pub idle_timeout_ms: u64,
    /// Devices connected at once, at most (default 100000).
    pub max_devices: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig { listen: None, role: "device".into(), idle_timeout_ms: 15_000, max_devices: 100_000 }
    }
}

/// Ingress policy defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Role of peer gateways that have none configured (default `trusted`).
    pub default_role: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { default_role: "trusted".into() }
    }
}

/// The local side: where BEAM nodes register and which remote nodes get impersonated.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Control address for the `edist_epmd` plug (default `127.0.0.1:4370`). Loopback only.
    pub control: SocketAddr,
    /// Most loopback listeners impersonating remote nodes at once (default 1024).
    pub max_listeners: usize,
    /// Kernel receive buffer (bytes) of relayed loopback connections (default 64 KiB). Small,
    /// because what the kernel holds is read in order: a ping waits behind all of it. The
    /// gateway's own buffers (`fabric.relay_buffer`) are where large messages wait, in lanes.
    pub socket_buffer: usize,
    /// The local nodes' `net_ticktime` in seconds (default 60, OTP's). Ticks never cross the
    /// fabric: the gateway ticks towards its nodes every second (or quarter of this, if less)
    /// when it has nothing else to send, and closes a relayed connection whose node has sent
    /// nothing for this long (a hung node), which the far node sees as nodedown. Set it to the
    /// nodes' value; nodes with a ticktime over four times this would be closed when idle.
    pub net_ticktime: u64,
    /// How long a lookup of a node name this gateway does not know may wait for the fabric
    /// before the answer is "no such node" (default 500 ms; 0: answer at once). With membership
    /// the members are asked, and the answer comes as soon as the owner says yes or every
    /// member no; with static peers only a peer whose node list has not come since the gateway
    /// started is waited for. At most 900: the plug gives up on a lookup after 1000 ms, and
    /// `net_kernel` itself waits for it (see docs/config.md).
    pub lookup_wait_ms: u64,
}

/// The fabric side.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FabricConfig {
    /// UDP address for QUIC (default `0.0.0.0:4371`).
    pub listen: SocketAddr,
    /// Directory with `ca.pem`, `<name>.pem`, `<name>.key` (default `./edist-certs`).
    pub certs: PathBuf,
    /// QUIC keep-alive interval in ms (default 500).
    pub keep_alive_ms: u64,
    /// A silent peer gateway counts as dead after this many ms (default 1500: within 2 s of a
    /// gateway's death its nodes are down everywhere).
    pub idle_timeout_ms: u64,
    /// Bulk lanes (QUIC streams) per relayed connection and direction besides the ordered one:
    /// a large message takes the least-loaded one (default 8; 0: everything in OTP's order).
    pub lanes: u64,
    /// Bytes one relayed connection may hold on their way to a peer gateway, all its lanes
    /// together (default 32 MiB). The relay keeps reading from its node until this is used up
    /// (so a small message overtakes queued large ones), then stops: backpressure.
    pub relay_buffer: usize,
    /// The same bound for all relayed connections of this gateway together (default 256 MiB).
    pub gateway_buffer: usize,
    /// Packets larger than this many bytes are lz4-compressed towards peers with
    /// `compress = true` (default 1024).
    pub compress_threshold: usize,
    /// The transport between gateways: `quic` (default) or `tcp` (TLS 1.3 over TCP on the same
    /// port number, for networks that block UDP; every gateway of a cluster uses the same).
    pub transport: crate::fabric::link::TransportKind,
    /// QUIC congestion control: `bbr` (default; short queues at the bottleneck, tolerates
    /// random loss), `bbr-uncapped`, `cubic` or `newreno`.
    pub congestion: crate::fabric::options::Congestion,
    /// Largest UDP payload (bytes) the links' MTU discovery looks for, and that peers may send:
    /// 1200 to 6550 (default: 1452, Ethernet's, or up to 6550 when an interface of this host
    /// has jumbo frames).
    pub max_datagram: Option<u16>,
    /// QUIC's per-stream receive window (bytes): what a peer gateway may send on one stream
    /// ahead of what this gateway relayed, 65536 to 67108864 (default 1250000, quinn's).
    pub stream_window: u32,
    /// Certificates refused even though the CA signed them: serial numbers (hex, as `edist
    /// certs issue` prints them) or identities.
    pub revoked: Vec<String>,
    /// Where to look for other gateways besides `[[peers]]`: `host:port` names (every address
    /// they resolve to is dialled; looked up again every few seconds) or `ip:port` literals.
    /// Whoever answers with a certificate of the cluster CA becomes a peer under its
    /// certificate's identity (default none).
    pub seeds: Vec<String>,
    /// Run SWIM membership between gateways (UDP on the fabric port + 1, every datagram signed
    /// with the gateway's certificate): gateways found through `seeds` and `[[peers]]` tell each
    /// other about the rest, the node registry spreads without a link to every gateway, and
    /// links open when traffic needs them and close after `link_idle_ms` (default false: a
    /// link to every peer, held open).
    pub membership: bool,
    /// With `membership`, a link that has carried no relayed connection for this many ms
    /// closes (default 30000).
    pub link_idle_ms: u64,
    /// Relay for the peers that dial in and cannot be dialled (`[[peers]]` without `addr`):
    /// announce their nodes to the other peers and forward those peers' connections to them
    /// (default false).
    pub relay: bool,
    /// The address other gateways reach this one at (default: `listen`'s address if it names
    /// one, else the address that routes to the first seed).
    pub advertise: Option<std::net::IpAddr>,
    /// On SIGTERM or SIGINT, how long relayed connections may take to send what is queued
    /// before the links close (default 5000 ms; keep it below the service manager's stop
    /// timeout).
    pub drain_ms: u64,
}

/// Another gateway: one this gateway dials (with `addr`), or one that only dials in (without),
/// listed for its node names or role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its identity (the name in its certificate).
    pub name: String,
    /// Its fabric address; without one this gateway does not dial it and waits for its call
    /// (a device behind NAT).
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// Compress (lz4) what we send it, for slow links (default false).
    #[serde(default)]
    pub compress: bool,
    /// What its nodes may do to ours (a role name; default: its certificate's role, else
    /// `policy.default_role`).
    #[serde(default)]
    pub role: Option<String>,
    /// Node-name patterns (`*` globs) it may announce (default: its certificate's).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// It cannot be dialled (behind NAT, say): reach its nodes through this gateway, which
    /// it keeps a link to and which relays for it (`[fabric] relay`).
    #[serde(default)]
    pub via: Option<String>,
    /// It relays for this gateway: accept the connections it forwards from other gateways'
    /// nodes (this gateway cannot be dialled and keeps its link to it).
    #[serde(default)]
    pub relay: bool,
}

impl PeerConfig {
    /// A peer dialled at `addr`, everything else by default.
    pub fn new(name: &str, addr: SocketAddr) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            addr: Some(addr),
            compress: false,
            role: None,
            nodes: None,
            via: None,
            relay: false,
        }
    }
}

/// The short host name, as `erl -sname` uses it.
pub fn short_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().split('.').next().unwrap_or_default().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Default for Config {
    fn default() -> Self {
        let host = short_hostname();
        Config {
            name: format!("gw-{host}"),
            host,
            cookie: None,
            threads: None,
            local: LocalConfig::default(),
            fabric: FabricConfig::default(),
            peers: Vec::new(),
            policy: PolicyConfig::default(),
            roles: Default::default(),
            metrics: Default::default(),
            devices: Default::default(),
        }
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            control: control::DEFAULT_ADDR.parse().expect("control::DEFAULT_ADDR is an address"),
            max_listeners: 1024,
            socket_buffer: 64 << 10,
            net_ticktime: DEFAULT_NET_TICKTIME,
            lookup_wait_ms: 500,
        }
    }
}

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4371)),
            certs: PathBuf::from("./edist-certs"),
            keep_alive_ms: DEFAULT_KEEP_ALIVE.as_millis() as u64,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
            lanes: DEFAULT_LANES,
            relay_buffer: DEFAULT_RELAY_BUFFER,
            gateway_buffer: DEFAULT_GATEWAY_BUFFER,
            compress_threshold: 1024,
            congestion: Default::default(),
            max_datagram: None,
            stream_window: crate::fabric::options::DEFAULT_STREAM_WINDOW,
            transport: Default::default(),
            revoked: Vec::new(),
            seeds: Vec::new(),
            membership: false,
            link_idle_ms: 30_000,
            advertise: None,
            relay: false,
            drain_ms: 5000,
        }
    }
}

/// Longest `[local] lookup_wait_ms`: the plug's own lookup timeout (1000 ms, `LOOKUP_TIMEOUT`
/// in edist_epmd.erl) less room for its connection and the answer.
pub const MAX_LOOKUP_WAIT_MS: u64 = 900;

/// Errors reading a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    // The cause is part of the message, not `source()`, so that both `{}` and anyhow's `{:#}`
    // print it once.
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: PathBuf, error: Box<toml::de::Error> },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), error: Box::new(e) })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.to_path_buf(), error: e })?;
        Self::from_toml(&text, path)
    }

    /// Worker threads for the gateway's runtime: `threads`, else half the cores (at least one).
    /// On two cores shared by two gateways and their BEAMs, one worker moved 1 MB messages
    /// ~40% faster than two (bench/README.md): fewer hand-offs between threads that compete
    /// with the BEAM's schedulers.
    pub fn worker_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2).max(1))
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.local.control.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "local.control {} must be a loopback address",
                self.local.control
            )));
        }
        if self.name.is_empty() || self.host.is_empty() || self.host.contains('@') {
            return Err(ConfigError::Invalid("name and host must be non-empty (and host without '@')".into()));
        }
        if self.peers.iter().any(|p| p.name == self.name) {
            return Err(ConfigError::Invalid(format!("peer {} has this gateway's own name", self.name)));
        }
        self.validate_numbers()?;
        let roles = self.roles()?;
        let named = [&self.policy.default_role, &self.devices.role]
            .into_iter()
            .chain(self.peers.iter().filter_map(|p| p.role.as_ref()));
        for r in named {
            if !roles.contains_key(r) {
                let known: Vec<&str> = roles.keys().map(String::as_str).collect();
                return Err(ConfigError::Invalid(format!("unknown role {r:?} (known: {})", known.join(", "))));
            }
        }
        Ok(())
    }

    /// Numbers that parse but would leave the gateway unable to do its job.
    fn validate_numbers(&self) -> Result<(), ConfigError> {
        let (l, f) = (&self.local, &self.fabric);
        let at_least = |key: &str, value: u64, min: u64, why: &str| {
            if value < min {
                return Err(ConfigError::Invalid(format!("{key} = {value}: must be at least {min} ({why})")));
            }
            Ok(())
        };
        let size = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        at_least(
            "local.max_listeners",
            size(l.max_listeners),
            1,
            "with none, no local node could reach a node on another host",
        )?;
        at_least("local.socket_buffer", size(l.socket_buffer), 1, "the receive buffer of relayed connections")?;
        at_least("local.net_ticktime", l.net_ticktime, 1, "seconds; with 0 every relayed connection counts as hung")?;
        if l.lookup_wait_ms > MAX_LOOKUP_WAIT_MS {
            return Err(ConfigError::Invalid(format!(
                "local.lookup_wait_ms = {}: must be at most {MAX_LOOKUP_WAIT_MS} (the edist_epmd plug gives up on \
                 a lookup after 1000 ms, connection included)",
                l.lookup_wait_ms
            )));
        }
        if let Some(t) = self.threads {
            at_least("threads", size(t), 1, "the gateway's runtime needs a worker thread")?;
        }
        at_least(
            "devices.idle_timeout_ms",
            self.devices.idle_timeout_ms,
            300,
            "milliseconds; devices send a heartbeat every third of it",
        )?;
        at_least("fabric.keep_alive_ms", f.keep_alive_ms, 1, "milliseconds between keep-alives on an idle link")?;
        at_least("fabric.idle_timeout_ms", f.idle_timeout_ms, 1, "milliseconds; with 0 every link is dead at once")?;
        if f.keep_alive_ms >= f.idle_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "fabric.keep_alive_ms = {} must be below fabric.idle_timeout_ms = {} (a third of it or less): \
                 an idle link would time out between two keep-alives",
                f.keep_alive_ms, f.idle_timeout_ms
            )));
        }
        // Lane numbers are one byte on the wire; 0 is meaningful (everything in OTP's order).
        if f.lanes > 255 {
            return Err(ConfigError::Invalid(format!(
                "fabric.lanes = {}: must be at most 255 (bulk lanes besides the ordered one)",
                f.lanes
            )));
        }
        // One 64 KiB distribution fragment: a smaller buffer still passes every packet, but
        // one at a time, so nothing overtakes anything and a link's bandwidth goes unused.
        let fragment = 64 << 10;
        at_least("fabric.relay_buffer", size(f.relay_buffer), fragment, "bytes: one distribution fragment")?;
        at_least("fabric.gateway_buffer", size(f.gateway_buffer), fragment, "bytes: one distribution fragment")?;
        at_least("fabric.link_idle_ms", f.link_idle_ms, 1, "milliseconds; with 0 links close as soon as they open")?;
        use crate::fabric::options::{MAX_STREAM_WINDOW, MIN_STREAM_WINDOW};
        if !(MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW).contains(&f.stream_window) {
            return Err(ConfigError::Invalid(format!(
                "fabric.stream_window = {}: must be within {MIN_STREAM_WINDOW}..={MAX_STREAM_WINDOW} (bytes per QUIC stream)",
                f.stream_window
            )));
        }
        Ok(())
    }

    /// The roles: built-ins with the `[roles.NAME]` tables applied.
    pub fn roles(&self) -> Result<std::collections::BTreeMap<String, crate::policy::Role>, ConfigError> {
        crate::policy::role::resolve_roles(&self.roles).map_err(ConfigError::Invalid)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_empty_means_defaults() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::from_toml(&example, "example".as_ref()).unwrap();
        assert_eq!((c.name.as_str(), c.peers.len(), c.fabric.idle_timeout_ms), ("gw-a", 2, 1500));
        assert_eq!(c.peers[1].addr, None, "a peer that only dials in has no address");
        let d = Config::from_toml("", "empty".as_ref()).unwrap();
        assert_eq!(d.local.control.port(), 4370);
        assert!(Config::from_toml("[local]\ncontrol = \"0.0.0.0:1\"", "x".as_ref()).is_err());
        assert!(Config::from_toml("bogus = 1", "x".as_ref()).is_err());
        use crate::fabric::options::Congestion;
        for (name, want) in
            [("bbr", Congestion::Bbr), ("bbr-uncapped", Congestion::BbrUncapped), ("cubic", Congestion::Cubic)]
        {
            let c = Config::from_toml(&format!("[fabric]\ncongestion = \"{name}\""), "x".as_ref()).unwrap();
            assert_eq!(c.fabric.congestion, want);
        }
    }

    #[test]
    fn numbers_that_make_the_gateway_useless_are_refused_with_the_key_named() {
        for (toml, key) in [
            ("[local]\nmax_listeners = 0", "local.max_listeners"),
            ("[local]\nsocket_buffer = 0", "local.socket_buffer"),
            ("[local]\nnet_ticktime = 0", "local.net_ticktime"),
            ("[fabric]\nkeep_alive_ms = 0", "fabric.keep_alive_ms"),
            ("[fabric]\nidle_timeout_ms = 0", "fabric.idle_timeout_ms"),
            ("[fabric]\nkeep_alive_ms = 2000\nidle_timeout_ms = 1500", "fabric.keep_alive_ms"),
            ("[fabric]\nkeep_alive_ms = 1500\nidle_timeout_ms = 1500", "fabric.keep_alive_ms"),
            ("[fabric]\nlanes = 256", "fabric.lanes"),
            ("[fabric]\nrelay_buffer = 0", "fabric.relay_buffer"),
            ("[fabric]\nrelay_buffer = 65535", "fabric.relay_buffer"),
            ("[fabric]\ngateway_buffer = 0", "fabric.gateway_buffer"),
            ("[fabric]\nlink_idle_ms = 0", "fabric.link_idle_ms"),
            ("[fabric]\nstream_window = 65535", "fabric.stream_window"),
            ("[fabric]\nstream_window = 67108865", "fabric.stream_window"),
            ("[local]\nlookup_wait_ms = 901", "local.lookup_wait_ms"),
        ] {
            match Config::from_toml(toml, "x".as_ref()) {
                Err(ConfigError::Invalid(msg)) => assert!(msg.starts_with(key), "{toml}: {msg}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
        // The smallest useful values pass.
        let ok = "[local]\nmax_listeners = 1\nsocket_buffer = 1\nnet_ticktime = 1\nlookup_wait_ms = 0\n\
                  [fabric]\nkeep_alive_ms = 1\nidle_timeout_ms = 2\nlanes = 0\nrelay_buffer = 65536\n\
                  gateway_buffer = 65536\nlink_idle_ms = 1\ncompress_threshold = 0\nstream_window = 65536";
        Config::from_toml(ok, "x".as_ref()).unwrap();
        // And a config built in code is checked when the gateway starts (Gateway::start).
        let mut c = Config::default();
        c.fabric.relay_buffer = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn threads_default_to_half_the_cores_and_zero_is_refused() {
        let mut c = Config::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.worker_threads(), (cores / 2).max(1));
        c.threads = Some(3);
        assert_eq!(c.worker_threads(), 3);
        c.threads = Some(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn defaults_come_from_their_owners() {
        let d = Config::default();
        assert_eq!(d.local.control.to_string(), control::DEFAULT_ADDR);
        assert_eq!((d.fabric.keep_alive_ms, d.fabric.idle_timeout_ms), (500, 1500));
    }
}
