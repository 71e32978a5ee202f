//! The record of a run: operations with their outcome and times, and samples of the hosts.

/// What a client was told of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: it took effect.
    Ok,
    /// Refused: it must never take effect.
    Failed,
    /// No answer, or the daemon said it may or may not have taken effect.
    Unknown,
}

/// A write to one object: it sets the object's value, or removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Creates the object, or sets its value (a service's replicas or spec version, a node's
    /// label, a secret's existence: every kind is reduced to one comparable value).
    Set(String),
    /// Removes the object.
    Remove,
}

/// One operation the workload sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The object, as `kind/name` (`service/web`, `secret/s3`, `node/host4`).
    pub object: String,
    pub write: Write,
    /// When it was sent and when the answer came (ms on the workload's clock).
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
}

/// A sample of one object's stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSample {
    pub object: String,
    pub at_ms: u64,
    pub version: u64,
}

/// A container seen running on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub service: String,
    pub slot: u64,
    pub host: String,
}

/// What the hosts ran at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSample {
    pub at_ms: u64,
    pub running: Vec<Running>,
}

/// A host cut off from the managers from `from_ms` until `to_ms` (healed then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutOff {
    pub host: String,
    pub from_ms: u64,
    pub to_ms: u64,
}
