//! `edist doctor`: checks a host's edist setup, one line per check (`ok`, `warn`, `FAIL` and
//! what to do), exit status 1 on any FAIL.

use crate::erl_flags::find_in_path;
use crate::status;
use anyhow::{bail, Result};
use edist_gateway::certcheck;
use edist_gateway::config::Config;
use edist_gateway::gateway::StatusReport;
use edist_gateway::pki;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Certificates expiring sooner than this get a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86400);
/// A clock before this (2024-01-01) is certainly wrong.
const EARLIEST_SANE_CLOCK: Duration = Duration::from_secs(1_704_067_200);

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One checked fact.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: &'static str,
    pub verdict: Verdict,
    /// What was found, and for warn/FAIL what to do.
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{v:<5}{:<14}{}", self.what, self.detail)
    }
}

fn check(what: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check { what, verdict, detail: one_line(&detail.into()) }
}

/// A verdict stays on one line: multi-line errors (TOML's quote the source with `|` and `^`
/// markers) are joined, markers dropped.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '|' | '^' | ' ')))
        .filter(|l| !l.starts_with(|c: char| c.is_ascii_digit()) || !l.contains(" | "))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs every check and prints it; fails when one failed.
pub async fn run(config: Option<&Path>, node: Option<&str>) -> Result<()> {
    let checks = checks(config, node).await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// Every check, in order.
pub async fn checks(config: Option<&Path>, node: Option<&str>) -> Vec<Check> {
    let mut out = vec![];
    let cfg = match config {
        None => {
            out.push(check("config", Verdict::Ok, "no --config: checking the defaults"));
            Config::default()
        }
        Some(p) => match Config::load(p) {
            Ok(c) => {
                out.push(check("config", Verdict::Ok, format!("{} parses (gateway {})", p.display(), c.name)));
                c
            }
            Err(e) => {
                out.push(check("config", Verdict::Fail, format!("{e}: fix the file (see docs/config.md)")));
                Config::default()
            }
        },
    };
    let gateway = status::fetch(cfg.local.control).await;
    out.push(match &gateway {
        Ok(st) if st.name != cfg.name => check(
            "gateway",
            Verdict::Warn,
            format!("{} answers on {}, but the config names {}", st.name, cfg.local.control, cfg.name),
        ),
        Ok(st) => check(
            "gateway",
            Verdict::Ok,
            format!(
                "{} answers on {} ({} local nodes, peers {:?})",
                st.name,
                cfg.local.control,
                st.local_nodes.len(),
                st.peers
            ),
        ),
        Err(_) => check(
            "gateway",
            Verdict::Fail,
            format!(
                "nothing answers on {}: start `edist gateway{}`",
                cfg.local.control,
                config.map(|p| format!(" --config {}", p.display())).unwrap_or_default()
            ),
        ),
    });
    let fabric = certificates(&cfg, &mut out);
    if fabric {
        out.push(fabric_port(cfg.fabric.listen, gateway.is_ok()));
    }
    if let Some(n) = node {
        out.push(registered(n, gateway.as_ref().ok()));
    }
    out.push(match find_in_path("erl") {
        Some(p) => check("erl", Verdict::Ok, format!("{}", p.display())),
        None => check(
            "erl",
            if node.is_some() { Verdict::Fail } else { Verdict::Warn },
            "not on PATH: BEAM nodes on this host need Erlang/OTP 25+ (Debian: apt-get install erlang-base)",
        ),
    });
    out.push(epmd().await);
    out
}

/// The certificate checks; returns whether this gateway has a fabric (a certificate).
fn certificates(cfg: &Config, out: &mut Vec<Check>) -> bool {
    let paths = pki::node_paths(&cfg.fabric.certs, &cfg.name);
    if !paths.cert.exists() {
        out.push(if cfg.peers.is_empty() {
            check("certificates", Verdict::Ok, format!("none for {} in {}: single host, no fabric", cfg.name, cfg.fabric.certs.display()))
        } else {
            check(
                "certificates",
                Verdict::Fail,
                format!(
                    "peers are configured but {} is missing: run `edist certs issue {}` where the CA is kept and copy {}.pem, {}.key and ca.pem here",
                    paths.cert.display(),
                    cfg.name,
                    cfg.name,
                    cfg.name
                ),
            )
        });
        return false;
    }
    let facts = match certcheck::inspect(&paths) {
        Ok(f) => f,
        Err(e) => {
            out.push(check(
                "certificates",
                Verdict::Fail,
                format!("{e}: reissue with `edist certs issue {} --force`", cfg.name),
            ));
            return true;
        }
    };
    out.push(match &facts.identity {
        Some(id) if *id == cfg.name => {
            check("certificates", Verdict::Ok, format!("{} readable, names {id}", paths.cert.display()))
        }
        other => check(
            "certificates",
            Verdict::Fail,
            format!("{} names {other:?}, not {}: issue one for this gateway's name", paths.cert.display(), cfg.name),
        ),
    });
    out.push(match &facts.signed_by_ca {
        Ok(()) => check("ca", Verdict::Ok, format!("signed by the CA in {}", paths.ca.display())),
        Err(e) => check(
            "ca",
            Verdict::Fail,
            format!(
                "not signed by the CA in {} ({e}): copy the cluster's ca.pem, or reissue from it",
                paths.ca.display()
            ),
        ),
    });
    // The CA key signs certificates every gateway trusts: on a gateway host, whoever takes the
    // host can mint identities for the whole cluster.
    let ca_key = pki::ca_key_path(&cfg.fabric.certs);
    if ca_key.exists() {
        out.push(check(
            "signing key",
            Verdict::Warn,
            format!(
                "the CA's private key is on this host ({}): keep it on the machine that issues certificates, \
                 or offline; a gateway needs only ca.pem, {}.pem and {}.key",
                ca_key.display(),
                cfg.name,
                cfg.name
            ),
        ));
    }
    out.push(match &facts.key_matches {
        Ok(()) if world_readable(&paths.key) => check(
            "private key",
            Verdict::Warn,
            format!(
                "{} is readable by every user: chmod o-rwx (0600, or 0640 for the gateway's group)",
                paths.key.display()
            ),
        ),
        Ok(()) => check("private key", Verdict::Ok, format!("{} belongs to the certificate", paths.key.display())),
        Err(e) => check(
            "private key",
            Verdict::Fail,
            format!("{} does not match ({e}): copy the pair together", paths.key.display()),
        ),
    });
    let now = SystemTime::now();
    out.push(match facts.not_after.duration_since(now) {
        Err(_) => check(
            "expiry",
            Verdict::Fail,
            format!(
                "expired {}: `edist certs renew {}` where the CA is kept, copy the pair here, `edist reload`",
                date(facts.not_after),
                cfg.name
            ),
        ),
        Ok(left) if left < EXPIRY_WARNING => check(
            "expiry",
            Verdict::Warn,
            format!(
                "expires in {} days ({}): rotate soon (docs/operations.md)",
                left.as_secs() / 86400,
                date(facts.not_after)
            ),
        ),
        Ok(left) => {
            check("expiry", Verdict::Ok, format!("{} days left ({})", left.as_secs() / 86400, date(facts.not_after)))
        }
    });
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.push(if since_epoch < EARLIEST_SANE_CLOCK || now < facts.not_before {
        check(
            "clock",
            Verdict::Fail,
            format!(
                "system time {} is before the certificate's start {}: fix the clock (NTP)",
                date(now),
                date(facts.not_before)
            ),
        )
    } else {
        check("clock", Verdict::Ok, format!("{} is inside the certificate's validity", date(now)))
    });
    true
}

/// Whether other users may read a file (a private key must not be).
fn world_readable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        false
    }
}

/// Is the fabric's UDP port the gateway's (in use while it answers) or free for it?
fn fabric_port(addr: SocketAddr, gateway_up: bool) -> Check {
    match (std::net::UdpSocket::bind(addr), gateway_up) {
        (Ok(_), false) => check("fabric port", Verdict::Ok, format!("udp {addr} is free for the gateway")),
        (Ok(_), true) => check(
            "fabric port",
            Verdict::Warn,
            format!("udp {addr} is free although the gateway runs: it listens elsewhere (another config?)"),
        ),
        (Err(e), true) if e.kind() == std::io::ErrorKind::AddrInUse => {
            check("fabric port", Verdict::Ok, format!("udp {addr} is in use (by the gateway)"))
        }
        (Err(e), false) if e.kind() == std::io::ErrorKind::AddrInUse => check(
            "fabric port",
            Verdict::Fail,
            format!("udp {addr} is taken by another process: stop it or change fabric.listen"),
        ),
        (Err(e), _) => check("fabric port", Verdict::Fail, format!("udp {addr}: {e}: change fabric.listen")),
    }
}

/// Is `node` (`name` or `name@host`) registered with the gateway?
fn registered(node: &str, gateway: Option<&StatusReport>) -> Check {
    let Some(st) = gateway else {
        return check("node", Verdict::Fail, format!("{node}: no gateway to ask"));
    };
    let hit = st.local_nodes.iter().find(|(n, _)| n == node || n.split('@').next() == Some(node));
    match hit {
        Some((n, port)) => check("node", Verdict::Ok, format!("{n} is registered (distribution port {port})")),
        None => check(
            "node",
            Verdict::Fail,
            format!("{node} is not registered with {}: start it with `erl $(edist erl-flags) -sname NAME` (or the release's vm.args)", st.name),
        ),
    }
}

/// edist nodes never need epmd; one running is harmless but a sign of nodes without the plug.
async fn epmd() -> Check {
    let port: u16 = std::env::var("ERL_EPMD_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(4369);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
    match up {
        Ok(Ok(_)) => check(
            "epmd",
            Verdict::Warn,
            format!(
                "an epmd listens on {addr}: edist nodes do not need it; nodes without the plug register there instead"
            ),
        ),
        _ => check("epmd", Verdict::Ok, format!("none on {addr}, and none needed")),
    }
}

/// `YYYY-MM-DD` (UTC) of a time.
fn date(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = secs.div_euclid(86400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_one_line() {
        let e = "f.toml: TOML parse error at line 1, column 1\n  |\n1 | nmae = 1\n  | ^^^^\nunknown field `nmae`\n";
        assert_eq!(one_line(e), "f.toml: TOML parse error at line 1, column 1 unknown field `nmae`");
    }

    #[test]
    fn dates() {
        assert_eq!(date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(date(UNIX_EPOCH + Duration::from_secs(1_704_067_200)), "2024-01-01");
        assert_eq!(date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29");
    }
}
