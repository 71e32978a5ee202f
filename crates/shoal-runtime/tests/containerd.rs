//! The containerd runtime against a real, private containerd and a real local registry holding
//! an image built from busybox-static. Needs root, containerd, runc, docker-registry, umoci,
//! skopeo, busybox-static and htpasswd (apache2-utils); a missing piece fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_runtime::containerd::Containerd;
use shoal_runtime::{ContainerRuntime, ContainerSpec, ContainerStatusKind, MountSpec, RegistryAuth, RuntimeError};

struct Fixture {
    dir: tempfile::TempDir,
    /// containerd namespace, unique per run (runc keeps its state per namespace outside our dir).
    namespace: String,
    containerd: Child,
    registry: Child,
    reg: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.containerd.kill();
        let _ = self.registry.kill();
        let _ = self.containerd.wait();
        let _ = self.registry.wait();
        // Container processes outlive a killed shim: kill them through their cgroups.
        let pattern = format!("*/shoal/{}/*/cgroup.procs", self.namespace);
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("find /sys/fs/cgroup -path '{pattern}' | while read -r f; do xargs -r kill -9 < \"$f\"; done"))
            .status();
        let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/{}", self.namespace));
        let root = self.dir.path().display().to_string();
        let _ = Command::new("pkill").args(["-9", "-f", &format!("containerd-shim-runc-v2 .*{root}")]).status();
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let mut targets: Vec<&str> =
                mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|t| t.starts_with(&root)).collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = Command::new("umount").args(["-l", t]).status();
            }
        }
    }
}

/// Status code of `GET /v2/` at `addr`, if something answers HTTP there.
fn v2_status(addr: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    String::from_utf8_lossy(&buf[..n]).split(' ').nth(1)?.parse().ok()
}

/// Starts docker-registry with the config `make(addr)` writes to `path`, on `addr`, and waits
/// (bounded) until it answers `GET /v2/` with `want` (200 open, 401 with a password).
fn start_registry(path: &Path, addr: &str, want: u16, make: impl Fn(&str) -> String) -> (Child, String) {
    std::fs::write(path, make(addr)).expect("registry config");
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry must be installed (apt-get install docker-registry)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().ok().flatten() {
            let _ = child.wait();
            panic!("docker-registry on {addr} exited at start: {status}");
        }
        if v2_status(addr) == Some(want) {
            return (child, addr.to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("docker-registry did not answer on {addr} within 20 s");
}

/// An address for a registry of this test process that no other process uses: a loopback
/// address made from the process id (the whole of 127.0.0.0/8 is local), and a port below the
/// kernel's ephemeral range, so no outgoing connection takes it either.
fn own_addr(port: u16) -> String {
    let pid = std::process::id();
    format!("127.{}.{}.{}:{port}", (pid >> 16) & 0xff, (pid >> 8) & 0xff, pid & 0xff)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sock = d.join("containerd.sock");
    std::fs::write(
        d.join("containerd.toml"),
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            sock.display()
        ),
    )
    .expect("config");
    let containerd = Command::new("containerd")
        .arg("--config")
        .arg(d.join("containerd.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("containerd.log")).expect("log"))
        .spawn()
        .expect("containerd must be installed (apt-get install containerd runc)");
    let root = d.join("registry");
    let (registry, reg) = start_registry(&d.join("registry.yml"), &own_addr(5000), 200, |addr| {
        format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", root.display())
    });
    wait_for("containerd socket", || sock.exists());
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/images/build.sh");
    let st = Command::new(build).arg(d.join("image")).arg(&reg).stdout(Stdio::null()).status().expect("build.sh");
    assert!(st.success(), "building the test image failed");
    let namespace = format!("shoal-test-{}", std::process::id());
    Fixture { dir, namespace, containerd, registry, reg }
}

fn spec(id: &str, image: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        image: image.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn runtime(f: &Fixture, state: &Path) -> Containerd {
    Containerd::connect(
        &f.dir.path().join("containerd.sock"),
        &f.namespace,
        vec![f.reg.clone()],
        None,
        state.to_path_buf(),
    )
    .expect("connect")
}

async fn run_to_exit(rt: &Containerd, s: &ContainerSpec) -> (i32, String) {
    rt.create(s).await.expect("create");
    rt.start(&s.id).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(20), rt.wait(&s.id)).await.expect("exits").expect("wait");
    let log: PathBuf = rt.logs(&s.id).await.expect("log path");
    let out = std::fs::read_to_string(log).unwrap_or_default();
    (exit.code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_from_a_pulled_image() {
    let f = fixture();
    let state = f.dir.path().join("agent");
    let rt = runtime(&f, &state).await;
    let image = format!("{}/busybox:1", f.reg);
    let version = rt.ping().await.expect("containerd answers");
    assert!(version.starts_with("containerd "), "{version}");

    // Missing image and unreachable registry: clear errors.
    let e = rt.pull(&format!("{}/nope:1", f.reg), &RegistryAuth::Anonymous).await.expect_err("missing");
    assert!(matches!(e, RuntimeError::ImageNotFound { .. }), "{e}");
    let e = rt.pull("127.0.0.1:1/busybox:1", &RegistryAuth::Anonymous).await.expect_err("unreachable");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");

    // Concurrent pulls of one image all succeed.
    let pulls = (0..4).map(|_| rt.pull(&image, &RegistryAuth::Anonymous));
    for r in futures::future::join_all(pulls).await {
        r.expect("pull");
    }

    // Output, exit codes, env/workdir/hostname.
    let (code, out) = run_to_exit(&rt, &spec("echo1", &image, &["echo", "hello"])).await;
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, _) = run_to_exit(&rt, &spec("exit3", &image, &["sh", "-c", "exit 3"])).await;
    assert_eq!(code, 3);
    let mut s = spec("env1", &image, &["sh", "-c", "echo $GREETING $(pwd) $(hostname) $(id -u)"]);
    s.env = vec!["GREETING=hi".into()];
    s.workdir = "/tmp".into();
    s.hostname = "web-1".into();
    s.user = "1000:1000".into();
    let (code, out) = run_to_exit(&rt, &s).await;
    assert_eq!((code, out.trim()), (0, "hi /tmp web-1 1000"));
    // A user name resolves through the image's /etc/passwd and /etc/group.
    let mut s = spec("named", &image, &["sh", "-c", "echo $(id -u) $(id -g) $(id -G)"]);
    s.user = "app".into();
    assert_eq!(run_to_exit(&rt, &s).await, (0, "1000 1001 1001 33\n".to_string()));
    let mut s = spec("nouser", &image, &["true"]);
    s.user = "nobody".into();
    let e = rt.create(&s).await.expect_err("unknown user");
    assert!(e.to_string().contains("\"nobody\" is not in the image's /etc/passwd"), "{e}");

    // A named volume outlives its container.
    let mut w = spec("vol-w", &image, &["sh", "-c", "echo kept > /data/f"]);
    w.mounts = vec![MountSpec::Volume { name: "data".into(), target: "/data".into(), read_only: false }];
    assert_eq!(run_to_exit(&rt, &w).await.0, 0);
    rt.remove("vol-w").await.expect("remove");
    let mut r = spec("vol-r", &image, &["cat", "/data/f"]);
    r.mounts = w.mounts.clone();
    assert_eq!(run_to_exit(&rt, &r).await, (0, "kept\n".to_string()));

    // The log size cap: the shim appends, so after a rotation its writes start the file anew.
    // The container prints its last line only once the test has rotated (a file appears in a
    // bind-mounted directory; bounded to 60 s).
    let signal = f.dir.path().join("signal");
    std::fs::create_dir_all(&signal).expect("signal dir");
    let mut s = spec(
        "chatty",
        &image,
        &["sh", "-c", "seq 1 300; for i in $(seq 1 600); do [ -e /signal/go ] && break; sleep 0.1; done; echo after"],
    );
    s.mounts = vec![MountSpec::Bind { source: signal.clone(), target: "/signal".into(), read_only: true }];
    rt.create(&s).await.expect("create");
    rt.start("chatty").await.expect("start");
    let log = rt.logs("chatty").await.expect("log path");
    wait_for("300 lines", || std::fs::read_to_string(&log).is_ok_and(|t| t.ends_with("300\n")));
    assert!(shoal_runtime::logfile::rotate_if_over(&log, 100).expect("rotate"));
    std::fs::write(signal.join("go"), "").expect("signal");
    let exit = tokio::time::timeout(Duration::from_secs(20), rt.wait("chatty")).await.expect("exits").expect("wait");
    assert_eq!(exit.code, 0);
    assert_eq!(std::fs::read(&log).expect("log"), b"after\n", "no hole where the old content was");
    let rotated = std::fs::read_to_string(shoal_runtime::logfile::rotated_path(&log)).expect("rotated");
    assert!(rotated.starts_with("1\n2\n") && rotated.ends_with("300\n"), "{rotated}");
    rt.remove("chatty").await.expect("remove");
    assert!(!shoal_runtime::logfile::rotated_path(&log).exists(), "remove deletes the rotated log too");

    // Stop: a process ignoring SIGTERM is killed after the grace period.
    let s = spec("stubborn", &image, &["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]);
    rt.create(&s).await.expect("create");
    let pid = rt.start("stubborn").await.expect("start");
    assert!(pid > 0);
    let t0 = Instant::now();
    let exit = rt.stop("stubborn", 15, Duration::from_millis(500)).await.expect("stop");
    assert_eq!(exit.code, 137, "killed by SIGKILL");
    assert!(t0.elapsed() >= Duration::from_millis(500));

    // Re-adoption: a second runtime instance (a restarted agent) sees the running container.
    let s = spec("long", &image, &["sleep", "1000"]);
    rt.create(&s).await.expect("create");
    let pid = rt.start("long").await.expect("start");
    drop(rt);
    let rt2 = runtime(&f, &state).await;
    let seen = rt2.list().await.expect("list").into_iter().find(|c| c.id == "long").expect("listed");
    assert_eq!((seen.status, seen.pid), (ContainerStatusKind::Running, pid));
    // `sleep` as PID 1 has no SIGTERM handler, so only the kill after the grace ends it.
    let exit = rt2.stop("long", 15, Duration::from_millis(300)).await.expect("stop");
    assert_eq!(exit.code, 137);
    for id in ["echo1", "exit3", "env1", "named", "vol-r", "stubborn", "long"] {
        rt2.remove(id).await.expect("remove");
    }
    rt2.remove("long").await.expect("remove is idempotent");
    assert!(rt2.list().await.expect("list").is_empty());
}

/// A second registry over the same storage that wants a password (htpasswd, bcrypt).
fn auth_registry(f: &Fixture) -> (Child, String) {
    let d = f.dir.path();
    let line = Command::new("htpasswd")
        .args(["-nbB", "alice", "s3cr3t"])
        .output()
        .expect("htpasswd must be installed (apt-get install apache2-utils)");
    let line = String::from_utf8_lossy(&line.stdout).trim().to_string();
    assert!(line.starts_with("alice:$2"), "no bcrypt entry from htpasswd: {line:?}");
    std::fs::write(d.join("htpasswd"), format!("{line}\n")).expect("htpasswd");
    let (root, htpasswd) = (d.join("registry"), d.join("htpasswd"));
    start_registry(&d.join("registry-auth.yml"), &own_addr(5001), 401, |addr| {
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
            root.display(),
            htpasswd.display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_use_the_credentials_file_and_containerd_may_come_later() {
    let f = fixture();
    let (mut reg_child, reg) = auth_registry(&f);
    let sock = f.dir.path().join("containerd.sock");
    let auth_file = f.dir.path().join("auth.json");
    let connect = |auth: Option<PathBuf>| {
        Containerd::connect(&sock, &f.namespace, vec![reg.clone()], auth, f.dir.path().join("agent")).expect("connect")
    };
    let image = format!("{reg}/busybox:1");

    // No credentials: refused, and the error says so.
    let e = connect(None).pull(&image, &RegistryAuth::Anonymous).await.expect_err("needs a password");
    assert!(e.to_string().contains("wants credentials: put them in the node's --registry-auth-file"), "{e}");
    // Wrong password in the file: refused.
    std::fs::write(&auth_file, format!(r#"{{"auths": {{"{reg}": {{"username": "alice", "password": "nope"}}}}}}"#))
        .expect("write");
    let e = connect(Some(auth_file.clone())).pull(&image, &RegistryAuth::Anonymous).await.expect_err("bad password");
    assert!(e.to_string().contains("refused the credentials given for it"), "{e}");
    // The right one (as `docker login` writes it), changed without a new runtime: pulled.
    let rt = connect(Some(auth_file.clone()));
    std::fs::write(&auth_file, format!(r#"{{"auths": {{"http://{reg}/": {{"auth": "YWxpY2U6czNjcjN0"}}}}}}"#))
        .expect("write");
    rt.pull(&image, &RegistryAuth::Anonymous).await.expect("pulled with the file's credentials");
    let _ = reg_child.kill();
    let _ = reg_child.wait();

    // A runtime whose containerd is not there yet connects lazily and says what is wrong.
    let later = f.dir.path().join("later.sock");
    let rt = Containerd::connect(&later, &f.namespace, vec![], None, f.dir.path().join("agent2")).expect("lazy");
    let e = rt.ping().await.expect_err("nothing listens yet");
    assert!(e.to_string().contains("containerd does not answer"), "{e}");
    std::os::unix::fs::symlink(&sock, &later).expect("symlink");
    let v = rt.ping().await.expect("answers once it is there");
    assert!(v.starts_with("containerd "), "{v}");
}

/// Ids of `n` containers that share one shim group of `namespace`.
fn same_group(namespace: &str, prefix: &str, n: usize) -> Vec<String> {
    let group = shoal_runtime::containerd::shim_group(namespace, &format!("{prefix}-0"));
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| shoal_runtime::containerd::shim_group(namespace, id) == group)
        .take(n)
        .collect()
}

/// A rolling replacement on a node in miniature: the only task of a shim group is deleted (its
/// shim exits with it) while the next task of the group is created. Every create finds a shim
/// that serves it at its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_while_its_group_empties_finds_a_live_shim() {
    let f = fixture();
    let state = f.dir.path().join("agent");
    let rt = runtime(&f, &state).await;
    let image = format!("{}/busybox:1", f.reg);
    rt.pull(&image, &RegistryAuth::Anonymous).await.expect("pull");
    const ROUNDS: usize = 12;
    let ids = same_group(&f.namespace, "churn", ROUNDS + 1);
    rt.create(&spec(&ids[0], &image, &["sleep", "600"])).await.expect("create");
    rt.start(&ids[0]).await.expect("start");
    for round in 0..ROUNDS {
        let (old, new) = (&ids[round], &ids[round + 1]);
        rt.create(&spec(new, &image, &["sleep", "600"])).await.expect("create");
        rt.stop(old, 9, Duration::from_secs(5)).await.expect("stop");
        let (removed, started) = tokio::join!(rt.remove(old), rt.start(new));
        removed.expect("remove");
        let pid = started.unwrap_or_else(|e| panic!("round {round}: the new task did not start: {e}"));
        assert!(pid > 0);
    }
    assert_eq!(rt.shim_retries(), 0, "a create reached a shim on its way out");
    let left: Vec<String> = rt.list().await.expect("list").into_iter().map(|c| c.id).collect();
    assert_eq!(left, vec![ids[ROUNDS].clone()]);
    rt.stop(&ids[ROUNDS], 9, Duration::from_secs(5)).await.expect("stop");
    rt.remove(&ids[ROUNDS]).await.expect("remove");
}
