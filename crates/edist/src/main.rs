//! The `edist` command line.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use edist_node::{Node, NodeConfig};
use edist_proto::etf::text;
use std::time::Duration;

mod demo;

#[derive(Parser)]
#[command(name = "edist", version, about = "Erlang distribution through a Rust fabric")]
struct Cli {
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
    /// Start a throw-away OTP node, then ping it and call into it from Rust (needs `erl`).
    Demo,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edist: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("EDIST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
            Cmd::Demo => demo::run().await?,
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
    cfg.listen = false;
    cfg.setup_timeout = Duration::from_secs(opts.timeout);
    Ok(Node::start(cfg).await?)
}
