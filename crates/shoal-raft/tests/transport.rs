//! The gRPC transport on its own: how failures are classified for openraft, peer health, and
//! what the service answers without a Raft instance or to garbage.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{create_config, store_image, test_params, TestNode};
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, ServerState, Vote};
use shoal_api::v1::raft_client::RaftClient;
use shoal_api::v1::RaftMessage;
use shoal_raft::{plain_channels, Network, RaftNode, RaftService, Request, TypeConfig};
use tokio::sync::watch;

fn vote_request() -> VoteRequest<u64> {
    VoteRequest::new(Vote::new(1, 99), None::<LogId<u64>>)
}

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(2))
}

/// A free loopback address nobody listens on.
async fn closed_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

#[tokio::test]
async fn peer_without_server_is_unreachable() {
    let mut net = Network::new(plain_channels());
    let mut client = net.new_client(7, &BasicNode::new(closed_addr().await)).await;
    let err = client.vote(vote_request(), option()).await.expect_err("nobody listens");
    assert!(matches!(err, RPCError::Unreachable(_)), "got {err:?}");
    assert!(!net.health().reachable(7, Duration::from_secs(60)));
}

#[tokio::test]
async fn server_without_raft_answers_unavailable_and_client_sees_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_slot_tx, slot_rx) = watch::channel::<Option<RaftNode>>(None);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftService::new(slot_rx, Default::default()).into_server())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let mut raw = RaftClient::connect(format!("http://{addr}")).await.expect("connect");
    let status = raw.vote(RaftMessage { data: b"{}".to_vec() }).await.expect_err("no raft");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "raft is not running on this node");

    let mut net = Network::new(plain_channels());
    let mut client = net.new_client(3, &BasicNode::new(addr)).await;
    let err = client.vote(vote_request(), option()).await.expect_err("no raft");
    assert!(matches!(err, RPCError::Unreachable(_)), "got {err:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_peer_answers_records_health_and_rejects_garbage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(1, tmp.path(), None, &test_params()).await;
    node.raft.initialize(BTreeMap::from([(1, BasicNode::new(node.addr.clone()))])).await.expect("initialize");

    let mut net = Network::new(plain_channels());
    let mut client = net.new_client(1, &BasicNode::new(node.addr.clone())).await;
    let resp = client.vote(vote_request(), option()).await.expect("vote answered");
    assert!(!resp.vote_granted, "a candidate with an empty log gets no vote");
    assert!(net.health().reachable(1, Duration::from_secs(60)));
    assert!(!net.health().reachable(2, Duration::from_secs(60)));

    let mut raw = RaftClient::connect(format!("http://{}", node.addr)).await.expect("connect");
    let status = raw.append_entries(RaftMessage { data: b"not json".to_vec() }).await.expect_err("garbage");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_follows_a_changed_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(1, tmp.path(), None, &test_params()).await;
    let mut net = Network::new(plain_channels());

    let mut stale = net.new_client(1, &BasicNode::new(closed_addr().await)).await;
    assert!(stale.vote(vote_request(), option()).await.is_err());

    let mut fresh = net.new_client(1, &BasicNode::new(node.addr.clone())).await;
    fresh.vote(vote_request(), option()).await.expect("new address is used");
}

/// openraft 0.9 sends a follower no heartbeats while streaming it a snapshot; the service turns
/// each chunk into a lease refresh so a slow transfer does not make the follower campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_snapshot_transfer_keeps_the_follower_loyal_and_installs() {
    const LEADER: u64 = 1;
    const FOLLOWER: u64 = 2;
    let tmp = tempfile::tempdir().expect("tempdir");

    // The snapshot the test, acting as leader 1 at term 5, will send: state at index 10.
    let log_id = |index| LogId::new(CommittedLeaderId::new(5, LEADER), index);
    let (_, mut source, source_store) = shoal_raft::open(&tmp.path().join("source")).await.expect("open source");
    let members = BTreeMap::from([(LEADER, BasicNode::new(closed_addr().await)), (FOLLOWER, BasicNode::new("unused"))]);
    let mut entries = vec![Entry::<TypeConfig> {
        log_id: log_id(1),
        payload: EntryPayload::Membership(Membership::new(vec![members.keys().copied().collect()], members.clone())),
    }];
    entries.extend(
        (2..=10)
            .map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Normal(Request::one(create_config(i, 1000))) }),
    );
    source.apply(entries).await.expect("apply");
    let snapshot = source.get_snapshot_builder().await.build_snapshot().await.expect("build snapshot");
    let data = snapshot.snapshot.into_inner();

    // The follower: a member of {1, 2} that has never heard from leader 1.
    let follower = TestNode::start(FOLLOWER, &tmp.path().join("follower"), None, &test_params()).await;
    let mut members = members;
    members.insert(FOLLOWER, BasicNode::new(follower.addr.clone()));
    follower.raft.initialize(members).await.expect("initialize");

    let mut net = Network::new(plain_channels());
    let mut client = net.new_client(FOLLOWER, &BasicNode::new(follower.addr.clone())).await;
    let vote = Vote::new_committed(5, LEADER);
    let heartbeat = AppendEntriesRequest { vote, prev_log_id: None, entries: Vec::new(), leader_commit: None };
    client.append_entries(heartbeat, option()).await.expect("heartbeat accepted");
    let loyal = |what: &str| {
        let m = follower.metrics();
        assert_eq!((m.vote, m.current_leader, m.state), (vote, Some(LEADER), ServerState::Follower), "{what}");
    };
    loyal("after the heartbeat");

    // 30 chunks 100 ms apart: 3 s, far beyond the follower's lease + election timeout (< 1.2 s).
    let chunk = data.len().div_ceil(30);
    let mut offset = 0;
    for piece in data.chunks(chunk) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        loyal(&format!("while receiving the chunk at {offset}"));
        let done = offset + piece.len() == data.len();
        let req = InstallSnapshotRequest {
            vote,
            meta: snapshot.meta.clone(),
            offset: offset as u64,
            data: piece.to_vec(),
            done,
        };
        let resp = client.install_snapshot(req, option()).await.expect("chunk accepted");
        assert_eq!(resp.vote, vote);
        offset += piece.len();
    }
    loyal("after the transfer");
    common::wait_until("the snapshot to be installed", common::DEADLINE, || {
        (follower.applied_index() == 10).then_some(())
    })
    .await;
    assert_eq!(store_image(&follower.store), store_image(&source_store));
}
