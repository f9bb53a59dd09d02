//! Facts about a gateway's certificate files, for `edist doctor`: who the certificate names,
//! when it is valid, whether the configured CA signed it and whether the key belongs to it.
//! The verdicts (ok, warn, fail) are the caller's.

use crate::fabric::identity::{certificate_identity, crypto_provider};
use crate::pki::{self, NodePaths, PkiError};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::UnixTime;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why the files could not be inspected at all.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CertCheckError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0}: not an X.509 certificate: {1}")]
    Parse(std::path::PathBuf, String),
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// The identity the certificate carries (CN, else first DNS name).
    pub identity: Option<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// `Ok` when the configured CA signed it (checked at a time inside its validity, so an
    /// expired certificate still shows who signed it); else what the verifier said.
    pub signed_by_ca: Result<(), String>,
    /// `Ok` when the private key belongs to the certificate.
    pub key_matches: Result<(), String>,
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// Reads and checks `ca.pem`, `<name>.pem` and `<name>.key`.
pub fn inspect(paths: &NodePaths) -> Result<CertFacts, CertCheckError> {
    let ca = pki::load_certs(&paths.ca)?;
    let chain = pki::load_certs(&paths.cert)?;
    let key = pki::load_key(&paths.key)?;
    let leaf = chain.first().ok_or_else(|| PkiError::NoCertificate(paths.cert.clone()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| CertCheckError::Parse(paths.cert.clone(), e.to_string()))?;
    let not_before = to_system_time(cert.validity().not_before);
    let not_after = to_system_time(cert.validity().not_after);

    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(ca.iter().cloned());
    let signed_by_ca = if added == 0 {
        Err(format!("{} holds no usable CA certificate", paths.ca.display()))
    } else {
        let at = not_before + (not_after.duration_since(not_before).unwrap_or_default() / 2);
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
            .build()
            .map_err(|e| e.to_string())
            .and_then(|v| {
                v.verify_client_cert(leaf, chain.get(1..).unwrap_or_default(), at)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
    };
    let key_matches = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &crypto_provider())
        .map(|_| ())
        .map_err(|e| e.to_string());
    Ok(CertFacts { identity: certificate_identity(leaf), not_before, not_after, signed_by_ca, key_matches })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_good_foreign_and_mismatched_certificates() {
        let base = std::env::temp_dir().join(format!("edist-certcheck-{}", std::process::id()));
        let (one, two) = (base.join("one"), base.join("two"));
        pki::init_ca(&one, "one", &pki::CaOptions::default()).unwrap();
        pki::init_ca(&two, "two", &pki::CaOptions::default()).unwrap();
        pki::issue(&one, "gw-a", 10, pki::IssueOptions::default()).unwrap();
        pki::issue(&two, "gw-b", 10, pki::IssueOptions::default()).unwrap();
        let f = inspect(&pki::node_paths(&one, "gw-a")).unwrap();
        assert_eq!(f.identity.as_deref(), Some("gw-a"));
        assert!(f.signed_by_ca.is_ok() && f.key_matches.is_ok(), "{f:?}");
        let days = f.not_after.duration_since(SystemTime::now()).unwrap().as_secs() / 86400;
        assert!((9..=10).contains(&days), "{days}");
        // gw-b's certificate checked against CA one; then with gw-a's key.
        let foreign = NodePaths { ca: one.join("ca.pem"), ..pki::node_paths(&two, "gw-b") };
        assert!(inspect(&foreign).unwrap().signed_by_ca.is_err());
        let mismatched = NodePaths { key: one.join("gw-a.key"), ..pki::node_paths(&two, "gw-b") };
        assert!(inspect(&mismatched).unwrap().key_matches.is_err());
        assert!(inspect(&pki::node_paths(&one, "nobody")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
