//! Rolling updates and rollbacks, run forward in time: each step is an orchestrator pass, the
//! scheduler, and agents that start what they are given (or fail it, for a broken image) and stop
//! what they are told to. Every step is sampled: how many tasks of each image run, and the
//! update's state.

use proptest::prelude::*;
use shoal_api::v1::{
    update_config::{FailureAction, Order},
    update_status::State,
    Service, TaskState, UpdateConfig, UpdateStatus,
};
use shoal_scheduler::task as task_state;
use shoal_scheduler::testing::*;

const BROKEN: &str = "broken";

fn image(t: &shoal_api::v1::Task) -> &str {
    t.spec.as_ref().and_then(|s| s.container.as_ref()).map_or("", |c| c.image.as_str())
}

fn set_image(s: &mut Service, img: &str) {
    if let Some(c) = s.spec.as_mut().and_then(|s| s.task_template.as_mut()).and_then(|t| t.container.as_mut()) {
        c.image = img.into();
    }
}

/// A 6-replica service on 4 nodes, all tasks running `v1` since time 0.
fn cluster(config: UpdateConfig) -> World {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2"), node("n3"), node("n4")]);
    let mut web = replicated("web", 6);
    set_image(&mut web, "v1");
    if let Some(s) = web.spec.as_mut() {
        s.update_config = Some(config);
        s.rollback_config = Some(UpdateConfig { parallelism: 2, ..Default::default() });
    }
    w.add(web);
    let mut t = 0;
    while t < 20 {
        step(&mut w, t);
        t += 100;
    }
    w
}

/// What the control API does on `service update`: the new spec, the old one kept, the update
/// started.
fn update_to(w: &mut World, img: &str, now: i64) {
    w.edit_service("web", |s| {
        s.previous_spec = s.spec.clone();
        set_image(s, img);
        s.update_status = Some(UpdateStatus {
            state: State::Updating as i32,
            started_at_ms: now,
            completed_at_ms: 0,
            message: "update in progress".into(),
        });
    });
}

/// One step at `now`: orchestrator, scheduler, agents that start what they are given (a step
/// after its assignment; `broken` fails) and stop what they are told to.
fn step(w: &mut World, now: i64) {
    super::sim_step(w, now, |t| {
        let observed = task_state::observed(t);
        if t.desired_state > TaskState::Running as i32 && observed < TaskState::Complete as i32 {
            Some(TaskState::Shutdown)
        } else if t.desired_state == TaskState::Running as i32
            && !t.node_id.is_empty()
            && observed < TaskState::Running as i32
            // A task assigned in this step starts in the next one.
            && task_state::status_timestamp(t) < now
        {
            Some(if image(t) == BROKEN { TaskState::Failed } else { TaskState::Running })
        } else {
            None
        }
    });
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    at: i64,
    running: std::collections::BTreeMap<String, usize>,
    state: State,
}

fn sample(w: &World, at: i64) -> Sample {
    let mut running = std::collections::BTreeMap::new();
    for t in w.store.tasks_by_service("web") {
        if task_state::observed(t) == TaskState::Running as i32 && t.desired_state == TaskState::Running as i32 {
            *running.entry(image(t).to_string()).or_insert(0) += 1;
        }
    }
    let state = w.store.service("web").and_then(|s| s.update_status.as_ref()).map_or(State::Unknown, |u| u.state());
    Sample { at, running, state }
}

/// Runs from `from` in steps of `step_ms` until the update is done (or `limit`), sampling.
fn run(w: &mut World, from: i64, step_ms: i64, limit: i64) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= limit {
        step(w, now);
        let s = sample(w, now);
        let done = !matches!(s.state, State::Updating | State::RollbackStarted);
        out.push(s);
        if done {
            break;
        }
        now += step_ms;
    }
    out
}

fn total(s: &Sample) -> usize {
    s.running.values().sum()
}

fn config(parallelism: u64, order: Order, failure: FailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay_ms: 1_000,
        failure_action: failure as i32,
        monitor_ms: Some(2_000),
        max_failure_ratio: 0.0,
        order: order as i32,
        ..Default::default()
    }
}

#[test]
fn stop_first_replaces_two_at_a_time_and_never_drops_below_four() {
    let mut w = cluster(config(2, Order::StopFirst, FailureAction::Pause));
    let before: Vec<String> =
        w.store.tasks_by_service("web").filter_map(|t| t.meta.as_ref().map(|m| m.id.clone())).collect();
    update_to(&mut w, "v2", 1_000);
    let samples = run(&mut w, 1_000, 100, 60_000);
    let last = samples.last().cloned().expect("samples");
    assert_eq!(last.state, State::Completed, "{samples:#?}");
    assert_eq!(last.running.get("v2"), Some(&6));
    assert!(samples.iter().all(|s| total(s) >= 4), "never fewer than 6 - 2 running: {samples:#?}");
    assert!(samples.iter().any(|s| total(s) == 4), "two at a time");
    // 3 batches, each waiting for the delay after its tasks run; then the monitor.
    assert!((4_000..=6_000).contains(&(last.at - 1_000)), "took {} ms", last.at - 1_000);
    // Every old task is shut down, and nothing else changed: 6 old + 6 new.
    let tasks: Vec<_> = w.store.tasks_by_service("web").collect();
    assert_eq!(tasks.len(), 12);
    assert!(before.iter().all(|id| w.store.task(id).is_some_and(|t| t.desired_state == TaskState::Shutdown as i32)));
    let status = w.store.service("web").and_then(|s| s.update_status.clone()).unwrap_or_default();
    assert_eq!((status.message.as_str(), status.completed_at_ms), ("update completed", last.at));
    // Done: quiet.
    assert_eq!(super::pass(&w, last.at + 10_000), Vec::<String>::new());
}

/// An agent whose tasks take `stop_ms` to stop once told (`told`: when each was), start a step
/// after they are placed, and report a waiting (desired `READY`) task prepared.
fn slow_to_stop(
    t: &shoal_api::v1::Task,
    now: i64,
    told: &mut std::collections::HashMap<String, i64>,
    stop_ms: i64,
) -> Option<TaskState> {
    let id = t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    let observed = task_state::observed(t);
    if t.desired_state > TaskState::Running as i32 && observed < TaskState::Complete as i32 {
        let since = *told.entry(id).or_insert(now);
        (now - since >= stop_ms).then_some(TaskState::Shutdown)
    } else if t.desired_state == TaskState::Running as i32
        && !t.node_id.is_empty()
        && observed < TaskState::Running as i32
        && task_state::status_timestamp(t) < now
    {
        Some(TaskState::Running)
    } else if t.desired_state == TaskState::Ready as i32 && !t.node_id.is_empty() && observed < TaskState::Ready as i32
    {
        Some(TaskState::Ready)
    } else {
        None
    }
}

/// Stop-first with tasks that take `stop_ms` to stop (a workload ignoring its stop signal, killed
/// at the end of its grace period): the new task of a slot is placed at once but starts only
/// once the old one has stopped, so a slot never runs two tasks, and each batch takes the grace
/// period.
#[test]
fn stop_first_starts_the_new_task_only_once_the_old_one_stopped() {
    const STOP_MS: i64 = 3_000;
    let mut w = cluster(UpdateConfig { delay_ms: 0, ..config(2, Order::StopFirst, FailureAction::Pause) });
    update_to(&mut w, "v2", 1_000);
    let mut told: std::collections::HashMap<String, i64> = Default::default();
    let mut now = 1_000;
    let mut placed_while_waiting = false;
    let mut last = State::Updating;
    while now <= 60_000 && matches!(last, State::Updating) {
        super::sim_step(&mut w, now, |t| slow_to_stop(t, now, &mut told, STOP_MS));
        let mut per_slot: std::collections::BTreeMap<u64, usize> = Default::default();
        for t in w.store.tasks_by_service("web") {
            if task_state::observed(t) == TaskState::Running as i32 {
                *per_slot.entry(t.slot).or_default() += 1;
            }
            placed_while_waiting |= t.desired_state == TaskState::Ready as i32 && !t.node_id.is_empty();
        }
        assert!(per_slot.values().all(|n| *n == 1), "one running task per slot at {now}: {per_slot:?}");
        last = sample(&w, now).state;
        now += 100;
    }
    assert_eq!(last, State::Completed);
    assert!(placed_while_waiting, "the new tasks are placed while the old ones stop");
    // 3 batches, each waiting for the old tasks to stop; then the monitor.
    let took = now - 100 - 1_000;
    assert!((3 * STOP_MS + 2_000..=3 * STOP_MS + 3_500).contains(&took), "took {took} ms");
}

/// Stop-first, old tasks slow to stop: the node holding a slot's waiting new task is lost while
/// the old task still stops elsewhere (the failover of a leader that also ran tasks, in chaos).
/// The replacement of the lost task waits for the old one too: a slot never runs two tasks.
#[test]
fn a_replacement_for_a_lost_waiting_task_waits_for_the_old_one_to_stop() {
    const STOP_MS: i64 = 3_000;
    let mut w = cluster(UpdateConfig { delay_ms: 0, ..config(1, Order::StopFirst, FailureAction::Pause) });
    update_to(&mut w, "v2", 1_000);
    let mut told: std::collections::HashMap<String, i64> = Default::default();
    let mut lost: Option<(String, u64)> = None;
    let mut now = 1_000;
    let mut last = State::Updating;
    while now <= 60_000 && matches!(last, State::Updating) {
        super::sim_step(&mut w, now, |t| slow_to_stop(t, now, &mut told, STOP_MS));
        if lost.is_none() {
            // A waiting task placed on another node than the old task it waits for.
            let stopping_on = |slot: u64| {
                w.store
                    .tasks_by_service("web")
                    .find(|t| {
                        t.slot == slot
                            && t.desired_state > TaskState::Running as i32
                            && task_state::observed(t) == TaskState::Running as i32
                    })
                    .map(|t| t.node_id.clone())
            };
            let waiting = w
                .store
                .tasks_by_service("web")
                .find(|t| {
                    t.desired_state == TaskState::Ready as i32
                        && !t.node_id.is_empty()
                        && stopping_on(t.slot).is_some_and(|n| n != t.node_id)
                })
                .map(|t| (t.node_id.clone(), t.slot));
            if let Some((node, slot)) = waiting {
                w.edit_node(&node, |n| {
                    n.status.get_or_insert_with(Default::default).state = shoal_api::v1::NodeState::Down as i32
                });
                lost = Some((node, slot));
            }
        }
        let mut per_slot: std::collections::BTreeMap<u64, usize> = Default::default();
        for t in w.store.tasks_by_service("web") {
            if task_state::observed(t) == TaskState::Running as i32 {
                *per_slot.entry(t.slot).or_default() += 1;
            }
        }
        assert!(per_slot.values().all(|n| *n == 1), "one running task per slot at {now}: {per_slot:?}");
        last = sample(&w, now).state;
        now += 100;
    }
    let (_, slot) = lost.expect("a waiting task was placed, and its node lost");
    assert_eq!(last, State::Completed);
    let running = w
        .store
        .tasks_by_service("web")
        .filter(|t| t.slot == slot && task_state::observed(t) == TaskState::Running as i32)
        .count();
    assert_eq!(running, 1, "the slot of the lost task runs again");
}

#[test]
fn start_first_keeps_every_replica_running_throughout() {
    let mut w = cluster(config(2, Order::StartFirst, FailureAction::Pause));
    update_to(&mut w, "v2", 1_000);
    let samples = run(&mut w, 1_000, 100, 60_000);
    let last = samples.last().cloned().expect("samples");
    assert_eq!((last.state, last.running.get("v2")), (State::Completed, Some(&6)), "{samples:#?}");
    assert!(samples.iter().all(|s| total(s) >= 6), "never fewer than 6 running: {samples:#?}");
    assert!(samples.iter().all(|s| total(s) <= 8), "never more than 6 + 2 running");
}

#[test]
fn parallelism_zero_replaces_everything_at_once() {
    let mut w = cluster(config(0, Order::StopFirst, FailureAction::Pause));
    update_to(&mut w, "v2", 1_000);
    let ops = super::pass(&w, 1_000);
    assert_eq!(ops.iter().filter(|o| o.starts_with("create")).count(), 6, "{ops:#?}");
}

#[test]
fn a_failing_image_pauses_the_update_after_the_first_batch() {
    let mut w = cluster(config(2, Order::StopFirst, FailureAction::Pause));
    update_to(&mut w, BROKEN, 1_000);
    let samples = run(&mut w, 1_000, 100, 60_000);
    let last = samples.last().cloned().expect("samples");
    assert_eq!(last.state, State::Paused, "{samples:#?}");
    assert_eq!(last.running.get("v1"), Some(&4), "the other 4 were never touched");
    let status = w.store.service("web").and_then(|s| s.update_status.clone()).unwrap_or_default();
    assert!(status.message.starts_with("update paused: task web.") && status.message.contains("failed"), "{status:?}");
    // Paused: no further batch, however long it waits.
    let later = run(&mut w, last.at + 100, 1_000, last.at + 30_000);
    assert!(later.iter().all(|s| s.running.get("v1") == Some(&4)), "{later:#?}");
}

#[test]
fn a_failing_image_with_rollback_goes_back_to_the_previous_spec() {
    let mut w = cluster(config(2, Order::StopFirst, FailureAction::Rollback));
    update_to(&mut w, BROKEN, 1_000);
    let samples = run(&mut w, 1_000, 100, 60_000);
    assert!(samples.iter().any(|s| s.state == State::RollbackStarted), "{samples:#?}");
    let last = samples.last().cloned().expect("samples");
    assert_eq!((last.state, last.running.get("v1")), (State::RollbackCompleted, Some(&6)), "{samples:#?}");
    let web = w.store.service("web").cloned().unwrap_or_default();
    let img = |s: Option<&shoal_api::v1::ServiceSpec>| {
        s.and_then(|s| s.task_template.as_ref()).and_then(|t| t.container.as_ref()).map(|c| c.image.clone())
    };
    assert_eq!(img(web.spec.as_ref()).as_deref(), Some("v1"), "the spec is the previous one again");
    assert_eq!(img(web.previous_spec.as_ref()).as_deref(), Some(BROKEN));
    let message = web.update_status.map(|u| u.message).unwrap_or_default();
    assert!(message.starts_with("rollback completed (update rolled back: task web."), "{message}");
}

fn failed_new_tasks(w: &World) -> usize {
    w.store
        .tasks_by_service("web")
        .filter(|t| image(t) == BROKEN && task_state::observed(t) == TaskState::Failed as i32)
        .count()
}

#[test]
fn a_tolerated_failure_ratio_pauses_only_beyond_it_and_continue_never_does() {
    let mut w = cluster(UpdateConfig { max_failure_ratio: 0.5, ..config(1, Order::StopFirst, FailureAction::Pause) });
    update_to(&mut w, BROKEN, 1_000);
    let samples = run(&mut w, 1_000, 100, 60_000);
    assert_eq!(samples.last().map(|s| s.state), Some(State::Paused));
    assert_eq!(failed_new_tasks(&w), 4, "3 of 6 failing is within 0.5, the 4th is not");

    let mut w = cluster(config(2, Order::StopFirst, FailureAction::Continue));
    update_to(&mut w, BROKEN, 1_000);
    let samples = run(&mut w, 1_000, 100, 10_000);
    let last = samples.last().cloned().expect("samples");
    assert_eq!(last.state, State::Updating, "continue: never paused");
    assert_eq!(last.running.get("v1"), None, "every slot was tried: {last:?}");
}

#[test]
fn a_spec_that_does_not_reach_the_tasks_replaces_nothing() {
    let mut w = cluster(config(2, Order::StopFirst, FailureAction::Pause));
    w.edit_service("web", |s| {
        s.update_status =
            Some(UpdateStatus { state: State::Updating as i32, started_at_ms: 1_000, ..Default::default() });
        if let Some(c) = s.spec.as_mut().and_then(|s| s.update_config.as_mut()) {
            c.delay_ms = 7;
        }
    });
    let ops = super::pass(&w, 1_000);
    assert!(ops.iter().all(|o| !o.starts_with("create")), "{ops:#?}");
    let samples = run(&mut w, 1_000, 100, 10_000);
    assert_eq!(samples.last().map(|s| s.state), Some(State::Completed));
}

#[test]
fn without_an_update_in_progress_an_old_task_stays() {
    let mut w = cluster(config(2, Order::StopFirst, FailureAction::Pause));
    w.edit_service("web", |s| set_image(s, "v2"));
    assert_eq!(super::pass(&w, 1_000), Vec::<String>::new(), "a spec change alone is not an update");
}

#[test]
fn a_global_service_is_updated_node_by_node_and_a_paused_node_keeps_its_task() {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2"), node("n3"), node("n4")]);
    w.edit_node("n4", |n| {
        if let Some(s) = n.spec.as_mut() {
            s.availability = shoal_api::v1::NodeAvailability::Pause as i32;
        }
    });
    let mut web = global("web");
    set_image(&mut web, "v1");
    if let Some(s) = web.spec.as_mut() {
        s.update_config = Some(config(1, Order::StopFirst, FailureAction::Pause));
    }
    w.add(web);
    step(&mut w, 0);
    step(&mut w, 10);
    w.add(task("old4", &stored_web(&w), 0).on("n4").state(TaskState::Running, 0));
    assert_eq!(sample(&w, 10).running.get("v1"), Some(&4));
    update_to(&mut w, "v2", 1_000);
    let samples = run(&mut w, 1_000, 100, 60_000);
    let last = samples.last().cloned().expect("samples");
    assert_eq!(last.state, State::Completed, "{samples:#?}");
    assert_eq!((last.running.get("v2"), last.running.get("v1")), (Some(&3), Some(&1)), "{last:?}");
    assert!(samples.iter().all(|s| total(s) >= 3), "one node at a time: {samples:#?}");
}

#[test]
fn tasks_that_cannot_be_placed_fail_the_update_at_its_startup_deadline() {
    let mut w =
        cluster(UpdateConfig { startup_deadline_ms: 3_000, ..config(2, Order::StopFirst, FailureAction::Rollback) });
    update_to(&mut w, "v2", 1_000);
    // The new spec asks for a label no node has: its tasks stay pending.
    w.edit_service("web", |s| {
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task_template.as_mut()) {
            t.placement = Some(shoal_api::v1::Placement {
                constraints: vec!["node.labels.gpu==yes".into()],
                ..Default::default()
            });
        }
    });
    let samples = run(&mut w, 1_000, 100, 60_000);
    let rolled = samples.iter().find(|s| s.state == State::RollbackStarted).expect("rolled back");
    assert!((4_000..=4_300).contains(&rolled.at), "at the deadline, not stalled: {}", rolled.at);
    let last = samples.last().cloned().expect("samples");
    assert_eq!((last.state, last.running.get("v1")), (State::RollbackCompleted, Some(&6)), "{samples:#?}");
    let message = w.store.service("web").and_then(|s| s.update_status.clone()).map(|u| u.message).unwrap_or_default();
    assert!(message.contains("not running within the startup deadline of 3s"), "{message}");
}

#[test]
fn min_healthy_holds_the_next_batch_until_the_new_tasks_have_run_that_long() {
    let quick = {
        let mut w = cluster(UpdateConfig { delay_ms: 0, ..config(1, Order::StopFirst, FailureAction::Pause) });
        update_to(&mut w, "v2", 1_000);
        run(&mut w, 1_000, 100, 120_000).last().map(|s| s.at).unwrap_or_default()
    };
    let held = {
        let mut w = cluster(UpdateConfig {
            delay_ms: 0,
            min_healthy_ms: 1_000,
            ..config(1, Order::StopFirst, FailureAction::Pause)
        });
        update_to(&mut w, "v2", 1_000);
        run(&mut w, 1_000, 100, 120_000).last().map(|s| s.at).unwrap_or_default()
    };
    // The last batch is held by the monitor period anyway.
    assert!(held - quick >= 4_500, "5 batches each held about 1 s longer: {quick} vs {held}");
}

#[test]
fn a_dry_run_names_the_tasks_it_would_replace_and_the_batches() {
    let w = cluster(config(4, Order::StartFirst, FailureAction::Pause));
    let web = stored_web(&w);
    let mut next = web.spec.clone().unwrap_or_default();
    if let Some(c) = next.task_template.as_mut().and_then(|t| t.container.as_mut()) {
        c.image = "v2".into();
    }
    let plan = crate::plan_update(&w.store, &web, &next);
    assert_eq!((plan.replaced.len(), plan.batches, plan.unchanged, plan.order.as_str()), (6, 2, 0, "start-first"));
    assert!(plan.replaced.iter().all(|r| !r.node_id.is_empty() && r.name.starts_with("web.")));
    // A scale alone replaces nothing.
    let mut scaled = web.spec.clone().unwrap_or_default();
    scaled.mode = Some(shoal_api::v1::service_spec::Mode::Replicated(shoal_api::v1::ReplicatedService { replicas: 4 }));
    let plan = crate::plan_update(&w.store, &web, &scaled);
    assert_eq!((plan.replaced.len(), plan.batches, plan.unchanged, plan.removed, plan.added), (0, 0, 4, 2, 0));
    assert_eq!(super::pass(&w, 1_000), Vec::<String>::new(), "planning changed nothing");
}

fn stored_web(w: &World) -> Service {
    w.store.service("web").cloned().unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Any parallelism and order: the update completes, never has more than `parallelism`
    /// replicas down (stop-first) or fewer than all running (start-first), and ends with
    /// every replica on the new image.
    #[test]
    fn updates_complete_within_their_bounds(parallelism in 0u64..8, start_first in any::<bool>(), delay in 0i64..1_500) {
        let order = if start_first { Order::StartFirst } else { Order::StopFirst };
        let mut w = cluster(UpdateConfig { delay_ms: delay, ..config(parallelism, order, FailureAction::Pause) });
        update_to(&mut w, "v2", 1_000);
        let samples = run(&mut w, 1_000, 100, 120_000);
        let last = samples.last().cloned().expect("samples");
        prop_assert_eq!(last.state, State::Completed);
        prop_assert_eq!(last.running.get("v2"), Some(&6));
        let down = if parallelism == 0 { 6 } else { parallelism.min(6) as usize };
        let floor = if start_first { 6 } else { 6 - down };
        prop_assert!(samples.iter().all(|s| total(s) >= floor), "floor {}: {:?}", floor, samples);
    }

    /// Throughout an update (settling, delays, the monitor period, the startup deadline), once a
    /// pass's ops applied, a pass at any time before the service's wake-up is quiet: a loop that
    /// looks again only at the wake-up misses nothing.
    #[test]
    fn during_an_update_nothing_changes_before_the_wake(
        parallelism in 0u64..4,
        start_first in any::<bool>(),
        delay in 0i64..1_500,
        min_healthy in 0i64..2_000,
        frac in 0.0..1.0f64,
    ) {
        let order = if start_first { Order::StartFirst } else { Order::StopFirst };
        let mut w = cluster(UpdateConfig {
            delay_ms: delay,
            min_healthy_ms: min_healthy,
            startup_deadline_ms: 3_000,
            ..config(parallelism, order, FailureAction::Pause)
        });
        update_to(&mut w, "v2", 1_000);
        let (mut now, mut woke) = (1_000, 0);
        while now <= 60_000 {
            step(&mut w, now);
            // Once what the agents reported is acted on, the pass is quiet until the wake-up.
            let ops = crate::reconcile(&w.store, now, &mut super::new_ids_for(&w));
            w.apply(ops);
            let here = crate::pass(&w.store, now, &crate::Scope::All, &mut super::new_ids());
            prop_assert!(here.ops.is_empty(), "not quiet once applied: {:?}", describe(&here.ops));
            if let Some(&at) = here.wake.get("web") {
                woke += 1;
                prop_assert!(at > now, "wake {} is not ahead of {}", at, now);
                for t in [now + ((at - 1 - now) as f64 * frac) as i64, at - 1] {
                    let then = describe(&crate::reconcile(&w.store, t, &mut super::new_ids()));
                    prop_assert!(then.is_empty(), "at {} (now {}, wake {}): {:?}", t, now, at, then);
                }
            }
            if !matches!(sample(&w, now).state, State::Updating | State::RollbackStarted) {
                break;
            }
            now += 100;
        }
        prop_assert!(woke > 0, "an update waits for time: its passes must say until when");
    }
}
