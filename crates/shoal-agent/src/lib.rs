//! shoal's worker agent: keeps the containers of this node in line with the assignments the
//! leader's dispatcher streams, through a [`ContainerRuntime`], and reports task status back.
//!
//! Assigned tasks and their last status are persisted locally before anything is started, so
//! a restarted agent adopts the containers that kept running (the runtime's shims own them)
//! instead of starting them again, and forgets nothing. The agent decides nothing about
//! placement or restarts: it runs what it is given and reports what happens.

mod controller;
pub mod disconnect;
pub mod exec;
pub mod files;
pub mod health;
mod janitor;
pub mod logs;
pub mod network;
mod reporter;
mod spec;
pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::{assignments_message, dispatcher_client::DispatcherClient, AssignmentsRequest, Task};
use shoal_runtime::ContainerRuntime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use spec::runtime_spec;
use state::TaskDb;

/// How the agent reaches the current leader.
#[tonic::async_trait]
pub trait Leader: Send + Sync {
    /// A channel to the leader's dispatcher (or an error saying why there is none now).
    async fn channel(&self) -> Result<Channel, String>;

    /// When the leader last answered this node (its heartbeat): how the agent judges whether
    /// it is in touch with the managers (`--stop-on-disconnect`). None: not yet since start.
    fn last_contact(&self) -> Option<std::time::Instant> {
        None
    }

    /// How long without an answer before the node counts as out of touch: the grace the
    /// leader judges this node by (its heartbeat period times the missed beats it tolerates;
    /// the period grows in large clusters).
    fn contact_grace(&self) -> std::time::Duration {
        disconnect::THRESHOLD
    }
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's id.
    pub node_id: String,
    /// Directory of the agent's own database.
    pub data_dir: PathBuf,
    /// Overlay networking: tasks get namespaces of their own, plugged into the overlays and
    /// the egress bridge. `None`: each container gets a namespace with loopback only.
    pub network: Option<NetworkConfig>,
}

/// How the agent reaches the host's network state.
#[derive(Clone)]
pub struct NetworkConfig {
    /// Reads and changes the host's links, entries and namespaces.
    pub executor: Arc<dyn shoal_net::Executor>,
    /// The underlay address VXLAN leaves from.
    pub local: Option<std::net::Ipv4Addr>,
    /// Serve each task's resolver at 127.0.0.11 and give it `/etc/resolv.conf`, `/etc/hosts`
    /// and `/etc/hostname`.
    pub dns: bool,
    /// TTL in seconds of the resolvers' answers for cluster names.
    pub dns_ttl: u32,
}

impl std::fmt::Debug for NetworkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkConfig").field("local", &self.local).finish()
    }
}

/// The agent's handles on the network loop.
struct NetSide {
    inputs: Arc<watch::Sender<network::Inputs>>,
    ready: watch::Receiver<std::collections::BTreeMap<String, network::Readiness>>,
    executor: Arc<dyn shoal_net::Executor>,
    /// The egress bridge's address.
    gateway: Option<shoal_net::Net>,
    /// Where tasks' `/etc` files go (when the node serves their DNS).
    etc: Option<PathBuf>,
    /// This node's stopping tasks that no node sends traffic to any more.
    drained: Arc<watch::Sender<std::collections::BTreeSet<String>>>,
    /// Tasks a published port of this node leads to straight (host mode, `traffic=local`).
    published: watch::Receiver<std::collections::BTreeSet<String>>,
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Local state.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The runtime did not answer.
    #[error("container runtime: {0}")]
    Runtime(String),
}

/// What the agent holds and whether it follows the leader, for `shoal info`: names and counts,
/// never secret data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// An assignment stream from the leader is open.
    pub connected: bool,
    /// Complete assignment sets applied since the agent started (every stream begins with one).
    pub sessions: u64,
    /// Tasks assigned to this node.
    pub tasks: usize,
    /// Names of the secrets the dispatcher delivered (the ones this node's tasks use).
    pub secrets: Vec<String>,
    /// Names of the configs the dispatcher delivered.
    pub configs: Vec<String>,
}

struct Running {
    tx: watch::Sender<Task>,
    cancel: CancellationToken,
}

struct Agent {
    /// Every task controller and container clean-up of this agent: they end with it.
    work: tokio::task::JoinSet<()>,
    runtime: Arc<dyn ContainerRuntime>,
    db: TaskDb,
    reporter: reporter::Reporter,
    controllers: HashMap<String, Running>,
    cancel: CancellationToken,
    files: Result<files::FileRoot, String>,
    status: watch::Sender<AgentStatus>,
    net: Option<NetSide>,
    /// Since when the node is out of touch with the managers (None: in touch).
    out_of_touch: watch::Receiver<Option<std::time::Instant>>,
}

fn id_of(t: &Task) -> String {
    t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

impl Agent {
    fn spawn_controller(&mut self, task: Task, adopted: Option<shoal_runtime::ContainerState>) {
        let id = id_of(&task);
        let last = self.db.status(&id).ok().flatten().or_else(|| task.status.clone()).unwrap_or_default();
        let (tx, rx) = watch::channel(task);
        let cancel = self.cancel.child_token();
        let tools = controller::Tools {
            runtime: self.runtime.clone(),
            reporter: self.reporter.clone(),
            files: self.files.clone(),
            out_of_touch: self.out_of_touch.clone(),
        };
        let net = self.net.as_ref().map(|n| controller::NetWait {
            ready: n.ready.clone(),
            path: n.executor.namespace_path(&id),
            etc: n.etc.as_ref().map(|d| d.join(&id)),
            drained: n.drained.subscribe(),
            published: n.published.clone(),
        });
        let c = controller::Controller::new(rx, tools, adopted, last, cancel.clone(), net);
        self.work.spawn(c.run());
        self.controllers.insert(id, Running { tx, cancel });
    }

    /// Tells the network loop about `task`, giving it an egress address first if it has none.
    fn track_network(&self, task: &Task) {
        let Some(net) = &self.net else { return };
        let id = id_of(task);
        // A task already tracked keeps its address; only a new one reads what is taken.
        let tracked = net.inputs.borrow().tasks.get(&id).and_then(|t| t.gateway_address);
        let known =
            if tracked.is_some() { Default::default() } else { self.db.gateway_addresses().unwrap_or_default() };
        let gateway_address = match tracked.or_else(|| known.get(&id).copied()) {
            Some(a) => Some(a),
            None => net.gateway.and_then(|gw| {
                let used = known.values().copied().collect();
                let a = shoal_net::routes::next_free(gw, &used)?;
                match self.db.put_gateway_address(&id, a) {
                    Ok(()) => Some(a),
                    Err(e) => {
                        tracing::error!(task_id = %id, error = %e, "cannot record the task's egress address");
                        None
                    }
                }
            }),
        };
        let local = network::LocalTask {
            attachments: task.networks.clone(),
            gateway_address,
            host_ports: task.host_ports.clone(),
            service_id: task.service_id.clone(),
            serving: task.desired_state == shoal_api::v1::TaskState::Running as i32
                && task.status.as_ref().is_some_and(|s| s.state == shoal_api::v1::TaskState::Running as i32),
        };
        net.inputs.send_if_modified(|i| {
            let changed = i.tasks.get(&id) != Some(&local);
            i.tasks.insert(id.clone(), local);
            changed
        });
    }

    fn upsert(&mut self, task: Task) {
        let id = id_of(&task);
        if let Err(e) = self.db.put_task(&task) {
            tracing::error!(task_id = %id, error = %e, "cannot persist assignment");
            return;
        }
        self.track_network(&task);
        match self.controllers.get(&id) {
            Some(r) => {
                r.tx.send_replace(task);
            }
            None => self.spawn_controller(task, None),
        }
    }

    /// The task left this node: stop its controller, then its container, then forget it.
    fn remove(&mut self, id: &str) {
        if let Some(r) = self.controllers.remove(id) {
            r.cancel.cancel();
        }
        let (runtime, db, id) = (self.runtime.clone(), self.db.clone(), id.to_string());
        let files = self.files.clone().ok();
        let inputs = self.net.as_ref().map(|n| n.inputs.clone());
        let etc = self.net.as_ref().and_then(|n| n.etc.as_ref()).map(|d| d.join(&id));
        self.work.spawn(async move {
            let _ = runtime.stop(&id, 15, Duration::from_secs(10)).await;
            if let Err(e) = runtime.remove(&id).await {
                tracing::warn!(task_id = %id, error = %e, "removing the container failed");
            }
            if let Some(f) = files {
                f.remove(&id);
            }
            // Its namespace goes once its container is gone (not before: it may still be
            // finishing its work).
            if let Some(inputs) = inputs {
                inputs.send_if_modified(|i| i.tasks.remove(&id).is_some());
            }
            if let Some(dir) = etc {
                let _ = std::fs::remove_dir_all(dir);
            }
            if let Err(e) = db.remove(&id) {
                tracing::warn!(task_id = %id, error = %e, "forgetting the task failed");
            }
        });
    }

    fn apply(&mut self, mut msg: shoal_api::v1::AssignmentsMessage) {
        if msg.drain_update {
            if let Some(net) = &self.net {
                net.drained.send_replace(msg.drained.iter().cloned().collect());
            }
        }
        // The network view first: the tasks in the same message use it.
        if msg.network_view {
            if let Some(net) = &self.net {
                let view = network::View {
                    networks: std::mem::take(&mut msg.networks),
                    endpoints: std::mem::take(&mut msg.endpoints),
                    port: msg.data_path_port,
                    vips: std::mem::take(&mut msg.vips),
                    ingress_ports: std::mem::take(&mut msg.ingress_ports),
                };
                let seq = msg.view_seq;
                net.inputs.send_if_modified(|i| {
                    let changed = i.view.as_ref() != Some(&view) || i.view_seq != seq;
                    i.view = Some(view);
                    i.view_seq = seq;
                    changed
                });
            }
        }
        // Secrets and configs first: the tasks in the same message may need them.
        if msg.dependencies {
            let name = |a: Option<&shoal_api::v1::Annotations>| a.map(|a| a.name.clone()).unwrap_or_default();
            let secrets = msg.secrets.iter().map(|s| name(s.spec.as_ref().and_then(|s| s.annotations.as_ref())));
            let configs = msg.configs.iter().map(|c| name(c.spec.as_ref().and_then(|c| c.annotations.as_ref())));
            let (secrets, configs) = (secrets.collect(), configs.collect());
            self.status.send_modify(|st| {
                st.secrets = secrets;
                st.configs = configs;
            });
            if let Ok(files) = &self.files {
                files.set_deps(msg.secrets, msg.configs);
            }
        }
        let complete = msg.r#type == assignments_message::Type::Complete as i32;
        if complete {
            let keep: std::collections::HashSet<String> = msg.tasks.iter().map(id_of).collect();
            let gone: Vec<String> = self.controllers.keys().filter(|id| !keep.contains(*id)).cloned().collect();
            for id in gone {
                self.remove(&id);
            }
        }
        for id in &msg.removed {
            self.remove(id);
        }
        for t in msg.tasks {
            self.upsert(t);
        }
        self.reap();
        let tasks = self.controllers.len();
        self.status.send_modify(|st| {
            st.tasks = tasks;
            if complete {
                st.connected = true;
                st.sessions += 1;
            }
        });
        if complete {
            tracing::info!(tasks, "following the leader's assignments");
        }
    }

    /// Forgets the controllers and clean-ups that finished.
    fn reap(&mut self) {
        while self.work.try_join_next().is_some() {}
    }

    fn disconnected(&self) {
        self.status.send_modify(|st| st.connected = false);
    }
}

/// The agent's work, for its owner to run: call it with the token that stops it.
pub type AgentRun =
    Box<dyn FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// Prepares the agent: the receiver shows what it holds, and the returned work, once run,
/// re-adopts what the local state and the runtime know, then follows the leader's assignments
/// until its token is cancelled. It owns every controller it starts; they end with it (the
/// containers do not: they belong to the runtime, and the next agent adopts them).
pub fn start(
    cfg: AgentConfig,
    runtime: Arc<dyn ContainerRuntime>,
    leader: Arc<dyn Leader>,
) -> Result<(watch::Receiver<AgentStatus>, AgentRun), AgentError> {
    let db = TaskDb::open(&cfg.data_dir)?;
    let (status, status_rx) = watch::channel(AgentStatus::default());
    let run: AgentRun = Box::new(move |cancel: CancellationToken| {
        Box::pin(async move {
            // Adoption needs the runtime's view; containerd may not answer yet (it starts later, or
            // restarts): keep asking, the node reports itself unable to run tasks meanwhile.
            let mut backoff = Duration::from_millis(200);
            let existing = loop {
                match runtime.list().await {
                    Ok(list) => break list,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list containers yet; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            let mut work = tokio::task::JoinSet::new();
            let (touch_tx, out_of_touch) = watch::channel(None);
            work.spawn(watch_touch(leader.clone(), touch_tx, cancel.clone()));
            let (reporter, reporting) = reporter::new(cfg.node_id.clone(), db.clone(), leader.clone(), cancel.clone());
            work.spawn(reporting);
            let mut existing: HashMap<String, shoal_runtime::ContainerState> =
                existing.into_iter().map(|c| (c.id.clone(), c)).collect();
            let files = files::FileRoot::mount(cfg.data_dir.join("files"));
            if let Err(e) = &files {
                tracing::error!(error = %e, "tasks that use secrets or configs cannot run on this node");
            }
            let net = cfg.network.map(|n| {
                let gateway = std::fs::read_to_string("/proc/net/route")
                    .ok()
                    .and_then(|t| shoal_net::routes::pick_gateway(&t));
                if gateway.is_none() {
                    tracing::error!("no subnet in 172.18.0.0-172.31.255.255 is free for the egress bridge: tasks that need egress cannot run here");
                }
                let (inputs, inputs_rx) = watch::channel(network::Inputs::default());
                let (ready_tx, ready) = watch::channel(std::collections::BTreeMap::new());
                let host = network::Host {
                    node_id: cfg.node_id.clone(),
                    local: n.local,
                    gateway,
                    underlay_mtu: 1500,
                    dns: n.dns,
                    dns_ttl: n.dns_ttl,
                };
                let (acks, acked) = watch::channel(0u64);
                let (published_tx, published) = watch::channel(std::collections::BTreeSet::new());
                let reports = network::Reports { ready: ready_tx, acks, published: published_tx };
                work.spawn(network::run(n.executor.clone(), inputs_rx, reports, host, cancel.clone()));
                work.spawn(acknowledge(cfg.node_id.clone(), leader.clone(), acked, cancel.clone()));
                let etc = n.dns.then(|| cfg.data_dir.join("etc"));
                let drained = Arc::new(watch::channel(std::collections::BTreeSet::new()).0);
                NetSide { inputs: Arc::new(inputs), ready, executor: n.executor, gateway, etc, drained, published }
            });
            let mut agent = Agent {
                work,
                runtime: runtime.clone(),
                db: db.clone(),
                reporter,
                controllers: HashMap::new(),
                cancel: cancel.clone(),
                files,
                status,
                net,
                out_of_touch,
            };
            let known = match db.tasks() {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the agent's task database: this node runs no tasks");
                    return;
                }
            };
            for t in known {
                let adopted = existing.remove(&id_of(&t));
                agent.track_network(&t);
                agent.spawn_controller(t, adopted);
            }
            // Containers with no recorded task were created by no assignment this agent knows:
            // removed now, and from then on by the janitor's sweeps.
            for (id, _) in existing {
                janitor::discard(runtime.as_ref(), &id).await;
            }
            agent.work.spawn(janitor::run(runtime.clone(), db.clone(), cancel.clone()));
            session(cfg.node_id, agent, leader, cancel).await;
        })
    });
    Ok((status_rx, run))
}

/// Keeps `out` saying since when the node is out of touch with the managers, looked at twice
/// a second.
async fn watch_touch(
    leader: Arc<dyn Leader>,
    out: watch::Sender<Option<std::time::Instant>>,
    cancel: CancellationToken,
) {
    let started = std::time::Instant::now();
    loop {
        let since = disconnect::out_of_touch_since(
            leader.last_contact(),
            started,
            std::time::Instant::now(),
            leader.contact_grace(),
        );
        out.send_if_modified(|v| {
            let changed = *v != since;
            if changed {
                match since {
                    Some(_) => tracing::warn!("out of touch with the managers"),
                    None => tracing::info!("in touch with the managers again"),
                }
            }
            *v = since;
            changed
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Tells the leader which network view this node installed (the latest, as they come).
async fn acknowledge(
    node_id: String,
    leader: Arc<dyn Leader>,
    mut acked: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = acked.changed() => if r.is_err() { return },
        }
        let seq = *acked.borrow_and_update();
        for attempt in 0..3u32 {
            let sent = match leader.channel().await {
                Ok(ch) => DispatcherClient::new(ch)
                    .ack_network_view(shoal_api::v1::AckNetworkViewRequest { node_id: node_id.clone(), view_seq: seq })
                    .await
                    .is_ok(),
                Err(_) => false,
            };
            if sent || acked.has_changed().unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
    }
}

async fn session(node_id: String, mut agent: Agent, leader: Arc<dyn Leader>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match leader.channel().await {
            Ok(ch) => {
                let mut client = DispatcherClient::new(ch).max_decoding_message_size(64 << 20);
                match client.assignments(AssignmentsRequest { node_id: node_id.clone() }).await {
                    Ok(stream) => {
                        backoff = Duration::from_millis(100);
                        let mut stream = stream.into_inner();
                        loop {
                            tokio::select! {
                                biased;
                                _ = cancel.cancelled() => return,
                                m = stream.message() => match m {
                                    Ok(Some(msg)) => agent.apply(msg),
                                    Ok(None) => break,
                                    Err(s) => { tracing::debug!(status = %s, "assignment stream ended"); break; }
                                },
                            }
                        }
                        agent.disconnected();
                    }
                    Err(s) => tracing::debug!(status = %s, "assignments refused"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "no leader to ask for assignments"),
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
