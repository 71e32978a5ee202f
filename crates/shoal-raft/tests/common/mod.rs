//! Shared helpers for shoal-raft's integration tests: in-process Raft nodes over real loopback
//! gRPC, a cluster with kill/restart controls, commands that carry payloads, bounded waits.
//!
//! Each node runs in its own tokio runtime, so killing a node (shutting its runtime down) drops
//! its Raft tasks, its gRPC server and every connection it served at once, like a crashed
//! process (except that sled, being in-process, flushes when dropped; `kill -9` durability is
//! tested with a child process in `durability.rs`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, RaftMetrics, ServerState};
use shoal_api::v1::raft_server::Raft as RaftGrpc;
use shoal_api::v1::{self, Command, RaftMessage};
use shoal_raft::{
    plain_channels, raft_config, Network, PeerHealth, RaftNode, RaftParams, RaftService, Request, StoreHandle,
    TypeConfig,
};
use tokio::sync::watch;
use tokio::time::Instant;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=openraft=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Small timeouts for tests (heartbeat 50 ms, election 300-600 ms), no compaction.
pub fn test_params() -> RaftParams {
    RaftParams { heartbeat_ms: 50, election_timeout_ms: 300, ..RaftParams::default() }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The id of the config object written by command number `i`.
pub fn config_id(i: u64) -> String {
    format!("cfg-{i:06}")
}

/// A command creating config object `i` carrying `payload` bytes of data.
pub fn create_config(i: u64, payload: usize) -> Command {
    let id = config_id(i);
    let config = v1::Config {
        meta: Some(v1::Meta { id: id.clone(), ..Default::default() }),
        spec: Some(v1::ConfigSpec {
            annotations: Some(v1::Annotations { name: id, ..Default::default() }),
            data: vec![(i % 251) as u8; payload],
        }),
    };
    Command {
        now_ms: 1_700_000_000_000 + i as i64,
        ops: vec![v1::Op {
            kind: Some(v1::op::Kind::Create(v1::Object { kind: Some(v1::object::Kind::Config(config)) })),
        }],
    }
}

/// Ids of the config objects in a store.
pub fn config_ids(store: &StoreHandle) -> BTreeSet<String> {
    store.read(|s| s.configs().filter_map(|c| c.meta.as_ref().map(|m| m.id.clone())).collect())
}

/// The full state of a store, for equality checks between replicas.
pub fn store_image(store: &StoreHandle) -> Vec<u8> {
    store.read(|s| s.encode_snapshot())
}

/// Counts the Raft RPCs a node receives, by kind.
#[derive(Clone, Default)]
pub struct RpcCounters {
    pub append_entries: Arc<AtomicUsize>,
    pub vote: Arc<AtomicUsize>,
    pub install_snapshot: Arc<AtomicUsize>,
}

/// The node's Raft service wrapped to count RPCs.
struct Counting {
    inner: RaftService,
    counters: RpcCounters,
}

#[tonic::async_trait]
impl RaftGrpc for Counting {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        self.counters.append_entries.fetch_add(1, Ordering::Relaxed);
        self.inner.append_entries(request).await
    }

    async fn vote(&self, request: tonic::Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        self.counters.vote.fetch_add(1, Ordering::Relaxed);
        self.inner.vote(request).await
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        self.counters.install_snapshot.fetch_add(1, Ordering::Relaxed);
        self.inner.install_snapshot(request).await
    }
}

/// Binds `addr` (or a fresh loopback port), retrying while a killed node's socket is released.
async fn bind(addr: Option<&str>) -> tokio::net::TcpListener {
    let Some(addr) = addr else {
        return tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, addr, "rebinding");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

/// A Raft node with its own runtime, storage directory and gRPC server.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub raft: RaftNode,
    pub store: StoreHandle,
    pub health: PeerHealth,
    pub rpcs: RpcCounters,
    rt: Option<tokio::runtime::Runtime>,
}

impl TestNode {
    /// Starts node `id` on `dir` (opening whatever is there), serving on `addr` or a new port.
    pub async fn start(id: u64, dir: &Path, addr: Option<&str>, params: &RaftParams) -> TestNode {
        let config = raft_config(params).expect("valid raft params");
        Self::start_with_config(id, dir, addr, config).await
    }

    pub async fn start_with_config(id: u64, dir: &Path, addr: Option<&str>, config: openraft::Config) -> TestNode {
        init_tracing();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("raft-node-{id}"))
            .enable_all()
            .build()
            .expect("node runtime");
        let dir_owned = dir.to_path_buf();
        let addr_owned = addr.map(str::to_string);
        let rpcs = RpcCounters::default();
        let counters = rpcs.clone();
        let started = rt.spawn(async move {
            let listener = bind(addr_owned.as_deref()).await;
            let local = listener.local_addr().expect("local addr").to_string();
            let (log, sm, store) = shoal_raft::open(&dir_owned).await.expect("open raft storage");
            let network = Network::new(plain_channels());
            let health = network.health();
            let raft = RaftNode::new(id, Arc::new(config), network, log, sm).await.expect("start raft");
            let (slot_tx, slot_rx) = watch::channel(Some(raft.clone()));
            let service = Counting { inner: RaftService::new(slot_rx, Default::default()), counters };
            let server = shoal_api::v1::raft_server::RaftServer::new(service)
                .max_decoding_message_size(shoal_raft::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(shoal_raft::MAX_MESSAGE_BYTES);
            tokio::spawn(async move {
                let _slot = slot_tx;
                let res = tonic::transport::Server::builder()
                    .add_service(server)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await;
                if let Err(e) = res {
                    tracing::warn!(error = %e, "test raft server stopped");
                }
            });
            (raft, store, health, local)
        });
        let (raft, store, health, addr) = started.await.expect("node start task");
        TestNode { id, addr, dir: dir.to_path_buf(), raft, store, health, rpcs, rt: Some(rt) }
    }

    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub fn applied_index(&self) -> u64 {
        *self.store.applied().borrow()
    }

    /// Kills the node: its runtime (Raft, server, connections) is dropped at once.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Raft nodes with ids 1..=n in one temporary directory.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub params: RaftParams,
    pub nodes: BTreeMap<u64, TestNode>,
    /// Address of every node ever started, kept across kills so restarts reuse it.
    pub addrs: BTreeMap<u64, String>,
}

impl Cluster {
    /// Starts `n` voters and waits for a leader.
    pub async fn start(n: u64, params: RaftParams) -> Cluster {
        let mut c = Cluster {
            tmp: tempfile::tempdir().expect("tempdir"),
            params,
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start_node(id).await;
        }
        let members: BTreeMap<u64, BasicNode> =
            c.addrs.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
        c.node(1).raft.initialize(members).await.expect("initialize");
        c.wait_leader().await;
        c
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.tmp.path().join(format!("node-{id}"))
    }

    /// Starts (or restarts) node `id` on its directory and, if it had one, its address.
    pub async fn start_node(&mut self, id: u64) -> &TestNode {
        assert!(!self.nodes.contains_key(&id), "node {id} is already running");
        let addr = self.addrs.get(&id).cloned();
        let node = TestNode::start(id, &self.dir(id), addr.as_deref(), &self.params).await;
        self.addrs.insert(id, node.addr.clone());
        self.nodes.insert(id, node);
        self.node(id)
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes.get(&id).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn kill(&mut self, id: u64) {
        self.nodes.remove(&id).unwrap_or_else(|| panic!("node {id} is not running")).kill();
    }

    /// Waits until a running node is leader and every running voter agrees on it.
    pub async fn wait_leader(&self) -> u64 {
        wait_until("a leader all running voters agree on", DEADLINE, || {
            let leader = self.nodes.values().find(|n| n.metrics().state == ServerState::Leader).map(|n| n.id)?;
            let voters: BTreeSet<u64> = self.node(leader).metrics().membership_config.voter_ids().collect();
            let agreed = self
                .nodes
                .values()
                .filter(|n| voters.contains(&n.id))
                .all(|n| n.metrics().current_leader == Some(leader));
            agreed.then_some(leader)
        })
        .await
    }

    /// Proposes `cmd` on the current leader, retrying (leader changes, no quorum yet) until
    /// it is committed and applied or the deadline passes.
    pub async fn write(&self, cmd: Command) -> ClientWriteResponse<TypeConfig> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let leader = self.wait_leader().await;
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                self.node(leader).raft.client_write(Request::one(cmd.clone())),
            );
            match attempt.await {
                Ok(Ok(resp)) => return resp,
                Ok(Err(e)) => tracing::info!(error = %e, leader, "write failed; retrying"),
                Err(_) => tracing::info!(leader, "write timed out; retrying"),
            }
            assert!(Instant::now() < deadline, "write not committed within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes config objects `range` with `payload` bytes each; returns the acknowledged ids.
    pub async fn write_configs(&self, range: std::ops::Range<u64>, payload: usize) -> Vec<String> {
        let mut acked = Vec::new();
        for i in range {
            let resp = self.write(create_config(i, payload)).await;
            // "exists": an earlier attempt that timed out was committed after all.
            let r = &resp.data.0[0];
            assert!(
                r.error.is_empty() || r.refusal() == shoal_api::v1::Refusal::Exists,
                "write {i} rejected: {}",
                r.error
            );
            acked.push(config_id(i));
        }
        acked
    }

    /// Waits until node `id` has applied every id in `ids`.
    pub async fn wait_has(&self, id: u64, ids: &[String]) {
        let node = self.node(id);
        wait_until(&format!("node {id} to hold {} acknowledged writes", ids.len()), DEADLINE, || {
            let have = config_ids(&node.store);
            ids.iter().all(|i| have.contains(i)).then_some(())
        })
        .await;
    }

    /// Waits until every running node has applied the same state as the leader.
    pub async fn wait_converged(&self) {
        let leader = self.wait_leader().await;
        wait_until("all running nodes to apply the leader's state", DEADLINE, || {
            let want = self.node(leader).metrics().last_applied?;
            let image = store_image(&self.node(leader).store);
            self.nodes
                .values()
                .all(|n| n.metrics().last_applied == Some(want) && store_image(&n.store) == image)
                .then_some(())
        })
        .await;
    }
}
