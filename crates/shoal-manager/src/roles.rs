//! Every change of this node's role, in one place: init (first manager of a new cluster),
//! join (with a token), promotion and demotion as the leader asks, leaving, being removed, and
//! the recovery of a lone manager with `--force-new-cluster`. Each transition holds the node's
//! transition lock, so two never interleave.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use shoal_api::token::JoinToken;
use shoal_api::v1::{self, *};
use shoal_api::validate;

use crate::error::ApiError;
use crate::identity::Identity;
use crate::local::{Peer, Role};
use crate::managers::{wait_leader, RaftRuntime};
use crate::node::Node;
use crate::util::{new_id, new_secret, now_ms};
use crate::writer::{create_op, update_op};

/// Back to standing alone (left the cluster, or removed from it): Raft stopped and wiped, the
/// cluster forgotten, the certificate dropped.
pub(crate) async fn reset_to_standalone(node: &Node) -> Result<(), ApiError> {
    let _g = node.transition.lock().await;
    node.managers.stop(true).await?;
    node.identity.update_local(|l| {
        l.role = Role::Uninitialized;
        l.cluster_id.clear();
        l.managers.clear();
    })?;
    node.dialer.clear();
    Ok(())
}

/// Makes this node the first manager of a new cluster: its Raft, the cluster object with the
/// CA and join secrets, and its own node object.
/// The name of the ingress network `cluster init` makes.
pub const INGRESS_NAME: &str = "ingress";

pub(crate) async fn init(node: &Node, req: InitClusterRequest) -> Result<InitClusterResponse, ApiError> {
    let settings = shoal_api::defaults::fill_settings(req.settings.unwrap_or_default());
    validate::validate_settings(&settings)?;
    let network_defaults = req.network_defaults.unwrap_or_default();
    let pools = shoal_ipam::pools(&network_defaults).map_err(|e| ApiError::Rejected(e.to_string()))?;
    let _g = node.transition.lock().await;
    let local = node.identity.local();
    if local.role != Role::Uninitialized {
        return Err(ApiError::AlreadyInCluster(local.cluster_id));
    }
    let addr =
        if req.advertise_addr.is_empty() { node.identity.config().advertise_addr.clone() } else { req.advertise_addr };
    let cluster_id = new_id();
    node.identity.update_local(|l| {
        l.role = Role::Manager;
        l.cluster_id = cluster_id.clone();
        l.managers = vec![Peer { node_id: local.node_id.clone(), raft_id: local.raft_id, addr: addr.clone() }];
        l.settings = Some(settings);
    })?;
    node.managers.stop(true).await?;
    let rt = start_raft(node).await?;
    let members = BTreeMap::from([(local.raft_id, BasicNode::new(addr.clone()))]);
    rt.raft.initialize(members).await.map_err(|e| ApiError::internal("raft initialize", e))?;
    if wait_leader(&rt, Duration::from_secs(10)).await != Some(local.raft_id) {
        return Err(ApiError::Internal("this node did not become leader of its new cluster".into()));
    }
    let mut cluster = Cluster {
        meta: Some(Meta { id: cluster_id.clone(), ..Default::default() }),
        name: "default".into(),
        settings: Some(settings),
        join_secrets: Some(JoinSecrets { worker: new_secret(), manager: new_secret() }),
        root_ca: None,
        removed_node_ids: Vec::new(),
        network_defaults: Some(network_defaults),
    };
    crate::pki::bootstrap(node, &mut cluster, &local.node_id)?;
    let me = v1::Node {
        meta: Some(Meta { id: local.node_id.clone(), ..Default::default() }),
        spec: Some(NodeSpec { desired_role: NodeRole::Manager as i32, ..Default::default() }),
        description: Some(node.identity.description()),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            message: String::new(),
            addr,
            timestamp_ms: now_ms(),
        }),
        role: NodeRole::Manager as i32,
        raft_id: local.raft_id,
        ingress_address: String::new(),
    };
    // The ingress network every node forwards published ports over, as `docker swarm init`
    // makes it.
    let host_networks = me.description.as_ref().map(|d| d.host_networks.clone()).unwrap_or_default();
    let alloc = shoal_ipam::allocate_ingress(&shoal_store::Store::new(), &host_networks, &pools)
        .map_err(|e| ApiError::Rejected(format!("the ingress network: {e}")))?;
    let ingress = v1::Network {
        meta: Some(Meta { id: new_id(), ..Default::default() }),
        spec: Some(v1::NetworkSpec {
            annotations: Some(v1::Annotations { name: INGRESS_NAME.into(), ..Default::default() }),
            driver: "overlay".into(),
            ingress: true,
            ..Default::default()
        }),
        subnet: alloc.subnet,
        gateway: alloc.gateway,
        vni: alloc.vni,
    };
    node.writer.propose(vec![create_op(cluster.into()), create_op(me.into()), create_op(ingress.into())]).await?;
    ensure_session(node);
    ensure_agent(node).await;
    tracing::info!(%cluster_id, "cluster initialized");
    Ok(InitClusterResponse { node_id: local.node_id, cluster_id })
}

/// Joins this node to a cluster through one of its managers: fetch the CA the token pins, send a
/// CSR with the token, install the certificate, then start Raft (a manager, which catches up as
/// a learner and returns once it is a voter), the session and the agent.
pub(crate) async fn join(node: &Node, req: JoinClusterRequest) -> Result<JoinClusterResponse, ApiError> {
    let _g = node.transition.lock().await;
    let local = node.identity.local();
    if local.role != Role::Uninitialized {
        return Err(ApiError::AlreadyInCluster(local.cluster_id));
    }
    let token = JoinToken::parse(&req.token).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let addr =
        if req.advertise_addr.is_empty() { node.identity.config().advertise_addr.clone() } else { req.advertise_addr };
    // Trust nothing yet: the manager must present the CA the token pins.
    let remote: std::net::SocketAddr = tokio::net::lookup_host(&req.remote_addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ApiError::Rejected(format!("cannot resolve the manager address {:?}", req.remote_addr)))?;
    let ca_der = shoal_pki::tls::fetch_ca(remote, &token.cluster_digest, Duration::from_secs(10)).await.map_err(
        |e| match e {
            shoal_pki::PkiError::DigestMismatch { .. } => ApiError::Unauthorized(e.to_string()),
            other => ApiError::Rejected(format!("cannot reach a manager at {}: {other}", req.remote_addr)),
        },
    )?;
    let key = shoal_pki::NodeKey::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
    let csr_pem = key.csr_pem(&local.node_id).map_err(|e| ApiError::Internal(e.to_string()))?;
    // The join call: server verified against the pinned CA, no client certificate yet.
    let cfg = shoal_pki::tls::client_config(&ca_der, None).map_err(|e| ApiError::Internal(e.to_string()))?;
    let endpoint = crate::client::tcp_endpoint(&req.remote_addr).map_err(|e| ApiError::Rejected(e.to_string()))?;
    let channel = shoal_client::tls_channel(endpoint, &req.remote_addr, Arc::new(cfg), shoal_pki::MANAGER_NAME)
        .map_err(ApiError::Internal)?;
    let mut client = v1::membership_client::MembershipClient::new(channel);
    let mut call = tonic::Request::new(JoinRequest {
        token: req.token.clone(),
        node_id: local.node_id.clone(),
        raft_id: local.raft_id,
        addr,
        description: Some(node.identity.description()),
        csr_pem,
    });
    call.set_timeout(Duration::from_secs(15));
    let resp = client.join(call).await.map_err(|s| match s.code() {
        tonic::Code::PermissionDenied => ApiError::Unauthorized(s.message().to_string()),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            ApiError::Rejected(format!("cannot reach a manager at {}: {}", req.remote_addr, s.message()))
        }
        _ => ApiError::Rejected(format!("join refused by {}: {}", req.remote_addr, s.message())),
    })?;
    let resp = resp.into_inner();
    let role = resp.role();
    if !key.matches(&resp.cert_pem).unwrap_or(false) {
        return Err(ApiError::Rejected("the manager returned a certificate for another key".into()));
    }
    shoal_pki::cert_der_from_pem(&resp.cert_pem)
        .and_then(|leaf| shoal_pki::verify_leaf(&leaf, &ca_der, std::time::SystemTime::now()))
        .map_err(|e| ApiError::Rejected(format!("the manager returned an unusable certificate: {e}")))?;
    node.dialer.install(&ca_der, &resp.cert_pem, &key.key_pem())?;
    let mut managers: Vec<Peer> = resp
        .managers
        .iter()
        .map(|m| Peer { node_id: m.node_id.clone(), raft_id: m.raft_id, addr: m.addr.clone() })
        .collect();
    if managers.is_empty() {
        managers.push(Peer { node_id: String::new(), raft_id: 0, addr: req.remote_addr.clone() });
    }
    node.identity.update_local(|l| {
        l.role = if role == NodeRole::Manager { Role::Manager } else { Role::Worker };
        l.cluster_id = resp.cluster_id.clone();
        l.managers = managers;
        l.settings = resp.settings;
    })?;
    if role == NodeRole::Manager {
        // A fresh raft dir: this node catches up from the leader as a learner.
        node.managers.stop(true).await?;
        start_raft(node).await?;
    }
    ensure_session(node);
    ensure_agent(node).await;
    drop(_g);
    if role == NodeRole::Manager {
        wait_voter(node).await?;
    }
    Ok(JoinClusterResponse { node_id: local.node_id, role: role as i32, cluster_id: resp.cluster_id })
}

async fn wait_voter(node: &Node) -> Result<(), ApiError> {
    let rt = node.managers.require_manager()?;
    let mut rx = rt.raft.metrics();
    let deadline = tokio::time::Instant::now() + crate::membership::JOIN_VOTER_TIMEOUT;
    loop {
        {
            let m = rx.borrow_and_update();
            if m.membership_config.membership().voter_ids().any(|v| v == m.id) {
                return Ok(());
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            return Err(ApiError::Rejected(
                "joined, but this node has not become a raft voter within 60 s; check `shoal node ls` on a manager"
                    .into(),
            ));
        }
    }
}

/// Leaves the cluster (a manager only with `force`: it first asks to leave the Raft membership,
/// bounded), then stands alone.
pub(crate) async fn leave(node: &Node, force: bool) -> Result<(), ApiError> {
    let local = node.identity.local();
    match local.role {
        Role::Uninitialized => return Err(ApiError::NotInCluster),
        Role::Worker => {}
        Role::Manager => {
            if !force {
                return Err(ApiError::Rejected(
                    "this node is a manager: leaving removes it from the raft quorum; demote it first (`shoal node demote self`) or use --force".into(),
                )
                );
            }
            // Ask to be removed from the membership; wait (bounded) for it to happen so the
            // remaining managers keep their quorum arithmetic right.
            if let Some(rt) = node.managers.raft() {
                let me = rt.store.read(|s| s.node(&local.node_id).cloned());
                let voters = rt.metrics().membership_config.membership().voter_ids().count();
                if let (Some(mut n), true) = (me, voters > 1) {
                    if let Some(s) = n.spec.as_mut() {
                        s.desired_role = NodeRole::Worker as i32;
                    }
                    if node.writer.propose(vec![update_op(n.into())]).await.is_ok() {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                        while tokio::time::Instant::now() < deadline {
                            let m = rt.metrics();
                            if !m.membership_config.membership().voter_ids().any(|v| v == m.id) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
    }
    reset_to_standalone(node).await?;
    tracing::info!("left the cluster");
    Ok(())
}

/// Applies the role the leader says this node should have: promotion (a manager certificate,
/// then Raft), demotion (Raft stopped and wiped once the leader's membership no longer holds
/// this node, then a worker certificate), or a demotion that finished while the node was away.
pub(crate) async fn follow_desired_role(node: &Node, desired: NodeRole, raft_member: bool) -> Result<(), ApiError> {
    let _g = node.transition.lock().await;
    match (desired, node.managers.raft()) {
        (NodeRole::Manager, None) => {
            // Other managers accept Raft traffic only from a manager certificate.
            if node.dialer.cert_identity().map(|i| i.role) != Some(shoal_pki::Role::Manager) {
                crate::pki::renew(node).await?;
                tracing::info!("promoted: now holding a manager certificate");
            }
            tracing::info!("promoted: starting raft");
            node.identity.update_local(|l| l.role = Role::Manager)?;
            start_raft(node).await?;
        }
        // The leader's membership is the truth: a removed member never hears of its own
        // removal through Raft.
        (NodeRole::Worker, Some(_)) if !raft_member => {
            tracing::info!("demoted: stopping raft and removing its data");
            node.managers.stop(true).await?;
            node.identity.update_local(|l| l.role = Role::Worker)?;
            crate::pki::renew(node).await?;
            tracing::info!("demoted: now holding a worker certificate");
        }
        (NodeRole::Worker, None) if node.dialer.cert_identity().is_some_and(|i| i.role == shoal_pki::Role::Manager) => {
            // A demotion finished while this node was away from its certificate renewal.
            crate::pki::renew(node).await?;
        }
        _ => {}
    }
    Ok(())
}

/// After a forced new cluster, the other former managers are no longer members: record
/// them as workers that are down so nobody counts on them.
pub(crate) async fn after_force_new_cluster(node: &Node, rt: &Arc<RaftRuntime>) {
    let me = node.identity.local().node_id;
    if wait_leader(rt, Duration::from_secs(10)).await != Some(rt.metrics().id) {
        tracing::error!("force-new-cluster: this node did not become leader");
        return;
    }
    let others: Vec<v1::Node> = rt.store.read(|s| {
        s.nodes()
            .filter(|n| n.meta.as_ref().is_some_and(|m| m.id != me) && n.role() == v1::NodeRole::Manager)
            .cloned()
            .collect()
    });
    let mut ops = Vec::new();
    for mut n in others {
        n.role = v1::NodeRole::Worker as i32;
        n.raft_id = 0;
        if let Some(s) = n.spec.as_mut() {
            s.desired_role = v1::NodeRole::Worker as i32;
        }
        if let Some(st) = n.status.as_mut() {
            st.state = v1::NodeState::Down as i32;
            st.message = "removed from the managers by --force-new-cluster; wipe its data dir and join again".into();
        }
        ops.push(crate::writer::update_op(n.into()));
    }
    if !ops.is_empty() {
        if let Err(e) = node.writer.propose(ops).await {
            tracing::warn!(error = %e, "force-new-cluster: recording the old managers failed");
        }
    }
}

/// Starts Raft (see [`crate::managers::Managers::start`]), the leadership supervisor that runs
/// the leader loops while this node leads, and the takeover worker that stands for election as
/// soon as a dead leader's lease ran out (see [`crate::takeover`]).
pub(crate) async fn start_raft(node: &Node) -> Result<Arc<RaftRuntime>, ApiError> {
    if let Some(rt) = node.managers.raft() {
        return Ok(rt);
    }
    let (rt, forced) = node.managers.start(&node.dialer).await?;
    crate::leader::spawn_supervisor(node.clone(), rt.clone());
    let (n, r) = (node.clone(), rt.clone());
    node.workers.spawn("takeover", move |stop| async move {
        crate::takeover::run(n, r, stop).await;
        Ok::<(), String>(())
    });
    if forced {
        after_force_new_cluster(node, &rt).await;
    }
    Ok(rt)
}

/// Resumes the persisted role at daemon start.
pub async fn resume(node: &Node) -> Result<(), ApiError> {
    let local = node.identity.local();
    match local.role {
        Role::Uninitialized => {
            if node.managers.force_new_cluster_pending() {
                return Err(ApiError::Rejected("--force-new-cluster needs a node that was a manager".into()));
            }
        }
        Role::Manager => {
            start_raft(node).await?;
        }
        Role::Worker => {}
    }
    if local.role != Role::Uninitialized {
        ensure_session(node);
        ensure_agent(node).await;
    }
    Ok(())
}

/// Starts the session with the leader unless it runs already (it ends by itself when the
/// node leaves its cluster, and may then be started again by a later join).
pub(crate) fn ensure_session(node: &Node) {
    if !node.session_running.swap(true, std::sync::atomic::Ordering::SeqCst) {
        crate::session::spawn(node.clone(), |node, answer| Box::pin(apply_answer(node, answer)));
    }
}

/// Acts on the leader's heartbeat answer: removal resets the node; otherwise the managers and
/// settings it names are kept and the role it wants is followed.
async fn apply_answer(node: Node, resp: HeartbeatResponse) -> Result<(), ApiError> {
    if resp.removed {
        tracing::error!("this node was removed from the cluster; it now stands alone (join again to come back)");
        return reset_to_standalone(&node).await;
    }
    let managers: Vec<Peer> = resp
        .managers
        .iter()
        .map(|m| Peer { node_id: m.node_id.clone(), raft_id: m.raft_id, addr: m.addr.clone() })
        .filter(|p| !p.addr.is_empty())
        .collect();
    let settings = resp.settings;
    node.identity.update_local(|l| {
        if !managers.is_empty() {
            l.managers = managers;
        }
        if settings.is_some() {
            l.settings = settings;
        }
    })?;
    follow_desired_role(&node, resp.desired_role(), resp.raft_member).await
}

/// Starts the agent once, if this node has a container runtime.
pub(crate) async fn ensure_agent(node: &Node) {
    let Some(runtime) = node.identity.config().runtime.clone() else { return };
    {
        let mut slot = node.agent.lock().unwrap_or_else(|p| p.into_inner());
        if slot.started {
            return;
        }
        slot.started = true;
    }
    match crate::agent_link::start_agent(node, runtime) {
        Ok((status, agent)) => {
            node.agent.lock().unwrap_or_else(|p| p.into_inner()).status = Some(status);
            node.workers.spawn("agent", |stop| async move {
                agent(stop).await;
                Ok::<(), String>(())
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "the agent did not start: this node runs no tasks");
            node.agent.lock().unwrap_or_else(|p| p.into_inner()).started = false;
        }
    }
}

/// How often the container runtime is probed, and how long a probe may take.
const RUNTIME_PROBE: Duration = Duration::from_secs(2);

/// Probes the container runtime until shutdown (the node's "runtime probe" worker), so the
/// description the node reports says whether it can run tasks (the scheduler places nothing on
/// a node whose runtime is gone).
pub(crate) fn watch_runtime(identity: &Identity, workers: &crate::workers::Workers) {
    let Some(runtime) = identity.config().runtime.clone() else { return };
    let identity = identity.clone();
    workers.spawn("runtime probe", |stop| async move {
        loop {
            let why = match tokio::time::timeout(RUNTIME_PROBE, runtime.ping()).await {
                Ok(Ok(_)) => String::new(),
                Ok(Err(e)) => format!("container runtime unavailable: {e}"),
                Err(_) => format!("container runtime unavailable: no answer within {RUNTIME_PROBE:?}"),
            };
            identity.set_runtime_unavailable(why);
            tokio::select! {
                _ = stop.cancelled() => return Ok::<(), String>(()),
                _ = tokio::time::sleep(RUNTIME_PROBE) => {}
            }
        }
    });
}
