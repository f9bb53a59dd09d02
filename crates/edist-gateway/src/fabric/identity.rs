//! Who we are on the fabric (our [`TlsIdentity`]: the cluster CA, our chain and key) and who a
//! certificate says its holder is ([`certificate_identity`]), for every transport.

use super::error::Result;
use crate::pki::{self, NodePaths};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Our TLS identity: the cluster CA to trust, our certificate chain and key.
pub struct TlsIdentity {
    /// Trust anchors: the cluster CA certificate(s).
    pub ca: Vec<CertificateDer<'static>>,
    /// Our certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("ca", &self.ca.len())
            .field("identity", &self.identity())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity { ca: self.ca.clone(), chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl TlsIdentity {
    /// Loads `ca.pem`, `<name>.pem` and `<name>.key` from a certificate directory (the layout
    /// written by [`pki::init_ca`] and [`pki::issue`]).
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        Self::from_paths(&pki::node_paths(dir, name))
    }

    /// Loads the files written by [`pki::issue`].
    pub fn from_paths(paths: &NodePaths) -> Result<Self> {
        Self::load_files(&paths.ca, &paths.cert, &paths.key)
    }

    /// Loads the CA certificate(s), our certificate chain and our key from PEM files.
    pub fn load_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        Ok(TlsIdentity { ca: pki::load_certs(ca)?, chain: pki::load_certs(cert)?, key: pki::load_key(key)? })
    }

    /// The identity (CN, else first DNS SAN) of our own certificate.
    pub fn identity(&self) -> Option<String> {
        certificate_identity(self.chain.first()?)
    }
}

/// The crypto provider used everywhere (ring), independent of any process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The identity of a certificate: its subject CN, else its first DNS SAN.
pub fn certificate_identity(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    // A device's certificate (`edist certs issue --device`) identifies a device BEAM at a hub,
    // never a gateway: the same CA signs it, so without this a device could link as a peer.
    if crate::pki::certificate_grant(der).device.is_some() {
        return None;
    }
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()) {
        if !cn.is_empty() {
            return Some(cn.to_owned());
        }
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) if !s.is_empty() => Some((*s).to_owned()),
        _ => None,
    })
}
