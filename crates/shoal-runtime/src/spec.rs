//! Pure helpers: resolving what to run against the image config (as Docker does) and building
//! the OCI runtime spec. No I/O.

use serde_json::{json, Value};

use crate::{ContainerSpec, MountSpec, RuntimeError};

/// The parts of an image config that decide how a container starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub workdir: String,
    /// `User`.
    pub user: String,
    /// `rootfs.diff_ids`, bottom layer first.
    pub diff_ids: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
}

/// Parses an OCI/Docker image config blob.
pub fn parse_image_config(bytes: &[u8]) -> Result<ImageConfig, RuntimeError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| RuntimeError::Io(format!("image config is not JSON: {e}")))?;
    let c = &v["config"];
    Ok(ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        workdir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
        user: c["User"].as_str().unwrap_or("").to_string(),
        diff_ids: strings(&v["rootfs"]["diff_ids"]),
    })
}

/// What the container's process is: argv, env, cwd, uid, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// argv.
    pub args: Vec<String>,
    /// KEY=VALUE.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

fn key(e: &str) -> &str {
    e.split('=').next().unwrap_or(e)
}

/// Resolves the process as Docker does: an entrypoint override drops the image's cmd; args
/// replace the image's cmd; env entries override the image's by key.
pub fn resolve_process(spec: &ContainerSpec, image: &ImageConfig) -> Result<Process, RuntimeError> {
    let (entrypoint, cmd) = if !spec.entrypoint.is_empty() {
        (spec.entrypoint.clone(), spec.args.clone())
    } else if !spec.args.is_empty() {
        (image.entrypoint.clone(), spec.args.clone())
    } else {
        (image.entrypoint.clone(), image.cmd.clone())
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::Io(format!("image {:?} has no command and none was given", spec.image)));
    }
    let mut env: Vec<String> = Vec::new();
    for e in image.env.iter().chain(&spec.env) {
        env.retain(|x| key(x) != key(e));
        env.push(e.clone());
    }
    if !env.iter().any(|e| key(e) == "PATH") {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let cwd =
        [spec.workdir.as_str(), image.workdir.as_str()].into_iter().find(|s| !s.is_empty()).unwrap_or("/").to_string();
    let user = if spec.user.is_empty() { image.user.as_str() } else { spec.user.as_str() };
    let (uid, gid) = parse_user(user)?;
    Ok(Process { args, env, cwd, uid, gid })
}

/// `uid[:gid]`, `root` or empty. Other user names are not resolved yet.
pub fn parse_user(user: &str) -> Result<(u32, u32), RuntimeError> {
    let bad = || {
        RuntimeError::Io(format!(
            "user {user:?} must be numeric uid[:gid] (names other than root are not supported yet)"
        ))
    };
    if user.is_empty() || user == "root" {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = if u == "root" { 0 } else { u.parse().map_err(|_| bad())? };
    let gid = if g.is_empty() {
        uid
    } else if g == "root" {
        0
    } else {
        g.parse().map_err(|_| bad())?
    };
    Ok((uid, gid))
}

/// Docker's default capability set.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// CFS period used for CPU limits.
const CPU_PERIOD: i64 = 100_000;

/// Builds the OCI runtime spec (JSON). `volume_dir` maps a volume name to its host path.
pub fn oci_spec(
    spec: &ContainerSpec,
    process: &Process,
    cgroup_parent: &str,
    volume_dir: &dyn Fn(&str) -> String,
) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in &spec.mounts {
        let (dest, src, kind, mut opts) = match m {
            MountSpec::Bind { source, target, read_only } => (
                target.clone(),
                source.display().to_string(),
                "bind",
                vec!["rbind".to_string(), if *read_only { "ro" } else { "rw" }.into()],
            ),
            MountSpec::Volume { name, target, read_only } => (
                target.clone(),
                volume_dir(name),
                "bind",
                vec!["rbind".to_string(), if *read_only { "ro" } else { "rw" }.into()],
            ),
            MountSpec::Tmpfs { target, size_bytes, mode } => {
                let mut o = vec!["nosuid".to_string(), "nodev".into()];
                if *size_bytes > 0 {
                    o.push(format!("size={size_bytes}"));
                }
                if *mode > 0 {
                    o.push(format!("mode={mode:o}"));
                }
                (target.clone(), "tmpfs".to_string(), "tmpfs", o)
            }
        };
        opts.sort();
        mounts.push(json!({"destination": dest, "type": kind, "source": src, "options": opts}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if spec.memory_bytes > 0 {
        resources["memory"] = json!({"limit": spec.memory_bytes});
    }
    if spec.nano_cpus > 0 {
        resources["cpu"] = json!({"quota": spec.nano_cpus * CPU_PERIOD / 1_000_000_000, "period": CPU_PERIOD});
    }
    if spec.pids > 0 {
        resources["pids"] = json!({"limit": spec.pids});
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": process.uid, "gid": process.gid},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "noNewPrivileges": false
        },
        "root": {"path": "rootfs", "readonly": spec.read_only},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "resources": resources,
            "cgroupsPath": format!("{cgroup_parent}/{}", spec.id),
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            workdir: "/app".into(),
            user: "1000".into(),
            diff_ids: vec![],
        }
    }

    #[test]
    fn process_follows_docker_rules() {
        let spec = ContainerSpec {
            image: "i".into(),
            args: vec!["echo".into(), "hi".into()],
            env: vec!["A=2".into()],
            ..Default::default()
        };
        let p = resolve_process(&spec, &image()).expect("process");
        assert_eq!(p.args, vec!["echo", "hi"]);
        assert_eq!(p.env, vec!["PATH=/bin", "A=2"]);
        assert_eq!((p.cwd.as_str(), p.uid, p.gid), ("/app", 1000, 1000));
        let spec = ContainerSpec { entrypoint: vec!["/bin/x".into()], ..Default::default() };
        assert_eq!(resolve_process(&spec, &image()).expect("p").args, vec!["/bin/x"]);
        let spec = ContainerSpec::default();
        assert_eq!(resolve_process(&spec, &image()).expect("p").args, vec!["sh"]);
        let empty = ImageConfig::default();
        assert!(resolve_process(&spec, &empty).is_err());
    }

    #[test]
    fn users_parse() {
        assert_eq!(parse_user("").ok(), Some((0, 0)));
        assert_eq!(parse_user("12:34").ok(), Some((12, 34)));
        assert!(parse_user("nobody").is_err());
    }

    #[test]
    fn spec_carries_limits_and_mounts() {
        let spec = ContainerSpec {
            id: "t1".into(),
            memory_bytes: 64 << 20,
            nano_cpus: 500_000_000,
            pids: 50,
            mounts: vec![MountSpec::Volume { name: "data".into(), target: "/data".into(), read_only: true }],
            ..Default::default()
        };
        let p = Process { args: vec!["sh".into()], env: vec![], cwd: "/".into(), uid: 0, gid: 0 };
        let v = oci_spec(&spec, &p, "/shoal/ns", &|n| format!("/vol/{n}"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 50);
        assert_eq!(v["linux"]["cgroupsPath"], "/shoal/ns/t1");
        let m = v["mounts"].as_array().and_then(|a| a.last()).cloned().unwrap_or_default();
        assert_eq!((m["source"].as_str(), m["destination"].as_str()), (Some("/vol/data"), Some("/data")));
    }

    #[test]
    fn image_config_parses() {
        let c = br#"{"config":{"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let i = parse_image_config(c).expect("config");
        assert_eq!(
            (i.cmd, i.workdir, i.diff_ids),
            (vec!["sh".to_string()], "/w".to_string(), vec!["sha256:aa".to_string()])
        );
    }
}
