//! Node loss and maintenance: down, removed, drained, paused, late heartbeats, labels changing
//! under a constraint.

use shoal_api::v1::{
    restart_policy::Condition, NodeAvailability, NodeSpec, NodeState, NodeStatus, ObjectKind, TaskState::*,
};
use shoal_scheduler::testing::*;

use super::{expect, pass, stored, waiting_task};
use crate::{NODE_DOWN_MESSAGE, NODE_REMOVED_MESSAGE};

const NOW: i64 = 100_000;

/// n1 and n2; `web` (2 replicas, a long restart delay and one attempt at most, so a
/// replacement that does not wait or that counts would show) with t1 on n1 and t2 on n2.
fn world() -> World {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2")]);
    w.add(replicated("web", 2).restart(Condition::Any, Some(600_000), 1, 0));
    let web = stored(&w, "web");
    w.add_all([
        task("t1", &web, 1).on("n1").state(Running, 0),
        task("t2", &web, 2).on("n2").state(Running, 0),
        task("old", &web, 1).on("n1").state(Failed, 0).desired(Shutdown),
    ]);
    w
}

fn set_state(w: &mut World, node: &str, s: NodeState) {
    w.edit_node(node, |n| n.status.get_or_insert_with(NodeStatus::default).state = s as i32);
}

fn set_availability(w: &mut World, node: &str, a: NodeAvailability) {
    w.edit_node(node, |n| n.spec.get_or_insert_with(NodeSpec::default).availability = a as i32);
}

fn message(w: &World, task: &str) -> String {
    w.store.task(task).and_then(|t| t.status.clone()).map(|s| s.message).unwrap_or_default()
}

#[test]
fn tasks_on_a_down_node_are_orphaned_and_replaced_at_once() {
    let mut w = world();
    set_state(&mut w, "n1", NodeState::Down);
    expect(
        &mut w,
        NOW,
        &["update t1 node=n1 desired=shutdown state=orphaned", "create web.1 node=- desired=running state=pending"],
    );
    assert_eq!(message(&w, "t1"), NODE_DOWN_MESSAGE);
}

#[test]
fn tasks_on_a_removed_node_are_orphaned_and_replaced() {
    let mut w = world();
    w.remove(ObjectKind::Node, "n1");
    expect(
        &mut w,
        NOW,
        &["update t1 node=n1 desired=shutdown state=orphaned", "create web.1 node=- desired=running state=pending"],
    );
    assert_eq!(message(&w, "t1"), NODE_REMOVED_MESSAGE);
}

#[test]
fn draining_moves_tasks_and_leaves_the_stop_to_the_agent() {
    let mut w = world();
    set_availability(&mut w, "n1", NodeAvailability::Drain);
    expect(
        &mut w,
        NOW,
        &["update t1 node=n1 desired=shutdown state=running", "create web.1 node=- desired=ready state=pending"],
    );
    // The agent then reports the stop: the replacement, placed meanwhile, starts.
    let new = waiting_task(&w);
    w.edit_task("t1", |t| t.status.get_or_insert_with(Default::default).state = Shutdown as i32);
    expect(&mut w, NOW, &[&format!("update {new} node=- desired=running state=pending")]);
}

#[test]
fn a_drained_node_going_down_orphans_what_is_still_stopping() {
    let mut w = world();
    set_availability(&mut w, "n1", NodeAvailability::Drain);
    expect(
        &mut w,
        NOW,
        &["update t1 node=n1 desired=shutdown state=running", "create web.1 node=- desired=ready state=pending"],
    );
    let new = waiting_task(&w);
    set_state(&mut w, "n1", NodeState::Down);
    // No second replacement: the slot already has one, which no longer waits for t1.
    expect(
        &mut w,
        NOW,
        &[
            "update t1 node=n1 desired=shutdown state=orphaned",
            &format!("update {new} node=- desired=running state=pending"),
        ],
    );
}

#[test]
fn pause_and_late_heartbeats_leave_running_tasks_alone() {
    let mut w = world();
    set_availability(&mut w, "n1", NodeAvailability::Pause);
    set_state(&mut w, "n2", NodeState::Unknown);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    set_state(&mut w, "n2", NodeState::Disconnected);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
}

#[test]
fn a_label_change_that_breaks_a_constraint_moves_the_task() {
    let mut w = World::new();
    w.add_all([node("n1").label("zone", "a"), node("n2").label("zone", "a")]);
    w.add(replicated("web", 1).constraint("node.labels.zone==a"));
    let web = stored(&w, "web");
    w.add(task("t1", &web, 1).on("n1").state(Running, 0));
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    w.edit_node("n1", |n| {
        *n = n.clone().label("zone", "b");
    });
    // The replacement is placed at once and starts once t1 has stopped.
    expect(
        &mut w,
        NOW,
        &["update t1 node=n1 desired=shutdown state=running", "create web.1 node=- desired=ready state=pending"],
    );
}
