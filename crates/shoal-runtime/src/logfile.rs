//! Size cap for task log files.
//!
//! The shim writes a container's stdout/stderr to `<id>.log` (opened for appending), so the file
//! outlives the agent. When it grows past the cap, its content moves to `<id>.log.1` (replacing
//! the previous one) and the file is truncated in place: the shim's next write lands at the new
//! end. A task thus keeps at most twice the cap on disk. Lines written between the copy and the
//! truncation are lost, as with logrotate's copytruncate.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default cap of one log file.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

/// How often log files are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The file the previous content of `log` moved to.
pub fn rotated_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_os_string();
    s.push(".1");
    PathBuf::from(s)
}

/// Rotates `log` if it is larger than `max_bytes`; returns whether it did.
pub fn rotate_if_over(log: &Path, max_bytes: u64) -> io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let rotated = rotated_path(log);
    let mut tmp = rotated.as_os_str().to_os_string();
    tmp.push(".tmp");
    std::fs::copy(log, &tmp)?;
    std::fs::rename(&tmp, &rotated)?;
    std::fs::OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

/// Rotates every `*.log` in `dir` that is over `max_bytes`; returns how many it rotated.
pub fn rotate_dir(dir: &Path, max_bytes: u64) -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") && rotate_if_over(&path, max_bytes)? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_appending_writer_keeps_writing_after_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("t1.log");
        // The shim's view: one descriptor opened for appending, kept across the rotation.
        let mut w = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open");
        w.write_all(&[b'a'; 100]).expect("write");
        assert!(!rotate_if_over(&log, 100).expect("rotate"), "at the cap: kept");
        w.write_all(b"b\n").expect("write");
        assert_eq!(rotate_dir(dir.path(), 100).expect("rotate"), 1);
        assert_eq!(std::fs::metadata(&log).expect("meta").len(), 0);
        assert_eq!(std::fs::read(rotated_path(&log)).expect("rotated").len(), 102);
        w.write_all(b"after\n").expect("write");
        // Appending writes land at the new end: no hole of the old size.
        assert_eq!(std::fs::read(&log).expect("read"), b"after\n");
        assert!(!rotate_if_over(&dir.path().join("missing.log"), 1).expect("missing is fine"));
    }
}
