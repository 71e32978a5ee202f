//! mTLS between nodes: the node's TCP port accepts only TLS (rustls, the node's certificate,
//! client certificates verified against the cluster CA when presented), every RPC is checked
//! against the caller's certificate by [`Authz`], and outgoing channels dial TLS with the node's
//! certificate.
//!
//! Who may call what (the caller's role is the OU of its certificate):
//!
//! | RPC | callers |
//! |---|---|
//! | `Membership/Join` | anyone (the join token is checked by the handler) |
//! | `Raft/*`, `Membership/Propose`, `Membership/ReadIndex`, `Membership/Ping`, `Agent/*` | managers |
//! | `Control/*` | managers and admin clients (the local unix socket needs no certificate) |
//! | `Dispatcher/*`, `Membership/Heartbeat`, `Membership/RenewCertificate` | managers and workers |
//!
//! Every certificate must name this cluster (O) and a node the cluster has not removed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use shoal_pki::{PeerIdentity, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;

use crate::dialer::Dialer;
use crate::identity::Identity;
use crate::managers::Managers;

/// The connection a request arrived on: the peer's address and who its certificate names.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote address.
    pub remote: SocketAddr,
    /// The identity in the client's certificate (verified against the CA in the handshake),
    /// read once per connection; `None`: no client certificate.
    pub identity: Option<Result<PeerIdentity, String>>,
}

/// The verified identity of a request's caller, put into the request's extensions by [`Authz`].
#[derive(Debug, Clone)]
pub struct Caller(pub PeerIdentity);

/// The caller of a request that passed [`Authz`] with a certificate.
pub fn caller<T>(req: &tonic::Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<Caller>().map(|c| &c.0)
}

/// A server-side TLS connection, as tonic serves it.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes their TLS handshakes concurrently; yields the
/// connections that succeeded. A node without a certificate yet (not in a cluster) accepts no
/// connection. Handshake failures are logged with the reason (an expired or foreign client
/// certificate, plaintext).
pub fn incoming(
    listener: TcpListener,
    dialer: Dialer,
    workers: &crate::workers::Workers,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    workers.spawn("tls accept", move |stop| async move {
        // Handshakes run side by side; this loop owns them.
        let mut handshakes = tokio::task::JoinSet::new();
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return Ok::<(), String>(()),
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            while handshakes.try_join_next().is_some() {}
            let Some(cfg) = dialer.tls_server_config() else {
                tracing::debug!(%remote, "refusing a connection: this node is not in a cluster (no certificate)");
                continue;
            };
            let tx = tx.clone();
            handshakes.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                        let identity = leaf.map(|c| shoal_pki::identity_from_der(c).map_err(|e| e.to_string()));
                        let _ = tx.send(Ok(TlsConn { inner: tls, info: PeerInfo { remote, identity } })).await;
                    }
                    Ok(Err(e)) => log_handshake_error(remote, &e),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn log_handshake_error(remote: SocketAddr, e: &io::Error) {
    let msg = e.to_string();
    let about_cert = ["certificate", "Certificate", "expired", "UnknownIssuer", "BadSignature"];
    if about_cert.iter().any(|w| msg.contains(w)) {
        tracing::warn!(%remote, error = %msg, "refused a client certificate");
    } else {
        tracing::debug!(%remote, error = %msg, "TLS handshake failed (plaintext or not a shoal node?)");
    }
}

/// Who may call `path` (a gRPC method path); `None`: anyone, the handler checks.
fn allowed(path: &str) -> Option<&'static [Role]> {
    const MANAGERS: &[Role] = &[Role::Manager];
    const NODES: &[Role] = &[Role::Manager, Role::Worker];
    const OPERATORS: &[Role] = &[Role::Manager, Role::Admin];
    const NOBODY: &[Role] = &[];
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        ("shoal.v1.Membership", "Join") => None,
        ("shoal.v1.Membership", "Heartbeat" | "RenewCertificate") => Some(NODES),
        ("shoal.v1.Membership", _) | ("shoal.v1.Raft", _) | ("shoal.v1.Agent", _) => Some(MANAGERS),
        ("shoal.v1.Dispatcher", _) => Some(NODES),
        ("shoal.v1.Control", _) => Some(OPERATORS),
        _ => Some(NOBODY),
    }
}

/// Checks a request against its caller's certificate; the identity on success.
fn authorize(who: &Who, path: &str, peer: Option<&PeerInfo>) -> Result<Option<PeerIdentity>, Status> {
    let roles = allowed(path);
    let Some(id) = peer.and_then(|p| p.identity.as_ref()) else {
        return match roles {
            None => Ok(None),
            Some(_) => Err(Status::unauthenticated(format!(
                "{path} needs a client certificate of this cluster (join the node, or use an admin certificate)"
            ))),
        };
    };
    // The handshake verified the chain and the validity; the subject says who it is.
    let id = id.clone().map_err(Status::unauthenticated)?;
    let cluster = who.identity.cluster_id();
    if id.cluster_id != cluster {
        return Err(Status::permission_denied(format!(
            "the certificate is for cluster {}, not this one ({cluster})",
            id.cluster_id
        )));
    }
    if who.managers.is_removed(&id.node_id) {
        return Err(crate::error::node_removed(&id.node_id));
    }
    match roles {
        Some(r) if !r.contains(&id.role) => {
            Err(Status::permission_denied(format!("a {} certificate may not call {path}", id.role)))
        }
        _ => Ok(Some(id)),
    }
}

/// What [`authorize`] checks a certificate against: this node's cluster, and the nodes the
/// cluster removed.
#[derive(Clone)]
struct Who {
    identity: Identity,
    managers: Managers,
}

/// Tower layer that runs [`authorize`] before every RPC of the node's TCP port.
#[derive(Clone)]
pub struct Authz {
    who: Who,
}

impl Authz {
    /// The layer for a node's server.
    pub fn new(identity: Identity, managers: Managers) -> Self {
        Self { who: Who { identity, managers } }
    }
}

impl<S> tower::Layer<S> for Authz {
    type Service = AuthzService<S>;
    fn layer(&self, inner: S) -> AuthzService<S> {
        AuthzService { inner, who: self.who.clone() }
    }
}

/// The service [`Authz`] wraps around the routes.
#[derive(Clone)]
pub struct AuthzService<S> {
    inner: S,
    who: Who,
}

type BoxFut<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthzService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        match authorize(&self.who, &path, req.extensions().get::<PeerInfo>()) {
            Ok(id) => {
                if let Some(id) = id {
                    req.extensions_mut().insert(Caller(id));
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::debug!(%path, reason = %status.message(), "refused a call");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_method() {
        assert_eq!(allowed("/shoal.v1.Membership/Join"), None);
        assert_eq!(allowed("/shoal.v1.Raft/AppendEntries"), Some(&[Role::Manager][..]));
        assert_eq!(allowed("/shoal.v1.Membership/Propose"), Some(&[Role::Manager][..]));
        assert_eq!(allowed("/shoal.v1.Agent/TaskLogs"), Some(&[Role::Manager][..]));
        assert_eq!(allowed("/shoal.v1.Control/ListNodes"), Some(&[Role::Manager, Role::Admin][..]));
        assert_eq!(allowed("/shoal.v1.Dispatcher/Assignments"), Some(&[Role::Manager, Role::Worker][..]));
        assert_eq!(allowed("/shoal.v1.Membership/Heartbeat"), Some(&[Role::Manager, Role::Worker][..]));
        assert_eq!(allowed("/grpc.reflection.v1.ServerReflection/Info"), Some(&[][..]));
    }
}
