//! Service VIPs and published ports end to end: 3 managers + 2 workers, each a network
//! namespace with its own address and shoald (deploy/hosts.sh, set 3: 10.232.3.0/24), real
//! containerd + runc, real VXLAN and nftables. A 3-replica service answers on its VIP from
//! every host and on its ingress port on every node (one without a task included), spreading
//! over all 3 tasks; clients sending requests without pause through the VIP and through an
//! ingress port see no failed request while the service scales 3 -> 6 -> 2 and while a task is
//! replaced (its node drained); `traffic=local` keeps the client's address; a UDP service
//! answers through its VIP and its ingress port; a port without tasks refuses at once; a port
//! another service publishes is refused naming it; nothing is left once the services are gone.
//! Needs root.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_testkit::{http_get, in_task, running_tasks, shoal, shoal_ok, wait_until, HostSet};

const T: Duration = Duration::from_secs(60);
const SET: &str = "3";
const IMAGE: &str = "10.232.3.254:5000/busybox:1";
const HOSTS: usize = 5;

/// The test's own address on the hosts' bridge (the client address a task sees).
const CLIENT: &str = "10.232.3.254";

fn addr(host: usize) -> String {
    format!("10.232.{SET}.{host}")
}

fn host_ns(i: usize) -> String {
    format!("/var/run/netns/shoal{SET}-h{i}")
}

/// The namespace file of a task running on host `i`.
fn task_ns(hosts: &HostSet, i: usize, task_id: &str) -> PathBuf {
    hosts.dir().join(format!("h{i}/data/agent/netns/{task_id}"))
}

/// The distinct bodies of `n` GETs (failures included, as `error: ...`).
fn bodies(host: &str, port: u16, n: usize) -> BTreeSet<String> {
    (0..n).map(|_| http_get(host, port, "/").unwrap_or_else(|e| format!("error: {e}"))).collect()
}

/// A UDP exchange from the network namespace `ns` (the test's own when `None`): the answer.
fn udp_echo(ns: Option<&str>, host: &str, port: u16) -> Option<String> {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(2)\n\
         s.sendto(b'ping', ('{host}', {port}))\nprint(s.recv(100).decode())\n"
    );
    let mut cmd = Command::new("timeout");
    cmd.arg("5");
    if let Some(ns) = ns {
        cmd.args(["nsenter", &format!("--net={ns}")]);
    }
    let out = cmd.args(["python3", "-c", &script]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A client that sends HTTP requests one after another (each connection new) until `stop`
/// exists or `limit` seconds passed, then prints `ok failed` and the first failures.
const LOAD: &str = r#"
import os, socket, sys, time
host, port, stop, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ok = failed = 0
why = []
end = time.time() + limit
while time.time() < end and not os.path.exists(stop):
    try:
        s = socket.create_connection((host, port), 2)
        s.settimeout(3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
        s.close()
        if data[9:12] == b"200" and b"hello from web." in data:
            ok += 1
        else:
            failed += 1
            why.append(repr(data[:60]))
    except Exception as e:
        failed += 1
        why.append("%.3f %s" % (time.time(), e))
    time.sleep(0.01)
print(ok, failed)
print("\n".join(why[:10]))
"#;

struct Load {
    child: Child,
    what: String,
}

impl Load {
    fn start(ns: Option<&str>, host: &str, port: u16, stop: &std::path::Path, what: &str) -> Result<Load> {
        let mut cmd = Command::new("timeout");
        cmd.arg("400");
        if let Some(ns) = ns {
            cmd.args(["nsenter", &format!("--net={ns}")]);
        }
        let child = cmd
            .args(["python3", "-c", LOAD, host, &port.to_string(), &stop.display().to_string(), "300"])
            .stdout(Stdio::piped())
            .spawn()
            .context("python3")?;
        Ok(Load { child, what: what.to_string() })
    }

    /// (requests answered, requests failed, why).
    fn finish(self) -> Result<(u64, u64, String)> {
        let out = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let counts: Vec<u64> = lines.next().unwrap_or("").split_whitespace().filter_map(|n| n.parse().ok()).collect();
        let [ok, failed] = counts[..] else { bail!("the {} client printed {text:?}", self.what) };
        Ok((ok, failed, lines.collect::<Vec<_>>().join("\n")))
    }
}

/// busybox httpd answering `hello from <task name>` on / and the client's address on /cgi-bin/ip.
const WEB: &str = "mkdir -p /www/cgi-bin && echo \"hello from $(hostname)\" >/www/index.html \
                   && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' >/www/cgi-bin/ip \
                   && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www";

/// A UDP echo server on port 5353 (the host's python, mounted read-only: busybox has none).
const UDP_ECHO: &str = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                        s.bind(('0.0.0.0', 5353))\nwhile True:\n    d, a = s.recvfrom(1000)\n    s.sendto(d, a)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vips_and_published_ports_spread_keep_serving_and_clean_up() -> Result<()> {
    let hosts = HostSet::new(SET)?;
    hosts.run(&["down"]).ok();
    hosts.run(&["up", "3", "2"]).context("bring up 3 managers + 2 workers")?;
    let h = hosts.host(1);
    let nets = shoal_ok(&h, &["network", "ls", "--format", "json"]).await?.json()?;
    let ingress =
        nets.as_array().and_then(|a| a.iter().find(|n| n["spec"]["annotations"]["name"] == "ingress")).cloned();
    assert!(ingress.is_some(), "cluster init made the ingress network: {nets}");

    shoal_ok(&h, &["network", "create", "appnet"]).await?;
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "appnet",
            "-p",
            "8080:80",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    )
    .await?;
    shoal_ok(
        &h,
        &["service", "create", "--name", "cli", "--mode", "global", "--network", "appnet", IMAGE, "sleep", "3000"],
    )
    .await?;
    let web = shoal_testkit::wait_running(&h, "web", 3, T).await?;
    let cli = shoal_testkit::wait_running(&h, "cli", HOSTS, T).await?;
    let names: BTreeSet<String> = (1..=3).map(|i| format!("hello from web.{i}")).collect();

    // The VIP from every host: connections spread over all 3 tasks.
    for c in &cli {
        let seen = wait_until(T, &format!("web's 3 tasks through its VIP from host{}", c.host), || {
            let pid = c.pid;
            async move {
                let seen: BTreeSet<String> = (0..30)
                    .filter_map(|_| in_task(pid, &["wget", "-q", "-O", "-", "http://web/"]))
                    .map(|b| b.trim().to_string())
                    .collect();
                (seen.len() >= 3).then_some(seen)
            }
        })
        .await?;
        assert_eq!(seen, names, "from host{}", c.host);
    }

    // The ingress port on every node, those without a task of web included, over all 3 tasks.
    let with_task: BTreeSet<usize> = web.iter().map(|t| t.host).collect();
    assert!(with_task.len() < HOSTS, "some node runs no web task: {web:?}");
    for i in 1..=HOSTS {
        let seen = wait_until(T, &format!("port 8080 of host{i} to all 3 tasks"), || {
            let names = names.clone();
            async move {
                let seen = bodies(&addr(i), 8080, 30);
                (seen == names).then_some(seen)
            }
        })
        .await?;
        assert_eq!(seen, names);
    }
    let o = shoal_ok(&h, &["service", "ls"]).await?;
    assert!(o.stdout.contains("*:8080->80/tcp"), "{}", o.stdout);

    // A port another service publishes is refused, naming it; one without a number gets a free one.
    let o = shoal(&h, &["service", "create", "--name", "clash", "-p", "8080:80", IMAGE, "sleep", "1"]).await?;
    assert!(!o.ok && o.stderr.contains("already published") && o.stderr.contains("\"web\""), "{o:?}");
    shoal_ok(&h, &["service", "create", "--detach", "--name", "idle", "--replicas", "0", "-p", "80", IMAGE]).await?;
    let idle = shoal_ok(&h, &["service", "inspect", "idle", "--format", "json"]).await?.json()?;
    let idle_port = idle[0]["spec"]["endpoint_spec"]["ports"][0]["published_port"].as_u64().context("a port")?;
    assert!((30000..=32767).contains(&idle_port), "{idle}");
    // A service without a running task refuses at once.
    let idle_port = u16::try_from(idle_port)?;
    let e = wait_until(T, "the idle port refuses", || async move {
        match http_get(&addr(4), idle_port, "/") {
            Err(e) if e.contains("refused") => Some(e),
            _ => None,
        }
    })
    .await?;
    let t = Instant::now();
    let again = http_get(&addr(4), idle_port, "/");
    assert!(matches!(&again, Err(e) if e.contains("refused")), "{again:?} ({e})");
    assert!(t.elapsed() < Duration::from_secs(1), "refused within a second, not timed out");

    // traffic=local: the task sees the client's own address; a node without a task refuses.
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "loc",
            "--publish",
            "published=8090,target=80,traffic=local",
            IMAGE,
            "sh",
            "-c",
            WEB,
        ],
    )
    .await?;
    let loc = shoal_testkit::wait_running(&h, "loc", 1, T).await?;
    let seen = wait_until(T, "the local port answers", || {
        let a = addr(loc[0].host);
        async move { http_get(&a, 8090, "/cgi-bin/ip").ok() }
    })
    .await?;
    // (busybox httpd listens on IPv6 too, so it writes the address IPv4-mapped.)
    assert!(seen.contains(CLIENT), "traffic=local keeps the client's address: {seen}");
    let other = (1..=HOSTS).find(|i| *i != loc[0].host).context("another host")?;
    let e = http_get(&addr(other), 8090, "/cgi-bin/ip");
    assert!(matches!(&e, Err(m) if m.contains("refused")), "a node without a local task refuses: {e:?}");
    let hidden = http_get(&addr(other), 8080, "/cgi-bin/ip").map_err(anyhow::Error::msg)?;
    assert!(
        hidden.contains("10.255.") && !hidden.contains(CLIENT),
        "traffic=cluster shows the forwarding node's ingress address: {hidden}"
    );

    // A UDP service, through its VIP and through an ingress port on a node without its task.
    shoal_ok(
        &h,
        &[
            "service",
            "create",
            "--name",
            "echo",
            "--network",
            "appnet",
            "-p",
            "5353:5353/udp",
            "--mount",
            "type=bind,source=/usr,target=/usr,readonly",
            "--mount",
            "type=bind,source=/usr/lib,target=/lib,readonly",
            "--mount",
            "type=bind,source=/usr/lib64,target=/lib64,readonly",
            IMAGE,
            "/usr/bin/python3",
            "-c",
            UDP_ECHO,
        ],
    )
    .await?;
    let echo = shoal_testkit::wait_running(&h, "echo", 1, T).await?;
    let echo_vip = shoal_testkit::vip_of(&h, "echo", T).await?;
    let away = (1..=HOSTS).find(|i| *i != echo[0].host).context("another host")?;
    let c = cli.iter().find(|c| c.host == away).context("a client there")?;
    let ns = task_ns(&hosts, c.host, &c.id).display().to_string();
    let got = wait_until(T, "UDP through the VIP", || {
        let (ns, vip) = (ns.clone(), echo_vip.clone());
        async move { udp_echo(Some(&ns), &vip, 5353) }
    })
    .await?;
    assert_eq!(got, "ping");
    let got =
        wait_until(T, "UDP through the ingress port", || async move { udp_echo(None, &addr(away), 5353) }).await?;
    assert_eq!(got, "ping");

    // Clients without pause through an ingress port and through the VIP while web scales
    // 3 -> 6 -> 2 and a task is replaced: nothing fails.
    let stop = hosts.dir().join("stop-load");
    let client_task = &cli[0];
    let web_vip = shoal_testkit::vip_of(&h, "web", T).await?;
    let through_port = Load::start(None, &addr(1), 8080, &stop, "ingress")?;
    let client_ns = task_ns(&hosts, client_task.host, &client_task.id).display().to_string();
    let through_vip = Load::start(Some(&client_ns), &web_vip, 80, &stop, "VIP")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    shoal_ok(&h, &["service", "scale", "web=6"]).await?;
    shoal_testkit::wait_running(&h, "web", 6, T).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    shoal_ok(&h, &["service", "scale", "web=2"]).await?;
    let two = shoal_testkit::wait_running(&h, "web", 2, T).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One task replaced: its node drained (the highest-numbered, so a worker when one holds a
    // task; never the VIP client's own host, whose `cli` task the drain stops too).
    let drained = two.iter().map(|t| t.host).filter(|h| *h != client_task.host).max().context("a web task")?;
    shoal_ok(&h, &["node", "update", "--availability", "drain", &format!("host{drained}")]).await?;
    wait_until(T, "web's task replaced off the drained node", || {
        let h = h.clone();
        async move { running_tasks(&h, "web").await.filter(|t| t.len() == 2 && t.iter().all(|t| t.host != drained)) }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&stop, b"")?;
    for load in [through_port, through_vip] {
        let what = load.what.clone();
        let (ok, failed, why) = load.finish()?;
        eprintln!("the {what} client: {ok} requests answered, {failed} failed");
        assert!(ok > 100, "the {what} client kept sending ({ok} answered)");
        assert_eq!(
            failed, 0,
            "no request through the {what} failed while scaling and replacing ({ok} answered): {why}"
        );
    }
    shoal_ok(&h, &["node", "update", "--availability", "active", &format!("host{drained}")]).await?;

    // Everything removed: no published port, ingress device or task network is left anywhere.
    for s in ["web", "cli", "idle", "loc", "echo"] {
        shoal_ok(&h, &["service", "rm", s]).await?;
    }
    wait_until(T, "every host clean", || async move {
        (1..=HOSTS)
            .all(|i| {
                let links = Command::new("nsenter")
                    .args([&format!("--net={}", host_ns(i)), "ip", "-o", "link"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let ports = Command::new("nsenter")
                    .args([&format!("--net={}", host_ns(i)), "nft", "list", "table", "ip", "shoal_ports"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                !["shbr", "shvx", "shve", "shoal_gwbridge"].iter().any(|p| links.contains(p)) && !ports
            })
            .then_some(())
    })
    .await?;
    Ok(())
}
