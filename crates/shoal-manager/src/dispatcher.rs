//! The dispatcher, served by the leader: streams each node its assignments (a complete set,
//! then incremental changes) and commits the task status the agents report.
//!
//! The stream is level-triggered: after every applied change the node's current set is
//! recomputed from the store and diffed against what was sent, so a missed event can never
//! leave a node with a stale view. Reported status goes through `SetTaskStatus` ops, which change
//! only the status and so never conflict with the orchestrator's writes to the same task.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;

use futures::Stream;
use shoal_api::v1::{
    assignments_message, dispatcher_server::Dispatcher, op, AssignmentsMessage, AssignmentsRequest, Op, Task,
    TaskStatusUpdate, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::node::{member_addr, Node};
use crate::propose::propose;

/// gRPC implementation of `Dispatcher`.
pub struct DispatcherService {
    node: Node,
}

impl DispatcherService {
    /// Serves dispatcher calls for `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    fn require_leader(&self) -> Result<std::sync::Arc<crate::node::RaftRuntime>, Status> {
        let rt = self.node.require_manager()?;
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
    !done || wanted
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

/// Ids of the secrets and configs a node's runnable tasks refer to: a node never receives
/// another secret.
fn dependency_ids(tasks: &HashMap<String, Task>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secret_ids = BTreeSet::new();
    let mut config_ids = BTreeSet::new();
    for t in tasks.values() {
        let observed = t.status.as_ref().map_or(0, |s| s.state);
        if t.desired_state > shoal_api::v1::TaskState::Running as i32
            || observed >= shoal_api::v1::TaskState::Complete as i32
        {
            continue;
        }
        if let Some(c) = t.spec.as_ref().and_then(|s| s.container.as_ref()) {
            secret_ids.extend(c.secrets.iter().map(|r| r.secret_id.clone()));
            config_ids.extend(c.configs.iter().map(|r| r.config_id.clone()));
        }
    }
    (secret_ids, config_ids)
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
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let shutdown = self.node.shutdown_token();
        tokio::spawn(async move {
            let mut applied = rt.store.applied();
            let mut metrics = rt.raft.metrics();
            let mut sent: HashMap<String, u64> = HashMap::new();
            let mut sent_deps: Option<Vec<(String, u64)>> = None;
            let mut first = true;
            loop {
                let (current, deps, deps_changed) = rt.store.read(|s| {
                    let current = node_tasks(s, &node_id);
                    let ids = dependency_ids(&current);
                    let versions = dependency_versions(s, &ids);
                    let changed = sent_deps.as_ref() != Some(&versions);
                    let deps = if changed { dependencies(s, &ids) } else { Deps::default() };
                    sent_deps = Some(versions);
                    (current, deps, changed)
                });
                let msg = if first {
                    first = false;
                    sent = current.iter().map(|(id, t)| (id.clone(), version(t))).collect();
                    Some(AssignmentsMessage {
                        r#type: assignments_message::Type::Complete as i32,
                        tasks: current.into_values().collect(),
                        removed: Vec::new(),
                        dependencies: true,
                        secrets: deps.secrets,
                        configs: deps.configs,
                    })
                } else {
                    let changed: Vec<Task> = current
                        .iter()
                        .filter(|(id, t)| sent.get(*id) != Some(&version(t)))
                        .map(|(_, t)| t.clone())
                        .collect();
                    let removed: Vec<String> = sent.keys().filter(|id| !current.contains_key(*id)).cloned().collect();
                    sent = current.iter().map(|(id, t)| (id.clone(), version(t))).collect();
                    (!changed.is_empty() || !removed.is_empty() || deps_changed).then_some(AssignmentsMessage {
                        r#type: assignments_message::Type::Incremental as i32,
                        tasks: changed,
                        removed,
                        dependencies: deps_changed,
                        secrets: deps.secrets,
                        configs: deps.configs,
                    })
                };
                if let Some(msg) = msg {
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    r = metrics.changed() => {
                        let leading = r.is_ok() && { let m = metrics.borrow(); m.current_leader == Some(m.id) };
                        if !leading {
                            let _ = tx.send(Err(Status::unavailable("leadership changed: reconnect to the new leader"))).await;
                            return;
                        }
                    }
                    r = applied.changed() => if r.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
        if let Err(e) = propose(&self.node, ops.clone()).await {
            if !matches!(e, ApiError::Apply { .. }) {
                return Err(e.into());
            }
            // One stale update must not hold back the others.
            for op in ops {
                let _ = propose(&self.node, vec![op]).await;
            }
        }
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }
}

/// A node speaks only for itself: the node id in a request must be its certificate's.
fn same_node(caller: Option<&str>, node_id: &str) -> Result<(), Status> {
    match caller {
        Some(c) if c != node_id => Err(Status::permission_denied(format!("node {c} may not act for node {node_id}"))),
        _ => Ok(()),
    }
}
