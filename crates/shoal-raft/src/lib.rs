//! shoal's Raft: the openraft type configuration, the sled-backed log and vote, the state
//! machine adapter over `shoal-store` with persisted snapshots, the gRPC transport between
//! managers, and offline `force_new_cluster` recovery.
//!
//! A manager's Raft data directory holds `log/` (sled: entries, vote, committed and purged log
//! ids) and `snapshot.bin` (the latest snapshot, replaced atomically). Typical wiring:
//!
//! ```ignore
//! let (log, sm, store) = shoal_raft::open(&dir).await?;
//! let config = shoal_raft::raft_config(&shoal_raft::RaftParams::default())?;
//! let network = shoal_raft::Network::new(shoal_raft::plain_channels());
//! let health = network.health();
//! let raft = openraft::Raft::new(id, Arc::new(config), network, log, sm).await?;
//! slot.send_replace(Some(raft.clone())); // the slot a `RaftService` serves
//! ```
//!
//! Architecture Invariant: this crate never decides what a command does (shoal-store does) nor
//! who is a member (shoal-manager does); it makes the decided log durable and moves it.

mod codec;
mod config;
mod error;
mod log_store;
mod network;
mod recovery;
mod service;
mod snapshot;
mod state_machine;
mod types;

use std::path::Path;

pub use config::{raft_config, RaftParams};
pub use error::StorageError;
pub use log_store::LogStore;
pub use network::{plain_channels, raft_endpoint, ChannelFactory, Network, PeerClient, PeerHealth, MAX_MESSAGE_BYTES};
pub use recovery::force_new_cluster;
pub use service::{LeaderContact, RaftService};
pub use state_machine::{Change, SnapshotBuilder, StateMachineStore, StoreHandle};
pub use types::{RaftNode, Request, Response, TypeConfig};

/// Sub-directory of the data directory that sled owns.
const LOG_DIR: &str = "log";

/// Opens (creating if needed) the Raft data in `dir`: the log store, the state machine loaded
/// from the latest snapshot, and a read handle on that state machine's store.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachineStore, StoreHandle), StorageError> {
    std::fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
    let log = LogStore::open(&dir.join(LOG_DIR)).await?;
    let (sm, handle) = StateMachineStore::open(dir).await?;
    Ok((log, sm, handle))
}
