//! shoal's replicated state machine.
//!
//! [`Store`] holds the cluster's objects (cluster, nodes, services, tasks, networks, secrets,
//! configs) in memory with their indexes: tasks by service, by node and by (service, slot), and
//! unique names for services, networks, secrets and configs. [`Store::apply`] applies one
//! committed Raft entry (a [`Command`](shoal_api::v1::Command)) atomically with optimistic versions (an object's version
//! is the Raft index of its last change) and returns the events it caused; snapshots encode the
//! whole store and restore it with its indexes rebuilt; lookups resolve what users type.
//!
//! Architecture Invariant: this crate is pure and deterministic. It does no I/O, reads no clock,
//! draws no random numbers and depends on no async runtime: times and versions come in with the
//! command, and the same log gives the same store on every manager. A failing command changes
//! nothing but the applied version. It decides nothing about what objects should exist (that is
//! the orchestrator's job) and does not validate specs beyond ids and names (that is shoal-api's).

mod apply;
mod lookup;
mod record;
mod snapshot;

#[cfg(test)]
mod tests;

pub use lookup::LookupError;
pub use record::TaskCounts;
pub use snapshot::StoreError;

use record::Table;
use shoal_api::v1::{Cluster, Config, Network, Node, Secret, Service, Task};

/// The replicated state: every object by id, with indexes, and the Raft index last applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Store {
    version: u64,
    /// At most one object.
    clusters: Table<Cluster>,
    nodes: Table<Node>,
    services: Table<Service>,
    tasks: Table<Task>,
    networks: Table<Network>,
    secrets: Table<Secret>,
    configs: Table<Config>,
}

impl Store {
    /// An empty store at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The Raft log index of the last applied command (0 for a new store).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The cluster object, once `cluster init` has created it.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.clusters.items.values().next()
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// All nodes, sorted by id.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.items.values()
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.nodes.items.len()
    }

    /// The service with this id.
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id)
    }

    /// The service with this name.
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.by_name(name)
    }

    /// All services, sorted by id.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.items.values()
    }

    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// All tasks, sorted by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.items.values()
    }

    /// The tasks of a service (whatever their state), sorted by id.
    pub fn tasks_by_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_in(self.tasks.extra.by_service.get(service_id))
    }

    /// The tasks assigned to a node, sorted by id.
    pub fn tasks_by_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_in(self.tasks.extra.by_node.get(node_id))
    }

    /// How many tasks of `service_id` are desired `RUNNING`, and how many of those run.
    pub fn task_counts(&self, service_id: &str) -> TaskCounts {
        self.tasks.extra.counts.get(service_id).copied().unwrap_or_default()
    }

    /// The tasks that have no node yet (waiting for the scheduler, or never placed), sorted by
    /// id: what a scheduling pass looks at, found without walking every task.
    pub fn unassigned_tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks_by_node("")
    }

    /// The tasks of one slot of a service (the current one and its history), sorted by id.
    pub fn tasks_by_slot<'a>(&'a self, service_id: &str, slot: u64) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_in(self.tasks.extra.by_slot.get(&(service_id.to_owned(), slot)))
    }

    fn tasks_in<'a>(
        &'a self,
        ids: Option<&'a std::collections::BTreeSet<String>>,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        ids.into_iter().flatten().filter_map(|id| self.tasks.get(id))
    }

    /// The network with this id.
    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id)
    }

    /// The network with this name.
    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.networks.by_name(name)
    }

    /// All networks, sorted by id.
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.items.values()
    }

    /// The cluster's ingress network, if it has one (there is at most one).
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks().find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
    }

    /// The secret with this id.
    pub fn secret(&self, id: &str) -> Option<&Secret> {
        self.secrets.get(id)
    }

    /// The secret with this name.
    pub fn secret_by_name(&self, name: &str) -> Option<&Secret> {
        self.secrets.by_name(name)
    }

    /// All secrets, sorted by id.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.items.values()
    }

    /// The config with this id.
    pub fn config(&self, id: &str) -> Option<&Config> {
        self.configs.get(id)
    }

    /// The config with this name.
    pub fn config_by_name(&self, name: &str) -> Option<&Config> {
        self.configs.by_name(name)
    }

    /// All configs, sorted by id.
    pub fn configs(&self) -> impl Iterator<Item = &Config> {
        self.configs.items.values()
    }

    /// Resolves a user's reference to a service: exact id, exact name, then unique id prefix.
    pub fn lookup_service(&self, query: &str) -> Result<&Service, LookupError> {
        lookup::resolve(&self.services, query)
    }

    /// Resolves a user's reference to a node: exact id, exact hostname (when only one node has
    /// it), then unique id prefix. `self` is not handled here.
    pub fn lookup_node(&self, query: &str) -> Result<&Node, LookupError> {
        lookup::resolve(&self.nodes, query)
    }

    /// Resolves a user's reference to a task: exact id, then unique id prefix.
    pub fn lookup_task(&self, query: &str) -> Result<&Task, LookupError> {
        lookup::resolve(&self.tasks, query)
    }

    /// Resolves a user's reference to a network: exact id, exact name, then unique id prefix.
    pub fn lookup_network(&self, query: &str) -> Result<&Network, LookupError> {
        lookup::resolve(&self.networks, query)
    }

    /// Resolves a user's reference to a secret: exact id, exact name, then unique id prefix.
    pub fn lookup_secret(&self, query: &str) -> Result<&Secret, LookupError> {
        lookup::resolve(&self.secrets, query)
    }

    /// Resolves a user's reference to a config: exact id, exact name, then unique id prefix.
    pub fn lookup_config(&self, query: &str) -> Result<&Config, LookupError> {
        lookup::resolve(&self.configs, query)
    }
}
