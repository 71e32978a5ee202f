//! The store as one message ([`StoreSnapshot`]), and back.
//!
//! A snapshot lists objects sorted by id so that equal stores encode to equal bytes. Restoring
//! rebuilds every index through the same `put` that `apply` uses and refuses an image that `apply`
//! could never have produced (empty or duplicate ids, empty or duplicate names): a store with
//! such objects would break the uniqueness the rest of the cluster relies on.

use prost::Message;
use shoal_api::v1::StoreSnapshot;

use crate::record::{Record, Table};
use crate::Store;

/// Why a snapshot cannot become a store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The bytes are not a protobuf `StoreSnapshot`.
    #[error("cannot decode the store snapshot")]
    Decode(#[source] prost::DecodeError),
    /// An object has no id.
    #[error("snapshot holds a {kind} without an id")]
    EmptyId {
        /// The object's kind.
        kind: &'static str,
    },
    /// Two objects of one kind share an id.
    #[error("snapshot holds two {kind}s with id \"{id}\"")]
    DuplicateId {
        /// The objects' kind.
        kind: &'static str,
        /// The shared id.
        id: String,
    },
    /// An object of a named kind has no name.
    #[error("snapshot holds {kind} \"{id}\" without a name")]
    EmptyName {
        /// The object's kind.
        kind: &'static str,
        /// The object's id.
        id: String,
    },
    /// Two objects of a named kind share a name.
    #[error("snapshot holds two {kind}s named \"{name}\" (\"{first}\" and \"{second}\")")]
    DuplicateName {
        /// The objects' kind.
        kind: &'static str,
        /// The shared name.
        name: String,
        /// Id of the first object with the name.
        first: String,
        /// Id of the second object with the name.
        second: String,
    },
}

impl Store {
    /// The whole store as one message, objects sorted by id.
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            cluster: self.clusters.items.values().next().cloned(),
            nodes: self.nodes.items.values().cloned().collect(),
            services: self.services.items.values().cloned().collect(),
            tasks: self.tasks.items.values().cloned().collect(),
            networks: self.networks.items.values().cloned().collect(),
            secrets: self.secrets.items.values().cloned().collect(),
            configs: self.configs.items.values().cloned().collect(),
            version: self.version,
        }
    }

    /// The protobuf encoding of [`Store::snapshot`].
    pub fn encode_snapshot(&self) -> Vec<u8> {
        self.snapshot().encode_to_vec()
    }

    /// Rebuilds a store (and its indexes) from a snapshot, checking that ids and names are
    /// present and unique.
    pub fn restore(snap: StoreSnapshot) -> Result<Store, StoreError> {
        let mut store = Store { version: snap.version, ..Store::default() };
        if let Some(cluster) = snap.cluster {
            load(&mut store.clusters, cluster)?;
        }
        load_all(&mut store.nodes, snap.nodes)?;
        load_all(&mut store.services, snap.services)?;
        load_all(&mut store.tasks, snap.tasks)?;
        load_all(&mut store.networks, snap.networks)?;
        load_all(&mut store.secrets, snap.secrets)?;
        load_all(&mut store.configs, snap.configs)?;
        Ok(store)
    }

    /// Decodes bytes from [`Store::encode_snapshot`] and restores them.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Store, StoreError> {
        let snap = StoreSnapshot::decode(bytes).map_err(StoreError::Decode)?;
        Store::restore(snap)
    }
}

fn load_all<T: Record>(table: &mut Table<T>, recs: Vec<T>) -> Result<(), StoreError> {
    recs.into_iter().try_for_each(|rec| load(table, rec))
}

fn load<T: Record>(table: &mut Table<T>, rec: T) -> Result<(), StoreError> {
    let kind = T::TAG.name();
    let id = rec.id();
    if id.is_empty() {
        return Err(StoreError::EmptyId { kind });
    }
    if table.get(id).is_some() {
        return Err(StoreError::DuplicateId { kind, id: id.to_owned() });
    }
    if T::NAMED {
        let name = rec.name();
        if name.is_empty() {
            return Err(StoreError::EmptyName { kind, id: id.to_owned() });
        }
        if let Some(first) = table.id_by_name(name) {
            return Err(StoreError::DuplicateName {
                kind,
                name: name.to_owned(),
                first: first.to_owned(),
                second: id.to_owned(),
            });
        }
    }
    table.put(rec);
    Ok(())
}
