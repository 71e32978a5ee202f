//! Test fixtures for shoal: in-process nodes on loopback, `shoald` processes on their own
//! loopback addresses, a runner for the `shoal` CLI, and bounded waiting.
//!
//! Nothing here is used by the product; it must never hide a failure (a missing binary or a
//! daemon that does not come up is an error, not a skip).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use shoal_api::v1::control_client::ControlClient;
use shoal_client::{connect, Host};
use tokio::time::Instant;
use tonic::transport::Channel;

/// A set of network-namespace hosts made by `deploy/hosts.sh` (its own address range and
/// directory, so several sets run at once), taken down when dropped.
pub struct HostSet {
    dir: tempfile::TempDir,
    set: String,
}

impl HostSet {
    /// A set numbered `set` (`SHOAL_HOSTS_SET`), nothing started yet.
    pub fn new(set: &str) -> Result<Self> {
        Ok(Self { dir: tempfile::tempdir()?, set: set.to_string() })
    }

    /// Where the hosts keep their state (`h<I>/...`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `deploy/hosts.sh ARGS` for this set; its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/hosts.sh");
        let out = std::process::Command::new(script)
            .args(args)
            .env("SHOAL_HOSTS_DIR", self.dir.path())
            .env("SHOAL_HOSTS_SET", &self.set)
            .env("SHOAL_BIN_DIR", bin_dir()?)
            .output()?;
        if !out.status.success() {
            bail!("hosts.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `--host` value of host `i`.
    pub fn host(&self, i: usize) -> String {
        format!("unix://{}/h{i}/shoal.sock", self.dir.path().display())
    }

    /// The pid of host `i`'s shoald.
    pub fn pid(&self, i: usize) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join(format!("h{i}/pid")))?.trim().to_string())
    }
}

impl HostSet {
    /// The last warnings and errors of containerd and of every host's shoald: printed when a
    /// test fails, before the hosts and their logs are gone.
    fn print_log_tails(&self) {
        let mut logs = vec![self.dir.path().join("containerd.log")];
        for i in 1..=32 {
            let p = self.dir.path().join(format!("h{i}/shoald.log"));
            if p.exists() {
                logs.push(p);
            }
        }
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| ["WARN", "ERROR", "level=warn", "level=error"].iter().any(|k| l.contains(k)))
                .collect();
            let from = lines.len().saturating_sub(30);
            let name = p.strip_prefix(self.dir.path()).unwrap_or(&p).display().to_string();
            eprintln!("--- {name}: last {} warnings and errors ---", lines.len() - from);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for HostSet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        let _ = self.run(&["down"]);
    }
}

/// Polls `pred` until it returns `Some`, or fails after `timeout` with `what` in the error.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut pred: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = pred().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address no other running process uses for listening: made from this process's id
/// (all of 127.0.0.0/8 is local). With a port below the kernel's ephemeral range (32768 and
/// up), no outgoing connection can hold it either, so a daemon started on it later cannot lose
/// a race for the port the way "bind port 0, release, start" can.
pub fn own_loopback_ip() -> std::net::Ipv4Addr {
    let pid = std::process::id();
    std::net::Ipv4Addr::new(127, (pid >> 16) as u8, (pid >> 8) as u8, pid as u8)
}

/// Installs a test log subscriber once (RUST_LOG controls it).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Connects a control client to a host (`unix:///...` or `HOST:PORT`).
pub async fn control(host: &str) -> Result<ControlClient<Channel>> {
    let h = Host::parse(host)?;
    Ok(ControlClient::new(connect(&h).await?))
}

/// An in-process node: a `Daemon` on 127.0.0.1 with its own data dir and socket.
pub struct InProcessNode {
    /// Data dir (kept across restarts of the same node).
    pub dir: PathBuf,
    /// Bound address.
    pub addr: SocketAddr,
    /// Name in `node ls`.
    pub hostname: String,
    daemon: Option<shoal_manager::Daemon>,
}

impl InProcessNode {
    /// Starts a node in `dir` on `addr` (port 0 picks one).
    pub async fn start(dir: &Path, addr: SocketAddr, hostname: &str) -> Result<Self> {
        let daemon = shoal_manager::Daemon::start(shoal_manager::DaemonConfig {
            data_dir: dir.to_path_buf(),
            listen_addr: addr,
            advertise_addr: None,
            control_socket: Some(dir.join("shoal.sock")),
            hostname: Some(hostname.to_string()),
            force_new_cluster: false,
            runtime: None,
            dns_ttl: shoal_manager::DEFAULT_DNS_TTL,
        })
        .await
        .map_err(|e| anyhow!("start {hostname}: {e}"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            addr: daemon.listen_addr(),
            hostname: hostname.to_string(),
            daemon: Some(daemon),
        })
    }

    /// The node's local control socket (`unix://...`), as the CLI on that host would use it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("shoal.sock").display())
    }

    /// `HOST:PORT` of the node (mTLS only; what other nodes join through).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The daemon, while running.
    pub fn daemon(&self) -> Option<&shoal_manager::Daemon> {
        self.daemon.as_ref()
    }

    /// Stops the node (clean shutdown; the data dir stays).
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    /// Starts it again on the same address and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let addr = self.addr;
        let mut last = None;
        // The port may linger for a moment after shutdown.
        for _ in 0..50 {
            match Self::start(&self.dir, addr, &self.hostname).await {
                Ok(n) => {
                    self.daemon = n.daemon;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("restart failed")))
    }

    /// Starts a node named `name` in `root/name` on a free loopback port.
    pub async fn start_in(root: &Path, name: &str) -> Result<Self> {
        Self::start(&root.join(name), "127.0.0.1:0".parse()?, name).await
    }

    /// Makes this node the first manager of a new cluster.
    pub async fn init(&self, settings: Option<shoal_api::v1::ClusterSettings>) -> Result<()> {
        let req = shoal_api::v1::InitClusterRequest { advertise_addr: String::new(), settings, network_defaults: None };
        control(&self.host()).await?.init_cluster(req).await?;
        Ok(())
    }

    /// The join token for `role` (this node must be a manager).
    pub async fn join_token(&self, role: shoal_api::v1::NodeRole) -> Result<String> {
        let req = shoal_api::v1::GetJoinTokenRequest { role: role as i32, rotate: false };
        Ok(control(&self.host()).await?.get_join_token(req).await?.into_inner().token)
    }

    /// Joins this node to `via`'s cluster with `token`.
    pub async fn join(
        &self,
        token: &str,
        via: &InProcessNode,
    ) -> Result<shoal_api::v1::JoinClusterResponse, tonic::Status> {
        let mut c = control(&self.host()).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let req = shoal_api::v1::JoinClusterRequest {
            token: token.into(),
            remote_addr: via.addr(),
            advertise_addr: String::new(),
        };
        c.join_cluster(req).await.map(|r| r.into_inner())
    }
}

/// Where the built `shoald` and `shoal` binaries are: `SHOAL_BIN_DIR`, else next to the test
/// executable's parent (cargo's target/<profile>).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SHOAL_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("test executable has no parent dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of a built binary; an error that says how to build it if it is missing.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.exists() {
        bail!("{} not found: build the binaries first (cargo build --bins) or set SHOAL_BIN_DIR", p.display());
    }
    Ok(p)
}

/// A `shoald` child process on its own address.
pub struct DaemonProcess {
    /// Name in `node ls`.
    pub hostname: String,
    /// Data dir.
    pub dir: PathBuf,
    /// HOST:PORT.
    pub addr: String,
    /// Control socket.
    pub socket: PathBuf,
    child: Option<tokio::process::Child>,
    log: PathBuf,
}

impl DaemonProcess {
    /// Spawns `shoald` and waits (bounded) until its control socket answers.
    pub async fn spawn(root: &Path, hostname: &str, addr: &str, extra: &[&str]) -> Result<Self> {
        let dir = root.join(hostname);
        std::fs::create_dir_all(&dir)?;
        let mut d = Self {
            hostname: hostname.to_string(),
            socket: dir.join("shoal.sock"),
            dir,
            addr: addr.to_string(),
            child: None,
            log: root.join(format!("{hostname}.log")),
        };
        d.start(extra).await?;
        Ok(d)
    }

    async fn start(&mut self, extra: &[&str]) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = tokio::process::Command::new(bin("shoald")?);
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-addr")
            .arg(&self.addr)
            .arg("--control-socket")
            .arg(&self.socket)
            .arg("--hostname")
            .arg(&self.hostname)
            .args(extra)
            // Without an explicit runtime the node runs no tasks, whatever this machine has.
            .args(if extra.contains(&"--containerd-socket") { &[][..] } else { &["--no-runtime"][..] })
            .env("RUST_LOG", std::env::var("SHOALD_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().context("spawn shoald")?);
        let host = self.host();
        wait_until(Duration::from_secs(20), &format!("shoald {} to answer", self.hostname), || {
            let host = host.clone();
            async move { control(&host).await.ok().map(|_| ()) }
        })
        .await
        .with_context(|| format!("log:\n{}", self.log_tail()))
    }

    /// `unix://` host of the control socket.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the daemon's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// kill -9, as a crash.
    pub async fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM and wait (bounded), as a clean stop.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait()).await.is_err() {
                c.start_kill()?;
                c.wait().await?;
            }
        }
        Ok(())
    }

    /// Starts again with the same data dir and address.
    pub async fn restart(&mut self, extra: &[&str]) -> Result<()> {
        self.stop().await?;
        self.start(extra).await
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// Output of one CLI invocation.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status was success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit code (none when killed by a signal).
    pub code: Option<i32>,
}

impl CliOutput {
    /// Parses stdout as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {:?} (stderr {:?})", self.stdout, self.stderr))
    }
}

/// Runs `shoal --host HOST ARGS...` (bounded to 60 s).
pub async fn shoal(host: &str, args: &[&str]) -> Result<CliOutput> {
    let mut cmd = tokio::process::Command::new(bin("shoal")?);
    cmd.arg("--host").arg(host).args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| anyhow!("shoal {args:?} did not finish in 60 s"))??;
    Ok(cli_output(&out))
}

fn cli_output(out: &std::process::Output) -> CliOutput {
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// Runs the CLI with `input` on its stdin (bounded to 60 s).
pub async fn shoal_with_stdin(host: &str, args: &[&str], input: &[u8]) -> Result<CliOutput> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(bin("shoal")?);
    cmd.arg("--host")
        .arg(host)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| anyhow!("shoal {args:?} did not finish in 60 s"))??;
    Ok(cli_output(&out))
}

/// Runs the CLI and fails unless it succeeded.
pub async fn shoal_ok(host: &str, args: &[&str]) -> Result<CliOutput> {
    let o = shoal(host, args).await?;
    if !o.ok {
        bail!("shoal {args:?} failed: {}", o.stderr.trim());
    }
    Ok(o)
}

/// A running task of a service on a namespace host, as `service ps` shows it.
#[derive(Debug, Clone)]
pub struct RunningTask {
    /// Task id.
    pub id: String,
    /// The host's number (its hostname is `host<N>`).
    pub host: usize,
    /// Its address on its first network, without the prefix ("" on no network).
    pub address: String,
    /// Its container's process.
    pub pid: i64,
}

/// The tasks of `service` that run and are meant to, if `service ps` answered.
pub async fn running_tasks(host: &str, service: &str) -> Option<Vec<RunningTask>> {
    let v = shoal(host, &["service", "ps", service, "--format", "json"]).await.ok()?.json().ok()?;
    let mut out = Vec::new();
    for t in v.as_array()? {
        if t["desired_state"] != "running" || t["state"] != "running" {
            continue;
        }
        let node = t["node"].as_str()?.strip_prefix("host")?.parse().ok()?;
        let address = t["networks"][0]["address"].as_str().and_then(|a| a.split('/').next()).unwrap_or("").to_string();
        out.push(RunningTask {
            id: t["id"].as_str()?.to_string(),
            host: node,
            address,
            pid: t["pid"].as_i64().unwrap_or(0),
        });
    }
    Some(out)
}

/// Waits until exactly `n` tasks of `service` run.
pub async fn wait_running(host: &str, service: &str, n: usize, timeout: Duration) -> Result<Vec<RunningTask>> {
    wait_until(timeout, &format!("{n} running tasks of {service}"), || async move {
        let ts = running_tasks(host, service).await?;
        (ts.len() == n).then_some(ts)
    })
    .await
}

/// The service's VIP on its first network, once the allocator gave it.
pub async fn vip_of(host: &str, service: &str, timeout: Duration) -> Result<String> {
    wait_until(timeout, &format!("the VIP of {service}"), || async move {
        let v = shoal(host, &["service", "inspect", service, "--format", "json"]).await.ok()?.json().ok()?;
        Some(v[0]["virtual_ips"][0]["address"].as_str()?.split('/').next()?.to_string())
    })
    .await
}

/// Runs `args` inside a task's container (its network and mount namespaces, so its own
/// `/etc/resolv.conf` and binaries), bounded to 5 s: stdout if it succeeded.
pub fn in_task(pid: i64, args: &[&str]) -> Option<String> {
    let pid = pid.to_string();
    let mut all = vec!["5", "nsenter", "-t", pid.as_str(), "-n", "-m"];
    all.extend_from_slice(args);
    let out = std::process::Command::new("timeout").args(&all).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An HTTP/1.0 GET from the test's own namespace (bounded: 2 s to connect, 3 s to answer): the
/// body of a 200 answer, or why not.
pub fn http_get(host: &str, port: u16, path: &str) -> std::result::Result<String, String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = format!("{host}:{port}").parse().map_err(|e| format!("{e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    // (A CGI script's own header lines end in a bare newline.)
    let out = out.replace("\r\n", "\n");
    match out.split_once("\n\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head[8..].starts_with(" 200") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!("unexpected answer {out:?}")),
    }
}
