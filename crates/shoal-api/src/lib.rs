//! shoal's wire API and replicated objects.
//!
//! The messages are generated from `proto/` (the single source of truth) into [`v1`]. Around them
//! this crate holds the pure helpers every other crate shares: id and join-token formats,
//! defaults, human names for enums, and spec validation. It does no I/O; the gRPC stubs are
//! behind the `grpc` feature so pure crates do not pull tonic.

pub mod defaults;
pub mod ids;
pub mod names;
pub mod objects;
pub mod outcome;
pub mod timefmt;
pub mod token;
pub mod units;
pub mod validate;

/// Generated protobuf messages (and, with the `grpc` feature, tonic clients and servers).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/shoal.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/shoal.v1.serde.rs"));
}
