//! Offline recovery after quorum loss: turn one surviving manager's data directory into a
//! single-member cluster that keeps its state (`--force-new-cluster`).
//!
//! The node's state as of the last entry it knows to be committed (its snapshot, then the
//! committed entries after it) becomes a new snapshot whose membership is only this node. The
//! log is emptied up to and including that point; entries after it are discarded, because they
//! were never known to be committed (the same choice etcd makes). The vote keeps its term but
//! becomes an uncommitted vote for this node, so when openraft starts on the directory the node
//! is a follower, the sole voter, and elects itself at the next term after one election timeout:
//! no `initialize()` is needed (and it would be refused, the node having state).
//!
//! The snapshot is written first, then the log is rewritten: if the process dies in between,
//! running it again completes the recovery (it is idempotent).
//!
//! Architecture Invariant: run only while Raft is not running on `dir`. The other former
//! members must not come back with their old data: without pre-vote in openraft 0.9, their
//! campaigns at higher terms would keep deposing the new leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::{BasicNode, LogId, Membership, StoredMembership, Vote};

use crate::error::StorageError;
use crate::snapshot::Meta;

/// Rewrites the Raft data in `dir` so that `self_id` (reachable at `self_node`) is the only
/// voter, keeping the state as of the last committed entry this node knows.
///
/// Returns the log id the recovered state is at. Fails if the node never had committed state.
pub async fn force_new_cluster(dir: &Path, self_id: u64, self_node: BasicNode) -> Result<LogId<u64>, StorageError> {
    let (log, mut sm, _handle) = crate::open(dir).await?;

    let from_snapshot = sm.last_applied();
    let committed = log.committed()?.max(from_snapshot);
    let Some(committed) = committed else {
        return Err(StorageError::NothingToRecover { path: dir.to_path_buf() });
    };

    let start = from_snapshot.map_or(0, |l| l.index + 1);
    if committed.index >= start {
        let entries = log.entries(start..=committed.index)?;
        let contiguous =
            entries.len() as u64 == committed.index + 1 - start && entries.last().map(|e| e.log_id) == Some(committed);
        if !contiguous {
            return Err(StorageError::Corrupt {
                what: format!("log entries {start}..={} needed for recovery are missing", committed.index),
                source: None,
            });
        }
        sm.apply(entries).await?;
    }

    let membership = Membership::new(vec![BTreeSet::from([self_id])], BTreeMap::from([(self_id, self_node)]));
    let meta = Meta {
        last_log_id: Some(committed),
        last_membership: StoredMembership::new(Some(committed), membership),
        snapshot_id: format!("forced-{}-{}", committed.leader_id.term, committed.index),
    };
    sm.persist_as(meta).await?;

    log.truncate_from(committed.index + 1).await?;
    log.purge_upto(&committed)?;
    log.write_committed(&Some(committed))?;
    let term = log.vote()?.map_or(committed.leader_id.term, |v| v.leader_id().get_term());
    // Flushes everything above.
    log.write_vote(&Vote::new(term, self_id)).await?;

    tracing::warn!(raft_id = self_id, index = committed.index, term, "forced a new single-member raft cluster");
    Ok(committed)
}
