//! The node-to-manager service: join with a token, forwarded writes, heartbeats and pings.
//!
//! Join and heartbeat are answered by the leader; a follower forwards a join and redirects a
//! heartbeat, so nodes may talk to any manager they know.

use std::time::Duration;

use shoal_api::token::JoinToken;
use shoal_api::v1::{
    membership_server::Membership, Command, CommandResult, HeartbeatRequest, HeartbeatResponse, JoinRequest,
    JoinResponse, ManagerPeer, NodeRole, NodeSpec, NodeState, NodeStatus, PingRequest, PingResponse,
    RenewCertificateRequest, RenewCertificateResponse,
};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::liveness::Seen;
use crate::managers::member_addr;
use crate::node::Node;
use crate::util::now_ms;
use crate::writer::{create_op, update_op};

/// gRPC implementation of `Membership`.
pub struct MembershipService {
    node: Node,
}

impl MembershipService {
    /// Serves membership calls for `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

/// The leader's address if this manager is not the leader; `None` if it is.
fn leader_elsewhere(node: &Node) -> Result<Option<String>, ApiError> {
    let rt = node.managers.require_manager()?;
    let m = rt.metrics();
    match m.current_leader {
        Some(l) if l == m.id => Ok(None),
        Some(l) => Ok(member_addr(&m, l)),
        None => Err(ApiError::Internal("no leader elected yet; retry in a moment".into())),
    }
}

/// The managers of the cluster as peers for a node to remember.
pub(crate) fn manager_peers(node: &Node) -> Vec<ManagerPeer> {
    node.managers
        .peers()
        .into_iter()
        .map(|p| ManagerPeer { node_id: p.node_id, raft_id: p.raft_id, addr: p.addr })
        .collect()
}

/// Checks a join token against the cluster; returns the role it admits.
pub fn check_token(token: &str, cluster: &shoal_api::v1::Cluster) -> Result<NodeRole, ApiError> {
    let t = JoinToken::parse(token).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    if t.cluster_digest != crate::pki::ca_digest(cluster) {
        return Err(ApiError::Unauthorized(
            "join token is for another cluster (its CA digest does not match this cluster's CA)".into(),
        ));
    }
    let secrets = cluster.join_secrets.clone().unwrap_or_default();
    if !secrets.manager.is_empty() && t.secret == secrets.manager {
        Ok(NodeRole::Manager)
    } else if !secrets.worker.is_empty() && t.secret == secrets.worker {
        Ok(NodeRole::Worker)
    } else {
        Err(ApiError::Unauthorized("invalid join token: the secret does not match (was the token rotated?)".into()))
    }
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = req.into_inner();
        if let Some(addr) = leader_elsewhere(&self.node)? {
            let mut c = self.node.dialer.membership_client(&addr)?;
            return c.join(req).await;
        }
        let rt = self.node.managers.require_manager()?;
        let Some(cluster) = rt.store.read(|s| s.cluster().cloned()) else {
            return Err(ApiError::Internal("cluster is not initialized yet".into()).into());
        };
        let role = check_token(&req.token, &cluster)?;
        if req.node_id.is_empty() || req.raft_id == 0 || req.addr.is_empty() {
            return Err(Status::invalid_argument("join request lacks node id, raft id or address"));
        }
        if req.csr_pem.is_empty() {
            return Err(Status::invalid_argument("join request lacks a certificate signing request"));
        }
        if cluster.removed_node_ids.contains(&req.node_id) {
            return Err(ApiError::Unauthorized(format!(
                "node id {} was removed from this cluster; a removed node joins again with a fresh data dir",
                req.node_id
            ))
            .into());
        }
        let existing = rt.store.read(|s| s.node(&req.node_id).cloned());
        if existing.as_ref().is_some_and(|n| n.status.as_ref().is_some_and(|s| s.state() == NodeState::Ready)) {
            return Err(Status::already_exists(format!(
                "node id {} is already in the cluster and up; a node joins once",
                req.node_id
            )));
        }
        let (cert_pem, ca_pem) =
            crate::pki::issue_from(&cluster, &req.csr_pem, &req.node_id, crate::pki::cert_role(role))?;
        let desc = req.description.clone();
        let hostname = desc.as_ref().map(|d| d.hostname.clone()).unwrap_or_default();
        let op = match existing {
            Some(mut n) => {
                if let Some(s) = n.spec.as_mut() {
                    s.desired_role = role as i32;
                }
                n.description = desc;
                n.raft_id = req.raft_id;
                update_op(n.into())
            }
            None => create_op(
                shoal_api::v1::Node {
                    meta: Some(shoal_api::v1::Meta { id: req.node_id.clone(), ..Default::default() }),
                    spec: Some(NodeSpec { desired_role: role as i32, ..Default::default() }),
                    description: desc,
                    status: Some(NodeStatus {
                        state: NodeState::Unknown as i32,
                        message: "joining".into(),
                        addr: req.addr.clone(),
                        timestamp_ms: now_ms(),
                    }),
                    role: NodeRole::Worker as i32,
                    raft_id: req.raft_id,
                    ingress_address: String::new(),
                }
                .into(),
            ),
        };
        let cmd = Command { now_ms: now_ms(), ops: vec![op] };
        self.node.writer.propose_local(cmd).await?;
        tracing::info!(node_id = %req.node_id, %hostname, role = shoal_api::names::node_role(role), "node joined");
        let cluster_id = cluster.meta.map(|m| m.id).unwrap_or_default();
        Ok(Response::new(JoinResponse {
            cluster_id,
            role: role as i32,
            managers: manager_peers(&self.node),
            settings: cluster.settings,
            cert_pem,
            ca_pem,
        }))
    }

    async fn propose(&self, req: Request<Command>) -> Result<Response<CommandResult>, Status> {
        let r = self.node.writer.propose_local(req.into_inner()).await;
        match r {
            Ok(r) => Ok(Response::new(r)),
            // Apply errors travel inside the result so the caller sees the store's verdict.
            Err(ApiError::Apply { refusal, message }) => {
                Ok(Response::new(CommandResult { error: message, refusal: refusal as i32, ..Default::default() }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn read_index(
        &self,
        _req: Request<shoal_api::v1::ReadIndexRequest>,
    ) -> Result<Response<shoal_api::v1::ReadIndexResponse>, Status> {
        let index = self.node.writer.leader_read_index().await?;
        Ok(Response::new(shoal_api::v1::ReadIndexResponse { index }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = crate::tls::caller(&req).cloned();
        let req = req.into_inner();
        if let Some(c) = &caller {
            if c.node_id != req.node_id {
                return Err(Status::permission_denied(format!(
                    "node {} may not send heartbeats for node {}",
                    c.node_id, req.node_id
                )));
            }
        }
        let rt = self.node.managers.require_manager()?;
        if let Some(addr) = leader_elsewhere(&self.node)? {
            return Ok(Response::new(HeartbeatResponse { leader_addr: addr, ..Default::default() }));
        }
        let (known, settings, cluster_id, nodes) = rt.store.read(|s| {
            (
                s.node(&req.node_id).cloned(),
                s.cluster().and_then(|c| c.settings),
                s.cluster().and_then(|c| c.meta.as_ref().map(|m| m.id.clone())).unwrap_or_default(),
                s.node_count(),
            )
        });
        if !req.cluster_id.is_empty() && req.cluster_id != cluster_id {
            return Err(Status::permission_denied("this node belongs to another cluster"));
        }
        let settings =
            settings.map(shoal_api::defaults::fill_settings).unwrap_or_else(shoal_api::defaults::cluster_settings);
        let (period, grace) = crate::liveness::timing(&settings, nodes);
        let Some(n) = known else {
            return Ok(Response::new(HeartbeatResponse { removed: true, ..Default::default() }));
        };
        self.node.heard.record(
            &req.node_id,
            Seen {
                at: tokio::time::Instant::now(),
                addr: req.addr,
                raft_running: req.raft_running,
                description: req.description,
                grace,
            },
        );
        let desired = n.spec.as_ref().map(|s| s.desired_role()).unwrap_or(NodeRole::Worker);
        Ok(Response::new(HeartbeatResponse {
            period_ms: period.as_millis() as u64,
            desired_role: desired as i32,
            managers: manager_peers(&self.node),
            removed: false,
            leader_addr: String::new(),
            settings: Some(settings),
            raft_member: rt.metrics().membership_config.membership().get_node(&n.raft_id).is_some(),
        }))
    }

    async fn renew_certificate(
        &self,
        req: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let caller =
            crate::tls::caller(&req).cloned().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let rt = self.node.managers.require_manager()?;
        // The role comes from the cluster's view of the node, so promotion and demotion take
        // effect in the certificate; a node the cluster does not know gets nothing.
        let role = rt
            .store
            .read(|s| {
                s.node(&caller.node_id).map(|n| n.spec.as_ref().map(|s| s.desired_role()).unwrap_or(NodeRole::Worker))
            })
            .ok_or_else(|| Status::permission_denied(format!("node {} is not in the cluster", caller.node_id)))?;
        let (cert_pem, ca_pem) =
            crate::pki::issue(&rt, &req.into_inner().csr_pem, &caller.node_id, crate::pki::cert_role(role))?;
        Ok(Response::new(RenewCertificateResponse { cert_pem, ca_pem }))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let local = self.node.identity.local();
        let (term, leader, last_log, silence) = match self.node.managers.raft() {
            Some(rt) => {
                let m = rt.metrics();
                let since = rt.honours_leader_since(&self.node.managers.leader_contact());
                (m.current_term, m.current_leader.unwrap_or(0), rt.last_log(), since.elapsed().as_millis() as u64)
            }
            None => (0, 0, (0, 0), 0),
        };
        Ok(Response::new(PingResponse {
            node_id: local.node_id,
            raft_id: local.raft_id,
            term,
            leader_raft_id: leader,
            last_log_term: last_log.0,
            last_log_index: last_log.1,
            leader_silence_ms: silence,
        }))
    }
}

/// How long `cluster join` waits for this manager to become a voter.
pub const JOIN_VOTER_TIMEOUT: Duration = Duration::from_secs(60);
