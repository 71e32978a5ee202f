//! End to end on real hosts: 3 managers + 2 workers, each a network namespace with its own
//! address and shoald, containers through a real containerd + runc, the image from a real local
//! registry built by the test itself (deploy/hosts.sh does the plumbing). Needs root.
//! The hosts are set 1 of deploy/hosts.sh (10.232.1.0/24), apart from a quickstart cluster on
//! set 0; another test function running at once would need its own set.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_testkit::{bin_dir, shoal, shoal_ok, wait_until, HostSet};

const T: Duration = Duration::from_secs(60);
/// The host set this file uses (`SHOAL_HOSTS_SET`).
const SET: &str = "1";
const IMAGE: &str = "10.232.1.254:5000/busybox:1";

fn pids_of(marker: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("pgrep").args(["-f", marker]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out).lines().map(str::to_string).collect()
}

/// Runs a command and fails unless it succeeded (a `kill` that missed its target must not pass
/// for a crash).
fn run_ok(cmd: &str, args: &[&str]) -> Result<()> {
    let st = std::process::Command::new(cmd).args(args).status()?;
    if !st.success() {
        bail!("{cmd} {args:?} failed: {st}");
    }
    Ok(())
}

/// Kills every container process of host `i` through its cgroups (what losing the machine does
/// to them; killing a shim leaves its containers running).
fn kill_containers_of(i: usize) -> Result<()> {
    run_ok(
        "sh",
        &[
            "-c",
            &format!(
                "find /sys/fs/cgroup -path '*/shoal/shoal{SET}-h{i}/*/cgroup.procs' | while read -r f; do {{ xargs -r kill -9 <\"$f\"; }} 2>/dev/null; done; true"
            ),
        ],
    )
}

/// The agent part of `shoal info` on host `h`: (connected, complete sets applied, secrets held).
async fn agent_info(h: &str) -> Option<(bool, u64, Vec<String>)> {
    let v = shoal(h, &["info", "--format", "json"]).await.ok()?.json().ok()?;
    let a = &v["agent"];
    let sessions = a["sessions"].as_str().and_then(|s| s.parse().ok()).or_else(|| a["sessions"].as_u64())?;
    let secrets = a["secrets"].as_array().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect());
    Some((a["connected"].as_bool().unwrap_or(false), sessions, secrets.unwrap_or_default()))
}

/// Waits until host `h`'s agent (a new process) follows the leader again: it has applied a
/// complete assignment set on an open stream.
async fn wait_agent_following(h: &str) -> Result<()> {
    wait_until(T, &format!("the agent of {h} to follow the leader"), || async move {
        let (connected, sessions, _) = agent_info(h).await?;
        (connected && sessions >= 1).then_some(())
    })
    .await
}

/// Checks `pred` every 200 ms for `window` and fails the first time it does not hold: for
/// "nothing more happens", which no single observation can show.
async fn holds_for<F, Fut>(window: Duration, what: &str, mut pred: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        if let Err(e) = pred().await {
            bail!("{what} stopped holding: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

async fn tasks(h: &str, service: &str) -> Option<Vec<Value>> {
    shoal(h, &["service", "ps", service, "--format", "json"]).await.ok()?.json().ok()?.as_array().cloned()
}

fn running(ts: &[Value]) -> Vec<&Value> {
    ts.iter().filter(|t| t["desired_state"] == "running" && t["state"] == "running").collect()
}

async fn wait_running(h: &str, service: &str, n: usize) -> Result<Vec<Value>> {
    wait_until(T, &format!("{n} running tasks of {service}"), || async move {
        let ts = tasks(h, service).await?;
        (running(&ts).len() == n).then(|| running(&ts).into_iter().cloned().collect())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_heal_and_move_across_hosts() -> Result<()> {
    let hosts = HostSet::new(SET)?;
    hosts.run(&["down"]).ok();
    hosts.run(&["up", "3", "2"]).context("bring up 3 managers + 2 workers")?;
    let h = hosts.host(1);

    // Between hosts everything is mTLS: plaintext and certificate-less clients are refused at a
    // manager's port; an admin certificate gives remote CLI access (here to a follower).
    let remote = "10.232.1.2:4242";
    let plain = shoal_client::tcp_endpoint(remote)?.connect_lazy();
    let r =
        shoal_api::v1::control_client::ControlClient::new(plain).list_nodes(shoal_api::v1::ListNodesRequest {}).await;
    assert!(r.is_err(), "plaintext gRPC must be refused: {r:?}");
    let o = shoal(remote, &["node", "ls"]).await?;
    assert!(!o.ok && o.stderr.contains("takes only mTLS"), "{}", o.stderr);
    let tls_dir = hosts.dir().join("admin");
    let tls = tls_dir.to_str().context("path")?;
    shoal_ok(&h, &["cluster", "admin-cert", "--name", "e2e", "--out", tls]).await?;
    let nodes = shoal_ok(remote, &["--tls-dir", tls, "node", "ls", "--format", "json"]).await?.json()?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(5), "{nodes}");

    // 6 replicas converge (the CLI waits and shows progress) and really run.
    let o = shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            IMAGE,
            "sh",
            "-c",
            "echo hello from $(hostname); exec sleep 1001",
        ],
    )
    .await?;
    assert!(o.stdout.contains("verify: Service converged"), "{}", o.stdout);
    wait_running(&h, "web", 6).await?;
    let logs = wait_until(T, "a log line from every task", || {
        let h = h.clone();
        async move {
            let o = shoal(&h, &["service", "logs", "web"]).await.ok()?;
            (o.stdout.matches("hello from web.").count() == 6).then_some(o.stdout)
        }
    })
    .await?;
    assert!(logs.contains("web.1@"), "{logs}");
    let before = pids_of("sleep 1001");
    assert_eq!(before.len(), 6, "six containers run");

    // Restart an agent: its containers keep running (same PIDs), nothing duplicated or lost.
    run_ok("kill", &["-9", &hosts.pid(4)?])?;
    hosts.run(&["start", "4"])?;
    wait_agent_following(&hosts.host(4)).await?;
    let ts = wait_running(&h, "web", 6).await?;
    assert_eq!(pids_of("sleep 1001"), before, "the same processes after the agent restart");
    assert_eq!(tasks(&h, "web").await.context("tasks")?.len(), 6, "no task was replaced: {ts:?}");

    // A container in host4's namespace that no task accounts for (what a failed clean-up
    // leaves) is removed by its agent's janitor; the tasks' containers stay.
    let socket = hosts.dir().join("containerd/containerd.sock");
    let rootfs = tempfile::tempdir()?;
    let ctr = |args: &[&str]| -> Result<String> {
        let o = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["-n", &format!("shoal{SET}-h4")])
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!("ctr {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let root = rootfs.path().to_str().context("path")?;
    ctr(&["containers", "create", "--rootfs", root, "stray", "sh"])?;
    assert!(ctr(&["containers", "ls", "-q"])?.lines().any(|l| l == "stray"), "the stray container was made");
    wait_until(T, "host4's janitor to remove the stray container", || {
        let listed = ctr(&["containers", "ls", "-q"]);
        async move { listed.ok().filter(|l| !l.lines().any(|l| l == "stray")).map(|_| ()) }
    })
    .await?;
    let log = std::fs::read_to_string(hosts.dir().join("h4/shoald.log"))?;
    assert!(log.contains("removing a container no assignment accounts for"), "the removal is logged");
    assert_eq!(pids_of("sleep 1001"), before, "the tasks' containers stay");

    // Lose a worker (kill -9 its shoald, its shims and its containers): its replicas run
    // elsewhere; once it is back, nothing runs twice.
    let on5 = ts.iter().filter(|t| t["node"] == "host5").count();
    run_ok("kill", &["-9", &hosts.pid(5)?])?;
    let _ = std::process::Command::new("pkill")
        .args(["-9", "-f", "containerd-shim-runc-v2 -namespace shoal1-h5 "])
        .status();
    kill_containers_of(5)?;
    wait_until(T, "host5's containers gone", || async { (pids_of("sleep 1001").len() == 6 - on5).then_some(()) })
        .await?;
    wait_until(T, "host5 down", || {
        let h = h.clone();
        async move {
            let v = shoal(&h, &["node", "ls", "--format", "json"]).await.ok()?.json().ok()?;
            v.as_array()?.iter().any(|n| n["hostname"] == "host5" && n["status"] == "down").then_some(())
        }
    })
    .await?;
    let ts = wait_running(&h, "web", 6).await?;
    assert!(ts.iter().all(|t| t["node"] != "host5"), "moved off host5 ({on5} were there): {ts:?}");
    hosts.run(&["start", "5"])?;
    wait_until(T, "host5 ready", || {
        let h = h.clone();
        async move {
            let v = shoal(&h, &["node", "ls", "--format", "json"]).await.ok()?.json().ok()?;
            v.as_array()?.iter().any(|n| n["hostname"] == "host5" && n["status"] == "ready").then_some(())
        }
    })
    .await?;
    wait_agent_following(&hosts.host(5)).await?;
    wait_running(&h, "web", 6).await?;
    assert_eq!(pids_of("sleep 1001").len(), 6, "nothing runs twice after host5 returns");

    // A container exiting with 1 is restarted per the policy; ps shows the exit code.
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "crash",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "200ms",
            "--restart-max-attempts",
            "1",
            IMAGE,
            "sh",
            "-c",
            "exit 1",
        ],
    )
    .await?;
    let r = wait_until(T, "a failed attempt with its exit code, a restart, then no more", || {
        let h = h.clone();
        async move {
            let ts = tasks(&h, "crash").await?;
            let with_code =
                ts.iter().filter(|t| t["state"] == "failed" && t["error"] == "task: non-zero exit (1)").count();
            let ended = ts
                .iter()
                .all(|t| ["failed", "rejected", "shutdown", "complete"].contains(&t["state"].as_str().unwrap_or("")));
            (with_code >= 1 && ts.len() == 2 && ended).then_some(())
        }
    })
    .await;
    if let Err(e) = r {
        let ps = shoal(&h, &["service", "ps", "crash"]).await?;
        bail!("{e}\n{}", ps.stdout);
    }
    // Then no more: over 3 s (15 restart delays, several orchestrator passes) no third task.
    holds_for(Duration::from_secs(3), "no restart after the last attempt", || {
        let h = h.clone();
        async move {
            let ts = tasks(&h, "crash").await.ok_or("no task list")?;
            if ts.len() == 2 {
                Ok(())
            } else {
                Err(format!("{} tasks: {ts:?}", ts.len()))
            }
        }
    })
    .await?;

    // Drain moves tasks away; scale to 0 and back.
    shoal_ok(&h, &["node", "update", "--availability", "drain", "host2"]).await?;
    let ts = wait_until(T, "nothing on host2", || {
        let h = h.clone();
        async move {
            let ts = tasks(&h, "web").await?;
            let r: Vec<Value> = running(&ts).into_iter().cloned().collect();
            (r.len() == 6 && r.iter().all(|t| t["node"] != "host2")).then_some(r)
        }
    })
    .await?;
    assert_eq!(ts.len(), 6);
    shoal_ok(&h, &["node", "update", "--availability", "active", "host2"]).await?;
    shoal_ok(&h, &["service", "scale", "web=0"]).await?;
    wait_running(&h, "web", 0).await?;
    wait_until(T, "containers gone", || async { pids_of("sleep 1001").is_empty().then_some(()) }).await?;
    // `service logs -f` picks up tasks that start after it began.
    let mut follow = tokio::process::Command::new(bin_dir()?.join("shoal"))
        .args(["--host", &h, "service", "logs", "-f", "web"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = follow.stdout.take().context("follow stdout")?;
    let followed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = followed.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&l);
                s.push('\n');
            }
        }
    });
    let hellos = || followed.lock().map(|s| s.matches("hello from web.").count()).unwrap_or(0);
    // `-f` first replays what the ended tasks printed: wait until it has all of it, so every
    // line past that count can only come from the tasks started below.
    let old = shoal_ok(&h, &["service", "logs", "web"]).await?.stdout.matches("hello from web.").count();
    wait_until(T, "the replay of the ended tasks' logs", || async { (hellos() >= old).then_some(()) }).await?;
    assert_eq!(hellos(), old, "the replay holds exactly what `service logs` shows");
    shoal_ok(&h, &["service", "scale", "web=6"]).await?;
    wait_running(&h, "web", 6).await?;
    let r =
        wait_until(T, "the new tasks' output in the followed logs", || async { (hellos() >= old + 6).then_some(()) })
            .await;
    follow.kill().await.ok();
    if let Err(e) = r {
        bail!("{e}\nfollowed:\n{}", followed.lock().map(|s| s.clone()).unwrap_or_default());
    }

    // Global: one task per node.
    shoal_ok(&h, &["service", "create", "--name", "agent", "--mode", "global", IMAGE, "sleep", "1002"]).await?;
    let ts = wait_running(&h, "agent", 5).await?;
    let nodes: BTreeSet<&str> = ts.iter().filter_map(|t| t["node"].as_str()).collect();
    assert_eq!(nodes.len(), 5, "{ts:?}");

    // A constraint nobody meets: pending with the reason. A missing image: rejected, clearly.
    shoal_ok(&h, &["service", "create", "-d", "--name", "nowhere", "--constraint", "node.labels.zone==mars", IMAGE])
        .await?;
    wait_until(T, "the pending reason", || {
        let h = h.clone();
        async move {
            let ts = tasks(&h, "nowhere").await?;
            ts.iter()
                .any(|t| t["state"] == "pending" && t["error"].as_str().unwrap_or("").starts_with("no suitable node"))
                .then_some(())
        }
    })
    .await?;
    shoal_ok(&h, &["service", "create", "-d", "--name", "ghost", "10.232.1.254:5000/ghost:1"]).await?;
    wait_until(T, "the rejection", || {
        let h = h.clone();
        async move {
            let ts = tasks(&h, "ghost").await?;
            ts.iter()
                .any(|t| t["state"] == "rejected" && t["error"].as_str().unwrap_or("").contains("not found"))
                .then_some(())
        }
    })
    .await?;
    // Secrets and configs: mounted read-only in the containers that use them, kept in a tmpfs
    // only on the nodes that run such tasks, never shown by inspect, not removable while used.
    let secret_file = hosts.dir().join("db-pass.txt");
    std::fs::write(&secret_file, "s3cr3t-value-42\n")?;
    let config_file = hosts.dir().join("app.conf");
    std::fs::write(&config_file, "mode=fast\n")?;
    shoal_ok(&h, &["secret", "create", "db-pass", secret_file.to_str().context("path")?]).await?;
    shoal_ok(&h, &["config", "create", "app-cfg", config_file.to_str().context("path")?]).await?;
    let inspect = shoal_ok(&h, &["secret", "inspect", "db-pass"]).await?;
    assert!(!inspect.stdout.contains("s3cr3t") && !inspect.stdout.contains("czNjcjN0"), "{}", inspect.stdout);
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "sec",
            "--secret",
            "db-pass",
            "--config",
            "source=app-cfg,target=/etc/app.conf",
            IMAGE,
            "sh",
            "-c",
            "cat /run/secrets/db-pass /etc/app.conf; exec sleep 1003",
        ],
    )
    .await?;
    let ts = wait_running(&h, "sec", 1).await?;
    let on = ts[0]["node"].as_str().context("node")?.trim_start_matches("host").parse::<usize>()?;
    wait_until(T, "the secret and the config in the service's logs", || {
        let h = h.clone();
        async move {
            let o = shoal(&h, &["service", "logs", "sec"]).await.ok()?;
            (o.stdout.contains("s3cr3t-value-42") && o.stdout.contains("mode=fast")).then_some(())
        }
    })
    .await?;
    let holds_secret = |i: usize| -> bool {
        let dir = hosts.dir().join(format!("h{i}/data/agent/files"));
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if std::fs::read_to_string(&p).is_ok_and(|t| t.contains("s3cr3t-value-42")) {
                    return true;
                }
            }
        }
        false
    };
    // What each agent received from the dispatcher, not only what it wrote: the secret reaches
    // the node that runs the task and no other.
    for i in 1..=5 {
        let (_, _, secrets) = agent_info(&hosts.host(i)).await.context("agent info")?;
        assert_eq!(
            secrets.contains(&"db-pass".to_string()),
            i == on,
            "host{i} received {secrets:?}; only host{on} runs a task that uses db-pass"
        );
        assert_eq!(holds_secret(i), i == on, "host{i} holds the secret only if it runs the task (it is on host{on})");
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let files_dir = hosts.dir().join(format!("h{on}/data/agent/files"));
    assert!(
        mounts.lines().any(|l| l.contains(&format!(" {} tmpfs ", files_dir.display()))),
        "the files live on a tmpfs"
    );
    let o = shoal(&h, &["secret", "rm", "db-pass"]).await?;
    assert!(!o.ok && o.stderr.contains("in use by service(s) sec"), "{}", o.stderr);
    shoal_ok(&h, &["service", "rm", "sec"]).await?;
    wait_until(T, "the secret gone from the node", || async { (!holds_secret(on)).then_some(()) }).await?;
    shoal_ok(&h, &["secret", "rm", "db-pass"]).await?;
    shoal_ok(&h, &["config", "rm", "app-cfg"]).await?;

    // Nothing else was disturbed.
    wait_running(&h, "web", 6).await?;
    for s in ["web", "agent", "crash", "nowhere", "ghost"] {
        shoal_ok(&h, &["service", "rm", s]).await?;
    }
    wait_until(T, "every container gone", || async {
        (pids_of("sleep 1001").is_empty() && pids_of("sleep 1002").is_empty()).then_some(())
    })
    .await?;
    Ok(())
}
