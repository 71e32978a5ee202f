//! The node runtime of shoald: control API, membership (join, heartbeats, promotion and
//! demotion), the write path with forwarding to the leader, and the leader-only loops.
//!
//! Decisions about cluster objects belong to the pure crates (validation in shoal-api,
//! conflicts in shoal-store); this crate moves requests and results and must not grow its own
//! copy of that logic.

mod agenda;
mod agent_link;
mod proposer;
/// Client-side connections (moved to shoal-client; re-exported for the daemon's own callers).
pub use shoal_client as client;
pub mod control;
pub mod dialer;
pub mod dispatcher;
pub mod error;
pub mod exec_relay;
pub mod identity;
pub mod leader;
pub mod liveness;
pub mod local;
pub mod manager_set;
pub mod managers;
pub mod membership;
pub mod netview;
pub mod node;
pub mod pki;
pub mod policy;
pub mod roles;
pub mod server;
mod session;
pub mod takeover;
pub mod tls;
pub mod util;
pub mod volumes;
pub mod workers;
pub mod writer;

pub use error::ApiError;
pub use server::{Daemon, DaemonConfig};
pub use session::next_beat;

/// TTL of the tasks' resolvers' answers unless set (`shoald --dns-ttl`).
pub const DEFAULT_DNS_TTL: u32 = shoal_net::dns::TTL;
