//! `shoal-bench raft`: 3 real managers (`shoald` processes) on loopback addresses 127.0.30.x:
//!
//! * committed service updates per second, with 1 and with 64 concurrent clients;
//! * leader failover: kill -9 of the leader -> first successful write on a survivor, median of
//!   several runs, under write load (8 clients updating services through the survivors); each
//!   kill waits until the managers settled (one leader, every manager applied as far as it).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shoal_api::v1::*;
use shoal_testkit::{control, wait_until, DaemonProcess};

use crate::spec;

/// Settings of the raft benchmark.
pub struct Opts {
    /// Leader kills.
    pub runs: usize,
    /// Seconds of each throughput measurement.
    pub seconds: u64,
    /// Minutes of each stability window (idle, then under load); 0 skips them.
    pub stability_minutes: u64,
}

/// The highest Raft term any running manager reports (each election raises it).
async fn term(nodes: &[DaemonProcess]) -> Result<u64> {
    let mut best = 0;
    for n in nodes.iter().filter(|n| n.running()) {
        let info = control(&n.host()).await?.info(InfoRequest {}).await?.into_inner();
        best = best.max(info.raft.map_or(0, |r| r.term));
    }
    Ok(best)
}

async fn cluster(root: &std::path::Path) -> Result<Vec<DaemonProcess>> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(DaemonProcess::spawn(root, &format!("b{i}"), &format!("127.0.30.{i}:4242"), &[]).await?);
    }
    let mut c0 = control(&nodes[0].host()).await?;
    c0.init_cluster(InitClusterRequest::default()).await?;
    let token = c0
        .get_join_token(GetJoinTokenRequest { role: NodeRole::Manager as i32, rotate: false })
        .await?
        .into_inner()
        .token;
    for n in &nodes[1..] {
        control(&n.host())
            .await?
            .join_cluster(JoinClusterRequest {
                token: token.clone(),
                remote_addr: nodes[0].addr.clone(),
                advertise_addr: String::new(),
            })
            .await?;
    }
    Ok(nodes)
}

/// The leader all running managers agree on (a restarted old leader may briefly believe it
/// still leads; its peers know better).
async fn leader(nodes: &[DaemonProcess]) -> Result<usize> {
    wait_until(Duration::from_secs(20), "a leader all managers agree on", || async {
        let mut views = Vec::new();
        for n in nodes.iter().filter(|n| n.running()) {
            let info = control(&n.host()).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
            let r = info.raft?;
            if r.voters.len() != 3 {
                return None;
            }
            views.push((r.raft_id, r.leader_raft_id));
        }
        let leader = views.first()?.1;
        if leader == 0 || views.iter().any(|(_, l)| *l != leader) {
            return None;
        }
        let idx = views.iter().position(|(id, _)| *id == leader)?;
        // Index among running nodes -> index in `nodes`.
        nodes.iter().enumerate().filter(|(_, n)| n.running()).nth(idx).map(|(i, _)| i)
    })
    .await
}

/// Each client updates its own service as fast as it can for `secs`; returns commits/s.
async fn throughput(host: &str, clients: usize, secs: u64) -> Result<f64> {
    let mut c = control(host).await?;
    for i in 0..clients {
        let name = format!("tp-{clients}-{i}");
        c.create_service(CreateServiceRequest { spec: Some(spec(&name, 1)) }).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let host = host.to_string();
        set.spawn(async move {
            let mut c = control(&host).await?;
            let name = format!("tp-{clients}-{i}");
            let mut n = 0u64;
            while Instant::now() < deadline {
                c.update_service(UpdateServiceRequest {
                    service: name.clone(),
                    version: 0,
                    spec: Some(spec(&name, 1 + n % 3)),
                    rollback: false,
                    rollback_to: 0,
                })
                .await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Waits until every running manager applied as far as the furthest one (a restarted manager
/// caught up), with one leader all agree on; that leader's index.
async fn settled(nodes: &[DaemonProcess]) -> Result<usize> {
    let l = leader(nodes).await?;
    wait_until(Duration::from_secs(30), "every manager caught up", || async {
        let mut applied = Vec::new();
        for n in nodes.iter().filter(|n| n.running()) {
            let info = control(&n.host()).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
            applied.push(info.raft?.last_applied);
        }
        (applied.iter().min() == applied.iter().max()).then_some(())
    })
    .await?;
    Ok(l)
}

/// `clients` writers updating services through the hosts in `hosts` (each its own service)
/// until `stop`; failed writes (no leader yet) are retried after 10 ms.
fn write_load(
    hosts: Vec<String>,
    clients: usize,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let host = hosts[i % hosts.len()].clone();
        let stop = stop.clone();
        set.spawn(async move {
            let name = format!("load-{i}");
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let ok = match control(&host).await {
                    Ok(mut c) => {
                        let mut req = tonic::Request::new(UpdateServiceRequest {
                            service: name.clone(),
                            version: 0,
                            spec: Some(spec(&name, 1 + n % 3)),
                            rollback: false,
                            rollback_to: 0,
                        });
                        req.set_timeout(Duration::from_secs(5));
                        c.update_service(req).await.is_ok()
                    }
                    Err(_) => false,
                };
                if !ok {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    set
}

async fn failover_once(nodes: &mut [DaemonProcess], run: usize) -> Result<Duration> {
    let l = settled(nodes).await?;
    let survivor = (l + 1) % nodes.len();
    let host = nodes[survivor].host();
    let survivors: Vec<String> = (0..nodes.len()).filter(|i| *i != l).map(|i| nodes[i].host()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = write_load(survivors, LOAD_CLIENTS, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[l].kill9().await?;
    let t0 = Instant::now();
    if keep() {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        eprintln!("  run {}: killed b{} at unix {:.3} s", run + 1, l + 1, at.as_secs_f64());
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let name = format!("fo-{run}-{attempt}");
        let ok = match control(&host).await {
            Ok(mut c) => {
                let mut req = tonic::Request::new(CreateServiceRequest { spec: Some(spec(&name, 1)) });
                req.set_timeout(Duration::from_secs(5));
                c.create_service(req).await.is_ok()
            }
            Err(_) => false,
        };
        if ok {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("no write succeeded within 60 s of the leader kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    stop.cancel();
    while load.join_next().await.is_some() {}
    nodes[l].restart(&[]).await?;
    leader(nodes).await?;
    Ok(took)
}

/// Writers busy during each failover.
const LOAD_CLIENTS: usize = 8;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the benchmark.
pub async fn run(o: Opts) -> Result<()> {
    let root = tempfile::tempdir()?;
    if keep() {
        eprintln!("  (managers' data and logs in {}, kept)", root.path().display());
    }
    let mut nodes = cluster(root.path()).await?;
    let l = leader(&nodes).await?;
    let host = nodes[l].host();
    for clients in [1usize, 64] {
        let r = throughput(&host, clients, o.seconds).await?;
        println!("raft updates/s {clients} clients: {r:.0}");
    }
    println!(
        "raft updates/s anchor: etcd 44000 with 1000 clients on 8 vCPU; target >= 1000 with 1 client, >= 20000 with 64"
    );
    if o.stability_minutes > 0 {
        let window = Duration::from_secs(o.stability_minutes * 60);
        let t0 = term(&nodes).await?;
        tokio::time::sleep(window).await;
        let t1 = term(&nodes).await?;
        println!("raft elections in {} min idle: {}", o.stability_minutes, t1 - t0);
        throughput(&host, 16, window.as_secs()).await?;
        let t2 = term(&nodes).await?;
        println!("raft elections in {} min under load (16 clients): {}", o.stability_minutes, t2 - t1);
    }
    let mut c = control(&host).await?;
    for i in 0..LOAD_CLIENTS {
        let name = format!("load-{i}");
        c.create_service(CreateServiceRequest { spec: Some(spec(&name, 1)) }).await?;
    }
    let mut runs = Vec::new();
    for run in 0..o.runs {
        let d = failover_once(&mut nodes, run).await?;
        println!("raft failover run {} ({LOAD_CLIENTS} writers busy): {:.0} ms", run + 1, d.as_secs_f64() * 1000.0);
        runs.push(d);
    }
    println!("raft failover median of {}: {:.0} ms", o.runs, median(runs).as_secs_f64() * 1000.0);
    println!("raft failover anchor: Docker Swarm 28.5 s measured on this machine kind; target < 1000 ms");
    for n in nodes.iter_mut() {
        n.stop().await?;
    }
    if keep() {
        let _ = root.keep();
    }
    Ok(())
}

/// Whether the managers' data and logs stay for a look afterwards (`SHOAL_BENCH_KEEP`).
fn keep() -> bool {
    std::env::var_os("SHOAL_BENCH_KEEP").is_some()
}
