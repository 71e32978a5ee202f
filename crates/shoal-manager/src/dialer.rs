//! The node's certificate and its connections to other nodes: the certificate, key and CA
//! (kept under `<data-dir>/pki`), the TLS configurations made of them, and a cache of mTLS
//! channels to managers and agents.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use shoal_api::v1::membership_client::MembershipClient;
use tonic::transport::Channel;

use crate::error::ApiError;

/// Files of the node's PKI, under `<data-dir>/pki`.
const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";

/// The client TLS configuration as it changes (none before the node is in a cluster); Raft's
/// network reads it at every dial.
pub type ClientConfigSlot = Arc<RwLock<Option<Arc<rustls::ClientConfig>>>>;

/// Certificates and channels; cheap to clone.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    certs: Arc<shoal_pki::tls::CertStore>,
    ca: RwLock<Option<Vec<u8>>>,
    server: RwLock<Option<Arc<rustls::ServerConfig>>>,
    client: ClientConfigSlot,
    channels: Mutex<HashMap<String, Channel>>,
    /// What is wrong with this node's certificate, if anything (shown by `shoal info`).
    problem: Mutex<Option<String>>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

impl Dialer {
    /// The dialer of a node whose PKI files live in `dir`; loads them if present.
    pub fn open(dir: PathBuf) -> Self {
        let d = Dialer {
            inner: Arc::new(Inner {
                dir,
                certs: Arc::default(),
                ca: RwLock::new(None),
                server: RwLock::new(None),
                client: Arc::default(),
                channels: Mutex::new(HashMap::new()),
                problem: Mutex::new(None),
            }),
        };
        d.load();
        d
    }

    /// A (cached, lazily connected) mTLS channel to a manager's address.
    pub fn channel(&self, addr: &str) -> Result<Channel, ApiError> {
        self.tls_channel(addr, shoal_pki::MANAGER_NAME)
    }

    /// A (cached, lazily connected) mTLS channel to the node `node_id` at `addr` (its agent).
    pub fn node_channel(&self, addr: &str, node_id: &str) -> Result<Channel, ApiError> {
        self.tls_channel(addr, node_id)
    }

    fn tls_channel(&self, addr: &str, server_name: &str) -> Result<Channel, ApiError> {
        let key = format!("{server_name}@{addr}");
        let mut map = self.inner.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let cfg = self.tls_client_config().ok_or_else(|| {
            ApiError::Rejected("this node has no certificate: it is not in a cluster (init or join first)".into())
        })?;
        let endpoint = shoal_client::tcp_endpoint(addr).map_err(|e| ApiError::Internal(e.to_string()))?;
        let c = shoal_client::tls_channel(endpoint, addr, cfg, server_name).map_err(ApiError::Internal)?;
        map.insert(key, c.clone());
        Ok(c)
    }

    /// A membership client for another node.
    pub fn membership_client(&self, addr: &str) -> Result<MembershipClient<Channel>, ApiError> {
        Ok(MembershipClient::new(self.channel(addr)?)
            .max_decoding_message_size(shoal_client::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(shoal_client::MAX_MESSAGE_BYTES))
    }

    /// The TLS configuration of the node's server (none before it is in a cluster).
    pub fn tls_server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        read(&self.inner.server)
    }

    /// The TLS configuration of the node's connections to others (none before it is in a cluster).
    pub fn tls_client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        read(&self.inner.client)
    }

    /// The client configuration as it changes, for dialers outside this cache (Raft's).
    pub fn client_config_slot(&self) -> ClientConfigSlot {
        self.inner.client.clone()
    }

    /// The cluster CA certificate (DER), once the node is in a cluster.
    pub fn ca_der(&self) -> Option<Vec<u8>> {
        read(&self.inner.ca)
    }

    /// Who this node's certificate says it is.
    pub fn cert_identity(&self) -> Option<shoal_pki::PeerIdentity> {
        self.inner.certs.identity()
    }

    /// Loads the certificate, key and CA kept in the data dir, if any.
    fn load(&self) {
        let dir = &self.inner.dir;
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        let (Ok(ca), Ok(cert), Ok(key)) = (read(CA_FILE), read(CERT_FILE), read(KEY_FILE)) else { return };
        let Ok(ca_der) = shoal_pki::cert_der_from_pem(&ca) else {
            tracing::error!(dir = %dir.display(), "the CA certificate in the data dir does not parse");
            return;
        };
        if let Err(e) = self.use_certificate(&ca_der, &cert, &key) {
            tracing::error!(error = %e, dir = %dir.display(), "cannot use this node's certificate");
            return;
        }
        if let Some(id) = self.cert_identity() {
            if id.not_after <= std::time::SystemTime::now() {
                tracing::error!(
                    expired = %shoal_pki::rfc3339(id.not_after),
                    "this node's certificate has expired: managers refuse it; remove the node on a manager and join it again"
                );
            }
        }
    }

    fn use_certificate(&self, ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
        let bad = |e: shoal_pki::PkiError| ApiError::Rejected(format!("node certificate: {e}"));
        let i = &self.inner;
        i.certs.set(cert_pem, key_pem, ca_der).map_err(bad)?;
        let server = shoal_pki::tls::server_config(ca_der, i.certs.clone()).map_err(bad)?;
        let client = shoal_pki::tls::client_config(ca_der, Some(i.certs.clone())).map_err(bad)?;
        write(&i.ca, Some(ca_der.to_vec()));
        write(&i.server, Some(Arc::new(server)));
        write(&*i.client, Some(Arc::new(client)));
        // A connection presents the certificate it was made with: new calls must go on new
        // connections, or a node promoted to manager keeps calling as a worker (and is refused
        // what only managers may call: forwarded writes, read indexes, pings).
        i.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Uses (and keeps in the data dir) a new certificate and key, issued by the CA `ca_der`.
    pub fn install(&self, ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
        self.use_certificate(ca_der, cert_pem, key_pem)?;
        let dir = &self.inner.dir;
        let io = |e: std::io::Error| ApiError::internal(&format!("cannot write {}", dir.display()), e);
        shoal_pki::write_public_file(&dir.join(CA_FILE), shoal_pki::der_to_pem(ca_der).as_bytes()).map_err(io)?;
        shoal_pki::write_private_file(&dir.join(KEY_FILE), key_pem.as_bytes()).map_err(io)?;
        shoal_pki::write_public_file(&dir.join(CERT_FILE), cert_pem.as_bytes()).map_err(io)?;
        Ok(())
    }

    /// Forgets the certificate (the node left or was removed from its cluster).
    pub fn clear(&self) {
        let i = &self.inner;
        i.certs.clear();
        write(&i.ca, None);
        write(&i.server, None);
        write(&*i.client, None);
        i.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let _ = std::fs::remove_dir_all(&i.dir);
    }

    /// Records what is wrong with this node's certificate (`None`: nothing).
    pub fn set_problem(&self, problem: Option<String>) {
        *self.inner.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// This node's certificate as `shoal info` shows it.
    pub fn summary(&self) -> String {
        if let Some(p) = self.inner.problem.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return p;
        }
        match self.cert_identity() {
            Some(id) => format!("{} certificate, expires {}", id.role, shoal_pki::rfc3339(id.not_after)),
            None => "none (not in a cluster)".to_string(),
        }
    }
}
