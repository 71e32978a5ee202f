//! Data-driven cases: a store built through real commands, the plan expected from it.

use shoal_api::v1::{op, NodeAvailability as Avail, NodeRole, NodeState, Op, Service, Task, TaskState, TaskStatus};

use super::lines;
use crate::testing::*;
use crate::{schedule, unschedulable_updates, Unschedulable, SCHEDULED_MESSAGE};

const NOW: i64 = 50_000;

/// A world holding `nodes` and, for each service, `n` pending tasks with ids `<service><slot>`.
fn world(nodes: Vec<shoal_api::v1::Node>, services: Vec<(Service, u64)>) -> World {
    let mut w = World::new();
    w.add_all(nodes);
    for (s, n) in services {
        add_pending(&mut w, s, n);
    }
    w
}

/// Adds `s` (when new) and `n` more pending tasks in the slots after its highest one.
fn add_pending(w: &mut World, s: Service, n: u64) {
    let id = s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    if w.store.service(&id).is_none() {
        w.add(s);
    }
    let stored = w.store.service(&id).cloned().expect("service just added");
    let first = w.store.tasks_by_service(&id).map(|t| t.slot).max().unwrap_or(0) + 1;
    w.add_all((first..first + n).map(|slot| task(&format!("{id}{slot}"), &stored, slot)));
}

/// A task of `s` already placed on `node` and running.
fn running(w: &mut World, id: &str, s: &str, node: &str) {
    let svc = w.store.service(s).cloned().expect("service exists");
    w.add(task(id, &svc, 99).on(node).state(TaskState::Running, 0));
}

fn plan(w: &World) -> Vec<String> {
    lines(&schedule(&w.store, NOW))
}

#[test]
fn spread_puts_one_task_per_node_in_node_id_order() {
    let w = world(vec![node("n2"), node("n1"), node("n3")], vec![(replicated("web", 3), 3)]);
    assert_eq!(plan(&w), ["web1 -> n1", "web2 -> n2", "web3 -> n3"]);
}

#[test]
fn spread_prefers_fewest_service_tasks_then_fewest_tasks() {
    let mut w = world(vec![node("n1"), node("n2"), node("n3")], vec![]);
    w.add_all([replicated("web", 3), replicated("db", 3)]);
    running(&mut w, "w0", "web", "n1");
    running(&mut w, "d1", "db", "n2");
    running(&mut w, "d2", "db", "n2");
    running(&mut w, "d3", "db", "n3");
    add_pending(&mut w, replicated("web", 3), 3);
    // n3 (0 web, 1 task), n2 (0 web, 3 tasks), then all have one web task and n1 has the
    // fewest tasks.
    assert_eq!(plan(&w), ["web100 -> n3", "web101 -> n2", "web102 -> n1"]);
}

#[test]
fn terminal_tasks_do_not_count_as_load() {
    let mut w = world(vec![node("n1"), node("n2")], vec![]);
    w.add(replicated("db", 1).reserve(0, 3 * GIB));
    let db = w.store.service("db").cloned().expect("db");
    w.add(task("old", &db, 1).on("n1").state(TaskState::Failed, 0));
    w.add(task("live", &db, 2).on("n2").state(TaskState::Running, 0));
    add_pending(&mut w, replicated("web", 1).reserve(0, 2 * GIB), 1);
    // n1's failed task neither reserves memory nor counts for spread.
    assert_eq!(plan(&w), ["web1 -> n1"]);
}

#[test]
fn only_ready_active_nodes_take_tasks() {
    let nodes = vec![
        node("n1").state(NodeState::Down),
        node("n2").availability(Avail::Drain),
        node("n3").availability(Avail::Pause),
        node("n4").state(NodeState::Unknown),
        node("n5").state(NodeState::Disconnected),
        node("n6"),
    ];
    let w = world(nodes, vec![(replicated("web", 2), 2)]);
    assert_eq!(plan(&w), ["web1 -> n6", "web2 -> n6"]);
}

#[test]
fn nodes_without_a_runtime_get_no_tasks() {
    let nodes = vec![node("n1").no_runtime("started with --no-runtime"), node("n2")];
    let w = world(nodes, vec![(replicated("web", 2), 2)]);
    assert_eq!(plan(&w), ["web1 -> n2", "web2 -> n2"]);
    let nodes = vec![node("n1").no_runtime("containerd does not answer"), node("n2").state(NodeState::Down)];
    let w = world(nodes, vec![(replicated("web", 1), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (1 node not available; no container runtime on 1 node)"]);
}

#[test]
fn no_available_node_is_explained() {
    let nodes = vec![node("n1").state(NodeState::Down), node("n2").availability(Avail::Drain)];
    let w = world(nodes, vec![(replicated("web", 1), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (2 nodes not available)"]);
    let w = world(vec![node("n1").state(NodeState::Down)], vec![(replicated("web", 1), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (1 node not available)"]);
    let w = world(vec![], vec![(replicated("web", 1), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (no nodes in the cluster)"]);
}

#[test]
fn memory_and_cpu_must_fit() {
    let small = |id: &str| node(id).resources(CPU, GIB);
    let w = world(vec![small("n1"), small("n2"), small("n3")], vec![(replicated("web", 1).reserve(0, 2 * GIB), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (insufficient memory on 3 nodes)"]);
    let w = world(vec![small("n1"), small("n2")], vec![(replicated("web", 1).reserve(2 * CPU, 0), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (insufficient cpu on 2 nodes)"]);
    let w = world(
        vec![small("n1"), node("n2").resources(2 * CPU, GIB)],
        vec![(replicated("web", 1).reserve(2 * CPU, GIB), 1)],
    );
    assert_eq!(plan(&w), ["web1 -> n2"]);
}

#[test]
fn assignments_earlier_in_the_plan_reserve_resources() {
    let w =
        world(vec![node("n1").resources(4 * CPU, 4 * GIB)], vec![(replicated("web", 3).reserve(CPU, 3 * GIB / 2), 3)]);
    assert_eq!(plan(&w), ["web1 -> n1", "web2 -> n1", "web3: no suitable node (insufficient memory on 1 node)"]);
}

#[test]
fn running_tasks_reserve_resources() {
    let mut w = world(vec![node("n1"), node("n2")], vec![]);
    w.add(replicated("db", 1).reserve(0, 3 * GIB));
    running(&mut w, "d1", "db", "n1");
    add_pending(&mut w, replicated("web", 1).reserve(0, 3 * GIB), 2);
    assert_eq!(plan(&w), ["web1 -> n2", "web2: no suitable node (insufficient memory on 2 nodes)"]);
}

#[test]
fn reasons_are_listed_most_frequent_first() {
    let nodes = vec![
        node("n1").state(NodeState::Down),
        node("n2").resources(CPU, GIB),
        node("n3").resources(CPU, GIB),
        node("n4").resources(CPU, GIB),
    ];
    let w = world(nodes, vec![(replicated("web", 1).reserve(0, 2 * GIB), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (insufficient memory on 3 nodes; 1 node not available)"]);
}

#[test]
fn label_constraints_select_nodes() {
    let nodes = vec![node("n1").label("zone", "b"), node("n2").label("zone", "a"), node("n3")];
    let w = world(nodes.clone(), vec![(replicated("web", 2).constraint("node.labels.zone==a"), 2)]);
    assert_eq!(plan(&w), ["web1 -> n2", "web2 -> n2"]);
    // A missing label satisfies `!=`.
    let w = world(nodes.clone(), vec![(replicated("web", 2).constraint("node.labels.zone!=a"), 2)]);
    assert_eq!(plan(&w), ["web1 -> n1", "web2 -> n3"]);
    let w = world(nodes, vec![(replicated("web", 1).constraint("node.labels.zone==c"), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (constraint node.labels.zone==c not satisfied on 3 nodes)"]);
}

#[test]
fn node_attribute_constraints_select_nodes() {
    let nodes = vec![node("n1").role(NodeRole::Manager), node("n2"), node("n3").platform("linux", "arm64")];
    let cases = [
        ("node.role==manager", "n1"),
        ("node.role!=manager", "n2"),
        ("node.id==n3", "n3"),
        ("node.hostname==n2", "n2"),
        ("node.platform.arch==arm64", "n3"),
        ("node.platform.os==linux", "n1"),
    ];
    for (expr, want) in cases {
        let w = world(nodes.clone(), vec![(replicated("web", 1).constraint(expr), 1)]);
        assert_eq!(plan(&w), [format!("web1 -> {want}")], "{expr}");
    }
}

#[test]
fn each_failing_constraint_is_counted_on_its_own() {
    let nodes = vec![
        node("m1").role(NodeRole::Manager).label("zone", "b"),
        node("w1").label("zone", "a"),
        node("w2").label("zone", "b"),
    ];
    let svc = replicated("web", 1).constraint("node.role==manager").constraint("node.labels.zone==a");
    let w = world(nodes, vec![(svc, 1)]);
    assert_eq!(
        plan(&w),
        ["web1: no suitable node (constraint node.role==manager not satisfied on 2 nodes; \
          constraint node.labels.zone==a not satisfied on 1 node)"]
    );
}

#[test]
fn platform_list_selects_nodes() {
    let nodes = vec![node("n1"), node("n2").platform("linux", "aarch64")];
    let w = world(nodes.clone(), vec![(replicated("web", 1).platform("linux", "arm64"), 1)]);
    assert_eq!(plan(&w), ["web1 -> n2"]);
    let w = world(nodes, vec![(replicated("web", 1).platform("windows", ""), 1)]);
    assert_eq!(plan(&w), ["web1: no suitable node (unsupported platform on 2 nodes)"]);
}

#[test]
fn max_replicas_per_node_is_a_limit() {
    let w = world(vec![node("n1"), node("n2")], vec![(replicated("web", 3).max_per_node(1), 3)]);
    assert_eq!(
        plan(&w),
        ["web1 -> n1", "web2 -> n2", "web3: no suitable node (max replicas per node limit exceeded on 2 nodes)"]
    );
}

#[test]
fn host_mode_ports_are_exclusive_per_node() {
    let mut w = world(vec![node("n1"), node("n2"), node("n3")], vec![]);
    w.add(replicated("other", 1).host_port(8080));
    running(&mut w, "o1", "other", "n1");
    add_pending(&mut w, replicated("web", 3).host_port(8080), 3);
    assert_eq!(
        plan(&w),
        ["web1 -> n2", "web2 -> n3", "web3: no suitable node (host-mode port 8080/tcp already in use on 3 nodes)"]
    );
    // Ports of a terminated task are free again.
    w.edit_task("o1", |t| {
        t.status.get_or_insert_with(TaskStatus::default).state = TaskState::Complete as i32;
    });
    assert_eq!(plan(&w), ["web1 -> n1", "web2 -> n2", "web3 -> n3"]);
}

#[test]
fn spread_preference_balances_label_values_first() {
    let nodes =
        vec![node("a1").label("zone", "a"), node("a2").label("zone", "a"), node("b1").label("zone", "b"), node("x1")];
    let w = world(nodes.clone(), vec![(replicated("web", 6).spread("zone"), 6)]);
    // Zones a, b and the unlabelled group get two tasks each, whatever their node counts.
    assert_eq!(plan(&w), ["web1 -> a1", "web2 -> b1", "web3 -> x1", "web4 -> a2", "web5 -> b1", "web6 -> x1"]);
    // Without the preference, nodes are balanced instead.
    let w = world(nodes, vec![(replicated("web", 6), 6)]);
    assert_eq!(plan(&w), ["web1 -> a1", "web2 -> a2", "web3 -> b1", "web4 -> x1", "web5 -> a1", "web6 -> a2"]);
}

#[test]
fn spread_preference_counts_existing_tasks() {
    let nodes = vec![node("a1").label("zone", "a"), node("b1").label("zone", "b"), node("b2").label("zone", "b")];
    let mut w = world(nodes, vec![]);
    w.add_all([replicated("web", 5).spread("zone"), replicated("db", 1)]);
    running(&mut w, "w1", "web", "a1");
    running(&mut w, "d1", "db", "a1");
    running(&mut w, "w2", "web", "b1");
    running(&mut w, "w3", "web", "b1");
    running(&mut w, "w4", "web", "b2");
    add_pending(&mut w, replicated("web", 5), 1);
    // Zone a holds 1, zone b 3: a1 wins, although b2 (one web task too, fewer tasks in all)
    // would win on nodes alone.
    assert_eq!(plan(&w), ["web100 -> a1"]);
}

#[test]
fn only_pending_unassigned_wanted_tasks_are_considered() {
    let mut w = world(vec![node("n1")], vec![]);
    w.add(replicated("web", 5));
    let web = w.store.service("web").cloned().expect("web");
    w.add_all([
        task("new", &web, 1).state(TaskState::New, 0),
        task("assigned", &web, 2).on("n1").state(TaskState::Assigned, 0),
        task("placed", &web, 3).on("n1"),
        task("stopping", &web, 4).desired(TaskState::Shutdown),
        task("wanted", &web, 5),
    ]);
    let orphan = Task { service_id: "gone".into(), ..task("orphan", &web, 1) };
    w.add(orphan);
    assert_eq!(plan(&w), ["wanted -> n1"]);
}

#[test]
fn an_assignment_sets_node_and_status_and_keeps_the_version_read() {
    let w = world(vec![node("n1")], vec![(replicated("web", 1), 1)]);
    let before = w.store.task("web1").cloned().expect("web1");
    let p = schedule(&w.store, NOW);
    let status = TaskStatus {
        state: TaskState::Assigned as i32,
        timestamp_ms: NOW,
        message: SCHEDULED_MESSAGE.into(),
        ..TaskStatus::default()
    };
    let want = Op {
        kind: Some(op::Kind::AssignTask(shoal_api::v1::TaskAssignment {
            task_id: "web1".into(),
            version: before.meta.as_ref().map_or(0, |m| m.version),
            node_id: "n1".into(),
            status: Some(status.clone()),
        })),
    };
    assert_eq!(p.assignments, [want]);
    assert!(p.unschedulable.is_empty());
    let mut w = w;
    w.apply(p.assignments);
    // Only the node and the status changed.
    let after = w.store.task("web1").cloned().expect("web1");
    assert_eq!((after.node_id.as_str(), after.status.as_ref()), ("n1", Some(&status)));
    assert_eq!((after.spec, after.desired_state, after.slot), (before.spec, before.desired_state, before.slot));
    assert_eq!(plan(&w), Vec::<String>::new());
}

#[test]
fn unschedulable_messages_are_written_only_when_they_change() {
    let mut w = world(vec![node("n1").resources(CPU, GIB)], vec![(replicated("web", 1).reserve(0, 2 * GIB), 1)]);
    let p = schedule(&w.store, NOW);
    let updates = unschedulable_updates(&w.store, &p.unschedulable);
    assert_eq!(describe(&updates), ["update web1 node=- desired=running state=pending"]);
    w.apply(updates);
    let message = |w: &World| w.store.task("web1").and_then(|t| t.status.clone()).map(|s| s.message);
    assert_eq!(message(&w).as_deref(), Some("no suitable node (insufficient memory on 1 node)"));
    let again = schedule(&w.store, NOW + 1);
    assert_eq!(again.unschedulable, p.unschedulable);
    assert!(unschedulable_updates(&w.store, &again.unschedulable).is_empty());
    // A new reason is written; a task that meanwhile left PENDING is not touched.
    w.add(node("n2").state(NodeState::Down));
    let third = schedule(&w.store, NOW + 2);
    assert_eq!(describe(&unschedulable_updates(&w.store, &third.unschedulable)).len(), 1);
    let stale = [Unschedulable { task_id: "web1".into(), reason: "other".into() }];
    w.edit_task("web1", |t| t.node_id = "n1".into());
    assert!(unschedulable_updates(&w.store, &stale).is_empty());
}

#[test]
fn an_unparsable_stored_constraint_is_a_reason() {
    let mut w = world(vec![node("n1")], vec![]);
    // Written around validation, as a bug elsewhere could.
    let mut s = replicated("web", 1);
    s.template().placement =
        Some(shoal_api::v1::Placement { constraints: vec!["node.color==red".into()], ..Default::default() });
    add_pending(&mut w, s, 1);
    let p = schedule(&w.store, NOW);
    assert!(p.assignments.is_empty());
    assert_eq!(p.unschedulable.len(), 1);
    assert!(
        p.unschedulable[0].reason.starts_with("no suitable node (invalid placement constraint \"node.color==red\""),
        "{}",
        p.unschedulable[0].reason
    );
}

#[test]
fn only_progress_of_placed_tasks_gives_placement_no_work() {
    use shoal_api::v1::{Event, EventAction, Object};
    let svc = replicated("web", 1);
    let event = |action: EventAction, o: Object| Event { action: action as i32, object: Some(o), version: 1 };
    let placed = task("t1", &svc, 1).on("n1").state(TaskState::Running, 5);
    let progress = event(EventAction::Update, placed.clone().into());
    assert!(!crate::may_place(&[progress.clone(), progress.clone()]), "tasks on a node making progress");
    assert!(!crate::may_place(&[]));
    let cases: Vec<(&str, Event)> = vec![
        ("a task waiting for a node", event(EventAction::Create, task("t2", &svc, 2).into())),
        ("a placed task that ended", event(EventAction::Update, placed.clone().state(TaskState::Failed, 6).into())),
        ("a deleted task", event(EventAction::Delete, placed.clone().into())),
        ("a node", event(EventAction::Update, node("n2").into())),
        ("a service", event(EventAction::Update, svc.clone().into())),
    ];
    for (what, e) in cases {
        assert!(crate::may_place(&[progress.clone(), e]), "{what} may give placement work");
    }
}
