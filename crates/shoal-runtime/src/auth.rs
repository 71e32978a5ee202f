//! Registry credentials from a file in Docker's `config.json` format, so operators can reuse what
//! `docker login` wrote:
//!
//! ```json
//! { "auths": { "registry.example.com:5000": { "auth": "<base64 of user:password>" },
//!              "https://index.docker.io/v1/": { "username": "u", "password": "p" } } }
//! ```
//!
//! The file is read at every pull, so credentials can change without restarting the node.
//! Credential helpers (`credsStore`) are not supported.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{RegistryAuth, RuntimeError};

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
}

/// The registry host a `config.json` key names: scheme and path dropped, Docker Hub's aliases
/// folded into the name references resolve to.
fn registry_key(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_string(),
        _ => host,
    }
}

/// Parses the file's text into credentials per registry host.
pub fn parse(text: &str) -> Result<BTreeMap<String, RegistryAuth>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not a Docker config.json: {e}"))?;
    let mut out = BTreeMap::new();
    for (key, e) in file.auths {
        let auth = if !e.auth.is_empty() {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(e.auth.trim())
                .map_err(|err| format!("{key}: \"auth\" is invalid base64 ({err})"))?;
            let text = String::from_utf8(raw).map_err(|_| format!("{key}: \"auth\" is not UTF-8"))?;
            let (user, pass) =
                text.split_once(':').ok_or_else(|| format!("{key}: \"auth\" must encode USER:PASSWORD"))?;
            RegistryAuth::Basic { username: user.to_string(), password: pass.to_string() }
        } else if !e.username.is_empty() {
            RegistryAuth::Basic { username: e.username, password: e.password }
        } else if !e.identity_token.is_empty() {
            // Registries take an identity token as the password of the `<token>` user.
            RegistryAuth::Basic { username: "<token>".to_string(), password: e.identity_token }
        } else {
            return Err(format!("{key}: no \"auth\", \"username\" or \"identitytoken\""));
        };
        out.insert(registry_key(&key), auth);
    }
    Ok(out)
}

/// Credentials for `registry` (as resolved from an image reference) from the file at `path`;
/// `None` when the file has none for it. A missing or unreadable file is an error: the operator
/// configured it.
pub fn lookup(path: &Path, registry: &str) -> Result<Option<RegistryAuth>, RuntimeError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RuntimeError::Io(format!("registry credentials {}: {e}", path.display())))?;
    let all = parse(&text).map_err(|e| RuntimeError::Io(format!("registry credentials {}: {e}", path.display())))?;
    Ok(all.get(&registry_key(registry)).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic { username: u.into(), password: p.into() }
    }

    #[test]
    fn reads_docker_login_output() {
        let text = r#"{"auths": {
            "reg.example.com:5000": {"auth": "YWxpY2U6czNjcjN0"},
            "https://index.docker.io/v1/": {"username": "bob", "password": "pw:with:colons"},
            "http://Other.example/": {"identitytoken": "tok"}
        }, "credsStore": "ignored"}"#;
        let m = parse(text).expect("parse");
        assert_eq!(m.get("reg.example.com:5000"), Some(&basic("alice", "s3cr3t")));
        assert_eq!(m.get("index.docker.io"), Some(&basic("bob", "pw:with:colons")));
        assert_eq!(m.get("other.example"), Some(&basic("<token>", "tok")));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(parse("not json").expect_err("rejected").contains("not a Docker config.json"));
        let e = parse(r#"{"auths": {"r:1": {"auth": "!!"}}}"#).expect_err("rejected");
        assert!(e.starts_with("r:1: \"auth\" is invalid base64"), "{e}");
        // base64 of "nocolon"
        let e = parse(r#"{"auths": {"r:1": {"auth": "bm9jb2xvbg=="}}}"#).expect_err("rejected");
        assert!(e.contains("USER:PASSWORD"), "{e}");
        let e = parse(r#"{"auths": {"r:1": {}}}"#).expect_err("rejected");
        assert!(e.contains("no \"auth\""), "{e}");
    }

    #[test]
    fn lookup_matches_the_registry_of_a_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths": {"docker.io": {"auth": "dTpw"}}}"#).expect("write");
        assert_eq!(lookup(&path, "index.docker.io").expect("lookup"), Some(basic("u", "p")));
        assert_eq!(lookup(&path, "quay.io").expect("lookup"), None);
        let missing = lookup(&dir.path().join("nope.json"), "quay.io").expect_err("missing file");
        assert!(missing.to_string().contains("nope.json"), "{missing}");
    }
}
