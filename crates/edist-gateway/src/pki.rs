//! The cluster PKI: one CA per cluster, one certificate per gateway.
//!
//! Gateways authenticate each other with mutual TLS (see [`crate::fabric::tls`]). Every gateway
//! holds a certificate issued by the cluster CA whose common name and DNS subject alternative
//! name are the gateway's identity (e.g. `gw-a`); a gateway trusts exactly the certificates
//! issued by its cluster CA.
//!
//! Layout of a certificate directory (default `./edist-certs`):
//!
//! | file                   | content                                   | mode |
//! |------------------------|-------------------------------------------|------|
//! | `ca.pem`               | the cluster CA certificate                | 0644 |
//! | `ca-private/`          | the CA's own directory                    | 0700 |
//! | `ca-private/ca.key`    | the CA private key (keep it off gateways) | 0600 |
//! | `<name>.pem`           | the certificate of gateway `<name>`       | 0644 |
//! | `<name>.key`           | its private key                           | 0600 |
//!
//! The CA key lives in a directory of its own so that copying a gateway's files (`ca.pem`,
//! `<name>.pem`, `<name>.key`, or the directory's files with a glob) never takes it along; it
//! can live elsewhere altogether ([`CaOptions::key`], [`IssueOptions::ca_key`]). A CA made by
//! an older version, with `ca.key` beside `ca.pem`, is still found there.
//!
//! Keys are ECDSA P-256 (PKCS#8 PEM). Files are written to a temporary name and renamed, so a
//! crash never leaves half a key behind.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA key's own directory inside a certificate directory.
pub const CA_KEY_DIR: &str = "ca-private";
/// Longest accepted gateway name (a DNS label limit would be too tight for dotted names).
pub const MAX_NAME_LEN: usize = 253;
/// Certificates start this long before "now", to tolerate clock skew between hosts.
const BACKDATE: Duration = Duration::hours(1);

/// Errors of the PKI functions. Each names the file or name involved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("a CA already exists in {0}; refusing to replace it without force (every certificate it issued would stop being trusted)")]
    CaExists(PathBuf),
    #[error("a certificate for {name:?} already exists at {path}; refusing to replace it without force")]
    CertExists { name: String, path: PathBuf },
    #[error("no CA in {0} (create one first: `edist certs init`)")]
    NoCa(PathBuf),
    #[error("invalid gateway name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("invalid validity: {0}")]
    BadValidity(String),
    #[error("invalid grant {value:?}: {why}")]
    BadGrant { value: String, why: &'static str },
    // The underlying errors are part of the message, not `source()`, so that both `{}` and
    // anyhow's `{:#}` print them exactly once.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a valid PEM file: {error}")]
    Pem { path: PathBuf, error: rustls_pki_types::pem::Error },
    #[error("{0}: contains no certificate")]
    NoCertificate(PathBuf),
    #[error("{path}: {error}")]
    Rcgen { path: PathBuf, error: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),
}

/// Shorthand for results of this module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// Where [`init_ca`] wrote the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// The CA certificate (`ca.pem`).
    pub cert: PathBuf,
    /// The CA private key (`ca.key`, mode 0600).
    pub key: PathBuf,
}

/// Where [`issue`] wrote a gateway's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    /// The CA certificate the gateway must trust (`ca.pem`, already present).
    pub ca: PathBuf,
    /// The gateway certificate (`<name>.pem`).
    pub cert: PathBuf,
    /// The gateway private key (`<name>.key`, mode 0600).
    pub key: PathBuf,
}

/// Options of [`init_ca`].
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Replace an existing CA. Default `false`.
    pub force: bool,
    /// Validity of the CA certificate in days. Default 3650 (ten years).
    pub validity_days: u32,
    /// Where to write the CA key (default `<dir>/ca-private/ca.key`).
    pub key: Option<PathBuf>,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions { force: false, validity_days: 3650, key: None }
    }
}

/// Options of [`issue`]. The default issues a certificate valid from one hour ago for
/// `validity_days`, and refuses to overwrite an existing one.
#[derive(Debug, Clone, Default)]
pub struct IssueOptions {
    /// Replace an existing certificate and key of the same name. Default `false`.
    pub force: bool,
    /// Overrides the start of validity (default: now minus one hour).
    pub not_before: Option<OffsetDateTime>,
    /// Overrides the end of validity (default: now + `validity_days`). With `not_before` it
    /// makes an expired certificate, for tests.
    pub not_after: Option<OffsetDateTime>,
    /// Node-name patterns the gateway may register (`*` globs, e.g. `board7*@*`); empty: any.
    pub nodes: Vec<String>,
    /// The role other gateways give it unless their config says otherwise (e.g. `device`).
    pub role: Option<String>,
    /// The CA key to sign with (default: found in the directory, see [`ca_key_path`]).
    pub ca_key: Option<PathBuf>,
    /// A device's certificate (see [`issue`]): `name` is the node name the device may use.
    pub device: bool,
}

/// What a gateway certificate grants: the identity, the node names it may announce, the role
/// it asks for. Carried as SAN URIs `edist:nodes:<pattern>` and `edist:role:<role>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// Node-name patterns (`*` globs); a certificate without any grants every name (`*`).
    pub nodes: Vec<String>,
    /// The role, if the certificate names one.
    pub role: Option<String>,
    /// The certificate's serial number, lowercase hex (for revocation lists).
    pub serial: String,
    /// A device's certificate: the one node name it may use (`edist:device:<node>`). Such a
    /// certificate identifies a device BEAM at a hub gateway, never a gateway.
    pub device: Option<String>,
}

impl Grant {
    /// True when `node` matches one of the patterns.
    pub fn allows(&self, node: &str) -> bool {
        self.nodes.iter().any(|p| crate::policy::role::glob(p, node))
    }
}

const NODES_URI: &str = "edist:nodes:";
const ROLE_URI: &str = "edist:role:";
const DEVICE_URI: &str = "edist:device:";

/// Reads the grant of a DER certificate (no verification: the TLS layer did that).
pub fn certificate_grant(der: &[u8]) -> Grant {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Grant::default() };
    let mut g = Grant { serial: cert.raw_serial_as_string().replace(':', "").to_lowercase(), ..Grant::default() };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(u) = n {
                if let Some(p) = u.strip_prefix(NODES_URI) {
                    g.nodes.push(p.to_owned());
                } else if let Some(r) = u.strip_prefix(ROLE_URI) {
                    g.role = Some(r.to_owned());
                } else if let Some(d) = u.strip_prefix(DEVICE_URI) {
                    // Two device names would make the identity ambiguous: none counts.
                    g.device = match g.device {
                        None => Some(d.to_owned()),
                        Some(_) => Some(String::new()),
                    };
                }
            }
        }
    }
    if let Some(d) = &g.device {
        // A device may be one node, whatever else the certificate says.
        g.nodes = vec![d.clone()];
    }
    if g.nodes.is_empty() {
        g.nodes.push("*".into());
    }
    g
}

/// A node-name pattern or role name fit for a certificate: printable ASCII without spaces.
fn check_grant(value: &str, role: bool) -> Result<()> {
    let bad = |why| Err(PkiError::BadGrant { value: value.to_owned(), why });
    if value.is_empty() || value.len() > 255 {
        return bad("1 to 255 characters");
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') || (!role && matches!(c, '@' | '*'));
    if !value.chars().all(ok) {
        return bad(if role { "letters, digits, '_', '-', '.'" } else { "letters, digits, '_', '-', '.', '@', '*'" });
    }
    Ok(())
}

/// Paths of the CA files a new CA in `dir` gets.
pub fn ca_paths(dir: &Path) -> CaPaths {
    CaPaths { cert: dir.join(CA_CERT_FILE), key: dir.join(CA_KEY_DIR).join(CA_KEY_FILE) }
}

/// Where the CA key of the CA in `dir` is: `ca-private/ca.key`, or `ca.key` beside `ca.pem`
/// for a CA made by an older version (the former when neither exists).
pub fn ca_key_path(dir: &Path) -> PathBuf {
    let own = ca_paths(dir).key;
    let legacy = dir.join(CA_KEY_FILE);
    if !own.exists() && legacy.exists() {
        return legacy;
    }
    own
}

/// Paths of the files of gateway `name` in `dir` (no check that they exist).
pub fn node_paths(dir: &Path, name: &str) -> NodePaths {
    NodePaths {
        ca: dir.join(CA_CERT_FILE),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// Creates the cluster CA in `dir` (created with mode 0700 if missing): an ECDSA P-256 key and
/// a self-signed CA certificate whose subject names `cluster_name`. Refuses to replace an
/// existing `ca.pem` or `ca.key` unless `opts.force`.
pub fn init_ca(dir: &Path, cluster_name: &str, opts: &CaOptions) -> Result<CaPaths> {
    if cluster_name.is_empty() || cluster_name.len() > 64 || cluster_name.chars().any(char::is_control) {
        return Err(PkiError::BadName {
            name: cluster_name.to_owned(),
            why: "a cluster name has 1 to 64 printable characters",
        });
    }
    if opts.validity_days == 0 {
        return Err(PkiError::BadValidity("a CA needs at least one day of validity".into()));
    }
    let mut paths = ca_paths(dir);
    if let Some(key) = &opts.key {
        paths.key = key.clone();
    }
    let legacy = dir.join(CA_KEY_FILE);
    if !opts.force && (exists(&paths.cert)? || exists(&paths.key)? || exists(&legacy)?) {
        return Err(PkiError::CaExists(dir.to_owned()));
    }
    create_dir(dir)?;
    if let Some(key_dir) = paths.key.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(key_dir)?;
    }

    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(opts.validity_days.into());
    params.serial_number = Some(random_serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("edist cluster CA {cluster_name}"));
    dn.push(DnType::OrganizationName, cluster_name);
    params.distinguished_name = dn;
    // Path length 0: the CA signs gateway certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)?;
    let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
    // Key first: a certificate without its key is useless, a key without its certificate harmless.
    write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&paths.cert, cert.pem().as_bytes(), false)?;
    Ok(paths)
}

/// Issues a certificate for gateway `name` signed by the CA in `dir`: CN and DNS SAN = `name`,
/// usable for both TLS server and client authentication, valid `validity_days` from now (see
/// [`IssueOptions`] for overrides). Writes `<name>.pem` and `<name>.key` (mode 0600) into `dir`.
///
/// With [`IssueOptions::device`], `name` is a device's node name (`alive@host`): the
/// certificate's CN is that name, it has no DNS name (a device is no TLS server, and no gateway
/// accepts it as one: see [`crate::fabric::identity::certificate_identity`]), and it grants exactly
/// that node name (SAN URI `edist:device:<name>`); the role defaults to the hub's `[devices]
/// role` unless `role` is given.
pub fn issue(dir: &Path, name: &str, validity_days: u32, extra: IssueOptions) -> Result<NodePaths> {
    match extra.device {
        true => check_device_name(name)?,
        false => check_name(name)?,
    }
    let paths = node_paths(dir, name);
    if !extra.force && (exists(&paths.cert)? || exists(&paths.key)?) {
        return Err(PkiError::CertExists { name: name.to_owned(), path: paths.cert });
    }
    let now = OffsetDateTime::now_utc();
    let not_before = extra.not_before.unwrap_or(now - BACKDATE);
    let not_after = extra.not_after.unwrap_or(now + Duration::days(validity_days.into()));
    if not_after <= not_before {
        return Err(PkiError::BadValidity(format!("not_after {not_after} is not after not_before {not_before}")));
    }
    if extra.not_after.is_none() && validity_days == 0 {
        return Err(PkiError::BadValidity("a certificate needs at least one day of validity".into()));
    }

    let ca = CaPaths { cert: dir.join(CA_CERT_FILE), key: extra.ca_key.clone().unwrap_or_else(|| ca_key_path(dir)) };
    if !exists(&ca.key)? && !exists(&ca.cert)? {
        return Err(PkiError::NoCa(dir.to_owned()));
    }
    let ca_key_pem = read_to_string(&ca.key)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| PkiError::Rcgen { path: ca.key.clone(), error })?;
    let ca_cert_pem = read_to_string(&ca.cert)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)
        .map_err(|error| PkiError::Rcgen { path: ca.cert.clone(), error })?;

    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let uri = |s: String| {
        s.clone().try_into().map(SanType::URI).map_err(|_| PkiError::BadGrant { value: s, why: "not an IA5 string" })
    };
    if extra.device {
        params.subject_alt_names = vec![uri(format!("{DEVICE_URI}{name}"))?];
    } else {
        let dns = name.try_into().map_err(|_| PkiError::BadName { name: name.to_owned(), why: "not an IA5 string" })?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
    }
    for p in &extra.nodes {
        check_grant(p, false)?;
        params.subject_alt_names.push(uri(format!("{NODES_URI}{p}"))?);
    }
    if let Some(r) = &extra.role {
        check_grant(r, true)?;
        params.subject_alt_names.push(uri(format!("{ROLE_URI}{r}"))?);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match extra.device {
        // A device only ever dials: it cannot serve TLS as anyone.
        true => vec![ExtendedKeyUsagePurpose::ClientAuth],
        false => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(PkiError::Generate)?;
    write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
    write_file(&paths.cert, cert.pem().as_bytes(), false)?;
    Ok(paths)
}

/// Issues a new certificate and key for gateway `name`, which has one in `dir` already: the
/// same grants (node names, role), a fresh key, valid `validity_days` from now. Returns the
/// paths and the grant of the certificate it replaced (its serial, for a revocation list).
pub fn renew(dir: &Path, name: &str, validity_days: u32, ca_key: Option<PathBuf>) -> Result<(NodePaths, Grant)> {
    if !name.contains('@') {
        check_name(name)?;
    }
    let old_path = node_paths(dir, name).cert;
    let old = load_certs(&old_path)?.into_iter().next().ok_or(PkiError::NoCertificate(old_path))?;
    let old = certificate_grant(&old);
    // A certificate without node grants allows every name: renew it as such.
    let nodes = if old.nodes == ["*"] || old.device.is_some() { vec![] } else { old.nodes.clone() };
    let device = old.device.is_some();
    let opts = IssueOptions { force: true, nodes, role: old.role.clone(), ca_key, device, ..Default::default() };
    Ok((issue(dir, name, validity_days, opts)?, old))
}

/// Checks that `name` can be a device's node name: `alive@host`, one `@`, both parts of
/// letters, digits, `_`, `-` and `.` (what `-sname`/`-name` accept, minus quoting tricks).
pub fn check_device_name(name: &str) -> Result<()> {
    let bad = |why| Err(PkiError::BadName { name: name.to_owned(), why });
    let part_ok = |p: &str| {
        !p.is_empty() && p.len() <= 255 && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match name.split_once('@') {
        Some((alive, host)) if part_ok(alive) && part_ok(host) => {}
        _ => return bad("a device name is a node name, alive@host (letters, digits, '_', '-', '.')"),
    }
    if name.eq_ignore_ascii_case("ca") {
        return bad("\"ca\" is reserved for the CA files");
    }
    Ok(())
}

/// Checks that `name` can be a gateway identity: a DNS name (it is the certificate's DNS SAN
/// and the TLS server name), not an IP address, not `ca` (it would clobber the CA files).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| Err(PkiError::BadName { name: name.to_owned(), why });
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return bad("a gateway name has 1 to 253 characters");
    }
    if name.eq_ignore_ascii_case("ca") {
        return bad("\"ca\" is reserved for the CA files");
    }
    if name.contains('*') {
        return bad("wildcards are not allowed");
    }
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        Ok(_) => bad("an IP address cannot be a gateway name"),
        Err(_) => bad("a gateway name must be a DNS name (letters, digits, '-', '.')"),
    }
}

/// Loads every certificate of a PEM file (other PEM sections are skipped). Fails if there is
/// none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))?;
    let certs = iter.collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

fn pem_error(path: &Path, e: rustls_pki_types::pem::Error) -> PkiError {
    match e {
        rustls_pki_types::pem::Error::Io(error) => PkiError::Io { path: path.to_owned(), error },
        error => PkiError::Pem { path: path.to_owned(), error },
    }
}

/// A positive 127-bit serial number (RFC 5280 allows up to 20 octets; the high bit stays clear
/// so the DER integer is never negative).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero octet to strip
    SerialNumber::from_slice(&bytes)
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|error| PkiError::Io { path: path.to_owned(), error })
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|error| PkiError::Io { path: path.to_owned(), error })
}

fn create_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|error| PkiError::Io { path: dir.to_owned(), error })
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename, so
/// the file is either the old or the new content. `secret` files get mode 0600 from creation.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<()> {
    let io_err = |error| PkiError::Io { path: path.to_owned(), error };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, if secret { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = secret;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_round_trip_through_the_certificate() {
        let dir = std::env::temp_dir().join(format!("edist-grant-{}-{:x}", std::process::id(), rand::random::<u32>()));
        init_ca(&dir, "t", &CaOptions::default()).unwrap();
        let opts = IssueOptions {
            nodes: vec!["board7*@*".into(), "x@h".into()],
            role: Some("device".into()),
            ..Default::default()
        };
        let p = issue(&dir, "gw-board7", 30, opts).unwrap();
        let der = load_certs(&p.cert).unwrap().remove(0);
        let g = certificate_grant(&der);
        assert_eq!(g.nodes, vec!["board7*@*".to_string(), "x@h".into()]);
        assert_eq!(g.role.as_deref(), Some("device"));
        assert_eq!(g.serial.len(), 32, "{}", g.serial);
        assert!(g.allows("board7a@host") && g.allows("x@h") && !g.allows("evil@host"));
        // Without grants, every name.
        let p = issue(&dir, "gw-plain", 30, IssueOptions::default()).unwrap();
        let g = certificate_grant(&load_certs(&p.cert).unwrap().remove(0));
        assert_eq!((g.nodes, g.role), (vec!["*".to_string()], None));
        // Bad patterns are refused before anything is written.
        let bad = IssueOptions { nodes: vec!["a b".into()], ..Default::default() };
        assert!(matches!(issue(&dir, "gw-bad", 30, bad), Err(PkiError::BadGrant { .. })));
        let bad = IssueOptions { role: Some("de*vice".into()), ..Default::default() };
        assert!(matches!(issue(&dir, "gw-bad2", 30, bad), Err(PkiError::BadGrant { .. })));
        assert!(!node_paths(&dir, "gw-bad").cert.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("edist-pki-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_issue_load() {
        let dir = tempdir("basic");
        let ca = init_ca(&dir, "test", &CaOptions::default()).expect("init");
        assert!(matches!(init_ca(&dir, "test", &CaOptions::default()), Err(PkiError::CaExists(_))));
        let node = issue(&dir, "gw-a", 30, IssueOptions::default()).expect("issue");
        assert!(matches!(issue(&dir, "gw-a", 30, IssueOptions::default()), Err(PkiError::CertExists { .. })));
        issue(&dir, "gw-a", 30, IssueOptions { force: true, ..Default::default() }).expect("reissue");
        #[cfg(unix)]
        for key in [&ca.key, &node.key] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        assert_eq!(load_certs(&ca.cert).expect("ca").len(), 1);
        assert_eq!(load_certs(&node.cert).expect("cert").len(), 1);
        load_key(&node.key).expect("key");
        init_ca(&dir, "test", &CaOptions { force: true, ..Default::default() }).expect("forced init");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_ca_key_has_a_directory_of_its_own_and_renewal_keeps_the_grants() {
        let dir = tempdir("layout");
        let ca = init_ca(&dir, "test", &CaOptions::default()).expect("init");
        assert_eq!(ca.key, dir.join(CA_KEY_DIR).join(CA_KEY_FILE));
        assert!(!dir.join(CA_KEY_FILE).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(CA_KEY_DIR)).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let opts = IssueOptions { nodes: vec!["b*@*".into()], role: Some("device".into()), ..Default::default() };
        let p = issue(&dir, "gw-b", 30, opts).expect("issue");
        let before = load_certs(&p.cert).expect("cert");
        let (p2, old) = renew(&dir, "gw-b", 60, None).expect("renew");
        assert_eq!(p2, p);
        let after = load_certs(&p.cert).expect("cert");
        assert_ne!(before, after);
        let g = certificate_grant(&after[0]);
        assert_eq!((g.nodes, g.role), (vec!["b*@*".to_string()], Some("device".to_string())));
        assert_eq!(old.serial, certificate_grant(&before[0]).serial);
        assert!(matches!(renew(&dir, "gw-none", 1, None), Err(PkiError::Io { .. })));
        // An older layout (ca.key beside ca.pem) still signs.
        std::fs::rename(&ca.key, dir.join(CA_KEY_FILE)).expect("move");
        assert_eq!(ca_key_path(&dir), dir.join(CA_KEY_FILE));
        issue(&dir, "gw-c", 1, IssueOptions::default()).expect("issue with the old layout");
        assert!(matches!(init_ca(&dir, "test", &CaOptions::default()), Err(PkiError::CaExists(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_device_certificate_grants_one_node_name_and_is_no_gateway() {
        let dir = tempdir("device");
        init_ca(&dir, "t", &CaOptions::default()).unwrap();
        let opts = IssueOptions { device: true, nodes: vec!["*".into()], ..Default::default() };
        let p = issue(&dir, "sensor1@board", 30, opts).unwrap();
        let der = load_certs(&p.cert).unwrap().remove(0);
        let g = certificate_grant(&der);
        assert_eq!(g.device.as_deref(), Some("sensor1@board"));
        assert_eq!(g.nodes, ["sensor1@board"]);
        assert!(g.allows("sensor1@board") && !g.allows("sensor2@board"));
        assert_eq!(crate::fabric::identity::certificate_identity(&der), None);
        let bad = IssueOptions { device: true, ..Default::default() };
        for name in ["noat", "a@b@c", "@b", "a@", "a b@c", "a@b'"] {
            assert!(issue(&dir, name, 30, bad.clone()).is_err(), "{name}");
        }
        let (_, old) = renew(&dir, "sensor1@board", 30, None).unwrap();
        assert_eq!(old.device.as_deref(), Some("sensor1@board"));
        let der = load_certs(&p.cert).unwrap().remove(0);
        assert_eq!(certificate_grant(&der).device.as_deref(), Some("sensor1@board"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names() {
        for ok in ["gw-a", "a", "host1.example.org", "gw_1"] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "ca", "CA", "a/b", "../x", "1.2.3.4", "*.x", "a b", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempdir("errs");
        let e = load_certs(&dir.join("missing.pem")).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("empty.pem");
        std::fs::write(&p, "hello\n").expect("write");
        let e = load_certs(&p).expect_err("empty");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let e = load_key(&p).expect_err("no key");
        assert!(e.to_string().contains("empty.pem"), "{e}");
        let e = issue(&dir, "gw", 1, IssueOptions::default()).expect_err("no CA");
        assert!(matches!(e, PkiError::NoCa(_)), "{e}");
        std::fs::write(dir.join(CA_CERT_FILE), "x").expect("write");
        let e = issue(&dir, "gw", 1, IssueOptions::default()).expect_err("no CA key");
        assert!(e.to_string().contains("ca.key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
