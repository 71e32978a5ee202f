//! shoal's scheduler: finds a node for every task waiting for one.
//!
//! [`schedule`] looks at every task that is `PENDING`, desired `RUNNING` and has no node, and
//! returns a [`Plan`]: the task updates that assign nodes, and the tasks no node can take with
//! the reason (`no suitable node (insufficient memory on 3 nodes; 1 node not available)`).
//! [`unschedulable_updates`] turns those reasons into status-message updates, only for messages
//! that changed, so a scheduler loop that runs again and again does not churn the log.
//!
//! A node must pass every filter, in this order (a node is counted against the first that
//! rejects it): `READY` and `ACTIVE`; placement constraints; platform list; max replicas per node;
//! host-mode published ports; reserved memory, cpu and pids. Load counts every non-terminal task
//! on the node *and* every assignment made earlier in the same plan, so a plan never
//! over-commits a node. Among the nodes left, the strategy spreads (fewest tasks of the service, placement
//! preferences first).
//!
//! The node-only filters ([`placement`]) and the task-state helpers ([`task`]) are public: the
//! orchestrator uses them for global services, so both crates judge nodes the same way.
//!
//! Architecture Invariant: pure and deterministic. No I/O, no clock, no randomness, no async
//! runtime: the time comes in as `now_ms`, and the same store always gives the same plan. The
//! scheduler never creates, deletes or shuts down tasks (the orchestrator does) and never
//! proposes anything itself: the caller proposes the plan's ops through Raft.

mod filter;
mod nodes;
pub mod placement;
mod strategy;
pub mod task;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use shoal_api::v1::{object, op, Object, Op, Task, TaskState, TaskStatus};
use shoal_store::Store;

use crate::filter::{check, explain, Rejection, Request};
use crate::nodes::{host_ports, NodeInfo};
use crate::placement::Placement;

/// Message of the status of a task the scheduler assigned.
pub const SCHEDULED_MESSAGE: &str = "scheduled";

/// What one scheduling pass decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Task updates (with the version read): `node_id` set, status `ASSIGNED` at `now_ms` with
    /// message [`SCHEDULED_MESSAGE`].
    pub assignments: Vec<Op>,
    /// Tasks no node can take now, with the reason.
    pub unschedulable: Vec<Unschedulable>,
}

/// A task that stays pending, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    /// The task's id.
    pub task_id: String,
    /// Starts with `no suitable node (`, then the reasons with their node counts.
    pub reason: String,
}

/// Assigns nodes to the schedulable tasks of `store` (see [`task::is_schedulable`]).
///
/// Tasks are placed one at a time, ordered by service id, slot and task id, each seeing the
/// load of the ones placed before it. Tasks whose service no longer exists are skipped: the
/// orchestrator shuts them down.
pub fn schedule(store: &Store, now_ms: i64) -> Plan {
    let mut nodes: Vec<NodeInfo<'_>> = store.nodes().map(|n| NodeInfo::new(store, n)).collect();
    let mut pending: Vec<&Task> = store.tasks().filter(|t| task::is_schedulable(t)).collect();
    pending.sort_by(|a, b| (&a.service_id, a.slot, task_id(a)).cmp(&(&b.service_id, b.slot, task_id(b))));
    let mut plan = Plan::default();
    for t in pending {
        let Some(service) = store.service(&t.service_id) else {
            continue;
        };
        let placement = match Placement::of(t.spec.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                plan.unschedulable
                    .push(Unschedulable { task_id: task_id(t).to_owned(), reason: format!("no suitable node ({e})") });
                continue;
            }
        };
        let req = Request { task: t, placement, reserve: task::reservations(t), ports: host_ports(Some(service)) };
        let mut feasible = Vec::new();
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        for (i, info) in nodes.iter().enumerate() {
            match check(info, &req) {
                Ok(()) => feasible.push(i),
                Err(r) => *rejections.entry(r).or_default() += 1,
            }
        }
        match strategy::pick(&nodes, &feasible, &req) {
            Some(i) => {
                let info = &mut nodes[i];
                info.add(t, &req.ports);
                plan.assignments.push(assign(t, info.id, now_ms));
            }
            None => {
                plan.unschedulable.push(Unschedulable { task_id: task_id(t).to_owned(), reason: explain(&rejections) })
            }
        }
    }
    plan
}

/// Status-message updates for `unschedulable` tasks that are still waiting and whose message
/// differs from the reason; the status state and timestamp are kept (the timestamp says since
/// when the task has been pending). Running this after every pass writes nothing while the
/// reasons stay the same.
pub fn unschedulable_updates(store: &Store, unschedulable: &[Unschedulable]) -> Vec<Op> {
    unschedulable
        .iter()
        .filter_map(|u| {
            let t = store.task(&u.task_id)?;
            let current = t.status.as_ref().map_or("", |s| s.message.as_str());
            if !task::is_schedulable(t) || current == u.reason {
                return None;
            }
            let mut t = t.clone();
            t.status.get_or_insert_with(TaskStatus::default).message = u.reason.clone();
            Some(update(t))
        })
        .collect()
}

fn task_id(t: &Task) -> &str {
    t.meta.as_ref().map_or("", |m| m.id.as_str())
}

fn update(t: Task) -> Op {
    Op { kind: Some(op::Kind::Update(Object { kind: Some(object::Kind::Task(t)) })) }
}

/// The update assigning `t` to `node_id` (carrying the version read, like every update).
fn assign(t: &Task, node_id: &str, now_ms: i64) -> Op {
    let mut t = t.clone();
    t.node_id = node_id.to_owned();
    t.status = Some(TaskStatus {
        state: TaskState::Assigned as i32,
        timestamp_ms: now_ms,
        message: SCHEDULED_MESSAGE.to_owned(),
        ..TaskStatus::default()
    });
    update(t)
}
