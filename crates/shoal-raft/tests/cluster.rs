//! In-process Raft clusters over real loopback gRPC: failover, catch-up by log and by chunked
//! snapshot, membership changes, and forced recovery of a lone survivor.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use common::{config_ids, store_image, test_params, wait_until, Cluster, DEADLINE};
use openraft::{BasicNode, ServerState};
use shoal_raft::RaftParams;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_new_leader_elected_and_no_acknowledged_write_lost() {
    let mut c = Cluster::start(3, test_params()).await;
    let mut acked = c.write_configs(0..20, 64).await;

    let old = c.wait_leader().await;
    c.kill(old);

    let new = c.wait_leader().await;
    assert_ne!(new, old, "a surviving node must lead");
    acked.extend(c.write_configs(20..40, 64).await);

    for id in c.nodes.keys().copied().collect::<Vec<_>>() {
        c.wait_has(id, &acked).await;
    }
    c.wait_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_by_log() {
    let mut c = Cluster::start(3, test_params()).await;
    let mut acked = c.write_configs(0..10, 64).await;
    let leader = c.wait_leader().await;
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");

    c.kill(follower);
    acked.extend(c.write_configs(10..40, 64).await);
    c.start_node(follower).await;

    c.wait_has(follower, &acked).await;
    c.wait_converged().await;
    let m = c.node(follower).metrics();
    assert_eq!(m.snapshot, None, "no compaction happened: the follower must have caught up by log");
    assert_eq!(c.node(follower).rpcs.install_snapshot.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_compacted_log_catches_up_by_chunked_snapshot() {
    const PAYLOAD: usize = 128 << 10;
    const CHUNK: u64 = 256 << 10;
    let params =
        RaftParams { snapshot_interval_entries: 10, log_entries_kept: 2, snapshot_chunk_bytes: CHUNK, ..test_params() };
    let mut c = Cluster::start(3, params).await;
    let mut acked = c.write_configs(0..3, 64).await;
    let leader = c.wait_leader().await;
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("a follower");
    let behind = c.node(follower).metrics().last_log_index.expect("follower has a log");

    c.kill(follower);
    // 40 x 128 KiB: a state of more than 4 MiB.
    acked.extend(c.write_configs(3..43, PAYLOAD).await);
    // A snapshot of everything, so the follower gets all of the > 4 MiB state in one transfer.
    // On a loaded machine the leader may change meanwhile, and the new one applies an entry of
    // its own after the snapshot: then the snapshot is taken again, on whoever leads.
    let mut leader = c.wait_leader().await;
    let started = std::time::Instant::now();
    loop {
        c.node(leader).raft.trigger().snapshot().await.expect("trigger snapshot");
        let caught = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let m = c.node(leader).metrics();
                if m.snapshot.is_some() && m.snapshot == m.last_applied {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        if caught.is_ok() {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "no snapshot of all writes on the leader in {DEADLINE:?}");
        leader = c.wait_leader().await;
    }
    wait_until("the leader to purge the entries the follower lacks", DEADLINE, || {
        let purged = c.node(leader).metrics().purged?;
        (purged.index > behind).then_some(())
    })
    .await;
    let image_len = store_image(&c.node(leader).store).len();
    assert!(image_len > 4 << 20, "state is {image_len} bytes, want > 4 MiB");

    c.start_node(follower).await;
    c.wait_has(follower, &acked).await;
    c.wait_converged().await;

    let m = c.node(follower).metrics();
    let snap = m.snapshot.expect("the follower must have installed a snapshot");
    assert!(snap.index > behind);
    let chunks = c.node(follower).rpcs.install_snapshot.load(Ordering::Relaxed);
    let min_chunks = image_len / CHUNK as usize;
    assert!(chunks >= min_chunks, "{chunks} snapshot chunks received, want at least {min_chunks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_added_promoted_to_voter_then_a_voter_removed() {
    let mut c = Cluster::start(3, test_params()).await;
    let mut acked = c.write_configs(0..5, 64).await;

    let addr4 = c.start_node(4).await.addr.clone();
    let leader = c.wait_leader().await;
    c.node(leader).raft.add_learner(4, BasicNode::new(addr4), true).await.expect("add learner");
    c.wait_has(4, &acked).await;
    assert_eq!(c.node(4).metrics().state, ServerState::Learner);

    c.node(leader).raft.change_membership(BTreeSet::from([1, 2, 3, 4]), false).await.expect("promote 4");
    wait_until("node 4 to be a voter everywhere", DEADLINE, || {
        c.nodes
            .values()
            .all(|n| n.metrics().membership_config.voter_ids().collect::<BTreeSet<_>>() == BTreeSet::from([1, 2, 3, 4]))
            .then_some(())
    })
    .await;
    acked.extend(c.write_configs(5..10, 64).await);
    c.wait_has(4, &acked).await;

    let leader = c.wait_leader().await;
    let removed = *c.nodes.keys().find(|id| **id != leader && **id != 4).expect("a follower to remove");
    let remaining: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != removed).collect();
    c.node(leader).raft.change_membership(remaining.clone(), false).await.expect("remove a voter");
    wait_until("the removed voter to leave the membership", DEADLINE, || {
        let m = c.node(leader).metrics();
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let nodes: BTreeSet<u64> = m.membership_config.nodes().map(|(id, _)| *id).collect();
        (voters == remaining && !nodes.contains(&removed)).then_some(())
    })
    .await;
    c.kill(removed);
    acked.extend(c.write_configs(10..15, 64).await);
    for id in remaining {
        c.wait_has(id, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_makes_a_lone_survivor_leader_with_its_state() {
    // Compaction on, so recovery starts from a snapshot and re-applies the log after it.
    let params = RaftParams { snapshot_interval_entries: 10, log_entries_kept: 2, ..test_params() };
    let mut c = Cluster::start(3, params).await;
    let mut acked = c.write_configs(0..25, 64).await;
    c.wait_converged().await;
    let survivor = 1;
    let before = config_ids(&c.node(survivor).store);
    assert!(c.node(survivor).metrics().snapshot.is_some(), "survivor must have a snapshot");

    c.kill(2);
    c.kill(3);
    c.kill(survivor);
    let addr = c.addrs[&survivor].clone();
    let recovered = shoal_raft::force_new_cluster(&c.dir(survivor), survivor, BasicNode::new(addr))
        .await
        .expect("force new cluster");
    assert!(recovered.index >= 25, "recovered at {recovered}, the 25 writes are committed");

    // No initialize(): the node must elect itself from the rewritten state.
    c.start_node(survivor).await;
    let leader = c.wait_leader().await;
    assert_eq!(leader, survivor);
    let m = c.node(survivor).metrics();
    assert_eq!(m.membership_config.voter_ids().collect::<BTreeSet<_>>(), BTreeSet::from([survivor]));
    assert!(m.current_term > recovered.leader_id.term, "a new term after the forced election");
    let after = config_ids(&c.node(survivor).store);
    assert!(before.is_subset(&after), "state lost by recovery");
    c.wait_has(survivor, &acked).await;

    acked.extend(c.write_configs(25..30, 64).await);
    c.wait_has(survivor, &acked).await;
}
