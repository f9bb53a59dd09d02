//! Reloading a running gateway (SIGHUP, `edist reload`): certificates, peers, revocations and
//! roles are read again; links and relayed connections that are still allowed stay up.
//!
//! * Certificates (`ca.pem`, `<name>.pem`, `<name>.key`): new links present the new certificate
//!   and are checked against the new `ca.pem`; links already up keep their handshake. The files
//!   are checked first (identity, key, CA, validity): a half-copied or wrong set is refused and
//!   the old one stays.
//! * `[fabric] revoked`: links of a peer now revoked close (`CLOSE_REVOKED`), its nodes are
//!   forgotten.
//! * `[[peers]]`: dial loops start and stop; `nodes` narrowed: announced nodes outside the new
//!   grant are forgotten; `role`, `compress`, `via`, `relay` apply to relayed connections
//!   opened from now on.
//! * `[policy]`, `[roles.*]`: likewise, for new relayed connections.
//!
//! Everything else (addresses, transport, membership, buffers, cookie) needs a restart; a
//! reload says which of those changed ([`ReloadReport::needs_restart`]).

use super::{lock, Gateway, GatewayError, Inner};
use crate::config::{Config, PeerConfig};
use crate::fabric::close::CLOSE_REVOKED;
use crate::fabric::identity::TlsIdentity;
use crate::policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tracing::{info, warn};

/// The part of the configuration a reload replaces.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) peers: Vec<PeerConfig>,
    pub(super) revoked: Vec<String>,
    pub(super) default_role: String,
    pub(super) roles: BTreeMap<String, Arc<policy::Role>>,
}

impl Live {
    pub(super) fn new(cfg: &Config) -> Result<Live, GatewayError> {
        Ok(Live {
            peers: cfg.peers.clone(),
            revoked: cfg.fabric.revoked.clone(),
            default_role: cfg.policy.default_role.clone(),
            roles: cfg.roles()?.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        })
    }

    /// Whether `peer`, or the certificate with serial `serial`, is on the revocation list.
    pub(super) fn is_revoked(&self, peer: &str, serial: &str) -> bool {
        self.revoked.iter().any(|r| r.eq_ignore_ascii_case(serial) || r == peer)
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Serial of the certificate now served (`None` without a fabric).
    pub certificate: Option<String>,
    /// Whether it differs from the one served before.
    pub certificate_changed: bool,
    /// Peers this gateway now dials (new `[[peers]]` entries, or a new `addr`).
    pub dialling: Vec<String>,
    /// Peers it no longer dials.
    pub not_dialling: Vec<String>,
    /// Peers whose links were closed because they are revoked now.
    pub revoked: Vec<String>,
    /// Remote nodes forgotten: their gateway's grant no longer covers them.
    pub forgotten: Vec<String>,
    /// Settings that changed in the file but take effect only at a restart.
    pub needs_restart: Vec<String>,
}

/// The outcome of the last reload, for `edist status` and `edist reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Reloads attempted since the gateway started.
    pub count: u64,
    /// When the last one ended (ms since the Unix epoch).
    pub at_ms: u64,
    /// What it did, if it worked.
    pub report: Option<ReloadReport>,
    /// Why not, if it did not (the gateway runs on as before).
    pub error: Option<String>,
}

impl Gateway {
    /// Applies `cfg` to the running gateway (see the module docs); on an error nothing changed.
    pub fn reload(&self, cfg: Config) -> Result<ReloadReport, GatewayError> {
        let r = self.inner.reload(cfg);
        match &r {
            Ok(report) => self.inner.record_reload(Some(report.clone()), None),
            Err(e) => {
                warn!("reload failed, nothing changed: {e}");
                self.inner.record_reload(None, Some(e.to_string()))
            }
        }
        r
    }

    /// Records a reload that could not even read its configuration.
    pub fn reload_failed(&self, why: &str) {
        warn!("reload failed, nothing changed: {why}");
        self.inner.record_reload(None, Some(why.to_string()));
    }
}

/// Why a certificate set cannot replace the one served; `None` if it can.
fn unusable(dir: &std::path::Path, name: &str) -> Option<String> {
    let paths = crate::pki::node_paths(dir, name);
    let facts = match crate::certcheck::inspect(&paths) {
        Ok(f) => f,
        Err(e) => return Some(e.to_string()),
    };
    if facts.identity.as_deref() != Some(name) {
        return Some(format!("{} names {:?}, not this gateway ({name})", paths.cert.display(), facts.identity));
    }
    if let Err(e) = facts.key_matches {
        return Some(format!("{} does not belong to {}: {e}", paths.key.display(), paths.cert.display()));
    }
    if let Err(e) = facts.signed_by_ca {
        return Some(format!("{} is not signed by a CA in {}: {e}", paths.cert.display(), paths.ca.display()));
    }
    let now = SystemTime::now();
    if facts.not_after <= now || facts.not_before > now {
        return Some(format!("{} is not valid now", paths.cert.display()));
    }
    None
}

/// Settings that differ between `old` and `new` and that only a restart applies.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    // Compared through their Debug forms (the config types are not PartialEq), with the fields
    // a reload does apply put equal first.
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut changed = vec![];
    let mut check = |key: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        if !same(a, b) {
            changed.push(key.to_string());
        }
    };
    check("name", &old.name, &new.name);
    check("host", &old.host, &new.host);
    check("cookie", &old.cookie, &new.cookie);
    check("threads", &old.threads, &new.threads);
    check("[local]", &old.local, &new.local);
    check("[metrics]", &old.metrics, &new.metrics);
    let mut fabric = new.fabric.clone();
    fabric.revoked = old.fabric.revoked.clone();
    fabric.certs = old.fabric.certs.clone();
    check("[fabric]", &old.fabric, &fabric);
    changed
}

fn serial(id: &TlsIdentity) -> String {
    id.chain.first().map(|c| crate::pki::certificate_grant(c).serial).unwrap_or_default()
}

impl Inner {
    fn record_reload(&self, report: Option<ReloadReport>, error: Option<String>) {
        let mut last = lock(&self.last_reload);
        let count = last.as_ref().map_or(0, |l| l.count) + 1;
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        *last = Some(ReloadStatus { count, at_ms, report, error });
    }

    /// The reloadable part of the configuration, as last loaded.
    pub(crate) fn live(&self) -> Arc<Live> {
        lock(&self.live).clone()
    }

    fn reload(self: &Arc<Self>, cfg: Config) -> Result<ReloadReport, GatewayError> {
        cfg.validate()?;
        let live = Live::new(&cfg)?;
        let mut report = ReloadReport { needs_restart: restart_only(&self.cfg, &cfg), ..Default::default() };
        if report.needs_restart.iter().any(|k| k == "name") {
            return Err(GatewayError::Fabric("the gateway's name cannot change without a restart".into()));
        }
        // Certificates first: if they are unusable, nothing changes.
        if let Some(creds) = self.creds.get() {
            let dir = &cfg.fabric.certs;
            if let Some(why) = unusable(dir, &self.cfg.name) {
                return Err(GatewayError::Fabric(format!("certificates in {} not loaded: {why}", dir.display())));
            }
            let id = TlsIdentity::load(dir, &self.cfg.name).map_err(|e| GatewayError::Fabric(e.to_string()))?;
            let before = serial(&creds.identity());
            if let Some(sealer) = self.sealer.get() {
                sealer
                    .replace(creds.provider(), &id.chain, &id.key)
                    .map_err(|e| GatewayError::Fabric(format!("membership signer: {e}")))?;
            }
            creds.reload(&id).map_err(|e| GatewayError::Fabric(e.to_string()))?;
            let now = serial(&id);
            report.certificate_changed = now != before;
            report.certificate = Some(now);
        } else if crate::pki::node_paths(&cfg.fabric.certs, &self.cfg.name).cert.exists() {
            // The fabric (its endpoint, its tasks) starts with the gateway.
            report.needs_restart.push("fabric (a certificate is there now; the gateway started without one)".into());
        }
        *lock(&self.live) = Arc::new(live);
        if !self.cfg.fabric.membership {
            (report.dialling, report.not_dialling) = self.sync_dialers();
        }
        self.recheck_peers(&mut report);
        info!(
            certificate = report.certificate.as_deref().unwrap_or("none"),
            certificate_changed = report.certificate_changed,
            dialling = ?report.dialling,
            not_dialling = ?report.not_dialling,
            revoked = ?report.revoked,
            forgotten = report.forgotten.len(),
            "configuration reloaded"
        );
        if !report.needs_restart.is_empty() {
            warn!(changed = ?report.needs_restart, "these settings changed but take effect only at a restart");
        }
        Ok(report)
    }

    /// Applies revocations and narrowed grants to the peers already known.
    fn recheck_peers(&self, report: &mut ReloadReport) {
        if let Some(hub) = self.hub.get() {
            // Devices revoked now: their connections close and their nodes go down.
            report.revoked.extend(hub.close_revoked());
        }
        let live = self.live();
        let known = self.registry().certified();
        for (peer, cert) in known {
            if live.is_revoked(&peer, &cert.serial) {
                let links: Vec<_> = self.links().of(&peer).iter().map(|l| l.conn.clone()).collect();
                for l in &links {
                    l.close(CLOSE_REVOKED, b"certificate revoked");
                }
                self.registry().forget_grants(&peer);
                self.forget_gateway(&peer);
                self.refuse(&peer, "revoked", &format!("reload: certificate {} is revoked", cert.serial));
                report.revoked.push(peer);
                continue;
            }
            let grant = self.effective_grant(&peer, cert);
            let outside: Vec<String> =
                self.registry().nodes_of(&peer).into_iter().map(|n| n.name).filter(|n| !grant.allows(n)).collect();
            self.registry().set_grant(&peer, grant);
            if !outside.is_empty() {
                self.forget_remote(|n, r| r.gateway == peer && outside.iter().any(|o| o == n));
                report.forgotten.extend(outside);
            }
        }
    }
}
