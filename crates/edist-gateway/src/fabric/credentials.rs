//! The TLS material of a running gateway, swappable while it runs.
//!
//! rustls configurations are built once per endpoint and shared by every handshake, so a
//! renewed certificate or a new `ca.pem` cannot be put into them. Instead the configurations
//! ask [`Credentials`] at every handshake: it is the certificate resolver of both sides
//! ([`ResolvesServerCert`], [`ResolvesClientCert`]) and, through [`ClientVerifier`] and
//! [`ServerVerifier`], the verifier of the peer's chain. [`Credentials::reload`] swaps
//! everything at once; links already up are not touched (their handshake is over), new ones
//! see the new certificate and trust anchors.

use super::error::FabricError;
use super::identity::{crypto_provider, TlsIdentity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, RwLock};

/// One consistent set: our certificate and key, and what we trust.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
}

impl Loaded {
    fn new(id: &TlsIdentity, provider: &Arc<CryptoProvider>) -> Result<Loaded, FabricError> {
        if id.chain.is_empty() {
            return Err(FabricError::Tls(rustls::Error::NoCertificatesPresented));
        }
        // Checks that the key is the certificate's: a reload between the copy of a renewed
        // certificate and that of its key must fail, not serve a pair that cannot handshake.
        let key = CertifiedKey::from_der(id.chain.clone(), id.key.clone_key(), provider)?;
        let mut roots = RootCertStore::empty();
        for cert in &id.ca {
            roots.add(cert.clone())?;
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| FabricError::Tls(rustls::Error::General(e.to_string())))?;
        Ok(Loaded { key: Arc::new(key), roots, clients, servers })
    }
}

/// The swappable TLS material (see the module docs).
#[derive(Debug)]
pub struct Credentials {
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    /// The identity as loaded, for membership's signatures.
    identity: RwLock<TlsIdentity>,
}

impl Credentials {
    /// Credentials for `id`.
    pub fn new(id: &TlsIdentity) -> Result<Arc<Credentials>, FabricError> {
        let provider = crypto_provider();
        let loaded = Loaded::new(id, &provider)?;
        Ok(Arc::new(Credentials {
            provider,
            current: RwLock::new(Arc::new(loaded)),
            identity: RwLock::new(id.clone()),
        }))
    }

    /// Serves `id` from now on. Nothing changes unless all of it is usable.
    pub fn reload(&self, id: &TlsIdentity) -> Result<(), FabricError> {
        let loaded = Arc::new(Loaded::new(id, &self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = id.clone();
        Ok(())
    }

    /// The identity currently served.
    pub fn identity(&self) -> TlsIdentity {
        self.identity.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The crypto provider of every configuration built on these credentials.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    fn current(&self) -> Arc<Loaded> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A verifier of client chains against the CA currently trusted.
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientVerifier(self.clone()))
    }

    /// A verifier of server chains against the CA currently trusted: by name, or (a seed,
    /// whose name is not known) any identity the CA signed.
    pub fn server_verifier(self: &Arc<Self>, any_identity: bool) -> Arc<dyn ServerCertVerifier> {
        Arc::new(ServerVerifier { creds: self.clone(), any_identity })
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client chains with whatever [`Credentials`] trusts at the time.
#[derive(Debug)]
pub struct ClientVerifier(Arc<Credentials>);

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from material that may be swapped; without any, a client
        // sends the one certificate it has, which is all a gateway has.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.current().clients.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies server chains with whatever [`Credentials`] trusts at the time.
#[derive(Debug)]
pub struct ServerVerifier {
    creds: Arc<Credentials>,
    /// A seed: the chain must lead to the cluster CA, but any identity is accepted (the link
    /// then knows its peer by that identity, as an accepted link does).
    any_identity: bool,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self.creds.current();
        if !self.any_identity {
            return current.servers.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &current.roots,
            intermediates,
            now,
            self.creds.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.creds.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.creds.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.creds.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki;

    #[test]
    fn reload_swaps_the_key_and_refuses_a_mismatched_pair() {
        let dir = std::env::temp_dir().join(format!("edist-creds-{}", rand::random::<u64>()));
        pki::init_ca(&dir, "t", &pki::CaOptions::default()).unwrap();
        pki::issue(&dir, "gw-a", 1, pki::IssueOptions::default()).unwrap();
        let old = TlsIdentity::load(&dir, "gw-a").unwrap();
        let creds = Credentials::new(&old).unwrap();
        let served = |c: &Credentials| ResolvesClientCert::resolve(c, &[], &[]).unwrap().cert[0].clone();
        assert_eq!(served(&creds), old.chain[0]);
        pki::issue(&dir, "gw-a", 1, pki::IssueOptions { force: true, ..Default::default() }).unwrap();
        let new = TlsIdentity::load(&dir, "gw-a").unwrap();
        // Half-copied: the new certificate with the old key.
        let mixed = TlsIdentity { key: old.key.clone_key(), ..new.clone() };
        assert!(creds.reload(&mixed).is_err());
        assert_eq!(served(&creds), old.chain[0]);
        creds.reload(&new).unwrap();
        assert_eq!(served(&creds), new.chain[0]);
        assert_eq!(creds.identity().chain, new.chain);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
