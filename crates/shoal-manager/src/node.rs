//! The node: the parts a shoald process is made of, each with one job, put together once.
//!
//! - [`Identity`]: the daemon settings and the persisted local state (ids, role, cluster);
//! - [`Dialer`]: the node's certificate and its mTLS channels to other nodes;
//! - [`Managers`]: the Raft instance while this node is a manager, the managers it knows of;
//! - [`Writer`]: proposes writes, on the leader or forwarded to it, with typed outcomes;
//! - [`Workers`]: every background loop of the node, named, listed and stopped together;
//! - [`Heard`] and [`Links`]: what the current leader term heard from nodes, and the way to its
//!   dispatcher hub.
//!
//! Role transitions (which start and stop Raft, the session and the agent) live in `roles`;
//! the services of the node's port hold the parts they need.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::dialer::Dialer;
use crate::dispatcher::Links;
use crate::error::ApiError;
use crate::identity::{Identity, NodeConfig};
use crate::liveness::Heard;
use crate::managers::Managers;
use crate::workers::{WorkerState, Workers};
use crate::writer::Writer;

/// The parts of a node; cheap to clone.
#[derive(Clone)]
pub struct Node {
    /// Who this node is.
    pub identity: Identity,
    /// Its certificate and channels.
    pub dialer: Dialer,
    /// Its Raft instance and the managers it knows.
    pub managers: Managers,
    /// The write path.
    pub writer: Writer,
    /// Its background loops.
    pub workers: Workers,
    /// What the current leader term heard from nodes (on the leader).
    pub heard: Arc<Heard>,
    /// The current leader term's dispatcher hub (on the leader).
    pub links: Arc<Links>,
    /// Serializes role transitions.
    pub(crate) transition: Arc<tokio::sync::Mutex<()>>,
    /// The session with the leader is running (it is started once per cluster membership).
    pub(crate) session_running: Arc<AtomicBool>,
    /// The agent, once started.
    pub(crate) agent: Arc<Mutex<AgentSlot>>,
    shutdown: CancellationToken,
}

/// Whether the agent was started, and what it holds.
#[derive(Default)]
pub(crate) struct AgentSlot {
    pub(crate) started: bool,
    pub(crate) status: Option<tokio::sync::watch::Receiver<shoal_agent::AgentStatus>>,
}

impl Node {
    /// Loads (or creates) the node identity and its certificate from the data dir. Nothing is
    /// started.
    pub fn open(cfg: NodeConfig, shutdown: CancellationToken) -> Result<Self, ApiError> {
        let force = cfg.force_new_cluster;
        let pki_dir = cfg.data_dir.join("pki");
        let identity = Identity::open(cfg)?;
        let dialer = Dialer::open(pki_dir);
        let managers = Managers::new(identity.clone(), force);
        let writer = Writer::new(managers.clone(), dialer.clone());
        Ok(Node {
            identity,
            dialer,
            managers,
            writer,
            workers: Workers::new("node", shutdown.clone()),
            heard: Arc::default(),
            links: Arc::default(),
            transition: Arc::default(),
            session_running: Arc::default(),
            agent: Arc::default(),
            shutdown,
        })
    }

    /// The background workers of this node (and of its leader term), for `shoal info`.
    pub fn worker_states(&self) -> Vec<(String, WorkerState)> {
        self.workers.list()
    }

    /// What the agent holds, if it runs.
    pub fn agent_status(&self) -> Option<shoal_agent::AgentStatus> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner()).status.as_ref().map(|rx| rx.borrow().clone())
    }

    /// Node shutdown token.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}
