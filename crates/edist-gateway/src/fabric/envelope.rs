//! Signed datagrams for membership (sans IO).
//!
//! Membership runs over plain UDP, so every datagram carries its sender's certificate and a
//! signature made with the certificate's key: a receiver checks the chain against the cluster
//! CA (and its validity), then the signature, and knows the sender by the certificate's
//! identity, as a TLS link would. A timestamp bounds replays to [`MAX_SKEW`].
//!
//! Layout: `"EDG1" | u64 millis since the epoch | u16 len, certificate (DER) | u16 len,
//! payload | u16 signature scheme | signature` — the signature covers everything before it.

use edist_proto::codec::{CodecError, Reader};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{Signer, SigningKey};
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"EDG1";

/// Largest datagram accepted or sent.
pub const MAX_DATAGRAM: usize = 8 * 1024;

/// How far a datagram's timestamp may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("not an edist membership datagram")]
    Magic,
    #[error("truncated or oversized datagram")]
    Malformed,
    #[error("timestamp {0} ms away from our clock")]
    Skew(i128),
    #[error("certificate refused: {0}")]
    Certificate(String),
    #[error("certificate without an identity")]
    NoIdentity,
    #[error("bad signature")]
    Signature,
    #[error("signing: {0}")]
    Sign(String),
}

/// A verified datagram: who sent it (certificate identity and grant) and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The sender's certificate identity.
    pub sender: Arc<str>,
    /// What the sender's certificate grants it.
    pub grant: Arc<crate::pki::Grant>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Seals our datagrams. Clones share their keys, so [`Sealer::replace`] (a renewed
/// certificate) reaches the one the membership task owns.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<RwLock<SealKeys>>,
}

struct SealKeys {
    cert: Vec<u8>,
    signer: Box<dyn Signer>,
}

impl SealKeys {
    fn new(
        provider: &CryptoProvider,
        chain: &[CertificateDer<'static>],
        key: &SigningKeyDer,
    ) -> Result<SealKeys, EnvelopeError> {
        let cert = chain.first().ok_or(EnvelopeError::NoIdentity)?.to_vec();
        let key: Arc<dyn SigningKey> =
            provider.key_provider.load_private_key(key.clone_key()).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        let signer = key.choose_scheme(SCHEMES).ok_or_else(|| {
            EnvelopeError::Sign(format!("no supported signature scheme for a {:?} key", key.algorithm()))
        })?;
        Ok(SealKeys { cert, signer })
    }
}

impl Sealer {
    /// A sealer for our certificate and key.
    pub fn new(
        provider: &CryptoProvider,
        chain: &[CertificateDer<'static>],
        key: &SigningKeyDer,
    ) -> Result<Sealer, EnvelopeError> {
        Ok(Sealer { keys: Arc::new(RwLock::new(SealKeys::new(provider, chain, key)?)) })
    }

    /// Seals with another certificate and key from now on, in every clone.
    pub fn replace(
        &self,
        provider: &CryptoProvider,
        chain: &[CertificateDer<'static>],
        key: &SigningKeyDer,
    ) -> Result<(), EnvelopeError> {
        let keys = SealKeys::new(provider, chain, key)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    /// The datagram for `payload`, stamped `now_ms`.
    pub fn seal(&self, payload: &[u8], now_ms: u64) -> Result<Vec<u8>, EnvelopeError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(16 + keys.cert.len() + payload.len() + 80);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&now_ms.to_be_bytes());
        put_bytes(&mut out, &keys.cert)?;
        put_bytes(&mut out, payload)?;
        let sig = keys.signer.sign(&out).map_err(|e| EnvelopeError::Sign(e.to_string()))?;
        out.extend_from_slice(&u16::from(keys.signer.scheme()).to_be_bytes());
        out.extend_from_slice(&sig);
        if out.len() > MAX_DATAGRAM {
            return Err(EnvelopeError::Malformed);
        }
        Ok(out)
    }
}

/// The private key type [`Sealer::new`] takes.
pub type SigningKeyDer = rustls_pki_types::PrivateKeyDer<'static>;

/// Signature schemes we sign with and accept (ECDSA as `edist certs` issues, and Ed25519).
const SCHEMES: &[SignatureScheme] =
    &[SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384, SignatureScheme::ED25519];

/// A sender's certificate, verified once and remembered.
struct Known {
    sender: Arc<str>,
    grant: Arc<crate::pki::Grant>,
    verified_at: UnixTime,
}

/// Opens datagrams: checks certificates against the cluster CA, then signatures.
pub struct Opener {
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
    /// Certificates already verified, by DER (bounded; re-verified every minute so that
    /// expiry is noticed).
    known: HashMap<Vec<u8>, Known>,
}

/// Certificates remembered at most.
const MAX_KNOWN: usize = 4096;

impl Opener {
    /// An opener trusting `verifier`'s roots.
    pub fn new(verifier: Arc<dyn ClientCertVerifier>, provider: Arc<CryptoProvider>) -> Opener {
        Opener { verifier, provider, known: HashMap::new() }
    }

    /// Verifies `datagram` as of `now_ms`.
    pub fn open<'a>(&mut self, datagram: &'a [u8], now_ms: u64) -> Result<Opened<'a>, EnvelopeError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(EnvelopeError::Malformed);
        }
        let mut r = Reader::new(datagram);
        if r.array::<4>().ok().as_ref() != Some(MAGIC) {
            return Err(EnvelopeError::Magic);
        }
        let stamp = r.u64()?;
        let cert = r.bytes_u16(MAX_DATAGRAM)?;
        let payload = r.bytes_u16(MAX_DATAGRAM)?;
        let signed = datagram.get(..r.position()).ok_or(EnvelopeError::Malformed)?;
        let scheme = r.u16()?;
        let sig = r.take_rest();
        let skew = i128::from(stamp) - i128::from(now_ms);
        if skew.unsigned_abs() > MAX_SKEW.as_millis() {
            return Err(EnvelopeError::Skew(skew));
        }
        let (sender, grant) = self.certificate(cert, now_ms)?;
        let scheme = SignatureScheme::from(scheme);
        if !SCHEMES.contains(&scheme) {
            return Err(EnvelopeError::Signature);
        }
        let algs = self
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, a)| *a)
            .ok_or(EnvelopeError::Signature)?;
        let der = CertificateDer::from(cert);
        let ee = webpki::EndEntityCert::try_from(&der).map_err(|_| EnvelopeError::Signature)?;
        if !algs.iter().any(|alg| ee.verify_signature(*alg, signed, sig).is_ok()) {
            return Err(EnvelopeError::Signature);
        }
        Ok(Opened { sender, grant, payload })
    }

    fn certificate(&mut self, cert: &[u8], now_ms: u64) -> Result<(Arc<str>, Arc<crate::pki::Grant>), EnvelopeError> {
        let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms));
        if let Some(k) = self.known.get(cert) {
            if now.as_secs().saturating_sub(k.verified_at.as_secs()) < 60 {
                return Ok((k.sender.clone(), k.grant.clone()));
            }
        }
        let der = CertificateDer::from(cert);
        self.verifier.verify_client_cert(&der, &[], now).map_err(|e| EnvelopeError::Certificate(e.to_string()))?;
        let sender: Arc<str> = super::identity::certificate_identity(&der).ok_or(EnvelopeError::NoIdentity)?.into();
        let grant = Arc::new(crate::pki::certificate_grant(cert));
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        self.known.insert(cert.to_vec(), Known { sender: sender.clone(), grant: grant.clone(), verified_at: now });
        Ok((sender, grant))
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EnvelopeError> {
    let n = u16::try_from(b.len()).map_err(|_| EnvelopeError::Malformed)?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

impl From<CodecError> for EnvelopeError {
    fn from(_: CodecError) -> Self {
        EnvelopeError::Malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::identity::{crypto_provider, TlsIdentity};
    use crate::fabric::tls::membership_verifier;
    use crate::pki;

    /// A cluster with gw-a, and gw-x of another CA.
    fn identities() -> (TlsIdentity, TlsIdentity) {
        let d = std::env::temp_dir().join(format!("edist-envelope-{}", rand::random::<u64>()));
        let other = d.join("other");
        pki::init_ca(&d, "test", &Default::default()).unwrap();
        pki::issue(&d, "gw-a", 30, Default::default()).unwrap();
        pki::init_ca(&other, "other", &Default::default()).unwrap();
        pki::issue(&other, "gw-x", 30, Default::default()).unwrap();
        let ids = (TlsIdentity::load(&d, "gw-a").unwrap(), TlsIdentity::load(&other, "gw-x").unwrap());
        let _ = std::fs::remove_dir_all(&d);
        ids
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    #[test]
    fn sealed_datagrams_open_with_the_sender_identity_and_tampering_is_refused() {
        let (a, x) = identities();
        let p = crypto_provider();
        let sealer = Sealer::new(&p, &a.chain, &a.key).unwrap();
        let mut opener = Opener::new(membership_verifier(&a).unwrap(), p.clone());
        let now = now_ms();
        let dg = sealer.seal(b"hello members", now).unwrap();
        let o = opener.open(&dg, now).unwrap();
        assert_eq!((&*o.sender, o.payload), ("gw-a", &b"hello members"[..]));
        // The certificate is cached now; the signature is still checked every time.
        let mut bad = dg.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(opener.open(&bad, now), Err(EnvelopeError::Signature));
        // A flipped payload byte breaks the signature.
        let mut bad = dg.clone();
        let at = dg.windows(5).position(|w| w == b"hello").unwrap();
        bad[at] = b'j';
        assert_eq!(opener.open(&bad, now), Err(EnvelopeError::Signature));
        // Replays outside the window.
        assert!(matches!(opener.open(&dg, now + 61_000), Err(EnvelopeError::Skew(_))));
        // Another CA's member is refused.
        let xs = Sealer::new(&p, &x.chain, &x.key).unwrap();
        assert!(matches!(opener.open(&xs.seal(b"hi", now).unwrap(), now), Err(EnvelopeError::Certificate(_))));
        // Garbage and truncation.
        assert_eq!(opener.open(b"nope", now), Err(EnvelopeError::Magic));
        for n in 0..dg.len() {
            assert!(opener.open(&dg[..n], now).is_err(), "truncated at {n}");
        }
    }
}
