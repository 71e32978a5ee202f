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

use shoal_api::v1::{object, op, Object, Op, Task, TaskAssignment, TaskState, TaskStatus};
use shoal_store::Store;

use crate::filter::{check, explain, Rejection, Request};
use crate::nodes::{host_ports, NodeInfo};
use crate::placement::Placement;

/// Message of the status of a task the scheduler assigned.
pub const SCHEDULED_MESSAGE: &str = "scheduled";

/// What one scheduling pass decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// `AssignTask` ops (with the version read): the node, and status `ASSIGNED` at `now_ms`
    /// with message [`SCHEDULED_MESSAGE`].
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

/// Whether a batch of applied changes (`events`, as the store returned them) may give
/// placement work: anything but the progress of tasks already on a node. A task waiting for a
/// node, one that ended or was deleted (its resources and ports are free again), and any change
/// of another object (a node, a service, a network, the cluster) may make a pending task
/// placeable, or need an address.
pub fn may_place(events: &[shoal_api::v1::Event]) -> bool {
    events.iter().any(|e| match e.object.as_ref().and_then(|o| o.kind.as_ref()) {
        Some(object::Kind::Task(t)) => {
            e.action() == shoal_api::v1::EventAction::Delete || t.node_id.is_empty() || task::is_terminal(t)
        }
        _ => true,
    })
}

/// Assigns nodes to the schedulable tasks of `store` (see [`task::is_schedulable`]).
///
/// Tasks are placed one at a time, ordered by service id, slot and task id, each seeing the
/// load of the ones placed before it. Tasks whose service no longer exists are skipped: the
/// orchestrator shuts them down.
///
/// Cost: consecutive tasks with the same spec form a group. A group judges every node once
/// with the filters that do not depend on load, then takes nodes from an ordered set of the
/// candidates (spread order), re-checking only the node it takes against the load filters;
/// a node that no longer fits leaves the set for the rest of the group (load only grows while
/// a group is placed). Without placement preferences a task costs O(log nodes); with them, one
/// pass over the group's candidates. The choice is the same as judging every node for every
/// task.
pub fn schedule(store: &Store, now_ms: i64) -> Plan {
    let mut nodes: Vec<NodeInfo<'_>> = store.nodes().map(|n| NodeInfo::new(store, n)).collect();
    let mut pending: Vec<&Task> = store.unassigned_tasks().filter(|t| task::is_schedulable(t)).collect();
    pending.sort_by(|a, b| (&a.service_id, a.slot, task_id(a)).cmp(&(&b.service_id, b.slot, task_id(b))));
    let mut plan = Plan::default();
    let mut rest = pending.as_slice();
    while let Some(first) = rest.first() {
        let same = rest.iter().take_while(|t| t.service_id == first.service_id && t.spec == first.spec).count();
        let (group, tail) = rest.split_at(same);
        rest = tail;
        let Some(service) = store.service(&first.service_id) else {
            continue;
        };
        let placement = match Placement::of(first.spec.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                plan.unschedulable.extend(group.iter().map(|t| Unschedulable {
                    task_id: task_id(t).to_owned(),
                    reason: format!("no suitable node ({e})"),
                }));
                continue;
            }
        };
        let req =
            Request { task: first, placement, reserve: task::reservations(first), ports: host_ports(Some(service)) };
        place_group(&mut nodes, group, &req, now_ms, &mut plan);
    }
    plan
}

/// Places the tasks of `group` (one service, one spec, described by `req`).
fn place_group(nodes: &mut [NodeInfo<'_>], group: &[&Task], req: &Request<'_>, now_ms: i64, plan: &mut Plan) {
    let mut spread = strategy::Spread::new(nodes, req);
    for i in 0..nodes.len() {
        if check(&nodes[i], req).is_ok() {
            spread.insert(nodes, i);
        }
    }
    for (n, t) in group.iter().enumerate() {
        let picked = loop {
            let Some(i) = spread.best() else { break None };
            // Only the load filters can have changed since the node was judged.
            if check(&nodes[i], req).is_ok() {
                break Some(i);
            }
            spread.remove(nodes, i);
        };
        match picked {
            Some(i) => {
                spread.remove(nodes, i);
                nodes[i].add(t, &req.ports);
                spread.placed(i);
                spread.insert(nodes, i);
                plan.assignments.push(assign(t, nodes[i].id, now_ms));
            }
            None => {
                // No node takes this task, so none takes the rest of the group either.
                let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
                for info in nodes.iter() {
                    if let Err(r) = check(info, req) {
                        *rejections.entry(r).or_default() += 1;
                    }
                }
                let reason = explain(&rejections);
                plan.unschedulable.extend(
                    group[n..].iter().map(|t| Unschedulable { task_id: task_id(t).to_owned(), reason: reason.clone() }),
                );
                return;
            }
        }
    }
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

/// The op assigning `t` to `node_id` (carrying the version read, like every update).
fn assign(t: &Task, node_id: &str, now_ms: i64) -> Op {
    Op {
        kind: Some(op::Kind::AssignTask(TaskAssignment {
            task_id: task_id(t).to_owned(),
            version: t.meta.as_ref().map_or(0, |m| m.version),
            node_id: node_id.to_owned(),
            status: Some(TaskStatus {
                state: TaskState::Assigned as i32,
                timestamp_ms: now_ms,
                message: SCHEDULED_MESSAGE.to_owned(),
                ..TaskStatus::default()
            }),
        })),
    }
}
