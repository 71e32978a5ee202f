//! shoald's settings: one file (TOML, optional) overridden by environment variables and flags.
//!
//! Precedence, highest first: a flag, its environment variable, the file, the built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// Registry credentials file (Docker config.json format).
    pub registry_auth_file: Option<PathBuf>,
    /// Cap of one task log file, e.g. `10MiB` (a task keeps at most two such files).
    pub task_log_max_size: Option<String>,
    /// Registries (HOST:PORT) reached over plain HTTP, added to `--insecure-registry` flags.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

/// Where shoald looks for its file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/shoal/shoald.toml";

/// Loads the file: `explicit` must exist; the default path is used only if present.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<FileConfig> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
        None => return Ok(FileConfig::default()),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Parses a size: bytes, or a number with a `KiB`/`MiB`/`GiB` (or `k`/`m`/`g`) suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("size {text:?} must start with a whole number, e.g. 10MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("size {text:?}: unknown unit {unit:?} (use KiB, MiB or GiB)")),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("size {text:?} is too large"))?;
    if bytes < 4096 {
        return Err(format!("size {text:?} is below the 4KiB minimum"));
    }
    Ok(bytes)
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_parse() {
        let c = parse(
            "data-dir = \"/d\"\nlisten-addr = \"10.0.0.1:4242\"\nlog-format = \"json\"\n\
             registry-auth-file = \"/etc/shoal/auth.json\"\ninsecure-registries = [\"reg:5000\"]\n",
        )
        .expect("parse");
        assert_eq!(c.registry_auth_file, Some(PathBuf::from("/etc/shoal/auth.json")));
        assert_eq!(c.insecure_registries, ["reg:5000"]);
        assert_eq!(c.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(c.listen_addr, Some("10.0.0.1:4242".parse().expect("addr")));
        assert_eq!(c.log_format.as_deref(), Some("json"));
    }

    #[test]
    fn sizes_parse_with_units_and_bad_ones_are_explained() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("8192"), Ok(8192));
        assert!(parse_size("ten").expect_err("no number").contains("whole number"));
        assert!(parse_size("10 parsecs").expect_err("unit").contains("unknown unit"));
        assert!(parse_size("100").expect_err("tiny").contains("minimum"));
        assert!(parse_size("99999999999999G").expect_err("huge").contains("too large"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key_named() {
        let e = parse("data_dirr = \"/d\"\n").expect_err("unknown key");
        assert!(e.to_string().contains("data_dirr"), "{e}");
        let e = parse("listen-addr = \"nowhere\"\n").expect_err("bad addr");
        assert!(e.to_string().contains("listen-addr") || e.to_string().contains("invalid"), "{e}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load(Some(&dir.path().join("nope.toml"))).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
