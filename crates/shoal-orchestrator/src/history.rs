//! Task history: the terminated tasks kept per slot (per node for global services) so users can
//! see what happened (`shoal service ps`), and the deletion of older ones.
//!
//! A task is history when it has terminated and is no longer wanted (desired state after
//! `RUNNING`); an ended task that is still wanted is the slot's current task and is never
//! pruned. The newest `task_history_limit` history tasks are kept (by status timestamp), and so
//! are, beyond that limit, the newest `max_attempts + 1` tasks that still count as restart
//! attempts when the policy has `max_attempts`. The restart decision is "more than
//! `max_attempts` attempts in the window", and it must read the same before and after pruning:
//! with fewer kept, a slot whose current task is not itself an attempt (its container was
//! stopped from outside, say) would see its count drop below the limit once the older attempts
//! were pruned, and restart again, without bound. Keeping the newest ones is enough because the
//! oldest attempts are the first to leave the window. Pruning decides over the working copy and
//! only deletes.

use std::cmp::Reverse;

use shoal_api::v1::RestartPolicy;
use shoal_scheduler::task;

use crate::clock::Clock;
use crate::restart::is_attempt;
use crate::work::{Id, Tasks};

/// Deletes the history of the group `ids` (one slot, or one node of a global service) beyond
/// `limit`, keeping restart attempts that `policy` still counts.
pub(crate) fn prune<'s>(
    tasks: &mut Tasks<'s>,
    ids: &[Id<'s>],
    limit: usize,
    policy: Option<&RestartPolicy>,
    clock: &Clock,
) {
    let is_history = |t: &&shoal_api::v1::Task| task::is_terminal(t) && !task::is_wanted(t);
    // Within the limit nothing goes, whatever counts as an attempt (the common case: no copy).
    if ids.iter().filter(|&&i| tasks.get(i).is_some_and(|t| is_history(&t))).count() <= limit {
        return;
    }
    let mut history: Vec<_> = ids
        .iter()
        .filter_map(|&i| Some((i, tasks.get(i)?)))
        .filter(|(_, t)| is_history(t))
        .map(|(i, t)| {
            let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
            (
                Reverse((task::status_timestamp(t), created, i)),
                policy.is_some_and(|p| p.max_attempts > 0 && is_attempt(p, t, clock)),
            )
        })
        .collect();
    history.sort();
    // One more than the limit: enough to tell "over the limit" whatever else the slot holds.
    let budget = policy.map_or(0, |p| if p.max_attempts > 0 { p.max_attempts.saturating_add(1) } else { 0 });
    let mut attempts_kept = 0u64;
    let mut doomed = Vec::new();
    for (i, (Reverse((_, _, tid)), attempt)) in history.into_iter().enumerate() {
        let keep = i < limit || (attempt && attempts_kept < budget);
        if keep && attempt {
            attempts_kept += 1;
        }
        if !keep {
            doomed.push(tid);
        }
    }
    for tid in doomed {
        tasks.delete(tid);
    }
}
