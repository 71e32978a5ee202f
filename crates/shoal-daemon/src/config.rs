//! shoald's settings: one file (TOML, optional) overridden by environment variables and flags.
//!
//! Precedence, highest first: a flag, its environment variable, the file, the built-in default.
//! Every flag but `--config` has a file key of the same name without the dashes in front
//! (`--listen-addr` is `listen-addr`); `--insecure-registry` is the list `insecure-registries`.
//! [`resolve`] merges the two sources and checks the result; it does no I/O.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where shoald looks for its file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/shoal/shoald.toml";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";
/// Default local CLI socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/shoal/shoal.sock";
/// Default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Default containerd namespace.
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "shoal";
/// Smallest task log cap: below it, rotation would churn.
pub const MIN_TASK_LOG_BYTES: u64 = 4096;

/// The configuration file, e.g. `/etc/shoal/shoald.toml`. Every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// Data directory: node identity, Raft log and snapshots.
    pub data_dir: Option<PathBuf>,
    /// TCP address for other nodes and remote CLIs.
    pub listen_addr: Option<SocketAddr>,
    /// Address other nodes reach this one at (HOST:PORT).
    pub advertise_addr: Option<String>,
    /// Unix socket for the local CLI.
    pub control_socket: Option<PathBuf>,
    /// Name shown in `shoal node ls`.
    pub hostname: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// containerd's socket.
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespace of this node's containers.
    pub containerd_namespace: Option<String>,
    /// Registries (HOST:PORT) reached over plain HTTP, added to `--insecure-registry` flags.
    #[serde(default, alias = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Registry credentials file (Docker config.json format).
    pub registry_auth_file: Option<PathBuf>,
    /// Cap of one task log file, e.g. `10MiB` (a task keeps at most two such files).
    pub task_log_max_size: Option<String>,
    /// TTL in seconds of the tasks' resolvers' answers for cluster names.
    pub dns_ttl: Option<u32>,
    /// Run no tasks on this node.
    pub no_runtime: Option<bool>,
    /// Recover a lone surviving manager after quorum loss (a one-time step: remove it again).
    pub force_new_cluster: Option<bool>,
}

/// What the flags and environment variables said (`None`/`false`: not given).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlagValues {
    pub data_dir: Option<PathBuf>,
    pub listen_addr: Option<SocketAddr>,
    pub advertise_addr: Option<String>,
    pub control_socket: Option<PathBuf>,
    pub hostname: Option<String>,
    pub log_format: Option<String>,
    pub containerd_socket: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub insecure_registries: Vec<String>,
    pub registry_auth_file: Option<PathBuf>,
    pub task_log_max_size: Option<String>,
    pub dns_ttl: Option<u32>,
    pub no_runtime: bool,
    pub force_new_cluster: bool,
}

/// The settings shoald runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen_addr: SocketAddr,
    pub advertise_addr: Option<String>,
    pub control_socket: PathBuf,
    pub hostname: Option<String>,
    pub json_logs: bool,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub insecure_registries: Vec<String>,
    pub registry_auth_file: Option<PathBuf>,
    pub task_log_max_bytes: Option<u64>,
    pub dns_ttl: u32,
    pub no_runtime: bool,
    pub force_new_cluster: bool,
}

/// Loads the file: `explicit` must exist; the default path is used only if present. Returns the
/// path read, for messages.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<(FileConfig, Option<PathBuf>)> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok((FileConfig::default(), None)),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let file = parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((file, Some(path)))
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

/// Where a setting can be given, for messages: `--flag, SHOALD_ENV or key in FILE`.
fn places(key: &str, file: Option<&Path>) -> String {
    let env = format!("SHOALD_{}", key.to_ascii_uppercase().replace('-', "_"));
    let file = file.map_or_else(|| DEFAULT_PATH.to_string(), |p| p.display().to_string());
    format!("--{key}, {env} or `{key}` in {file}")
}

/// Merges flags over the file over the defaults and checks the result. `file_path` is the file
/// read (for messages).
pub fn resolve(flags: FlagValues, file: FileConfig, file_path: Option<&Path>) -> Result<Settings, String> {
    let listen_addr = flags.listen_addr.or(file.listen_addr).unwrap_or_else(|| ([127, 0, 0, 1], 4242).into());
    let advertise_addr = flags.advertise_addr.or(file.advertise_addr);
    if listen_addr.ip().is_unspecified() && advertise_addr.is_none() {
        return Err(format!(
            "listen-addr {listen_addr} listens on every interface and does not say how other nodes reach this \
             one: set advertise-addr to this node's HOST:PORT ({})",
            places("advertise-addr", file_path)
        ));
    }
    let log_format = flags.log_format.or(file.log_format).unwrap_or_else(|| "text".into());
    let json_logs = match log_format.as_str() {
        "text" => false,
        "json" => true,
        other => return Err(format!("log-format {other:?} must be text or json")),
    };
    let task_log_max_bytes = match flags.task_log_max_size.or(file.task_log_max_size) {
        Some(t) => {
            let n = shoal_api::units::parse_bytes(&t).map_err(|e| format!("task-log-max-size: {e}"))?;
            if n < MIN_TASK_LOG_BYTES {
                return Err(format!("task-log-max-size {t:?} is below the 4KiB minimum"));
            }
            Some(n)
        }
        None => None,
    };
    let dns_ttl = flags.dns_ttl.or(file.dns_ttl).unwrap_or(shoal_manager::DEFAULT_DNS_TTL);
    if !(1..=60).contains(&dns_ttl) {
        return Err(format!(
            "dns-ttl {dns_ttl} must be 1..=60 seconds (short, so a gone task soon leaves every cache; {})",
            places("dns-ttl", file_path)
        ));
    }
    let mut insecure_registries = flags.insecure_registries;
    insecure_registries.extend(file.insecure_registries);
    Ok(Settings {
        data_dir: flags.data_dir.or(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        listen_addr,
        advertise_addr,
        control_socket: flags.control_socket.or(file.control_socket).unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
        hostname: flags.hostname.or(file.hostname),
        json_logs,
        containerd_socket: flags
            .containerd_socket
            .or(file.containerd_socket)
            .unwrap_or_else(|| DEFAULT_CONTAINERD_SOCKET.into()),
        containerd_namespace: flags
            .containerd_namespace
            .or(file.containerd_namespace)
            .unwrap_or_else(|| DEFAULT_CONTAINERD_NAMESPACE.into()),
        insecure_registries,
        registry_auth_file: flags.registry_auth_file.or(file.registry_auth_file),
        task_log_max_bytes,
        dns_ttl,
        no_runtime: flags.no_runtime || file.no_runtime.unwrap_or(false),
        force_new_cluster: flags.force_new_cluster || file.force_new_cluster.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_KEY: &str = r#"
data-dir = "/d"
listen-addr = "10.0.0.1:4242"
advertise-addr = "node1.example:4242"
control-socket = "/run/s.sock"
hostname = "node1"
log-format = "json"
containerd-socket = "/run/c.sock"
containerd-namespace = "ns1"
insecure-registries = ["reg:5000"]
registry-auth-file = "/etc/shoal/auth.json"
task-log-max-size = "1MiB"
dns-ttl = 10
no-runtime = true
force-new-cluster = false
"#;

    #[test]
    fn every_key_parses_and_applies() {
        let file = parse(EVERY_KEY).expect("parse");
        let s = resolve(FlagValues::default(), file, None).expect("resolve");
        assert_eq!(
            s,
            Settings {
                data_dir: "/d".into(),
                listen_addr: "10.0.0.1:4242".parse().expect("addr"),
                advertise_addr: Some("node1.example:4242".into()),
                control_socket: "/run/s.sock".into(),
                hostname: Some("node1".into()),
                json_logs: true,
                containerd_socket: "/run/c.sock".into(),
                containerd_namespace: "ns1".into(),
                insecure_registries: vec!["reg:5000".into()],
                registry_auth_file: Some("/etc/shoal/auth.json".into()),
                task_log_max_bytes: Some(1 << 20),
                dns_ttl: 10,
                no_runtime: true,
                force_new_cluster: false,
            }
        );
    }

    /// Every documented flag has a file key: the keys of `EVERY_KEY` are the flags of `shoald
    /// --help` (but --config).
    #[test]
    fn the_file_knows_every_flag() {
        let keys: Vec<&str> = EVERY_KEY.lines().filter_map(|l| l.split_once(" = ").map(|(k, _)| k)).collect();
        let flags = crate::flag_names();
        for flag in &flags {
            let key = if flag == "insecure-registry" { "insecure-registries" } else { flag.as_str() };
            assert!(flag == "config" || keys.contains(&key), "--{flag} has no key in the file test");
        }
        assert_eq!(keys.len(), flags.len() - 1, "keys {keys:?} flags {flags:?}");
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file = parse("listen-addr = \"10.0.0.1:4242\"\nhostname = \"from-file\"\n").expect("parse");
        let flags = FlagValues {
            hostname: Some("from-flag".into()),
            insecure_registries: vec!["a:1".into()],
            ..FlagValues::default()
        };
        let s = resolve(flags, file, None).expect("resolve");
        assert_eq!(s.hostname.as_deref(), Some("from-flag"));
        assert_eq!(s.listen_addr, "10.0.0.1:4242".parse().expect("addr"));
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.containerd_namespace, DEFAULT_CONTAINERD_NAMESPACE);
        assert_eq!(s.insecure_registries, ["a:1"]);
        assert!(!s.no_runtime && !s.json_logs);
        assert_eq!(s.dns_ttl, 5);
    }

    #[test]
    fn a_dns_ttl_out_of_range_is_refused() {
        let e = resolve(
            FlagValues::default(),
            parse(
                "dns-ttl = 600
",
            )
            .expect("parse"),
            None,
        )
        .expect_err("refused");
        assert!(e.contains("dns-ttl 600 must be 1..=60 seconds"), "{e}");
        assert!(resolve(
            FlagValues::default(),
            parse(
                "dns-ttl = 0
"
            )
            .expect("parse"),
            None
        )
        .is_err());
    }

    #[test]
    fn a_wildcard_listen_address_needs_an_advertise_address_and_the_error_says_where() {
        let file = parse("listen-addr = \"0.0.0.0:4242\"\n").expect("parse");
        let e = resolve(FlagValues::default(), file, Some(Path::new("/etc/shoal/shoald.toml"))).expect_err("refused");
        assert!(e.contains("set advertise-addr"), "{e}");
        assert!(
            e.contains("--advertise-addr, SHOALD_ADVERTISE_ADDR or `advertise-addr` in /etc/shoal/shoald.toml"),
            "{e}"
        );
        let file = parse("listen-addr = \"0.0.0.0:4242\"\nadvertise-addr = \"10.1.1.1:4242\"\n").expect("parse");
        assert!(resolve(FlagValues::default(), file, None).is_ok());
    }

    #[test]
    fn sizes_and_formats_are_checked() {
        let bad = |text: &str| resolve(FlagValues::default(), parse(text).expect("parse"), None).expect_err(text);
        assert!(bad("task-log-max-size = \"100\"\n").contains("4KiB minimum"));
        assert!(bad("task-log-max-size = \"ten\"\n").contains("invalid size"));
        assert!(bad("log-format = \"xml\"\n").contains("text or json"));
        let ok = resolve(FlagValues::default(), parse("task-log-max-size = \"10MiB\"\n").expect("parse"), None);
        assert_eq!(ok.map(|s| s.task_log_max_bytes), Ok(Some(10 << 20)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let e = parse("data_dirr = \"/d\"\n").expect_err("unknown key");
        assert!(e.to_string().contains("data_dirr"), "{e}");
        let e = parse("listen-addr = \"nowhere\"\n").expect_err("bad addr");
        assert!(e.to_string().contains("listen-addr"), "{e}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load(Some(&dir.path().join("nope.toml"))).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
