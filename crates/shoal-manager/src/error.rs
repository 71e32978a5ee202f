//! The errors a control or membership call can end with, and how each becomes a gRPC status.
//!
//! Messages are what a user reads on one line: what went wrong and what to do about it.

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
    /// A referenced object does not exist or is ambiguous.
    #[error(transparent)]
    Lookup(#[from] shoal_store::LookupError),
    /// The store refused the command (conflict, not found, exists, invalid).
    #[error("{message}")]
    Apply {
        /// `conflict`, `not_found`, `exists` or `invalid`.
        kind: String,
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

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::NotInCluster | ApiError::AlreadyInCluster(_) | ApiError::NotManager | ApiError::NotLeader => {
                Code::FailedPrecondition
            }
            ApiError::NoQuorum { .. } => Code::Unavailable,
            ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::Rejected(_) => Code::FailedPrecondition,
            ApiError::Lookup(shoal_store::LookupError::NotFound { .. }) => Code::NotFound,
            ApiError::Lookup(_) => Code::InvalidArgument,
            ApiError::Apply { kind, .. } => match kind.as_str() {
                "not_found" => Code::NotFound,
                "exists" => Code::AlreadyExists,
                "conflict" => Code::Aborted,
                _ => Code::InvalidArgument,
            },
            ApiError::Unauthorized(_) => Code::PermissionDenied,
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
