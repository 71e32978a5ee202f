//! A recording, scriptable [`ContainerRuntime`] for unit tests of the agent: no containers, no
//! processes; exits happen when a test says so.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::{ContainerRuntime, ContainerSpec, ContainerState, ContainerStatusKind, Exit, RegistryAuth, RuntimeError};

#[derive(Default)]
struct State {
    calls: Vec<String>,
    failing_pulls: HashMap<String, String>,
    /// The next stops that fail, and why.
    failing_stops: (usize, String),
    containers: BTreeMap<String, (ContainerSpec, ContainerStatusKind, u32)>,
    exits: HashMap<String, watch::Sender<Option<i32>>>,
    next_pid: u32,
    down: Option<String>,
    healthchecks: HashMap<String, shoal_api::v1::HealthConfig>,
    volumes: BTreeMap<String, u64>,
}

/// The fake runtime.
pub struct FakeRuntime {
    state: Mutex<State>,
    /// While false, pulls wait (see [`FakeRuntime::hold_pulls`]).
    pulls_open: watch::Sender<bool>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime { state: Mutex::default(), pulls_open: watch::channel(true).0 }
    }
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls so far, as `pull IMAGE`, `create ID`, `start ID`, `stop ID`, `remove ID`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Makes pulls wait until [`FakeRuntime::release_pulls`] (a pull that takes its time).
    pub fn hold_pulls(&self) {
        self.pulls_open.send_replace(false);
    }

    /// Lets held and later pulls go on.
    pub fn release_pulls(&self) {
        self.pulls_open.send_replace(true);
    }

    /// Makes pulls of `image` fail with `reason`.
    pub fn fail_pull(&self, image: &str, reason: &str) {
        self.lock().failing_pulls.insert(image.to_string(), reason.to_string());
    }

    /// Makes the next `count` stops fail with `reason` (the process keeps running).
    pub fn fail_stops(&self, count: usize, reason: &str) {
        self.lock().failing_stops = (count, reason.to_string());
    }

    /// Adds a named volume of `size` bytes.
    pub fn add_volume(&self, name: &str, size: u64) {
        self.lock().volumes.insert(name.to_string(), size);
    }

    /// Gives `image` a health check of its own.
    pub fn set_image_healthcheck(&self, image: &str, h: shoal_api::v1::HealthConfig) {
        self.lock().healthchecks.insert(image.to_string(), h);
    }

    /// Makes [`ContainerRuntime::ping`] fail with `reason` (`None`: answer again).
    pub fn set_down(&self, reason: Option<&str>) {
        self.lock().down = reason.map(str::to_string);
    }

    /// Makes the container's process exit with `code`.
    pub fn exit(&self, id: &str, code: i32) {
        let mut s = self.lock();
        if let Some(c) = s.containers.get_mut(id) {
            c.1 = ContainerStatusKind::Stopped;
        }
        if let Some(tx) = s.exits.get(id) {
            tx.send_replace(Some(code));
        }
    }

    /// Ids of containers whose process runs.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, c)| c.1 == ContainerStatusKind::Running)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn pull(&self, image: &str, _auth: &RegistryAuth) -> Result<(), RuntimeError> {
        self.lock().calls.push(format!("pull {image}"));
        let mut open = self.pulls_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        let s = self.lock();
        match s.failing_pulls.get(image) {
            Some(reason) => Err(RuntimeError::ImageNotFound { image: image.to_string(), reason: reason.clone() }),
            None => Ok(()),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        s.calls.push(format!("create {}", spec.id));
        s.containers.insert(spec.id.clone(), (spec.clone(), ContainerStatusKind::Created, 0));
        s.exits.insert(spec.id.clone(), watch::channel(None).0);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut s = self.lock();
        s.calls.push(format!("start {id}"));
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        let c = s.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        c.1 = ContainerStatusKind::Running;
        c.2 = pid;
        Ok(pid)
    }

    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut rx =
            self.lock().exits.get(id).map(|tx| tx.subscribe()).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        loop {
            if let Some(code) = *rx.borrow_and_update() {
                return Ok(Exit { code });
            }
            rx.changed().await.map_err(|_| RuntimeError::NotFound(id.to_string()))?;
        }
    }

    async fn stop(&self, id: &str, signal: i32, _grace: Duration) -> Result<Exit, RuntimeError> {
        {
            let mut s = self.lock();
            s.calls.push(format!("stop {id}"));
            if s.failing_stops.0 > 0 {
                s.failing_stops.0 -= 1;
                return Err(RuntimeError::Containerd(s.failing_stops.1.clone()));
            }
        }
        self.exit(id, 128 + signal);
        Ok(Exit { code: 128 + signal })
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        s.calls.push(format!("remove {id}"));
        s.containers.remove(id);
        s.exits.remove(id);
        Ok(())
    }

    async fn volumes(&self) -> Result<Vec<shoal_api::v1::Volume>, RuntimeError> {
        Ok(self
            .lock()
            .volumes
            .iter()
            .map(|(n, s)| shoal_api::v1::Volume { name: n.clone(), size_bytes: *s, ..Default::default() })
            .collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<bool, RuntimeError> {
        let mut s = self.lock();
        s.calls.push(format!("remove-volume {name}"));
        Ok(s.volumes.remove(name).is_some())
    }

    async fn image_healthcheck(&self, image: &str) -> Result<Option<shoal_api::v1::HealthConfig>, RuntimeError> {
        Ok(self.lock().healthchecks.get(image).cloned())
    }

    async fn ping(&self) -> Result<String, RuntimeError> {
        match &self.lock().down {
            Some(reason) => Err(RuntimeError::Containerd(reason.clone())),
            None => Ok("fake".to_string()),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        Ok(self
            .lock()
            .containers
            .iter()
            .map(|(id, (spec, status, pid))| ContainerState {
                id: id.clone(),
                labels: spec.labels.clone(),
                status: *status,
                pid: *pid,
                exit_code: None,
            })
            .collect())
    }

    async fn logs(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        Err(RuntimeError::NotFound(id.to_string()))
    }
}
