//! The server side of the Raft transport: the tonic `Raft` service in front of a local openraft
//! instance.
//!
//! Messages are binary (see `codec`); snapshot chunks carry their data raw.
//!
//! The service reads the instance from a watch slot, so the gRPC server can start before Raft
//! does (and keep running while Raft is stopped or restarted): without an instance it answers
//! `unavailable`, which the client side treats as an unreachable peer.
//!
//! It also notes when a leader last reached this node ([`LeaderContact`]): a follower's view of
//! its leader's silence, which openraft does not publish.
//!
//! Architecture Invariant: no authorization here; the caller's identity is checked by the
//! server's TLS configuration / interceptors that wrap this service.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_api::v1::raft_server::{Raft, RaftServer};
use shoal_api::v1::RaftMessage;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::network::MAX_MESSAGE_BYTES;
use crate::types::RaftNode;

/// When an AppendEntries of a leader this node accepts (its vote is not older than this node's)
/// last arrived; cheap to clone.
#[derive(Clone, Default)]
pub struct LeaderContact {
    last: Arc<Mutex<Option<Instant>>>,
}

impl LeaderContact {
    /// The instant of the last accepted AppendEntries, if any arrived in this process.
    pub fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the answer this node gave an AppendEntries: anything but a higher vote means the
    /// sender is the leader this node follows.
    fn note<E>(&self, answer: &Result<AppendEntriesResponse<u64>, E>) {
        if matches!(answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }
}

/// The tonic `Raft` service of a manager.
#[derive(Clone)]
pub struct RaftService {
    slot: watch::Receiver<Option<RaftNode>>,
    contact: LeaderContact,
}

impl RaftService {
    /// A service answering for whatever Raft instance `slot` holds, noting leader contact in
    /// `contact`.
    pub fn new(slot: watch::Receiver<Option<RaftNode>>, contact: LeaderContact) -> Self {
        RaftService { slot, contact }
    }

    /// The tonic server for this service, with message limits raised to [`MAX_MESSAGE_BYTES`].
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn raft(&self) -> Result<RaftNode, Status> {
        self.slot.borrow().clone().ok_or_else(|| Status::unavailable("raft is not running on this node"))
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    crate::codec::from_bytes(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("cannot decode raft request: {e}")))
}

fn reply<T: Serialize>(res: &T) -> Result<Response<RaftMessage>, Status> {
    let data = crate::codec::to_bytes(res).map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(Response::new(RaftMessage { data }))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let raft = self.raft()?;
        let rpc = decode(request)?;
        let res = raft.append_entries(rpc).await;
        self.contact.note(&res);
        reply(&res)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let raft = self.raft()?;
        let rpc = decode(request)?;
        reply(&raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let raft = self.raft()?;
        let rpc = crate::codec::decode_chunk(request.into_inner().data).map_err(Status::invalid_argument)?;
        // openraft 0.9 sends no heartbeats to a follower while it streams a snapshot to it, and
        // chunks do not reset the follower's election timer: a transfer longer than the election
        // timeout would make the follower campaign and depose a healthy leader. A chunk proves
        // the leader is alive, so tell Raft so with an empty AppendEntries of the same vote
        // (no previous log id, no entries, no commit index: it can only refresh the leader's
        // lease; a stale vote is simply rejected).
        let lease =
            AppendEntriesRequest { vote: rpc.vote, prev_log_id: None, entries: Vec::new(), leader_commit: None };
        let refreshed = raft.append_entries(lease).await;
        self.contact.note(&refreshed);
        if let Err(e) = refreshed {
            tracing::debug!(error = %e, "lease refresh for a snapshot chunk failed");
        }
        reply(&raft.install_snapshot(rpc).await)
    }
}
