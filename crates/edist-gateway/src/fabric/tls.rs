//! TLS set-up of every transport: the rustls server and client configurations (TLS 1.3,
//! mutual, ALPN `edist/1`, no resumption: every link re-verifies the full chain), the verifier of
//! membership datagrams, and one fixed refusal whatever was wrong with a peer's certificate.
//!
//! Both sides take their certificate and trust from [`Credentials`] at each handshake, so a
//! reload reaches new links. QUIC wraps these configurations in quinn's ([`super::quic`]), TLS
//! over TCP uses them as they are ([`super::tcp`]).

use super::credentials::Credentials;
use super::error::Result;
use super::identity::{crypto_provider, TlsIdentity};
use rustls::client::Resumption;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol of gateway links.
pub const ALPN: &[u8] = b"edist/1";

/// The server name a seed dial asks for: unknown, so the seed verifier ignores it
/// ([`Credentials::server_verifier`]).
pub const SEED_SERVER_NAME: &str = "edist-seed";

fn root_store(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Verifies membership datagrams' certificates: chains to the cluster CA, valid now.
pub fn membership_verifier(id: &TlsIdentity) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    Ok(WebPkiClientVerifier::builder_with_provider(root_store(&id.ca)?, crypto_provider()).build()?)
}

/// The TLS server side of every transport: TLS 1.3, client certificate of the cluster CA
/// required, ALPN `edist/1`, no resumption. Certificate and trust come from `creds` at each
/// handshake, so a reload reaches new links.
pub fn tls_server_config(creds: &Arc<Credentials>) -> Result<rustls::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(creds.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(FixedRefusal::new(creds.client_verifier())))
        .with_cert_resolver(creds.clone());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every link verifies the full client chain (and its validity) again.
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tls)
}

/// The TLS client side of every transport: verifies the server against the cluster CA (by
/// name, or any identity for a seed) and presents our certificate, both as `creds` has them
/// at each handshake.
pub fn tls_client_config(creds: &Arc<Credentials>, any_identity: bool) -> Result<rustls::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(creds.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FixedRefusal::new(creds.server_verifier(any_identity))))
        .with_client_cert_resolver(creds.clone());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = Resumption::disabled();
    Ok(tls)
}

/// What a peer whose certificate is refused is told, whatever the cause (expired, unknown CA,
/// bad signature, ...): the TLS alert `access_denied` (QUIC: crypto error 0x131), with this
/// reason text. The cause (with details such as expiry times) stays in this gateway's log.
pub const CERT_REFUSED: &str = "invalid peer certificate: ApplicationVerificationFailure";

/// A certificate verifier that refuses as `inner` does, but with one fixed error: rustls's own
/// errors carry details (an expired certificate's dates, the names it is valid for) that QUIC
/// sends to the peer as the close reason, and a refused peer learns nothing from us.
#[derive(Debug)]
struct FixedRefusal<V: ?Sized> {
    inner: Arc<V>,
    /// When the last cause was logged (at most one line a second; the rest are counted).
    logged: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl<V: ?Sized> FixedRefusal<V> {
    fn new(inner: Arc<V>) -> Self {
        FixedRefusal { inner, logged: std::sync::Mutex::new((None, 0)) }
    }

    fn refuse(&self, e: rustls::Error) -> rustls::Error {
        let mut l = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if l.0.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            let more = std::mem::take(&mut l.1);
            l.0 = Some(now);
            tracing::info!("refused a peer's certificate: {e} ({more} more refused since the last line)");
        } else {
            l.1 += 1;
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
    }
}

impl rustls::server::danger::ClientCertVerifier for FixedRefusal<dyn rustls::server::danger::ClientCertVerifier> {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now).map_err(|e| self.refuse(e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl rustls::client::danger::ServerCertVerifier for FixedRefusal<dyn rustls::client::danger::ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map_err(|e| self.refuse(e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss).map_err(|e| self.refuse(e))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
