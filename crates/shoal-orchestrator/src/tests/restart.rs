//! The restart policy: delay, conditions, attempts within a window, and what the replacement is
//! made from.

use shoal_api::v1::{restart_policy::Condition, Service, TaskState::*};
use shoal_scheduler::testing::*;

use super::{expect, pass, stored};

/// A world with one node and service `s`, whose slot-1 task `t1` on n1 ended in `state` at
/// `ended_at` while still wanted.
fn ended(s: Service, state: shoal_api::v1::TaskState, ended_at: i64) -> World {
    let mut w = World::new();
    w.add(node("n1"));
    w.add(s);
    let web = stored(&w, "web");
    w.add(task("t1", &web, 1).on("n1").state(state, ended_at));
    w
}

const REPLACED: [&str; 2] =
    ["update t1 node=n1 desired=shutdown state=failed", "create web.1 node=- desired=running state=pending"];

#[test]
fn a_failed_task_is_replaced_after_the_default_delay() {
    let mut w = ended(replicated("web", 1), Failed, 10_000);
    assert_eq!(pass(&w, 10_000), Vec::<String>::new());
    assert_eq!(pass(&w, 14_999), Vec::<String>::new());
    expect(&mut w, 15_000, &REPLACED);
    let new = w.store.tasks_by_slot("web", 1).filter(|t| t.desired_state == Running as i32).count();
    assert_eq!(new, 1);
}

#[test]
fn the_delay_comes_from_the_policy() {
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 0, 0);
    let mut w = ended(s, Failed, 10_000);
    expect(&mut w, 10_000, &REPLACED);
    let s = replicated("web", 1).restart(Condition::Any, Some(60_000), 0, 0);
    let mut w = ended(s, Failed, 10_000);
    assert_eq!(pass(&w, 69_999), Vec::<String>::new());
    expect(&mut w, 70_000, &REPLACED);
}

#[test]
fn on_failure_restarts_failures_but_not_completions() {
    let on_failure = || replicated("web", 1).restart(Condition::OnFailure, Some(0), 0, 0);
    let w = ended(on_failure(), Complete, 10_000);
    assert_eq!(pass(&w, 1_000_000), Vec::<String>::new());
    let mut w = ended(on_failure(), Failed, 10_000);
    expect(&mut w, 10_000, &REPLACED);
    let mut w = ended(on_failure(), Rejected, 10_000);
    expect(
        &mut w,
        10_000,
        &["update t1 node=n1 desired=shutdown state=rejected", "create web.1 node=- desired=running state=pending"],
    );
}

#[test]
fn any_restarts_completions_too() {
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 0, 0);
    let mut w = ended(s, Complete, 10_000);
    expect(
        &mut w,
        10_000,
        &["update t1 node=n1 desired=shutdown state=complete", "create web.1 node=- desired=running state=pending"],
    );
}

#[test]
fn none_never_restarts() {
    let s = replicated("web", 1).restart(Condition::None, Some(0), 0, 0);
    let w = ended(s, Failed, 10_000);
    assert_eq!(pass(&w, 1_000_000), Vec::<String>::new());
}

/// Slot 1 of `web` (max 2 attempts in a 10 s window, no delay): failures at 1 s and 8 s are
/// history, the current task failed at 9 s.
fn crash_looping() -> World {
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 2, 10_000);
    let mut w = ended(s, Failed, 9_000);
    let web = stored(&w, "web");
    w.add_all([
        task("h1", &web, 1).on("n1").state(Failed, 1_000).desired(Shutdown),
        task("h2", &web, 1).on("n1").state(Failed, 8_000).desired(Shutdown),
    ]);
    w
}

#[test]
fn max_attempts_within_the_window_stop_restarts() {
    let w = crash_looping();
    // Three failures within 10 s: more than 2 attempts.
    assert_eq!(pass(&w, 10_000), Vec::<String>::new());
    assert_eq!(pass(&w, 11_000), Vec::<String>::new());
    // Once the first failure leaves the window, two remain: restart.
    let mut w = w;
    expect(&mut w, 11_001, &REPLACED);
}

#[test]
fn max_attempts_without_a_window_count_every_failure() {
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 1, 0);
    let mut w = ended(s, Failed, 9_000);
    let web = stored(&w, "web");
    w.add(task("h1", &web, 1).on("n1").state(Failed, 1).desired(Shutdown));
    assert_eq!(pass(&w, 1_000_000_000), Vec::<String>::new());
}

#[test]
fn tasks_taken_away_by_the_orchestrator_are_not_attempts() {
    let s = replicated("web", 1).restart(Condition::Any, Some(0), 1, 0);
    let mut w = ended(s, Failed, 9_000);
    let web = stored(&w, "web");
    w.add_all([
        task("h1", &web, 1).on("n1").state(Orphaned, 1_000).desired(Shutdown),
        task("h2", &web, 1).on("n1").state(Shutdown, 2_000).desired(Shutdown),
    ]);
    // Only t1 counts: one attempt, within the limit of one.
    expect(&mut w, 9_000, &REPLACED);
}

#[test]
fn the_replacement_uses_the_current_template() {
    let mut w = ended(replicated("web", 1), Failed, 10_000);
    w.edit_service("web", |s| {
        s.template().container.get_or_insert_with(Default::default).image = "nginx:2".into();
    });
    let web = stored(&w, "web");
    expect(&mut w, 20_000, &REPLACED);
    let new =
        w.store.tasks_by_slot("web", 1).find(|t| t.desired_state == Running as i32).cloned().expect("replacement");
    assert_eq!(new.spec, web.spec.and_then(|s| s.task_template));
    assert_eq!(Some(new.spec_version), web.meta.map(|m| m.version));
}

#[test]
fn an_updated_policy_applies_to_tasks_that_already_ended() {
    let mut w = ended(replicated("web", 1), Failed, 10_000);
    w.edit_service("web", |s| {
        *s = s.clone().restart(Condition::None, None, 0, 0);
    });
    assert_eq!(pass(&w, 20_000), Vec::<String>::new());
}
