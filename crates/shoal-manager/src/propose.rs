//! The write path: a command is proposed on the leader (directly, or forwarded by a follower),
//! committed by a majority, applied, and its result returned.
//!
//! A write that cannot reach a quorum fails promptly with the number of reachable managers,
//! instead of hanging: the leader checks its last quorum acknowledgement first, and a follower
//! gives up after a bounded wait for a leader.

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use shoal_api::v1::{op, Command, CommandResult, Object, ObjectKind, ObjectRef, Op, PingRequest};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::node::{member_addr, now_ms, Node, RaftRuntime};

/// Create op.
pub fn create_op(o: Object) -> Op {
    Op { kind: Some(op::Kind::Create(o)) }
}

/// Versioned update op (the object's meta.version is the expected version).
pub fn update_op(o: Object) -> Op {
    Op { kind: Some(op::Kind::Update(o)) }
}

/// Unversioned create-or-replace op.
pub fn upsert_op(o: Object) -> Op {
    Op { kind: Some(op::Kind::Upsert(o)) }
}

/// Delete op; `version` 0 deletes whatever is stored.
pub fn delete_op(kind: ObjectKind, id: &str, version: u64) -> Op {
    Op { kind: Some(op::Kind::Delete(ObjectRef { kind: kind as i32, id: id.to_string(), version })) }
}

/// How long a write may wait overall (for a leader, for the commit).
fn write_patience(rt: &RaftRuntime) -> Duration {
    (rt.election_timeout * 6).max(Duration::from_secs(3))
}

/// Proposes `ops` as one atomic command and returns the stored objects.
pub async fn propose(node: &Node, ops: Vec<Op>) -> Result<CommandResult, ApiError> {
    let rt = node.require_manager()?;
    let cmd = Command { now_ms: now_ms(), ops };
    let deadline = Instant::now() + write_patience(&rt);
    let mut metrics = rt.raft.metrics();
    loop {
        let m = metrics.borrow_and_update().clone();
        match m.current_leader {
            Some(l) if l == m.id => match propose_as_leader(node, &rt, cmd.clone(), deadline).await {
                Err(ApiError::NotLeader) => {}
                other => return other,
            },
            Some(l) => {
                let Some(addr) = member_addr(&m, l) else {
                    return Err(ApiError::Internal(format!("leader {l} has no address in the membership")));
                };
                let mut client = node.membership_client(&addr)?;
                let mut req = tonic::Request::new(cmd.clone());
                req.set_timeout(deadline.saturating_duration_since(Instant::now()));
                match client.propose(req).await {
                    Ok(r) => return into_result(r.into_inner()),
                    Err(s) if s.code() == tonic::Code::Unavailable && s.message().starts_with("no quorum") => {
                        return Err(no_quorum(node, &rt).await);
                    }
                    Err(s) => tracing::debug!(leader = l, status = %s, "forwarding a write failed; retrying"),
                }
                // The leader may be gone: give the election a moment.
                let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
            }
            None => {
                if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                    return Err(no_quorum(node, &rt).await);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(no_quorum(node, &rt).await);
        }
    }
}

/// Proposes on this node, which must be the leader (used for forwarded writes too).
pub async fn propose_local(node: &Node, cmd: Command) -> Result<CommandResult, ApiError> {
    let rt = node.require_manager()?;
    let deadline = Instant::now() + write_patience(&rt);
    propose_as_leader(node, &rt, cmd, deadline).await
}

async fn propose_as_leader(
    node: &Node,
    rt: &RaftRuntime,
    cmd: Command,
    deadline: Instant,
) -> Result<CommandResult, ApiError> {
    let m = rt.metrics();
    if m.current_leader != Some(m.id) {
        return Err(ApiError::NotLeader);
    }
    let voters = m.membership_config.membership().voter_ids().count();
    if voters > 1 {
        // A leader cut off from the majority still believes it leads; a quorum ack that is
        // long overdue tells (right after a membership change it may briefly lag: the write
        // below is still bounded by the deadline).
        let overdue = (rt.election_timeout * 6).max(Duration::from_secs(3));
        let stale = m.millis_since_quorum_ack.is_some_and(|ms| Duration::from_millis(ms) > overdue);
        if stale {
            return Err(no_quorum(node, rt).await);
        }
    }
    match tokio::time::timeout_at(deadline, rt.raft.client_write(shoal_raft::Request(cmd))).await {
        Ok(Ok(resp)) => into_result(resp.data.0),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(ApiError::NotLeader),
        Ok(Err(e)) => Err(ApiError::internal("raft write failed", e)),
        Err(_) => Err(no_quorum(node, rt).await),
    }
}

fn into_result(r: CommandResult) -> Result<CommandResult, ApiError> {
    if r.error.is_empty() {
        Ok(r)
    } else {
        Err(ApiError::Apply { kind: r.error_kind, message: r.error })
    }
}

/// Builds the no-quorum error after probing every manager.
pub async fn no_quorum(node: &Node, rt: &RaftRuntime) -> ApiError {
    let m = rt.metrics();
    let members: Vec<(u64, String)> =
        m.membership_config.membership().voter_ids().filter_map(|id| member_addr(&m, id).map(|a| (id, a))).collect();
    let total = members.len().max(1);
    let reachable = reachable_managers(node, &members, m.id).await.len();
    ApiError::NoQuorum { reachable, total, needed: total / 2 + 1 }
}

/// Raft ids among `members` that answer a ping within a short timeout (self always counts).
pub async fn reachable_managers(node: &Node, members: &[(u64, String)], self_id: u64) -> Vec<u64> {
    let probes = members.iter().map(|(id, addr)| {
        let node = node.clone();
        let (id, addr) = (*id, addr.clone());
        async move {
            if id == self_id {
                return Some(id);
            }
            let mut c = node.membership_client(&addr).ok()?;
            let mut req = tonic::Request::new(PingRequest {});
            req.set_timeout(Duration::from_millis(300));
            tokio::time::timeout(Duration::from_millis(400), c.ping(req)).await.ok()?.ok().map(|_| id)
        }
    });
    futures::future::join_all(probes).await.into_iter().flatten().collect()
}
