//! Who this node is: its daemon settings, its persisted local state (node id, Raft id, role,
//! cluster, known managers) and what it tells the cluster about itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_api::v1::{NodeDescription, Platform, Resources};

use crate::error::ApiError;
use crate::local::{LocalState, Role};
use crate::util::{new_id, random_u64};

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
    /// TTL of the answers of the tasks' resolvers, in seconds.
    pub dns_ttl: u32,
}

/// The node's identity and local state; cheap to clone.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NodeConfig,
    local: Mutex<LocalState>,
    /// Why this node cannot run tasks now; empty when it can.
    runtime_unavailable: Mutex<String>,
}

impl Identity {
    /// Loads the local state kept in the data dir, or creates (and persists) a fresh identity.
    pub fn open(cfg: NodeConfig) -> Result<Self, ApiError> {
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
        let runtime_unavailable = match cfg.runtime {
            Some(_) => String::new(),
            None => "started without a container runtime (--no-runtime)".to_string(),
        };
        Ok(Identity {
            inner: Arc::new(Inner {
                cfg,
                local: Mutex::new(local),
                runtime_unavailable: Mutex::new(runtime_unavailable),
            }),
        })
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
    pub fn update_local(&self, f: impl FnOnce(&mut LocalState)) -> Result<(), ApiError> {
        let mut g = self.lock_local();
        let mut next = g.clone();
        f(&mut next);
        if next != *g {
            next.save(&self.inner.cfg.data_dir).map_err(|e| ApiError::Internal(e.to_string()))?;
            *g = next;
        }
        Ok(())
    }

    /// Where this node's Raft data lives.
    pub fn raft_dir(&self) -> PathBuf {
        self.inner.cfg.data_dir.join("raft")
    }

    /// Records why this node cannot run tasks (empty: it can).
    pub fn set_runtime_unavailable(&self, why: String) {
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
            host_networks: std::fs::read_to_string("/proc/net/route")
                .map(|t| shoal_net::routes::host_networks(&t))
                .unwrap_or_default(),
        }
    }
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
