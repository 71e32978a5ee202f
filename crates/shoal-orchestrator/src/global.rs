//! Global services: one runnable task on every eligible node.
//!
//! A node is eligible for a *new* task when it is `READY` and `ACTIVE` and satisfies the
//! service's placement (constraints and platforms, judged by the scheduler's own
//! [`Placement`]). A node *keeps* its task while it exists, is not `DOWN` or drained, and still
//! satisfies the placement: a paused node or one whose heartbeat is late (`UNKNOWN`,
//! `DISCONNECTED`) keeps its task but gets no new one. Tasks on nodes that are no longer kept
//! are shut down (orphaned when the node is lost).
//!
//! Global tasks have slot 0 and are keyed by node: per node the same rules as a replicated slot
//! apply (one runnable task, restart policy for an ended one, history, rolling updates node by
//! node; a paused node keeps its task as it is). They are created
//! `ASSIGNED` to their node; they do not go through the scheduler's resource and port filters.

use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{Op, Service};
use shoal_scheduler::placement::{node_accepts_new_tasks, Placement};
use shoal_scheduler::task;

use crate::restart;
use crate::update::{self, Round, Want};
use crate::work::Id;
use crate::{history, nodes, Ctx};

/// Reconciles global service `service`.
pub(crate) fn reconcile<'s>(ctx: &mut Ctx<'s>, service: &Service, out: &mut Vec<Op>) {
    let store = ctx.store;
    let clock = ctx.clock;
    let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
    // An unparsable placement (written around validation) admits no node.
    let placement = Placement::of(template).ok();
    let admits = |n| placement.as_ref().is_some_and(|p| p.admits(n));
    let (mut tasks, policy, _) = ctx.begin(service);
    // Only slot 0 with a node is a global task; anything else (left by a mode change) is shut
    // down, and kept as history of its own.
    let stray: Vec<Id<'s>> =
        tasks.entries().filter(|(_, t)| t.slot != 0 || t.node_id.is_empty()).map(|(i, _)| i).collect();
    tasks.shut_down_all(&stray, None);
    tasks.settle_unassigned();

    let mut by_node: BTreeMap<String, Vec<Id<'s>>> = BTreeMap::new();
    for (i, t) in tasks.entries().filter(|(_, t)| t.slot == 0 && !t.node_id.is_empty()) {
        by_node.entry(t.node_id.clone()).or_default().push(i);
    }
    let node_ids: BTreeSet<String> =
        store.nodes().filter_map(|n| n.meta.as_ref().map(|m| m.id.clone())).chain(by_node.keys().cloned()).collect();

    let want = Want::of(store, service);
    let mut round: Round<'s, String> = Round::new(service);
    for node_id in &node_ids {
        let node = store.node(node_id);
        let keeps = node.is_some_and(|n| !nodes::is_down(n) && !nodes::is_drained(n) && admits(n));
        let takes_new = node.is_some_and(|n| node_accepts_new_tasks(n) && admits(n));
        let ids = by_node.get(node_id).cloned().unwrap_or_default();
        let wanted: Vec<Id<'s>> = ids.iter().copied().filter(|i| tasks.get(i).is_some_and(task::is_wanted)).collect();
        if !keeps {
            tasks.shut_down_all(&wanted, None);
            continue;
        }
        let (runnable, ended): (Vec<Id<'s>>, Vec<Id<'s>>) =
            wanted.iter().copied().partition(|i| tasks.get(i).is_some_and(task::is_runnable));
        let stopping = ids.iter().any(|i| tasks.get(i).is_some_and(|t| update::stopping(store, t)));
        if !runnable.is_empty() {
            tasks.shut_down_all(&ended, None);
            // A node that takes no new task (paused) keeps its task as it is.
            match update::settle(&mut tasks, &want, &runnable, stopping) {
                Some(update::Group::Outdated { .. }) if !takes_new => round.keep(),
                Some(g) => round.group(node_id.clone(), g, clock),
                None => {}
            }
            continue;
        }
        if takes_new {
            round.idle();
        }
        match tasks.latest(&ended) {
            Some(last) => {
                tasks.shut_down_all(&ended, Some(last));
                if !takes_new {
                    continue;
                }
                if restart::replace_now(&mut tasks, &policy, last, &ids, clock) {
                    let t = update::waiting_for_stop(ctx.new_task(service, 0, node_id), stopping);
                    tasks.create(t);
                }
            }
            None if takes_new => {
                let t = update::waiting_for_stop(ctx.new_task(service, 0, node_id), stopping);
                tasks.create(t);
            }
            None => {}
        }
    }

    round.finish(service, &want, &mut tasks, clock, out, |node| ctx.new_task(service, 0, node));
    for ids in by_node.values() {
        history::prune(&mut tasks, ids, ctx.history_limit, Some(&policy), clock);
    }
    // Stray tasks are history of no node: keep them within the limit as one group.
    history::prune(&mut tasks, &stray, ctx.history_limit, None, clock);
    tasks.into_ops(out);
}
