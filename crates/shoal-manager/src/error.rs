//! The errors a control or membership call can end with, and how each becomes a gRPC status.
//!
//! Messages are what a user reads on one line: what went wrong and what to do about it.

use shoal_api::v1::Refusal;
use shoal_api::validate::ValidationError;
use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The node has not joined a cluster.
    #[error("this node is not part of a cluster: run `shoal cluster init` or `shoal cluster join`")]
    NotInCluster,
    /// The node is already in a cluster.
    #[error("this node is already part of cluster {0}: run `shoal cluster leave` first")]
    AlreadyInCluster(String),
    /// Cluster writes and reads need a manager.
    #[error("this node is a worker: run the command against a manager (--host MANAGER:PORT)")]
    NotManager,
    /// Not enough managers answer to commit anything.
    #[error("no quorum: {reachable} of {total} managers reachable, {needed} needed; bring managers back, or recover a survivor with `shoald --force-new-cluster`")]
    NoQuorum {
        /// Managers that answered (including this one).
        reachable: usize,
        /// Managers in the Raft membership.
        total: usize,
        /// A majority of `total`.
        needed: usize,
    },
    /// The spec was rejected before anything was proposed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Rejected(String),
    /// A rule of the control API refuses it.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A referenced object does not exist or is ambiguous.
    #[error(transparent)]
    Lookup(#[from] shoal_store::LookupError),
    /// The write was appended to the leader's log but not seen committed in time: it may still
    /// take effect (when enough managers come back), or never. Nothing else can be said.
    #[error("the outcome of this write is unknown: the leader took it but could not commit it within {waited_ms} ms ({reachable} of {total} managers reachable); it takes effect if enough managers return. Check with `shoal service ls` / `inspect` once the managers are back before retrying")]
    UnknownOutcome {
        /// How long the write waited.
        waited_ms: u64,
        /// Managers that answered (including this one).
        reachable: usize,
        /// Managers in the Raft membership.
        total: usize,
    },
    /// The store refused the command (conflict, not found, exists, invalid); nothing applied.
    #[error("{message}")]
    Apply {
        /// Why.
        refusal: shoal_api::v1::Refusal,
        /// The store's explanation.
        message: String,
    },
    /// The join token does not admit this node.
    #[error("{0}")]
    Unauthorized(String),
    /// This manager is not the leader (internal forwarding only).
    #[error("not the leader")]
    NotLeader,
    /// Something inside the daemon failed; the message says what.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Wraps an internal failure with context.
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        ApiError::Internal(format!("{context}: {e}"))
    }
}

pub use shoal_api::outcome::WriteOutcome;
use shoal_api::outcome::{NODE_REMOVED, REFUSAL_KEY, WRITE_OUTCOME_KEY};

/// Reads the outcome a leader attached to a failed write's status, if any.
pub fn write_outcome(s: &Status) -> Option<WriteOutcome> {
    WriteOutcome::parse(s.metadata().get(WRITE_OUTCOME_KEY)?.to_str().ok()?)
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let outcome = match &e {
            ApiError::NoQuorum { .. } => Some(WriteOutcome::Refused),
            ApiError::UnknownOutcome { .. } => Some(WriteOutcome::Unknown),
            ApiError::NotLeader => Some(WriteOutcome::NotLeader),
            _ => None,
        };
        let code = match &e {
            ApiError::NotInCluster | ApiError::AlreadyInCluster(_) | ApiError::NotManager | ApiError::NotLeader => {
                Code::FailedPrecondition
            }
            ApiError::NoQuorum { .. } => Code::Unavailable,
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::Rejected(_) | ApiError::Policy(_) => Code::FailedPrecondition,
            ApiError::Lookup(shoal_store::LookupError::NotFound { .. }) => Code::NotFound,
            ApiError::Lookup(_) => Code::InvalidArgument,
            // gRPC's own meaning: the operation may have completed.
            ApiError::UnknownOutcome { .. } => Code::DeadlineExceeded,
            ApiError::Apply { refusal, .. } => match refusal {
                Refusal::NotFound => Code::NotFound,
                Refusal::Exists => Code::AlreadyExists,
                Refusal::Conflict => Code::Aborted,
                Refusal::Invalid | Refusal::None => Code::InvalidArgument,
            },
            ApiError::Unauthorized(_) => Code::PermissionDenied,
            ApiError::Internal(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let Some(o) = outcome {
            status.metadata_mut().insert(WRITE_OUTCOME_KEY, tonic::metadata::MetadataValue::from_static(o.as_str()));
        }
        status
    }
}

/// The refusal a removed node's calls get (its certificate is no longer accepted).
pub fn node_removed(node_id: &str) -> Status {
    let mut s = Status::permission_denied(format!(
        "node {node_id} was removed from the cluster; its certificate is no longer accepted (join it again)"
    ));
    s.metadata_mut().insert(REFUSAL_KEY, tonic::metadata::MetadataValue::from_static(NODE_REMOVED));
    s
}

/// Whether `s` says the calling node was removed from the cluster.
pub fn is_node_removed(s: &Status) -> bool {
    s.code() == Code::PermissionDenied
        && s.metadata().get(REFUSAL_KEY).and_then(|v| v.to_str().ok()) == Some(NODE_REMOVED)
}
