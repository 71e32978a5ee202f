//! How a write ended when it did not succeed, as carried in gRPC metadata between managers and
//! to the CLI, so nobody has to read message text.

/// Metadata key: how a write that failed ended ([`WriteOutcome`]).
pub const WRITE_OUTCOME_KEY: &str = "shoal-write-outcome";

/// Metadata key: why a node's call was refused, for refusals a node acts on ("node-removed").
pub const REFUSAL_KEY: &str = "shoal-refusal";

/// The [`REFUSAL_KEY`] value of a call from a node the cluster removed.
pub const NODE_REMOVED: &str = "node-removed";

/// How a write that did not succeed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Nothing was appended (no quorum): it can never apply; retrying is safe.
    Refused,
    /// The leader took it but it was not seen committed: it may still apply.
    Unknown,
    /// Not appended: the manager asked is not the leader.
    NotLeader,
}

impl WriteOutcome {
    /// The metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Refused => "refused",
            WriteOutcome::Unknown => "unknown",
            WriteOutcome::NotLeader => "not-leader",
        }
    }

    /// Parses a metadata value.
    pub fn parse(s: &str) -> Option<WriteOutcome> {
        match s {
            "refused" => Some(WriteOutcome::Refused),
            "unknown" => Some(WriteOutcome::Unknown),
            "not-leader" => Some(WriteOutcome::NotLeader),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        for o in [WriteOutcome::Refused, WriteOutcome::Unknown, WriteOutcome::NotLeader] {
            assert_eq!(WriteOutcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(WriteOutcome::parse("maybe"), None);
    }
}
