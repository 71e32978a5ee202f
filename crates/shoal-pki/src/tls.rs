//! rustls configurations for node-to-node connections, with certificates that can be replaced
//! while connections come and go (renewal does not restart anything), and the join step's
//! CA fetch pinned by the token's digest.
//!
//! One crypto provider: ring, passed explicitly to every builder.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{ca_digest, identity_from_der, PeerIdentity, PkiError, MANAGER_NAME};

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// Verifies client certificates against the CA; `optional`: a client may present none (the
/// join RPC), and the RPC layer then decides.
pub fn client_verifier(ca_der: &[u8], optional: bool) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let b = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider());
    let b = if optional { b.allow_unauthenticated() } else { b };
    b.build().map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))
}

/// Turns a rustls verification error into what to tell the user.
pub fn classify(e: &rustls::Error, id: &PeerIdentity) -> PkiError {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            PkiError::Expired { not_after: id.not_after }
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => PkiError::NotYetValid { not_before: id.not_before },
        other => PkiError::NotSignedByCa(other.to_string()),
    }
}

/// A node's current certificate and key, shared by its server and its clients; replacing it
/// affects new connections only.
#[derive(Debug, Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertStore {
    /// An empty store (a node that has no certificate yet).
    pub fn new() -> Arc<CertStore> {
        Arc::new(CertStore::default())
    }

    /// Uses `cert_pem` (the node's certificate) with `key_pem`, presenting `ca_der` after it.
    pub fn set(&self, cert_pem: &str, key_pem: &str, ca_der: &[u8]) -> Result<(), PkiError> {
        use rustls::pki_types::pem::PemObject;
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("node certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("node key: {e}")))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| PkiError::Invalid(format!("node key: {e}")))?;
        let ck = CertifiedKey::new(vec![leaf, CertificateDer::from(ca_der.to_vec())], signer);
        ck.keys_match().map_err(|_| PkiError::KeyMismatch)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(ck));
        Ok(())
    }

    /// Forgets the certificate (the node left its cluster).
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The identity of the current certificate.
    pub fn identity(&self) -> Option<PeerIdentity> {
        self.get().and_then(|ck| ck.cert.first().and_then(|c| identity_from_der(c).ok()))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

const ALPN_H2: &[u8] = b"h2";

/// Server side of every node's port: presents the node's certificate, asks clients for theirs
/// (optional: the join RPC comes without one; each RPC checks its caller).
pub fn server_config(ca_der: &[u8], certs: Arc<CertStore>) -> Result<rustls::ServerConfig, PkiError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(format!("TLS versions: {e}")))?
        .with_client_cert_verifier(client_verifier(ca_der, true)?)
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// Client side: trusts only the CA; presents `certs` when given (every node; not a node that is
/// joining).
pub fn client_config(ca_der: &[u8], certs: Option<Arc<CertStore>>) -> Result<rustls::ClientConfig, PkiError> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(format!("TLS versions: {e}")))?
        .with_root_certificates(roots(ca_der)?);
    let mut cfg = match certs {
        Some(c) => b.with_client_cert_resolver(c),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// Accepts a server only if its chain holds the CA with the pinned digest and the leaf is a
/// manager certificate issued by it; remembers what it saw.
#[derive(Debug)]
struct PinnedCa {
    expected: String,
    seen: Mutex<Option<Result<Vec<u8>, String>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let record = |r: Result<Vec<u8>, String>| *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        let Some(ca) = intermediates.iter().find(|c| ca_digest(c) == self.expected) else {
            let presented = intermediates.last().map(|c| ca_digest(c)).unwrap_or_else(|| "(none)".into());
            record(Err(presented));
            return Err(rustls::Error::General("CA digest mismatch".into()));
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(
            roots(ca).map_err(|e| rustls::Error::General(e.to_string()))?,
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        record(Ok(ca.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Fetches the cluster's CA certificate (DER) from the manager at `addr`, trusting nothing in
/// advance: the manager's TLS chain must contain a CA whose digest is `expected_digest` (from
/// the join token) and that CA must have issued the manager's certificate.
pub async fn fetch_ca(addr: SocketAddr, expected_digest: &str, timeout: Duration) -> Result<Vec<u8>, PkiError> {
    let pinned = Arc::new(PinnedCa { expected: expected_digest.to_string(), seen: Mutex::new(None) });
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Invalid(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from(MANAGER_NAME).map_err(|e| PkiError::Invalid(e.to_string()))?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let mut tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS with {addr} failed: {e}"))?;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        Ok::<(), String>(())
    };
    let outcome = tokio::time::timeout(timeout, attempt).await;
    let seen = pinned.seen.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (outcome, seen) {
        (_, Some(Err(presented))) => {
            Err(PkiError::DigestMismatch { addr: addr.to_string(), expected: expected_digest.to_string(), presented })
        }
        (Ok(Ok(())), Some(Ok(ca))) => Ok(ca),
        (Ok(Err(e)), _) => Err(PkiError::Connect(e)),
        (Ok(Ok(())), None) => Err(PkiError::Connect(format!("{addr} presented no certificate"))),
        (Err(_), _) => Err(PkiError::Connect(format!("no TLS answer from {addr} within {timeout:?}"))),
    }
}
