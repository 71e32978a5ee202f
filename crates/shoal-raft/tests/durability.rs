//! Durability of the Raft storage: acknowledged appends and votes survive `kill -9` of the
//! process, purge/truncate survive a reopen, and committed entries are re-applied at restart.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use common::{create_config, store_image, test_params, Cluster};
use openraft::storage::StorageHelper;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use shoal_raft::{LogStore, Request, TypeConfig};

const CRASH_DIR_ENV: &str = "SHOAL_RAFT_CRASH_DIR";
const ENTRIES: u64 = 50;
/// Printed by the child once its writes are acknowledged (libtest may prefix the line).
const ACKED: &str = "shoal-raft-crash-child: writes acknowledged";

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry { log_id: log_id(2, index), payload: EntryPayload::Normal(Request::one(create_config(index, 10_000))) }
}

async fn open_log(dir: &Path) -> LogStore {
    shoal_raft::open(dir).await.expect("open").0
}

/// Runs in a child process started by `append_and_vote_survive_kill_9`: writes, reports that
/// the writes were acknowledged, then waits to be killed.
#[tokio::test]
#[ignore = "helper process of append_and_vote_survive_kill_9"]
async fn crash_child_writes_then_waits() {
    let dir = std::env::var(CRASH_DIR_ENV).expect("run by append_and_vote_survive_kill_9");
    let mut log = open_log(Path::new(&dir)).await;
    log.save_vote(&Vote::new(7, 1)).await.expect("save vote");
    log.blocking_append((1..=ENTRIES).map(entry)).await.expect("append");
    println!("{ACKED}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    panic!("not killed");
}

#[tokio::test]
async fn append_and_vote_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Process::new(exe)
        .args(["crash_child_writes_then_waits", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(ACKED) {
                let _ = tx.send(());
            }
        }
    });
    let acked = rx.recv_timeout(Duration::from_secs(60));
    // SIGKILL: nothing in the child gets to flush anything.
    child.kill().expect("kill -9 child");
    child.wait().expect("reap child");
    acked.expect("child acknowledged its writes");

    let mut log = open_log(tmp.path()).await;
    assert_eq!(log.read_vote().await.expect("read vote"), Some(Vote::new(7, 1)));
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(2, ENTRIES)));
    let entries = log.try_get_log_entries(1..=ENTRIES).await.expect("entries");
    assert_eq!(entries.len() as u64, ENTRIES);
    for (e, want) in entries.iter().zip(1..=ENTRIES) {
        assert_eq!(e.log_id, log_id(2, want));
        match &e.payload {
            EntryPayload::Normal(r) => assert_eq!(r, &Request::one(create_config(want, 10_000))),
            other => panic!("entry {want} has payload {other:?}"),
        }
    }
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let mut log = open_log(tmp.path()).await;
        log.blocking_append((1..=10).map(entry)).await.expect("append");
        log.purge(log_id(2, 3)).await.expect("purge");
        log.truncate(log_id(2, 8)).await.expect("truncate");
        log.save_committed(Some(log_id(2, 6))).await.expect("save committed");
    }
    let mut log = open_log(tmp.path()).await;
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
    assert_eq!(state.last_log_id, Some(log_id(2, 7)));
    let indexes: Vec<u64> =
        log.try_get_log_entries(0..100).await.expect("entries").iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![4, 5, 6, 7]);
    assert_eq!(log.read_committed().await.expect("committed"), Some(log_id(2, 6)));
}

#[tokio::test]
async fn replication_reads_a_prefix_that_fits_one_request() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = open_log(tmp.path()).await;
    let big = |index: u64, payload: usize| Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Normal(Request::one(create_config(index, payload))),
    };
    // 1..=10 small, 11..=20 of 60 kB each, 21 of 400 kB.
    let entries: Vec<_> =
        (1..=10).map(|i| big(i, 100)).chain((11..=20).map(|i| big(i, 60_000))).chain([big(21, 400_000)]).collect();
    log.blocking_append(entries).await.expect("append");
    let encoded =
        |es: &[Entry<TypeConfig>]| es.iter().map(|e| serde_json::to_vec(e).map_or(0, |v| v.len())).sum::<usize>();

    let small = log.limited_get_log_entries(1, 11).await.expect("read");
    assert_eq!(
        small.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "small entries all at once"
    );

    let large = log.limited_get_log_entries(11, 22).await.expect("read");
    let indexes: Vec<u64> = large.iter().map(|e| e.log_id.index).collect();
    assert!(!indexes.is_empty() && indexes.len() < 10, "a prefix of the large entries: {indexes:?}");
    assert_eq!(indexes, (11..11 + indexes.len() as u64).collect::<Vec<_>>(), "in order from the start");
    // JSON carries the payload as base64 (4/3 of the binary form): a generous upper bound.
    assert!(encoded(&large) < 2 * (256 << 10), "within one request's budget");

    let huge = log.limited_get_log_entries(21, 22).await.expect("read");
    assert_eq!(huge.len(), 1, "an entry larger than the budget still goes, alone");
}

#[tokio::test]
async fn a_dropped_log_store_lets_go_of_its_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = open_log(tmp.path()).await;
    log.blocking_append((1..=10).map(entry)).await.expect("append");
    let clone = log.clone();
    drop(log);
    drop(clone);
    // sled locks its database while any handle is open, the flush thread's included: opening
    // it directly (no retry) works only if that thread ended with the last store.
    let db = sled::Config::new().path(tmp.path().join("log")).open().expect("the log database is free again");
    assert!(db.open_tree("logs").expect("logs tree").len() == 10, "the appended entries are on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_entries_are_reapplied_at_restart() {
    let mut c = Cluster::start(1, test_params()).await;
    let mut last = 0;
    for i in 0..20 {
        last = c.write(create_config(i, 100)).await.log_id.index;
    }
    let node = c.node(1);
    common::wait_until("the last write to be applied", common::DEADLINE, || {
        (node.applied_index() >= last).then_some(())
    })
    .await;
    let image = store_image(&node.store);
    assert!(!image.is_empty());
    let dir = c.dir(1);
    c.kill(1);

    // Reopen without Raft and run only openraft's startup recovery: the state can only come
    // from re-applying the committed entries (there is no snapshot yet).
    let (mut log, mut sm, store) = shoal_raft::open(&dir).await.expect("reopen");
    assert_eq!(*store.applied().borrow(), 0, "no snapshot: nothing applied before recovery");
    StorageHelper::new(&mut log, &mut sm).get_initial_state().await.expect("initial state");
    assert_eq!(*store.applied().borrow(), last, "committed entries re-applied");
    assert_eq!(store_image(&store), image, "state equals the state before the restart");
}
