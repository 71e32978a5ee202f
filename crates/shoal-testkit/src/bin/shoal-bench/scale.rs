//! `shoal-bench scale`: thousands of worker nodes against 3 real managers.
//!
//! The managers are real `shoald` processes (no container runtime, so every task goes to the
//! simulated workers). Each simulated worker is a real node as far as the managers can tell:
//! it joins with the worker token (the CA pinned by the token's digest, a key of its own, a CSR,
//! the certificate the cluster issues), then speaks the real protocols over its own mTLS
//! connection with that certificate: a heartbeat every period (following redirects to the
//! leader), the dispatcher's assignment stream, and batched status reports. Its "runtime" is
//! fake: a task it is given reports RUNNING after `--run-delay`, and SHUTDOWN when it is told
//! to stop. All workers run in this process.
//!
//! Prints, one per line: the time from `service create` to every task RUNNING as committed on
//! the leader; the leader's CPU and RSS with every node idle and heartbeating; and after a kill
//! -9 of the leader, the time to the first successful write and to every node following the
//! new leader again, with the number of nodes marked down.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_api::v1::dispatcher_client::DispatcherClient;
use shoal_api::v1::membership_client::MembershipClient;
use shoal_api::v1::*;
use shoal_testkit::{control, wait_until, DaemonProcess};

use crate::spec;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Settings of the scale benchmark.
pub struct Opts {
    /// Simulated worker nodes.
    pub nodes: usize,
    /// Tasks to bring up (over 10 services).
    pub tasks: usize,
    /// How long a fake task takes to run.
    pub run_delay: Duration,
    /// Nodes joining at once.
    pub join_parallelism: usize,
}

const SERVICES: usize = 10;

/// What every simulated node shares with the benchmark.
struct Shared {
    /// Nodes with an open assignment stream that received its complete set.
    following: AtomicUsize,
    /// Streams opened, over all nodes (a node reconnecting after a leader change adds one).
    streams: AtomicUsize,
}

/// A simulated worker after it joined.
struct SimNode {
    node_id: String,
    cluster_id: String,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    /// Manager addresses, as the last heartbeat answer listed them.
    managers: std::sync::Mutex<Vec<String>>,
    /// One connection per manager, shared by the heartbeats and the assignment stream.
    channels: std::sync::Mutex<HashMap<String, Channel>>,
    description: NodeDescription,
}

fn description(i: usize) -> NodeDescription {
    NodeDescription {
        hostname: format!("sim{i:05}"),
        platform: Some(Platform { os: "linux".into(), architecture: "amd64".into() }),
        resources: Some(Resources { nano_cpus: 16_000_000_000, memory_bytes: 64 << 30, pids: 0 }),
        version: env!("CARGO_PKG_VERSION").into(),
        runtime_unavailable: String::new(),
        host_networks: Vec::new(),
    }
}

/// Joins node `i` through the manager at `via` with the worker `token`.
async fn join(i: usize, via: &str, token: &str) -> Result<SimNode> {
    let parsed = shoal_api::token::JoinToken::parse(token)?;
    let remote: std::net::SocketAddr = via.parse()?;
    let ca = shoal_pki::tls::fetch_ca(remote, &parsed.cluster_digest, Duration::from_secs(30)).await?;
    let key = shoal_pki::NodeKey::generate()?;
    let node_id = shoal_api::ids::id_from_bits(u128::from(i as u64) << 64 | u128::from(rand_u64(i)));
    let cfg = Arc::new(shoal_pki::tls::client_config(&ca, None)?);
    let channel = shoal_client::tls_channel(shoal_client::tcp_endpoint(via)?, via, cfg, shoal_pki::MANAGER_NAME)
        .map_err(anyhow::Error::msg)?;
    let addr = format!("127.77.{}.{}:4242", i / 250, i % 250 + 1);
    let resp = MembershipClient::new(channel)
        .join(JoinRequest {
            token: token.to_string(),
            node_id: node_id.clone(),
            raft_id: rand_u64(i).max(1),
            addr: addr.clone(),
            description: Some(description(i)),
            csr_pem: key.csr_pem(&node_id)?,
        })
        .await
        .with_context(|| format!("join of sim node {i}"))?
        .into_inner();
    let store = shoal_pki::tls::CertStore::new();
    store.set(&resp.cert_pem, &key.key_pem(), &ca)?;
    let tls = Arc::new(shoal_pki::tls::client_config(&ca, Some(store))?);
    Ok(SimNode {
        node_id,
        cluster_id: resp.cluster_id,
        addr,
        tls,
        managers: std::sync::Mutex::new(resp.managers.into_iter().map(|m| m.addr).filter(|a| !a.is_empty()).collect()),
        channels: std::sync::Mutex::new(HashMap::new()),
        description: description(i),
    })
}

/// A deterministic, well-spread u64 for node `i` (ids and raft ids need not be secret here).
fn rand_u64(i: usize) -> u64 {
    let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl SimNode {
    fn managers(&self) -> Vec<String> {
        self.managers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = shoal_client::tls_channel(
            shoal_client::tcp_endpoint(addr)?,
            addr,
            self.tls.clone(),
            shoal_pki::MANAGER_NAME,
        )
        .map_err(anyhow::Error::msg)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Heartbeats, follows assignments and reports status until `stop`.
    async fn run(self, shared: Arc<Shared>, run_delay: Duration, stop: CancellationToken) {
        let first = self.managers().first().cloned().unwrap_or_default();
        let leader = Arc::new(tokio::sync::Mutex::new(first));
        let me = Arc::new(self);
        tokio::join!(me.clone().heartbeats(leader.clone(), stop.clone()), me.follow(leader, shared, run_delay, stop));
    }

    async fn heartbeats(self: Arc<Self>, leader: Arc<tokio::sync::Mutex<String>>, stop: CancellationToken) {
        let mut period = Duration::from_secs(1);
        let mut next_manager = 0usize;
        // As a real node's session: a failed heartbeat is retried soon, on the next manager.
        let mut failures = 0u32;
        let spread = self.node_id.bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
        let jitter = Duration::from_millis(spread % 250);
        loop {
            let target = leader.lock().await.clone();
            let Ok(ch) = self.channel(&target) else { return };
            let mut req = tonic::Request::new(HeartbeatRequest {
                node_id: self.node_id.clone(),
                addr: self.addr.clone(),
                raft_running: false,
                description: Some(self.description.clone()),
                cluster_id: self.cluster_id.clone(),
            });
            req.set_timeout(Duration::from_secs(2));
            match MembershipClient::new(ch).heartbeat(req).await {
                Ok(r) => {
                    failures = 0;
                    let r = r.into_inner();
                    if !r.leader_addr.is_empty() {
                        *leader.lock().await = r.leader_addr;
                        continue;
                    }
                    if r.period_ms > 0 {
                        period = Duration::from_millis(r.period_ms);
                    }
                    let known: Vec<String> = r.managers.into_iter().map(|m| m.addr).filter(|a| !a.is_empty()).collect();
                    if !known.is_empty() {
                        *self.managers.lock().unwrap_or_else(|p| p.into_inner()) = known;
                    }
                }
                Err(e) => {
                    if std::env::var_os("SHOAL_BENCH_DEBUG").is_some() {
                        eprintln!("{}: heartbeat to {target}: {e}", self.description.hostname);
                    }
                    next_manager += 1;
                    failures = failures.saturating_add(1);
                    let managers = self.managers();
                    if !managers.is_empty() {
                        *leader.lock().await = managers[next_manager % managers.len()].clone();
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(shoal_manager::next_beat(period, failures, jitter)) => {}
            }
        }
    }

    async fn follow(
        &self,
        leader: Arc<tokio::sync::Mutex<String>>,
        shared: Arc<Shared>,
        run_delay: Duration,
        stop: CancellationToken,
    ) {
        // Task id -> the status state last reported (or due to be).
        let mut reported: HashMap<String, i32> = HashMap::new();
        // Reports not yet accepted; they outlive a stream (a leader change).
        let mut due: Vec<(Instant, TaskStatusUpdate)> = Vec::new();
        // As a real agent: a refused stream is asked for again after 100 ms, doubling to 2 s.
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let target = leader.lock().await.clone();
            let Ok(ch) = self.channel(&target) else { return };
            let stream = DispatcherClient::new(ch.clone())
                .max_decoding_message_size(64 << 20)
                .assignments(AssignmentsRequest { node_id: self.node_id.clone() })
                .await;
            let Ok(stream) = stream else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            backoff = Duration::from_millis(100);
            shared.streams.fetch_add(1, Ordering::Relaxed);
            let mut stream = stream.into_inner();
            let mut counted = false;
            let mut flush = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.message() => {
                        let Ok(Some(msg)) = m else { break };
                        if msg.r#type == assignments_message::Type::Complete as i32 && !counted {
                            counted = true;
                            shared.following.fetch_add(1, Ordering::Relaxed);
                        }
                        for t in msg.tasks {
                            let id = t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                            let observed = t.status.as_ref().map_or(0, |s| s.state);
                            let want = if t.desired_state <= TaskState::Running as i32 {
                                TaskState::Running as i32
                            } else {
                                TaskState::Shutdown as i32
                            };
                            if observed >= want || reported.get(&id) == Some(&want) {
                                continue;
                            }
                            reported.insert(id.clone(), want);
                            let at = if want == TaskState::Running as i32 { Instant::now() + run_delay } else { Instant::now() };
                            due.push((at, TaskStatusUpdate {
                                task_id: id,
                                status: Some(TaskStatus { state: want, timestamp_ms: shoal_manager::util::now_ms(), message: "simulated".into(), ..Default::default() }),
                            }));
                        }
                        for id in msg.removed {
                            reported.remove(&id);
                        }
                    }
                    _ = flush.tick() => {
                        let now = Instant::now();
                        let ready: Vec<TaskStatusUpdate> = due.iter().filter(|(at, _)| *at <= now).map(|(_, u)| u.clone()).collect();
                        if ready.is_empty() {
                            continue;
                        }
                        let req = UpdateTaskStatusRequest { node_id: self.node_id.clone(), updates: ready };
                        if DispatcherClient::new(ch.clone()).update_task_status(req).await.is_ok() {
                            due.retain(|(at, _)| *at > now);
                        }
                    }
                }
            }
            if counted {
                shared.following.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of a process in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The running tasks and the desired ones, as the manager `c` talks to sees them.
async fn running(c: &mut shoal_api::v1::control_client::ControlClient<Channel>) -> Result<(u64, u64)> {
    let views = c.list_services(ListServicesRequest {}).await?.into_inner().services;
    Ok(views.iter().fold((0, 0), |(r, d), v| (r + v.running_tasks, d + v.desired_tasks)))
}

/// Index of the manager that leads, as every running manager agrees.
async fn leader(managers: &[DaemonProcess]) -> Result<usize> {
    wait_until(Duration::from_secs(60), "a leader all managers agree on", || async {
        let mut views = Vec::new();
        for (i, n) in managers.iter().enumerate().filter(|(_, n)| n.running()) {
            let info = control(&n.host()).await.ok()?.info(InfoRequest {}).await.ok()?.into_inner();
            let r = info.raft?;
            views.push((i, r.raft_id, r.leader_raft_id));
        }
        let l = views.first()?.2;
        if l == 0 || views.iter().any(|v| v.2 != l) {
            return None;
        }
        views.iter().find(|v| v.1 == l).map(|v| v.0)
    })
    .await
}

/// Runs the benchmark.
pub async fn run(o: Opts) -> Result<()> {
    let root = tempfile::tempdir()?;
    if std::env::var_os("SHOAL_BENCH_KEEP").is_some() {
        eprintln!("  (managers' data and logs in {}, kept)", root.path().display());
    }
    let mut managers = Vec::new();
    for i in 1..=3 {
        let addr = format!("127.0.31.{i}:4242");
        managers.push(DaemonProcess::spawn(root.path(), &format!("m{i}"), &addr, &[]).await?);
    }
    let h0 = managers[0].host();
    let mut c0 = control(&h0).await?;
    c0.init_cluster(InitClusterRequest::default()).await?;
    let token = |role: NodeRole| {
        let mut c = c0.clone();
        async move {
            anyhow::Ok(
                c.get_join_token(GetJoinTokenRequest { role: role as i32, rotate: false }).await?.into_inner().token,
            )
        }
    };
    let mt = token(NodeRole::Manager).await?;
    for m in &managers[1..] {
        control(&m.host())
            .await?
            .join_cluster(JoinClusterRequest {
                token: mt.clone(),
                remote_addr: managers[0].addr.clone(),
                advertise_addr: String::new(),
            })
            .await?;
    }
    let wt = token(NodeRole::Worker).await?;

    // Join the simulated workers, a few at a time, through every manager.
    let t_join = Instant::now();
    let addrs: Vec<String> = managers.iter().map(|m| m.addr.clone()).collect();
    let mut sims: Vec<SimNode> = Vec::with_capacity(o.nodes);
    let mut pending: JoinSet<Result<SimNode>> = JoinSet::new();
    for i in 0..o.nodes {
        if pending.len() >= o.join_parallelism {
            sims.push(pending.join_next().await.context("join task")???);
        }
        let (via, wt) = (addrs[i % addrs.len()].clone(), wt.clone());
        pending.spawn(async move { join(i, &via, &wt).await });
    }
    while let Some(r) = pending.join_next().await {
        sims.push(r??);
    }
    println!("scale {} nodes joined: {:.1} s", o.nodes, t_join.elapsed().as_secs_f64());

    let shared = Arc::new(Shared { following: AtomicUsize::new(0), streams: AtomicUsize::new(0) });
    let stop = CancellationToken::new();
    let mut running_nodes = JoinSet::new();
    for s in sims {
        running_nodes.spawn(s.run(shared.clone(), o.run_delay, stop.clone()));
    }
    let c0 = control(&h0).await?;
    wait_until(Duration::from_secs(300), "every simulated node ready and following", || {
        let (mut c0, shared, n) = (c0.clone(), shared.clone(), o.nodes);
        async move {
            let nodes = c0.list_nodes(ListNodesRequest {}).await.ok()?.into_inner().nodes;
            let ready = nodes
                .iter()
                .filter_map(|v| v.node.as_ref())
                .filter(|n| n.status.as_ref().is_some_and(|s| s.state() == NodeState::Ready))
                .count();
            (ready >= n + 3 && shared.following.load(Ordering::Relaxed) >= n).then_some(())
        }
    })
    .await?;

    // Idle: every node heartbeating, nothing else.
    let l = leader(&managers).await?;
    let pid = managers[l].pid().context("leader pid")?;
    let (cpu0, t0) = (cpu_seconds(pid).context("leader cpu")?, Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = (cpu_seconds(pid).context("leader cpu")? - cpu0) / t0.elapsed().as_secs_f64();
    println!("scale leader cpu with {} idle nodes: {:.0} %", o.nodes, cpu * 100.0);
    println!("scale leader rss with {} idle nodes: {:.0} MB", o.nodes, rss_mb(pid).unwrap_or(0.0));
    eprintln!("  (leader pid {pid})");

    // Create -> every task running, committed.
    let lh = managers[l].host();
    let per = (o.tasks / SERVICES) as u64;
    let t_create = Instant::now();
    let mut c = control(&lh).await?;
    for i in 0..SERVICES {
        c.create_service(CreateServiceRequest { spec: Some(spec(&format!("scale{i}"), per)) }).await?;
    }
    let want = per * SERVICES as u64;
    let mut last_print = Instant::now();
    loop {
        let (r, d) = running(&mut c).await?;
        if r >= want && d == want {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("  ... {r} of {want} running after {:.0} s", t_create.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        if t_create.elapsed() > Duration::from_secs(900) {
            bail!("only {r} of {want} tasks running after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("scale {want} tasks running: {:.1} s", t_create.elapsed().as_secs_f64());
    println!("scale anchor: Kubernetes' scheduler ~2 min for 100k pods, Nomad C2M ~1500 placements/s; target <= 20 s");
    println!("scale leader rss with {want} tasks: {:.0} MB", rss_mb(pid).unwrap_or(0.0));

    // Leader loss with every node connected.
    let streams_before = shared.streams.load(Ordering::Relaxed);
    let survivor = (l + 1) % 3;
    let sh = managers[survivor].host();
    let mut survivor_client = control(&sh).await?;
    managers[l].kill9().await?;
    let t_kill = Instant::now();
    let mut first_write = None;
    let mut attempt = 0;
    while t_kill.elapsed() < Duration::from_secs(120) {
        if first_write.is_none() {
            attempt += 1;
            let mut req =
                tonic::Request::new(CreateServiceRequest { spec: Some(spec(&format!("after-kill-{attempt}"), 0)) });
            req.set_timeout(Duration::from_secs(5));
            let t_attempt = Instant::now();
            match survivor_client.create_service(req).await {
                Ok(_) => first_write = Some(t_kill.elapsed()),
                // What kept the first write waiting: refusals while no leader is known, or an
                // attempt that hung.
                Err(e) if attempt <= 5 || attempt % 50 == 0 => eprintln!(
                    "  (write attempt {attempt} at {:.0} ms failed after {:.0} ms: {})",
                    (t_attempt - t_kill).as_secs_f64() * 1000.0,
                    t_attempt.elapsed().as_secs_f64() * 1000.0,
                    e.message()
                ),
                Err(_) => {}
            }
        }
        let reconnected = shared.streams.load(Ordering::Relaxed) - streams_before;
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  ... {:.1} s after the kill: {reconnected} streams reopened, {} following",
                t_kill.elapsed().as_secs_f64(),
                shared.following.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
        }
        if first_write.is_some() && reconnected >= o.nodes && shared.following.load(Ordering::Relaxed) >= o.nodes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_back = t_kill.elapsed();
    let nodes = control(&sh).await?.list_nodes(ListNodesRequest {}).await?.into_inner().nodes;
    let down: BTreeSet<String> = nodes
        .iter()
        .filter_map(|v| v.node.as_ref())
        .filter(|n| n.role() == NodeRole::Worker && n.status.as_ref().is_some_and(|s| s.state() == NodeState::Down))
        .filter_map(|n| n.meta.as_ref().map(|m| m.id.clone()))
        .collect();
    match first_write {
        Some(d) => println!("scale failover with {} nodes, first write: {:.0} ms", o.nodes, d.as_secs_f64() * 1000.0),
        None => println!("scale failover with {} nodes, first write: none within 120 s", o.nodes),
    }
    println!("scale failover with {} nodes, every node following again: {:.1} s", o.nodes, all_back.as_secs_f64());
    println!("scale failover workers marked down: {}", down.len());

    stop.cancel();
    while running_nodes.join_next().await.is_some() {}
    for m in managers.iter_mut() {
        m.stop().await?;
    }
    if std::env::var_os("SHOAL_BENCH_KEEP").is_some() {
        let _ = root.keep();
    }
    Ok(())
}
