//! Jobs: services whose tasks run to completion.
//!
//! A replicated job runs `total_completions` tasks, numbered 1..=total like replicated slots, at
//! most `max_concurrent` at once (0: as many as the total). A slot is done once it holds a task
//! that completed; a task that failed is replaced under the restart policy (a completed one never
//! is), and its replacement counts against the concurrency. A global job runs once on every
//! eligible node, the nodes that join later included.
//!
//! Only tasks up to date with the service count (module `update`): changing the spec (`service
//! update`, `--force` included) runs the job again, and the tasks of the earlier run that still
//! run are stopped. Jobs take no rolling update.

use std::collections::BTreeMap;

use shoal_api::v1::{Op, ReplicatedJob, Service, TaskState};
use shoal_scheduler::placement::{node_accepts_new_tasks, Placement};
use shoal_scheduler::task;

use crate::update::Want;
use crate::work::{Id, Tasks};
use crate::{history, nodes, restart, Ctx};

/// A task that completed as part of the job: still wanted (history pruning keeps it, as it
/// keeps every wanted task), not one the cluster stopped.
fn completed(t: &shoal_api::v1::Task) -> bool {
    task::observed(t) == TaskState::Complete as i32 && task::is_wanted(t)
}

/// Where one part of a job (a slot, or a node of a global job) stands.
enum Part<'s> {
    /// It completed.
    Done,
    /// A task of it runs (the others were shut down).
    Running,
    /// Its last task ended while wanted: the restart policy decides.
    Ended(Id<'s>),
    /// Nothing of the current spec yet.
    Empty,
}

/// Settles the tasks `ids` of one part: keeps one runnable task of the current spec.
fn settle<'s>(tasks: &mut Tasks<'s>, want: &Want<'_>, ids: &[Id<'s>]) -> Part<'s> {
    let mine: Vec<Id<'s>> = ids.iter().copied().filter(|i| tasks.get(i).is_some_and(|t| want.up_to_date(t))).collect();
    if mine.iter().any(|i| tasks.get(i).is_some_and(completed)) {
        return Part::Done;
    }
    let runnable: Vec<Id<'s>> = mine.iter().copied().filter(|i| tasks.get(i).is_some_and(task::is_runnable)).collect();
    if let Some(keep) = tasks.best(&runnable) {
        tasks.shut_down_all(&runnable, Some(keep));
        return Part::Running;
    }
    let ended: Vec<Id<'s>> = mine.iter().copied().filter(|i| tasks.get(i).is_some_and(task::is_wanted)).collect();
    tasks.latest(&ended).map_or(Part::Empty, Part::Ended)
}

/// Reconciles replicated job `service`.
pub(crate) fn replicated<'s>(ctx: &mut Ctx<'s>, service: &Service, job: &ReplicatedJob, out: &mut Vec<Op>) {
    let store = ctx.store;
    let clock = ctx.clock;
    let (mut tasks, policy, _) = ctx.begin(service);
    for tid in tasks.ids() {
        let Some(t) = tasks.get(tid) else { continue };
        if task::is_runnable(t) && store.node(&t.node_id).is_some_and(nodes::is_drained) {
            tasks.shut_down(tid);
        }
    }
    tasks.settle_unassigned();
    let want = Want::of(store, service);
    let total = job.total_completions.max(1);
    let max = if job.max_concurrent == 0 { total } else { job.max_concurrent };

    // An earlier run's tasks (another spec) that still run are stopped.
    let old: Vec<Id<'s>> =
        tasks.entries().filter(|(_, t)| task::is_runnable(t) && !want.up_to_date(t)).map(|(i, _)| i).collect();
    tasks.shut_down_all(&old, None);

    let mut slots: BTreeMap<u64, Vec<Id<'s>>> = BTreeMap::new();
    for (i, t) in tasks.entries() {
        slots.entry(t.slot).or_default().push(i);
    }
    let mut running = 0u64;
    let mut waiting: Vec<u64> = Vec::new();
    let mut retry: Vec<(u64, Id<'s>, Vec<Id<'s>>)> = Vec::new();
    for n in 1..=total {
        let ids = slots.get(&n).cloned().unwrap_or_default();
        match settle(&mut tasks, &want, &ids) {
            Part::Done => {}
            Part::Running => running += 1,
            Part::Ended(last) => retry.push((n, last, ids)),
            Part::Empty => waiting.push(n),
        }
    }
    // Slots beyond the total (it was lowered) stop.
    for (n, ids) in slots.range(total + 1..) {
        let _ = n;
        tasks.shut_down_all(ids, None);
    }
    for (n, last, ids) in retry {
        if running < max && restart::replace_now(&mut tasks, &policy, last, &ids, clock) {
            tasks.create(ctx.new_task(service, n, ""));
            running += 1;
        }
    }
    for n in waiting {
        if running >= max {
            break;
        }
        tasks.create(ctx.new_task(service, n, ""));
        running += 1;
    }
    for ids in slots.values() {
        history::prune(&mut tasks, ids, ctx.history_limit, Some(&policy), clock);
    }
    tasks.into_ops(out);
}

/// Reconciles global job `service`: one completed task on every eligible node.
pub(crate) fn global<'s>(ctx: &mut Ctx<'s>, service: &Service, out: &mut Vec<Op>) {
    let store = ctx.store;
    let clock = ctx.clock;
    let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
    let placement = Placement::of(template).ok();
    let (mut tasks, policy, _) = ctx.begin(service);
    tasks.settle_unassigned();
    let want = Want::of(store, service);
    let old: Vec<Id<'s>> =
        tasks.entries().filter(|(_, t)| task::is_runnable(t) && !want.up_to_date(t)).map(|(i, _)| i).collect();
    tasks.shut_down_all(&old, None);
    let mut by_node: BTreeMap<String, Vec<Id<'s>>> = BTreeMap::new();
    for (i, t) in tasks.entries().filter(|(_, t)| !t.node_id.is_empty()) {
        by_node.entry(t.node_id.clone()).or_default().push(i);
    }
    for n in store.nodes() {
        let Some(node_id) = n.meta.as_ref().map(|m| m.id.clone()) else { continue };
        let ids = by_node.get(&node_id).cloned().unwrap_or_default();
        let part = settle(&mut tasks, &want, &ids);
        if matches!(part, Part::Done | Part::Running)
            || !(node_accepts_new_tasks(n) && placement.as_ref().is_some_and(|p| p.admits(n)))
        {
            continue;
        }
        match part {
            Part::Ended(last) => {
                if restart::replace_now(&mut tasks, &policy, last, &ids, clock) {
                    tasks.create(ctx.new_task(service, 0, &node_id));
                }
            }
            _ => tasks.create(ctx.new_task(service, 0, &node_id)),
        }
    }
    for ids in by_node.values() {
        history::prune(&mut tasks, ids, ctx.history_limit, Some(&policy), clock);
    }
    tasks.into_ops(out);
}
