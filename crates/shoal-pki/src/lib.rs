//! The cluster PKI: a root CA (ECDSA P-256), node certificates whose subject carries the node id
//! (CN), its role (OU) and the cluster id (O), CA pinning for join tokens, and the rustls pieces
//! every connection between nodes is made of ([`tls`]).
//!
//! The CA decides identity: a certificate signing request contributes only its public key (its
//! self-signature is checked); subject and names come from the CA's caller. Private keys are
//! generated where they are used and never travel.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};

pub mod tls;

/// DNS name every manager certificate carries; clients verify managers by it.
pub const MANAGER_NAME: &str = "shoal-manager";
/// DNS name every worker certificate carries.
pub const WORKER_NAME: &str = "shoal-worker";
/// Default validity of node certificates.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Validity of the root CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A manager: Raft, control API, dispatcher.
    Manager,
    /// A worker: dispatcher only.
    Worker,
    /// A remote CLI user: control API only; never a server.
    Admin,
}

impl Role {
    /// The OU value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "admin" => Ok(Role::Admin),
            other => Err(PkiError::BadSubject(format!("unknown role {other:?} in the certificate's OU"))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a PKI operation failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key or certificate generation failed.
    #[error("cannot generate {0}")]
    Generate(String),
    /// Input is not the PEM/DER it should be.
    #[error("invalid {0}")]
    Invalid(String),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The certificate signing request does not parse or its signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    /// The certificate was not issued by this cluster's CA.
    #[error("the certificate was not issued by this cluster's CA ({0})")]
    NotSignedByCa(String),
    /// The certificate has expired.
    #[error("the certificate expired at {} (renew it in time, or remove the node and join it again)", rfc3339(*not_after))]
    Expired {
        /// End of validity.
        not_after: SystemTime,
    },
    /// The certificate is not valid yet (clock skew?).
    #[error("the certificate is not valid before {} (is this machine's clock right?)", rfc3339(*not_before))]
    NotYetValid {
        /// Start of validity.
        not_before: SystemTime,
    },
    /// Subject fields are missing or wrong.
    #[error("certificate subject: {0}")]
    BadSubject(String),
    /// The manager presented a CA other than the join token names.
    #[error("the manager at {addr} presented CA {presented}, but the join token expects CA {expected}: the token is for another cluster, or something is in the middle")]
    DigestMismatch {
        /// The manager's address.
        addr: String,
        /// Digest from the token.
        expected: String,
        /// Digest of the CA the manager presented.
        presented: String,
    },
    /// TLS or TCP failed.
    #[error("{0}")]
    Connect(String),
    /// File system.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub use shoal_api::timefmt::rfc3339;

fn odt(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn gen(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Generate(format!("{what}: {e}"))
}

/// SHA-256 of a certificate's DER, as 50 lower-case base-36 digits (the join token alphabet).
pub fn ca_digest(cert_der: &[u8]) -> String {
    let mut n: Vec<u8> = Sha256::digest(cert_der).to_vec();
    let mut digits = Vec::with_capacity(50);
    for _ in 0..50 {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize]);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

fn pem_to_der(pem: &str, what: &str) -> Result<CertificateDer<'static>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Invalid(format!("{what}: {e}")))
}

/// DER of the first certificate in `pem`.
pub fn cert_der_from_pem(pem: &str) -> Result<Vec<u8>, PkiError> {
    pem_to_der(pem, "certificate").map(|c| c.to_vec())
}

/// PEM of a DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    let cfg = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), cfg)
}

/// The cluster's root certificate authority.
pub struct RootCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

// The key must never reach a log line through `{:?}`.
impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa").field("digest", &self.digest()).field("key", &"<redacted>").finish()
    }
}

/// Who a node certificate is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubject {
    /// Node id (CN).
    pub node_id: String,
    /// Role (OU).
    pub role: Role,
    /// Cluster id (O).
    pub cluster_id: String,
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

impl RootCa {
    /// A new root CA for `cluster_id`, valid from `now` for `validity`.
    pub fn generate(cluster_id: &str, now: SystemTime, validity: Duration) -> Result<RootCa, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen("the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "shoal root CA");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = odt(now - Duration::from_secs(300));
        params.not_after = odt(now + validity);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).map_err(gen("the CA certificate"))?;
        Ok(RootCa { cert_pem: cert.pem(), cert_der: cert.der().clone(), key })
    }

    /// The CA from its certificate and key; the key must belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, PkiError> {
        let cert_der = pem_to_der(cert_pem, "CA certificate")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Invalid(format!("CA key: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch);
        }
        Ok(RootCa { cert_pem: cert_pem.to_string(), cert_der, key })
    }

    /// The certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The private key (PEM). Handle as a secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// What join tokens pin: [`ca_digest`] of the certificate.
    pub fn digest(&self) -> String {
        ca_digest(&self.cert_der)
    }

    /// Issues a certificate for the key in `csr_pem`, to `subject`, valid in the given window.
    pub fn issue(
        &self,
        csr_pem: &str,
        subject: &NodeSubject,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let valid =
            |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid(&subject.node_id) || !valid(&subject.cluster_id) {
            return Err(PkiError::BadSubject(format!("bad node or cluster id in {subject:?}")));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, subject.role.as_str());
        dn.push(DnType::OrganizationName, subject.cluster_id.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let name = |s: &str| s.try_into().map(SanType::DnsName).map_err(gen("a subject name"));
        params.extended_key_usages = match subject.role {
            Role::Manager => {
                params.subject_alt_names = vec![name(MANAGER_NAME)?, name(&subject.node_id)?];
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
            Role::Worker => {
                params.subject_alt_names = vec![name(WORKER_NAME)?, name(&subject.node_id)?];
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            }
            Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.not_before = odt(not_before);
        params.not_after = odt(not_after);
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(gen("the issuer"))?;
        let cert = params.signed_by(&csr.public_key, &issuer).map_err(gen("the node certificate"))?;
        Ok(cert.pem())
    }
}

/// A node's private key.
pub struct NodeKey(KeyPair);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<NodeKey, PkiError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map(NodeKey).map_err(gen("a node key"))
    }

    /// A key from PEM.
    pub fn from_pem(pem: &str) -> Result<NodeKey, PkiError> {
        KeyPair::from_pem(pem).map(NodeKey).map_err(|e| PkiError::Invalid(format!("node key: {e}")))
    }

    /// The key (PEM). Handle as a secret.
    pub fn key_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// A certificate signing request for this key (the subject is a hint the CA ignores).
    pub fn csr_pem(&self, node_id: &str) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.0).map_err(gen("a certificate signing request"))?;
        csr.pem().map_err(gen("a certificate signing request"))
    }

    /// Whether `cert_pem` is a certificate for this key.
    pub fn matches(&self, cert_pem: &str) -> Result<bool, PkiError> {
        let der = pem_to_der(cert_pem, "certificate")?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
        Ok(x509.public_key().subject_public_key.data.as_ref() == self.0.public_key_raw())
    }
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// CN.
    pub node_id: String,
    /// OU.
    pub role: Role,
    /// O.
    pub cluster_id: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number (hex).
    pub serial: String,
}

fn system_time(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH
    }
}

/// The identity in a DER certificate (not verified: see [`verify_leaf`]).
pub fn identity_from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    let subject = x509.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>, what: &str| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| PkiError::BadSubject(format!("no {what}")))
    };
    let node_id = one(&mut subject.iter_common_name(), "CN (node id)")?;
    let role: Role = one(&mut subject.iter_organizational_unit(), "OU (role)")?.parse()?;
    let cluster_id = one(&mut subject.iter_organization(), "O (cluster id)")?;
    Ok(PeerIdentity {
        node_id,
        role,
        cluster_id,
        not_before: system_time(x509.validity().not_before.timestamp()),
        not_after: system_time(x509.validity().not_after.timestamp()),
        serial: x509.raw_serial_as_string(),
    })
}

/// The identity in a PEM certificate (not verified).
pub fn identity_from_pem(pem: &str) -> Result<PeerIdentity, PkiError> {
    identity_from_der(&pem_to_der(pem, "certificate")?)
}

/// Checks that `leaf_der` was issued by the CA `ca_der` and is valid at `now`; returns who it
/// names.
pub fn verify_leaf(leaf_der: &[u8], ca_der: &[u8], now: SystemTime) -> Result<PeerIdentity, PkiError> {
    let id = identity_from_der(leaf_der)?;
    let verifier = tls::client_verifier(ca_der, false)?;
    let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    match verifier.verify_client_cert(&CertificateDer::from(leaf_der.to_vec()), &[], at) {
        Ok(_) => Ok(id),
        Err(e) => Err(tls::classify(&e, &id)),
    }
}

/// When to renew a certificate: a point in the second half of its lifetime, `fraction` (in
/// [0, 1), chosen by the caller at random) of the way through it.
pub fn renewal_at(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let f = if fraction.is_finite() { fraction.clamp(0.0, 1.0) } else { 0.0 };
    (not_before + life.mul_f64(0.5 + 0.5 * f)).min(not_after)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a secret (a private key) atomically, readable by its owner only (0600 from the start).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_file(path, contents, 0o600)
}

/// Writes a public file (a certificate) atomically, mode 0644.
pub fn write_public_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_file(path, contents, 0o644)
}

#[cfg(test)]
mod tests;
