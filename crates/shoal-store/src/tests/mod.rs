//! The crate's tests: data-driven cases per op and error kind, index maintenance, lookups,
//! snapshots, and property tests over random command logs.

mod fixtures;
mod indexes;
mod lookup;
mod ops;
mod props;
mod snapshot;
