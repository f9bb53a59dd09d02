//! `edist doctor` against a healthy gateway (with a near-expiry certificate) and against a
//! broken setup (no gateway, a certificate from another CA that has expired, a bad config).

use edist_testkit as common;

use anyhow::{ensure, Result};
use common::{free_port, host, unique};
use edist_gateway::config::Config;
use edist_gateway::gateway::Gateway;
use edist_gateway::pki;
use edist_node::{Node, NodeConfig};
use std::path::Path;
use time::{Duration as Days, OffsetDateTime};

/// Runs `edist doctor ARGS`; (success, stdout).
fn doctor(args: &[&str], epmd_port: u16) -> Result<(bool, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edist"))
        .arg("doctor")
        .args(args)
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .output()?;
    Ok((out.status.success(), String::from_utf8(out.stdout)?))
}

/// The line of check `what`.
fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines().find(|l| l.get(5..).is_some_and(|r| r.starts_with(&format!("{what} ")))).unwrap_or("")
}

fn write_config(path: &Path, name: &str, control: &str, fabric: &str, certs: &Path) -> Result<()> {
    let text = format!(
        "name = \"{name}\"\ncookie = \"doc\"\n[local]\ncontrol = \"{control}\"\n[fabric]\nlisten = \"{fabric}\"\ncerts = \"{}\"\n",
        certs.display()
    );
    Ok(std::fs::write(path, text)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_healthy_host_and_names_what_is_broken() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("edist-doctor"));
    let certs = dir.join("certs");
    pki::init_ca(&certs, "doc", &pki::CaOptions::default())?;
    pki::issue(&certs, "gw-a", 10, pki::IssueOptions::default())?;
    let no_epmd = free_port()?;

    // Healthy: a running gateway with a fabric, a node registered through its control port.
    let mut cfg = Config { name: "gw-a".into(), cookie: Some("doc".into()), ..Config::default() };
    cfg.local.control = "127.0.0.1:0".parse()?;
    cfg.fabric.listen = "127.0.0.1:0".parse()?;
    cfg.fabric.certs = certs.clone();
    let gw = Gateway::start(cfg).await?;
    let fabric = gw.fabric_addr().map(|a| a.to_string()).unwrap_or_default();
    let good = dir.join("good.toml");
    write_config(&good, "gw-a", &gw.control_addr().to_string(), &fabric, &certs)?;
    let alive = unique("dn");
    let mut ncfg = NodeConfig::new(format!("{alive}@{}", host()), "doc");
    ncfg.gateway = Some(gw.control_addr());
    let _node = Node::start(ncfg).await?;
    let g = good.to_string_lossy().to_string();

    let (ok, out) = doctor(&["--config", &g, "--node", &alive], no_epmd)?;
    eprintln!("{out}");
    ensure!(ok, "a healthy host passes (warnings allowed):\n{out}");
    for what in ["config", "gateway", "certificates", "ca", "private key", "clock", "fabric port", "node", "epmd"] {
        ensure!(line(&out, what).starts_with("ok   "), "{what} should be ok:\n{out}");
    }
    ensure!(line(&out, "node").contains(&format!("{alive}@")), "{out}");
    ensure!(line(&out, "fabric port").contains("in use (by the gateway)"), "{out}");
    // The test keeps its CA beside the gateway's files: a warning to move the key away.
    ensure!(line(&out, "signing key").starts_with("warn ") && line(&out, "signing key").contains("ca.key"), "{out}");
    // Issued for 10 days: a warning to rotate, not a failure.
    ensure!(line(&out, "expiry").starts_with("warn ") && line(&out, "expiry").contains("rotate"), "{out}");

    // A node that is not there fails, naming it.
    let (ok, out) = doctor(&["--config", &g, "--node", "nobody"], no_epmd)?;
    ensure!(!ok && line(&out, "node").starts_with("FAIL ") && line(&out, "node").contains("nobody"), "{out}");
    gw.shutdown();

    // Broken: nothing on the control port, a certificate from another CA, expired.
    let other = dir.join("other");
    pki::init_ca(&other, "other", &pki::CaOptions::default())?;
    let past = OffsetDateTime::now_utc() - Days::days(20);
    let opts =
        pki::IssueOptions { not_before: Some(past), not_after: Some(past + Days::days(10)), ..Default::default() };
    pki::issue(&other, "gw-a", 10, opts)?;
    std::fs::copy(certs.join("ca.pem"), other.join("ca.pem"))?;
    let bad = dir.join("bad.toml");
    write_config(&bad, "gw-a", &format!("127.0.0.1:{}", free_port()?), "127.0.0.1:0", &other)?;
    let (ok, out) = doctor(&["--config", &bad.to_string_lossy()], no_epmd)?;
    ensure!(!ok, "{out}");
    for what in ["gateway", "ca", "expiry"] {
        ensure!(line(&out, what).starts_with("FAIL "), "{what} should FAIL:\n{out}");
    }
    ensure!(line(&out, "gateway").contains("edist gateway --config"), "{out}");
    ensure!(line(&out, "private key").starts_with("ok   "), "the key still matches its certificate:\n{out}");
    // A private key every user can read is worth a warning.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(other.join("gw-a.key"), std::fs::Permissions::from_mode(0o644))?;
    }
    let (_, out) = doctor(&["--config", &bad.to_string_lossy()], no_epmd)?;
    ensure!(line(&out, "private key").starts_with("warn ") && line(&out, "private key").contains("chmod"), "{out}");

    // A config that does not parse.
    std::fs::write(&bad, "nmae = \"typo\"\n")?;
    let (ok, out) = doctor(&["--config", &bad.to_string_lossy()], no_epmd)?;
    ensure!(!ok && line(&out, "config").starts_with("FAIL ") && line(&out, "config").contains("nmae"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
