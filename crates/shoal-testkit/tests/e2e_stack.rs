//! Stacks end to end: 1 manager + 2 workers, each a network namespace with its own address and
//! shoald (deploy/hosts.sh, set 5: 10.232.5.0/24), real containerd + runc. The voting app's stack
//! file (images swapped for the test image, `tests/stacks/voting.yml`) deploys with the
//! registry from `.env`, honours depends_on (result after a healthy db), converges, and answers
//! through its published ports on every node and its service names inside the stack; an
//! unchanged redeploy touches nothing; a second file changing one service updates only that
//! one (every other task id stays); `--prune` removes the service the file no longer names;
//! `stack rm` leaves no service, network or task behind; the WordPress sample
//! (`tests/stacks/wordpress.yml`) runs beside it, its site reaching its database by name; the stack's named volume is listed on
//! its node with its size and users, cannot be removed while used, and can be once the stack
//! is gone. Needs root.

use std::time::Duration;

use anyhow::{Context, Result};
use shoal_testkit::{http_get, in_task, running_tasks, shoal, shoal_with_stdin, wait_until, HostSet};

const T: Duration = Duration::from_secs(90);
const SET: &str = "5";
const REGISTRY: &str = "10.232.5.254:5000";
const STACK: &str = include_str!("stacks/voting.yml");
const WORDPRESS: &str = include_str!("stacks/wordpress.yml");

fn node(i: usize) -> String {
    format!("10.232.{SET}.{i}")
}

/// The running tasks of every service of stack `vote`: (service, task id).
async fn stack_tasks(h: &str) -> Result<Vec<(String, String)>> {
    let v = shoal(h, &["stack", "ps", "vote", "--format", "json"]).await?.json()?;
    let mut out: Vec<(String, String)> = v
        .as_array()
        .context("a list")?
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .filter_map(|t| {
            let name = t["name"].as_str()?;
            Some((name.rsplit_once('.')?.0.to_string(), t["id"].as_str()?.to_string()))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_deploy_redeploy_prune_and_go() -> Result<()> {
    let hosts = HostSet::new(SET)?;
    hosts.run(&["down"]).ok();
    hosts.run(&["up", "1", "2"]).context("bring up 1 manager + 2 workers")?;
    let h = hosts.host(1);
    let dir = hosts.dir().join("stack");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("docker-stack.yml");
    std::fs::write(&file, STACK)?;
    std::fs::write(dir.join(".env"), format!("# the test registry\nREGISTRY={REGISTRY}\n"))?;
    let file = file.to_str().context("path")?.to_string();

    // Deploy: dependencies first, and the whole stack followed until it converged.
    let o = shoal(&h, &["stack", "deploy", "-c", &file, "vote"]).await?;
    assert!(o.ok && o.stdout.contains("verify: Stack converged"), "{o:?}");
    let at = |line: &str| o.stdout.find(line).with_context(|| format!("{line:?} in {}", o.stdout));
    assert!(at("Create network vote_frontend")? < at("Creating service vote_redis")?);
    assert!(at("Creating service vote_db")? < at("vote_result: waiting for vote_db to be healthy")?);
    assert!(at("vote_result: waiting for vote_db to be healthy")? < at("Creating service vote_result")?);
    assert!(at("Creating service vote_redis")? < at("Creating service vote_vote")?);

    // Published ports answer on every node; names resolve inside the stack.
    for i in 1..=3 {
        let vote =
            wait_until(T, "vote on its published port", || async move { http_get(&node(i), 5000, "/").ok() }).await?;
        assert_eq!(vote, "vote 1", "node {i}");
        let result =
            wait_until(T, "result on its published port", || async move { http_get(&node(i), 5001, "/").ok() }).await?;
        assert_eq!(result, "result", "node {i}");
    }
    let worker = wait_until(T, "the worker task", || {
        let h = h.clone();
        async move { running_tasks(&h, "vote_worker").await?.into_iter().next() }
    })
    .await?;
    let seen = wait_until(T, "the worker reaching redis by name", || async move {
        in_task(worker.pid, &["cat", "/tmp/seen"]).filter(|s| s.trim() == "ok")
    })
    .await?;
    assert_eq!(seen.trim(), "ok");

    let ls = shoal(&h, &["stack", "ls", "--format", "json"]).await?.json()?;
    assert_eq!(ls, serde_json::json!([{"name": "vote", "services": 5}]));
    let services = shoal(&h, &["stack", "services", "vote", "--format", "json"]).await?.json()?;
    let names: Vec<&str> =
        services.as_array().map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect()).unwrap_or_default();
    assert_eq!(names, ["vote_db", "vote_redis", "vote_result", "vote_vote", "vote_worker"]);
    let before = stack_tasks(&h).await?;
    assert_eq!(before.len(), 6, "{before:?}");

    // A second stack beside it: the site reaches its database by name, through its port; the
    // key Swarm ignores is warned about.
    let wp = dir.join("wordpress.yml");
    std::fs::write(&wp, WORDPRESS)?;
    let o = shoal(&h, &["stack", "deploy", "-c", wp.to_str().context("path")?, "wp"]).await?;
    assert!(o.ok && o.stdout.contains("verify: Stack converged"), "{o:?}");
    assert!(o.stderr.contains("ignoring restart"), "{o:?}");
    let site = wait_until(T, "the site serving what it got from db", || async move {
        http_get(&node(2), 8000, "/").ok().filter(|b| b == "db ok")
    })
    .await?;
    assert_eq!(site, "db ok");
    let ls = shoal(&h, &["stack", "ls", "--format", "json"]).await?.json()?;
    assert_eq!(ls, serde_json::json!([{"name": "vote", "services": 5}, {"name": "wp", "services": 2}]));
    let o = shoal(&h, &["stack", "rm", "wp"]).await?;
    assert!(o.ok, "{o:?}");

    // The named volume is on db's node, with what db wrote, and cannot go while db uses it.
    let volumes = shoal(&h, &["volume", "ls", "--format", "json"]).await?.json()?;
    let db_data: Vec<&serde_json::Value> =
        volumes.as_array().map(|a| a.iter().filter(|v| v["name"] == "vote_db-data").collect()).unwrap_or_default();
    assert_eq!(db_data.len(), 1, "{volumes}");
    assert_eq!((db_data[0]["node"].as_str(), db_data[0]["size_bytes"].as_u64()), (Some("host1"), Some(3)), "{volumes}");
    assert_eq!(db_data[0]["used_by"], serde_json::json!(["vote_db.1"]));
    let o = shoal(&h, &["volume", "rm", "vote_db-data"]).await?;
    assert!(!o.ok && o.stderr.contains("is in use by task(s) vote_db.1"), "{o:?}");

    // The same files again: nothing changes.
    let o = shoal(&h, &["stack", "deploy", "--detach", "-c", &file, "vote"]).await?;
    assert!(o.ok && o.stdout.contains("nothing changed"), "{o:?}");
    assert_eq!(stack_tasks(&h).await?, before);

    // A second file changes one service: only its tasks are replaced.
    let over = dir.join("override.yml");
    std::fs::write(&over, "services:\n  vote:\n    environment:\n      VOTE_VERSION: \"2\"\n")?;
    let over = over.to_str().context("path")?.to_string();
    let plan = shoal(&h, &["stack", "deploy", "--dry-run", "-c", &file, "-c", &over, "vote"]).await?;
    assert_eq!(plan.stdout.trim(), "would update service vote_vote", "{plan:?}");
    let o = shoal(&h, &["stack", "deploy", "-c", &file, "-c", &over, "vote"]).await?;
    assert!(o.ok && o.stdout.contains("Updating service vote_vote"), "{o:?}");
    let after = stack_tasks(&h).await?;
    let others = |v: &[(String, String)]| v.iter().filter(|(s, _)| s != "vote_vote").cloned().collect::<Vec<_>>();
    assert_eq!(others(&after), others(&before), "no other service's task changed");
    assert!(after.iter().filter(|(s, _)| s == "vote_vote").all(|t| !before.contains(t)), "{after:?}");
    for i in 1..=3 {
        let vote =
            wait_until(
                T,
                "the new vote",
                || async move { http_get(&node(i), 5000, "/").ok().filter(|b| b == "vote 2") },
            )
            .await?;
        assert_eq!(vote, "vote 2");
    }

    // --prune: the service the file no longer names goes; the rest stays.
    let pruned = dir.join("pruned.yml");
    let (head, tail) = STACK.split_once("  worker:\n").context("worker")?;
    let (_, rest) = tail.split_once("\nnetworks:\n").context("networks")?;
    std::fs::write(&pruned, format!("{head}\nnetworks:\n{rest}"))?;
    let pruned = pruned.to_str().context("path")?.to_string();
    let o = shoal(&h, &["stack", "deploy", "--detach", "--prune", "-c", &pruned, "-c", &over, "vote"]).await?;
    assert!(o.ok && o.stdout.contains("Remove service vote_worker"), "{o:?}");
    let services = shoal(&h, &["stack", "services", "vote", "--format", "json"]).await?.json()?;
    assert_eq!(services.as_array().map(Vec::len), Some(4), "{services}");

    // `stack config` prints the merged, interpolated file, here from standard input.
    let o =
        shoal_with_stdin(&h, &["stack", "config", "-c", "-"], b"services:\n  web:\n    image: ${IMG:-img}:${TAG-1}\n")
            .await?;
    assert!(o.ok && o.stdout == "services:\n  web:\n    image: img:1\n", "{o:?}");

    // An error found before deploying changes nothing.
    let bad = dir.join("bad.yml");
    std::fs::write(&bad, "services:\n  vote:\n    image: x\n    deploy:\n      replicas: many\n")?;
    let o = shoal(&h, &["stack", "deploy", "-c", bad.to_str().context("path")?, "vote"]).await?;
    assert!(!o.ok && o.stderr.contains("bad.yml:5:17: replicas must be a whole number"), "{o:?}");

    // stack rm: nothing of the stack is left, and every task is gone from the hosts.
    let o = shoal(&h, &["stack", "rm", "vote"]).await?;
    assert!(o.ok, "{o:?}");
    let ls = shoal(&h, &["stack", "ls", "--format", "json"]).await?.json()?;
    assert_eq!(ls, serde_json::json!([]));
    let nets = shoal(&h, &["network", "ls", "--format", "json"]).await?.json()?;
    let left: Vec<&str> = nets
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["spec"]["annotations"]["name"].as_str())
                .filter(|n| n.starts_with("vote_"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "networks left: {left:?}");
    for i in 1..=3 {
        let host = hosts.host(i);
        wait_until(T, "no task left on the host", || {
            let host = host.clone();
            async move {
                let info = shoal(&host, &["info", "--format", "json"]).await.ok()?.json().ok()?;
                (info["agent"]["tasks"].as_u64().unwrap_or(0) == 0).then_some(())
            }
        })
        .await?;
    }
    // The volume outlives the stack (as in Swarm) until removed.
    let o = shoal(&h, &["volume", "rm", "vote_db-data"]).await?;
    assert!(o.ok && o.stdout.contains("removed on host1"), "{o:?}");
    let volumes = shoal(&h, &["volume", "ls", "-q"]).await?.stdout;
    assert!(!volumes.contains("vote_db-data"), "{volumes}");
    let o = shoal(&h, &["volume", "rm", "vote_db-data"]).await?;
    assert!(!o.ok && o.stderr.contains("no volume \"vote_db-data\""), "{o:?}");
    Ok(())
}
