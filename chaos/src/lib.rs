//! Fault testing: what a workload did while faults were injected, and the judgement.
//!
//! A workload records every operation it sends with its outcome and times ([`history`]); the
//! runner samples the store's objects and the hosts' containers; [`check`] judges the record
//! against what the cluster holds at the end. Pure: the runner (`chaos/run.sh`) does the I/O.

pub mod check;
pub mod history;
