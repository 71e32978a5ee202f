//! The write path: a command is proposed on the leader (directly, or forwarded by a follower),
//! committed by a majority, applied, and its result returned.
//!
//! A write ends in one of three ways, never confused:
//! - **done**: committed and applied; the store's verdict (objects, or a refusal such as a stale
//!   version) comes back;
//! - **refused** (`NoQuorum`): nothing was appended anywhere, so it can never apply. The leader
//!   says so when its last quorum acknowledgement is older than [`quorum_patience`]; a follower
//!   when it found no leader, or every forwarding attempt provably never left it;
//! - **unknown outcome** (`UnknownOutcome`): the leader took it but it was not seen committed in
//!   time, or a forwarded request may have reached the leader before its answer was lost. It may
//!   still apply when enough managers come back. The client is told exactly that.
//!
//! Nothing here reads message text: a leader marks how a forwarded write ended in the status
//! metadata ([`WriteOutcome`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use shoal_api::v1::{op, Command, CommandResult, Object, ObjectKind, ObjectRef, Op, PingRequest, Refusal};
use tokio::time::Instant;

use crate::dialer::Dialer;
use crate::error::{write_outcome, ApiError, WriteOutcome};
use crate::managers::{member_addr, Managers, RaftRuntime};
use crate::proposer::Outcome;
use crate::util::now_ms;

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

/// How old the leader's last quorum acknowledgement may be before it refuses writes: by then a
/// healthy follower has answered many heartbeats, and the followers may be electing another
/// leader.
pub fn quorum_patience(rt: &RaftRuntime) -> Duration {
    (rt.election_timeout * 2).max(Duration::from_secs(1))
}

/// Proposes writes: on the leader, or forwarded to it; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    managers: Managers,
    dialer: Dialer,
}

impl Writer {
    /// A writer through this node's Raft instance (or to the leader, through `dialer`).
    pub fn new(managers: Managers, dialer: Dialer) -> Self {
        Writer { managers, dialer }
    }

    /// Proposes `ops` as one atomic command and returns the stored objects.
    pub async fn propose(&self, ops: Vec<Op>) -> Result<CommandResult, ApiError> {
        propose(self, ops).await
    }

    /// Waits until this manager's store holds every write committed before the call (Raft's
    /// read index): the leader confirms with a quorum that it still leads; a follower asks the
    /// leader and waits until it applied that far. A read after it never shows an older state
    /// than one any manager already showed (a restarted or lagging manager included). When no
    /// quorum confirms a leader within the quorum's patience (a second), the read is served
    /// from this manager's own state: without a majority the operator still sees what is down.
    pub async fn read_barrier(&self) -> Result<Arc<RaftRuntime>, ApiError> {
        let rt = self.managers.require_manager()?;
        if let Err(why) = self.catch_up(&rt).await {
            tracing::debug!(%why, "a read is served from this manager's own state");
        }
        Ok(rt)
    }

    /// The read barrier's work; the error says why it could not be confirmed.
    async fn catch_up(&self, rt: &RaftRuntime) -> Result<(), String> {
        let deadline = Instant::now() + quorum_patience(rt);
        let mut metrics = rt.raft.metrics();
        loop {
            let m = metrics.borrow_and_update().clone();
            let index = match m.current_leader {
                // ensure_linearizable also waits until this node applied that far.
                Some(l) if l == m.id => match tokio::time::timeout_at(deadline, rt.raft.ensure_linearizable()).await {
                    Ok(Ok(_)) => return Ok(()),
                    // No longer the leader: look again.
                    Ok(Err(RaftError::APIError(_))) => None,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("no quorum confirmed this leader in time".into()),
                },
                Some(l) => {
                    let addr = member_addr(&m, l).ok_or_else(|| format!("leader {l} has no address"))?;
                    let mut client = self.dialer.membership_client(&addr).map_err(|e| e.to_string())?;
                    let mut req = tonic::Request::new(shoal_api::v1::ReadIndexRequest {});
                    req.set_timeout(deadline.saturating_duration_since(Instant::now()));
                    client.read_index(req).await.ok().map(|r| r.into_inner().index)
                }
                None => None,
            };
            if let Some(index) = index {
                // Applying what is committed is this node's own work: it gets the write patience.
                let wait = rt.raft.wait(Some(write_patience(rt)));
                return wait
                    .applied_index_at_least(Some(index), "read barrier")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return Err("no leader confirmed the state in time".into());
            }
        }
    }

    /// On the leader: the index every read must see, once a quorum confirmed it still leads
    /// (and this node applied that far).
    pub async fn leader_read_index(&self) -> Result<u64, ApiError> {
        let rt = self.managers.require_manager()?;
        let m = rt.metrics();
        if m.current_leader != Some(m.id) {
            return Err(ApiError::NotLeader);
        }
        match tokio::time::timeout(quorum_patience(&rt), rt.raft.ensure_linearizable()).await {
            Ok(Ok(id)) => Ok(id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(_))) => Err(ApiError::NotLeader),
            _ => Err(no_quorum(self, &rt).await),
        }
    }

    /// Proposes on this node, which must be the leader (used for forwarded writes too).
    pub async fn propose_local(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        let rt = self.managers.require_manager()?;
        let started = Instant::now();
        let deadline = started + write_patience(&rt);
        propose_as_leader(self, &rt, cmd, deadline, started).await
    }

    /// Builds the no-quorum error after probing every manager.
    pub async fn no_quorum(&self, rt: &RaftRuntime) -> ApiError {
        no_quorum(self, rt).await
    }

    /// Raft ids among `members` that answer a ping within a short timeout (self always counts).
    pub async fn reachable_managers(&self, members: &[(u64, String)], self_id: u64) -> Vec<u64> {
        reachable_managers(self, members, self_id).await
    }
}

async fn propose(w: &Writer, ops: Vec<Op>) -> Result<CommandResult, ApiError> {
    let rt = w.managers.require_manager()?;
    let cmd = Command { now_ms: now_ms(), ops };
    let started = Instant::now();
    let deadline = started + write_patience(&rt);
    let mut metrics = rt.raft.metrics();
    loop {
        let m = metrics.borrow_and_update().clone();
        match m.current_leader {
            Some(l) if l == m.id => match propose_as_leader(w, &rt, cmd.clone(), deadline, started).await {
                Err(ApiError::NotLeader) => {}
                other => return other,
            },
            Some(l) => {
                let Some(addr) = member_addr(&m, l) else {
                    return Err(ApiError::Internal(format!("leader {l} has no address in the membership")));
                };
                let mut client = w.dialer.membership_client(&addr)?;
                let mut req = tonic::Request::new(cmd.clone());
                req.set_timeout(deadline.saturating_duration_since(Instant::now()));
                match client.propose(req).await {
                    Ok(r) => return into_result(r.into_inner()),
                    Err(s) => match write_outcome(&s) {
                        Some(WriteOutcome::Refused) => return Err(no_quorum(w, &rt).await),
                        Some(WriteOutcome::Unknown) => return Err(unknown_outcome(w, &rt, started).await),
                        Some(WriteOutcome::NotLeader) => {}
                        None if never_sent(&s) => {
                            tracing::debug!(leader = l, status = %s, "could not reach the leader; retrying");
                        }
                        // A timeout, a reset connection, a leader that died mid-call: the request
                        // may have been taken.
                        None => {
                            tracing::debug!(leader = l, status = %s, "forwarded write ended without an answer");
                            return Err(unknown_outcome(w, &rt, started).await);
                        }
                    },
                }
                // The leader may be gone: give the election a moment.
                let _ = tokio::time::timeout(Duration::from_millis(50), metrics.changed()).await;
            }
            None => {
                if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                    return Err(no_quorum(w, &rt).await);
                }
            }
        }
        if Instant::now() >= deadline {
            // Every attempt was refused before anything was appended.
            return Err(no_quorum(w, &rt).await);
        }
    }
}

/// Whether a failed call provably never reached the server: the connection could not be made.
fn never_sent(s: &tonic::Status) -> bool {
    use std::io::ErrorKind::*;
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable) {
                return true;
            }
        }
        src = e.source();
    }
    false
}

async fn propose_as_leader(
    w: &Writer,
    rt: &RaftRuntime,
    cmd: Command,
    deadline: Instant,
    started: Instant,
) -> Result<CommandResult, ApiError> {
    let m = rt.metrics();
    if m.current_leader != Some(m.id) {
        return Err(ApiError::NotLeader);
    }
    let voters = m.membership_config.membership().voter_ids().count();
    if voters > 1 {
        // A leader cut off from the majority still believes it leads; a quorum acknowledgement
        // that is overdue tells. Refusing here is safe: nothing was appended.
        // The metric is refreshed only when openraft reports metrics, so an old value is
        // confirmed with a round of heartbeats before anyone is refused.
        let stale = m.millis_since_quorum_ack.is_some_and(|ms| Duration::from_millis(ms) > quorum_patience(rt));
        if stale {
            let confirmed = tokio::time::timeout(quorum_patience(rt), rt.raft.ensure_linearizable()).await;
            if !matches!(confirmed, Ok(Ok(_))) {
                return Err(no_quorum(w, rt).await);
            }
        }
    }
    if let Some(proposer) = rt.proposer() {
        return match proposer.propose(cmd).await {
            // The term ended: nothing was queued.
            None => Err(ApiError::NotLeader),
            Some(outcome) => match tokio::time::timeout_at(deadline, outcome).await {
                Ok(Ok(Outcome::Applied(r))) => into_result(r),
                Ok(Ok(Outcome::NotLeader | Outcome::NotSubmitted)) => Err(ApiError::NotLeader),
                Ok(Ok(Outcome::Failed(e))) => {
                    tracing::warn!(error = %e, "raft write failed after it was submitted");
                    Err(unknown_outcome(w, rt, started).await)
                }
                // Submitted, then dropped with the term; or not committed in time.
                Ok(Err(_)) | Err(_) => Err(unknown_outcome(w, rt, started).await),
            },
        };
    }
    // Before the term's proposer runs (or after it stopped): an entry of its own.
    match tokio::time::timeout_at(deadline, rt.raft.client_write(shoal_raft::Request::one(cmd))).await {
        Ok(Ok(resp)) => match resp.data.0.into_iter().next() {
            Some(r) => into_result(r),
            None => Err(ApiError::Internal("the entry was applied but gave no result".into())),
        },
        // openraft answers this before appending, or after the entry was truncated away: either
        // way it will never apply.
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(ApiError::NotLeader),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "raft write failed after it was submitted");
            Err(unknown_outcome(w, rt, started).await)
        }
        Err(_) => Err(unknown_outcome(w, rt, started).await),
    }
}

fn into_result(r: CommandResult) -> Result<CommandResult, ApiError> {
    if r.refusal() == Refusal::None && r.error.is_empty() {
        Ok(r)
    } else {
        Err(ApiError::Apply { refusal: r.refusal(), message: r.error })
    }
}

/// Builds the unknown-outcome error after probing every manager.
async fn unknown_outcome(w: &Writer, rt: &RaftRuntime, started: Instant) -> ApiError {
    let (reachable, total) = reachability(w, rt).await;
    ApiError::UnknownOutcome { waited_ms: started.elapsed().as_millis() as u64, reachable, total }
}

async fn reachability(w: &Writer, rt: &RaftRuntime) -> (usize, usize) {
    let m = rt.metrics();
    let members: Vec<(u64, String)> =
        m.membership_config.membership().voter_ids().filter_map(|id| member_addr(&m, id).map(|a| (id, a))).collect();
    let total = members.len().max(1);
    (reachable_managers(w, &members, m.id).await.len(), total)
}

async fn no_quorum(w: &Writer, rt: &RaftRuntime) -> ApiError {
    let (reachable, total) = reachability(w, rt).await;
    ApiError::NoQuorum { reachable, total, needed: total / 2 + 1 }
}

async fn reachable_managers(w: &Writer, members: &[(u64, String)], self_id: u64) -> Vec<u64> {
    let probes = members.iter().map(|(id, addr)| {
        let w = w.clone();
        let (id, addr) = (*id, addr.clone());
        async move {
            if id == self_id {
                return Some(id);
            }
            let mut c = w.dialer.membership_client(&addr).ok()?;
            let mut req = tonic::Request::new(PingRequest {});
            req.set_timeout(Duration::from_millis(300));
            tokio::time::timeout(Duration::from_millis(400), c.ping(req)).await.ok()?.ok().map(|_| id)
        }
    });
    futures::future::join_all(probes).await.into_iter().flatten().collect()
}
