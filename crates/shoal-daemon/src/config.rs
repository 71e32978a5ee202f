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
