//! This node's place among the managers: its Raft instance while it is one (started and stopped
//! by role transitions, published through a watch channel so RPC handlers never hold it across
//! a transition), the managers it knows of, and the leader's address as last heard.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ServerState};
use shoal_api::v1;
use shoal_raft::{PeerHealth, RaftNode, StoreHandle};
use tokio::sync::watch;

use crate::dialer::Dialer;
use crate::error::ApiError;
use crate::identity::Identity;
use crate::local::{Peer, Role};

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
    /// Raft heartbeat interval in force.
    pub heartbeat: Duration,
    /// How long a voter honours its leader after the leader's last message (openraft's leader
    /// lease: the longest election timeout); no candidate wins before it ran out.
    pub leader_lease: Duration,
    /// When this instance started.
    pub started: Instant,
    /// The current leader term's proposer (none while this manager does not lead).
    proposer: Mutex<Option<crate::proposer::Proposer>>,
    /// The thread Raft runs on.
    _thread: RaftThread,
}

impl RaftRuntime {
    /// Where this leader's writes are batched into entries, while its term's proposer runs.
    pub(crate) fn proposer(&self) -> Option<crate::proposer::Proposer> {
        self.proposer.lock().unwrap_or_else(|p| p.into_inner()).clone().filter(|p| p.is_open())
    }

    /// Connects a new term's proposer; `None`: the term ended.
    pub(crate) fn set_proposer(&self, proposer: Option<crate::proposer::Proposer>) {
        *self.proposer.lock().unwrap_or_else(|p| p.into_inner()) = proposer;
    }
}

/// Raft's own runtime, on threads of its own: openraft's core, replication and log flushing
/// are not queued behind thousands of heartbeats and status reports on the node's runtime, so
/// an AppendEntries (which openraft gives one heartbeat interval) still goes out and comes back
/// in time on a busy manager, and no election is lost to a crowded scheduler. Two threads: while
/// the state machine applies a large batch or encodes a snapshot (off the core, see
/// `shoal_raft`), the core still answers. Shut down (without blocking) when the last handle on
/// the Raft instance goes.
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

    /// This node's last log id as (term, index); (0, 0) for an empty log.
    pub fn last_log(&self) -> (u64, u64) {
        self.raft.data_metrics().borrow().last_log.map_or((0, 0), |l| (l.leader_id.term, l.index))
    }

    /// Since when this instance may still honour a leader: its last contact with one, or its
    /// start when none reached it since (Raft sets a vote's time on start and on any change).
    pub fn honours_leader_since(&self, contact: &shoal_raft::LeaderContact) -> Instant {
        contact.last().map_or(self.started, |t| t.max(self.started))
    }
}

/// The Raft instance slot and what this node knows of the managers; cheap to clone.
#[derive(Clone)]
pub struct Managers {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    raft: watch::Sender<Option<Arc<RaftRuntime>>>,
    raft_slot: watch::Sender<Option<RaftNode>>,
    force_new_cluster_pending: Mutex<bool>,
    leader_hint: Mutex<Option<String>>,
    /// When the leader last answered this node's heartbeat.
    last_answer: Mutex<Option<Instant>>,
    /// How long the leader lets this node stay silent, as its last answer said.
    contact_grace: Mutex<Option<std::time::Duration>>,
    /// The last [`Managers::peers`] and when it was computed.
    peers_cache: Mutex<Option<(Instant, Vec<Peer>)>>,
    /// When a leader last reached this manager's Raft (kept across Raft restarts).
    leader_contact: shoal_raft::LeaderContact,
}

impl Managers {
    /// No Raft yet; `force_new_cluster` is used by the next [`Managers::start`].
    pub fn new(identity: Identity, force_new_cluster: bool) -> Self {
        Managers {
            inner: Arc::new(Inner {
                identity,
                raft: watch::channel(None).0,
                raft_slot: watch::channel(None).0,
                force_new_cluster_pending: Mutex::new(force_new_cluster),
                leader_hint: Mutex::new(None),
                last_answer: Mutex::new(None),
                contact_grace: Mutex::new(None),
                peers_cache: Mutex::new(None),
                leader_contact: shoal_raft::LeaderContact::default(),
            }),
        }
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
        match self.inner.identity.local().role {
            Role::Uninitialized => Err(ApiError::NotInCluster),
            Role::Worker => Err(ApiError::NotManager),
            Role::Manager => Err(ApiError::Internal("raft is starting on this manager; retry in a moment".into())),
        }
    }

    /// Receiver of the Raft slot, for the Raft gRPC service.
    pub fn raft_slot(&self) -> watch::Receiver<Option<RaftNode>> {
        self.inner.raft_slot.subscribe()
    }

    /// When a leader last reached this manager's Raft, as the Raft service notes it.
    pub fn leader_contact(&self) -> shoal_raft::LeaderContact {
        self.inner.leader_contact.clone()
    }

    /// Watch of the Raft runtime (set while this node is a manager).
    pub fn raft_watch(&self) -> watch::Receiver<Option<Arc<RaftRuntime>>> {
        self.inner.raft.subscribe()
    }

    /// Whether `--force-new-cluster` is still to be carried out.
    pub fn force_new_cluster_pending(&self) -> bool {
        *self.inner.force_new_cluster_pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leader's address as last learned from a heartbeat.
    pub fn leader_hint(&self) -> Option<String> {
        self.inner.leader_hint.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers where the leader answered, and that it did now.
    pub fn set_leader_hint(&self, addr: &str) {
        *self.inner.leader_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_string());
        *self.inner.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Remembers how long the leader lets this node stay silent (its heartbeat period times the
    /// missed beats it tolerates), as its answer said.
    pub fn set_contact_grace(&self, grace: std::time::Duration) {
        *self.inner.contact_grace.lock().unwrap_or_else(|p| p.into_inner()) = Some(grace);
    }

    /// How long the leader lets this node stay silent (None: no answer said yet).
    pub fn contact_grace(&self) -> Option<std::time::Duration> {
        *self.inner.contact_grace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the leader last answered this node's heartbeat (None: not since it started).
    pub fn last_answer(&self) -> Option<Instant> {
        *self.inner.last_answer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current leader's address: Raft's leader on a manager, else the last hint.
    pub fn leader_addr(&self) -> Option<String> {
        match self.raft() {
            Some(rt) => {
                let m = rt.metrics();
                m.current_leader.and_then(|l| member_addr(&m, l))
            }
            None => self.leader_hint(),
        }
    }

    /// Whether the cluster removed `node_id` (its certificate is refused). Known on managers.
    pub fn is_removed(&self, node_id: &str) -> bool {
        self.raft().is_some_and(|rt| {
            rt.store.read(|s| s.cluster().is_some_and(|c| c.removed_node_ids.iter().any(|r| r == node_id)))
        })
    }

    /// Managers as currently known: from the store on a manager, else the saved list. Every
    /// heartbeat answer carries them, so a manager recomputes them at most once a second
    /// (thousands of nodes heartbeat; the node table is walked once, not per heartbeat).
    pub fn peers(&self) -> Vec<Peer> {
        let mut cache = self.inner.peers_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, peers)) = cache.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return peers.clone();
            }
        }
        let peers = self.compute_peers();
        *cache = Some((Instant::now(), peers.clone()));
        peers
    }

    fn compute_peers(&self) -> Vec<Peer> {
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
        self.inner.identity.local().managers
    }

    /// Starts Raft on this node's data dir (a manager, or a node becoming one); returns the
    /// instance and whether it was forced into a new cluster. An instance already running is
    /// returned as it is.
    pub async fn start(&self, dialer: &Dialer) -> Result<(Arc<RaftRuntime>, bool), ApiError> {
        if let Some(r) = self.raft() {
            return Ok((r, false));
        }
        let identity = &self.inner.identity;
        let dir = identity.raft_dir();
        let local = identity.local();
        let self_node = BasicNode::new(identity.config().advertise_addr.clone());
        let force =
            std::mem::take(&mut *self.inner.force_new_cluster_pending.lock().unwrap_or_else(|p| p.into_inner()));
        if force {
            tracing::warn!(raft_id = local.raft_id, "forcing a new cluster from this manager's state");
            shoal_raft::force_new_cluster(&dir, local.raft_id, self_node.clone())
                .await
                .map_err(|e| ApiError::internal("force-new-cluster failed", e))?;
        }
        let thread = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
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
        let (heartbeat_ms, lease_ms) = (config.heartbeat_interval, config.election_timeout_max);
        let client = dialer.client_config_slot();
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
            heartbeat: Duration::from_millis(heartbeat_ms),
            leader_lease: Duration::from_millis(lease_ms),
            started: Instant::now(),
            proposer: Mutex::new(None),
            _thread: thread,
        });
        self.inner.raft_slot.send_replace(Some(raft));
        self.inner.raft.send_replace(Some(rt.clone()));
        tracing::info!(raft_id = local.raft_id, "raft started");
        Ok((rt, force))
    }

    /// Stops Raft; with `wipe`, deletes its data (the node stopped being a manager).
    pub async fn stop(&self, wipe: bool) -> Result<(), ApiError> {
        self.inner.raft_slot.send_replace(None);
        if let Some(rt) = self.inner.raft.send_replace(None) {
            if let Err(e) = rt.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
        }
        if wipe {
            let dir = self.inner.identity.raft_dir();
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| ApiError::internal("cannot remove raft data", e))?;
            }
        }
        Ok(())
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
