//! Replicated services: exactly `replicas` slots, each holding one runnable task.
//!
//! A slot is *live* while it has a wanted task: a runnable one, one that ended and waits for
//! (or was refused) a restart, or one just taken away from a lost or drained node. Then:
//! - too many live slots (scale-down): slots are removed in this order: those whose task was
//!   just taken away, those with an ended task, those whose task has no node yet; then slots
//!   with a task on a node, one at a time from the node that currently holds the most tasks of
//!   the service, preferring tasks not yet `RUNNING`, then higher slot numbers. The remaining
//!   tasks stay evenly spread and nothing already running moves. Slot numbers can then have
//!   gaps (Swarm numbers loosely too);
//! - too few (scale-up, new service): tasks are created in the lowest free slot numbers, free
//!   meaning not live and with no task still stopping (a slot just scaled away whose container
//!   is still on its way out would otherwise run twice for a moment);
//! - each live slot keeps one runnable task (extras are shut down), replaces a task taken away
//!   at once, and applies the restart policy to a task that ended;
//! - a slot never runs two tasks: a new task of a slot whose other task is still stopping (told
//!   to, not yet stopped, on a node not down: a drain, a lost waiting task, a restart) is created
//!   waiting (desired `READY`), placed and prepared, and starts once that one has stopped.
//!
//! A slot whose task is not up to date with the service is replaced only by a rolling update
//! (module `update`), a batch at a time; a slot holding both an up-to-date task and an old one
//! (start-first) keeps the old one until the new one runs. It never assigns nodes (the
//! scheduler does).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{Op, Service};
use shoal_scheduler::placement::Placement;
use shoal_scheduler::task;

use crate::restart;
use crate::update::{self, Round, Want};
use crate::work::{Id, Tasks};
use crate::{history, nodes, Ctx};

/// The tasks of one slot number, by what they are doing.
#[derive(Debug, Default)]
struct Slot<'s> {
    /// Every task of the slot (history included).
    ids: Vec<Id<'s>>,
    /// Wanted and not terminal.
    runnable: Vec<Id<'s>>,
    /// Wanted but terminal: ended, restart pending or refused.
    ended: Vec<Id<'s>>,
    /// Its runnable task was taken away in this pass (lost or drained node).
    evicted: bool,
}

impl Slot<'_> {
    fn is_live(&self) -> bool {
        !self.runnable.is_empty() || !self.ended.is_empty() || self.evicted
    }
}

/// Reconciles replicated service `service` towards `replicas` tasks.
pub(crate) fn reconcile<'s>(ctx: &mut Ctx<'s>, service: &Service, replicas: u64, out: &mut Vec<Op>) {
    let store = ctx.store;
    let clock = ctx.clock;
    // Take tasks away from lost and drained nodes, and from nodes their placement no longer
    // admits (a label changed). Slot 0 belongs to global services: never valid here.
    let (mut tasks, policy, mut evicted) = ctx.begin(service);
    // Tasks made from the service's template share its placement: parsed once.
    let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
    let placement = Placement::of(template);
    for tid in tasks.ids() {
        let Some(t) = tasks.get(tid) else { continue };
        if t.slot == 0 {
            if task::is_wanted(t) {
                tasks.shut_down(tid);
            }
            continue;
        }
        let Some(node) = store.node(&t.node_id) else {
            continue;
        };
        if !task::is_runnable(t) {
            continue;
        }
        let same = t.spec.as_ref().map(|s| &s.placement) == template.map(|s| &s.placement);
        let misplaced = if same {
            placement.as_ref().is_ok_and(|p| !p.admits(node))
        } else {
            Placement::of(t.spec.as_ref()).is_ok_and(|p| !p.admits(node))
        };
        if nodes::is_drained(node) || misplaced {
            tasks.shut_down(tid);
            evicted.insert(tid);
        }
    }
    tasks.settle_unassigned();

    let mut slots: BTreeMap<u64, Slot<'s>> = BTreeMap::new();
    for (tid, t) in tasks.entries() {
        let slot = slots.entry(t.slot).or_default();
        if t.slot != 0 {
            if task::is_runnable(t) {
                slot.runnable.push(tid);
            } else if task::is_wanted(t) {
                slot.ended.push(tid);
            }
            slot.evicted |= evicted.contains(tid);
        }
        slot.ids.push(tid);
    }
    let mut live: BTreeSet<u64> = slots.iter().filter(|(_, s)| s.is_live()).map(|(n, _)| *n).collect();
    let target = usize::try_from(replicas).unwrap_or(usize::MAX);

    if live.len() > target {
        let excess = live.len() - target;
        scale_down(&mut tasks, &slots, &mut live, excess);
    }
    let stopping_in = |tasks: &Tasks<'_>, n: u64| {
        slots.get(&n).is_some_and(|s| s.ids.iter().any(|i| tasks.get(i).is_some_and(|t| update::stopping(store, t))))
    };
    let mut next = 1u64;
    while live.len() < target {
        if !live.contains(&next) && !stopping_in(&tasks, next) {
            let t = ctx.new_task(service, next, "");
            tasks.create(t);
            live.insert(next);
        }
        next += 1;
    }

    let want = Want::of(store, service);
    let mut round = Round::new(service);
    for n in &live {
        let Some(slot) = slots.get(n) else {
            round.idle();
            continue; // created in this pass
        };
        let stopping = stopping_in(&tasks, *n);
        if !slot.runnable.is_empty() {
            if let Some(g) = update::settle(&mut tasks, &want, &slot.runnable, stopping) {
                round.group(*n, g, clock);
            }
            tasks.shut_down_all(&slot.ended, None);
        } else if slot.evicted {
            round.idle();
            tasks.shut_down_all(&slot.ended, None);
            let t = update::waiting_for_stop(ctx.new_task(service, *n, ""), stopping);
            tasks.create(t);
        } else if let Some(last) = tasks.latest(&slot.ended) {
            round.idle();
            tasks.shut_down_all(&slot.ended, Some(last));
            if restart::replace_now(&mut tasks, &policy, last, &slot.ids, clock) {
                let t = update::waiting_for_stop(ctx.new_task(service, *n, ""), stopping);
                tasks.create(t);
            }
        }
    }
    round.finish(service, &want, &mut tasks, clock, out, |n| ctx.new_task(service, *n, ""));

    for slot in slots.values() {
        history::prune(&mut tasks, &slot.ids, ctx.history_limit, Some(&policy), clock);
    }
    tasks.into_ops(out);
}

/// Removes `excess` live slots (see the module doc for the order) by shutting their tasks down.
fn scale_down<'s>(tasks: &mut Tasks<'s>, slots: &BTreeMap<u64, Slot<'s>>, live: &mut BTreeSet<u64>, mut excess: usize) {
    struct Candidate {
        slot: u64,
        /// 0: task just taken away, 1: ended, 2: no node yet, 3: on a node.
        rank: u8,
        node: String,
        running: bool,
    }
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    for n in live.iter() {
        let Some(slot) = slots.get(n) else { continue };
        let keep = tasks.best(&slot.runnable);
        let keep = keep.and_then(|i| tasks.get(i));
        let (rank, node, running) = match keep {
            None if slot.evicted => (0, String::new(), false),
            None => (1, String::new(), false),
            Some(t) if t.node_id.is_empty() => (2, String::new(), false),
            Some(t) => (3, t.node_id.clone(), task::observed(t) >= shoal_api::v1::TaskState::Running as i32),
        };
        if rank == 3 {
            *load.entry(node.clone()).or_default() += 1;
        }
        candidates.push(Candidate { slot: *n, rank, node, running });
    }
    while excess > 0 {
        let pick = candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| {
                let crowd = if c.rank == 3 { load.get(&c.node).copied().unwrap_or(0) } else { 0 };
                (c.rank, Reverse(crowd), c.running, Reverse(c.slot))
            })
            .map(|(i, _)| i);
        let Some(i) = pick else { break };
        let c = candidates.swap_remove(i);
        if c.rank == 3 {
            if let Some(count) = load.get_mut(&c.node) {
                *count = count.saturating_sub(1);
            }
        }
        if let Some(slot) = slots.get(&c.slot) {
            tasks.shut_down_all(&slot.ids, None);
        }
        live.remove(&c.slot);
        excess -= 1;
    }
}
