//! Index maintenance: tasks moving between services, nodes and slots; names following renames.

use shoal_api::v1::ObjectKind as K;

use super::fixtures::*;
use crate::record::Record;
use crate::Store;

fn checked(store: &Store) {
    check_indexes(store).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn task_indexes_follow_moves_between_nodes_slots_and_services() {
    let mut store = base();
    assert_eq!(ids(store.tasks_by_service("s1")), ["t1", "t2"]);
    assert_eq!(ids(store.tasks_by_node("n1")), ["t1"]);
    assert_eq!(ids(store.unassigned_tasks()), ["t2"], "a task without a node is unassigned");
    assert_eq!(ids(store.tasks_by_slot("s1", 2)), ["t2"]);

    // t1 moves to n2 and slot 3; t2 is assigned to n1.
    apply_ok(&mut store, 11, vec![update(task("t1", "s1", "n2", 3, 10)), update(task("t2", "s1", "n1", 2, 10))]);
    checked(&store);
    assert_eq!(ids(store.tasks_by_node("n1")), ["t2"]);
    assert_eq!(ids(store.tasks_by_node("n2")), ["t1"]);
    assert!(store.unassigned_tasks().next().is_none(), "every task has a node now");
    assert!(store.tasks_by_slot("s1", 1).next().is_none());
    assert_eq!(ids(store.tasks_by_slot("s1", 3)), ["t1"]);

    // A replacement task in the same slot: the slot keeps its history.
    apply_ok(&mut store, 12, vec![create(task("t3", "s1", "n1", 3, 0))]);
    checked(&store);
    assert_eq!(ids(store.tasks_by_slot("s1", 3)), ["t1", "t3"]);
    assert_eq!(ids(store.tasks_by_node("n1")), ["t2", "t3"]);

    // t1 changes service and loses its node.
    apply_ok(&mut store, 13, vec![upsert(task("t1", "s2", "", 3, 0))]);
    checked(&store);
    assert_eq!(ids(store.tasks_by_service("s1")), ["t2", "t3"]);
    assert_eq!(ids(store.tasks_by_service("s2")), ["t1"]);
    assert_eq!(ids(store.tasks_by_slot("s1", 3)), ["t3"]);
    assert_eq!(ids(store.tasks_by_slot("s2", 3)), ["t1"]);
    assert!(store.tasks_by_node("n2").next().is_none());

    // Deleting removes a task from every index.
    apply_ok(&mut store, 14, vec![delete(K::Task, "t3", 0), delete(K::Task, "t2", 0)]);
    checked(&store);
    assert_eq!(ids(store.tasks_by_service("s1")), Vec::<&str>::new());
    assert!(store.tasks_by_node("n1").next().is_none());
    assert_eq!(ids(store.tasks()), ["t1"]);
}

#[test]
fn name_indexes_follow_renames_and_deletes() {
    let mut store = base();
    apply_ok(&mut store, 11, vec![update(service("s1", "api", 10)), update(secret("sec1", "token", 10))]);
    checked(&store);
    assert!(store.service_by_name("web").is_none());
    assert_eq!(store.service_by_name("api").map(Record::id), Some("s1"));
    assert!(store.secret_by_name("pw").is_none());
    assert_eq!(store.secret_by_name("token").map(Record::id), Some("sec1"));

    apply_ok(&mut store, 12, vec![delete(K::Network, "net1", 10), create(network("net2", "front", 0))]);
    checked(&store);
    assert_eq!(store.network_by_name("front").map(Record::id), Some("net2"));
    assert_eq!(store.networks().map(Record::id).collect::<Vec<_>>(), ["net2"]);

    // Upsert can rename, too.
    apply_ok(&mut store, 13, vec![upsert(config("cfg1", "conf2", 0))]);
    checked(&store);
    assert!(store.config_by_name("conf").is_none());
    assert_eq!(store.config_by_name("conf2").map(Record::id), Some("cfg1"));
}

#[test]
fn reads_return_objects_sorted_by_id() {
    let mut store = Store::new();
    apply_ok(
        &mut store,
        1,
        vec![
            create(node("nb", "b", 0)),
            create(node("na", "a", 0)),
            create(service("sb", "b", 0)),
            create(service("sa", "a", 0)),
            create(task("tb", "sa", "na", 1, 0)),
            create(task("ta", "sa", "na", 1, 0)),
        ],
    );
    assert_eq!(store.nodes().map(Record::id).collect::<Vec<_>>(), ["na", "nb"]);
    assert_eq!(store.services().map(Record::id).collect::<Vec<_>>(), ["sa", "sb"]);
    assert_eq!(ids(store.tasks_by_slot("sa", 1)), ["ta", "tb"]);
    assert!(store.cluster().is_none());
}
