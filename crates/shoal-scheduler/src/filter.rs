//! The filter pipeline: why a node cannot take a task, and the explanation users read when no
//! node can ("no suitable node (insufficient memory on 3 nodes; 1 node not available)").
//!
//! Filters run in a fixed order and a node is counted against the first one that rejects it, as
//! in Swarm. The pipeline only judges; choosing among the nodes that pass is the strategy's job.

use std::collections::BTreeMap;

use shoal_api::v1::{Resources, Task};

use crate::nodes::{HostPort, NodeInfo};
use crate::placement::{constraint_text, node_ready_and_active, node_runs_tasks, Placement};

/// A resource a node can run short of, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Resource {
    Memory,
    Cpu,
    Pids,
}

/// Why one node cannot take a task. Ordered by pipeline position, so explanations with equal
/// counts list in that order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rejection {
    /// Not `READY`, or availability not `ACTIVE`.
    NotAvailable,
    /// The node has no working container runtime.
    NoRuntime,
    /// The constraint with this index (and text) is not satisfied.
    Constraint(usize, String),
    /// The node's platform is not in the spec's list.
    Platform,
    /// The node already runs `max_replicas_per_node` tasks of the service.
    MaxReplicas,
    /// The node already has a task holding this host-mode port.
    HostPort(HostPort),
    /// Not enough of this resource is left unreserved.
    Insufficient(Resource),
}

fn nodes(n: usize) -> String {
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
}

impl Rejection {
    /// The explanation for `n` nodes rejecting a task for this reason.
    fn explain(&self, n: usize) -> String {
        match self {
            Rejection::NotAvailable => format!("{} not available", nodes(n)),
            Rejection::NoRuntime => format!("no container runtime on {}", nodes(n)),
            Rejection::Constraint(_, text) => {
                format!("constraint {text} not satisfied on {}", nodes(n))
            }
            Rejection::Platform => format!("unsupported platform on {}", nodes(n)),
            Rejection::MaxReplicas => {
                format!("max replicas per node limit exceeded on {}", nodes(n))
            }
            Rejection::HostPort(p) => format!("host-mode port {p} already in use on {}", nodes(n)),
            Rejection::Insufficient(r) => {
                let what = match r {
                    Resource::Memory => "memory",
                    Resource::Cpu => "cpu",
                    Resource::Pids => "pids",
                };
                format!("insufficient {what} on {}", nodes(n))
            }
        }
    }
}

/// What the filters need to know about the task being placed.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    pub(crate) task: &'a Task,
    pub(crate) placement: Placement,
    pub(crate) reserve: Resources,
    pub(crate) ports: Vec<HostPort>,
}

/// The first filter that rejects `info` for `req`, or `Ok` when the node can take the task.
pub(crate) fn check(info: &NodeInfo<'_>, req: &Request<'_>) -> Result<(), Rejection> {
    if !node_ready_and_active(info.node) {
        return Err(Rejection::NotAvailable);
    }
    if !node_runs_tasks(info.node) {
        return Err(Rejection::NoRuntime);
    }
    if let Some((i, c)) = req.placement.unmet_constraint(info.node) {
        return Err(Rejection::Constraint(i, constraint_text(c)));
    }
    if !req.placement.supports_platform(info.node) {
        return Err(Rejection::Platform);
    }
    let max = req.placement.max_replicas_per_node;
    if max > 0 && info.service_tasks(&req.task.service_id) >= max {
        return Err(Rejection::MaxReplicas);
    }
    if let Some(p) = req.ports.iter().find(|p| info.ports.contains(p)) {
        return Err(Rejection::HostPort(*p));
    }
    let short = |want: i64, total: i64, used: i64| want > 0 && total.saturating_sub(used) < want;
    let (r, t, u) = (&req.reserve, &info.total, &info.used);
    if short(r.memory_bytes, t.memory_bytes, u.memory_bytes) {
        return Err(Rejection::Insufficient(Resource::Memory));
    }
    if short(r.nano_cpus, t.nano_cpus, u.nano_cpus) {
        return Err(Rejection::Insufficient(Resource::Cpu));
    }
    if short(r.pids, t.pids, u.pids) {
        return Err(Rejection::Insufficient(Resource::Pids));
    }
    Ok(())
}

/// The message for a task no node can take: reasons with their node counts, most frequent first
/// (ties in pipeline order).
pub(crate) fn explain(rejections: &BTreeMap<Rejection, usize>) -> String {
    if rejections.is_empty() {
        return "no suitable node (no nodes in the cluster)".to_owned();
    }
    let mut entries: Vec<_> = rejections.iter().collect();
    // Stable: equal counts keep the map's pipeline order.
    entries.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    let parts: Vec<String> = entries.iter().map(|(r, n)| r.explain(**n)).collect();
    format!("no suitable node ({})", parts.join("; "))
}
