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
    /// `Healthcheck` (Docker's extension of the config; durations there are nanoseconds).
    pub healthcheck: Option<shoal_api::v1::HealthConfig>,
}

/// Docker's `Healthcheck` of an image config, durations in milliseconds.
fn healthcheck(v: &Value) -> Option<shoal_api::v1::HealthConfig> {
    if !v.is_object() {
        return None;
    }
    let ms = |k: &str| v[k].as_i64().map_or(0, |ns| ns.max(0) / 1_000_000);
    Some(shoal_api::v1::HealthConfig {
        test: strings(&v["Test"]),
        interval_ms: ms("Interval"),
        timeout_ms: ms("Timeout"),
        retries: v["Retries"].as_u64().map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
        start_period_ms: ms("StartPeriod"),
        start_interval_ms: ms("StartInterval"),
    })
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
        healthcheck: healthcheck(&c["Healthcheck"]),
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
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

fn key(e: &str) -> &str {
    e.split('=').next().unwrap_or(e)
}

/// Resolves the process as Docker does: an entrypoint override drops the image's cmd; args
/// replace the image's cmd; env entries override the image's by key.
pub fn resolve_process(
    spec: &ContainerSpec,
    image: &ImageConfig,
    etc: Option<&EtcFiles>,
) -> Result<Process, RuntimeError> {
    let (entrypoint, cmd) = if !spec.entrypoint.is_empty() {
        (spec.entrypoint.clone(), spec.args.clone())
    } else if !spec.args.is_empty() {
        (image.entrypoint.clone(), spec.args.clone())
    } else {
        (image.entrypoint.clone(), image.cmd.clone())
    };
    let mut args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::Io(format!("image {:?} has no command and none was given", spec.image)));
    }
    if let Some(init) = &spec.init {
        args.splice(0..0, [init.clone(), "--".to_string()]);
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
    let (uid, gid, additional_gids) = resolve_user(effective_user(spec, image), etc)?;
    Ok(Process { args, env, cwd, uid, gid, additional_gids })
}

/// The user the process runs as: the task's, else the image's.
pub fn effective_user<'a>(spec: &'a ContainerSpec, image: &'a ImageConfig) -> &'a str {
    if spec.user.is_empty() {
        image.user.as_str()
    } else {
        spec.user.as_str()
    }
}

/// The image's `/etc/passwd` and `/etc/group` (empty when the image has none).
#[derive(Debug, Clone, Default)]
pub struct EtcFiles {
    /// `/etc/passwd`.
    pub passwd: String,
    /// `/etc/group`.
    pub group: String,
}

/// Whether resolving `user` needs the image's files: it names a user or group (other than a
/// bare `root`), or a numeric uid whose primary group comes from `/etc/passwd`.
pub fn needs_etc(user: &str) -> bool {
    !(user.is_empty() || user == "root" || user == "0")
}

/// `name|uid[:group|gid]` resolved as Docker does: a name is looked up in the image's
/// `/etc/passwd` (and a group name in `/etc/group`); with no group given, the primary group is
/// the passwd entry's (0 for a uid the image does not list); supplementary groups are those
/// listing the user as a member. Returns (uid, gid, supplementary gids).
pub fn resolve_user(user: &str, etc: Option<&EtcFiles>) -> Result<(u32, u32, Vec<u32>), RuntimeError> {
    if !needs_etc(user) {
        return Ok((0, 0, Vec::new()));
    }
    let none = EtcFiles::default();
    let etc = etc.unwrap_or(&none);
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    if u.is_empty() {
        return Err(RuntimeError::Io(format!("user {user:?} names no user: use name|uid[:group|gid]")));
    }
    // passwd: name:x:uid:gid:gecos:home:shell
    let entries: Vec<Vec<&str>> =
        etc.passwd.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 4).collect();
    let found = match u.parse::<u32>() {
        Ok(uid) => entries.iter().find(|f| f[2].parse() == Ok(uid)),
        Err(_) => entries.iter().find(|f| f[0] == u),
    };
    let (uid, primary, name) = match (u.parse::<u32>(), found) {
        (Ok(uid), Some(f)) => (uid, f[3].parse().unwrap_or(0), f[0]),
        (Ok(uid), None) => (uid, 0, ""),
        (Err(_), Some(f)) => {
            let uid = f[2]
                .parse()
                .map_err(|_| RuntimeError::Io(format!("the image's /etc/passwd has a bad uid for {u:?}")))?;
            (uid, f[3].parse().unwrap_or(0), f[0])
        }
        (Err(_), None) => {
            return Err(RuntimeError::Io(format!(
                "user {u:?} is not in the image's /etc/passwd: use a numeric uid, or add the user to the image"
            )))
        }
    };
    // group: name:x:gid:member,member
    let groups: Vec<Vec<&str>> =
        etc.group.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 3).collect();
    let gid = if g.is_empty() {
        primary
    } else if let Ok(gid) = g.parse::<u32>() {
        gid
    } else {
        let f = groups.iter().find(|f| f[0] == g).ok_or_else(|| {
            RuntimeError::Io(format!(
                "group {g:?} is not in the image's /etc/group: use a numeric gid, or add the group to the image"
            ))
        })?;
        f[2].parse().map_err(|_| RuntimeError::Io(format!("the image's /etc/group has a bad gid for {g:?}")))?
    };
    let mut additional: Vec<u32> = Vec::new();
    if !name.is_empty() {
        for f in &groups {
            let member = f.get(3).is_some_and(|m| m.split(',').any(|m| m.trim() == name));
            if let (true, Ok(id)) = (member, f[2].parse::<u32>()) {
                if id != gid && !additional.contains(&id) {
                    additional.push(id);
                }
            }
        }
    }
    Ok((uid, gid, additional))
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
    let network = match &spec.netns {
        Some(p) => json!({"type": "network", "path": p.display().to_string()}),
        None => json!({"type": "network"}),
    };
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": process.uid, "gid": process.gid, "additionalGids": process.additional_gids},
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
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, network],
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
            healthcheck: None,
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
        let p = resolve_process(&spec, &image(), None).expect("process");
        assert_eq!(p.args, vec!["echo", "hi"]);
        assert_eq!(p.env, vec!["PATH=/bin", "A=2"]);
        assert_eq!(
            (p.cwd.as_str(), p.uid, p.gid),
            ("/app", 1000, 0),
            "a uid the image does not list: group 0, as in Docker"
        );
        let spec = ContainerSpec { entrypoint: vec!["/bin/x".into()], ..Default::default() };
        assert_eq!(resolve_process(&spec, &image(), None).expect("p").args, vec!["/bin/x"]);
        let spec = ContainerSpec::default();
        assert_eq!(resolve_process(&spec, &image(), None).expect("p").args, vec!["sh"]);
        let empty = ImageConfig::default();
        assert!(resolve_process(&spec, &empty, None).is_err());
        let under_init = ContainerSpec { init: Some("/sbin/docker-init".into()), ..Default::default() };
        assert_eq!(
            resolve_process(&under_init, &image(), None).expect("p").args,
            vec!["/sbin/docker-init", "--", "sh"],
            "the init runs the process, as docker run --init"
        );
    }

    #[test]
    fn users_resolve_like_docker() {
        let etc = EtcFiles {
            passwd: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".into(),
            group: "root:x:0:\napp:x:1001:\nweb:x:33:app,other\nlogs:x:44:app\n".into(),
        };
        let r = |u: &str| resolve_user(u, Some(&etc)).map_err(|e| e.to_string());
        assert_eq!(resolve_user("", None).ok(), Some((0, 0, vec![])));
        assert_eq!(resolve_user("root", None).ok(), Some((0, 0, vec![])));
        assert_eq!(r("12:34"), Ok((12, 34, vec![])));
        assert_eq!(r("4242"), Ok((4242, 0, vec![])), "a uid the image does not list gets group 0");
        assert_eq!(r("app"), Ok((1000, 1001, vec![33, 44])));
        assert_eq!(r("1000"), Ok((1000, 1001, vec![33, 44])));
        assert_eq!(r("app:web"), Ok((1000, 33, vec![44])));
        assert_eq!(r("app:7"), Ok((1000, 7, vec![33, 44])));
        assert!(r("nobody").expect_err("unknown").contains("not in the image's /etc/passwd"));
        assert!(r("app:nogroup").expect_err("unknown").contains("not in the image's /etc/group"));
        assert!(resolve_user("app", None).is_err(), "an image without /etc/passwd knows no names");
        assert!(r(":5").is_err());
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
        let p =
            Process { args: vec!["sh".into()], env: vec![], cwd: "/".into(), uid: 0, gid: 0, additional_gids: vec![] };
        let v = oci_spec(&spec, &p, "/shoal/ns", &|n| format!("/vol/{n}"));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 50);
        assert_eq!(v["linux"]["cgroupsPath"], "/shoal/ns/t1");
        assert_eq!(v["linux"]["namespaces"][4], serde_json::json!({"type": "network"}));
        let joined = ContainerSpec { netns: Some("/run/ns/t1".into()), ..spec.clone() };
        let v2 = oci_spec(&joined, &p, "/shoal/ns", &|n| format!("/vol/{n}"));
        assert_eq!(v2["linux"]["namespaces"][4], serde_json::json!({"type": "network", "path": "/run/ns/t1"}));
        let m = v["mounts"].as_array().and_then(|a| a.last()).cloned().unwrap_or_default();
        assert_eq!((m["source"].as_str(), m["destination"].as_str()), (Some("/vol/data"), Some("/data")));
    }

    #[test]
    fn image_config_parses() {
        let c = br#"{"config":{"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let i = parse_image_config(c).expect("config");
        assert_eq!(
            (i.cmd, i.workdir, i.diff_ids, i.healthcheck),
            (vec!["sh".to_string()], "/w".to_string(), vec!["sha256:aa".to_string()], None)
        );
    }

    #[test]
    fn an_image_healthcheck_parses_with_durations_in_ms() {
        let c = br#"{"config":{"Healthcheck":{"Test":["CMD-SHELL","test -e /ok"],"Interval":2000000000,"Timeout":500000000,"Retries":4,"StartPeriod":10000000000}}}"#;
        let h = parse_image_config(c).expect("config").healthcheck.expect("healthcheck");
        assert_eq!(h.test, ["CMD-SHELL", "test -e /ok"]);
        assert_eq!(
            (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms, h.start_interval_ms),
            (2_000, 500, 4, 10_000, 0)
        );
    }
}
