//! The scheduler's picture of each node while it builds a plan: capacity, what its non-terminal
//! tasks already reserve, how many tasks it runs (in total and per service), and which host-mode
//! ports they publish. Assignments made earlier in the same plan are added with
//! [`NodeInfo::add`], so later tasks of the plan see them.
//!
//! Built once per `schedule` call from the store; never written back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use shoal_api::names;
use shoal_api::v1::port_config::{Protocol, PublishMode};
use shoal_api::v1::{Node, Resources, Service, Task};
use shoal_store::Store;

use crate::task;

/// A host-mode published port: only one task per node can hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HostPort {
    pub(crate) port: u32,
    pub(crate) protocol: Protocol,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, names::protocol(self.protocol))
    }
}

/// The host-mode ports a service publishes (ingress ports are not bound on the node).
pub(crate) fn host_ports(service: Option<&Service>) -> Vec<HostPort> {
    let ports = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.endpoint_spec.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    let mut out: Vec<HostPort> = ports
        .iter()
        .filter(|p| p.publish_mode() == PublishMode::Host && p.published_port != 0)
        .map(|p| HostPort { port: p.published_port, protocol: p.protocol() })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Adds `b` to `a` field by field, saturating.
pub(crate) fn add_resources(a: &mut Resources, b: &Resources) {
    a.nano_cpus = a.nano_cpus.saturating_add(b.nano_cpus);
    a.memory_bytes = a.memory_bytes.saturating_add(b.memory_bytes);
    a.pids = a.pids.saturating_add(b.pids);
}

/// One node and the load on it.
#[derive(Debug)]
pub(crate) struct NodeInfo<'a> {
    pub(crate) node: &'a Node,
    pub(crate) id: &'a str,
    /// What the node reports it has.
    pub(crate) total: Resources,
    /// Reserved by its non-terminal tasks.
    pub(crate) used: Resources,
    /// Non-terminal tasks on the node.
    pub(crate) tasks: u64,
    /// Non-terminal tasks on the node per service id.
    pub(crate) by_service: BTreeMap<String, u64>,
    /// Host-mode ports held by its non-terminal tasks.
    pub(crate) ports: BTreeSet<HostPort>,
}

impl<'a> NodeInfo<'a> {
    /// The node and the load of its non-terminal tasks in `store`.
    pub(crate) fn new(store: &'a Store, node: &'a Node) -> Self {
        let id = node.meta.as_ref().map_or("", |m| m.id.as_str());
        let total = node.description.as_ref().and_then(|d| d.resources).unwrap_or_default();
        let mut info = NodeInfo {
            node,
            id,
            total,
            used: Resources::default(),
            tasks: 0,
            by_service: BTreeMap::new(),
            ports: BTreeSet::new(),
        };
        for t in store.tasks_by_node(id).filter(|t| !task::is_terminal(t)) {
            let ports = host_ports(store.service(&t.service_id));
            info.add(t, &ports);
        }
        info
    }

    /// Counts `t` (holding `ports`) as running here.
    pub(crate) fn add(&mut self, t: &Task, ports: &[HostPort]) {
        add_resources(&mut self.used, &task::reservations(t));
        self.tasks += 1;
        *self.by_service.entry(t.service_id.clone()).or_default() += 1;
        self.ports.extend(ports.iter().copied());
    }

    /// Non-terminal tasks of `service_id` here.
    pub(crate) fn service_tasks(&self, service_id: &str) -> u64 {
        self.by_service.get(service_id).copied().unwrap_or(0)
    }
}
