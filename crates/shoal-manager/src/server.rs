//! Starting and stopping a node: bind the listeners, serve the gRPC services, resume the
//! persisted role.
//!
//! The TCP listener serves Raft, Membership and Control (remote CLI); the unix socket serves
//! Control only and is created mode 0600 (root's CLI).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use shoal_api::v1::{
    control_server::ControlServer, dispatcher_server::DispatcherServer, membership_server::MembershipServer,
    raft_server::RaftServer,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::MAX_MESSAGE_BYTES;
use crate::control::ControlService;
use crate::error::ApiError;
use crate::identity::NodeConfig;
use crate::membership::MembershipService;
use crate::node::Node;

/// What a daemon is started with.
#[derive(Clone)]
pub struct DaemonConfig {
    /// Data directory (node identity, Raft log and snapshots).
    pub data_dir: PathBuf,
    /// TCP address to listen on for other nodes and remote CLIs.
    pub listen_addr: SocketAddr,
    /// Address other nodes reach this one at; default: the listen address.
    pub advertise_addr: Option<String>,
    /// Unix socket for the local CLI; none: no local socket.
    pub control_socket: Option<PathBuf>,
    /// Name shown in `node ls`; default: the machine's hostname.
    pub hostname: Option<String>,
    /// Recover a lone surviving manager after quorum loss, keeping its state.
    pub force_new_cluster: bool,
    /// Container runtime for this node's tasks; none: the node runs no tasks.
    pub runtime: Option<std::sync::Arc<dyn shoal_runtime::ContainerRuntime>>,
    /// TTL of the answers of the tasks' resolvers, in seconds.
    pub dns_ttl: u32,
}

/// A running daemon.
pub struct Daemon {
    node: Node,
    listen_addr: SocketAddr,
    shutdown: CancellationToken,
    servers: JoinSet<Result<(), tonic::transport::Error>>,
    socket: Option<PathBuf>,
}

/// The machine's hostname.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Daemon {
    /// Binds, serves and resumes; returns once the node is serving.
    pub async fn start(cfg: DaemonConfig) -> Result<Daemon, ApiError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen_addr)
            .await
            .map_err(|e| ApiError::internal(&format!("cannot listen on {}", cfg.listen_addr), e))?;
        let listen_addr = listener.local_addr().map_err(|e| ApiError::internal("listener address", e))?;
        let advertise_addr = match cfg.advertise_addr.clone() {
            Some(a) => a,
            None if listen_addr.ip().is_unspecified() => {
                return Err(ApiError::Rejected(format!(
                    "--listen-addr {listen_addr} does not say how other nodes reach this one: set --advertise-addr HOST:PORT"
                )))
            }
            None => listen_addr.to_string(),
        };
        let shutdown = CancellationToken::new();
        let node = Node::open(
            NodeConfig {
                data_dir: cfg.data_dir.clone(),
                advertise_addr,
                hostname: cfg.hostname.clone().unwrap_or_else(system_hostname),
                force_new_cluster: cfg.force_new_cluster,
                runtime: cfg.runtime.clone(),
                dns_ttl: cfg.dns_ttl,
            },
            shutdown.clone(),
        )?;

        crate::roles::watch_runtime(&node.identity, &node.workers);
        crate::pki::spawn_renewal(node.clone());
        let mut servers = JoinSet::new();
        let control = || {
            ControlServer::new(ControlService::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        let tcp = tonic::transport::Server::builder()
            .layer(crate::tls::Authz::new(node.identity.clone(), node.managers.clone()))
            .add_service(
                RaftServer::new(shoal_raft::RaftService::new(
                    node.managers.raft_slot(),
                    node.managers.leader_contact(),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                MembershipServer::new(MembershipService::new(node.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                DispatcherServer::new(crate::dispatcher::DispatcherService::new(
                    node.managers.clone(),
                    node.links.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(control())
            .add_optional_service(cfg.runtime.clone().map(|rt| {
                shoal_api::v1::agent_server::AgentServer::new(shoal_agent::logs::AgentService::new(rt))
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }));
        // Only TLS on the TCP port; the handshake needs the node's certificate, so a node that is
        // in no cluster yet accepts no connection.
        let incoming = crate::tls::incoming(listener, node.dialer.clone(), &node.workers);
        let stop = shutdown.clone();
        servers.spawn(async move { tcp.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await });

        if let Some(path) = &cfg.control_socket {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ApiError::internal(&format!("cannot create {}", parent.display()), e))?;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ApiError::internal(&format!("cannot remove stale socket {}", path.display()), e)),
            }
            let uds = tokio::net::UnixListener::bind(path)
                .map_err(|e| ApiError::internal(&format!("cannot listen on {}", path.display()), e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ApiError::internal("cannot restrict the control socket", e))?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);
            let stop = shutdown.clone();
            let svc = control();
            servers.spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
            });
        }

        crate::roles::resume(&node).await?;
        tracing::info!(%listen_addr, node_id = %node.identity.local().node_id, role = node.identity.local().role.as_str(), "shoald serving");
        Ok(Daemon { node, listen_addr, shutdown, servers, socket: cfg.control_socket })
    }

    /// The node runtime.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The bound TCP address (useful with port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Waits until a server stops on its own (an error) or the daemon is shut down.
    pub async fn wait(&mut self) -> Result<(), ApiError> {
        while let Some(r) = self.servers.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ApiError::internal("server stopped", e)),
                Err(e) => return Err(ApiError::internal("server task", e)),
            }
        }
        Ok(())
    }

    /// Stops serving and shuts Raft down cleanly.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let _ = self.node.managers.stop(false).await;
        while self.servers.join_next().await.is_some() {}
        // Every background worker has been told by the same token; wait for them to return.
        self.node.workers.stop().await;
        if let Some(p) = &self.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}
