//! Builders for objects, ops and commands, and the brute-force index check the tests share.

use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{
    object, op, Annotations, Cluster, Command, CommandResult, Config, ConfigSpec, Event, Meta, Network, NetworkSpec,
    Node, NodeDescription, Object, ObjectKind, ObjectRef, Op, Secret, SecretSpec, Service, ServiceSpec, Task,
};

use crate::record::{Record, Table, TaskIndex};
use crate::Store;

pub(crate) fn meta(id: &str, version: u64) -> Option<Meta> {
    Some(Meta { id: id.to_owned(), version, ..Meta::default() })
}

fn annotations(name: &str) -> Option<Annotations> {
    Some(Annotations { name: name.to_owned(), ..Annotations::default() })
}

pub(crate) fn cluster(id: &str, version: u64) -> Object {
    let c = Cluster { meta: meta(id, version), name: "default".to_owned(), ..Cluster::default() };
    Object { kind: Some(object::Kind::Cluster(c)) }
}

pub(crate) fn node(id: &str, hostname: &str, version: u64) -> Object {
    let description = Some(NodeDescription { hostname: hostname.to_owned(), ..NodeDescription::default() });
    let n = Node { meta: meta(id, version), description, ..Node::default() };
    Object { kind: Some(object::Kind::Node(n)) }
}

pub(crate) fn service(id: &str, name: &str, version: u64) -> Object {
    let spec = Some(ServiceSpec { annotations: annotations(name), ..ServiceSpec::default() });
    Object { kind: Some(object::Kind::Service(Service { meta: meta(id, version), spec, ..Service::default() })) }
}

pub(crate) fn task(id: &str, service_id: &str, node_id: &str, slot: u64, version: u64) -> Object {
    let t = Task {
        meta: meta(id, version),
        service_id: service_id.to_owned(),
        node_id: node_id.to_owned(),
        slot,
        ..Task::default()
    };
    Object { kind: Some(object::Kind::Task(t)) }
}

pub(crate) fn network(id: &str, name: &str, version: u64) -> Object {
    let spec = Some(NetworkSpec { annotations: annotations(name), ..NetworkSpec::default() });
    Object { kind: Some(object::Kind::Network(Network { meta: meta(id, version), spec, ..Network::default() })) }
}

pub(crate) fn secret(id: &str, name: &str, version: u64) -> Object {
    let spec = Some(SecretSpec { annotations: annotations(name), data: b"s3cr3t".to_vec() });
    Object { kind: Some(object::Kind::Secret(Secret { meta: meta(id, version), spec })) }
}

pub(crate) fn config(id: &str, name: &str, version: u64) -> Object {
    let spec = Some(ConfigSpec { annotations: annotations(name), data: b"key=value".to_vec() });
    Object { kind: Some(object::Kind::Config(Config { meta: meta(id, version), spec })) }
}

pub(crate) fn create(o: Object) -> Op {
    Op { kind: Some(op::Kind::Create(o)) }
}

pub(crate) fn update(o: Object) -> Op {
    Op { kind: Some(op::Kind::Update(o)) }
}

pub(crate) fn upsert(o: Object) -> Op {
    Op { kind: Some(op::Kind::Upsert(o)) }
}

pub(crate) fn delete(kind: ObjectKind, id: &str, version: u64) -> Op {
    Op { kind: Some(op::Kind::Delete(ObjectRef { kind: kind.into(), id: id.to_owned(), version })) }
}

pub(crate) fn cmd(now_ms: i64, ops: Vec<Op>) -> Command {
    Command { now_ms, ops }
}

/// Applies a command that must succeed.
pub(crate) fn apply_ok(store: &mut Store, version: u64, ops: Vec<Op>) -> (CommandResult, Vec<Event>) {
    let (result, events) = store.apply(version, &cmd(1_000 * version as i64, ops));
    assert_eq!(
        result.error,
        "",
        "command at version {version} failed ({})",
        shoal_api::names::refusal(result.refusal())
    );
    (result, events)
}

/// The base store most tests start from, at version 10 (now_ms 10 000): cluster `c1`; nodes `n1`
/// (host-1), `n2` (host-2); service `s1` "web" with tasks `t1` (n1, slot 1) and `t2` (unassigned,
/// slot 2); network `net1` "front"; secret `sec1` "pw"; config `cfg1` "conf".
pub(crate) fn base() -> Store {
    let mut store = Store::new();
    apply_ok(
        &mut store,
        10,
        vec![
            create(cluster("c1", 0)),
            create(node("n1", "host-1", 0)),
            create(node("n2", "host-2", 0)),
            create(service("s1", "web", 0)),
            create(task("t1", "s1", "n1", 1, 0)),
            create(task("t2", "s1", "", 2, 0)),
            create(network("net1", "front", 0)),
            create(secret("sec1", "pw", 0)),
            create(config("cfg1", "conf", 0)),
        ],
    );
    store
}

/// Recomputes one table's name index from its objects.
fn brute_names<T: Record>(table: &Table<T>) -> Result<BTreeMap<String, String>, String> {
    let mut names = BTreeMap::new();
    if T::NAMED {
        for (id, rec) in &table.items {
            if let Some(other) = names.insert(rec.name().to_owned(), id.clone()) {
                return Err(format!("{}s {other} and {id} share name {:?}", T::TAG.name(), rec.name()));
            }
        }
    }
    Ok(names)
}

fn check_table<T: Record>(table: &Table<T>) -> Result<(), String> {
    for (id, rec) in &table.items {
        if id != rec.id() {
            return Err(format!("{} stored under {id} has id {}", T::TAG.name(), rec.id()));
        }
        if id.is_empty() {
            return Err(format!("{} with an empty id", T::TAG.name()));
        }
    }
    let names = brute_names(table)?;
    if names != table.names {
        return Err(format!("{} name index {:?} != recomputed {:?}", T::TAG.name(), table.names, names));
    }
    Ok(())
}

/// Recomputes the task indexes from the tasks, independently of `Table::put`.
fn brute_tasks(tasks: &BTreeMap<String, Task>) -> TaskIndex {
    let mut by_service: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_slot: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for (id, t) in tasks {
        by_service.entry(t.service_id.clone()).or_default().insert(id.clone());
        by_node.entry(t.node_id.clone()).or_default().insert(id.clone());
        by_slot.entry((t.service_id.clone(), t.slot)).or_default().insert(id.clone());
    }
    let mut counts: BTreeMap<String, crate::record::TaskCounts> = BTreeMap::new();
    for t in tasks.values() {
        let desired = matches!(t.desired_state(), shoal_api::v1::TaskState::Ready | shoal_api::v1::TaskState::Running);
        let running = desired && t.status.as_ref().is_some_and(|s| s.state == shoal_api::v1::TaskState::Running as i32);
        if desired {
            let c = counts.entry(t.service_id.clone()).or_default();
            c.desired += 1;
            c.running += u64::from(running);
        }
    }
    TaskIndex { by_service, by_node, by_slot, counts }
}

/// Checks every index against a brute-force recomputation from the objects.
pub(crate) fn check_indexes(store: &Store) -> Result<(), String> {
    check_table(&store.clusters)?;
    check_table(&store.nodes)?;
    check_table(&store.services)?;
    check_table(&store.tasks)?;
    check_table(&store.networks)?;
    check_table(&store.secrets)?;
    check_table(&store.configs)?;
    if store.clusters.items.len() > 1 {
        return Err(format!("{} clusters", store.clusters.items.len()));
    }
    let want = brute_tasks(&store.tasks.items);
    if want != store.tasks.extra {
        return Err(format!("task indexes {:?} != recomputed {:?}", store.tasks.extra, want));
    }
    Ok(())
}

/// The ids an iterator of tasks yields, in order.
pub(crate) fn ids<'a>(tasks: impl Iterator<Item = &'a Task>) -> Vec<&'a str> {
    tasks.map(Record::id).collect()
}
