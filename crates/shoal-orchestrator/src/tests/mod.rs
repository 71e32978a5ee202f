//! The orchestrator's tests: data-driven cases (`store -> expected ops`) per behaviour, each also
//! checking that the ops apply cleanly and that a second pass at the same time is quiet; and
//! property tests over random clusters (idempotence once applied; convergence with the
//! scheduler).

mod global;
mod history;
mod jobs;
mod nodes;
mod props;
mod removed;
mod replicated;
mod restart;
mod update;

use shoal_api::v1::Service;
use shoal_scheduler::testing::{describe, World};

use crate::reconcile;

/// Ids `new1`, `new2`, ... for the tasks a pass creates.
fn new_ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("new{n}")
    }
}

/// Ids for the tasks a pass over `w` creates, unique across passes (`new_ids` restarts at 1).
fn new_ids_for(w: &World) -> impl FnMut() -> String {
    let prefix = format!("v{}-", w.store.version());
    let mut ids = new_ids();
    move || format!("{prefix}{}", ids())
}

/// The ops of one pass at `now`, one line each (see [`describe`]).
fn pass(w: &World, now: i64) -> Vec<String> {
    describe(&reconcile(&w.store, now, &mut new_ids()))
}

/// Asserts the ops of a pass at `now`, applies them, and asserts that the next pass at the same
/// time has nothing to do.
fn expect(w: &mut World, now: i64, want: &[&str]) {
    let ops = reconcile(&w.store, now, &mut new_ids_for(w));
    assert_eq!(describe(&ops), want);
    w.now_ms = now;
    w.apply(ops);
    assert_eq!(pass(w, now), Vec::<String>::new(), "second pass is not quiet");
}

/// The id of the one task created waiting (desired `READY`) for another to stop.
fn waiting_task(w: &World) -> String {
    let waiting: Vec<String> = w
        .store
        .tasks()
        .filter(|t| t.desired_state == shoal_api::v1::TaskState::Ready as i32)
        .filter_map(|t| t.meta.as_ref().map(|m| m.id.clone()))
        .collect();
    assert_eq!(waiting.len(), 1, "one waiting task: {waiting:?}");
    waiting[0].clone()
}

/// The stored service `id` (with its version).
fn stored(w: &World, id: &str) -> Service {
    w.store.service(id).cloned().expect("service exists")
}

/// One step of a cluster run forward in time at `now`: an orchestrator pass, the scheduler, then
/// agents reporting what `agent` says each task became (nothing: unchanged).
fn sim_step(w: &mut World, now: i64, mut agent: impl FnMut(&shoal_api::v1::Task) -> Option<shoal_api::v1::TaskState>) {
    use shoal_api::v1::{op, Op, TaskStatus, TaskStatusUpdate};
    w.now_ms = now;
    let ops = reconcile(&w.store, now, &mut new_ids_for(w));
    w.apply(ops);
    let plan = shoal_scheduler::schedule(&w.store, now);
    if !plan.assignments.is_empty() {
        w.apply(plan.assignments);
    }
    let reports: Vec<Op> = w
        .store
        .tasks()
        .filter_map(|t| {
            let state = agent(t)?;
            Some(Op {
                kind: Some(op::Kind::SetTaskStatus(TaskStatusUpdate {
                    task_id: t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                    status: Some(TaskStatus {
                        state: state as i32,
                        timestamp_ms: now,
                        message: "agent".into(),
                        ..Default::default()
                    }),
                })),
            })
        })
        .collect();
    if !reports.is_empty() {
        w.apply(reports);
    }
}
