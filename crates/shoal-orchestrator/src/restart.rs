//! The restart policy: whether, and from when, a slot whose task ended while it was still
//! wanted gets a replacement.
//!
//! Level-triggered: the ended task keeps desired `RUNNING` until the replacement is created
//! (then both changes go in one command), so "ended but still wanted" is itself the record of a
//! pending restart, and a pass that comes before the delay has elapsed changes nothing.
//!
//! Restart attempts are counted from the stored tasks of the slot: a task counts when it ended
//! on its own (`COMPLETE`, `FAILED`, `REJECTED`) within the window. Tasks the orchestrator took
//! away (`SHUTDOWN` after a drain or scale-down, `ORPHANED` after node loss) do not count. This
//! module decides; the only edit it makes is retiring the ended task when its replacement is due.

use shoal_api::v1::{restart_policy::Condition, RestartPolicy, Task, TaskState};
use shoal_scheduler::task;

use crate::clock::Clock;
use crate::work::{Id, Tasks};

/// Delay before a restart when the policy sets none.
pub const DEFAULT_RESTART_DELAY_MS: i64 = 5_000;

/// What to do with a slot whose task ended while wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// Create the replacement now.
    Now,
    /// Not before the delay has elapsed; a later pass will.
    Later,
    /// The policy says the slot stays ended.
    Never,
}

/// The effective policy: the service's, or the default (`any`, 5 s, unlimited, unbounded).
pub(crate) fn policy(p: Option<&RestartPolicy>) -> RestartPolicy {
    p.copied().unwrap_or_default()
}

/// Whether `t` counts as a restart attempt now: it ended on its own within the window.
pub(crate) fn is_attempt(p: &RestartPolicy, t: &Task, clock: &Clock) -> bool {
    let state = task::observed(t);
    let ended_on_its_own =
        state == TaskState::Complete as i32 || state == TaskState::Failed as i32 || state == TaskState::Rejected as i32;
    // Out of the window once more than `window_ms` have passed since it ended.
    ended_on_its_own
        && (p.window_ms <= 0 || !clock.reached(task::status_timestamp(t).saturating_add(p.window_ms).saturating_add(1)))
}

/// Decides for `ended` (the latest task of its slot, terminal while still wanted); `slot` holds
/// every stored task of the slot, `ended` included.
pub(crate) fn decide<'a>(
    p: &RestartPolicy,
    ended: &Task,
    slot: impl Iterator<Item = &'a Task>,
    clock: &Clock,
) -> Restart {
    match p.condition() {
        Condition::None => return Restart::Never,
        Condition::OnFailure if task::observed(ended) == TaskState::Complete as i32 => return Restart::Never,
        Condition::Any | Condition::OnFailure => {}
    }
    if p.max_attempts > 0 {
        let attempts = slot.filter(|t| is_attempt(p, t, clock)).count() as u64;
        if attempts > p.max_attempts {
            return Restart::Never;
        }
    }
    let delay = p.delay_ms.unwrap_or(DEFAULT_RESTART_DELAY_MS).max(0);
    if clock.reached(task::status_timestamp(ended).saturating_add(delay)) {
        Restart::Now
    } else {
        Restart::Later
    }
}

/// Applies the policy to `last`, the ended task of the group `ids` (a slot, or a node of a
/// global service). When a replacement is due now, retires `last` (desired `SHUTDOWN`) and
/// returns true: the caller creates the replacement in the same pass.
pub(crate) fn replace_now<'s>(
    tasks: &mut Tasks<'s>,
    p: &RestartPolicy,
    last: &str,
    ids: &[Id<'s>],
    clock: &Clock,
) -> bool {
    let decision = match tasks.get(last) {
        Some(ended) => decide(p, ended, ids.iter().filter_map(|&i| tasks.get(i)), clock),
        None => Restart::Never,
    };
    if decision == Restart::Now {
        tasks.shut_down(last);
    }
    decision == Restart::Now
}
