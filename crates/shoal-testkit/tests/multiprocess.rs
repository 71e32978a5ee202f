//! Real binaries, real processes: three `shoald` on distinct loopback addresses driven by the
//! `shoal` CLI. A kill -9 of the leader loses no acknowledged service; a full restart from disk
//! keeps the state; the errors users meet are one clear line.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_testkit::{shoal, shoal_ok, wait_until, DaemonProcess};

struct Cluster {
    _root: tempfile::TempDir,
    nodes: Vec<DaemonProcess>,
}

impl Cluster {
    /// Three managers on this process's own loopback address, ports `<net>01..<net>03`.
    async fn three_managers(net: u16) -> Result<Self> {
        let root = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        let ip = shoal_testkit::own_loopback_ip();
        for i in 1..=3u16 {
            let addr = format!("{ip}:{}", net * 100 + i);
            nodes.push(DaemonProcess::spawn(root.path(), &format!("m{i}"), &addr, &[]).await?);
        }
        shoal_ok(&nodes[0].host(), &["cluster", "init"]).await?;
        let token =
            shoal_ok(&nodes[0].host(), &["cluster", "join-token", "-q", "manager"]).await?.stdout.trim().to_string();
        for n in &nodes[1..] {
            shoal_ok(&n.host(), &["cluster", "join", "--token", &token, &nodes[0].addr]).await?;
        }
        let c = Cluster { _root: root, nodes };
        c.wait_managers(3, &c.nodes[0].host()).await?;
        Ok(c)
    }

    async fn wait_managers(&self, n: usize, host: &str) -> Result<()> {
        wait_until(Duration::from_secs(30), &format!("{n} ready managers with a leader"), || async move {
            let o = shoal(host, &["node", "ls", "--format", "json"]).await.ok()?;
            let v = o.json().ok()?;
            let rows = v.as_array()?;
            let ready = rows.iter().filter(|r| r["role"] == "manager" && r["status"] == "ready").count();
            let leaders = rows.iter().filter(|r| r["manager_status"] == "leader").count();
            (ready == n && leaders == 1).then_some(())
        })
        .await
    }

    /// Index of the daemon that is the raft leader.
    async fn leader(&self) -> Result<usize> {
        wait_until(Duration::from_secs(15), "a leader", || async {
            for (i, n) in self.nodes.iter().enumerate() {
                if !n.running() {
                    continue;
                }
                let info = shoal(&n.host(), &["info", "--format", "json"]).await.ok()?.json().ok()?;
                let raft = &info["raft"];
                if raft["raft_id"].as_str().is_some() && raft["raft_id"] == raft["leader_raft_id"] {
                    return Some(i);
                }
            }
            None
        })
        .await
    }
}

fn service_names(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().filter_map(|r| r["name"].as_str().map(str::to_string)).collect()
}

async fn create(host: &str, name: &str) -> Result<bool> {
    Ok(shoal(host, &["service", "create", "--detach", "--name", name, "--replicas", "2", "registry.local/busybox:1"])
        .await?
        .ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_loses_no_acknowledged_service_and_restart_keeps_state() -> Result<()> {
    let mut c = Cluster::three_managers(21).await?;
    let mut acked = BTreeSet::new();
    // Writes through every manager: followers forward to the leader.
    for i in 0..9 {
        let name = format!("svc{i}");
        if create(&c.nodes[i % 3].host(), &name).await? {
            acked.insert(name);
        }
    }
    assert_eq!(acked.len(), 9, "every create on a healthy cluster is acknowledged");

    let leader = c.leader().await?;
    c.nodes[leader].kill9().await?;
    let survivor = (leader + 1) % 3;
    let host = c.nodes[survivor].host();

    // Reads answer on a survivor at once. A survivor holds every acknowledged entry in its log,
    // but may learn that the last ones committed only from the next leader: wait for that.
    shoal_ok(&host, &["service", "ls"]).await?;
    wait_until(Duration::from_secs(20), "every acknowledged service on a survivor", || {
        let (host, acked) = (host.clone(), acked.clone());
        async move {
            let v = shoal(&host, &["service", "ls", "--format", "json"]).await.ok()?.json().ok()?;
            acked.is_subset(&service_names(&v)).then_some(())
        }
    })
    .await?;

    // Writes resume once the survivors elect a leader.
    wait_until(Duration::from_secs(20), "a write after the leader was killed", || {
        let host = host.clone();
        async move { create(&host, "after-failover").await.ok().filter(|ok| *ok) }
    })
    .await?;
    acked.insert("after-failover".to_string());
    // The survivors did not wait out Raft's timers: the one with the longest log stood as soon
    // as the killed leader's lease ran out, and only it (no split vote).
    let stood: Vec<usize> = (0..3)
        .filter(|i| *i != leader)
        .filter(|i| c.nodes[*i].log_text().contains("the leader's process is gone: standing for election now"))
        .collect();
    assert_eq!(stood.len(), 1, "exactly one survivor stands for election: {stood:?}");

    // The killed manager shows as unreachable and down.
    let killed = c.nodes[leader].hostname.clone();
    wait_until(Duration::from_secs(20), "the killed manager to be down and unreachable", || {
        let (host, killed) = (host.clone(), killed.clone());
        async move {
            let v = shoal(&host, &["node", "ls", "--format", "json"]).await.ok()?.json().ok()?;
            v.as_array()?
                .iter()
                .any(|r| {
                    r["hostname"] == killed.as_str() && r["status"] == "down" && r["manager_status"] == "unreachable"
                })
                .then_some(())
        }
    })
    .await?;

    // Restart everything from disk: state intact, cluster whole again.
    for n in c.nodes.iter_mut() {
        n.stop().await?;
    }
    for n in c.nodes.iter_mut() {
        n.restart(&[]).await?;
    }
    let host0 = c.nodes[0].host();
    c.wait_managers(3, &host0).await?;
    for n in &c.nodes {
        let listed = service_names(&shoal_ok(&n.host(), &["service", "ls", "--format", "json"]).await?.json()?);
        // A restarted follower may still be applying its log: wait for it, bounded.
        if !acked.is_subset(&listed) {
            let h = n.host();
            let want = acked.clone();
            wait_until(Duration::from_secs(10), "a restarted manager to apply the whole log", || {
                let (h, want) = (h.clone(), want.clone());
                async move {
                    let l = service_names(&shoal(&h, &["service", "ls", "--format", "json"]).await.ok()?.json().ok()?);
                    want.is_subset(&l).then_some(())
                }
            })
            .await?;
        }
    }
    create(&host0, "after-restart").await?.then_some(()).context("write after full restart")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_one_clear_line() -> Result<()> {
    let mut c = Cluster::three_managers(22).await?;
    let h = c.nodes[1].host();

    let o = shoal(&h, &["service", "inspect", "nope"]).await?;
    assert!(!o.ok);
    assert_eq!(o.stderr.trim(), "Error: service \"nope\" not found");

    let o = shoal(&h, &["service", "create", "--name", "bad name", "img"]).await?;
    assert!(!o.ok);
    assert!(o.stderr.contains("invalid spec: name:"), "{}", o.stderr);
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);

    let o = shoal(&h, &["service", "create", "--restart-condition", "sometimes", "img"]).await?;
    assert!(!o.ok && o.stderr.contains("restart condition"), "{}", o.stderr);

    assert!(create(&h, "web").await?);
    let o = shoal(&h, &["service", "create", "--name", "web", "img"]).await?;
    assert!(!o.ok && o.stderr.contains("already"), "{}", o.stderr);

    // A stale version is refused with a message that says what to do.
    let mut ctl = shoal_testkit::control(&h).await?;
    let svc = ctl
        .get_service(shoal_api::v1::GetServiceRequest { service: "web".into() })
        .await?
        .into_inner()
        .service
        .context("service")?;
    let v = svc.meta.as_ref().map(|m| m.version).unwrap_or(0);
    shoal_ok(&h, &["service", "scale", "-d", "web=5"]).await?;
    let stale = ctl
        .update_service(shoal_api::v1::UpdateServiceRequest {
            service: "web".into(),
            version: v,
            spec: svc.spec.clone(),
            rollback: false,
            rollback_to: 0,
        })
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), tonic::Code::Aborted);
    assert!(stale.message().contains("read it again"), "{}", stale.message());

    // No quorum: with two of three managers gone, a write fails promptly and says how many answer.
    let leader = c.leader().await?;
    let keep = (leader + 1) % 3;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != keep {
            n.kill9().await?;
        }
    }
    let h = c.nodes[keep].host();
    let started = std::time::Instant::now();
    let o = shoal(&h, &["service", "create", "--name", "nq", "img"]).await?;
    assert!(!o.ok);
    assert!(o.stderr.contains("no quorum: 1 of 3 managers reachable, 2 needed"), "{}", o.stderr);
    if started.elapsed() > Duration::from_secs(30) {
        bail!("a write without quorum took {:?} to fail", started.elapsed());
    }
    // Reads still answer from local state.
    let listed = service_names(&shoal_ok(&h, &["service", "ls", "--format", "json"]).await?.json()?);
    assert!(listed.contains("web"));

    // A daemon that is not there.
    let o = shoal("unix:///nonexistent/shoal.sock", &["service", "ls"]).await?;
    assert!(!o.ok && o.stderr.contains("cannot reach shoald at unix:///nonexistent/shoal.sock"), "{}", o.stderr);
    Ok(())
}

fn keys(row: &Value) -> BTreeSet<String> {
    row.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The JSON row shapes scripts rely on stay exactly as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_contract() -> Result<()> {
    let c = Cluster::three_managers(24).await?;
    let h = c.nodes[2].host();
    let nodes = shoal_ok(&h, &["node", "ls", "--format", "json"]).await?.json()?;
    let rows = nodes.as_array().context("node ls is an array")?;
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(
            keys(r),
            set(&["id", "hostname", "role", "status", "availability", "manager_status", "addr"]),
            "{r}"
        );
        assert_eq!(r["role"], "manager");
        assert_eq!(r["availability"], "active");
        assert!(["leader", "reachable"].contains(&r["manager_status"].as_str().unwrap_or("")), "{r}");
    }
    shoal_ok(&h, &["service", "create", "-d", "--name", "web", "--replicas", "3", "img:1"]).await?;
    let services = shoal_ok(&h, &["service", "ls", "--format", "json"]).await?.json()?;
    let row = services.as_array().and_then(|a| a.first()).context("one service")?;
    assert_eq!(
        keys(row),
        set(&[
            "id",
            "name",
            "mode",
            "replicas",
            "running",
            "completed",
            "image",
            "ports",
            "update_state",
            "update_message"
        ])
    );
    assert_eq!(
        (row["name"].as_str(), row["mode"].as_str(), row["replicas"].as_u64()),
        (Some("web"), Some("replicated"), Some(3))
    );
    // The leader's orchestrator creates the tasks; the scheduler keeps them pending, saying why:
    // these nodes run with --no-runtime.
    let tasks = wait_until(Duration::from_secs(20), "3 pending tasks with the reason", || {
        let h = h.clone();
        async move {
            let v = shoal(&h, &["service", "ps", "web", "--format", "json"]).await.ok()?.json().ok()?;
            let rows = v.as_array()?.clone();
            (rows.len() == 3
                && rows
                    .iter()
                    .all(|r| r["node_id"] == "" && r["error"] == "no suitable node (no container runtime on 3 nodes)"))
            .then_some(rows)
        }
    })
    .await?;
    let mut names = BTreeSet::new();
    for t in &tasks {
        let mut k = keys(t);
        k.remove("node"); // the hostname, for the table
        assert_eq!(
            k,
            set(&["id", "name", "slot", "node_id", "desired_state", "state", "error", "networks", "pid", "health"]),
            "{t}"
        );
        assert_eq!(t["desired_state"], "running");
        names.insert(t["name"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(names, set(&["web.1", "web.2", "web.3"]));
    // Every background loop is a named worker that `shoal info` lists; leader loops run only
    // on the leader.
    let leader = c.leader().await?;
    let workers = |i: usize| {
        let h = c.nodes[i].host();
        async move {
            let info = shoal_ok(&h, &["info", "--format", "json"]).await?.json()?;
            let names: BTreeSet<String> = info["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["state"] == "running")
                .filter_map(|w| w["name"].as_str().map(str::to_string))
                .collect();
            anyhow::Ok(names)
        }
    };
    let on_leader = workers(leader).await?;
    for w in [
        "node/session",
        "node/leadership",
        "node/tls accept",
        "node/leader/orchestrator",
        "node/leader/dispatcher",
        "node/leader/proposer",
    ] {
        assert!(on_leader.contains(w), "the leader runs {w}: {on_leader:?}");
    }
    let on_follower = workers((leader + 1) % 3).await?;
    assert!(on_follower.contains("node/session"), "{on_follower:?}");
    assert!(
        on_follower.iter().all(|w| !w.starts_with("node/leader/")),
        "a follower runs no leader loop: {on_follower:?}"
    );
    // Inspect prints the whole object.
    let inspect = shoal_ok(&h, &["service", "inspect", "web"]).await?.json()?;
    assert_eq!(inspect[0]["spec"]["annotations"]["name"], "web");
    assert_eq!(inspect[0]["spec"]["replicated"]["replicas"], "3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_recovers_a_lone_survivor() -> Result<()> {
    let mut c = Cluster::three_managers(23).await?;
    let h = c.nodes[0].host();
    assert!(create(&h, "keep-me").await?);
    let leader = c.leader().await?;
    let keep = (leader + 1) % 3;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != keep {
            n.kill9().await?;
        }
    }
    c.nodes[keep].restart(&["--force-new-cluster"]).await?;
    let h = c.nodes[keep].host();
    wait_until(Duration::from_secs(20), "a write on the recovered manager", || {
        let h = h.clone();
        async move { create(&h, "after-recovery").await.ok().filter(|ok| *ok) }
    })
    .await?;
    let listed = service_names(&shoal_ok(&h, &["service", "ls", "--format", "json"]).await?.json()?);
    assert!(listed.contains("keep-me") && listed.contains("after-recovery"), "{listed:?}");
    let nodes = shoal_ok(&h, &["node", "ls", "--format", "json"]).await?.json()?;
    let managers = nodes.as_array().into_iter().flatten().filter(|r| r["role"] == "manager").count();
    assert_eq!(managers, 1, "only the survivor remains a manager: {nodes}");
    Ok(())
}

/// A read on any manager never shows an older state than one already shown (the read
/// barrier): a follower killed while writes went on answers, from its first answer after its
/// restart, with every write acknowledged before, never with the state its disk still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_never_reads_an_older_state() -> Result<()> {
    let mut c = Cluster::three_managers(27).await?;
    let leader = c.leader().await?;
    let f = (leader + 1) % 3;
    let lh = c.nodes[leader].host();
    assert!(create(&lh, "web").await?);
    c.nodes[f].kill9().await?;
    for r in 3..=9 {
        shoal_ok(&lh, &["service", "scale", "-d", &format!("web={r}")]).await?;
    }
    c.nodes[f].restart(&[]).await?;
    let fh = c.nodes[f].host();
    let mut seen = Vec::new();
    for _ in 0..100 {
        let o = shoal(&fh, &["service", "inspect", "web"]).await?;
        if o.ok {
            let v = o.json()?;
            seen.push(v[0]["spec"]["replicated"]["replicas"].as_str().unwrap_or("?").to_string());
            if seen.len() == 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, vec!["9"; 5], "every answer of the restarted follower holds the last acknowledged scale");
    Ok(())
}

/// Replicas of `web` as `host` sees them.
async fn replicas(host: &str) -> Result<u64> {
    let v = shoal_ok(host, &["service", "inspect", "web"]).await?.json()?;
    let r = &v[0]["spec"]["replicated"]["replicas"];
    r.as_str().and_then(|s| s.parse().ok()).or_else(|| r.as_u64()).context("replicas")
}

/// Exit status of a CLI call (the CLI's own, not the runner's).
async fn exit_code(host: &str, args: &[&str]) -> Result<(i32, String)> {
    let out = tokio::process::Command::new(shoal_testkit::bin("shoal")?)
        .arg("--host")
        .arg(host)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

/// The fault probe: a leader that lost both followers. A write it takes before it notices may
/// still apply, and the client must hear exactly that ("unknown", exit 3), never "no quorum";
/// once the leader knows it lacks a quorum it refuses (exit 1), and a refused write never
/// applies, not even after the followers return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_never_applies_and_an_unknown_one_says_so() -> Result<()> {
    let mut c = Cluster::three_managers(25).await?;
    let h0 = c.nodes[0].host();
    shoal_ok(&h0, &["service", "create", "-d", "--name", "web", "--replicas", "2", "img:1"]).await?;
    let leader = c.leader().await?;
    wait_until(Duration::from_secs(20), "every manager to see web", || {
        let hosts: Vec<String> = c.nodes.iter().map(|n| n.host()).collect();
        async move {
            for h in &hosts {
                replicas(h).await.ok()?;
            }
            Some(())
        }
    })
    .await?;
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != leader {
            n.kill9().await?;
        }
    }
    let h = c.nodes[leader].host();

    // At once: the leader may still believe in its quorum and take the write.
    let (first, msg) = exit_code(&h, &["service", "scale", "-d", "web=12"]).await?;
    match first {
        1 => assert!(msg.contains("no quorum: 1 of 3 managers reachable, 2 needed"), "{msg}"),
        3 => assert!(msg.contains("the outcome of this write is unknown"), "{msg}"),
        other => bail!("a write without quorum ended with {other}: {msg}"),
    }

    // Once its last quorum acknowledgement is old, the leader knows: refused.
    wait_until(Duration::from_secs(20), "the leader to see its quorum acknowledgement age", || {
        let h = h.clone();
        async move {
            let info = shoal(&h, &["info", "--format", "json"]).await.ok()?.json().ok()?;
            let age = &info["raft"]["quorum_ack_age_ms"];
            let age = age.as_str().and_then(|s| s.parse::<i64>().ok()).or_else(|| age.as_i64())?;
            (age > 2_000).then_some(())
        }
    })
    .await?;
    let (code, msg) = exit_code(&h, &["service", "scale", "-d", "web=7"]).await?;
    assert_eq!(code, 1, "refused: {msg}");
    assert!(msg.contains("no quorum: 1 of 3 managers reachable, 2 needed"), "{msg}");

    // The followers return: the refused write never shows; the first one shows only if it was
    // reported unknown.
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if i != leader {
            n.restart(&[]).await?;
        }
    }
    c.wait_managers(3, &h).await?;
    shoal_ok(&h, &["service", "create", "-d", "--name", "marker", "img:1"]).await?;
    let now = replicas(&h).await?;
    if first == 1 {
        assert_eq!(now, 2, "a write reported refused took effect");
    } else {
        assert!(now == 2 || now == 12, "replicas {now}");
    }
    assert_ne!(now, 7, "the refused write took effect");
    Ok(())
}

/// Networks through the CLI against a real daemon: subnets come from the pool given at init,
/// a `--subnet` over another network is refused naming it, an unknown network is refused at
/// service create, a service gets a VIP and its tasks addresses until the subnet runs out, which
/// `service ps` shows; a network in use cannot be removed, and once its service is gone it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_allocate_refuse_and_free() -> Result<()> {
    let root = tempfile::tempdir()?;
    let addr = format!("{}:2601", shoal_testkit::own_loopback_ip());
    let d = DaemonProcess::spawn(root.path(), "m1", &addr, &[]).await?;
    let h = d.host();
    let o = shoal(&h, &["cluster", "init", "--default-addr-pool", "10.0.0.0/30"]).await?;
    assert!(!o.ok && o.stderr.contains("smaller than one /24 subnet"), "{}", o.stderr);
    shoal_ok(&h, &["cluster", "init", "--default-addr-pool", "10.200.0.0/16", "--default-addr-pool-mask-length", "29"])
        .await?;

    shoal_ok(&h, &["network", "create", "front"]).await?;
    let nets = shoal_ok(&h, &["network", "ls", "--format", "json"]).await?.json()?;
    let named =
        |name: &str| nets.as_array().and_then(|a| a.iter().find(|n| n["spec"]["annotations"]["name"] == name)).cloned();
    let ingress = named("ingress").context("cluster init made the ingress network")?;
    assert_eq!((ingress["subnet"].as_str(), ingress["vni"].as_u64()), (Some("10.255.0.0/16"), Some(4096)));
    let front = named("front").context("front")?;
    assert_eq!((front["subnet"].as_str(), front["gateway"].as_str()), (Some("10.200.0.0/29"), Some("10.200.0.1")));
    assert_eq!(front["vni"], 4097);

    let o = shoal(&h, &["network", "create", "--subnet", "10.200.0.0/24", "back"]).await?;
    assert!(!o.ok);
    assert_eq!(
        o.stderr.trim(),
        "Error: subnet 10.200.0.0/24 overlaps network \"front\"; choose another --subnet",
        "{}",
        o.stderr
    );
    shoal_ok(&h, &["network", "create", "back"]).await?;
    let back = shoal_ok(&h, &["network", "inspect", "back"]).await?.json()?;
    assert_eq!((back[0]["subnet"].as_str(), back[0]["vni"].as_u64()), (Some("10.200.0.8/29"), Some(4098)));
    let o = shoal(&h, &["network", "create", "back"]).await?;
    assert!(!o.ok && o.stderr.contains("network \"back\" already exists"), "{}", o.stderr);

    let o = shoal(&h, &["service", "create", "--detach", "--name", "bad", "--network", "nosuch", "img"]).await?;
    assert!(!o.ok && o.stderr.contains("network \"nosuch\" not found"), "{}", o.stderr);

    // 6 addresses: the gateway, the VIP, then 4 of the 6 tasks.
    shoal_ok(&h, &["service", "create", "--detach", "--name", "web", "--replicas", "6", "--network", "front", "img"])
        .await?;
    let short = "no free address on network \"front\" (10.200.0.0/29)";
    let ps = wait_until(Duration::from_secs(20), "4 tasks with addresses and 2 told why not", || async {
        let v = shoal(&h, &["service", "ps", "web", "--format", "json"]).await.ok()?.json().ok()?;
        let rows = v.as_array()?.clone();
        (rows.len() == 6 && rows.iter().filter(|r| r["error"] == short).count() == 2).then_some(rows)
    })
    .await?;
    assert_eq!(ps.len(), 6);
    let svc = shoal_ok(&h, &["service", "inspect", "web"]).await?.json()?;
    assert_eq!(svc[0]["virtual_ips"][0]["address"], "10.200.0.2/29", "{svc}");

    let o = shoal(&h, &["network", "rm", "front"]).await?;
    assert!(!o.ok && o.stderr.contains("in use by service(s) web"), "{}", o.stderr);
    shoal_ok(&h, &["service", "rm", "web"]).await?;
    wait_until(Duration::from_secs(20), "front removable once web is gone", || async {
        shoal(&h, &["network", "rm", "front"]).await.ok()?.ok.then_some(())
    })
    .await?;
    let ids = shoal_ok(&h, &["network", "ls", "-q"]).await?.stdout;
    assert_eq!(ids.lines().count(), 2, "back and ingress are left: {ids}");
    Ok(())
}
