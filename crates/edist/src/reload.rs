//! `edist reload`: asks the running gateway to re-read its configuration and certificates
//! (the same as `kill -HUP`), and prints what it did.
//!
//! The gateway's status names its process; only who may signal it (its user, root) can make
//! it reload, as with `systemctl reload`.

use anyhow::{bail, Context, Result};
use edist_gateway::gateway::ReloadStatus;
use std::net::SocketAddr;
use std::time::Duration;

/// How long the gateway may take to answer.
const WAIT: Duration = Duration::from_secs(10);

pub async fn run(gateway: SocketAddr, json: bool) -> Result<()> {
    let before = crate::status::fetch(gateway).await?;
    if before.pid == 0 {
        bail!("the gateway at {gateway} does not say which process it is (an older version?): send it SIGHUP");
    }
    let count = before.reload.as_ref().map_or(0, |r| r.count);
    let out = tokio::process::Command::new("kill")
        .args(["-HUP", &before.pid.to_string()])
        .output()
        .await
        .context("running kill")?;
    if !out.status.success() {
        bail!(
            "cannot signal the gateway (pid {}): {} (run this as the gateway's user or root, or `systemctl reload \
             edist-gateway`)",
            before.pid,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let done = loop {
        let now = crate::status::fetch(gateway).await?;
        match now.reload {
            Some(r) if r.count > count => break r,
            _ if tokio::time::Instant::now() >= deadline => {
                bail!("the gateway did not report a reload within {WAIT:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        print!("{}", render(&done));
    }
    match &done.error {
        Some(e) => bail!("reload failed, the gateway runs on as before: {e}"),
        None => Ok(()),
    }
}

fn render(r: &ReloadStatus) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let Some(rep) = &r.report else { return s };
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    let _ = writeln!(s, "reloaded (reload #{})", r.count);
    match &rep.certificate {
        Some(serial) if rep.certificate_changed => {
            let _ = writeln!(s, "  certificate: {serial} (new: served to links set up from now on)");
        }
        Some(serial) => _ = writeln!(s, "  certificate: {serial} (unchanged)"),
        None => _ = writeln!(s, "  certificate: none (no fabric)"),
    }
    let _ = writeln!(s, "  now dialling: {}", list(&rep.dialling));
    let _ = writeln!(s, "  no longer dialling: {}", list(&rep.not_dialling));
    let _ = writeln!(s, "  revoked, links closed: {}", list(&rep.revoked));
    let _ = writeln!(s, "  remote nodes forgotten (outside their gateway's grant): {}", list(&rep.forgotten));
    if !rep.needs_restart.is_empty() {
        let _ = writeln!(s, "  changed but needing a restart: {}", rep.needs_restart.join(", "));
    }
    s
}
