//! The control API: what the CLI calls, on the local socket or a manager's address.
//!
//! Consistency: reads are served from this manager's applied state (they may trail the leader
//! by the replication delay, and never show uncommitted writes); writes are linearized through
//! the Raft leader and return the committed object.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_api::token::JoinToken;
use shoal_api::v1::{self, control_server::Control, *};
use shoal_api::validate;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::managers::{member_addr, RaftRuntime};
use crate::node::Node;
use crate::util::{new_id, new_secret};
use crate::writer::{create_op, delete_op, update_op};

/// gRPC implementation of `Control`.
pub struct ControlService {
    node: Node,
}

impl ControlService {
    /// Serves control calls for `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

type R<T> = Result<Response<T>, Status>;

fn id_of(meta: &Option<Meta>) -> String {
    meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

fn first_object(r: &CommandResult) -> Result<object::Kind, ApiError> {
    r.objects
        .first()
        .and_then(|o| o.kind.clone())
        .ok_or_else(|| ApiError::Internal("the store returned no object".into()))
}

/// Strips what read APIs never return (join secrets).
fn public_cluster(mut c: Cluster) -> Cluster {
    c.join_secrets = None;
    if let Some(ca) = c.root_ca.as_mut() {
        ca.key_pem.clear();
    }
    c
}

/// Fills in the ids of the secrets and configs a service spec names; unknown names are refused.
fn resolve_refs(store: &shoal_store::Store, spec: &mut ServiceSpec) -> Result<(), ApiError> {
    let Some(c) = spec.task_template.as_mut().and_then(|t| t.container.as_mut()) else { return Ok(()) };
    for r in &mut c.secrets {
        let q = if r.secret_id.is_empty() { r.secret_name.clone() } else { r.secret_id.clone() };
        let found = store.lookup_secret(&q).map_err(|_| {
            ApiError::Rejected(format!("secret {q:?} not found: create it first with `shoal secret create {q} FILE`"))
        })?;
        r.secret_id = id_of(&found.meta);
        r.secret_name =
            found.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default();
    }
    for r in &mut c.configs {
        let q = if r.config_id.is_empty() { r.config_name.clone() } else { r.config_id.clone() };
        let found = store.lookup_config(&q).map_err(|_| {
            ApiError::Rejected(format!("config {q:?} not found: create it first with `shoal config create {q} FILE`"))
        })?;
        r.config_id = id_of(&found.meta);
        r.config_name =
            found.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default();
    }
    let Some(t) = spec.task_template.as_mut() else { return Ok(()) };
    let mut seen = std::collections::BTreeSet::new();
    for n in &mut t.networks {
        let q = n.target.clone();
        let found = store.lookup_network(&q).map_err(|_| {
            ApiError::Rejected(format!(
                "network {q:?} not found: create it first with `shoal network create {q}` (see `shoal network ls`)"
            ))
        })?;
        if found.spec.as_ref().is_some_and(|s| s.ingress) {
            return Err(ApiError::Rejected(format!(
                "network {q:?} is the ingress network: services reach it by publishing ports, not with --network"
            )));
        }
        n.target = id_of(&found.meta);
        if !seen.insert(n.target.clone()) {
            return Err(ApiError::Rejected(format!("network {q:?} is named twice")));
        }
    }
    Ok(())
}

/// The first port of the dynamic range a port published in ingress mode without a number gets
/// (Swarm's range).
const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// Gives every port the spec publishes in ingress mode without a number the lowest free one of
/// [`DYNAMIC_PORTS`] (free of every other service's published ports), and refuses ingress
/// publishing when the cluster has no ingress network.
fn fill_published_ports(store: &shoal_store::Store, spec: &mut ServiceSpec, own_id: &str) -> Result<(), ApiError> {
    use shoal_api::v1::port_config::PublishMode;
    if spec.ingress_ports().next().is_some() && store.ingress_network().is_none() {
        return Err(ApiError::Rejected(
            "the cluster has no ingress network to publish on: create it with `shoal network create --ingress ingress`, \
             or publish with mode=host"
                .into(),
        ));
    }
    let Some(e) = spec.endpoint_spec.as_mut() else { return Ok(()) };
    if !e.ports.iter().any(|p| p.published_port == 0 && p.publish_mode() == PublishMode::Ingress) {
        return Ok(());
    }
    let mut taken: BTreeSet<(i32, u32)> = store
        .services()
        .filter(|s| s.meta.as_ref().is_none_or(|m| m.id != own_id))
        .filter_map(|s| s.spec.as_ref()?.endpoint_spec.as_ref())
        .flat_map(|e| e.ports.iter().map(|p| (p.protocol, p.published_port)))
        .collect();
    taken.extend(e.ports.iter().map(|p| (p.protocol, p.published_port)));
    for p in e.ports.iter_mut().filter(|p| p.published_port == 0 && p.publish_mode() == PublishMode::Ingress) {
        let free = DYNAMIC_PORTS.clone().find(|n| !taken.contains(&(p.protocol, *n))).ok_or_else(|| {
            ApiError::Rejected(format!(
                "no free port in {}-{} to publish target port {}: give one with published=",
                DYNAMIC_PORTS.start(),
                DYNAMIC_PORTS.end(),
                p.target_port
            ))
        })?;
        taken.insert((p.protocol, free));
        p.published_port = free;
    }
    Ok(())
}

/// The service as `req` would leave it, computed from this manager's state, with the version it
/// was read at (or the one the request names) for the store's compare-and-set. With
/// `same_version`, a request naming another version than the one read is refused here (the
/// state read may be the stale one): the caller decides again after a read barrier.
fn next_service(
    rt: &crate::managers::RaftRuntime,
    req: &UpdateServiceRequest,
    same_version: bool,
) -> Result<Service, Status> {
    let (current, new_spec) = prepare_update(rt, req)?;
    if same_version && req.version != 0 && current.meta.as_ref().map_or(0, |m| m.version) != req.version {
        return Err(ApiError::Apply { refusal: Refusal::Conflict, message: "read at another version".into() }.into());
    }
    let old_spec = current.spec.clone().unwrap_or_default();
    let mut next = current.clone();
    next.update_status = crate::policy::update_status(
        &old_spec,
        &new_spec,
        current.update_status.as_ref(),
        req.rollback,
        crate::util::now_ms(),
    );
    if new_spec != old_spec {
        next.replace_spec(new_spec, crate::util::now_ms());
    }
    if let Some(m) = next.meta.as_mut() {
        if req.version != 0 {
            m.version = req.version;
        }
    }
    Ok(next)
}

/// The service `req` names and the spec it would have: validated, references resolved,
/// published ports numbered; a rename refused.
fn prepare_update(
    rt: &crate::managers::RaftRuntime,
    req: &UpdateServiceRequest,
) -> Result<(Service, ServiceSpec), Status> {
    let current = rt.store.read(|s| s.lookup_service(&req.service).cloned()).map_err(ApiError::from)?;
    let old_spec = current.spec.clone().unwrap_or_default();
    let mut new_spec = if req.rollback && req.rollback_to != 0 {
        current.spec_at(req.rollback_to).cloned().ok_or_else(|| {
            ApiError::Rejected(format!(
                "service {:?} has no revision {} (see `shoal service history {}`)",
                req.service, req.rollback_to, req.service
            ))
        })?
    } else if req.rollback {
        current.previous_spec.clone().ok_or_else(|| {
            ApiError::Rejected(format!("service {:?} has no previous spec to roll back to", req.service))
        })?
    } else {
        req.spec.clone().ok_or_else(|| Status::invalid_argument("service spec must be set"))?
    };
    validate::validate_service_spec(&new_spec).map_err(ApiError::from)?;
    let own_id = id_of(&current.meta);
    rt.store.read(|s| {
        resolve_refs(s, &mut new_spec)?;
        // A port published without a number keeps the one it was given.
        keep_published_ports(&old_spec, &mut new_spec);
        fill_published_ports(s, &mut new_spec, &own_id)
    })?;
    let old_name = old_spec.annotations.as_ref().map(|a| a.name.as_str()).unwrap_or("");
    let new_name = new_spec.annotations.as_ref().map(|a| a.name.as_str()).unwrap_or("");
    if old_name != new_name {
        return Err(
            ApiError::Rejected(format!("renaming services is not supported ({old_name:?} -> {new_name:?})")).into()
        );
    }
    Ok((current, new_spec))
}

/// Ports of `new` published in ingress mode without a number take the number `old` gave the
/// same target and protocol.
fn keep_published_ports(old: &ServiceSpec, new: &mut ServiceSpec) {
    let Some(e) = new.endpoint_spec.as_mut() else { return };
    for p in e.ports.iter_mut().filter(|p| p.published_port == 0) {
        if let Some(o) = old
            .ingress_ports()
            .find(|o| o.target_port == p.target_port && o.protocol == p.protocol && o.publish_mode == p.publish_mode)
        {
            p.published_port = o.published_port;
        }
    }
}

/// Names of the services attached to the network `id`, and whether tasks that have not ended
/// (still stopping) hold an address on it.
fn network_users(store: &shoal_store::Store, id: &str) -> (Vec<String>, usize) {
    let ingress = store.network(id).and_then(|n| n.spec.as_ref()).is_some_and(|s| s.ingress);
    let services = store
        .services()
        .filter(|svc| {
            svc.spec.as_ref().is_some_and(|s| {
                (ingress && s.joins_ingress())
                    || s.task_template.as_ref().is_some_and(|t| t.networks.iter().any(|n| n.target == id))
            })
        })
        .map(|svc| svc.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default())
        .collect();
    let tasks = store
        .tasks()
        .filter(|t| t.networks.iter().any(|a| a.network_id == id))
        .filter(|t| !shoal_scheduler::task::is_terminal(t))
        .count();
    (services, tasks)
}

/// Names of the services whose spec refers to the secret (`secret`) or config with `id`.
fn users_of(store: &shoal_store::Store, id: &str, secret: bool) -> Vec<String> {
    store
        .services()
        .filter(|svc| {
            let c = svc.spec.as_ref().and_then(|s| s.task_template.as_ref()).and_then(|t| t.container.as_ref());
            c.is_some_and(|c| {
                if secret {
                    c.secrets.iter().any(|r| r.secret_id == id)
                } else {
                    c.configs.iter().any(|r| r.config_id == id)
                }
            })
        })
        .map(|svc| svc.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone()).unwrap_or_default())
        .collect()
}

fn check_data(kind: &'static str, name: &str, data: &[u8]) -> Result<(), ApiError> {
    validate::validate_name("name", name).map_err(ApiError::from)?;
    crate::policy::data_size(kind, name, data)?;
    Ok(())
}

fn without_data(mut s: Secret) -> Secret {
    if let Some(spec) = s.spec.as_mut() {
        spec.data.clear();
    }
    s
}

/// A join token: the digest of the cluster's CA certificate and the role's secret.
fn token_for(cluster: &Cluster, role: NodeRole) -> String {
    let secrets = cluster.join_secrets.clone().unwrap_or_default();
    let secret = if role == NodeRole::Manager { secrets.manager } else { secrets.worker };
    JoinToken { cluster_digest: crate::pki::ca_digest(cluster), secret }.to_string()
}

impl ControlService {
    fn resolve_node(&self, store: &shoal_store::Store, query: &str) -> Result<v1::Node, ApiError> {
        let query = if query == "self" { self.node.identity.local().node_id } else { query.to_string() };
        Ok(store.lookup_node(&query)?.clone())
    }

    /// The answer to an update: the service as stored, viewed from `rt`'s state.
    fn updated_view(rt: &crate::managers::RaftRuntime, r: CommandResult) -> R<ServiceView> {
        let object::Kind::Service(s) = first_object(&r)? else {
            return Err(ApiError::Internal("unexpected object".into()).into());
        };
        Ok(Response::new(rt.store.read(|st| Self::service_view(st, &s))))
    }

    fn service_view(store: &shoal_store::Store, s: &Service) -> ServiceView {
        let counts = store.task_counts(&id_of(&s.meta));
        let desired = match s.spec.as_ref().and_then(|sp| sp.mode.as_ref()) {
            Some(service_spec::Mode::Replicated(r)) => r.replicas,
            Some(service_spec::Mode::ReplicatedJob(j)) => j.total_completions,
            _ => counts.desired,
        };
        let running = counts.running;
        let job = matches!(
            s.spec.as_ref().and_then(|sp| sp.mode.as_ref()),
            Some(service_spec::Mode::ReplicatedJob(_) | service_spec::Mode::GlobalJob(_))
        );
        let template = s.spec.as_ref().and_then(|sp| sp.task_template.as_ref());
        let completed = if job {
            store
                .tasks_by_service(&id_of(&s.meta))
                .filter(|t| t.spec.as_ref() == template)
                .filter(|t| t.status.as_ref().is_some_and(|st| st.state() == shoal_api::v1::TaskState::Complete))
                .count() as u64
        } else {
            0
        };
        ServiceView {
            service: Some(s.clone()),
            running_tasks: running,
            desired_tasks: desired,
            completed_tasks: completed,
        }
    }

    async fn manager_statuses(&self) -> BTreeMap<u64, &'static str> {
        let mut out = BTreeMap::new();
        let Some(rt) = self.node.managers.raft() else { return out };
        let m = rt.metrics();
        let members: Vec<(u64, String)> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter_map(|id| member_addr(&m, id).map(|a| (id, a)))
            .collect();
        let reachable = self.node.writer.reachable_managers(&members, m.id).await;
        for (id, _) in members {
            let s = if Some(id) == m.current_leader {
                "leader"
            } else if reachable.contains(&id) {
                "reachable"
            } else {
                "unreachable"
            };
            out.insert(id, s);
        }
        out
    }

    /// Manager addresses for join instructions, this manager first.
    fn join_addrs(&self) -> Vec<String> {
        let me = self.node.identity.config().advertise_addr.clone();
        let mut addrs = vec![me.clone()];
        addrs.extend(self.node.managers.peers().into_iter().map(|p| p.addr).filter(|a| !a.is_empty() && *a != me));
        addrs
    }
}

type LogLines = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ServiceLogLine, Status>> + Send>>;

/// Where one task's logs come from.
struct LogSource {
    addr: String,
    node_id: String,
    task_id: String,
    task_name: String,
    hostname: String,
}

/// Log sources of the service's tasks that have started and are not in `seen` (which gains them).
fn log_sources(rt: &RaftRuntime, service_id: &str, seen: &mut BTreeSet<String>) -> Vec<LogSource> {
    rt.store.read(|s| {
        let name = s
            .service(service_id)
            .and_then(|svc| svc.spec.as_ref())
            .and_then(|spec| spec.annotations.as_ref())
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for t in s.tasks_by_service(service_id) {
            let started = t.status.as_ref().is_some_and(|st| st.state >= TaskState::Starting as i32);
            let id = id_of(&t.meta);
            if !started || seen.contains(&id) {
                continue;
            }
            let Some(n) = s.node(&t.node_id) else { continue };
            seen.insert(id.clone());
            let addr = n.status.as_ref().map(|st| st.addr.clone()).unwrap_or_default();
            let hostname = n.description.as_ref().map(|d| d.hostname.clone()).unwrap_or_default();
            let task_name = if t.slot > 0 { format!("{name}.{}", t.slot) } else { format!("{name}.{}", t.node_id) };
            out.push(LogSource { addr, node_id: t.node_id.clone(), task_id: id, task_name, hostname });
        }
        out
    })
}

/// Splits chunks of a task's log into lines and forwards them, tagged with task and node.
async fn forward_task_logs(
    node: Node,
    src: LogSource,
    req: ServiceLogsRequest,
    tx: tokio::sync::mpsc::Sender<Result<ServiceLogLine, Status>>,
) {
    let LogSource { addr, node_id, task_id, task_name, hostname } = src;
    let (follow, tail) = (req.follow, req.tail);
    let channel = match node.dialer.node_channel(&addr, &node_id) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(Status::unavailable(format!("node {hostname}: {e}")))).await;
            return;
        }
    };
    let mut client = agent_client::AgentClient::new(channel);
    let mut stream = match client.task_logs(TaskLogsRequest { task_id, follow, tail }).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            tracing::debug!(task = %task_name, status = %s, "no logs from the node");
            return;
        }
    };
    while let Ok(Some(chunk)) = stream.message().await {
        for line in chunk.data.split_inclusive(|b| *b == b'\n') {
            let msg = ServiceLogLine { task_name: task_name.clone(), node: hostname.clone(), line: line.to_vec() };
            if tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    }
}

type ExecOutputs = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ExecOutput, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    type ServiceLogsStream = LogLines;
    type ExecTaskStream = ExecOutputs;

    async fn exec_task(&self, req: Request<tonic::Streaming<ExecInput>>) -> R<ExecOutputs> {
        let mut input = req.into_inner();
        let start = shoal_agent::exec::start_of(input.message().await?)?;
        let rt = self.node.managers.require_manager()?;
        let target = rt.store.read(|s| crate::exec_relay::target(s, &start.task))?;
        let out = crate::exec_relay::relay(&self.node, target, start, input).await?;
        Ok(Response::new(Box::pin(out)))
    }

    async fn service_logs(&self, req: Request<ServiceLogsRequest>) -> R<LogLines> {
        let req = req.into_inner();
        let rt = self.node.managers.require_manager()?;
        let service_id =
            rt.store.read(|s| s.lookup_service(&req.service).map(|svc| id_of(&svc.meta))).map_err(ApiError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let node = self.node.clone();
        // One worker per log stream: it owns a forwarder per task, and ends when the client goes
        // away, when the service is removed (following), or when every task's log ended.
        self.node.workers.spawn(format!("service logs {}", req.service), move |stop| async move {
            let mut seen = BTreeSet::new();
            let mut forwarders = tokio::task::JoinSet::new();
            for src in log_sources(&rt, &service_id, &mut seen) {
                forwarders.spawn(forward_task_logs(node.clone(), src, req.clone(), tx.clone()));
            }
            if !req.follow {
                drop(tx);
                while forwarders.join_next().await.is_some() {}
                return Ok::<(), String>(());
            }
            // Tasks that start later (restarts, scale-up, rescheduling) join the stream.
            let mut applied = rt.store.applied();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tx.closed() => return Ok(()),
                    changed = applied.changed() => if changed.is_err() { return Ok(()) },
                }
                while forwarders.try_join_next().is_some() {}
                if rt.store.read(|s| s.service(&service_id).is_none()) {
                    return Ok(());
                }
                for src in log_sources(&rt, &service_id, &mut seen) {
                    let mut from_start = req.clone();
                    from_start.tail = 0;
                    forwarders.spawn(forward_task_logs(node.clone(), src, from_start, tx.clone()));
                }
                // Coalesce bursts of applies.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> R<InfoResponse> {
        let local = self.node.identity.local();
        let raft = self.node.managers.raft().map(|rt| {
            let m = rt.metrics();
            let mem = m.membership_config.membership();
            RaftInfo {
                raft_id: m.id,
                term: m.current_term,
                leader_raft_id: m.current_leader.unwrap_or(0),
                leader_addr: m.current_leader.and_then(|l| member_addr(&m, l)).unwrap_or_default(),
                voters: mem.voter_ids().collect(),
                learners: mem.learner_ids().collect(),
                last_log_index: m.last_log_index.unwrap_or(0),
                last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
                snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
                quorum_ack_age_ms: match m.millis_since_quorum_ack {
                    Some(ms) if m.current_leader == Some(m.id) => i64::try_from(ms).unwrap_or(i64::MAX),
                    _ => -1,
                },
            }
        });
        Ok(Response::new(InfoResponse {
            node_id: local.node_id,
            state: local.role.as_str().to_string(),
            cluster_id: local.cluster_id,
            hostname: self.node.identity.config().hostname.clone(),
            advertise_addr: self.node.identity.config().advertise_addr.clone(),
            manager_addrs: self.node.managers.peers().into_iter().map(|p| p.addr).collect(),
            raft,
            version: env!("CARGO_PKG_VERSION").to_string(),
            certificate: self.node.dialer.summary(),
            workers: self
                .node
                .worker_states()
                .into_iter()
                .map(|(name, state)| WorkerInfo { name, state: state.to_string() })
                .collect(),
            agent: self.node.agent_status().map(|a| AgentInfo {
                connected: a.connected,
                sessions: a.sessions,
                tasks: a.tasks as u64,
                secrets: a.secrets,
                configs: a.configs,
            }),
        }))
    }

    async fn init_cluster(&self, req: Request<InitClusterRequest>) -> R<InitClusterResponse> {
        Ok(Response::new(crate::roles::init(&self.node, req.into_inner()).await?))
    }

    async fn join_cluster(&self, req: Request<JoinClusterRequest>) -> R<JoinClusterResponse> {
        Ok(Response::new(crate::roles::join(&self.node, req.into_inner()).await?))
    }

    async fn leave_cluster(&self, req: Request<LeaveClusterRequest>) -> R<LeaveClusterResponse> {
        crate::roles::leave(&self.node, req.into_inner().force).await?;
        Ok(Response::new(LeaveClusterResponse {}))
    }

    async fn get_cluster(&self, _req: Request<GetClusterRequest>) -> R<GetClusterResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let cluster = rt.store.read(|s| s.cluster().cloned()).ok_or(ApiError::NotInCluster)?;
        Ok(Response::new(GetClusterResponse { cluster: Some(public_cluster(cluster)) }))
    }

    async fn update_cluster(&self, req: Request<UpdateClusterRequest>) -> R<GetClusterResponse> {
        let req = req.into_inner();
        let rt = self.node.writer.read_barrier().await?;
        let mut cluster = rt.store.read(|s| s.cluster().cloned()).ok_or(ApiError::NotInCluster)?;
        let settings = shoal_api::defaults::fill_settings(req.settings.unwrap_or_default());
        validate::validate_settings(&settings).map_err(ApiError::from)?;
        cluster.settings = Some(settings);
        if let Some(m) = cluster.meta.as_mut() {
            m.version = req.version;
        }
        let r = self.node.writer.propose(vec![update_op(cluster.into())]).await?;
        let object::Kind::Cluster(c) = first_object(&r)? else {
            return Err(ApiError::Internal("unexpected object".into()).into());
        };
        Ok(Response::new(GetClusterResponse { cluster: Some(public_cluster(c)) }))
    }

    async fn get_join_token(&self, req: Request<GetJoinTokenRequest>) -> R<GetJoinTokenResponse> {
        let req = req.into_inner();
        let rt = self.node.managers.require_manager()?;
        let mut cluster = rt.store.read(|s| s.cluster().cloned()).ok_or(ApiError::NotInCluster)?;
        if req.rotate {
            let secrets = cluster.join_secrets.get_or_insert_with(Default::default);
            if req.role() == NodeRole::Manager {
                secrets.manager = new_secret();
            } else {
                secrets.worker = new_secret();
            }
            let r = self.node.writer.propose(vec![update_op(cluster.into())]).await?;
            let object::Kind::Cluster(c) = first_object(&r)? else {
                return Err(ApiError::Internal("unexpected object".into()).into());
            };
            cluster = c;
        }
        Ok(Response::new(GetJoinTokenResponse {
            token: token_for(&cluster, req.role()),
            manager_addrs: self.join_addrs(),
        }))
    }

    async fn issue_admin_certificate(&self, req: Request<IssueAdminCertificateRequest>) -> R<RenewCertificateResponse> {
        let req = req.into_inner();
        let rt = self.node.managers.require_manager()?;
        let name = req.name.trim();
        if name.is_empty()
            || name.len() > 40
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Status::invalid_argument(
                "admin certificate name must be 1-40 characters of a-z, 0-9 and '-' (e.g. alice-laptop)",
            ));
        }
        let (cert_pem, ca_pem) =
            crate::pki::issue(&rt, &req.csr_pem, &format!("admin-{name}"), shoal_pki::Role::Admin)?;
        tracing::info!(%name, "issued an admin certificate");
        Ok(Response::new(RenewCertificateResponse { cert_pem, ca_pem }))
    }

    async fn create_network(&self, req: Request<CreateNetworkRequest>) -> R<Network> {
        let mut spec = req.into_inner().spec.ok_or_else(|| Status::invalid_argument("network spec must be set"))?;
        validate::validate_network_spec(&spec).map_err(ApiError::from)?;
        if spec.driver.is_empty() {
            spec.driver = "overlay".into();
        }
        let name = spec.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default();
        // Two creates at once may pick the same subnet or VNI; the store refuses the second,
        // which then picks again from what the first took.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let rt = self.node.managers.require_manager()?;
            let alloc = rt.store.read(|s| {
                if s.network_by_name(&name).is_some() {
                    return Err(ApiError::Rejected(format!("network {name:?} already exists")));
                }
                let defaults = s.cluster().and_then(|c| c.network_defaults.clone()).unwrap_or_default();
                let pools = shoal_ipam::pools(&defaults).map_err(|e| ApiError::Rejected(e.to_string()))?;
                shoal_ipam::allocate_network(s, &spec, &pools).map_err(|e| ApiError::Rejected(e.to_string()))
            })?;
            let network = Network {
                meta: Some(Meta { id: new_id(), ..Default::default() }),
                spec: Some(spec.clone()),
                subnet: alloc.subnet,
                gateway: alloc.gateway,
                vni: alloc.vni,
            };
            match self.node.writer.propose(vec![create_op(network.into())]).await {
                Ok(r) => {
                    let object::Kind::Network(n) = first_object(&r)? else {
                        return Err(ApiError::Internal("unexpected object".into()).into());
                    };
                    return Ok(Response::new(n));
                }
                Err(ApiError::Apply { refusal: shoal_api::v1::Refusal::Exists, .. }) if attempts < 3 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn list_networks(&self, _req: Request<ListNetworksRequest>) -> R<ListNetworksResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let networks = rt.store.read(|s| s.networks().cloned().collect());
        Ok(Response::new(ListNetworksResponse { networks }))
    }

    async fn get_network(&self, req: Request<GetNetworkRequest>) -> R<Network> {
        let rt = self.node.writer.read_barrier().await?;
        let q = req.into_inner().network;
        let n = rt.store.read(|s| s.lookup_network(&q).cloned()).map_err(ApiError::from)?;
        Ok(Response::new(n))
    }

    async fn remove_network(&self, req: Request<RemoveNetworkRequest>) -> R<RemoveNetworkResponse> {
        let rt = self.node.managers.require_manager()?;
        let q = req.into_inner().network;
        let (n, (services, tasks)) = rt
            .store
            .read(|st| st.lookup_network(&q).map(|n| (n.clone(), network_users(st, &id_of(&n.meta)))))
            .map_err(ApiError::from)?;
        crate::policy::network_removal(&q, &services, tasks).map_err(ApiError::from)?;
        self.node.writer.propose(vec![delete_op(ObjectKind::Network, &id_of(&n.meta), 0)]).await?;
        Ok(Response::new(RemoveNetworkResponse {}))
    }

    async fn create_secret(&self, req: Request<CreateSecretRequest>) -> R<Secret> {
        let spec = req.into_inner().spec.ok_or_else(|| Status::invalid_argument("secret spec must be set"))?;
        let name = spec.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default();
        check_data("secret", &name, &spec.data)?;
        let rt = self.node.managers.require_manager()?;
        if rt.store.read(|s| s.secret_by_name(&name).is_some()) {
            return Err(ApiError::Rejected(format!("secret {name:?} already exists")).into());
        }
        let secret = Secret { meta: Some(Meta { id: new_id(), ..Default::default() }), spec: Some(spec) };
        let r = self.node.writer.propose(vec![create_op(secret.into())]).await?;
        let object::Kind::Secret(s) = first_object(&r)? else {
            return Err(ApiError::Internal("unexpected object".into()).into());
        };
        Ok(Response::new(without_data(s)))
    }

    async fn list_secrets(&self, _req: Request<ListSecretsRequest>) -> R<ListSecretsResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let secrets = rt.store.read(|s| s.secrets().cloned().map(without_data).collect());
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn get_secret(&self, req: Request<GetSecretRequest>) -> R<Secret> {
        let rt = self.node.writer.read_barrier().await?;
        let q = req.into_inner().secret;
        let s = rt.store.read(|s| s.lookup_secret(&q).cloned()).map_err(ApiError::from)?;
        Ok(Response::new(without_data(s)))
    }

    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> R<ListVolumesResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let query = req.into_inner().node;
        let query = if query == "self" { self.node.identity.local().node_id } else { query };
        let asked = rt.store.read(|s| crate::volumes::nodes_to_ask(s, &query))?;
        let store = rt.store.clone();
        let users = move |node: &str, name: &str| store.read(|s| crate::volumes::users(s, node, name));
        let (volumes, unreachable) = crate::volumes::list(&self.node, users, asked).await;
        Ok(Response::new(ListVolumesResponse { volumes, unreachable }))
    }

    async fn remove_volume(&self, req: Request<RemoveVolumeRequest>) -> R<RemoveVolumeResponse> {
        let rt = self.node.managers.require_manager()?;
        let req = req.into_inner();
        let query = if req.node == "self" { self.node.identity.local().node_id } else { req.node.clone() };
        let asked = rt.store.read(|s| crate::volumes::nodes_to_ask(s, &query))?;
        let store = rt.store.clone();
        let users = move |node: &str, name: &str| store.read(|s| crate::volumes::users(s, node, name));
        let (found, unreachable) = crate::volumes::list(&self.node, &users, asked.clone()).await;
        let holders: Vec<&Volume> = found.iter().filter(|v| v.name == req.volume).collect();
        if holders.is_empty() {
            let also = if unreachable.is_empty() {
                String::new()
            } else {
                format!(" (not asked: {} did not answer)", unreachable.join(", "))
            };
            return Err(Status::not_found(format!("no volume {:?} on any node{also}", req.volume)));
        }
        // Every holder is checked before any is touched: all or none.
        for v in &holders {
            let users = users(&v.node_id, &v.name);
            if !users.is_empty() {
                return Err(ApiError::Rejected(format!(
                    "volume {:?} on {} is in use by task(s) {}: remove or update those services first",
                    v.name,
                    v.node,
                    users.join(", ")
                ))
                .into());
            }
        }
        let mut nodes = Vec::new();
        for v in holders {
            if let Some(a) = asked.iter().find(|a| a.node_id == v.node_id) {
                crate::volumes::remove(&self.node, a, &v.name).await?;
                nodes.push(a.hostname.clone());
            }
        }
        Ok(Response::new(RemoveVolumeResponse { nodes }))
    }

    async fn remove_secret(&self, req: Request<RemoveSecretRequest>) -> R<RemoveSecretResponse> {
        let rt = self.node.managers.require_manager()?;
        let q = req.into_inner().secret;
        let (s, users) = rt
            .store
            .read(|st| st.lookup_secret(&q).map(|s| (s.clone(), users_of(st, &id_of(&s.meta), true))))
            .map_err(ApiError::from)?;
        crate::policy::data_removal("secret", &q, &users).map_err(ApiError::from)?;
        self.node.writer.propose(vec![delete_op(ObjectKind::Secret, &id_of(&s.meta), 0)]).await?;
        Ok(Response::new(RemoveSecretResponse {}))
    }

    async fn create_config(&self, req: Request<CreateConfigRequest>) -> R<Config> {
        let spec = req.into_inner().spec.ok_or_else(|| Status::invalid_argument("config spec must be set"))?;
        let name = spec.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default();
        check_data("config", &name, &spec.data)?;
        let rt = self.node.managers.require_manager()?;
        if rt.store.read(|s| s.config_by_name(&name).is_some()) {
            return Err(ApiError::Rejected(format!("config {name:?} already exists")).into());
        }
        let config = Config { meta: Some(Meta { id: new_id(), ..Default::default() }), spec: Some(spec) };
        let r = self.node.writer.propose(vec![create_op(config.into())]).await?;
        let object::Kind::Config(c) = first_object(&r)? else {
            return Err(ApiError::Internal("unexpected object".into()).into());
        };
        Ok(Response::new(c))
    }

    async fn list_configs(&self, _req: Request<ListConfigsRequest>) -> R<ListConfigsResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let configs = rt.store.read(|s| s.configs().cloned().collect());
        Ok(Response::new(ListConfigsResponse { configs }))
    }

    async fn get_config(&self, req: Request<GetConfigRequest>) -> R<Config> {
        let rt = self.node.writer.read_barrier().await?;
        let q = req.into_inner().config;
        let c = rt.store.read(|s| s.lookup_config(&q).cloned()).map_err(ApiError::from)?;
        Ok(Response::new(c))
    }

    async fn remove_config(&self, req: Request<RemoveConfigRequest>) -> R<RemoveConfigResponse> {
        let rt = self.node.managers.require_manager()?;
        let q = req.into_inner().config;
        let (c, users) = rt
            .store
            .read(|st| st.lookup_config(&q).map(|c| (c.clone(), users_of(st, &id_of(&c.meta), false))))
            .map_err(ApiError::from)?;
        crate::policy::data_removal("config", &q, &users).map_err(ApiError::from)?;
        self.node.writer.propose(vec![delete_op(ObjectKind::Config, &id_of(&c.meta), 0)]).await?;
        Ok(Response::new(RemoveConfigResponse {}))
    }

    async fn list_nodes(&self, _req: Request<ListNodesRequest>) -> R<ListNodesResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let statuses = self.manager_statuses().await;
        let nodes = rt.store.read(|s| {
            s.nodes()
                .map(|n| NodeView {
                    node: Some(n.clone()),
                    manager_status: statuses
                        .get(&n.raft_id)
                        .filter(|_| n.raft_id != 0)
                        .copied()
                        .unwrap_or("")
                        .to_string(),
                })
                .collect()
        });
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> R<NodeView> {
        let rt = self.node.writer.read_barrier().await?;
        let n = rt.store.read(|s| self.resolve_node(s, &req.into_inner().node))?;
        let statuses = self.manager_statuses().await;
        let manager_status = statuses.get(&n.raft_id).filter(|_| n.raft_id != 0).copied().unwrap_or("").to_string();
        Ok(Response::new(NodeView { node: Some(n), manager_status }))
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> R<NodeView> {
        let req = req.into_inner();
        let rt = self.node.writer.read_barrier().await?;
        let spec = req.spec.ok_or_else(|| Status::invalid_argument("node spec must be set"))?;
        validate::validate_node_spec(&spec).map_err(ApiError::from)?;
        let (mut n, managers) = rt.store.read(|s| {
            let n = self.resolve_node(s, &req.node)?;
            let managers =
                s.nodes().filter(|x| x.spec.as_ref().is_some_and(|sp| sp.desired_role() == NodeRole::Manager)).count();
            Ok::<_, ApiError>((n, managers))
        })?;
        crate::policy::node_update(&n, &spec, managers).map_err(ApiError::from)?;
        n.spec = Some(spec);
        if let Some(m) = n.meta.as_mut() {
            if req.version != 0 {
                m.version = req.version;
            }
        }
        let r = self.node.writer.propose(vec![update_op(n.into())]).await?;
        let object::Kind::Node(n) = first_object(&r)? else {
            return Err(ApiError::Internal("unexpected object".into()).into());
        };
        Ok(Response::new(NodeView { node: Some(n), manager_status: String::new() }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> R<RemoveNodeResponse> {
        let req = req.into_inner();
        let rt = self.node.managers.require_manager()?;
        let n = rt.store.read(|s| self.resolve_node(s, &req.node))?;
        crate::policy::node_removal(&n, req.force).map_err(ApiError::from)?;
        // The node's certificate stops working with the same command that forgets the node.
        let mut cluster = rt.store.read(|s| s.cluster().cloned()).ok_or(ApiError::NotInCluster)?;
        let id = id_of(&n.meta);
        if !cluster.removed_node_ids.contains(&id) {
            cluster.removed_node_ids.push(id.clone());
        }
        self.node.writer.propose(vec![delete_op(ObjectKind::Node, &id, 0), update_op(cluster.into())]).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn create_service(&self, req: Request<CreateServiceRequest>) -> R<ServiceView> {
        let mut spec = req.into_inner().spec.ok_or_else(|| Status::invalid_argument("service spec must be set"))?;
        validate::validate_service_spec(&spec).map_err(ApiError::from)?;
        let rt = self.node.managers.require_manager()?;
        let id = new_id();
        rt.store.read(|s| {
            resolve_refs(s, &mut spec)?;
            fill_published_ports(s, &mut spec, &id)
        })?;
        self.node.managers.require_manager()?;
        let svc = Service {
            meta: Some(Meta { id, ..Default::default() }),
            spec: Some(spec),
            spec_revision: 1,
            ..Default::default()
        };
        let r = self.node.writer.propose(vec![create_op(svc.into())]).await?;
        let object::Kind::Service(s) = first_object(&r)? else {
            return Err(ApiError::Internal("unexpected object".into()).into());
        };
        let rt = self.node.managers.require_manager()?;
        Ok(Response::new(rt.store.read(|st| Self::service_view(st, &s))))
    }

    async fn update_service(&self, req: Request<UpdateServiceRequest>) -> R<ServiceView> {
        let req = req.into_inner();
        // An update is a compare-and-set on the version it was computed from, so a stale read
        // is refused by the store, never applied. The leader (whose state holds every write it
        // acknowledged) therefore starts from its own state without a read barrier (a round of
        // heartbeats per update); whatever may come from a stale read (a lookup or a check that
        // failed, a version conflict) is decided again after a barrier.
        let rt = self.node.managers.require_manager()?;
        if rt.proposer().is_some() {
            if let Ok(next) = next_service(&rt, &req, true) {
                match self.node.writer.propose(vec![update_op(next.into())]).await {
                    Err(ApiError::Apply { refusal: Refusal::Conflict, .. }) => {}
                    r => return Self::updated_view(&rt, r?),
                }
            }
        }
        let rt = self.node.writer.read_barrier().await?;
        let next = next_service(&rt, &req, false)?;
        let r = self.node.writer.propose(vec![update_op(next.into())]).await?;
        Self::updated_view(&rt, r)
    }

    async fn plan_service_update(&self, req: Request<UpdateServiceRequest>) -> R<v1::UpdatePlan> {
        let req = req.into_inner();
        let rt = self.node.writer.read_barrier().await?;
        let (current, new_spec) = prepare_update(&rt, &req)?;
        let mut plan = rt.store.read(|s| shoal_orchestrator::plan_update(s, &current, &new_spec));
        // Whether the change starts (or resumes) an update: the status it would get is new.
        let old_spec = current.spec.clone().unwrap_or_default();
        let status =
            crate::policy::update_status(&old_spec, &new_spec, current.update_status.as_ref(), req.rollback, 0);
        plan.starts_update = status.is_some_and(|s| s.started_at_ms == 0);
        Ok(Response::new(plan))
    }

    async fn get_service(&self, req: Request<GetServiceRequest>) -> R<ServiceView> {
        let rt = self.node.writer.read_barrier().await?;
        let q = req.into_inner().service;
        let view =
            rt.store.read(|s| s.lookup_service(&q).map(|svc| Self::service_view(s, svc))).map_err(ApiError::from)?;
        Ok(Response::new(view))
    }

    async fn list_services(&self, _req: Request<ListServicesRequest>) -> R<ListServicesResponse> {
        let rt = self.node.writer.read_barrier().await?;
        let services = rt.store.read(|s| s.services().map(|svc| Self::service_view(s, svc)).collect());
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn remove_service(&self, req: Request<RemoveServiceRequest>) -> R<RemoveServiceResponse> {
        let rt = self.node.managers.require_manager()?;
        let q = req.into_inner().service;
        let svc = rt.store.read(|s| s.lookup_service(&q).cloned()).map_err(ApiError::from)?;
        self.node.writer.propose(vec![delete_op(ObjectKind::Service, &id_of(&svc.meta), 0)]).await?;
        Ok(Response::new(RemoveServiceResponse {}))
    }

    async fn list_tasks(&self, req: Request<ListTasksRequest>) -> R<ListTasksResponse> {
        let req = req.into_inner();
        let rt = self.node.writer.read_barrier().await?;
        let tasks = rt.store.read(|s| {
            let service_id =
                if req.service.is_empty() { None } else { Some(id_of(&s.lookup_service(&req.service)?.meta)) };
            let node_id = if req.node.is_empty() { None } else { Some(id_of(&self.resolve_node(s, &req.node)?.meta)) };
            let tasks: Vec<Task> = match &service_id {
                Some(sid) => s.tasks_by_service(sid).cloned().collect(),
                None => s.tasks().cloned().collect(),
            };
            Ok::<_, ApiError>(
                tasks.into_iter().filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n)).collect::<Vec<_>>(),
            )
        })?;
        Ok(Response::new(ListTasksResponse { tasks }))
    }
}
