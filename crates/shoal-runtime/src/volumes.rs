//! Named local volumes: directories under the runtime's `volumes/`, made when a task mounts one.
//! Listing counts each volume's bytes up to a bound of files, so a huge volume cannot stall it.

use std::path::Path;

use shoal_api::v1::Volume;

use crate::RuntimeError;

/// Files counted per volume; beyond it the size is a lower bound.
const MAX_FILES: usize = 100_000;

fn io(what: &str, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io(format!("{what}: {e}"))
}

/// A volume name is one path component: no separator, not `.` or `..`.
pub(crate) fn check_name(name: &str) -> Result<(), RuntimeError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(RuntimeError::Io(format!("{name:?} is not a volume name")));
    }
    Ok(())
}

/// The volumes under `dir`, by name.
pub(crate) fn list(dir: &Path) -> Result<Vec<Volume>, RuntimeError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("cannot list volumes", e)),
    };
    for e in entries {
        let e = e.map_err(|e| io("cannot list volumes", e))?;
        let meta = e.metadata().map_err(|e| io("cannot read a volume", e))?;
        if !meta.is_dir() {
            continue;
        }
        let created = meta
            .created()
            .or_else(|_| meta.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        out.push(Volume {
            name: e.file_name().to_string_lossy().into_owned(),
            size_bytes: size(&e.path()),
            created_at_ms: created,
            ..Default::default()
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Bytes of the files under `root` (symlinks not followed), counting at most [`MAX_FILES`].
fn size(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_FILES {
                return total;
            }
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total = total.saturating_add(m.len());
            }
        }
    }
    total
}

/// Deletes volume `name` under `dir`; false if there was none.
pub(crate) fn remove(dir: &Path, name: &str) -> Result<bool, RuntimeError> {
    check_name(name)?;
    let path = dir.join(name);
    match std::fs::remove_dir_all(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&format!("cannot remove volume {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_listed_with_their_size_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(list(&dir.path().join("none")).expect("no dir: none").is_empty());
        std::fs::create_dir_all(dir.path().join("data/sub")).expect("mkdir");
        std::fs::write(dir.path().join("data/a"), [0u8; 100]).expect("write");
        std::fs::write(dir.path().join("data/sub/b"), [0u8; 23]).expect("write");
        std::fs::create_dir_all(dir.path().join("empty")).expect("mkdir");
        std::fs::write(dir.path().join("stray-file"), b"x").expect("write");
        let v = list(dir.path()).expect("list");
        let got: Vec<(&str, u64)> = v.iter().map(|v| (v.name.as_str(), v.size_bytes)).collect();
        assert_eq!(got, [("data", 123), ("empty", 0)]);
        assert!(v[0].created_at_ms > 0);
        assert!(remove(dir.path(), "data").expect("remove"));
        assert!(!remove(dir.path(), "data").expect("gone"));
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(remove(dir.path(), bad).is_err(), "{bad:?}");
        }
        assert!(dir.path().join("stray-file").exists());
    }
}
