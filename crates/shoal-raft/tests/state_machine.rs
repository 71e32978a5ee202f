//! The state machine adapter: responses, events and the applied index of each apply; snapshots
//! that survive a reopen; a corrupt snapshot refusing to open.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{config_ids, create_config, store_image};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use shoal_raft::{Request, TypeConfig};

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn normal(index: u64, config: u64) -> Entry<TypeConfig> {
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Request::one(create_config(config, 10))) }
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let nodes = BTreeMap::from([(1, BasicNode::new("a:1"))]);
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], nodes)),
    }
}

#[tokio::test]
async fn each_command_of_a_batch_is_applied_on_its_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm, store) = shoal_raft::open(tmp.path()).await.expect("open");
    let mut events = store.events();
    // The second command creates what the first did: refused alone, the others still apply.
    let batch = Request(vec![create_config(1, 10), create_config(1, 10), create_config(2, 10)]);
    let replies = sm.apply([Entry { log_id: log_id(5), payload: EntryPayload::Normal(batch) }]).await.expect("apply");
    assert_eq!(replies.len(), 1);
    let results = &replies[0].0;
    assert_eq!(results.len(), 3, "one result per command, in order");
    assert!(results[0].error.is_empty(), "{}", results[0].error);
    assert_eq!(results[1].refusal(), shoal_api::v1::Refusal::Exists);
    assert!(results[2].error.is_empty(), "{}", results[2].error);
    assert!(results.iter().all(|r| r.version == 5), "every command applies at the entry's index");
    assert_eq!(config_ids(&store), BTreeSet::from([common::config_id(1), common::config_id(2)]));
    let change = events.try_recv().expect("one event batch");
    let shoal_raft::Change::Applied(evs) = &*change else { panic!("applied events expected, got {change:?}") };
    assert_eq!(evs.len(), 2, "the refused command has no event");
}

#[tokio::test]
async fn apply_answers_each_entry_and_publishes_events_and_applied_index() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm, store) = shoal_raft::open(tmp.path()).await.expect("open");
    let mut events = store.events();
    let applied = store.applied();
    assert_eq!(*applied.borrow(), 0);

    let blank = Entry { log_id: log_id(1), payload: EntryPayload::Blank };
    let replies = sm.apply([blank, normal(2, 7), membership(3), normal(4, 7)]).await.expect("apply");

    assert_eq!(replies.len(), 4);
    assert!(replies[0].0.is_empty(), "blank entry: no result");
    assert_eq!(replies[1].0.len(), 1, "one result per command");
    assert!(replies[1].0[0].error.is_empty(), "{}", replies[1].0[0].error);
    assert_eq!(replies[1].0[0].version, 2, "the store applies at the entry's log index");
    assert_eq!(replies[1].0[0].objects.len(), 1);
    assert!(replies[2].0.is_empty(), "membership entry: no result");
    assert_eq!(
        replies[3].0[0].refusal(),
        shoal_api::v1::Refusal::Exists,
        "the same create twice is refused by the store"
    );

    assert_eq!(*applied.borrow(), 4);
    let batch = events.try_recv().expect("one event batch");
    let shoal_raft::Change::Applied(batch) = &*batch else { panic!("applied events expected, got {batch:?}") };
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].version, 2);
    assert!(events.try_recv().is_err(), "one message per apply batch");

    let (last, members) = sm.applied_state().await.expect("applied state");
    assert_eq!(last, Some(log_id(4)));
    assert_eq!(members.log_id(), &Some(log_id(3)));
    assert_eq!(config_ids(&store), BTreeSet::from([common::config_id(7)]));
}

#[tokio::test]
async fn built_snapshot_is_loaded_at_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, meta) = {
        let (_log, mut sm, store) = shoal_raft::open(tmp.path()).await.expect("open");
        sm.apply([membership(1), normal(2, 1), normal(3, 2)]).await.expect("apply");
        let image = store_image(&store);
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(snap.meta.last_log_id, Some(log_id(3)));
        // Applied after the snapshot, and the log is not replayed here: gone after a reopen.
        sm.apply([normal(4, 3)]).await.expect("apply");
        assert_eq!(sm.get_current_snapshot().await.expect("current").map(|s| s.meta), Some(snap.meta.clone()));
        (image, snap.meta)
    };
    let (_log, mut sm, store) = shoal_raft::open(tmp.path()).await.expect("reopen");
    assert_eq!(*store.applied().borrow(), 3);
    assert_eq!(config_ids(&store), BTreeSet::from([common::config_id(1), common::config_id(2)]));
    assert_eq!(store_image(&store), image);
    assert_eq!(sm.applied_state().await.expect("state").0, Some(log_id(3)));
    assert_eq!(sm.get_current_snapshot().await.expect("current").map(|s| s.meta), Some(meta));
}

#[tokio::test]
async fn corrupt_snapshot_refuses_to_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let (_log, mut sm, _store) = shoal_raft::open(tmp.path()).await.expect("open");
        sm.apply([membership(1), normal(2, 1)]).await.expect("apply");
        sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    }
    let path = tmp.path().join("snapshot.bin");
    let mut data = std::fs::read(&path).expect("read snapshot");
    data.truncate(data.len() - 5);
    std::fs::write(&path, data).expect("corrupt snapshot");
    let err = shoal_raft::open(tmp.path()).await.err().expect("a corrupt snapshot must not open as an empty store");
    assert!(err.to_string().contains("snapshot"), "{err}");
}
