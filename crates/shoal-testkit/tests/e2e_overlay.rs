//! Overlay networks end to end: 3 managers + 2 workers, each a network namespace with its own
//! address and shoald (deploy/hosts.sh, set 2: 10.232.2.0/24), real containerd + runc, real
//! VXLAN and nftables. Tasks of two services reach each other across hosts over TCP; egress
//! works except on an internal network; two networks cannot reach each other; a gone task's
//! address leaves every host's forwarding entries; an agent restart keeps connectivity; nothing
//! is left on any host once the services and networks are gone. Needs root.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_testkit::{in_task, running_tasks, shoal, shoal_ok, wait_until, HostSet, RunningTask as TaskAt};

const T: Duration = Duration::from_secs(60);
const SET: &str = "2";
const IMAGE: &str = "10.232.2.254:5000/busybox:1";
const REGISTRY: &str = "10.232.2.254:5000";
const HOSTS: usize = 5;

/// The namespace file of a task running on host `i`.
fn task_ns(hosts: &HostSet, i: usize, task_id: &str) -> PathBuf {
    hosts.dir().join(format!("h{i}/data/agent/netns/{task_id}"))
}

/// Runs `args` in the network namespace at `ns`; (success, stdout).
fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    match Command::new("nsenter").arg(format!("--net={ns}")).args(args).output() {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => (false, format!("nsenter: {e}")),
    }
}

fn host_ns(i: usize) -> String {
    format!("/var/run/netns/shoal{SET}-h{i}")
}

/// An HTTP GET from a task's namespace (busybox wget, bounded to 3 s by `timeout`: busybox's
/// own -T crashes it): the body, if it answered.
fn get(ns: &std::path::Path, url: &str) -> Option<String> {
    let out = Command::new("timeout")
        .args(["3", "nsenter", &format!("--net={}", ns.display()), "busybox", "wget", "-q", "-O", "-", url])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The addresses a task's resolver gives for `name` (busybox nslookup), sorted; `None` when
/// the name does not resolve.
fn resolve(pid: i64, name: &str) -> Option<Vec<String>> {
    let out = in_task(pid, &["busybox", "nslookup", name])?;
    // The server's own lines come first ("Server:" and "Address: 127.0.0.11:53").
    let answers = out.split_once("Name:")?.1;
    let mut v: Vec<String> = answers
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:").map(|a| a.trim().to_string()))
        .filter(|a| !a.is_empty())
        .collect();
    v.sort();
    Some(v)
}

fn sorted(addrs: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = addrs.collect();
    v.sort();
    v
}

/// Waits until every task in `clients` resolves `name` to exactly `want`.
async fn wait_resolves(clients: &[TaskAt], name: &str, want: &[String]) -> Result<()> {
    for c in clients {
        let (pid, name2, want2) = (c.pid, name.to_string(), want.to_vec());
        wait_until(T, &format!("{name} -> {want:?} from task {}", c.id), move || {
            let (n, w) = (name2.clone(), want2.clone());
            async move { (resolve(pid, &n).as_deref() == Some(w.as_slice())).then_some(()) }
        })
        .await?;
    }
    Ok(())
}

/// The first host that still forwards to `address` over the overlay or answers ARP for it
/// (its MAC is 02:42 + the address), if any.
fn anywhere_forwards(address: &str) -> Option<usize> {
    let octets: Vec<u8> = address.split('.').filter_map(|o| o.parse().ok()).collect();
    let mac = format!("02:42:{}", octets.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
    (1..=HOSTS).find(|i| {
        let (_, fdb) = in_ns(&host_ns(*i), &["bridge", "fdb", "show"]);
        let (_, neigh) = in_ns(&host_ns(*i), &["ip", "neigh", "show", "nud", "permanent"]);
        fdb.lines().any(|l| l.contains(&mac) && l.contains(" dst "))
            || neigh.lines().any(|l| l.split_whitespace().next() == Some(address))
    })
}

fn serve(name: &str) -> Vec<String> {
    vec![
        "service".into(),
        "create".into(),
        "--name".into(),
        name.into(),
        "--replicas".into(),
        "2".into(),
        "--network".into(),
        "appnet".into(),
        IMAGE.into(),
        "sh".into(),
        "-c".into(),
        "mkdir -p /www && echo \"hello from $(hostname)\" >/www/index.html && exec httpd -f -p 80 -h /www".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_reach_each_other_across_hosts_and_nothing_stale_remains() -> Result<()> {
    let hosts = HostSet::new(SET)?;
    hosts.run(&["down"]).ok();
    hosts.run(&["up", "3", "2"]).context("bring up 3 managers + 2 workers")?;
    let h = hosts.host(1);

    shoal_ok(&h, &["network", "create", "appnet"]).await?;
    shoal_ok(&h, &["network", "create", "--internal", "privnet"]).await?;
    shoal_ok(&h, &["network", "create", "othernet"]).await?;
    let args = serve("srv");
    shoal_ok(&h, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    shoal_ok(
        &h,
        &["service", "create", "--name", "cli", "--replicas", "3", "--network", "appnet", IMAGE, "sleep", "1002"],
    )
    .await?;
    shoal_ok(&h, &["service", "create", "--name", "priv", "--network", "privnet", IMAGE, "sleep", "1003"]).await?;
    shoal_ok(&h, &["service", "create", "--name", "other", "--network", "othernet", IMAGE, "sleep", "1004"]).await?;
    let srv = shoal_testkit::wait_running(&h, "srv", 2, T).await?;
    let cli = shoal_testkit::wait_running(&h, "cli", 3, T).await?;

    // Every client reaches every server over TCP, across hosts too, and the container really
    // is in the namespace the agent made.
    let mut across = 0;
    for c in &cli {
        let ns = task_ns(&hosts, c.host, &c.id);
        let (ns_ino, pid_ino) = (
            std::fs::metadata(&ns).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok(),
            std::fs::metadata(format!("/proc/{}/ns/net", c.pid)).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok(),
        );
        assert!(
            ns_ino.is_some() && ns_ino == pid_ino,
            "task {} runs in its namespace ({ns_ino:?} vs {pid_ino:?})",
            c.id
        );
        for s in &srv {
            let body = wait_until(Duration::from_secs(10), &format!("{} -> {}", c.address, s.address), || {
                let url = format!("http://{}/", s.address);
                let ns = ns.clone();
                async move { get(&ns, &url) }
            })
            .await?;
            assert!(body.starts_with("hello from srv."), "{body}");
            across += usize::from(c.host != s.host);
        }
    }
    assert!(across > 0, "some client and server are on different hosts: {cli:?} {srv:?}");

    // By name, through each task's resolver at 127.0.0.11: the service is its VIP, `tasks.`
    // its tasks; connections to the VIP spread over the tasks, from every host.
    let svc = shoal_ok(&h, &["service", "inspect", "srv", "--format", "json"]).await?.json()?;
    let vip =
        svc[0]["virtual_ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).context("a VIP")?.to_string();
    wait_resolves(&cli, "tasks.srv", &sorted(srv.iter().map(|s| s.address.clone()))).await?;
    wait_resolves(&cli, "srv", std::slice::from_ref(&vip)).await?;
    for c in &cli {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let body = in_task(c.pid, &["busybox", "wget", "-q", "-O", "-", "http://srv/"]).unwrap_or_default();
            assert!(body.starts_with("hello from srv."), "GET http://srv/ from {}: {body:?}", c.id);
            seen.insert(body);
        }
        assert_eq!(seen.len(), 2, "20 connections through the VIP from {} reach both tasks: {seen:?}", c.id);
        let hosts = in_task(c.pid, &["cat", "/etc/hosts"]).unwrap_or_default();
        assert!(hosts.contains(&c.address), "the task's /etc/hosts names it: {hosts}");
    }
    assert_eq!(resolve(cli[0].pid, "srv.1").map(|v| v.len()), Some(1), "a task's name resolves to its address");

    // `task exec` through a manager to the task's node: output, stderr, exit code, stdin.
    let o = shoal(&h, &["task", "exec", "cli.2", "--", "sh", "-c", "hostname; echo oops >&2; exit 7"]).await?;
    assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (Some(7), "cli.2\n", "oops\n"), "{o:?}");
    let o =
        shoal(&h, &["task", "exec", &srv[0].id, "--", "busybox", "wget", "-q", "-O", "-", "http://localhost/"]).await?;
    assert!(o.ok && o.stdout.starts_with("hello from srv."), "{o:?}");
    let o = shoal_testkit::shoal_with_stdin(&h, &["task", "exec", "-i", "cli.1", "--", "tr", "a-z", "A-Z"], b"shout\n")
        .await?;
    assert_eq!((o.code, o.stdout.as_str()), (Some(0), "SHOUT\n"), "{o:?}");
    let o = shoal(&h, &["task", "exec", "cli.9", "--", "true"]).await?;
    assert!(!o.ok && o.stderr.contains("not found"), "{o:?}");

    // Egress leaves through the gateway bridge; an internal network has none; another network
    // is out of reach.
    let c0 = task_ns(&hosts, cli[0].host, &cli[0].id);
    assert!(get(&c0, &format!("http://{REGISTRY}/v2/")).is_some(), "egress from an overlay task");
    let p = shoal_testkit::wait_running(&h, "priv", 1, T).await?;
    let pns = task_ns(&hosts, p[0].host, &p[0].id);
    assert!(get(&pns, &format!("http://{REGISTRY}/v2/")).is_none(), "no egress from an internal network");
    // A host-mode published port answers on its task's node, and only there.
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "pub",
            "--publish",
            "published=8088,target=80,mode=host",
            IMAGE,
            "sh",
            "-c",
            "mkdir -p /www && echo published >/www/index.html && exec httpd -f -p 80 -h /www",
        ],
    )
    .await?;
    let p1 = shoal_testkit::wait_running(&h, "pub", 1, T).await?;
    let (on, off) = (p1[0].host, if p1[0].host == 1 { 2 } else { 1 });
    let from = if on == HOSTS { HOSTS - 1 } else { HOSTS };
    let url = |i: usize| format!("http://10.232.{SET}.{i}:8088/");
    let body = wait_until(Duration::from_secs(20), "the published port answers", || {
        let u = url(on);
        async move { get(std::path::Path::new(&host_ns(from)), &u) }
    })
    .await?;
    assert_eq!(body.trim(), "published");
    assert!(get(std::path::Path::new(&host_ns(from)), &url(off)).is_none(), "not on another node");

    // A service with no task: its VIP refuses at once instead of timing out.
    shoal_ok(&h, &["service", "create", "--detach", "--name", "idle", "--replicas", "0", "--network", "appnet", IMAGE])
        .await?;
    let idle_vip = shoal_testkit::vip_of(&h, "idle", T).await?;
    wait_resolves(&cli, "idle", std::slice::from_ref(&idle_vip)).await?;
    let refused = Command::new("timeout")
        .args(["5", "nsenter", "-t", &cli[0].pid.to_string(), "-n", "-m", "busybox", "nc", &idle_vip, "80"])
        .output()?;
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success() && why.contains("refused"), "{why}");
    let o = shoal_testkit::wait_running(&h, "other", 1, T).await?;
    let ons = task_ns(&hosts, o[0].host, &o[0].id);
    assert!(get(&ons, &format!("http://{}/", srv[0].address)).is_none(), "another network cannot reach appnet");
    assert_eq!(resolve(o[0].pid, "tasks.srv"), None, "another network's names are not answered");

    // Scale down: the gone task's address leaves every host's forwarding entries.
    shoal_ok(&h, &["service", "scale", "srv=1"]).await?;
    let left = shoal_testkit::wait_running(&h, "srv", 1, T).await?;
    let gone = srv.iter().find(|s| s.id != left[0].id).context("a task went")?.clone();
    wait_until(T, &format!("no host to forward to {}", gone.address), || {
        let a = gone.address.clone();
        async move { anywhere_forwards(&a).is_none().then_some(()) }
    })
    .await?;
    wait_resolves(&cli, "tasks.srv", std::slice::from_ref(&left[0].address)).await?;

    // A task whose process is killed: its address goes from every host, its replacement is
    // reachable.
    let victim = left[0].clone();
    let st = Command::new("kill").args(["-9", &victim.pid.to_string()]).status()?;
    assert!(st.success(), "kill the server's process");
    let replaced = wait_until(T, "the killed server replaced", || {
        let h = h.clone();
        let victim = victim.id.clone();
        async move { running_tasks(&h, "srv").await.filter(|t| t.len() == 1 && t[0].id != victim) }
    })
    .await?;
    wait_until(T, &format!("no host to forward to {}", victim.address), || {
        let (a, r) = (victim.address.clone(), replaced[0].address.clone());
        async move { (a == r || anywhere_forwards(&a).is_none()).then_some(()) }
    })
    .await?;
    wait_resolves(&cli, "tasks.srv", std::slice::from_ref(&replaced[0].address)).await?;
    let url = format!("http://{}/", replaced[0].address);
    for c in &cli {
        let ns = task_ns(&hosts, c.host, &c.id);
        wait_until(Duration::from_secs(10), "the replacement answers", || {
            let (ns, url) = (ns.clone(), url.clone());
            async move { get(&ns, &url) }
        })
        .await?;
    }

    // An agent restart keeps the network: same namespaces, still reachable.
    let worker = cli.iter().map(|c| c.host).max().context("a client host")?;
    let pid = hosts.pid(worker)?;
    let ino = |c: &TaskAt| {
        std::fs::metadata(task_ns(&hosts, c.host, &c.id)).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok()
    };
    let before: Vec<_> = cli.iter().filter(|c| c.host == worker).map(ino).collect();
    assert!(Command::new("kill").args(["-9", &pid]).status()?.success());
    hosts.run(&["start", &worker.to_string()])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in cli.iter().filter(|c| c.host == worker) {
        let ns = task_ns(&hosts, c.host, &c.id);
        wait_until(T, "reachable after the agent restart", || {
            let (ns, url) = (ns.clone(), url.clone());
            async move { get(&ns, &url) }
        })
        .await?;
    }
    let after: Vec<_> = cli.iter().filter(|c| c.host == worker).map(ino).collect();
    assert_eq!(before, after, "the restarted agent kept the tasks' namespaces");
    let ids = |ts: &[TaskAt]| ts.iter().map(|t| t.id.clone()).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(ids(&shoal_testkit::wait_running(&h, "cli", 3, T).await?), ids(&cli), "no client was replaced");

    // Everything removed: nothing of shoal's is left on any host.
    for s in ["srv", "cli", "priv", "other", "idle", "pub"] {
        shoal_ok(&h, &["service", "rm", s]).await?;
    }
    for n in ["appnet", "privnet", "othernet"] {
        wait_until(T, &format!("network rm {n}"), || {
            let h = h.clone();
            async move { shoal(&h, &["network", "rm", n]).await.ok().filter(|o| o.ok).map(|_| ()) }
        })
        .await?;
    }
    wait_until(T, "every host clean", || {
        let dir = hosts.dir().to_path_buf();
        async move {
            (1..=HOSTS)
                .all(|i| {
                    let (_, links) = in_ns(&host_ns(i), &["ip", "-o", "link"]);
                    let clean = !["shbr", "shvx", "shve", "shoal_gwbridge"].iter().any(|p| links.contains(p));
                    let ns_dir = dir.join(format!("h{i}/data/agent/netns"));
                    let empty = std::fs::read_dir(&ns_dir).map(|mut d| d.next().is_none()).unwrap_or(true);
                    let (nft, _) = in_ns(&host_ns(i), &["nft", "list", "table", "ip", "shoal"]);
                    let (ports, _) = in_ns(&host_ns(i), &["nft", "list", "table", "ip", "shoal_ports"]);
                    clean && empty && !nft && !ports
                })
                .then_some(())
        }
    })
    .await?;
    Ok(())
}
