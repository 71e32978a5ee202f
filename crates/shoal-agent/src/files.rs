//! Secrets and configs on the node: the dispatcher sends only those the node's tasks need; the
//! agent keeps them in memory, writes a task's files into a tmpfs (never to disk) just before its
//! container is created, bind-mounts them read-only (secrets at `/run/secrets/<name>`, configs at
//! their target path), and deletes them when the task leaves the node.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use shoal_api::v1::{Config, Secret, Task};
use shoal_runtime::MountSpec;

/// The secrets and configs this node may use, by id.
#[derive(Default)]
struct Deps {
    secrets: HashMap<String, Secret>,
    configs: HashMap<String, Config>,
}

fn meta_id(m: &Option<shoal_api::v1::Meta>) -> String {
    m.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

impl Deps {
    fn replace(&mut self, secrets: Vec<Secret>, configs: Vec<Config>) {
        self.secrets = secrets.into_iter().map(|s| (meta_id(&s.meta), s)).collect();
        self.configs = configs.into_iter().map(|c| (meta_id(&c.meta), c)).collect();
    }
}

/// Where the files of tasks live (a tmpfs the agent mounts), and the secrets and configs
/// delivered to this node; clones share them.
#[derive(Clone)]
pub struct FileRoot {
    dir: PathBuf,
    deps: Arc<RwLock<Deps>>,
}

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return false };
    let d = dir.display().to_string();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        target == Some(d.as_str()) && fstype == Some("tmpfs")
    })
}

impl FileRoot {
    /// Mounts (once) a tmpfs at `dir` for task files.
    pub fn mount(dir: PathBuf) -> Result<FileRoot, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if !is_mountpoint(&dir) {
            let st = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0700,size=64m,nosuid,nodev,noexec", "shoal-secrets"])
                .arg(&dir)
                .status()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if !st.success() || !is_mountpoint(&dir) {
                return Err(format!("cannot mount a tmpfs at {} (is shoald running as root?)", dir.display()));
            }
        }
        Ok(FileRoot { dir, deps: Arc::default() })
    }

    /// Replaces the delivered secrets and configs with the dispatcher's complete set.
    pub fn set_deps(&self, secrets: Vec<Secret>, configs: Vec<Config>) {
        self.deps.write().unwrap_or_else(|p| p.into_inner()).replace(secrets, configs);
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    /// Writes the task's secret and config files; returns the mounts that put them in place.
    pub fn materialize(&self, task: &Task) -> Result<Vec<MountSpec>, String> {
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else { return Ok(Vec::new()) };
        if c.secrets.is_empty() && c.configs.is_empty() {
            return Ok(Vec::new());
        }
        let id = meta_id(&task.meta);
        let dir = self.task_dir(&id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let deps = self.deps.read().unwrap_or_else(|p| p.into_inner());
        let mut mounts = Vec::new();
        for (i, r) in c.secrets.iter().enumerate() {
            let s = deps
                .secrets
                .get(&r.secret_id)
                .ok_or_else(|| format!("secret {:?} has not reached this node (was it removed?)", r.secret_name))?;
            let name =
                r.target.as_ref().map(|t| t.name.clone()).filter(|n| !n.is_empty()).unwrap_or(r.secret_name.clone());
            let data = s.spec.as_ref().map(|s| s.data.as_slice()).unwrap_or_default();
            let file = dir.join(format!("secret-{i}"));
            write(&file, data, r.target.as_ref())?;
            let target = if name.starts_with('/') { name } else { format!("/run/secrets/{name}") };
            mounts.push(MountSpec::Bind { source: file, target, read_only: true });
        }
        for (i, r) in c.configs.iter().enumerate() {
            let cfg = deps
                .configs
                .get(&r.config_id)
                .ok_or_else(|| format!("config {:?} has not reached this node (was it removed?)", r.config_name))?;
            let target = r
                .target
                .as_ref()
                .map(|t| t.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or(format!("/{}", r.config_name));
            let data = cfg.spec.as_ref().map(|s| s.data.as_slice()).unwrap_or_default();
            let file = dir.join(format!("config-{i}"));
            write(&file, data, r.target.as_ref())?;
            mounts.push(MountSpec::Bind { source: file, target, read_only: true });
        }
        Ok(mounts)
    }

    /// Deletes the task's files.
    pub fn remove(&self, task_id: &str) {
        if task_id.is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(self.task_dir(task_id));
    }
}

/// Writes a task file with the target's mode (default 0444) and numeric owner (default root).
fn write(path: &Path, data: &[u8], target: Option<&shoal_api::v1::FileTarget>) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = target.map_or(0, |t| t.mode);
    let mode = if mode == 0 { 0o444 } else { mode & 0o777 };
    let id = |s: Option<&String>, what: &str| -> Result<Option<u32>, String> {
        match s.map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| format!("{what} {v:?} of {} must be numeric", path.display())),
        }
    };
    let uid = id(target.map(|t| &t.uid), "uid")?;
    let gid = id(target.map(|t| &t.gid), "gid")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{ContainerSpec, FileTarget, Meta, SecretReference, SecretSpec, TaskSpec};

    #[test]
    fn only_delivered_secrets_materialize_and_files_go_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = FileRoot { dir: dir.path().to_path_buf(), deps: Arc::default() };
        let secret = Secret {
            meta: Some(Meta { id: "s1".into(), ..Default::default() }),
            spec: Some(SecretSpec { data: b"hunter2".to_vec(), ..Default::default() }),
        };
        let task = Task {
            meta: Some(Meta { id: "t1".into(), ..Default::default() }),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets: vec![SecretReference {
                        secret_id: "s1".into(),
                        secret_name: "db-pass".into(),
                        target: Some(FileTarget {
                            name: "db".into(),
                            mode: 0o400,
                            uid: "1000".into(),
                            gid: "1001".into(),
                        }),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = root.materialize(&task).expect_err("not delivered");
        assert!(e.contains("has not reached this node"), "{e}");
        root.set_deps(vec![secret], vec![]);
        let mounts = root.materialize(&task).expect("materialize");
        let MountSpec::Bind { source, target, read_only } = &mounts[0] else { panic!("bind expected") };
        assert_eq!((target.as_str(), *read_only), ("/run/secrets/db", true));
        assert_eq!(std::fs::read(source).expect("read"), b"hunter2");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(source).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.gid()), (1000, 1001), "owned as the target says");
        root.remove("t1");
        assert!(!source.exists());
    }
}
