//! Default cluster settings and the rule that fills unset (zero) settings with them.

use crate::v1::ClusterSettings;

/// Raft heartbeat between managers.
pub const RAFT_HEARTBEAT_MS: u64 = 100;
/// Raft election timeout (lower bound; the upper bound is 1.5 times it). Deliberately above
/// openraft's LAN defaults: flapping elections on a noisy host cost more than a slower failover.
pub const ELECTION_TIMEOUT_MS: u64 = 500;
/// Entries between Raft snapshots.
pub const SNAPSHOT_INTERVAL_ENTRIES: u64 = 10_000;
/// Entries kept behind a snapshot.
pub const LOG_ENTRIES_KEPT: u64 = 1_000;
/// Node heartbeat period.
pub const HEARTBEAT_PERIOD_MS: u64 = 1_000;
/// Missed heartbeats before a node is down.
pub const HEARTBEAT_GRACE_PERIODS: u32 = 3;
/// Terminated tasks kept per slot.
pub const TASK_HISTORY_LIMIT: u32 = 5;

/// Validity of node certificates (90 days).
pub const NODE_CERT_VALIDITY_S: u64 = 90 * 24 * 3600;

/// The default settings of a new cluster.
pub fn cluster_settings() -> ClusterSettings {
    ClusterSettings {
        raft_heartbeat_ms: RAFT_HEARTBEAT_MS,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        snapshot_interval_entries: SNAPSHOT_INTERVAL_ENTRIES,
        log_entries_kept: LOG_ENTRIES_KEPT,
        heartbeat_period_ms: HEARTBEAT_PERIOD_MS,
        heartbeat_grace_periods: HEARTBEAT_GRACE_PERIODS,
        task_history_limit: TASK_HISTORY_LIMIT,
        node_cert_validity_s: NODE_CERT_VALIDITY_S,
    }
}

/// `s` with every zero field replaced by its default (zero means "not set" on the wire).
pub fn fill_settings(mut s: ClusterSettings) -> ClusterSettings {
    let d = cluster_settings();
    macro_rules! fill {
        ($($f:ident),*) => { $( if s.$f == 0 { s.$f = d.$f; } )* };
    }
    fill!(
        raft_heartbeat_ms,
        election_timeout_ms,
        snapshot_interval_entries,
        log_entries_kept,
        heartbeat_period_ms,
        heartbeat_grace_periods,
        task_history_limit,
        node_cert_validity_s
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keeps_set_fields_and_fills_the_rest() {
        let s = fill_settings(ClusterSettings { election_timeout_ms: 900, ..Default::default() });
        assert_eq!(s.election_timeout_ms, 900);
        assert_eq!(s.raft_heartbeat_ms, RAFT_HEARTBEAT_MS);
        assert_eq!(s.task_history_limit, TASK_HISTORY_LIMIT);
    }
}
