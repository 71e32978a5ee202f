//! Snapshots: encode -> decode gives the same store; malformed images are refused.

use shoal_api::v1::{object, Object, ObjectKind as K, StoreSnapshot};

use super::fixtures::*;
use crate::record::Record;
use crate::{Store, StoreError};

fn unwrap_service(o: Object) -> shoal_api::v1::Service {
    match o.kind {
        Some(object::Kind::Service(s)) => s,
        other => panic!("not a service: {other:?}"),
    }
}

#[test]
fn encode_then_decode_gives_an_equal_store() {
    let mut store = base();
    apply_ok(&mut store, 11, vec![update(task("t2", "s1", "n2", 2, 10)), delete(K::Secret, "sec1", 0)]);
    store.apply(12, &cmd(12_000, vec![delete(K::Node, "missing", 0)]));
    let bytes = store.encode_snapshot();
    let back = Store::decode_snapshot(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, store);
    assert_eq!(back.version(), 12);
    assert_eq!(ids(back.tasks_by_node("n2")), ["t2"]);
    assert_eq!(back.encode_snapshot(), bytes);
    assert_eq!(Store::decode_snapshot(&Store::new().encode_snapshot()), Ok(Store::new()));
}

#[test]
fn snapshot_lists_objects_sorted_by_id() {
    let mut store = Store::new();
    apply_ok(
        &mut store,
        5,
        vec![create(service("b", "x", 0)), create(service("c", "y", 0)), create(service("a", "z", 0))],
    );
    let snap = store.snapshot();
    assert_eq!(snap.services.iter().map(Record::id).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(snap.version, 5);
    assert!(snap.cluster.is_none());
}

#[test]
fn restore_refuses_images_apply_could_not_produce() {
    let good = base().snapshot();
    let s2 = |name: &str| unwrap_service(service("s2", name, 1));
    let mut dup_id = good.clone();
    dup_id.nodes.push(dup_id.nodes[0].clone());
    let mut dup_name = good.clone();
    dup_name.services.push(s2("web"));
    let mut empty_id = good.clone();
    empty_id.tasks.push(Default::default());
    let mut empty_name = good.clone();
    empty_name.services.push(s2(""));
    let mut cluster_without_id = good.clone();
    cluster_without_id.cluster = Some(Default::default());
    let cases: [(StoreSnapshot, StoreError); 5] = [
        (dup_id, StoreError::DuplicateId { kind: "node", id: "n1".into() }),
        (
            dup_name,
            StoreError::DuplicateName { kind: "service", name: "web".into(), first: "s1".into(), second: "s2".into() },
        ),
        (empty_id, StoreError::EmptyId { kind: "task" }),
        (empty_name, StoreError::EmptyName { kind: "service", id: "s2".into() }),
        (cluster_without_id, StoreError::EmptyId { kind: "cluster" }),
    ];
    for (snap, want) in cases {
        assert_eq!(Store::restore(snap), Err(want));
    }
    assert_eq!(Store::restore(good), Ok(base()));
}

#[test]
fn decode_refuses_bytes_that_are_not_a_snapshot() {
    let got = Store::decode_snapshot(b"\xff\xff\xff\xff not protobuf");
    assert!(matches!(got, Err(StoreError::Decode(_))), "{got:?}");
    assert_eq!(got.map(|_| ()).map_err(|e| e.to_string()), Err("cannot decode the store snapshot".to_owned()));
}
