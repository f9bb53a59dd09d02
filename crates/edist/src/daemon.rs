//! `edist gateway`: runs the gateway until SIGTERM or SIGINT (then stops in order and exits 0),
//! re-reading its configuration and certificates on SIGHUP.

use anyhow::{Context, Result};
use edist_gateway::config::Config;
use edist_gateway::gateway::Gateway;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

fn load(path: Option<&Path>) -> Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

/// Runs the gateway of this host (no config: a single host on defaults) on a runtime with
/// the configured worker threads.
pub fn main(config: Option<PathBuf>) -> Result<()> {
    let cfg = load(config.as_deref())?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // Without `threads`, tokio's own TOKIO_WORKER_THREADS still wins (experiments).
    if cfg.threads.is_some() || std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        rt.worker_threads(cfg.worker_threads());
    }
    rt.enable_all().build()?.block_on(run(config, cfg))
}

async fn run(config: Option<PathBuf>, cfg: Config) -> Result<()> {
    let drain = Duration::from_millis(cfg.fabric.drain_ms);
    // Signals first: a SIGTERM that arrives while the gateway starts must not kill it mid-way.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let gw = Gateway::start(cfg).await?;
    let stop = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload(&gw, config.as_deref()),
        }
    };
    info!(signal = stop, "stop requested");
    tokio::select! {
        _ = gw.shutdown_gracefully(drain) => {}
        s = second(&mut term, &mut int) => {
            warn!(signal = s, "second stop request: stopping without waiting for relays to drain");
            gw.shutdown();
        }
    }
    Ok(())
}

/// Re-reads the configuration and applies it; a failure leaves the gateway as it was.
fn reload(gw: &Gateway, path: Option<&Path>) {
    info!(config = %path.map(|p| p.display().to_string()).unwrap_or_else(|| "(defaults)".into()), "SIGHUP: reloading");
    match load(path) {
        Ok(cfg) => {
            // The gateway logs the outcome and keeps it for `edist status` / `edist reload`.
            let _ = gw.reload(cfg);
        }
        Err(e) => gw.reload_failed(&format!("{e:#}")),
    }
}

async fn second(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
