//! Jobs run forward in time: each step an orchestrator pass, the scheduler, and agents that start
//! what they are given and finish it 300 ms later (failing it, for the `flaky` image, the first
//! time on each slot).

use std::collections::BTreeSet;

use shoal_api::v1::{
    restart_policy::Condition, service_spec::Mode, GlobalJob, ReplicatedJob, RestartPolicy, Service, TaskState,
};
use shoal_scheduler::task as task_state;
use shoal_scheduler::testing::*;

fn job(id: &str, mode: Mode, image: &str) -> Service {
    let mut s = replicated(id, 1);
    if let Some(spec) = s.spec.as_mut() {
        spec.mode = Some(mode);
        if let Some(t) = spec.task_template.as_mut() {
            if let Some(c) = t.container.as_mut() {
                c.image = image.into();
            }
            t.restart_policy =
                Some(RestartPolicy { condition: Condition::OnFailure as i32, delay_ms: Some(0), ..Default::default() });
        }
    }
    s
}

fn step(w: &mut World, now: i64, failed_once: &mut BTreeSet<u64>) {
    super::sim_step(w, now, |t| {
        let observed = task_state::observed(t);
        let since = task_state::status_timestamp(t);
        let flaky = t.spec.as_ref().and_then(|s| s.container.as_ref()).is_some_and(|c| c.image == "flaky");
        if t.desired_state > TaskState::Running as i32 && observed < TaskState::Complete as i32 {
            Some(TaskState::Shutdown)
        } else if !t.node_id.is_empty() && observed < TaskState::Running as i32 && since < now {
            Some(TaskState::Running)
        } else if observed == TaskState::Running as i32 && now - since >= 300 {
            if flaky && failed_once.insert(t.slot) {
                Some(TaskState::Failed)
            } else {
                Some(TaskState::Complete)
            }
        } else {
            None
        }
    });
}

fn count(w: &World, state: TaskState) -> usize {
    w.store.tasks_by_service("j").filter(|t| task_state::observed(t) == state as i32).count()
}

/// Runs until every slot completed (or `limit`); the most tasks running at once.
fn run(w: &mut World, total: usize, limit: i64) -> (i64, usize) {
    let mut failed_once = BTreeSet::new();
    let mut most = 0;
    let mut now = 1_000;
    while now <= limit {
        step(w, now, &mut failed_once);
        most = most.max(count(w, TaskState::Running));
        if count(w, TaskState::Complete) >= total {
            return (now, most);
        }
        now += 100;
    }
    (now, most)
}

#[test]
fn a_replicated_job_runs_its_completions_at_most_max_concurrent_at_once() {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2")]);
    w.add(job("j", Mode::ReplicatedJob(ReplicatedJob { max_concurrent: 3, total_completions: 10 }), "ok"));
    let (at, most) = run(&mut w, 10, 60_000);
    assert_eq!(count(&w, TaskState::Complete), 10, "done at {at}");
    assert_eq!(most, 3, "never more than 3 at once, and 3 when there is work");
    let slots: BTreeSet<u64> = w.store.tasks_by_service("j").map(|t| t.slot).collect();
    assert_eq!(slots, (1..=10).collect(), "one per completion");
    assert_eq!(super::pass(&w, at + 10_000), Vec::<String>::new(), "a finished job stays finished");
}

#[test]
fn a_failed_job_task_is_run_again_and_a_completed_one_never() {
    let mut w = World::new();
    w.add_all([node("n1")]);
    w.add(job("j", Mode::ReplicatedJob(ReplicatedJob { max_concurrent: 2, total_completions: 4 }), "flaky"));
    let (_, most) = run(&mut w, 4, 60_000);
    assert_eq!((count(&w, TaskState::Complete), count(&w, TaskState::Failed)), (4, 4), "each slot failed once");
    assert!(most <= 2);
}

#[test]
fn a_global_job_runs_once_on_every_node_including_one_that_joins_later() {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2"), node("n3")]);
    w.add(job("j", Mode::GlobalJob(GlobalJob {}), "ok"));
    let (at, _) = run(&mut w, 3, 30_000);
    assert_eq!(count(&w, TaskState::Complete), 3);
    w.add(node("n4"));
    let (_, _) = run(&mut w, 4, at + 30_000);
    let nodes: Vec<String> = w.store.tasks_by_service("j").map(|t| t.node_id.clone()).collect();
    assert_eq!(nodes.len(), 4, "one task per node, never a second: {nodes:?}");
}

#[test]
fn changing_the_spec_runs_the_job_again() {
    let mut w = World::new();
    w.add_all([node("n1")]);
    w.add(job("j", Mode::ReplicatedJob(ReplicatedJob { max_concurrent: 2, total_completions: 2 }), "ok"));
    run(&mut w, 2, 30_000);
    w.edit_service("j", |s| {
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task_template.as_mut()) {
            t.force_update += 1;
        }
    });
    run(&mut w, 4, 60_000);
    assert_eq!(count(&w, TaskState::Complete), 4, "two runs of two");
}
