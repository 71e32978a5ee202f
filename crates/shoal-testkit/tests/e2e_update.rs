//! Rolling updates end to end: 1 manager + 2 workers, each a network namespace with its own
//! address and shoald (deploy/hosts.sh, set 4: 10.232.4.0/24), real containerd + runc. An
//! update of 6 replicas with a health check and parallelism 2 (stop-first) replaces every task,
//! never has fewer than 4 healthy (sampled without pause while it runs), and the CLI follows it
//! to the end; an update to a spec whose tasks exit rolls back by itself with
//! `--update-failure-action rollback`; one whose tasks never turn healthy pauses with `pause`;
//! `--rollback` goes back by hand; start-first never has fewer than 6 healthy; tasks no node can
//! take fail the update at its startup deadline; an image's own HEALTHCHECK applies; jobs run
//! their completions (10, at most 3 at once) and once per node. Needs root.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_testkit::{shoal, shoal_ok, wait_until, HostSet};

const T: Duration = Duration::from_secs(90);
const SET: &str = "4";
const IMAGE: &str = "10.232.4.254:5000/busybox:1";

/// (running tasks, of which with `env`) of service `web`, and its update state.
async fn status(h: &str, env: &str) -> Option<(usize, usize, String)> {
    let ps = shoal(h, &["service", "ps", "web", "--format", "json"]).await.ok()?.json().ok()?;
    let ids: Vec<String> = ps
        .as_array()?
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let mut with = 0;
    for id in &ids {
        let o = shoal(h, &["task", "exec", id, "--", "sh", "-c", "echo $V"]).await.ok()?;
        if o.ok && o.stdout.trim() == env {
            with += 1;
        }
    }
    let ls = shoal(h, &["service", "ls", "--format", "json"]).await.ok()?.json().ok()?;
    let state = ls.as_array()?.iter().find(|s| s["name"] == "web")?["update_state"].as_str()?.to_string();
    Some((ids.len(), with, state))
}

/// Running tasks of a `service ps` answer that are healthy.
fn healthy(v: &serde_json::Value) -> usize {
    v.as_array()
        .map(|a| a.iter().filter(|t| t["desired_state"] == "running" && t["health"] == "healthy").count())
        .unwrap_or(0)
}

/// Tasks of a `service ps` answer that run.
fn running_count(v: &serde_json::Value) -> usize {
    v.as_array().map(|a| a.iter().filter(|t| t["state"] == "running").count()).unwrap_or(0)
}

/// Samples `service ps SERVICE` without pause (at most 2,000 times) until finished, keeping the
/// lowest (or highest) `count` seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    value: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(h: &str, service: &'static str, lowest: bool, count: fn(&serde_json::Value) -> usize) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let value = Arc::new(AtomicUsize::new(if lowest { usize::MAX } else { 0 }));
        let (h, s, v) = (h.to_string(), stop.clone(), value.clone());
        let handle = tokio::spawn(async move {
            for _ in 0..2000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(ps) =
                    shoal(&h, &["service", "ps", service, "--format", "json"]).await.ok().and_then(|o| o.json().ok())
                {
                    if lowest {
                        v.fetch_min(count(&ps), Ordering::Relaxed);
                    } else {
                        v.fetch_max(count(&ps), Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Sampler { stop, value, handle }
    }

    /// Stops sampling; what it kept.
    async fn finish(self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await?;
        Ok(self.value.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_roll_pause_and_roll_back() -> Result<()> {
    let hosts = HostSet::new(SET)?;
    hosts.run(&["down"]).ok();
    hosts.run(&["up", "1", "2"]).context("bring up 1 manager + 2 workers")?;
    let h = hosts.host(1);
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--env",
            "V=1",
            "--update-parallelism",
            "2",
            "--update-delay",
            "1s",
            "--update-monitor",
            "2s",
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "3",
            // A check waits for a busy runtime (a loaded CI machine) rather than failing.
            "--health-timeout",
            "10s",
            // The shell's `exec sleep` is PID 1 without an init, and ignores SIGTERM: it would
            // take the whole grace period to stop.
            "--init",
            "--stop-grace-period",
            "60s",
            IMAGE,
            "sh",
            "-c",
            "sleep 1; touch /tmp/ok; exec sleep 3600",
        ],
    )
    .await?;
    let (running, _, _) = status(&h, "1").await.context("status")?;
    assert_eq!(running, 6);
    wait_until(T, "6 healthy tasks", || {
        let h = h.clone();
        async move {
            let v = shoal(&h, &["service", "ps", "web", "--format", "json"]).await.ok()?.json().ok()?;
            (healthy(&v) == 6).then_some(())
        }
    })
    .await?;
    let table = shoal_ok(&h, &["service", "ps", "web"]).await?.stdout;
    assert!(table.contains("running (healthy)"), "{table}");

    // A dry run says what the update will do, and does nothing.
    let plan = shoal_ok(&h, &["service", "update", "--dry-run", "--format", "json", "--env-add", "V=2", "web"])
        .await?
        .json()?;
    assert_eq!((plan["replaced"].as_array().map(Vec::len), plan["batches"].as_str()), (Some(6), Some("3")), "{plan}");
    let table = shoal_ok(&h, &["service", "update", "--dry-run", "--env-add", "V=2", "web"]).await?.stdout;
    assert!(table.contains("6 task(s) would be replaced in 3 batch(es), 2 at a time, stop-first"), "{table}");
    let (_, with, _) = status(&h, "1").await.context("status")?;
    assert_eq!(with, 6, "nothing changed");

    // Sample the running tasks without pause while the update runs.
    let sampler = Sampler::start(&h, "web", true, healthy);
    let started = std::time::Instant::now();
    let o = shoal(&h, &["service", "update", "--env-add", "V=2", "web"]).await?;
    let sampled = sampler.finish().await?;
    assert!(o.ok, "the CLI follows the update to its end: {o:?}");
    assert!(
        o.stdout.contains("out of 6 tasks updated") && o.stdout.contains("verify: Service converged"),
        "{}",
        o.stdout
    );
    eprintln!("update of 6 tasks (parallelism 2, delay 1 s, monitor 2 s): {} ms", started.elapsed().as_millis());
    let (running, with, state) = status(&h, "2").await.context("status")?;
    assert_eq!((running, with, state.as_str()), (6, 6, "completed"), "every task runs the new spec");
    let low = sampled;
    assert!((4..=6).contains(&low), "never fewer than 6 - 2 healthy, sampled: lowest {low}");
    let ls = shoal_ok(&h, &["service", "ls", "--format", "json"]).await?.json()?;
    assert_eq!(ls[0]["update_state"], "completed");
    // Under --init the replaced tasks stopped on SIGTERM, long before their 60 s grace period
    // (after leaving the VIPs: up to 5 s on a loaded machine).
    wait_until(Duration::from_secs(20), "the replaced tasks stopped by SIGTERM", || {
        let h = h.clone();
        async move {
            let v = shoal(&h, &["service", "ps", "web", "--format", "json"]).await.ok()?.json().ok()?;
            v.as_array()?
                .iter()
                .filter(|t| t["desired_state"] == "shutdown")
                .all(|t| t["state"] == "shutdown")
                .then_some(())
        }
    })
    .await?;

    // Tasks that exit at once: the update rolls back by itself to the running spec.
    let o = shoal(
        &h,
        &[
            "service",
            "update",
            "--update-failure-action",
            "rollback",
            "--args",
            "sh -c exit",
            "--env-add",
            "V=3",
            "web",
        ],
    )
    .await?;
    assert!(!o.ok && o.stderr.contains("update rolled back"), "{o:?}");
    let (running, with, state) = wait_until(T, "web back on V=2", || {
        let h = h.clone();
        async move { status(&h, "2").await.filter(|(r, w, _)| *r == 6 && *w == 6) }
    })
    .await?;
    assert_eq!((running, with, state.as_str()), (6, 6, "rollback_completed"));

    // With pause: tasks that never turn healthy stop the update after the first batch; the
    // others keep running.
    let o = shoal(
        &h,
        &["service", "update", "--update-failure-action", "pause", "--health-cmd", "false", "--env-add", "V=4", "web"],
    )
    .await?;
    assert!(!o.ok && o.stderr.contains("update paused") && o.stderr.contains("unhealthy"), "{o:?}");
    let (running, _, state) = status(&h, "2").await.context("status")?;
    assert_eq!(state, "paused");
    assert!(running >= 4, "the untouched tasks keep running: {running}");

    // By hand: back to the spec before the paused update.
    let o = shoal(&h, &["service", "update", "--rollback", "web"]).await?;
    assert!(o.ok && o.stdout.contains("verify: Service rolled back"), "{o:?}");
    let (running, with, state) = status(&h, "2").await.context("status")?;
    assert_eq!((running, with, state.as_str()), (6, 6, "rollback_completed"));

    // Every spec is numbered: create, update, automatic rollback, paused update, rollback.
    let history = shoal_ok(&h, &["service", "history", "web", "--format", "json"]).await?.json()?;
    let revisions: Vec<u64> =
        history.as_array().map(|a| a.iter().filter_map(|r| r["revision"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(revisions, [6, 5, 4, 3, 2, 1], "{history}");
    assert_eq!(history[0]["current"], true);
    // Back to the very first spec.
    let o = shoal(&h, &["service", "rollback", "--to", "1", "web"]).await?;
    assert!(o.ok, "{o:?}");
    let (running, with, state) = status(&h, "1").await.context("status")?;
    assert_eq!((running, with, state.as_str()), (6, 6, "rollback_completed"));
    let o = shoal(&h, &["service", "rollback", "--to", "99", "web"]).await?;
    assert!(!o.ok && o.stderr.contains("has no revision 99"), "{o:?}");

    // Start-first: every slot's new task is healthy before its old one leaves: never fewer
    // than 6 healthy.
    let sampler = Sampler::start(&h, "web", true, healthy);
    let o = shoal(&h, &["service", "update", "--update-order", "start-first", "--env-add", "V=5", "web"]).await?;
    let sampled = sampler.finish().await?;
    assert!(o.ok, "{o:?}");
    let (running, with, state) = status(&h, "5").await.context("status")?;
    assert_eq!((running, with, state.as_str()), (6, 6, "completed"));
    let low = sampled;
    assert_eq!(low, 6, "start-first never has fewer than 6 healthy, sampled: lowest {low}");

    // Tasks no node can take fail the update at its startup deadline instead of stalling it.
    let started = std::time::Instant::now();
    let o = shoal(
        &h,
        &[
            "service",
            "update",
            "--update-order",
            "stop-first",
            "--update-failure-action",
            "rollback",
            "--update-startup-deadline",
            "5s",
            "--constraint-add",
            "node.labels.nowhere==1",
            "web",
        ],
    )
    .await?;
    assert!(!o.ok && o.stderr.contains("not running within the startup deadline of 5s"), "{o:?}");
    assert!(started.elapsed() < T, "{:?}", started.elapsed());
    let (running, with, state) = wait_until(T, "web back on V=5, 6 running", || {
        let h = h.clone();
        async move { status(&h, "5").await.filter(|(r, w, _)| *r == 6 && *w == 6) }
    })
    .await?;
    assert_eq!((running, with, state.as_str()), (6, 6, "rollback_completed"));

    // An image's own HEALTHCHECK (busybox:hc: healthy once /tmp/healthy exists) applies
    // without a check in the spec; --no-healthcheck turns it off.
    let hc_image = IMAGE.replace(":1", ":hc");
    let health_of = |name: &'static str| {
        let h = h.clone();
        async move {
            let v = shoal(&h, &["service", "ps", name, "--format", "json"]).await.ok()?.json().ok()?;
            let t = v.as_array()?.iter().find(|t| t["state"] == "running")?.clone();
            t["health"].as_str().map(str::to_string)
        }
    };
    for (name, flags, want) in [("hc", &[][..], "healthy"), ("nohc", &["--no-healthcheck"][..], "")] {
        let mut args = vec!["service", "create", "--name", name];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[hc_image.as_str(), "sh", "-c", "sleep 1; touch /tmp/healthy; exec sleep 3600"]);
        shoal_ok(&h, &args).await?;
        wait_until(T, "the task running", || async { health_of(name).await.filter(|s| s == want) }).await?;
        // Long after the file exists (checks every second), it stays as it is.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(health_of(name).await.as_deref(), Some(want), "{name}");
        shoal_ok(&h, &["service", "rm", name]).await?;
    }

    // A replicated job: 10 completions, at most 3 at once; the CLI waits for the last.
    let sampler = Sampler::start(&h, "batch", false, running_count);
    let o = shoal(
        &h,
        &[
            "service",
            "create",
            "--name",
            "batch",
            "--mode",
            "replicated-job",
            "--replicas",
            "10",
            "--max-concurrent",
            "3",
            IMAGE,
            "sleep",
            "1",
        ],
    )
    .await?;
    let sampled = sampler.finish().await?;
    assert!(o.ok && o.stdout.contains("verify: Job complete"), "{o:?}");
    let ps = shoal_ok(&h, &["service", "ps", "batch", "--format", "json"]).await?.json()?;
    let complete = ps.as_array().map(|a| a.iter().filter(|t| t["state"] == "complete").count()).unwrap_or(0);
    assert_eq!(complete, 10, "{ps}");
    let peak = sampled;
    assert!((1..=3).contains(&peak), "at most 3 at once: {peak}");
    let ls = shoal_ok(&h, &["service", "ls"]).await?.stdout;
    assert!(ls.contains("(10 completed)"), "{ls}");

    // A global job: once on each of the 3 nodes.
    let o = shoal(&h, &["service", "create", "--name", "once", "--mode", "global-job", IMAGE, "true"]).await?;
    assert!(o.ok && o.stdout.contains("verify: Job complete"), "{o:?}");
    let ps = shoal_ok(&h, &["service", "ps", "once", "--format", "json"]).await?.json()?;
    let nodes: std::collections::BTreeSet<String> = ps
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["state"] == "complete")
                .filter_map(|t| t["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{ps}");
    Ok(())
}
