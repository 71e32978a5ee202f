//! shoal's container runtime boundary.
//!
//! The agent drives containers only through [`ContainerRuntime`]. [`containerd::Containerd`]
//! implements it over containerd's gRPC API (client-side image pull, as containerd 1.6 has no
//! transfer service); [`fake::FakeRuntime`] records calls for the agent's unit tests. Decisions
//! (what to run, when to restart) are not made here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub mod auth;
pub mod containerd;
pub mod fake;
pub mod logfile;
pub mod spec;
mod volumes;

/// Registry credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No credentials.
    #[default]
    Anonymous,
    /// Basic (or token-exchange) credentials.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

// The password must never reach a log line through `{:?}`.
impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &"<redacted>").finish()
            }
        }
    }
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A host path.
    Bind { source: PathBuf, target: String, read_only: bool },
    /// A named volume kept on the node across task restarts.
    Volume { name: String, target: String, read_only: bool },
    /// A tmpfs.
    Tmpfs { target: String, size_bytes: i64, mode: u32 },
}

/// Everything needed to create a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// Container id (the task id).
    pub id: String,
    /// Image reference.
    pub image: String,
    /// Overrides the image entrypoint.
    pub entrypoint: Vec<String>,
    /// Overrides the image cmd.
    pub args: Vec<String>,
    /// KEY=VALUE, added to the image's.
    pub env: Vec<String>,
    /// Working directory (image's if empty).
    pub workdir: String,
    /// `uid[:gid]` (image's if empty).
    pub user: String,
    /// Hostname inside the container.
    pub hostname: String,
    /// Labels on the container.
    pub labels: BTreeMap<String, String>,
    /// Mounts.
    pub mounts: Vec<MountSpec>,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// CPU limit in nano CPUs (0: none).
    pub nano_cpus: i64,
    /// Memory limit in bytes (0: none).
    pub memory_bytes: i64,
    /// Process limit (0: none).
    pub pids: i64,
    /// The network namespace to join (a pinned namespace file); `None`: a new one with
    /// loopback only.
    pub netns: Option<PathBuf>,
    /// Run the process under this init (a path inside the container: it forwards signals and
    /// reaps zombies as PID 1), as `docker run --init` does.
    pub init: Option<String>,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal when killed by a signal).
    pub code: i32,
}

/// A container's state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatusKind {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended.
    Stopped,
}

/// A container the runtime knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// State.
    pub status: ContainerStatusKind,
    /// Process id while running.
    pub pid: u32,
    /// Exit code once stopped.
    pub exit_code: Option<i32>,
}

/// What went wrong, in words `service ps` can show.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image reference does not parse.
    #[error("invalid image reference {0:?}")]
    InvalidImage(String),
    /// The registry has no such image.
    #[error("image {image:?} not found: {reason}")]
    ImageNotFound { image: String, reason: String },
    /// The registry could not be reached or refused.
    #[error("pulling {image:?} failed: {reason}")]
    Pull { image: String, reason: String },
    /// containerd refused or is unreachable.
    #[error("containerd: {0}")]
    Containerd(String),
    /// No such container.
    #[error("container {0:?} not found")]
    NotFound(String),
    /// Local file system.
    #[error("{0}")]
    Io(String),
}

/// A process to run in a running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// Command and arguments.
    pub args: Vec<String>,
    /// Give it a terminal (stdout and stderr are one stream then).
    pub tty: bool,
    /// Keep its stdin open for input.
    pub stdin: bool,
    /// Terminal size.
    pub width: u32,
    /// Terminal size.
    pub height: u32,
}

/// A started exec process and its streams.
pub struct ExecProcess {
    /// Its id within the container.
    pub exec_id: String,
    /// Its stdin, when asked for.
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    /// Its stdout (and stderr, with a terminal).
    pub stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// Its stderr, without a terminal.
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess").field("exec_id", &self.exec_id).finish()
    }
}

/// The operations the agent needs from a container runtime.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Makes sure the image is present (concurrent pulls of one image share one fetch).
    async fn pull(&self, image: &str, auth: &RegistryAuth) -> Result<(), RuntimeError>;
    /// Creates (does not start) a container.
    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError>;
    /// Starts a created container; returns its pid.
    async fn start(&self, id: &str) -> Result<u32, RuntimeError>;
    /// Waits until the container's process ends.
    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError>;
    /// Sends `signal`, waits up to `grace`, then kills.
    async fn stop(&self, id: &str, signal: i32, grace: Duration) -> Result<Exit, RuntimeError>;
    /// Deletes the container and its writable layer; idempotent.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every container of this runtime (for re-adoption after an agent restart).
    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError>;
    /// Path of the container's log file.
    async fn logs(&self, id: &str) -> Result<PathBuf, RuntimeError>;
    /// Checks that the runtime answers; returns its name and version.
    async fn ping(&self) -> Result<String, RuntimeError>;
    /// The named local volumes (name, size, creation time).
    async fn volumes(&self) -> Result<Vec<shoal_api::v1::Volume>, RuntimeError> {
        Ok(Vec::new())
    }
    /// Deletes the named local volume `name` and its files; false if there was none.
    async fn remove_volume(&self, name: &str) -> Result<bool, RuntimeError> {
        let _ = name;
        Ok(false)
    }
    /// The health check a pulled image declares (its `HEALTHCHECK`), if any.
    async fn image_healthcheck(&self, image: &str) -> Result<Option<shoal_api::v1::HealthConfig>, RuntimeError> {
        let _ = image;
        Ok(None)
    }
    /// Starts another process in the running container `id`, with its container's user,
    /// environment and working directory.
    async fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
        let _ = spec;
        Err(RuntimeError::Containerd(format!("exec into {id} is not supported by this runtime")))
    }
    /// Waits until an exec process ends.
    async fn exec_wait(&self, id: &str, exec_id: &str) -> Result<Exit, RuntimeError> {
        let _ = (id, exec_id);
        Err(RuntimeError::Containerd("exec is not supported by this runtime".into()))
    }
    /// Ends the exec process's stdin.
    async fn exec_close_stdin(&self, id: &str, exec_id: &str) -> Result<(), RuntimeError> {
        let _ = (id, exec_id);
        Ok(())
    }
    /// Resizes the exec process's terminal.
    async fn exec_resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), RuntimeError> {
        let _ = (id, exec_id, width, height);
        Ok(())
    }
    /// Forgets an ended exec process (and kills it if it still runs).
    async fn exec_remove(&self, id: &str, exec_id: &str) {
        let _ = (id, exec_id);
    }
}
