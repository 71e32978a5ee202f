//! What a task's stored state means to the scheduler and the orchestrator: observed and desired
//! state by number, terminal, runnable, schedulable, and the resources it reserves.
//!
//! These are read-only views over a [`Task`]; nothing here changes a task or decides what should
//! happen to it. States are compared by number because they only move forward (SwarmKit's
//! model), which also keeps values from a newer peer's enum ordered sensibly.

use shoal_api::v1::{Resources, Task, TaskState};

/// The task's observed state as a number (`NEW` when it has no status yet).
pub fn observed(task: &Task) -> i32 {
    task.status.as_ref().map_or(TaskState::New as i32, |status| status.state)
}

/// Whether the task has reached a terminal state (`COMPLETE` or anything after it: `SHUTDOWN`,
/// `FAILED`, `REJECTED`, `REMOVE`, `ORPHANED`): it will never run again.
pub fn is_terminal(task: &Task) -> bool {
    observed(task) >= TaskState::Complete as i32
}

/// Whether the task is still wanted: its desired state is at most `RUNNING`.
pub fn is_wanted(task: &Task) -> bool {
    task.desired_state <= TaskState::Running as i32
}

/// Whether the task is wanted and has not terminated: it holds (or will hold) its slot.
pub fn is_runnable(task: &Task) -> bool {
    is_wanted(task) && !is_terminal(task)
}

/// Whether the scheduler should find a node for the task: observed `PENDING`, wanted (desired
/// `RUNNING`, or `READY`: a stop-first update's new task, placed and prepared while the task
/// it replaces stops), and no node yet.
pub fn is_schedulable(task: &Task) -> bool {
    observed(task) == TaskState::Pending as i32
        && is_wanted(task)
        && task.node_id.is_empty()
        && task.networks_attached()
}

/// When the task's status last changed (0 without a status).
pub fn status_timestamp(task: &Task) -> i64 {
    task.status.as_ref().map_or(0, |status| status.timestamp_ms)
}

/// The resources the task reserves on its node; negative values count as zero.
pub fn reservations(task: &Task) -> Resources {
    let r = task.spec.as_ref().and_then(|spec| spec.resources.as_ref()).and_then(|req| req.reservations.as_ref());
    r.map_or_else(Resources::default, |r| Resources {
        nano_cpus: r.nano_cpus.max(0),
        memory_bytes: r.memory_bytes.max(0),
        pids: r.pids.max(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::TaskStatus;

    fn task(state: TaskState, desired: TaskState, node: &str) -> Task {
        Task {
            node_id: node.to_owned(),
            desired_state: desired as i32,
            status: Some(TaskStatus { state: state as i32, ..TaskStatus::default() }),
            ..Task::default()
        }
    }

    #[test]
    fn terminal_states_are_complete_and_after() {
        let terminal: Vec<_> = (0..=13)
            .filter_map(|n| TaskState::try_from(n).ok())
            .filter(|s| is_terminal(&task(*s, TaskState::Running, "")))
            .collect();
        assert_eq!(
            terminal,
            [
                TaskState::Complete,
                TaskState::Shutdown,
                TaskState::Failed,
                TaskState::Rejected,
                TaskState::Remove,
                TaskState::Orphaned
            ]
        );
    }

    #[test]
    fn runnable_needs_wanted_and_not_terminal() {
        assert!(is_runnable(&task(TaskState::Running, TaskState::Running, "n")));
        assert!(!is_runnable(&task(TaskState::Running, TaskState::Shutdown, "n")));
        assert!(!is_runnable(&task(TaskState::Failed, TaskState::Running, "n")));
    }

    #[test]
    fn schedulable_is_pending_wanted_and_unassigned() {
        assert!(is_schedulable(&task(TaskState::Pending, TaskState::Running, "")));
        assert!(!is_schedulable(&task(TaskState::Pending, TaskState::Running, "n")));
        assert!(!is_schedulable(&task(TaskState::Pending, TaskState::Shutdown, "")));
        assert!(is_schedulable(&task(TaskState::Pending, TaskState::Ready, "")));
        assert!(!is_schedulable(&task(TaskState::New, TaskState::Running, "")));
        assert!(!is_schedulable(&task(TaskState::Assigned, TaskState::Running, "")));
    }
}
