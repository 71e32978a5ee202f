//! Named network namespaces: a file bind-mounted over a namespace so it outlives every process
//! in it (as `ip netns add` does), and netlink sockets opened inside one.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Runs `f` on a thread of its own (a thread's namespace changes must not leak into the
/// runtime's threads) and returns what it returned.
pub(crate) fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    std::thread::Builder::new()
        .name("shoal-netns".into())
        .spawn(f)
        .map_err(|e| format!("cannot start a thread: {e}"))?
        .join()
        .map_err(|_| "the namespace thread panicked".to_string())?
}

/// Makes a new network namespace and pins it at `path` (which must not exist yet).
pub fn create(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, "cannot create", e))?;
    }
    std::fs::File::create(path).map_err(|e| err(path, "cannot create", e))?;
    let target = path.to_path_buf();
    let made = on_own_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| err(&target, "cannot bind the namespace to", e))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unpins and forgets the namespace at `path` (it ends once no process is left in it).
/// Removing one that is not there succeeds.
pub fn remove(path: &Path) -> Result<(), String> {
    if !path.exists() {
        return Ok(());
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(err(path, "cannot unmount", e)),
    }
    std::fs::remove_file(path).map_err(|e| err(path, "cannot remove", e))
}

/// The files under `dir` that pin a namespace now; files left from before a reboot (nothing
/// mounted on them) are removed.
pub fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(err(dir, "cannot read", e)),
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mounted: std::collections::HashSet<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if mounted.contains(path.to_string_lossy().as_ref()) {
            out.push((name, path));
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `program args` inside the namespace at `path` with `input` on its stdin (the process
/// starts on a thread that entered it, so it is in it too); its exit code, or why it could not
/// run, with its stderr.
pub fn run_in(path: &Path, program: &str, args: &[&str], input: &str) -> Result<(i32, String), String> {
    let (target, input) = (path.to_path_buf(), input.to_string());
    let (program, args): (String, Vec<String>) = (program.to_string(), args.iter().map(|a| a.to_string()).collect());
    run_in_owned(target, program, args, input).map(|(code, _, stderr)| (code, stderr))
}

/// Like [`run_in`], with the process's stdout too.
pub fn output_in(path: &Path, program: &str, args: &[&str]) -> Result<(i32, String, String), String> {
    run_in_owned(path.to_path_buf(), program.to_string(), args.iter().map(|a| a.to_string()).collect(), String::new())
}

fn run_in_owned(
    target: PathBuf,
    program: String,
    args: Vec<String>,
    input: String,
) -> Result<(i32, String, String), String> {
    on_own_thread(move || {
        use std::io::Write;
        let ns = std::fs::File::open(&target).map_err(|e| err(&target, "cannot open", e))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(&target, "cannot enter", e))?;
        let mut child = std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(|e| format!("{program}: {e}"))?;
        }
        let out = child.wait_with_output().map_err(|e| format!("{program}: {e}"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    })
}

/// Runs one `nft -f -` transaction inside the namespace at `path`.
pub fn nft_in(path: &Path, script: &str) -> Result<(), String> {
    match run_in(path, "nft", &["-f", "-"], script) {
        Ok((0, _)) => Ok(()),
        Ok((_, stderr)) => Err(format!("nft: {stderr}")),
        Err(e) => Err(format!("{e} (install nftables)")),
    }
}

/// The backends the namespace's UDP flows to `vip` go to now (from `conntrack -L`).
pub fn udp_flow_backends(path: &Path, vip: std::net::Ipv4Addr) -> Result<Vec<std::net::Ipv4Addr>, String> {
    let vip = vip.to_string();
    match output_in(path, "conntrack", &["-L", "-p", "udp", "--orig-dst", vip.as_str()]) {
        Ok((0, out, _)) => Ok(crate::netlink::reply_sources(&out)),
        Ok((_, _, stderr)) => Err(format!("conntrack: {stderr}")),
        Err(e) => Err(format!("{e} (install conntrack)")),
    }
}

/// Forgets the UDP flows to `vip` that went to `backend` in the namespace at `path`, so they
/// are balanced afresh instead of going to a backend that is no more (TCP connections are left
/// to end by themselves: a stopping task may still be finishing them).
pub fn flush_udp_flows(path: &Path, vip: std::net::Ipv4Addr, backend: std::net::Ipv4Addr) -> Result<(), String> {
    let (vip, backend) = (vip.to_string(), backend.to_string());
    let args = ["-D", "-p", "udp", "--orig-dst", vip.as_str(), "--reply-src", backend.as_str()];
    match run_in(path, "conntrack", &args, "") {
        // 1: no flow matched.
        Ok((0 | 1, _)) => Ok(()),
        Ok((_, stderr)) => Err(format!("conntrack: {stderr}")),
        Err(e) => Err(format!("{e} (install conntrack)")),
    }
}

/// A netlink connection: the future that must be polled for its handle's requests to move.
pub type Connection = rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>;

/// A netlink connection inside the namespace at `path`: its socket belongs to that namespace
/// for its whole life, wherever it is used from. Use the handle inside [`driven`].
pub fn connect_in(path: &Path) -> Result<(rtnetlink::Handle, Connection), String> {
    let target = path.to_path_buf();
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("no runtime: {e}"))?;
    on_own_thread(move || {
        let ns = std::fs::File::open(&target).map_err(|e| err(&target, "cannot open", e))?;
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| err(&target, "cannot enter", e))?;
        // The socket registers with the runtime's reactor.
        let _guard = runtime.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
        Ok((handle, conn))
    })
}

/// Runs `work` while polling `conn`, so the connection lives exactly as long as the work.
pub async fn driven<T>(
    conn: Connection,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = work => r,
        () = conn => Err("the netlink connection in the namespace ended".to_string()),
    }
}
