//! The `edist` command line.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use edist_node::{Node, NodeConfig};
use edist_proto::etf::text;
use std::time::Duration;

mod daemon;
mod demo;
mod doctor;
mod erl_flags;
mod logs;
mod reload;
mod status;

#[derive(Parser)]
#[command(name = "edist", version, about = "Erlang distribution through a Rust fabric")]
struct Cli {
    /// Log lines as `text` or `json` (one object per line, for log collectors).
    #[arg(long, global = true, env = "EDIST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Check the command line and exit (for the docs' snippet checks).
    #[arg(long, global = true, hide = true)]
    parse_only: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options shared by commands that act as a node.
#[derive(clap::Args, Clone)]
struct NodeOpts {
    /// Our node name (default: edist_<pid>@<the target's host>).
    #[arg(long)]
    name: Option<String>,
    /// The cookie (default: $EDIST_COOKIE, else ~/.erlang.cookie).
    #[arg(long)]
    cookie: Option<String>,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Go through the edist gateway at this local control address (e.g. 127.0.0.1:4370)
    /// instead of epmd: register with it and resolve names there, as plugged BEAMs do.
    #[arg(long, env = "EDIST_GATEWAY", value_name = "HOST:PORT")]
    gateway: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ping a node: prints `pong` or `pang` (exit status 1 on pang).
    Ping {
        node: String,
        #[command(flatten)]
        opts: NodeOpts,
    },
    /// Call MODULE:FUNCTION(ARGS...) on NODE, ARGS being an Erlang list in text, e.g.
    /// '[<<"abc">>, 42, {ok, "x"}]'; prints the result as Erlang term text.
    Rpc {
        node: String,
        module: String,
        function: String,
        #[arg(default_value = "[]")]
        args: String,
        #[command(flatten)]
        opts: NodeOpts,
    },
    /// Manage the cluster PKI: one CA per cluster, one certificate per gateway.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Start a throw-away OTP node, then ping it and call into it from Rust (needs `erl`).
    Demo,
    /// Run the gateway of this host (no config: a single host on defaults). SIGTERM or SIGINT
    /// stops it in order (exit 0); SIGHUP re-reads the config and certificates.
    Gateway {
        /// TOML configuration (see the README for every field).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Make the running gateway re-read its config and certificates (as SIGHUP does) and show
    /// what changed; links that stay allowed stay up.
    Reload {
        /// The gateway's local control address.
        #[arg(long, default_value = edist_gateway::local::control::DEFAULT_ADDR)]
        gateway: std::net::SocketAddr,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a running gateway: local nodes, peer gateways, relays, bytes in/out.
    Status {
        /// The gateway's local control address.
        #[arg(long, default_value = edist_gateway::local::control::DEFAULT_ADDR)]
        gateway: std::net::SocketAddr,
        /// Print JSON (with --watch: one object per line per refresh).
        #[arg(long)]
        json: bool,
        /// Refresh until interrupted: local nodes, peers, links, lanes, throughput, refusals.
        #[arg(long)]
        watch: bool,
        /// Milliseconds between refreshes with --watch.
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        interval: u64,
        /// Stop after N refreshes with --watch.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Inspect the ingress policy of a configuration.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Check this host's setup: config, gateway, certificates, fabric port, clock, a node's
    /// registration, erl, epmd. One line per check; exit status 1 on any FAIL.
    Doctor {
        /// The gateway's TOML configuration (default: the defaults).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// A node (`name` or `name@host`) that should be registered with the gateway.
        #[arg(long)]
        node: Option<String>,
    },
    /// Print the VM flags that plug a stock `erl` into the local edist gateway, e.g.
    /// `erl $(edist erl-flags) -sname a` or `export ERL_FLAGS="$(edist erl-flags)"`
    /// (compiles the embedded edist_epmd module with `erlc` once, into ~/.cache/edist).
    ErlFlags {
        /// The gateway's local control address (default 127.0.0.1:4370).
        #[arg(long, value_name = "HOST:PORT")]
        gateway: Option<String>,
        /// Print the plug's Erlang source instead, to build it into a release
        /// (`edist erl-flags --plug-source > src/edist_epmd.erl`; see examples/).
        #[arg(long)]
        plug_source: bool,
        /// Print the device connector's Erlang source instead (`edist_device_dist`, for a
        /// device's release: `edist erl-flags --device-source > src/edist_device_dist.erl`;
        /// see docs/devices.md).
        #[arg(long, conflicts_with = "plug_source")]
        device_source: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Print the effective rules of a role (built-in or `[roles.NAME]`, with its `base` and
    /// overrides applied): in words, then as the complete TOML table.
    Explain {
        /// The role's name (`device`, `trusted`, or one of the config's `[roles.NAME]`).
        role: String,
        /// The gateway's TOML configuration (default: the built-in roles only).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// List the roles of a configuration, and which peers have which.
    List {
        /// The gateway's TOML configuration (default: the built-in roles only).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

fn policy(cmd: PolicyCmd) -> Result<()> {
    let load = |config: Option<std::path::PathBuf>| -> Result<edist_gateway::config::Config> {
        Ok(match config {
            Some(p) => edist_gateway::config::Config::load(&p)?,
            None => edist_gateway::config::Config::default(),
        })
    };
    match cmd {
        PolicyCmd::Explain { role, config } => {
            let cfg = load(config)?;
            let roles = cfg.roles()?;
            let r = roles.get(&role).ok_or_else(|| {
                anyhow!("no role {role:?} (known: {})", roles.keys().cloned().collect::<Vec<_>>().join(", "))
            })?;
            print!("{}", edist_gateway::policy::role::explain(&role, r));
            let peers: Vec<&str> = cfg
                .peers
                .iter()
                .filter(|p| p.role.as_deref() == Some(role.as_str()))
                .map(|p| p.name.as_str())
                .collect();
            if !peers.is_empty() {
                println!("\n# peers with this role in the config: {}", peers.join(", "));
            }
            if cfg.policy.default_role == role {
                println!("# the default role: peers without one (in the config or their certificate) get it");
            }
        }
        PolicyCmd::List { config } => {
            let cfg = load(config)?;
            for (name, r) in cfg.roles()? {
                let peers: Vec<&str> = cfg
                    .peers
                    .iter()
                    .filter(|p| p.role.as_deref() == Some(name.as_str()))
                    .map(|p| p.name.as_str())
                    .collect();
                let mut notes = vec![];
                if r.is_open() {
                    notes.push("trusted".to_string());
                }
                if r.audit {
                    notes.push("audit".to_string());
                }
                if cfg.policy.default_role == name {
                    notes.push("default".to_string());
                }
                if !peers.is_empty() {
                    notes.push(format!("peers: {}", peers.join(", ")));
                }
                println!(
                    "{name}{}",
                    if notes.is_empty() { String::new() } else { format!("  ({})", notes.join("; ")) }
                );
            }
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.parse_only {
        return std::process::ExitCode::SUCCESS;
    }
    let format = if cli.log_format == "json" { logs::Format::Json } else { logs::Format::Text };
    // A daemon says what it does; a one-shot command only what went wrong.
    let default_filter = match cli.cmd {
        Cmd::Gateway { .. } => "warn,edist=info,edist_gateway=info",
        _ => "warn",
    };
    logs::init(format, default_filter);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            logs::fatal(format, &e);
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // The gateway's runtime is sized by its configuration (`threads`).
    if let Cmd::Gateway { config } = cli.cmd {
        return daemon::main(config);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Ping { node, opts } => {
                let me = start_client(&node, &opts).await?;
                match me.ping_result(&node).await {
                    Ok(()) => println!("pong"),
                    Err(e) => {
                        println!("pang");
                        eprintln!("edist: {e}");
                        std::process::exit(1);
                    }
                }
            }
            Cmd::Rpc { node, module, function, args, opts } => {
                let args = text::parse(&args).with_context(|| format!("ARGS {args:?} is not an Erlang term"))?;
                let args = args.to_proper_list().ok_or_else(|| anyhow!("ARGS must be a list, e.g. '[1, 2]'"))?;
                let me = start_client(&node, &opts).await?;
                let v = me.rpc(&node, &module, &function, args, Duration::from_secs(opts.timeout)).await?;
                println!("{v}");
            }
            Cmd::Certs { cmd } => certs(cmd)?,
            Cmd::Policy { cmd } => policy(cmd)?,
            Cmd::Demo => demo::run().await?,
            Cmd::Gateway { .. } => unreachable!("edist gateway runs on a runtime of its own (daemon::main)"),
            Cmd::Reload { gateway, json } => reload::run(gateway, json).await?,
            Cmd::Status { gateway, json, watch, interval, count } => {
                let interval = Duration::from_millis(interval.max(50));
                status::run(gateway, status::Options { json, watch, interval, count }).await?
            }
            Cmd::Doctor { config, node } => doctor::run(config.as_deref(), node.as_deref()).await?,
            Cmd::ErlFlags { plug_source: true, .. } => print!("{}", erl_flags::PLUG_SOURCE),
            Cmd::ErlFlags { device_source: true, .. } => print!("{}", erl_flags::DEVICE_SOURCE),
            Cmd::ErlFlags { gateway, .. } => erl_flags::run(gateway.as_deref())?,
        }
        Ok(())
    })
}

/// A hidden, non-listening node named after the target's host.
async fn start_client(target: &str, opts: &NodeOpts) -> Result<Node> {
    let Some((_, host)) = target.split_once('@') else { bail!("node name {target:?} must be name@host") };
    let name = opts.name.clone().unwrap_or_else(|| format!("edist_{}@{host}", std::process::id()));
    let cookie = match &opts.cookie {
        Some(c) => c.clone(),
        None => edist_node::cookie::default_cookie()
            .ok_or_else(|| anyhow!("no cookie: pass --cookie, set EDIST_COOKIE, or create ~/.erlang.cookie"))?,
    };
    let mut cfg = NodeConfig::new(name, cookie);
    // Behind a gateway the client registers like any local node, so the gateway relays its
    // connections to nodes on other hosts; without one it only dials out.
    cfg.listen = opts.gateway.is_some();
    cfg.gateway = opts.gateway;
    cfg.setup_timeout = Duration::from_secs(opts.timeout);
    Ok(Node::start(cfg).await?)
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create the cluster CA: DIR/ca.pem (give it to every gateway) and its key in a directory
    /// of its own, DIR/ca-private/ca.key (keep it off the gateways).
    Init {
        /// The certificate directory.
        #[arg(long, default_value = "./edist-certs")]
        dir: std::path::PathBuf,
        /// The cluster name, recorded in the CA certificate.
        #[arg(long, default_value = "edist")]
        cluster: String,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
        /// Write the CA key here instead (an encrypted volume, a machine of its own).
        #[arg(long, value_name = "FILE")]
        ca_key: Option<std::path::PathBuf>,
    },
    /// Renew the certificate of gateway NAME: a new key and certificate with the same grants
    /// (node names, role), replacing DIR/NAME.pem and DIR/NAME.key. Copy both to the host and
    /// run `edist reload` there: new links use it, links up stay up.
    Renew {
        /// The gateway name.
        name: String,
        /// The certificate directory.
        #[arg(long, default_value = "./edist-certs")]
        dir: std::path::PathBuf,
        /// Days of validity from now.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The CA key (default: DIR/ca-private/ca.key).
        #[arg(long, value_name = "FILE")]
        ca_key: Option<std::path::PathBuf>,
    },
    /// Issue the certificate of gateway NAME from the CA in DIR: DIR/NAME.pem and DIR/NAME.key.
    /// With --device, NAME is a device's node name (alive@host): the certificate lets a device
    /// BEAM connect to a hub gateway as that node and no other (docs/devices.md).
    Issue {
        /// The gateway name (a DNS name; the identity its peers see), or with --device the
        /// device's node name.
        name: String,
        /// A device's certificate: NAME is the one node name it grants (`edist_device_dist`).
        #[arg(long)]
        device: bool,
        /// The certificate directory.
        #[arg(long, default_value = "./edist-certs")]
        dir: std::path::PathBuf,
        /// Days of validity.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
        /// Node names it may register, as comma-separated `*` globs (e.g. `board7*@*`);
        /// other gateways refuse any other name it announces. Default: any.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// The role other gateways give it unless their config says otherwise (e.g. `device`).
        #[arg(long)]
        role: Option<String>,
        /// The CA key (default: DIR/ca-private/ca.key).
        #[arg(long, value_name = "FILE")]
        ca_key: Option<std::path::PathBuf>,
    },
}

fn certs(cmd: CertsCmd) -> Result<()> {
    use edist_gateway::pki;
    match cmd {
        CertsCmd::Init { dir, cluster, force, ca_key } => {
            let p = pki::init_ca(&dir, &cluster, &pki::CaOptions { force, key: ca_key, ..Default::default() })?;
            println!("wrote {} (cluster CA certificate for {cluster:?}: copy it to every gateway)", p.cert.display());
            println!("wrote {} (CA private key, mode 0600)", p.key.display());
            eprintln!(
                "edist: keep {} off the gateways: it signs certificates every gateway trusts. Copy only \
                 ca.pem, NAME.pem and NAME.key to a host; keep the key on this machine, or offline.",
                p.key.parent().unwrap_or(&p.key).display()
            );
        }
        CertsCmd::Renew { name, dir, days, ca_key } => {
            let (p, old) = pki::renew(&dir, &name, days, ca_key)?;
            let g = pki::certificate_grant(&pki::load_certs(&p.cert)?.remove(0));
            println!("wrote {} (certificate of gateway {name:?}, valid {days} days)", p.cert.display());
            println!(
                "  serial {} (was {}), node names {}, role {}",
                g.serial,
                old.serial,
                g.nodes.join(","),
                role_text(&g)
            );
            println!("wrote {} (its new private key, mode 0600)", p.key.display());
            println!(
                "copy {} and {} to the host of {name:?}, then `edist reload` there (links up stay up); \
                 to refuse the old certificate at once, add serial {} to [fabric] revoked everywhere",
                p.cert.display(),
                p.key.display(),
                old.serial
            );
        }
        CertsCmd::Issue { name, dir, days, force, nodes, role, ca_key, device } => {
            if device && !nodes.is_empty() {
                anyhow::bail!("--nodes does not go with --device: a device's certificate grants its own name only");
            }
            let opts = pki::IssueOptions { force, nodes, role, ca_key, device, ..Default::default() };
            let p = pki::issue(&dir, &name, days, opts)?;
            let der = pki::load_certs(&p.cert)?.remove(0);
            let g = pki::certificate_grant(&der);
            if device {
                println!("wrote {} (certificate of device node {name:?}, valid {days} days)", p.cert.display());
                println!(
                    "  serial {} (for a revocation list: [fabric] revoked on the hub), role {}",
                    g.serial,
                    g.role.as_deref().unwrap_or("(the hub's [devices] role)")
                );
                println!("wrote {} (its private key, mode 0600)", p.key.display());
                println!(
                    "the device needs {}, {} and {} (see docs/devices.md)",
                    p.ca.display(),
                    p.cert.display(),
                    p.key.display()
                );
                return Ok(());
            }
            println!("wrote {} (certificate of gateway {name:?}, valid {days} days)", p.cert.display());
            println!(
                "  serial {} (for a revocation list), node names {}, role {}",
                g.serial,
                g.nodes.join(","),
                role_text(&g)
            );
            println!("wrote {} (its private key, mode 0600)", p.key.display());
            println!("gateway {name:?} needs {}, {} and {}", p.ca.display(), p.cert.display(), p.key.display());
        }
    }
    Ok(())
}

fn role_text(g: &edist_gateway::pki::Grant) -> &str {
    g.role.as_deref().unwrap_or("(the peers' default)")
}
