//! Global services following nodes: joining, leaving, draining, pausing, labels, restarts.

use shoal_api::v1::{
    restart_policy::Condition, NodeAvailability, NodeSpec, NodeState, NodeStatus, ObjectKind, TaskState::*,
};
use shoal_scheduler::testing::*;

use super::{expect, pass, stored, waiting_task};
use crate::GLOBAL_ASSIGNED_MESSAGE;

const NOW: i64 = 100_000;

fn set_state(w: &mut World, node: &str, s: NodeState) {
    w.edit_node(node, |n| n.status.get_or_insert_with(NodeStatus::default).state = s as i32);
}

fn set_availability(w: &mut World, node: &str, a: NodeAvailability) {
    w.edit_node(node, |n| n.spec.get_or_insert_with(NodeSpec::default).availability = a as i32);
}

/// n1 and n2 ready, `mon` global with a task running on each.
fn settled() -> World {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2")]);
    w.add(global("mon").restart(Condition::Any, Some(0), 0, 0));
    let mon = stored(&w, "mon");
    w.add_all([task("m1", &mon, 0).on("n1").state(Running, 0), task("m2", &mon, 0).on("n2").state(Running, 0)]);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    w
}

#[test]
fn one_assigned_task_per_eligible_node() {
    let mut w = World::new();
    w.add_all([
        node("n1"),
        node("n2").availability(NodeAvailability::Pause),
        node("n3").availability(NodeAvailability::Drain),
        node("n4").state(NodeState::Down),
        node("n5").state(NodeState::Unknown),
        node("n6").label("zone", "b"),
        node("n7").label("zone", "a"),
    ]);
    w.add(global("mon").constraint("node.labels.zone!=b"));
    expect(
        &mut w,
        NOW,
        &[
            "create mon.n1 node=n1 desired=running state=assigned",
            "create mon.n7 node=n7 desired=running state=assigned",
        ],
    );
    let t = w.store.tasks_by_node("n1").next().cloned().expect("task on n1");
    assert_eq!((t.slot, t.service_id.as_str()), (0, "mon"));
    assert_eq!(t.status.map(|s| s.message), Some(GLOBAL_ASSIGNED_MESSAGE.to_owned()));
}

#[test]
fn a_joining_node_gets_a_task() {
    let mut w = settled();
    w.add(node("n3"));
    expect(&mut w, NOW, &["create mon.n3 node=n3 desired=running state=assigned"]);
    // A node that becomes ready gets one too.
    w.add(node("n4").state(NodeState::Unknown));
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    set_state(&mut w, "n4", NodeState::Ready);
    expect(&mut w, NOW, &["create mon.n4 node=n4 desired=running state=assigned"]);
}

#[test]
fn a_node_without_a_runtime_gets_no_task() {
    let mut w = settled();
    w.add(node("n3").no_runtime("started with --no-runtime"));
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    // Once it reports a runtime, it gets its task.
    w.edit_node("n3", |n| n.description.get_or_insert_with(Default::default).runtime_unavailable.clear());
    expect(&mut w, NOW, &["create mon.n3 node=n3 desired=running state=assigned"]);
}

#[test]
fn a_drained_node_loses_its_task() {
    let mut w = settled();
    set_availability(&mut w, "n1", NodeAvailability::Drain);
    expect(&mut w, NOW, &["update m1 node=n1 desired=shutdown state=running"]);
    // Back to active while m1 still stops: a new task, which waits for m1 (one task per node).
    set_availability(&mut w, "n1", NodeAvailability::Active);
    expect(&mut w, NOW, &["create mon.n1 node=n1 desired=ready state=assigned"]);
    let new = waiting_task(&w);
    w.edit_task("m1", |t| t.status.get_or_insert_with(Default::default).state = Shutdown as i32);
    expect(&mut w, NOW, &[&format!("update {new} node=n1 desired=running state=assigned")]);
}

#[test]
fn a_down_or_removed_node_orphans_its_task() {
    let mut w = settled();
    set_state(&mut w, "n1", NodeState::Down);
    w.remove(ObjectKind::Node, "n2");
    expect(
        &mut w,
        NOW,
        &["update m1 node=n1 desired=shutdown state=orphaned", "update m2 node=n2 desired=shutdown state=orphaned"],
    );
}

#[test]
fn a_paused_node_keeps_its_task_but_gets_no_new_one() {
    let mut w = settled();
    set_availability(&mut w, "n1", NodeAvailability::Pause);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    w.edit_task("m1", |t| *t = t.clone().state(Failed, NOW));
    assert_eq!(pass(&w, NOW + 60_000), Vec::<String>::new());
    set_availability(&mut w, "n1", NodeAvailability::Active);
    expect(
        &mut w,
        NOW + 60_000,
        &["update m1 node=n1 desired=shutdown state=failed", "create mon.n1 node=n1 desired=running state=assigned"],
    );
}

#[test]
fn a_constraint_that_stops_matching_removes_the_task() {
    let mut w = World::new();
    w.add_all([node("n1").label("gpu", "yes"), node("n2").label("gpu", "yes")]);
    w.add(global("mon").constraint("node.labels.gpu==yes"));
    let mon = stored(&w, "mon");
    w.add_all([task("m1", &mon, 0).on("n1").state(Running, 0), task("m2", &mon, 0).on("n2").state(Running, 0)]);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
    w.edit_node("n2", |n| *n = n.clone().label("gpu", "no"));
    expect(&mut w, NOW, &["update m2 node=n2 desired=shutdown state=running"]);
}

#[test]
fn a_failed_global_task_restarts_on_its_node_after_the_delay() {
    let mut w = World::new();
    w.add(node("n1"));
    w.add(global("mon"));
    let mon = stored(&w, "mon");
    w.add(task("m1", &mon, 0).on("n1").state(Failed, 10_000));
    assert_eq!(pass(&w, 14_999), Vec::<String>::new());
    expect(
        &mut w,
        15_000,
        &["update m1 node=n1 desired=shutdown state=failed", "create mon.n1 node=n1 desired=running state=assigned"],
    );
}

#[test]
fn a_node_keeps_one_global_task() {
    let mut w = settled();
    let mon = stored(&w, "mon");
    w.add(task("dup", &mon, 0).on("n1").state(Assigned, 0));
    // And a stray replicated-style task of the service is shut down.
    w.add(task("stray", &mon, 3).on("n2").state(Running, 0));
    expect(
        &mut w,
        NOW,
        &["update dup node=n1 desired=shutdown state=assigned", "update stray node=n2 desired=shutdown state=running"],
    );
}

#[test]
fn an_ended_task_on_a_node_that_went_down_is_retired() {
    let mut w = settled();
    w.edit_task("m1", |t| *t = t.clone().state(Failed, NOW));
    set_state(&mut w, "n1", NodeState::Down);
    // Not restarted (the node takes nothing new) and no longer wanted there, so it is history.
    expect(&mut w, NOW, &["update m1 node=n1 desired=shutdown state=failed"]);
}
