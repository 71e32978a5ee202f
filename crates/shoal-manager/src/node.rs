//! The node runtime: identity, role transitions (uninitialized -> manager/worker and back), the
//! Raft instance of a manager, and the channels to other nodes.
//!
//! Role transitions are serialized by one async lock; the current Raft instance is published
//! through a watch channel so RPC handlers never hold it across a transition.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, ServerState};
use shoal_api::v1::{self, membership_client::MembershipClient, NodeDescription, Platform, Resources};
use shoal_raft::{PeerHealth, RaftNode, StoreHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::client;
use crate::error::ApiError;
use crate::local::{LocalState, Peer, Role};

/// Daemon settings the node runtime needs.
#[derive(Clone)]
pub struct NodeConfig {
    /// Where node.json and the Raft data live.
    pub data_dir: PathBuf,
    /// The address other nodes reach this one at (host:port).
    pub advertise_addr: String,
    /// Name shown in `node ls`.
    pub hostname: String,
    /// Recover a lone surviving manager after quorum loss, keeping its state.
    pub force_new_cluster: bool,
    /// The container runtime tasks run on; none: this node runs no tasks.
    pub runtime: Option<Arc<dyn shoal_runtime::ContainerRuntime>>,
}

/// A running Raft instance and what belongs to it.
pub struct RaftRuntime {
    /// The openraft handle.
    pub raft: RaftNode,
    /// The replicated store as applied on this manager.
    pub store: StoreHandle,
    /// When each peer last answered a Raft RPC.
    pub health: PeerHealth,
    /// Election timeout in force (lower bound), for the write path's patience.
    pub election_timeout: Duration,
    /// The thread Raft runs on.
    _thread: RaftThread,
}

/// Raft's own runtime, on a thread of its own: openraft's core, replication and log flushing
/// are not queued behind thousands of heartbeats and status reports on the node's runtime, so
/// an AppendEntries (which openraft gives one heartbeat interval) still goes out and comes back
/// in time on a busy manager, and no election is lost to a crowded scheduler. Shut down (without
/// blocking) when the last handle on the Raft instance goes.
struct RaftThread(Option<tokio::runtime::Runtime>);

impl Drop for RaftThread {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl RaftRuntime {
    /// Current metrics snapshot.
    pub fn metrics(&self) -> openraft::RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }
}

/// Shared state of a node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: NodeConfig,
    pub(crate) local: Mutex<LocalState>,
    pub(crate) raft: watch::Sender<Option<Arc<RaftRuntime>>>,
    pub(crate) raft_slot: watch::Sender<Option<RaftNode>>,
    pub(crate) transition: tokio::sync::Mutex<()>,
    pub(crate) channels: Mutex<HashMap<String, Channel>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) leader: crate::leader::LeaderState,
    pub(crate) force_new_cluster_pending: Mutex<bool>,
    pub(crate) leader_hint: Mutex<Option<String>>,
    pub(crate) agent_started: Mutex<bool>,
    /// The node's background workers (session, renewal, runtime probe, leadership, agent).
    pub(crate) workers: crate::workers::Workers,
    /// The session with the leader is running (it is started once per cluster membership).
    pub(crate) session_running: std::sync::atomic::AtomicBool,
    /// The last [`Node::manager_peers`] and when it was computed.
    pub(crate) peers_cache: Mutex<Option<(std::time::Instant, Vec<Peer>)>>,
    /// What the agent holds, once it runs.
    pub(crate) agent_status: Mutex<Option<watch::Receiver<shoal_agent::AgentStatus>>>,
    /// Why this node cannot run tasks now; empty when it can.
    pub(crate) runtime_unavailable: Mutex<String>,
    pub(crate) pki: Pki,
    /// What is wrong with this node's certificate, if anything (shown by `shoal info`).
    pub(crate) cert_problem: Mutex<Option<String>>,
}

/// The node's certificate, key and CA, and the TLS configurations made of them.
#[derive(Default)]
pub(crate) struct Pki {
    pub(crate) certs: Arc<shoal_pki::tls::CertStore>,
    ca: std::sync::RwLock<Option<Vec<u8>>>,
    server: std::sync::RwLock<Option<Arc<rustls::ServerConfig>>>,
    client: Arc<std::sync::RwLock<Option<Arc<rustls::ClientConfig>>>>,
}

/// Files of the node's PKI, under `<data-dir>/pki`.
const CA_FILE: &str = "ca.crt";
const CERT_FILE: &str = "node.crt";
const KEY_FILE: &str = "node.key";

/// How often the container runtime is probed, and how long a probe may take.
const RUNTIME_PROBE: Duration = Duration::from_secs(2);

fn random_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

/// A fresh object id.
pub fn new_id() -> String {
    shoal_api::ids::id_from_bits(rand::random())
}

/// A fresh join-token secret.
pub fn new_secret() -> String {
    shoal_api::ids::id_from_bits(rand::random())
}

/// Wall clock in milliseconds, stamped into commands by the proposer.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Node {
    /// Loads (or creates) the node identity in the data dir. Nothing is started.
    pub fn open(cfg: NodeConfig, shutdown: CancellationToken) -> Result<Self, ApiError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| ApiError::internal(&format!("cannot create data dir {}", cfg.data_dir.display()), e))?;
        let local = match LocalState::load(&cfg.data_dir).map_err(|e| ApiError::Internal(e.to_string()))? {
            Some(s) => s,
            None => {
                let s = LocalState {
                    node_id: new_id(),
                    raft_id: random_u64(),
                    role: Role::Uninitialized,
                    cluster_id: String::new(),
                    managers: Vec::new(),
                    settings: None,
                };
                s.save(&cfg.data_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
                s
            }
        };
        let force = cfg.force_new_cluster;
        let runtime_unavailable = match cfg.runtime {
            Some(_) => String::new(),
            None => "started without a container runtime (--no-runtime)".to_string(),
        };
        let node = Node {
            inner: Arc::new(Inner {
                cfg,
                local: Mutex::new(local),
                raft: watch::channel(None).0,
                raft_slot: watch::channel(None).0,
                transition: tokio::sync::Mutex::new(()),
                channels: Mutex::new(HashMap::new()),
                shutdown: shutdown.clone(),
                leader: crate::leader::LeaderState::default(),
                force_new_cluster_pending: Mutex::new(force),
                leader_hint: Mutex::new(None),
                agent_started: Mutex::new(false),
                workers: crate::workers::Workers::new("node", shutdown.clone()),
                session_running: std::sync::atomic::AtomicBool::new(false),
                peers_cache: Mutex::new(None),
                agent_status: Mutex::new(None),
                runtime_unavailable: Mutex::new(runtime_unavailable),
                pki: Pki::default(),
                cert_problem: Mutex::new(None),
            }),
        };
        node.load_pki();
        Ok(node)
    }

    /// The leader's address as last learned from a heartbeat.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner.leader_hint.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_leader_hint(&self, addr: &str) {
        *self.inner.leader_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
    }

    fn set_runtime_unavailable(&self, why: String) {
        let mut cur = self.inner.runtime_unavailable.lock().unwrap_or_else(|p| p.into_inner());
        if *cur != why {
            if why.is_empty() {
                tracing::info!("the container runtime answers again: this node takes tasks");
            } else {
                tracing::warn!(reason = %why, "this node takes no new tasks");
            }
            *cur = why;
        }
    }

    /// Probes the container runtime until shutdown, so the description the node reports says
    /// whether it can run tasks (the scheduler places nothing on a node whose runtime is gone).
    pub(crate) fn watch_runtime(&self) {
        let Some(runtime) = self.inner.cfg.runtime.clone() else { return };
        let node = self.clone();
        self.inner.workers.spawn("runtime probe", |stop| async move {
            loop {
                let why = match tokio::time::timeout(RUNTIME_PROBE, runtime.ping()).await {
                    Ok(Ok(_)) => String::new(),
                    Ok(Err(e)) => format!("container runtime unavailable: {e}"),
                    Err(_) => format!("container runtime unavailable: no answer within {RUNTIME_PROBE:?}"),
                };
                node.set_runtime_unavailable(why);
                tokio::select! {
                    _ = stop.cancelled() => return Ok::<(), String>(()),
                    _ = tokio::time::sleep(RUNTIME_PROBE) => {}
                }
            }
        });
    }

    /// Starts the agent once, if this node has a container runtime.
    pub(crate) async fn ensure_agent(&self) {
        let Some(runtime) = self.inner.cfg.runtime.clone() else { return };
        {
            let mut started = self.inner.agent_started.lock().unwrap_or_else(|p| p.into_inner());
            if *started {
                return;
            }
            *started = true;
        }
        match crate::agent_link::start_agent(self, runtime) {
            Ok((status, agent)) => {
                *self.inner.agent_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                self.inner.workers.spawn("agent", |stop| async move {
                    agent(stop).await;
                    Ok::<(), String>(())
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "the agent did not start: this node runs no tasks");
                *self.inner.agent_started.lock().unwrap_or_else(|p| p.into_inner()) = false;
            }
        }
    }

    /// Starts the session with the leader unless it runs already (it ends by itself when the
    /// node leaves its cluster, and may then be started again by a later join).
    pub(crate) fn ensure_session(&self) {
        if !self.inner.session_running.swap(true, std::sync::atomic::Ordering::SeqCst) {
            crate::session::spawn(self.clone());
        }
    }

    /// The background workers of this node (and of its leader term), for `shoal info`.
    pub fn workers(&self) -> Vec<(String, crate::workers::WorkerState)> {
        self.inner.workers.list()
    }

    /// What the agent holds, if it runs.
    pub fn agent_status(&self) -> Option<shoal_agent::AgentStatus> {
        self.inner.agent_status.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|rx| rx.borrow().clone())
    }

    /// The daemon settings.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    /// The id of the cluster this node is in (empty when in none).
    pub fn cluster_id(&self) -> String {
        self.lock_local().cluster_id.clone()
    }

    /// A copy of the persisted local state.
    pub fn local(&self) -> LocalState {
        self.lock_local().clone()
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, LocalState> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.inner.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes and persists the local state.
    pub(crate) fn update_local(&self, f: impl FnOnce(&mut LocalState)) -> Result<(), ApiError> {
        let mut g = self.lock_local();
        let mut next = g.clone();
        f(&mut next);
        if next != *g {
            next.save(&self.inner.cfg.data_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
            *g = next;
        }
        Ok(())
    }

    /// The running Raft instance, if this node is a manager.
    pub fn raft(&self) -> Option<Arc<RaftRuntime>> {
        self.inner.raft.borrow().clone()
    }

    /// The Raft instance or the reason there is none.
    pub fn require_manager(&self) -> Result<Arc<RaftRuntime>, ApiError> {
        if let Some(r) = self.raft() {
            return Ok(r);
        }
        match self.local().role {
            Role::Uninitialized => Err(ApiError::NotInCluster),
            Role::Worker => Err(ApiError::NotManager),
            Role::Manager => Err(ApiError::Internal("raft is starting on this manager; retry in a moment".into())),
        }
    }

    /// Receiver of the Raft slot, for the Raft gRPC service.
    pub fn raft_slot(&self) -> watch::Receiver<Option<RaftNode>> {
        self.inner.raft_slot.subscribe()
    }

    /// Watch of the Raft runtime (set while this node is a manager).
    pub fn raft_watch(&self) -> watch::Receiver<Option<Arc<RaftRuntime>>> {
        self.inner.raft.subscribe()
    }

    /// Node shutdown token.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    pub(crate) fn raft_dir(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("raft")
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
        let endpoint = client::tcp_endpoint(addr).map_err(|e| ApiError::Internal(e.to_string()))?;
        let c = shoal_client::tls_channel(endpoint, addr, cfg, server_name).map_err(ApiError::Internal)?;
        map.insert(key, c.clone());
        Ok(c)
    }

    /// The TLS configuration of the node's server (none before it is in a cluster).
    pub fn tls_server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.pki.server.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The TLS configuration of the node's connections to others (none before it is in a cluster).
    pub fn tls_client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner.pki.client.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The cluster CA certificate (DER), once the node is in a cluster.
    pub fn ca_der(&self) -> Option<Vec<u8>> {
        self.inner.pki.ca.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Who this node's certificate says it is.
    pub fn cert_identity(&self) -> Option<shoal_pki::PeerIdentity> {
        self.inner.pki.certs.identity()
    }

    fn pki_dir(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("pki")
    }

    /// Loads the certificate, key and CA kept in the data dir, if any.
    fn load_pki(&self) {
        let dir = self.pki_dir();
        let read = |f: &str| std::fs::read_to_string(dir.join(f));
        let (Ok(ca), Ok(cert), Ok(key)) = (read(CA_FILE), read(CERT_FILE), read(KEY_FILE)) else { return };
        let Ok(ca_der) = shoal_pki::cert_der_from_pem(&ca) else {
            tracing::error!(dir = %dir.display(), "the CA certificate in the data dir does not parse");
            return;
        };
        if let Err(e) = self.install_pki_memory(&ca_der, &cert, &key) {
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

    fn install_pki_memory(&self, ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
        let bad = |e: shoal_pki::PkiError| ApiError::Rejected(format!("node certificate: {e}"));
        let pki = &self.inner.pki;
        pki.certs.set(cert_pem, key_pem, ca_der).map_err(bad)?;
        let server = shoal_pki::tls::server_config(ca_der, pki.certs.clone()).map_err(bad)?;
        let client = shoal_pki::tls::client_config(ca_der, Some(pki.certs.clone())).map_err(bad)?;
        let ca_changed = self.ca_der().as_deref() != Some(ca_der);
        *pki.ca.write().unwrap_or_else(|p| p.into_inner()) = Some(ca_der.to_vec());
        *pki.server.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(server));
        *pki.client.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(client));
        if ca_changed {
            self.inner.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        Ok(())
    }

    /// Uses (and keeps in the data dir) a new certificate and key, issued by the CA `ca_der`.
    pub(crate) fn install_pki(&self, ca_der: &[u8], cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
        self.install_pki_memory(ca_der, cert_pem, key_pem)?;
        let dir = self.pki_dir();
        let io = |e: std::io::Error| ApiError::internal(&format!("cannot write {}", dir.display()), e);
        shoal_pki::write_public_file(&dir.join(CA_FILE), shoal_pki::der_to_pem(ca_der).as_bytes()).map_err(io)?;
        shoal_pki::write_private_file(&dir.join(KEY_FILE), key_pem.as_bytes()).map_err(io)?;
        shoal_pki::write_public_file(&dir.join(CERT_FILE), cert_pem.as_bytes()).map_err(io)?;
        Ok(())
    }

    /// Forgets the certificate (the node left or was removed from its cluster).
    pub(crate) fn clear_pki(&self) {
        let pki = &self.inner.pki;
        pki.certs.clear();
        *pki.ca.write().unwrap_or_else(|p| p.into_inner()) = None;
        *pki.server.write().unwrap_or_else(|p| p.into_inner()) = None;
        *pki.client.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.channels.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let _ = std::fs::remove_dir_all(self.pki_dir());
    }

    /// Records what is wrong with this node's certificate (`None`: nothing).
    pub(crate) fn set_cert_problem(&self, problem: Option<String>) {
        *self.inner.cert_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// This node's certificate as `shoal info` shows it.
    pub fn cert_summary(&self) -> String {
        if let Some(p) = self.inner.cert_problem.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return p;
        }
        match self.cert_identity() {
            Some(id) => format!("{} certificate, expires {}", id.role, shoal_pki::rfc3339(id.not_after)),
            None => "none (not in a cluster)".to_string(),
        }
    }

    /// Whether the cluster removed `node_id` (its certificate is refused). Known on managers.
    pub fn is_removed(&self, node_id: &str) -> bool {
        self.raft().is_some_and(|rt| {
            rt.store.read(|s| s.cluster().is_some_and(|c| c.removed_node_ids.iter().any(|r| r == node_id)))
        })
    }

    /// A membership client for another node.
    pub fn membership_client(&self, addr: &str) -> Result<MembershipClient<Channel>, ApiError> {
        Ok(MembershipClient::new(self.channel(addr)?)
            .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(client::MAX_MESSAGE_BYTES))
    }

    /// What this node tells the cluster about itself.
    pub fn description(&self) -> NodeDescription {
        let cpus = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
        NodeDescription {
            hostname: self.inner.cfg.hostname.clone(),
            platform: Some(Platform {
                os: std::env::consts::OS.to_string(),
                architecture: std::env::consts::ARCH.to_string(),
            }),
            resources: Some(Resources { nano_cpus: cpus * 1_000_000_000, memory_bytes: *MEM_TOTAL, pids: 0 }),
            version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_unavailable: self.inner.runtime_unavailable.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Starts Raft on this node's data dir (a manager, or a node becoming one).
    pub(crate) async fn start_raft(&self) -> Result<Arc<RaftRuntime>, ApiError> {
        if let Some(r) = self.raft() {
            return Ok(r);
        }
        let dir = self.raft_dir();
        let local = self.local();
        let self_node = BasicNode::new(self.inner.cfg.advertise_addr.clone());
        let force =
            std::mem::take(&mut *self.inner.force_new_cluster_pending.lock().unwrap_or_else(|p| p.into_inner()));
        if force {
            tracing::warn!(raft_id = local.raft_id, "forcing a new cluster from this manager's state");
            shoal_raft::force_new_cluster(&dir, local.raft_id, self_node.clone())
                .await
                .map_err(|e| ApiError::internal("force-new-cluster failed", e))?;
        }
        let thread = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("raft")
            .enable_all()
            .build()
            .map_err(|e| ApiError::internal("cannot start raft's thread", e))?;
        let on_raft_thread = thread.handle().clone();
        let thread = RaftThread(Some(thread));
        let open_dir = dir.clone();
        let (log, sm, store) = on_raft_thread
            .spawn(async move { shoal_raft::open(&open_dir).await })
            .await
            .map_err(|e| ApiError::internal("cannot open raft storage", e))?
            .map_err(|e| ApiError::internal("cannot open raft storage", e))?;
        // The replicated settings win; before this manager has state, the ones it was told.
        let settings = store
            .read(|s| s.cluster().and_then(|c| c.settings))
            .or(local.settings)
            .map(shoal_api::defaults::fill_settings)
            .unwrap_or_else(shoal_api::defaults::cluster_settings);
        let params = shoal_raft::RaftParams {
            heartbeat_ms: settings.raft_heartbeat_ms,
            election_timeout_ms: settings.election_timeout_ms,
            snapshot_interval_entries: settings.snapshot_interval_entries,
            log_entries_kept: settings.log_entries_kept,
            ..Default::default()
        };
        let config = shoal_raft::raft_config(&params).map_err(|e| ApiError::internal("invalid raft settings", e))?;
        let client = self.inner.pki.client.clone();
        let network = shoal_raft::Network::new(Arc::new(move |addr: &str| {
            let cfg = client
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .ok_or_else(|| "this node has no certificate".to_string())?;
            shoal_client::tls_channel(shoal_raft::raft_endpoint(addr)?, addr, cfg, shoal_pki::MANAGER_NAME)
        }));
        let health = network.health();
        let raft_id = local.raft_id;
        let raft = on_raft_thread
            .spawn(async move { openraft::Raft::new(raft_id, Arc::new(config), network, log, sm).await })
            .await
            .map_err(|e| ApiError::internal("cannot start raft", e))?
            .map_err(|e| ApiError::internal("cannot start raft", e))?;
        let rt = Arc::new(RaftRuntime {
            raft: raft.clone(),
            store,
            health,
            election_timeout: Duration::from_millis(settings.election_timeout_ms),
            _thread: thread,
        });
        self.inner.raft_slot.send_replace(Some(raft));
        self.inner.raft.send_replace(Some(rt.clone()));
        crate::leader::spawn_supervisor(self.clone(), rt.clone());
        if force {
            crate::roles::after_force_new_cluster(self, &rt).await;
        }
        tracing::info!(raft_id = local.raft_id, "raft started");
        Ok(rt)
    }

    /// Stops Raft; with `wipe`, deletes its data (the node stopped being a manager).
    pub(crate) async fn stop_raft(&self, wipe: bool) -> Result<(), ApiError> {
        self.inner.raft_slot.send_replace(None);
        if let Some(rt) = self.inner.raft.send_replace(None) {
            if let Err(e) = rt.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        }
        if wipe {
            let dir = self.raft_dir();
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| ApiError::internal("cannot remove raft data", e))?;
            }
        }
        Ok(())
    }

    /// Resumes the persisted role at daemon start.
    pub async fn resume(&self) -> Result<(), ApiError> {
        let local = self.local();
        match local.role {
            Role::Uninitialized => {
                if *self.inner.force_new_cluster_pending.lock().unwrap_or_else(|p| p.into_inner()) {
                    return Err(ApiError::Rejected("--force-new-cluster needs a node that was a manager".into()));
                }
            }
            Role::Manager => {
                self.start_raft().await?;
            }
            Role::Worker => {}
        }
        if local.role != Role::Uninitialized {
            self.ensure_session();
            self.ensure_agent().await;
        }
        Ok(())
    }

    /// Managers as currently known: from Raft membership on a manager, else the saved list.
    /// Every heartbeat answer carries them, so a manager recomputes them at most once a second
    /// (thousands of nodes heartbeat; the node table is walked once, not per heartbeat).
    pub fn manager_peers(&self) -> Vec<Peer> {
        let mut cache = self.inner.peers_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, peers)) = cache.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return peers.clone();
            }
        }
        let peers = self.compute_manager_peers();
        *cache = Some((std::time::Instant::now(), peers.clone()));
        peers
    }

    fn compute_manager_peers(&self) -> Vec<Peer> {
        if let Some(rt) = self.raft() {
            let peers: Vec<Peer> = rt.store.read(|s| {
                s.nodes()
                    .filter(|n| n.role() == v1::NodeRole::Manager)
                    .map(|n| Peer {
                        node_id: n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                        raft_id: n.raft_id,
                        addr: n.status.as_ref().map(|s| s.addr.clone()).unwrap_or_default(),
                    })
                    .collect()
            });
            if !peers.is_empty() {
                return peers;
            }
        }
        self.local().managers
    }
}

/// Waits until some leader is known (or the timeout passes); returns its raft id.
pub async fn wait_leader(rt: &RaftRuntime, timeout: Duration) -> Option<u64> {
    let mut rx = rt.raft.metrics();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        {
            let m = rx.borrow_and_update();
            if let Some(l) = m.current_leader {
                if m.state != ServerState::Candidate {
                    return Some(l);
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    }
}

/// The address of a raft member as recorded in the membership.
pub fn member_addr(m: &openraft::RaftMetrics<u64, BasicNode>, id: u64) -> Option<String> {
    m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
}

/// The machine's memory, read once.
static MEM_TOTAL: std::sync::LazyLock<i64> = std::sync::LazyLock::new(mem_total_bytes);

fn mem_total_bytes() -> i64 {
    let Ok(s) = std::fs::read_to_string("/proc/meminfo") else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<i64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
