//! The node's own persistent identity and membership, kept in `<data-dir>/node.json`.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) so a crash leaves the
//! old or the new state, never a torn one. Cluster state itself lives in Raft, not here.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the node currently is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not part of a cluster yet (or left one).
    Uninitialized,
    /// Runs Raft and the control API.
    Manager,
    /// Heartbeats to the managers.
    Worker,
}

impl Role {
    /// The word `shoal info` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Uninitialized => "uninitialized",
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

/// A manager this node knows how to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Cluster node id.
    pub node_id: String,
    /// Raft id.
    pub raft_id: u64,
    /// host:port.
    pub addr: String,
}

/// Everything the node persists about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// Cluster-wide node id, chosen once at first start.
    pub node_id: String,
    /// Raft id, chosen once at first start.
    pub raft_id: u64,
    /// Current role.
    pub role: Role,
    /// Cluster id; empty while uninitialized.
    pub cluster_id: String,
    /// Managers last heard of.
    pub managers: Vec<Peer>,
    /// Cluster settings last heard of: Raft starts with them before it has any state.
    #[serde(default)]
    pub settings: Option<shoal_api::v1::ClusterSettings>,
}

/// Reading or writing `node.json` failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalStateError {
    /// The file system refused.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// read / write.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not ours or is damaged.
    #[error("{path} is damaged ({source}); move it away to start this node afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// File name within the data dir.
pub const FILE: &str = "node.json";

impl LocalState {
    /// Loads the state, or `None` if the node never started in this data dir.
    pub fn load(dir: &Path) -> Result<Option<Self>, LocalStateError> {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|source| LocalStateError::Corrupt { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LocalStateError::Io { what: "read", path, source }),
        }
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, dir: &Path) -> Result<(), LocalStateError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |source| LocalStateError::Io { what: "write", path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(LocalState::load(dir.path()).expect("load"), None);
        let s = LocalState {
            node_id: "n1".into(),
            raft_id: 7,
            role: Role::Manager,
            cluster_id: "c".into(),
            managers: vec![Peer { node_id: "n1".into(), raft_id: 7, addr: "127.0.0.1:1".into() }],
            settings: Some(shoal_api::defaults::cluster_settings()),
        };
        s.save(dir.path()).expect("save");
        assert_eq!(LocalState::load(dir.path()).expect("load"), Some(s));
    }

    #[test]
    fn damaged_file_is_reported_with_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let e = LocalState::load(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("move it away"), "{e}");
    }
}
