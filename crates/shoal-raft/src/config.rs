//! shoal's Raft timing and compaction parameters and their mapping onto openraft's `Config`.
//!
//! Defaults follow the design's targets: heartbeat 100 ms and an election timeout of 0.5-0.75 s
//! (slower than openraft's LAN defaults: flapping elections on noisy machines cost more than a
//! slightly slower failover). Pure; no I/O.

use openraft::{Config, ConfigError, SnapshotPolicy};

/// Raft parameters as configured in the cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftParams {
    /// Leader heartbeat period. It is also openraft's deadline for an AppendEntries RPC
    /// (including the follower's fsync).
    pub heartbeat_ms: u64,
    /// Minimum election timeout; the maximum is 1.5 times this. (openraft makes a follower also wait
    /// out the leader lease, which equals the maximum, so failover takes lease + timeout.)
    pub election_timeout_ms: u64,
    /// A snapshot is taken after this many entries since the last one.
    pub snapshot_interval_entries: u64,
    /// Entries kept in the log behind the snapshot, so a briefly lagging follower catches up by
    /// log rather than by snapshot.
    pub log_entries_kept: u64,
    /// Size of the chunks a snapshot is sent in.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftParams {
    fn default() -> Self {
        RaftParams {
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_interval_entries: 10_000,
            log_entries_kept: 1_000,
            snapshot_chunk_bytes: 1 << 20,
        }
    }
}

/// Entries one replication request carries at most (openraft's default is 300). A new leader
/// finds where each follower's log matches by probing with requests that carry entries the
/// follower mostly has already: fewer per probe is less to send again, and one entry holds
/// many proposals, so 64 still carry a thousand commands.
const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// Deadline of each snapshot chunk RPC (a chunk is written to memory on the follower; the last
/// one also decodes and persists the whole snapshot).
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

/// Builds and validates the openraft configuration for `p`.
///
/// Fails when a value is zero or the election timeout is not above the heartbeat.
// openraft's own error type; built once per Raft start, its size does not matter.
#[allow(clippy::result_large_err)]
pub fn raft_config(p: &RaftParams) -> Result<Config, ConfigError> {
    let invalid = |what: &str, v: u64| ConfigError::InvalidNumber {
        invalid: format!("{what}={v}"),
        reason: "must be greater than 0".to_string(),
    };
    if p.heartbeat_ms == 0 {
        return Err(invalid("heartbeat_ms", p.heartbeat_ms));
    }
    if p.snapshot_interval_entries == 0 {
        return Err(invalid("snapshot_interval_entries", p.snapshot_interval_entries));
    }
    if p.snapshot_chunk_bytes == 0 {
        return Err(invalid("snapshot_chunk_bytes", p.snapshot_chunk_bytes));
    }
    let config = Config {
        cluster_name: "shoal".to_string(),
        heartbeat_interval: p.heartbeat_ms,
        election_timeout_min: p.election_timeout_ms,
        election_timeout_max: p.election_timeout_ms.saturating_add(p.election_timeout_ms / 2),
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(p.snapshot_interval_entries),
        max_in_snapshot_log_to_keep: p.log_entries_kept,
        snapshot_max_chunk_size: p.snapshot_chunk_bytes,
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        enable_tick: true,
        enable_heartbeat: true,
        enable_elect: true,
        ..Config::default()
    };
    config.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_map_onto_openraft() {
        let c = raft_config(&RaftParams::default()).expect("valid");
        assert_eq!(c.heartbeat_interval, 100);
        assert_eq!((c.election_timeout_min, c.election_timeout_max), (500, 750));
        assert_eq!(c.snapshot_policy, SnapshotPolicy::LogsSinceLast(10_000));
        assert_eq!(c.max_in_snapshot_log_to_keep, 1_000);
        assert_eq!(c.snapshot_max_chunk_size, 1 << 20);
        assert_eq!(c.max_payload_entries, 64);
        assert!(c.install_snapshot_timeout >= 10_000);
        assert!(c.enable_tick && c.enable_heartbeat && c.enable_elect);
    }

    #[test]
    fn election_timeout_must_exceed_heartbeat() {
        let p = RaftParams { heartbeat_ms: 500, election_timeout_ms: 500, ..RaftParams::default() };
        assert!(raft_config(&p).is_err());
    }

    #[test]
    fn zero_values_are_rejected() {
        for p in [
            RaftParams { heartbeat_ms: 0, ..RaftParams::default() },
            RaftParams { election_timeout_ms: 0, ..RaftParams::default() },
            RaftParams { snapshot_interval_entries: 0, ..RaftParams::default() },
            RaftParams { snapshot_chunk_bytes: 0, ..RaftParams::default() },
        ] {
            assert!(raft_config(&p).is_err(), "{p:?} must be rejected");
        }
    }
}
