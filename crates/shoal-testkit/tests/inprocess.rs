//! In-process nodes on loopback (real gRPC, real Raft, real sled): joining, promotion and
//! demotion, worker liveness, node removal, and a restarted manager catching up by log and by
//! snapshot.

use std::time::Duration;

use anyhow::{Context, Result};
use shoal_api::v1::{self, *};
use shoal_testkit::{control, init_logging, wait_until, InProcessNode};

const T: Duration = Duration::from_secs(30);

async fn node(root: &std::path::Path, name: &str) -> Result<InProcessNode> {
    InProcessNode::start_in(root, name).await
}

async fn init(n: &InProcessNode, settings: Option<ClusterSettings>) -> Result<()> {
    n.init(settings).await
}

async fn token(n: &InProcessNode, role: NodeRole) -> Result<String> {
    n.join_token(role).await
}

async fn join(n: &InProcessNode, token: &str, via: &InProcessNode) -> Result<()> {
    n.join(token, via).await?;
    Ok(())
}

async fn nodes(host: &str) -> Option<Vec<NodeView>> {
    Some(control(host).await.ok()?.list_nodes(ListNodesRequest {}).await.ok()?.into_inner().nodes)
}

fn find<'a>(views: &'a [NodeView], hostname: &str) -> Option<&'a v1::Node> {
    views
        .iter()
        .filter_map(|v| v.node.as_ref())
        .find(|n| n.description.as_ref().is_some_and(|d| d.hostname == hostname))
}

/// The role (OU) in the node's current certificate.
fn cert_role(n: &InProcessNode) -> Option<String> {
    let pem = std::fs::read_to_string(n.dir.join("pki/node.crt")).ok()?;
    shoal_pki::identity_from_pem(&pem).ok().map(|i| i.role.to_string())
}

async fn voters(host: &str) -> Option<usize> {
    let i = control(host).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
    i.raft.map(|r| r.voters.len())
}

fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations { name: name.into(), ..Default::default() }),
        task_template: Some(TaskSpec {
            container: Some(ContainerSpec { image: "img:1".into(), ..Default::default() }),
            ..Default::default()
        }),
        mode: Some(service_spec::Mode::Replicated(ReplicatedService { replicas: 1 })),
        ..Default::default()
    }
}

async fn create(host: &str, name: &str) -> Result<()> {
    control(host).await?.create_service(CreateServiceRequest { spec: Some(spec(name)) }).await?;
    Ok(())
}

async fn service_count(host: &str) -> Option<usize> {
    Some(control(host).await.ok()?.list_services(ListServicesRequest {}).await.ok()?.into_inner().services.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_promote_demote_and_remove() -> Result<()> {
    init_logging();
    let root = tempfile::tempdir()?;
    let m1 = node(root.path(), "m1").await?;
    let w1 = node(root.path(), "w1").await?;
    let w2 = node(root.path(), "w2").await?;
    init(&m1, None).await?;
    let wt = token(&m1, NodeRole::Worker).await?;
    join(&w1, &wt, &m1).await?;
    join(&w2, &wt, &m1).await?;
    let h = m1.host();

    // Workers heartbeat and become ready.
    wait_until(T, "both workers ready", || async {
        let v = nodes(&h).await?;
        ["w1", "w2"]
            .iter()
            .all(|w| find(&v, w).is_some_and(|n| n.status.as_ref().is_some_and(|s| s.state() == NodeState::Ready)))
            .then_some(())
    })
    .await?;

    // A worker token cannot make a manager, and a garbled or foreign token is refused.
    let other_root = tempfile::tempdir()?;
    let stranger = node(other_root.path(), "stranger").await?;
    let e = join(&stranger, "SHTKN-1-abc", &m1).await.expect_err("garbled token");
    assert!(e.to_string().contains("malformed join token"), "{e}");
    let foreign = format!("SHTKN-1-{}-{}", "0".repeat(25), wt.rsplit('-').next().unwrap_or(""));
    let e = join(&stranger, &foreign, &m1).await.expect_err("foreign token");
    assert!(e.to_string().contains("another cluster"), "{e}");

    // Promote w1: it starts raft, catches up as a learner and becomes a voter.
    let mut ctl = control(&h).await?;
    let w1_node = find(&nodes(&h).await.context("nodes")?, "w1").cloned().context("w1")?;
    let mut spec = w1_node.spec.clone().unwrap_or_default();
    spec.desired_role = NodeRole::Manager as i32;
    ctl.update_node(UpdateNodeRequest { node: "w1".into(), version: 0, spec: Some(spec) }).await?;
    wait_until(T, "w1 to be a voter", || async { (voters(&h).await? == 2).then_some(()) }).await?;
    wait_until(T, "w1 listed as manager", || async {
        let v = nodes(&h).await?;
        (find(&v, "w1")?.role() == NodeRole::Manager).then_some(())
    })
    .await?;
    // Its certificate was reissued with the new role.
    assert_eq!(cert_role(&w1).as_deref(), Some("manager"));
    // The new manager serves reads of the replicated state.
    create(&h, "web").await?;
    let wh = w1.host();
    wait_until(T, "w1 to see the service", || async { (service_count(&wh).await? == 1).then_some(()) }).await?;

    // Demote it again: membership shrinks and the node becomes a worker.
    let w1_node = find(&nodes(&h).await.context("nodes")?, "w1").cloned().context("w1")?;
    let mut spec = w1_node.spec.clone().unwrap_or_default();
    spec.desired_role = NodeRole::Worker as i32;
    ctl.update_node(UpdateNodeRequest { node: "w1".into(), version: 0, spec: Some(spec) }).await?;
    wait_until(T, "w1 to leave the voters", || async { (voters(&h).await? == 1).then_some(()) }).await?;
    wait_until(T, "w1 to stop raft", || async {
        let i = control(&wh).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
        (i.state == "worker" && i.raft.is_none()).then_some(())
    })
    .await?;
    wait_until(T, "w1 to hold a worker certificate again", || async {
        (cert_role(&w1).as_deref() == Some("worker")).then_some(())
    })
    .await?;

    // The last manager cannot be demoted.
    let m1_node = find(&nodes(&h).await.context("nodes")?, "m1").cloned().context("m1")?;
    let mut spec = m1_node.spec.clone().unwrap_or_default();
    spec.desired_role = NodeRole::Worker as i32;
    let e = ctl
        .update_node(UpdateNodeRequest { node: "self".into(), version: 0, spec: Some(spec) })
        .await
        .expect_err("last manager");
    assert!(e.message().contains("last manager"), "{}", e.message());

    // Removing a live worker needs --force; after it is stopped it goes down and can be removed.
    let e = ctl.remove_node(RemoveNodeRequest { node: "w2".into(), force: false }).await.expect_err("not down");
    assert!(e.message().contains("not down"), "{}", e.message());
    let mut w2 = w2;
    w2.stop().await;
    wait_until(T, "w2 down", || async {
        let v = nodes(&h).await?;
        (find(&v, "w2")?.status.as_ref()?.state() == NodeState::Down).then_some(())
    })
    .await?;
    ctl.remove_node(RemoveNodeRequest { node: "w2".into(), force: false }).await?;
    let v = nodes(&h).await.context("nodes")?;
    assert!(find(&v, "w2").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_manager_catches_up_by_log_and_by_snapshot() -> Result<()> {
    init_logging();
    let root = tempfile::tempdir()?;
    let m1 = node(root.path(), "m1").await?;
    let mut m2 = node(root.path(), "m2").await?;
    let m3 = node(root.path(), "m3").await?;
    // Small snapshot interval so the second outage is bridged by a snapshot.
    let settings = ClusterSettings { snapshot_interval_entries: 20, log_entries_kept: 10, ..Default::default() };
    init(&m1, Some(settings)).await?;
    let mt = token(&m1, NodeRole::Manager).await?;
    join(&m2, &mt, &m1).await?;
    join(&m3, &mt, &m1).await?;
    let h = m1.host();
    wait_until(T, "3 voters", || async { (voters(&h).await? == 3).then_some(()) }).await?;

    // Outage 1: a few writes, caught up by log.
    m2.stop().await;
    for i in 0..5 {
        create(&h, &format!("a{i}")).await?;
    }
    m2.restart().await?;
    let h2 = m2.host();
    wait_until(T, "m2 to catch up by log", || async { (service_count(&h2).await? == 5).then_some(()) }).await?;

    // Outage 2: many writes; the leader compacts its log past m2's position.
    m2.stop().await;
    for i in 0..60 {
        create(&h, &format!("b{i}")).await?;
    }
    let snap_index = wait_until(T, "a snapshot on the leader", || async {
        let i = control(&h).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
        let r = i.raft?;
        (r.snapshot_index > 0).then_some(r.snapshot_index)
    })
    .await?;
    assert!(snap_index > 0);
    m2.restart().await?;
    wait_until(T, "m2 to catch up by snapshot", || async { (service_count(&h2).await? == 65).then_some(()) }).await?;
    let i = control(&h2).await?.info(InfoRequest {}).await?.into_inner();
    assert!(i.raft.context("raft")?.snapshot_index > 0, "m2 should hold a snapshot after catching up");
    drop(m3);
    Ok(())
}

/// Writes proposed at the same time share Raft entries on the leader (the proposer batches
/// them); each still gets its own answer: its own object, or its own refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_each_get_their_own_answer() -> Result<()> {
    init_logging();
    let root = tempfile::tempdir()?;
    let m1 = node(root.path(), "m1").await?;
    let m2 = node(root.path(), "m2").await?;
    init(&m1, None).await?;
    join(&m2, &token(&m1, NodeRole::Manager).await?, &m1).await?;
    let h = m1.host();
    wait_until(T, "2 voters", || async { (voters(&h).await? == 2).then_some(()) }).await?;

    // 24 names, each created twice at once, half through the follower (forwarded to the leader).
    let hosts = [m1.host(), m2.host()];
    let mut set = tokio::task::JoinSet::new();
    for i in 0..48 {
        let host = hosts[i % 2].clone();
        let name = format!("c{}", i / 2);
        set.spawn(async move {
            let mut c = control(&host).await?;
            let r = c.create_service(CreateServiceRequest { spec: Some(spec(&name)) }).await;
            anyhow::Ok((name, r.map(|r| r.into_inner())))
        });
    }
    let mut created: std::collections::BTreeMap<String, usize> = Default::default();
    let mut refused: std::collections::BTreeMap<String, usize> = Default::default();
    let mut versions = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let (name, r) = r??;
        match r {
            Ok(view) => {
                let svc = view.service.context("a created service")?;
                let got = svc.spec.as_ref().and_then(|s| s.annotations.as_ref()).map(|a| a.name.clone());
                assert_eq!(got.as_deref(), Some(name.as_str()), "an answer carries the service asked for");
                versions.insert(svc.meta.map_or(0, |m| m.version));
                *created.entry(name).or_default() += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::AlreadyExists, "{name}: {s}");
                *refused.entry(name).or_default() += 1;
            }
        }
    }
    assert_eq!(created.len(), 24, "every name was created: {created:?}");
    assert!(created.values().all(|n| *n == 1), "each name once: {created:?}");
    assert!(refused.values().all(|n| *n == 1) && refused.len() == 24, "each second create refused: {refused:?}");
    assert_eq!(service_count(&h).await, Some(24));
    println!("24 creates committed in {} Raft entries", versions.len());
    Ok(())
}
