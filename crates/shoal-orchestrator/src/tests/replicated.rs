//! Replicated services: creating slots, scaling up and down, duplicates, spec changes, jobs.

use shoal_api::v1::{Annotations, Meta, NodeState, Object, Op, Task, TaskState::*, TaskStatus};
use shoal_scheduler::testing::*;

use super::{expect, new_ids, pass, stored};
use crate::{reconcile, CREATED_MESSAGE};

const NOW: i64 = 100_000;

fn world(services: Vec<shoal_api::v1::Service>) -> World {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2"), node("n3")]);
    w.add_all(services);
    w
}

#[test]
fn a_new_service_gets_one_pending_task_per_slot() {
    let mut w = world(vec![replicated("web", 3)]);
    expect(
        &mut w,
        NOW,
        &[
            "create web.1 node=- desired=running state=pending",
            "create web.2 node=- desired=running state=pending",
            "create web.3 node=- desired=running state=pending",
        ],
    );
}

#[test]
fn a_created_task_carries_template_version_name_and_status() {
    let w = world(vec![replicated("web", 1).reserve(CPU, GIB)]);
    let web = stored(&w, "web");
    let ops = reconcile(&w.store, NOW, &mut new_ids());
    let want = Task {
        meta: Some(Meta { id: "new1".into(), ..Meta::default() }),
        service_id: "web".into(),
        slot: 1,
        node_id: String::new(),
        spec: web.spec.as_ref().and_then(|s| s.task_template.clone()),
        spec_version: web.meta.as_ref().map_or(0, |m| m.version),
        desired_state: Running as i32,
        status: Some(TaskStatus {
            state: Pending as i32,
            timestamp_ms: NOW,
            message: CREATED_MESSAGE.into(),
            ..TaskStatus::default()
        }),
        annotations: Some(Annotations { name: "web.1".into(), ..Annotations::default() }),
        networks: Vec::new(),
        host_ports: Vec::new(),
    };
    assert!(web.meta.as_ref().is_some_and(|m| m.version > 0));
    assert_eq!(ops, [Op { kind: Some(shoal_api::v1::op::Kind::Create(Object::from(want))) }]);
}

#[test]
fn a_new_task_carries_the_host_mode_ports_and_joins_ingress_for_the_others() {
    use shoal_api::v1::{port_config::PublishMode, EndpointSpec, PortConfig};
    let mut svc = replicated("web", 1);
    if let Some(spec) = svc.spec.as_mut() {
        spec.endpoint_spec = Some(EndpointSpec {
            ports: vec![
                PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    publish_mode: PublishMode::Host as i32,
                    ..Default::default()
                },
                PortConfig {
                    target_port: 81,
                    published_port: 8081,
                    publish_mode: PublishMode::Ingress as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
    }
    let mut local = svc.clone();
    if let Some(p) = local.spec.as_mut().and_then(|s| s.endpoint_spec.as_mut()).and_then(|e| e.ports.get_mut(1)) {
        p.traffic = shoal_api::v1::port_config::Traffic::Local as i32;
    }
    let ingress = shoal_api::v1::Network {
        meta: Some(shoal_api::v1::Meta { id: "ing".into(), ..Default::default() }),
        spec: Some(shoal_api::v1::NetworkSpec {
            annotations: Some(Annotations { name: "ingress".into(), ..Default::default() }),
            ingress: true,
            ..Default::default()
        }),
        subnet: "10.255.0.0/16".into(),
        gateway: "10.255.0.1".into(),
        vni: 4096,
    };
    let mut w = world(vec![svc]);
    w.add(ingress.clone());
    let ops = reconcile(&w.store, NOW, &mut new_ids());
    let created: Vec<&Task> = ops
        .iter()
        .filter_map(|o| match o.kind.as_ref() {
            Some(shoal_api::v1::op::Kind::Create(Object { kind: Some(shoal_api::v1::object::Kind::Task(t)) })) => {
                Some(t)
            }
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].host_ports.iter().map(|p| p.published_port).collect::<Vec<_>>(), [8080]);
    assert_eq!(
        created[0].networks,
        [shoal_api::v1::NetworkAttachment { network_id: "ing".into(), ..Default::default() }],
        "the ingress network without an address (the allocator's to give)"
    );
    assert!(!created[0].networks_attached(), "the scheduler waits for it");

    let mut w = world(vec![local]);
    w.add(ingress);
    let ops = reconcile(&w.store, NOW, &mut new_ids());
    let joined = ops.iter().any(|o| {
        matches!(o.kind.as_ref(), Some(shoal_api::v1::op::Kind::Create(Object { kind: Some(shoal_api::v1::object::Kind::Task(t)) })) if !t.networks.is_empty())
    });
    assert!(!joined, "traffic=local reaches the node's own tasks through the host, not the ingress network");
}

#[test]
fn full_slots_need_nothing() {
    let mut w = world(vec![replicated("web", 2)]);
    let web = stored(&w, "web");
    w.add_all([task("t1", &web, 1).on("n1").state(Running, 0), task("t2", &web, 2)]);
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
}

#[test]
fn scale_up_fills_the_lowest_free_slots() {
    let mut w = world(vec![replicated("web", 4)]);
    let web = stored(&w, "web");
    w.add_all([
        task("t2", &web, 2).on("n1").state(Running, 0),
        task("t5", &web, 5).on("n2").state(Running, 0),
        // History in slot 1 does not hold the slot.
        task("old", &web, 1).on("n1").state(Shutdown, 0).desired(Shutdown),
    ]);
    expect(
        &mut w,
        NOW,
        &["create web.1 node=- desired=running state=pending", "create web.3 node=- desired=running state=pending"],
    );
}

#[test]
fn scale_up_skips_slots_whose_task_is_still_stopping() {
    let mut w = world(vec![replicated("web", 3)]);
    let web = stored(&w, "web");
    w.add_all([
        task("t1", &web, 1).on("n1").state(Running, 0),
        // Scaled away a moment ago: told to stop, its container still running on a live node.
        task("t2", &web, 2).on("n2").state(Running, 0).desired(Shutdown),
        // Scaled away and gone.
        task("t3", &web, 3).on("n3").state(Shutdown, 0).desired(Shutdown),
    ]);
    expect(
        &mut w,
        NOW,
        &["create web.3 node=- desired=running state=pending", "create web.4 node=- desired=running state=pending"],
    );
}

#[test]
fn a_slot_stopping_on_a_down_node_is_free_again() {
    let mut w = World::new();
    w.add_all([node("n1"), node("n2").state(NodeState::Down)]);
    w.add_all([replicated("web", 2)]);
    let web = stored(&w, "web");
    w.add_all([
        task("t1", &web, 1).on("n1").state(Running, 0),
        task("t2", &web, 2).on("n2").state(Running, 0).desired(Shutdown),
    ]);
    // Nothing will report t2 stopped: the slot is not held for it.
    let out = pass(&w, NOW);
    assert!(out.contains(&"create web.2 node=- desired=running state=pending".to_string()), "{out:?}");
}

#[test]
fn scale_down_removes_from_the_most_crowded_nodes() {
    let mut w = world(vec![replicated("web", 3)]);
    let web = stored(&w, "web");
    w.add_all([
        task("w1", &web, 1).on("n1").state(Running, 0),
        task("w2", &web, 2).on("n1").state(Running, 0),
        task("w3", &web, 3).on("n1").state(Running, 0),
        task("w4", &web, 4).on("n2").state(Running, 0),
        task("w5", &web, 5).on("n3").state(Running, 0),
    ]);
    // n1 holds three: two of them go (higher slots first), leaving one per node.
    expect(
        &mut w,
        NOW,
        &["update w2 node=n1 desired=shutdown state=running", "update w3 node=n1 desired=shutdown state=running"],
    );
}

#[test]
fn scale_down_rebalances_ties_by_slot_and_prefers_tasks_not_yet_running() {
    let mut w = world(vec![replicated("web", 3)]);
    let web = stored(&w, "web");
    w.add_all([
        task("w1", &web, 1).on("n1").state(Running, 0),
        task("w2", &web, 2).on("n1").state(Running, 0),
        task("w3", &web, 3).on("n2").state(Preparing, 0),
        task("w4", &web, 4).on("n2").state(Running, 0),
        task("w5", &web, 5).on("n3").state(Running, 0),
    ]);
    // n1 and n2 both hold two: w3 goes first (not running yet, despite its lower slot), then n1
    // is the most crowded and its higher slot goes.
    expect(
        &mut w,
        NOW,
        &["update w2 node=n1 desired=shutdown state=running", "update w3 node=n2 desired=shutdown state=preparing"],
    );
}

#[test]
fn scale_down_removes_slots_without_a_running_task_first() {
    let mut w = world(vec![replicated("web", 2)]);
    let web = stored(&w, "web");
    w.add_all([
        task("t1", &web, 1).on("n1").state(Running, 0),
        task("t2", &web, 2),
        // Ended, waiting for its restart delay.
        task("t3", &web, 3).on("n2").state(Failed, NOW - 1),
        task("t4", &web, 4).on("n1").state(Running, 0),
    ]);
    // The pending task never reached a node: no agent will stop it, so it is SHUTDOWN at once.
    expect(
        &mut w,
        NOW,
        &["update t2 node=- desired=shutdown state=shutdown", "update t3 node=n2 desired=shutdown state=failed"],
    );
}

#[test]
fn scale_to_zero_shuts_everything_down() {
    let mut w = world(vec![replicated("web", 0)]);
    let web = stored(&w, "web");
    w.add_all([task("t1", &web, 1).on("n1").state(Running, 0), task("t2", &web, 2).on("n2").state(Assigned, 0)]);
    expect(
        &mut w,
        NOW,
        &["update t1 node=n1 desired=shutdown state=running", "update t2 node=n2 desired=shutdown state=assigned"],
    );
}

#[test]
fn a_slot_keeps_one_runnable_task() {
    let mut w = world(vec![replicated("web", 1)]);
    let web = stored(&w, "web");
    w.add_all([
        task("a", &web, 1),
        task("b", &web, 1).on("n1").state(Running, 0),
        task("c", &web, 1).on("n2").state(Assigned, 0),
    ]);
    expect(
        &mut w,
        NOW,
        &["update a node=- desired=shutdown state=shutdown", "update c node=n2 desired=shutdown state=assigned"],
    );
}

#[test]
fn a_spec_change_does_not_replace_running_tasks() {
    let mut w = world(vec![replicated("web", 2)]);
    let web = stored(&w, "web");
    w.add_all([task("t1", &web, 1).on("n1").state(Running, 0), task("t2", &web, 2).on("n2").state(Running, 0)]);
    w.edit_service("web", |s| {
        s.template().container.get_or_insert_with(Default::default).image = "nginx:2".into();
    });
    let newer = stored(&w, "web");
    assert!(newer.meta.as_ref().map(|m| m.version) > web.meta.as_ref().map(|m| m.version));
    // Rolling updates belong to the update supervisor (future work).
    assert_eq!(pass(&w, NOW), Vec::<String>::new());
}

#[test]
fn a_job_task_on_a_lost_node_runs_again() {
    let mut w = world(vec![replicated_job("batch", 3)]);
    let batch = stored(&w, "batch");
    w.add(task("t1", &batch, 1).on("n1").state(Running, 0));
    w.edit_node("n1", |n| n.status.get_or_insert_with(Default::default).state = NodeState::Down as i32);
    let ops = pass(&w, NOW);
    assert_eq!(ops[0], "update t1 node=n1 desired=shutdown state=orphaned");
    assert!(ops.contains(&"create batch.1 node=- desired=running state=pending".to_string()), "{ops:?}");
}

#[test]
fn slot_zero_is_not_a_replicated_slot() {
    let mut w = world(vec![replicated("web", 1)]);
    let web = stored(&w, "web");
    w.add_all([task("g", &web, 0).on("n1").state(Running, 0), task("t1", &web, 1).on("n2").state(Running, 0)]);
    expect(&mut w, NOW, &["update g node=n1 desired=shutdown state=running"]);
}

#[test]
fn a_pending_task_someone_shut_down_is_settled() {
    let mut w = world(vec![replicated("web", 1)]);
    let web = stored(&w, "web");
    w.add_all([
        task("t1", &web, 1).on("n1").state(Running, 0),
        // Shut down by a user before the scheduler placed it: no agent will report on it.
        task("t2", &web, 1).desired(Shutdown),
    ]);
    expect(&mut w, NOW, &["update t2 node=- desired=shutdown state=shutdown"]);
}
