//! Data-driven tests of each op and error kind, meta stamping, results, events and atomicity.

use shoal_api::v1::{object, EventAction, Meta, Object, ObjectKind, ObjectRef, Op};

use super::fixtures::*;
use crate::record::Record;

enum Want {
    /// Succeeds with these event actions, in op order.
    Ok(&'static [EventAction]),
    /// Fails with this error kind.
    Err(&'static str),
}

use EventAction::{Create, Delete, Update};
use ObjectKind as K;

fn cases() -> Vec<(&'static str, Vec<Op>, Want)> {
    vec![
        // create
        ("create service", vec![create(service("s2", "api", 0))], Want::Ok(&[Create])),
        ("create service with taken id", vec![create(service("s1", "api", 0))], Want::Err("exists")),
        ("create service with taken name", vec![create(service("s2", "web", 0))], Want::Err("exists")),
        ("create service with empty id", vec![create(service("", "api", 0))], Want::Err("invalid")),
        ("create service with empty name", vec![create(service("s2", "", 0))], Want::Err("invalid")),
        ("create network with taken name", vec![create(network("net2", "front", 0))], Want::Err("exists")),
        ("create secret with taken name", vec![create(secret("sec2", "pw", 0))], Want::Err("exists")),
        ("create config with taken name", vec![create(config("cfg2", "conf", 0))], Want::Err("exists")),
        ("create config with empty name", vec![create(config("cfg2", "", 0))], Want::Err("invalid")),
        ("names are per kind", vec![create(network("net2", "web", 0))], Want::Ok(&[Create])),
        ("create node with taken hostname", vec![create(node("n3", "host-1", 0))], Want::Ok(&[Create])),
        ("create node with taken id", vec![create(node("n1", "host-9", 0))], Want::Err("exists")),
        ("create task with taken id", vec![create(task("t1", "s1", "n1", 3, 0))], Want::Err("exists")),
        ("create task with empty id", vec![create(task("", "s1", "n1", 3, 0))], Want::Err("invalid")),
        ("create second cluster", vec![create(cluster("c2", 0))], Want::Err("exists")),
        ("create same cluster again", vec![create(cluster("c1", 0))], Want::Err("exists")),
        ("create object without kind", vec![create(Object { kind: None })], Want::Err("invalid")),
        (
            "create object without meta",
            vec![create(Object { kind: Some(object::Kind::Task(Default::default())) })],
            Want::Err("invalid"),
        ),
        ("empty op", vec![Op { kind: None }], Want::Err("invalid")),
        // update
        ("update service at read version", vec![update(service("s1", "web", 10))], Want::Ok(&[Update])),
        ("update service at stale version", vec![update(service("s1", "web", 9))], Want::Err("conflict")),
        ("update service at version 0", vec![update(service("s1", "web", 0))], Want::Err("conflict")),
        ("update missing service", vec![update(service("s9", "web", 10))], Want::Err("not_found")),
        ("update service with empty id", vec![update(service("", "web", 10))], Want::Err("invalid")),
        ("rename service to a free name", vec![update(service("s1", "api", 10))], Want::Ok(&[Update])),
        (
            "rename network to a taken name",
            vec![create(network("net2", "back", 0)), update(network("net2", "front", 11))],
            Want::Err("exists"),
        ),
        ("update node", vec![update(node("n1", "host-1b", 10))], Want::Ok(&[Update])),
        ("update cluster", vec![update(cluster("c1", 10))], Want::Ok(&[Update])),
        ("update other cluster", vec![update(cluster("c2", 10))], Want::Err("not_found")),
        ("update task at stale version", vec![update(task("t1", "s1", "n2", 1, 3))], Want::Err("conflict")),
        // delete
        ("delete service any version", vec![delete(K::Service, "s1", 0)], Want::Ok(&[Delete])),
        ("delete service at read version", vec![delete(K::Service, "s1", 10)], Want::Ok(&[Delete])),
        ("delete service at stale version", vec![delete(K::Service, "s1", 9)], Want::Err("conflict")),
        ("delete missing service", vec![delete(K::Service, "s9", 0)], Want::Err("not_found")),
        ("delete service by its name", vec![delete(K::Service, "web", 0)], Want::Err("not_found")),
        ("delete with empty id", vec![delete(K::Node, "", 0)], Want::Err("invalid")),
        ("delete unspecified kind", vec![delete(K::Unspecified, "s1", 0)], Want::Err("invalid")),
        (
            "delete unknown kind",
            vec![Op {
                kind: Some(shoal_api::v1::op::Kind::Delete(ObjectRef { kind: 99, id: "s1".into(), version: 0 })),
            }],
            Want::Err("invalid"),
        ),
        ("delete wrong kind", vec![delete(K::Task, "s1", 0)], Want::Err("not_found")),
        ("delete cluster", vec![delete(K::Cluster, "c1", 0)], Want::Ok(&[Delete])),
        ("delete twice", vec![delete(K::Secret, "sec1", 0), delete(K::Secret, "sec1", 0)], Want::Err("not_found")),
        // upsert
        ("upsert new service", vec![upsert(service("s2", "api", 0))], Want::Ok(&[Create])),
        ("upsert existing service at stale version", vec![upsert(service("s1", "web2", 3))], Want::Ok(&[Update])),
        ("upsert service onto taken name", vec![upsert(service("s2", "web", 0))], Want::Err("exists")),
        ("upsert service with empty name", vec![upsert(service("s1", "", 0))], Want::Err("invalid")),
        ("upsert second cluster", vec![upsert(cluster("c2", 0))], Want::Err("exists")),
        ("upsert the cluster", vec![upsert(cluster("c1", 0))], Want::Ok(&[Update])),
        (
            "upsert node",
            vec![upsert(node("n1", "host-1", 0)), upsert(node("n9", "host-9", 0))],
            Want::Ok(&[Update, Create]),
        ),
        // batches
        (
            "create then update in one batch",
            vec![create(service("s2", "api", 0)), update(service("s2", "api2", 11))],
            Want::Ok(&[Create, Update]),
        ),
        (
            "rename frees the name for the next op",
            vec![update(service("s1", "api", 10)), create(service("s2", "web", 0))],
            Want::Ok(&[Update, Create]),
        ),
        (
            "delete frees the name for the next op",
            vec![delete(K::Config, "cfg1", 0), create(config("cfg2", "conf", 0))],
            Want::Ok(&[Delete, Create]),
        ),
        (
            "delete then create the cluster",
            vec![delete(K::Cluster, "c1", 0), create(cluster("c2", 0))],
            Want::Ok(&[Delete, Create]),
        ),
        (
            "second op reads a version the first changed",
            vec![update(service("s1", "web", 10)), update(service("s1", "web", 10))],
            Want::Err("conflict"),
        ),
        ("empty command", vec![], Want::Ok(&[])),
    ]
}

#[test]
fn each_op_succeeds_or_fails_with_its_error_kind() {
    for (name, ops, want) in cases() {
        let mut store = base();
        let mut before = store.clone();
        let (result, events) = store.apply(11, &cmd(11_000, ops.clone()));
        assert_eq!(result.version, 11, "{name}");
        assert_eq!(store.version(), 11, "{name}");
        check_indexes(&store).unwrap_or_else(|e| panic!("{name}: {e}"));
        match want {
            Want::Ok(actions) => {
                assert_eq!(result.error, "", "{name}: {}", shoal_api::names::refusal(result.refusal()));
                assert_eq!(shoal_api::names::refusal(result.refusal()), "", "{name}");
                let got: Vec<i32> = events.iter().map(|e| e.action).collect();
                let want: Vec<i32> = actions.iter().map(|a| *a as i32).collect();
                assert_eq!(got, want, "{name}: event actions");
                assert!(events.iter().all(|e| e.version == 11 && e.object.is_some()), "{name}: event versions");
                let written = actions.iter().filter(|a| **a != Delete).count();
                assert_eq!(result.objects.len(), written, "{name}: result objects");
                // Every stored object carries the command's version and time.
                for o in &result.objects {
                    let m = object_meta(o).unwrap_or_else(|| panic!("{name}: stored object without meta"));
                    assert_eq!((m.version, m.updated_at_ms), (11, 11_000), "{name}: stamps");
                }
            }
            Want::Err(kind) => {
                assert_eq!(shoal_api::names::refusal(result.refusal()), kind, "{name}: {}", result.error);
                assert!(!result.error.is_empty(), "{name}: no message");
                assert!(events.is_empty(), "{name}: events of a failed command");
                assert!(result.objects.is_empty(), "{name}: objects of a failed command");
                before.version = 11;
                assert_eq!(store, before, "{name}: a failed command changed the store");
            }
        }
    }
}

#[test]
fn error_messages_are_lower_case_without_trailing_period() {
    for (name, ops, want) in cases() {
        if let Want::Err(_) = want {
            let (result, _) = base().apply(11, &cmd(11_000, ops));
            let first = result.error.chars().next();
            assert!(first.is_some_and(|c| !c.is_uppercase()), "{name}: {:?}", result.error);
            assert!(!result.error.ends_with('.'), "{name}: {:?}", result.error);
        }
    }
}

#[test]
fn error_messages_say_what_and_what_to_do() {
    let cases = [
        (
            update(service("s1", "web", 7)),
            "service \"web\" changed since it was read (version 7, now 10): read it again and retry",
        ),
        (
            delete(K::Node, "n1", 3),
            "node \"host-1\" changed since it was read (version 3, now 10): read it again and retry",
        ),
        (update(service("s9", "web", 1)), "service \"s9\" not found"),
        (create(service("s1", "api", 0)), "service \"s1\" already exists"),
        (
            create(service("s2", "web", 0)),
            "service name \"web\" is already used by service \"s1\": choose another name",
        ),
        (create(cluster("c2", 0)), "cluster \"c1\" already exists: there is only one cluster"),
        (create(secret("sec2", "", 0)), "secret \"sec2\" has an empty name"),
    ];
    for (op, want) in cases {
        let (result, _) = base().apply(11, &cmd(11_000, vec![op]));
        assert_eq!(result.error, want);
    }
}

#[test]
fn create_stamps_version_and_times() {
    let mut store = base();
    let (result, events) = apply_ok(&mut store, 11, vec![create(service("s2", "api", 99))]);
    let s = store.service("s2").expect("created");
    let m = s.meta.as_ref().expect("meta");
    assert_eq!((m.version, m.created_at_ms, m.updated_at_ms), (11, 11_000, 11_000));
    let stored = Object { kind: Some(object::Kind::Service(s.clone())) };
    assert_eq!(result.objects, vec![stored.clone()]);
    assert_eq!(events[0].object, Some(stored));
}

#[test]
fn update_and_upsert_keep_created_at() {
    let mut store = base();
    apply_ok(&mut store, 11, vec![update(service("s1", "web", 10)), upsert(node("n1", "host-1", 0))]);
    let m = store.service("s1").and_then(|s| s.meta.clone()).expect("meta");
    assert_eq!((m.version, m.created_at_ms, m.updated_at_ms), (11, 10_000, 11_000));
    let m = store.node("n1").and_then(|n| n.meta.clone()).expect("meta");
    assert_eq!((m.version, m.created_at_ms, m.updated_at_ms), (11, 10_000, 11_000));
    // Untouched objects keep their stamps.
    let m = store.node("n2").and_then(|n| n.meta.clone()).expect("meta");
    assert_eq!((m.version, m.updated_at_ms), (10, 10_000));
}

#[test]
fn results_follow_op_order_and_omit_deletes() {
    let mut store = base();
    let (result, events) = apply_ok(
        &mut store,
        11,
        vec![create(secret("sec2", "pw2", 0)), delete(K::Task, "t2", 0), upsert(node("n1", "host-1", 0))],
    );
    let ids: Vec<&str> = result.objects.iter().map(object_id).collect();
    assert_eq!(ids, ["sec2", "n1"]);
    let ids: Vec<&str> = events.iter().filter_map(|e| e.object.as_ref()).map(object_id).collect();
    assert_eq!(ids, ["sec2", "t2", "n1"]);
    // A delete's event carries the object as it was.
    let Some(object::Kind::Task(t)) = events[1].object.as_ref().and_then(|o| o.kind.as_ref()) else {
        panic!("delete event without its task: {:?}", events[1]);
    };
    assert_eq!((t.slot, t.meta.as_ref().map(|m| m.version)), (2, Some(10)));
}

fn object_meta(o: &Object) -> Option<&Meta> {
    match o.kind.as_ref()? {
        object::Kind::Cluster(x) => Record::meta(x),
        object::Kind::Node(x) => Record::meta(x),
        object::Kind::Service(x) => Record::meta(x),
        object::Kind::Task(x) => Record::meta(x),
        object::Kind::Network(x) => Record::meta(x),
        object::Kind::Secret(x) => Record::meta(x),
        object::Kind::Config(x) => Record::meta(x),
    }
}

fn object_id(o: &Object) -> &str {
    object_meta(o).map_or("", |m| m.id.as_str())
}

#[test]
fn batch_whose_third_op_fails_leaves_the_store_as_before() {
    let mut store = base();
    let mut before = store.clone();
    let ops = vec![
        create(service("s2", "api", 0)),
        update(task("t1", "s2", "n2", 4, 10)),
        delete(K::Network, "net1", 0),
        create(config("cfg2", "conf", 0)),
    ];
    let (result, events) = store.apply(11, &cmd(11_000, ops));
    assert_eq!(shoal_api::names::refusal(result.refusal()), "exists");
    assert!(events.is_empty());
    before.version = 11;
    assert_eq!(store, before);
    assert!(store.service("s2").is_none());
    assert_eq!(ids(store.tasks_by_node("n1")), ["t1"]);
    assert!(store.tasks_by_node("n2").next().is_none());
    assert!(store.network_by_name("front").is_some());
    check_indexes(&store).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn failed_and_empty_commands_still_advance_the_version() {
    let mut store = base();
    let (result, _) = store.apply(11, &cmd(0, vec![delete(K::Service, "nope", 0)]));
    assert_eq!((shoal_api::names::refusal(result.refusal()), result.version, store.version()), ("not_found", 11, 11));
    let (result, events) = store.apply(12, &cmd(0, vec![]));
    assert_eq!((result.error.as_str(), events.len(), store.version()), ("", 0, 12));
}

#[test]
fn deleting_a_service_keeps_its_tasks() {
    let mut store = base();
    apply_ok(&mut store, 11, vec![delete(K::Service, "s1", 10)]);
    assert!(store.service("s1").is_none());
    assert!(store.service_by_name("web").is_none());
    assert_eq!(ids(store.tasks_by_service("s1")), ["t1", "t2"]);
    // The name is free again.
    apply_ok(&mut store, 12, vec![create(service("s2", "web", 0))]);
    assert_eq!(store.service_by_name("web").map(Record::id), Some("s2"));
}

#[test]
fn networks_never_share_a_vni_or_an_address() {
    let net = |id: &str, name: &str, subnet: &str, vni: u32| {
        let mut o = network(id, name, 0);
        if let Some(object::Kind::Network(n)) = o.kind.as_mut() {
            n.subnet = subnet.into();
            n.vni = vni;
        }
        o
    };
    let mut store = crate::Store::new();
    apply_ok(&mut store, 1, vec![create(net("a", "a", "10.0.0.0/24", 4096))]);
    for (what, o, wanted) in [
        ("same subnet", net("b", "b", "10.0.0.0/24", 4097), Some("overlaps network \"a\"")),
        ("subnet inside", net("b", "b", "10.0.0.128/25", 4097), Some("overlaps network \"a\"")),
        ("subnet around", net("b", "b", "10.0.0.0/16", 4097), Some("overlaps network \"a\"")),
        ("same vni", net("b", "b", "10.0.1.0/24", 4096), Some("already has VXLAN id 4096")),
        ("neither", net("b", "b", "10.0.1.0/24", 4097), None),
    ] {
        let (r, _) = store.clone().apply(2, &cmd(1, vec![create(o)]));
        match wanted {
            Some(msg) => {
                assert_eq!(r.refusal(), shoal_api::v1::Refusal::Exists, "{what}: {}", r.error);
                assert!(r.error.contains(msg), "{what}: {}", r.error);
            }
            None => assert!(r.error.is_empty(), "{what}: {}", r.error),
        }
    }
    // A network updated in place does not collide with itself.
    let mut again = net("a", "a", "10.0.0.0/24", 4096);
    if let Some(object::Kind::Network(n)) = again.kind.as_mut() {
        n.meta.as_mut().expect("meta").version = 1;
    }
    let (r, _) = store.apply(2, &cmd(1, vec![update(again)]));
    assert!(r.error.is_empty(), "{}", r.error);
}
