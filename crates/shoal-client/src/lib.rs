//! shoal's client side: turns a `--host` value into a gRPC channel (the local daemon's unix
//! socket, or a manager's TCP address over mTLS with an admin certificate), and dials mTLS
//! channels between nodes.
//!
//! Shared by the CLI, the daemon (node-to-node calls) and the tests, so there is one place that
//! turns a `--host` value into a gRPC channel and one wording for "cannot reach". It holds no
//! cluster logic and links nothing of the daemon (no Raft, no storage, no container runtime):
//! the `shoal` binary is built from this crate and shoal-api alone.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The PKI helpers a client needs (admin keys, certificate parsing), re-exported so the CLI
/// depends on this crate and shoal-api only.
pub use shoal_pki as pki;

/// Largest gRPC message a client or server of ours accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `unix:///path/to.sock`: the local daemon's control socket.
    Unix(PathBuf),
    /// `HOST:PORT` (optionally `tcp://HOST:PORT`): a node's listen address.
    Tcp(String),
}

/// Why a `--host` value cannot be used or reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The value is neither `unix:///path` nor `HOST:PORT`.
    #[error("invalid host {0:?}: use unix:///path/to.sock or HOST:PORT")]
    Invalid(String),
    /// Nothing answered.
    #[error(
        "cannot reach shoald at {host}: {reason} (is shoald running there? choose another with --host or SHOAL_HOST)"
    )]
    Unreachable {
        /// The host as given.
        host: String,
        /// What the connection attempt reported.
        reason: String,
    },
}

impl Host {
    /// Parses a `--host` value.
    pub fn parse(s: &str) -> Result<Self, ConnectError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(ConnectError::Invalid(s.to_string()));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        let addr = s.strip_prefix("tcp://").unwrap_or(s);
        match addr.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(Host::Tcp(addr.to_string())),
            _ => Err(ConnectError::Invalid(s.to_string())),
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Unix(p) => write!(f, "unix://{}", p.display()),
            Host::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// An endpoint for a node's TCP address (lazy: nothing is dialled until the first call).
pub fn tcp_endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|_| ConnectError::Invalid(addr.to_string()))
}

/// A lazily connected channel to a node's TCP address.
pub fn tcp_channel(addr: &str) -> Result<Channel, ConnectError> {
    Ok(tcp_endpoint(addr)?.connect_lazy())
}

/// Files of an admin client certificate (`shoal cluster admin-cert --out DIR`).
pub const ADMIN_CA_FILE: &str = "ca.crt";
/// The admin certificate.
pub const ADMIN_CERT_FILE: &str = "admin.crt";
/// The admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// The TLS client configuration of an admin certificate kept in `dir`.
pub fn admin_tls(dir: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).map_err(|e| format!("cannot read {}: {e}", dir.join(f).display()))
    };
    let (ca, cert, key) = (read(ADMIN_CA_FILE)?, read(ADMIN_CERT_FILE)?, read(ADMIN_KEY_FILE)?);
    let ca_der = shoal_pki::cert_der_from_pem(&ca).map_err(|e| format!("{ADMIN_CA_FILE}: {e}"))?;
    let id = shoal_pki::identity_from_pem(&cert).map_err(|e| format!("{ADMIN_CERT_FILE}: {e}"))?;
    if id.not_after <= std::time::SystemTime::now() {
        return Err(format!(
            "the admin certificate in {} expired at {}: issue a new one with `shoal cluster admin-cert` on a manager",
            dir.display(),
            shoal_pki::rfc3339(id.not_after)
        ));
    }
    let store = shoal_pki::tls::CertStore::new();
    store.set(&cert, &key, &ca_der).map_err(|e| format!("{}: {e}", dir.display()))?;
    shoal_pki::tls::client_config(&ca_der, Some(store)).map(std::sync::Arc::new).map_err(|e| e.to_string())
}

/// Connects to `host` now, so that an unreachable daemon is reported before any request. A TCP
/// host is a manager reached over mTLS with the admin certificate in `tls_dir`.
pub async fn connect_with(host: &Host, tls_dir: Option<&std::path::Path>) -> Result<Channel, ConnectError> {
    let Host::Tcp(addr) = host else { return connect(host).await };
    let Some(dir) = tls_dir else {
        return Err(ConnectError::Unreachable {
            host: host.to_string(),
            reason: "a manager's TCP port takes only mTLS: create an admin certificate on a manager with                      `shoal cluster admin-cert --name NAME --out DIR` and pass --tls-dir DIR (or SHOAL_TLS_DIR)"
                .into(),
        });
    };
    let cfg = admin_tls(dir).map_err(|reason| ConnectError::Unreachable { host: host.to_string(), reason })?;
    let channel = tls_channel(tcp_endpoint(addr)?, addr, cfg, shoal_pki::MANAGER_NAME)
        .map_err(|reason| ConnectError::Unreachable { host: host.to_string(), reason })?;
    Ok(channel)
}

/// A lazily connecting TLS channel to `addr`, verifying the server as `server_name` (managers:
/// [`shoal_pki::MANAGER_NAME`]; a node's agent: its node id).
pub fn tls_channel(
    endpoint: Endpoint,
    addr: &str,
    cfg: std::sync::Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Channel, String> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name {server_name:?}: {e}"))?;
    let addr = addr.to_string();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    Ok(endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let (addr, name, connector) = (addr.clone(), name.clone(), connector.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    })))
}

/// Connects to `host` now, so that an unreachable daemon is reported before any request.
pub async fn connect(host: &Host) -> Result<Channel, ConnectError> {
    let unreachable = |e: tonic::transport::Error| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = s.to_string();
            src = s.source();
        }
        ConnectError::Unreachable { host: host.to_string(), reason }
    };
    match host {
        Host::Tcp(addr) => tcp_endpoint(addr)?.connect().await.map_err(unreachable),
        Host::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
                .map_err(unreachable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert_eq!(Host::parse("unix:///run/s.sock").ok(), Some(Host::Unix("/run/s.sock".into())));
        assert_eq!(Host::parse("10.0.0.1:4242").ok(), Some(Host::Tcp("10.0.0.1:4242".into())));
        assert_eq!(Host::parse("tcp://h:1").ok(), Some(Host::Tcp("h:1".into())));
        assert!(Host::parse("nohost").is_err());
        assert!(Host::parse("h:notaport").is_err());
        assert!(Host::parse("unix://").is_err());
    }

    #[tokio::test]
    async fn unreachable_socket_says_where_and_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Host::Unix(dir.path().join("absent.sock"));
        let e = connect(&host).await.expect_err("nothing listens");
        let msg = e.to_string();
        assert!(msg.contains("cannot reach shoald at unix://"), "{msg}");
        assert!(msg.contains("SHOAL_HOST"), "{msg}");
    }
}
