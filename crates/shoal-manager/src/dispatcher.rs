//! The dispatcher, served by the leader: streams each node its assignments (a complete set,
//! then incremental changes) and commits the task status the agents report.
//!
//! One hub per leader term owns every node's stream. It follows the store's change stream and
//! wakes only the streams of the nodes whose tasks changed, with only those tasks: the cost of
//! an applied change is proportional to the change, not to the cluster. What a stream sent is
//! remembered per task (its version), so whenever the hub cannot tell what changed (a snapshot
//! replaced the store, it fell behind the change stream, a stream's buffer was full) it diffs
//! the node's current set against what was sent, and nothing is ever missed. Reported status
//! goes through `SetTaskStatus` ops, which change only the status and so never conflict with the
//! orchestrator's writes to the same task.
//!
//! Decisions are pure functions ([`delta`]: sent vs current -> message); the hub executes them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use shoal_api::v1::{
    assignments_message, dispatcher_server::Dispatcher, object, op, AssignmentsMessage, AssignmentsRequest, Op, Task,
    TaskStatusUpdate, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::managers::{member_addr, Managers, RaftRuntime};
use crate::writer::Writer;

/// The way to the current leader term's dispatcher hub and status batcher (none while this
/// manager does not lead).
#[derive(Default)]
pub struct Links {
    hub: Mutex<Option<mpsc::Sender<Register>>>,
    status: Mutex<Option<mpsc::Sender<StatusReport>>>,
}

impl Links {
    /// Where to send agents' status reports, while this manager leads.
    pub(crate) fn status_batcher(&self) -> Option<mpsc::Sender<StatusReport>> {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone().filter(|h| !h.is_closed())
    }

    /// Where to register an assignment stream, while this manager leads.
    pub(crate) fn hub(&self) -> Option<mpsc::Sender<Register>> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner()).clone().filter(|h| !h.is_closed())
    }

    /// Connects a new term's hub and batcher; `None`s: the term ended.
    pub(crate) fn set(&self, hub: Option<mpsc::Sender<Register>>, status: Option<mpsc::Sender<StatusReport>>) {
        *self.hub.lock().unwrap_or_else(|p| p.into_inner()) = hub;
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

/// gRPC implementation of `Dispatcher`.
pub struct DispatcherService {
    managers: Managers,
    links: Arc<Links>,
}

impl DispatcherService {
    /// Serves dispatcher calls with this node's Raft instance and leader term.
    pub fn new(managers: Managers, links: Arc<Links>) -> Self {
        Self { managers, links }
    }

    fn require_leader(&self) -> Result<Arc<RaftRuntime>, Status> {
        let rt = self.managers.require_manager()?;
        let m = rt.metrics();
        if m.current_leader != Some(m.id) {
            let at = m.current_leader.and_then(|l| member_addr(&m, l)).unwrap_or_default();
            return Err(Status::failed_precondition(format!("not the leader; the leader is at {at:?}")));
        }
        Ok(rt)
    }
}

/// Whether the agent still has something to do (or to clean up) for the task.
fn assigned(t: &Task) -> bool {
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    let done = observed >= shoal_api::v1::TaskState::Complete as i32;
    let wanted = t.desired_state <= shoal_api::v1::TaskState::Running as i32;
    // A task is started only with its addresses (a global task is created on its node before
    // the allocator gives them).
    let unstarted = observed <= shoal_api::v1::TaskState::Assigned as i32;
    (!done || wanted) && (!unstarted || t.networks_attached())
}

/// The node's current assignments by id.
fn node_tasks(store: &shoal_store::Store, node_id: &str) -> HashMap<String, Task> {
    store
        .tasks_by_node(node_id)
        .filter(|t| assigned(t))
        .map(|t| (t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(), t.clone()))
        .collect()
}

/// The secrets and configs a node's tasks need.
#[derive(Default)]
struct Deps {
    secrets: Vec<shoal_api::v1::Secret>,
    configs: Vec<shoal_api::v1::Config>,
}

/// The secrets and configs one task needs on its node (a node never receives another secret):
/// none once it is to stop or ended.
fn task_dependencies(t: &Task) -> (Vec<String>, Vec<String>) {
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    if t.desired_state > shoal_api::v1::TaskState::Running as i32
        || observed >= shoal_api::v1::TaskState::Complete as i32
    {
        return Default::default();
    }
    match t.spec.as_ref().and_then(|s| s.container.as_ref()) {
        Some(c) => (
            c.secrets.iter().map(|r| r.secret_id.clone()).collect(),
            c.configs.iter().map(|r| r.config_id.clone()).collect(),
        ),
        None => Default::default(),
    }
}

/// What each of a node's assigned tasks refers to (its secrets and configs, its networks),
/// kept as its tasks change, so that a sync of a few changed tasks does not look up every task
/// of the node. Only tasks that refer to something are held.
#[derive(Default)]
struct Refs {
    dependencies: HashMap<String, (Vec<String>, Vec<String>)>,
    networks: HashMap<String, Vec<String>>,
}

impl Refs {
    /// Task `id` is now `t` (`None`: no longer one of the node's assigned tasks).
    fn set(&mut self, id: &str, t: Option<&Task>) {
        let deps = t.map(task_dependencies).filter(|(s, c)| !s.is_empty() || !c.is_empty());
        match deps {
            Some(d) => {
                self.dependencies.insert(id.to_owned(), d);
            }
            None => {
                self.dependencies.remove(id);
            }
        }
        let nets: Vec<String> =
            t.map(|t| t.networks.iter().map(|a| a.network_id.clone()).collect()).unwrap_or_default();
        if nets.is_empty() {
            self.networks.remove(id);
        } else {
            self.networks.insert(id.to_owned(), nets);
        }
    }

    /// The ids of the secrets and configs the node's tasks need.
    fn dependency_ids(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let secrets = self.dependencies.values().flat_map(|(s, _)| s.iter().cloned()).collect();
        let configs = self.dependencies.values().flat_map(|(_, c)| c.iter().cloned()).collect();
        (secrets, configs)
    }

    /// The networks in the node's view (see `netview::network_ids`).
    fn network_ids(&self, ingress: &crate::netview::Ingress) -> BTreeSet<String> {
        let mut ids = crate::netview::network_ids(ingress, std::iter::empty());
        ids.extend(self.networks.values().flatten().cloned());
        ids
    }
}

/// Versions of the node's dependencies, cheap to compare after every apply.
fn dependency_versions(store: &shoal_store::Store, ids: &(BTreeSet<String>, BTreeSet<String>)) -> Vec<(String, u64)> {
    let v = |m: &Option<shoal_api::v1::Meta>| m.as_ref().map(|m| (m.id.clone(), m.version)).unwrap_or_default();
    let secrets = ids.0.iter().filter_map(|id| store.secret(id).map(|s| v(&s.meta)));
    let configs = ids.1.iter().filter_map(|id| store.config(id).map(|c| v(&c.meta)));
    secrets.chain(configs).collect()
}

/// The dependencies themselves (copied only when they are sent).
fn dependencies(store: &shoal_store::Store, ids: &(BTreeSet<String>, BTreeSet<String>)) -> Deps {
    Deps {
        secrets: ids.0.iter().filter_map(|id| store.secret(id).cloned()).collect(),
        configs: ids.1.iter().filter_map(|id| store.config(id).cloned()).collect(),
    }
}

fn version(t: &Task) -> u64 {
    t.meta.as_ref().map_or(0, |m| m.version)
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<AssignmentsMessage, Status>> + Send>>;

/// The sender half of one node's assignment stream.
type StreamTx = mpsc::Sender<Result<AssignmentsMessage, Status>>;

/// A request to the hub.
pub(crate) enum Register {
    /// Serve `node_id` on `tx` (replacing an older stream of the node).
    Stream { node_id: String, tx: StreamTx },
    /// `node_id` installed network view `seq` of its stream.
    Ack { node_id: String, seq: u64 },
}

/// A stopping task: its id and networks.
pub type Stopping = (String, BTreeSet<String>);

/// What a node was sent and acknowledged of its network view.
#[derive(Debug, Clone, Copy)]
pub struct NodeViews<'a> {
    /// The networks of the view sent.
    pub networks: &'a BTreeSet<String>,
    /// Serving tasks of the last view it acknowledged.
    pub acked: Option<&'a HashSet<String>>,
    /// Serving tasks of the last view sent.
    pub latest: Option<&'a HashSet<String>>,
}

/// The stopping tasks that no node may still send traffic to: every node whose view shares a
/// network with the task has acknowledged a view without it serving, and the last view sent to
/// it does not list it either. Pure.
pub fn drained(stopping: &[Stopping], nodes: &[NodeViews<'_>]) -> BTreeSet<String> {
    stopping
        .iter()
        .filter(|(task, nets)| {
            nodes
                .iter()
                .filter(|n| !n.networks.is_disjoint(nets))
                .all(|n| n.acked.is_some_and(|a| !a.contains(task)) && n.latest.is_none_or(|l| !l.contains(task)))
        })
        .map(|(t, _)| t.clone())
        .collect()
}

/// A node's tasks that are being stopped while their address may still be in use: desired
/// past running, not ended, on a network.
fn stopping_tasks(store: &shoal_store::Store, node_id: &str) -> Vec<Stopping> {
    store
        .tasks_by_node(node_id)
        .filter(|t| {
            let observed = t.status.as_ref().map_or(0, |s| s.state);
            t.desired_state > shoal_api::v1::TaskState::Running as i32
                && observed < shoal_api::v1::TaskState::Complete as i32
                && !t.networks.is_empty()
        })
        .map(|t| {
            let id = t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
            (id, t.networks.iter().map(|a| a.network_id.clone()).collect())
        })
        .collect()
}

/// Tells every node with networks which of its stopping tasks are out of every node's VIPs and
/// DNS now (only when that changed).
fn update_drains(store: &shoal_store::Store, sessions: &mut HashMap<String, Session>) {
    let views: Vec<(String, Vec<Stopping>)> = sessions
        .values()
        .filter(|s| !s.networks.is_empty() || !s.drained.is_empty())
        .map(|s| (s.node_id.clone(), stopping_tasks(store, &s.node_id)))
        .collect();
    if views.iter().all(|(_, st)| st.is_empty()) && sessions.values().all(|s| s.drained.is_empty()) {
        return;
    }
    let nodes: Vec<_> = sessions
        .values()
        .map(|s| NodeViews {
            networks: &s.networks,
            acked: s.acked.as_ref(),
            latest: s.views.back().map(|(_, serving)| serving),
        })
        .collect();
    let sets: Vec<(String, BTreeSet<String>)> =
        views.into_iter().map(|(node, stopping)| (node, drained(&stopping, &nodes))).collect();
    for (node, set) in sets {
        let Some(s) = sessions.get_mut(&node) else { continue };
        if s.drained == set {
            continue;
        }
        let msg = AssignmentsMessage {
            r#type: assignments_message::Type::Incremental as i32,
            drain_update: true,
            drained: set.iter().cloned().collect(),
            ..Default::default()
        };
        if s.tx.try_send(Ok(msg)).is_ok() {
            s.drained = set;
        }
    }
}

/// Messages a node's stream buffers before the hub stops sending and diffs later instead.
const STREAM_BUFFER: usize = 32;

/// What was sent to one node, and where to send more.
struct Session {
    node_id: String,
    tx: StreamTx,
    /// Task id -> version sent.
    sent: HashMap<String, u64>,
    /// The dependency versions sent; `None` before the first message.
    sent_deps: Option<Vec<(String, u64)>>,
    /// Digest of the network view sent.
    sent_net: u64,
    /// The networks of the view sent.
    networks: BTreeSet<String>,
    /// Number of the last network view sent.
    view_seq: u64,
    /// Views sent and not yet acknowledged: (number, serving task ids).
    views: std::collections::VecDeque<(u64, HashSet<String>)>,
    /// Serving task ids of the last view the node acknowledged.
    acked: Option<HashSet<String>>,
    /// The drained list last sent.
    drained: BTreeSet<String>,
    /// A message could not be buffered: diff the whole set at the next chance.
    stale: bool,
    /// What the node's assigned tasks refer to, as the store has them.
    refs: Refs,
}

/// The overlays a node's tasks use and every address on them.
#[derive(Default)]
pub struct NetView {
    /// The networks.
    pub networks: Vec<shoal_api::v1::Network>,
    /// Every reachable task address on them.
    pub endpoints: Vec<shoal_api::v1::Endpoint>,
    /// The services' VIPs on them.
    pub vips: Vec<shoal_api::v1::ServiceVip>,
    /// Every port published in ingress mode.
    pub ingress_ports: Vec<shoal_api::v1::IngressPort>,
    /// VXLAN's UDP port.
    pub port: u32,
}

/// The message that brings a node from `sent` to `current`: the complete set the first time
/// (`first`), else the tasks whose version differs and the ids that left; `None` when nothing
/// changed. Pure.
pub fn delta(
    first: bool,
    sent: &HashMap<String, u64>,
    current: &HashMap<String, Task>,
    deps: Option<(Vec<shoal_api::v1::Secret>, Vec<shoal_api::v1::Config>)>,
    net: Option<NetView>,
) -> Option<AssignmentsMessage> {
    let (dependencies, (secrets, configs)) = match deps {
        Some(d) => (true, d),
        None => (false, Default::default()),
    };
    let (network_view, NetView { networks, endpoints, vips, ingress_ports, port }) = match net {
        Some(v) => (true, v),
        None => (false, NetView::default()),
    };
    if first {
        let mut tasks: Vec<Task> = current.values().cloned().collect();
        tasks.sort_by(|a, b| version_key(a).cmp(&version_key(b)));
        return Some(AssignmentsMessage {
            r#type: assignments_message::Type::Complete as i32,
            tasks,
            removed: Vec::new(),
            dependencies: true,
            secrets,
            configs,
            network_view: true,
            networks,
            endpoints,
            data_path_port: port,
            vips,
            ingress_ports,
            ..Default::default()
        });
    }
    let mut changed: Vec<Task> =
        current.iter().filter(|(id, t)| sent.get(*id) != Some(&version(t))).map(|(_, t)| t.clone()).collect();
    changed.sort_by(|a, b| version_key(a).cmp(&version_key(b)));
    let mut removed: Vec<String> = sent.keys().filter(|id| !current.contains_key(*id)).cloned().collect();
    removed.sort();
    (!changed.is_empty() || !removed.is_empty() || dependencies || network_view).then_some(AssignmentsMessage {
        r#type: assignments_message::Type::Incremental as i32,
        tasks: changed,
        removed,
        dependencies,
        secrets,
        configs,
        network_view,
        networks,
        endpoints,
        data_path_port: port,
        vips,
        ingress_ports,
        ..Default::default()
    })
}

fn version_key(t: &Task) -> (u64, &str) {
    (version(t), t.meta.as_ref().map_or("", |m| m.id.as_str()))
}

impl Session {
    /// Brings the node up to date with `store`: all of its tasks when `all` (or when stale),
    /// else only `touched` (task ids that changed; others are as sent).
    fn sync(
        &mut self,
        store: &shoal_store::Store,
        ingress: &crate::netview::Ingress,
        touched: Option<&BTreeSet<String>>,
    ) -> bool {
        let first = self.sent_deps.is_none();
        let everything = first || self.stale || touched.is_none();
        // Start from what was sent, and look again at what may differ from it.
        let mut current: HashMap<String, Task> = HashMap::new();
        let mut sent_view: HashMap<String, u64> = HashMap::new();
        if everything {
            current = node_tasks(store, &self.node_id);
            sent_view = self.sent.clone();
            self.refs = Refs::default();
            for (id, t) in &current {
                self.refs.set(id, Some(t));
            }
        } else if let Some(ids) = touched {
            for id in ids {
                if let Some(v) = self.sent.get(id) {
                    sent_view.insert(id.clone(), *v);
                }
                let t = store.task(id).filter(|t| t.node_id == self.node_id && assigned(t));
                self.refs.set(id, t);
                if let Some(t) = t {
                    current.insert(id.clone(), t.clone());
                }
            }
        }
        // Dependencies follow the node's whole runnable set; their versions are cheap to compare.
        let ids = self.refs.dependency_ids();
        let versions = dependency_versions(store, &ids);
        let deps_changed = self.sent_deps.as_ref() != Some(&versions);
        let deps = deps_changed.then(|| {
            let d = dependencies(store, &ids);
            (d.secrets, d.configs)
        });
        let net_ids = self.refs.network_ids(ingress);
        let view = crate::netview::view(store, &net_ids, ingress);
        let port = store
            .cluster()
            .and_then(|c| c.network_defaults.as_ref())
            .map(|d| d.data_path_port)
            .filter(|p| *p != 0)
            .unwrap_or(crate::netview::DEFAULT_DATA_PATH_PORT);
        let net_digest = crate::netview::digest(&view, port);
        let serving: HashSet<String> = view.endpoints.iter().filter(|e| e.serving).map(|e| e.task_id.clone()).collect();
        let net = (first || net_digest != self.sent_net).then_some(NetView {
            networks: view.networks,
            endpoints: view.endpoints,
            vips: view.vips,
            ingress_ports: view.ingress_ports,
            port,
        });
        let Some(mut msg) = delta(first, &sent_view, &current, deps, net) else {
            self.stale = false;
            return true;
        };
        let seq = self.view_seq + 1;
        if msg.network_view {
            msg.view_seq = seq;
        }
        let sent_view_now = msg.network_view;
        match self.tx.try_send(Ok(msg)) {
            Ok(()) => {
                for (id, t) in &current {
                    self.sent.insert(id.clone(), version(t));
                }
                for id in sent_view.keys().filter(|id| !current.contains_key(*id)) {
                    self.sent.remove(id);
                }
                self.sent_deps = Some(versions);
                self.sent_net = net_digest;
                self.networks = net_ids;
                if sent_view_now {
                    self.view_seq = seq;
                    self.views.push_back((seq, serving));
                    // A node that never acknowledges must not grow this without bound.
                    while self.views.len() > 64 {
                        self.views.pop_front();
                    }
                }
                self.stale = false;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The agent is slow: drop this message and diff everything later.
                self.stale = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// What a batch of applied events touched.
#[derive(Default)]
struct Touched {
    /// Task ids per node.
    per_node: HashMap<String, BTreeSet<String>>,
    /// Secrets or configs changed: every node's dependencies are compared.
    deps: bool,
    /// Networks a changed task is attached to: the views holding them are compared.
    networks: BTreeSet<String>,
    /// A network or node changed: every view is compared.
    all_networks: bool,
    /// A service publishing in ingress mode changed: every node's view is compared, those of
    /// nodes on no network included (each forwards the ingress ports).
    ingress: bool,
}

fn touched(events: &[shoal_api::v1::Event]) -> Touched {
    let mut out = Touched::default();
    for e in events {
        match e.object.as_ref().and_then(|o| o.kind.as_ref()) {
            Some(object::Kind::Task(t)) => {
                out.networks.extend(t.networks.iter().map(|a| a.network_id.clone()));
                if !t.node_id.is_empty() {
                    let id = t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                    out.per_node.entry(t.node_id.clone()).or_default().insert(id);
                }
            }
            Some(object::Kind::Secret(_) | object::Kind::Config(_)) => out.deps = true,
            // Its VIPs are in the views of its networks.
            Some(object::Kind::Service(svc)) => {
                out.networks.extend(svc.virtual_ips.iter().map(|v| v.network_id.clone()));
                // Ports published in ingress mode are in every node's view.
                let publishes =
                    |s: Option<&shoal_api::v1::ServiceSpec>| s.is_some_and(|s| s.ingress_ports().next().is_some());
                if publishes(svc.spec.as_ref()) || publishes(svc.previous_spec.as_ref()) {
                    out.ingress = true;
                }
            }
            Some(object::Kind::Network(_) | object::Kind::Node(_) | object::Kind::Cluster(_)) => {
                out.all_networks = true
            }
            _ => {}
        }
    }
    out
}

/// The leader's hub: owns every node's assignment stream for this term (see the module doc).
/// Returns when `token` is cancelled (leadership lost), ending every stream with an error that
/// tells the agent to reconnect.
pub(crate) async fn run_hub(rt: Arc<RaftRuntime>, mut regs: mpsc::Receiver<Register>, token: CancellationToken) {
    let mut changes = rt.store.events();
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            reg = regs.recv() => match reg {
                None => break,
                Some(Register::Stream { node_id, tx }) => {
                    let mut s = Session {
                        node_id: node_id.clone(),
                        tx,
                        sent: HashMap::new(),
                        sent_deps: None,
                        sent_net: 0,
                        networks: BTreeSet::new(),
                        view_seq: 0,
                        views: Default::default(),
                        acked: None,
                        drained: BTreeSet::new(),
                        stale: false,
                        refs: Refs::default(),
                    };
                    if rt.store.read(|st| s.sync(st, &crate::netview::ingress(st), None)) {
                        sessions.insert(node_id, s);
                    }
                }
                Some(Register::Ack { node_id, seq }) => {
                    if let Some(s) = sessions.get_mut(&node_id) {
                        while s.views.front().is_some_and(|(n, _)| *n < seq) {
                            s.views.pop_front();
                        }
                        if let Some((_, serving)) = s.views.front().filter(|(n, _)| *n == seq) {
                            s.acked = Some(serving.clone());
                        }
                        rt.store.read(|st| update_drains(st, &mut sessions));
                    }
                }
            },
            change = changes.recv() => {
                let resync_all = match change {
                    Ok(c) => match &*c {
                        shoal_raft::Change::Applied(events) => {
                            let t = touched(events);
                            rt.store.read(|st| {
                                let ing = crate::netview::ingress(st);
                                if !(t.deps || t.ingress || t.all_networks || !t.networks.is_empty()) {
                                    // Only the nodes of the changed tasks can have anything to
                                    // learn: they are looked at, not every stream of the cluster.
                                    for (node_id, ids) in &t.per_node {
                                        if sessions.get_mut(node_id).is_some_and(|s| !s.sync(st, &ing, Some(ids))) {
                                            sessions.remove(node_id);
                                        }
                                    }
                                    return;
                                }
                                sessions.retain(|node_id, s| match t.per_node.get(node_id) {
                                    Some(ids) => s.sync(st, &ing, Some(ids)),
                                    None if t.deps => s.sync(st, &ing, Some(&BTreeSet::new())),
                                    None if t.ingress
                                        || (!s.networks.is_empty()
                                            && (t.all_networks || !s.networks.is_disjoint(&t.networks))) =>
                                    {
                                        s.sync(st, &ing, Some(&BTreeSet::new()))
                                    }
                                    None => true,
                                });
                            });
                            false
                        }
                        shoal_raft::Change::Replaced => true,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if resync_all {
                    rt.store.read(|st| {
                        let ing = crate::netview::ingress(st);
                        sessions.retain(|_, s| s.sync(st, &ing, None))
                    });
                }
                rt.store.read(|st| update_drains(st, &mut sessions));
            }
            _ = tick.tick() => {
                // Retry the streams whose buffer was full, and forget the ones that closed.
                rt.store.read(|st| {
                    let ing = sessions.values().any(|s| s.stale).then(|| crate::netview::ingress(st));
                    sessions.retain(|_, s| match (&ing, s.stale) {
                        (Some(ing), true) => s.sync(st, ing, None),
                        _ => !s.tx.is_closed(),
                    })
                });
            }
        }
    }
    for s in sessions.into_values() {
        let _ = s.tx.try_send(Err(Status::unavailable("leadership changed: reconnect to the new leader")));
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type AssignmentsStream = AssignmentStream;

    async fn assignments(&self, req: Request<AssignmentsRequest>) -> Result<Response<AssignmentStream>, Status> {
        let caller = crate::tls::caller(&req).map(|c| c.node_id.clone());
        let node_id = req.into_inner().node_id;
        same_node(caller.as_deref(), &node_id)?;
        let rt = self.require_leader()?;
        if rt.store.read(|s| s.node(&node_id).is_none()) {
            return Err(Status::not_found(format!("node {node_id:?} is not part of the cluster")));
        }
        let hub = self
            .links
            .hub()
            .ok_or_else(|| Status::unavailable("the leader is starting its dispatcher; retry in a moment"))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        hub.send(Register::Stream { node_id, tx })
            .await
            .map_err(|_| Status::unavailable("leadership changed: reconnect to the new leader"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack_network_view(
        &self,
        req: Request<shoal_api::v1::AckNetworkViewRequest>,
    ) -> Result<Response<shoal_api::v1::AckNetworkViewResponse>, Status> {
        let caller = crate::tls::caller(&req).map(|c| c.node_id.clone());
        let req = req.into_inner();
        same_node(caller.as_deref(), &req.node_id)?;
        self.require_leader()?;
        let hub = self.links.hub().ok_or_else(|| Status::unavailable("no dispatcher hub on this manager now"))?;
        hub.send(Register::Ack { node_id: req.node_id, seq: req.view_seq })
            .await
            .map_err(|_| Status::unavailable("leadership changed"))?;
        Ok(Response::new(shoal_api::v1::AckNetworkViewResponse {}))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let caller = crate::tls::caller(&req).map(|c| c.node_id.clone());
        let req = req.into_inner();
        same_node(caller.as_deref(), &req.node_id)?;
        let rt = self.require_leader()?;
        // Only forward moves of tasks this node runs; anything else is stale and dropped.
        let ops: Vec<Op> = rt.store.read(|s| {
            req.updates
                .iter()
                .filter(|u| {
                    s.task(&u.task_id).is_some_and(|t| {
                        let cur = t.status.as_ref().map_or(0, |st| st.state);
                        let next = u.status.as_ref().map_or(0, |st| st.state);
                        t.node_id == req.node_id && (next > cur || (next == cur && t.status != u.status))
                    })
                })
                .map(|u: &TaskStatusUpdate| Op { kind: Some(op::Kind::SetTaskStatus(u.clone())) })
                .collect()
        });
        if ops.is_empty() {
            return Ok(Response::new(UpdateTaskStatusResponse {}));
        }
        let batcher = self
            .links
            .status_batcher()
            .ok_or_else(|| Status::unavailable("leadership changed: report to the new leader"))?;
        let (done, answer) = tokio::sync::oneshot::channel();
        batcher
            .send(StatusReport { ops, done })
            .await
            .map_err(|_| Status::unavailable("leadership changed: report to the new leader"))?;
        match answer.await {
            Ok(Ok(())) => Ok(Response::new(UpdateTaskStatusResponse {})),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Status::unavailable("leadership changed: report to the new leader")),
        }
    }
}

/// A node speaks only for itself: the node id in a request must be its certificate's.
fn same_node(caller: Option<&str>, node_id: &str) -> Result<(), Status> {
    match caller {
        Some(c) if c != node_id => Err(Status::permission_denied(format!("node {c} may not act for node {node_id}"))),
        _ => Ok(()),
    }
}

/// Status ops of one agent report, and where to say how they ended.
pub(crate) struct StatusReport {
    ops: Vec<Op>,
    done: tokio::sync::oneshot::Sender<Result<(), ApiError>>,
}

/// Most status ops proposed in one command.
const MAX_STATUS_OPS: usize = 4096;

/// Commits the status reports of every agent together: while one command is in flight, the
/// reports that arrive queue up and go into the next, so thousands of agents cost a few
/// commands, not one each. A command the store refuses (a task deleted or moved on meanwhile)
/// is retried report by report, then op by op, so one stale update never holds back the others.
/// Ends with the leader term (`token`).
pub(crate) async fn run_status_batcher(
    writer: Writer,
    mut reports: mpsc::Receiver<StatusReport>,
    token: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            r = reports.recv() => match r { Some(r) => r, None => return },
        };
        let mut batch = vec![first];
        let mut n = batch[0].ops.len();
        while n < MAX_STATUS_OPS {
            match reports.try_recv() {
                Ok(r) => {
                    n += r.ops.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let all: Vec<Op> = batch.iter().flat_map(|r| r.ops.iter().cloned()).collect();
        match writer.propose(all).await {
            Ok(_) => batch.into_iter().for_each(|r| {
                let _ = r.done.send(Ok(()));
            }),
            Err(ApiError::Apply { .. }) => {
                for r in batch {
                    if let Err(ApiError::Apply { .. }) = writer.propose(r.ops.clone()).await {
                        for op in r.ops {
                            let _ = writer.propose(vec![op]).await;
                        }
                    }
                    let _ = r.done.send(Ok(()));
                }
            }
            Err(e) => {
                let line = e.to_string();
                for r in batch {
                    let _ = r.done.send(Err(ApiError::Internal(line.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod drain_tests {
    use super::*;

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    fn hset(xs: &[&str]) -> HashSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_task_is_drained_once_every_node_on_its_networks_acknowledged_it_gone() {
        let stopping = vec![("t1".to_string(), set(&["n1"]))];
        let (n1, n2) = (set(&["n1"]), set(&["n2"]));
        let (with, without) = (hset(&["t1", "t2"]), hset(&["t2"]));
        // A node on another network does not matter, even if it never acknowledged.
        let node = |networks, acked, latest| NodeViews { networks, acked, latest };
        let other = node(&n2, None, Some(&with));
        assert_eq!(drained(&stopping, &[node(&n1, Some(&without), Some(&without)), other]), set(&["t1"]));
        // Acknowledged a view that still had it: not yet.
        assert!(drained(&stopping, &[node(&n1, Some(&with), Some(&without))]).is_empty());
        // Acknowledged without it, but a later view (not yet acknowledged) has it again.
        assert!(drained(&stopping, &[node(&n1, Some(&without), Some(&with))]).is_empty());
        // Never acknowledged anything: not yet.
        assert!(drained(&stopping, &[node(&n1, None, Some(&without))]).is_empty());
    }
}

#[cfg(test)]
mod refs_tests {
    use super::*;
    use shoal_api::v1::{
        ConfigReference, ContainerSpec, NetworkAttachment, SecretReference, TaskSpec, TaskState, TaskStatus,
    };

    /// The reference: every task looked at.
    fn dependency_ids<'a>(tasks: impl Iterator<Item = &'a Task>) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut secret_ids = BTreeSet::new();
        let mut config_ids = BTreeSet::new();
        for t in tasks {
            let (secrets, configs) = task_dependencies(t);
            secret_ids.extend(secrets);
            config_ids.extend(configs);
        }
        (secret_ids, config_ids)
    }

    fn task(n: u64) -> Task {
        let secrets =
            (0..n % 3).map(|i| SecretReference { secret_id: format!("s{i}"), ..Default::default() }).collect();
        let configs =
            (0..n % 2).map(|i| ConfigReference { config_id: format!("c{}", n + i), ..Default::default() }).collect();
        let networks =
            (0..n % 4).map(|i| NetworkAttachment { network_id: format!("n{i}"), ..Default::default() }).collect();
        Task {
            desired_state: if n % 5 == 4 { TaskState::Shutdown } else { TaskState::Running } as i32,
            status: Some(TaskStatus {
                state: if n % 7 == 6 { TaskState::Complete } else { TaskState::Running } as i32,
                ..Default::default()
            }),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec { secrets, configs, ..Default::default() }),
                ..Default::default()
            }),
            networks,
            ..Default::default()
        }
    }

    /// The references kept task by task, through tasks added, changed and gone in any order,
    /// are those of the node's tasks as they are at the end, as a walk over all of them finds.
    #[test]
    fn kept_references_are_those_of_the_node_tasks_now() {
        let ingress = crate::netview::Ingress { network_id: Some("ingress".into()), ..Default::default() };
        let mut refs = Refs::default();
        let mut now: std::collections::BTreeMap<String, Task> = Default::default();
        // A fixed pseudo-random walk: task k of 12 becomes variant v, or leaves (v = 0).
        let mut x: u64 = 7;
        for _ in 0..400 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (id, v) = (format!("t{}", (x >> 33) % 12), (x >> 17) % 20);
            if v == 0 {
                now.remove(&id);
                refs.set(&id, None);
            } else {
                let t = task(v);
                refs.set(&id, Some(&t));
                now.insert(id, t);
            }
            assert_eq!(refs.dependency_ids(), dependency_ids(now.values()));
            assert_eq!(refs.network_ids(&ingress), crate::netview::network_ids(&ingress, now.values()));
        }
        assert!(
            !refs.dependency_ids().0.is_empty() && refs.network_ids(&ingress).len() > 1,
            "the walk refers to things"
        );
    }
}
