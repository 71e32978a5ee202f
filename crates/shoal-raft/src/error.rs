//! The error type of this crate's storage concerns (opening, snapshots, offline recovery), and
//! the conversions into openraft's storage errors.
//!
//! Network errors are openraft's `RPCError`s and configuration errors openraft's `ConfigError`;
//! they are not wrapped here.

use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

/// Why Raft storage could not be opened, read, written or recovered.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The sled database holding the log and the vote could not be opened.
    #[error("cannot open raft log at {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A read or write of the log database failed.
    #[error("raft log i/o failed while {action}")]
    Log {
        action: &'static str,
        #[source]
        source: sled::Error,
    },
    /// A file operation (snapshot, data directory) failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored record could not be decoded.
    #[error("raft data is corrupt: {what}")]
    Corrupt {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The snapshot's store image was rejected by shoal-store.
    #[error("cannot decode the store in snapshot {path}")]
    DecodeStore {
        path: PathBuf,
        #[source]
        source: shoal_store::StoreError,
    },
    /// A blocking storage task (snapshot file i/o) panicked or was cancelled.
    #[error("snapshot file task failed")]
    Task(#[source] tokio::task::JoinError),
    /// There is no committed state to recover a cluster from.
    #[error("nothing to recover in {path}: this node has no committed raft state")]
    NothingToRecover { path: PathBuf },
    /// An operation through openraft's storage traits failed.
    #[error("raft storage operation failed")]
    Raft(#[source] Box<openraft::StorageError<u64>>),
}

impl StorageError {
    pub(crate) fn corrupt(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StorageError::Corrupt { what: what.into(), source: Some(Box::new(source)) }
    }

    pub(crate) fn log(action: &'static str) -> impl FnOnce(sled::Error) -> Self {
        move |source| StorageError::Log { action, source }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StorageError::Io { action, path, source }
    }
}

impl From<openraft::StorageError<u64>> for StorageError {
    fn from(e: openraft::StorageError<u64>) -> Self {
        StorageError::Raft(Box::new(e))
    }
}

/// Converts one of our errors into openraft's, attributed to `subject`/`verb`.
pub(crate) fn to_raft(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> impl FnOnce(StorageError) -> openraft::StorageError<u64> {
    move |e| match e {
        StorageError::Raft(inner) => *inner,
        other => StorageIOError::new(subject, verb, AnyError::new(&other)).into(),
    }
}
