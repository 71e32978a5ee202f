//! One controller per assigned task: walks the task through ACCEPTED -> PREPARING -> READY ->
//! STARTING -> RUNNING -> COMPLETE/FAILED (or REJECTED/SHUTDOWN) over the container runtime,
//! reporting each step. States only move forward. A controller started after an agent restart
//! adopts the task's container instead of starting another one.

use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::{ContainerStatus, Task, TaskState, TaskStatus};
use shoal_runtime::{ContainerRuntime, ContainerState, ContainerStatusKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::reporter::Reporter;
use crate::spec::runtime_spec;

/// Grace period when the spec sets none (Docker's default).
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn task_id(t: &Task) -> String {
    t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

fn wants_stop(t: &Task) -> bool {
    t.desired_state > TaskState::Running as i32
}

/// The signal and grace period that stop `task`'s container.
fn stop_settings(task: &Task) -> (i32, Duration) {
    let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
    let grace = c
        .and_then(|c| c.stop_grace_period_ms)
        .map(|ms| Duration::from_millis(ms.max(0) as u64))
        .unwrap_or(DEFAULT_STOP_GRACE);
    let signal = c.map(|c| c.stop_signal.as_str()).filter(|s| !s.is_empty()).unwrap_or("SIGTERM");
    (shoal_api::validate::parse_signal(signal).unwrap_or(15), grace)
}

/// First wait before a failed stop is tried again; the wait doubles up to [`STOP_RETRY_MAX`].
const STOP_RETRY_FIRST: Duration = Duration::from_millis(250);
const STOP_RETRY_MAX: Duration = Duration::from_secs(10);

/// How stopping a task's container ended.
#[derive(Debug, PartialEq, Eq)]
enum Stopped {
    /// Its process exited with this code.
    Exited(i32),
    /// The runtime has no such container (any more): nothing runs.
    Gone,
    /// The agent shuts down first: nothing is reported (the next agent adopts the task).
    Cancelled,
}

/// What the runtime's answer to a stop means: stopped, or a failure to try again (the process
/// may still run: containerd unreachable, the kill or the wait refused).
fn stop_outcome(r: Result<shoal_runtime::Exit, shoal_runtime::RuntimeError>) -> Result<Stopped, String> {
    match r {
        Ok(exit) => Ok(Stopped::Exited(exit.code)),
        Err(shoal_runtime::RuntimeError::NotFound(_)) => Ok(Stopped::Gone),
        Err(e) => Err(e.to_string()),
    }
}

/// Sleeps until `at` (forever without one).
async fn sleep_until_std(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Drives one task.
pub struct Controller {
    task: watch::Receiver<Task>,
    runtime: Arc<dyn ContainerRuntime>,
    reporter: Reporter,
    /// What the container runtime knew of this task's container at agent start, if anything.
    adopted: Option<ContainerState>,
    /// Last status reported (persisted): the controller never reports a state below it.
    last: TaskStatus,
    cancel: CancellationToken,
    /// Where the task's secret and config files go (or why they cannot).
    files: Result<crate::files::FileRoot, String>,
    /// The host network loop's reports and this task's namespace file, when the node has
    /// overlay networking.
    net: Option<NetWait>,
    /// The running task's health, when it has a health check.
    health: Option<shoal_api::v1::Health>,
    /// Its health check: the spec's, completed from the image's (known once pulled).
    check: Option<shoal_api::v1::HealthConfig>,
    /// Since when the node is out of touch with the managers (None: in touch).
    out_of_touch: watch::Receiver<Option<std::time::Instant>>,
}

/// What a controller needs to put its container in the namespace the network loop makes.
pub struct NetWait {
    /// The loop's reports.
    pub ready: watch::Receiver<std::collections::BTreeMap<String, crate::network::Readiness>>,
    /// The task's namespace file.
    pub path: std::path::PathBuf,
    /// Where the task's `/etc/resolv.conf`, `hosts` and `hostname` are written, when the node
    /// serves its tasks' DNS.
    pub etc: Option<std::path::PathBuf>,
    /// The node's stopping tasks that no node sends traffic to any more.
    pub drained: watch::Receiver<std::collections::BTreeSet<String>>,
    /// Tasks a published port of the node leads to straight (host mode, `traffic=local`).
    pub published: watch::Receiver<std::collections::BTreeSet<String>>,
}

/// How long a stopping task waits for every node to take it out of its VIPs and DNS.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// How long a task waits for its network before it is rejected.
const NETWORK_WAIT: Duration = Duration::from_secs(60);

/// What every controller of the agent works with.
pub struct Tools {
    /// The container runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Where status goes.
    pub reporter: Reporter,
    /// Where secret and config files go (or why they cannot).
    pub files: Result<crate::files::FileRoot, String>,
    /// Since when the node is out of touch with the managers (None: in touch).
    pub out_of_touch: watch::Receiver<Option<std::time::Instant>>,
}

impl Controller {
    /// A controller for `task`; `last` is the last status this node reported for it.
    pub fn new(
        task: watch::Receiver<Task>,
        tools: Tools,
        adopted: Option<ContainerState>,
        last: TaskStatus,
        cancel: CancellationToken,
        net: Option<NetWait>,
    ) -> Self {
        let Tools { runtime, reporter, files, out_of_touch } = tools;
        // An adopted running task keeps the health it reported.
        let health = last.health.clone();
        Self { task, runtime, reporter, adopted, last, cancel, files, net, health, check: None, out_of_touch }
    }

    fn report(&mut self, state: TaskState, message: &str, err: &str, container: Option<ContainerStatus>) {
        if (state as i32) < self.last.state {
            return;
        }
        let id = task_id(&self.task.borrow());
        let status = TaskStatus {
            state: state as i32,
            timestamp_ms: now_ms(),
            message: message.to_string(),
            err: err.to_string(),
            container: container.or_else(|| self.last.container.clone()),
            health: if state == TaskState::Running { self.health.clone() } else { None },
        };
        self.last = status.clone();
        self.reporter.report(&id, status);
    }

    fn done(&self) -> bool {
        self.last.state >= TaskState::Complete as i32
    }

    /// Runs until the task reached a terminal state (the agent removes the container once the
    /// task leaves this node's assignments) or the agent shuts down. A task that ended has its
    /// secret and config files deleted at once.
    pub async fn run(mut self) {
        let id = task_id(&self.task.borrow());
        self.drive().await;
        if self.done() {
            if let Ok(f) = &self.files {
                f.remove(&id);
            }
        }
    }

    async fn drive(&mut self) {
        let task = self.task.borrow().clone();
        let id = task_id(&task);
        if self.done() {
            return;
        }
        let running = match self.adopted.take() {
            Some(c) if c.status == ContainerStatusKind::Running => {
                tracing::info!(task_id = %id, pid = c.pid, "adopting running container");
                true
            }
            Some(c) if c.status == ContainerStatusKind::Stopped => {
                let code = c.exit_code.unwrap_or(-1);
                self.finish(code, "container exited while the agent was away");
                return;
            }
            Some(_) | None if self.last.state >= TaskState::Running as i32 => {
                self.report(
                    TaskState::Failed,
                    "container lost",
                    "the container disappeared while the agent was away",
                    None,
                );
                return;
            }
            _ => false,
        };
        if running {
            self.resolve_check(&task).await;
        } else {
            if wants_stop(&task) {
                self.report(TaskState::Shutdown, "shut down before it started", "", None);
                return;
            }
            if !self.prepare_and_start(&task).await {
                return;
            }
        }
        self.supervise(&id, &task).await;
    }

    /// Pull, create, start. Returns false if the task ended on the way.
    async fn prepare_and_start(&mut self, task: &Task) -> bool {
        let id = task_id(task);
        let init = crate::spec::INIT_CANDIDATES.iter().map(std::path::Path::new).find(|p| p.exists());
        let mut spec = match runtime_spec(task, init) {
            Ok(s) => s,
            Err(e) => {
                self.report(TaskState::Rejected, "invalid task", &e, None);
                return false;
            }
        };
        let wants_files = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .is_some_and(|c| !c.secrets.is_empty() || !c.configs.is_empty());
        if wants_files {
            let mounts = match &self.files {
                Ok(root) => root.materialize(task),
                Err(e) => Err(e.clone()),
            };
            match mounts {
                Ok(m) => spec.mounts.extend(m),
                Err(e) => {
                    self.report(TaskState::Rejected, "secrets and configs", &e, None);
                    return false;
                }
            }
        }
        // An earlier attempt of this agent got this far if the task was reported past ACCEPTED
        // before (the state is persisted); only then can a container be left over.
        let attempted_before = self.last.state >= TaskState::Preparing as i32;
        self.report(TaskState::Accepted, "accepted", "", None);
        self.report(TaskState::Preparing, "preparing", "", None);
        let t0 = std::time::Instant::now();
        if let Err(e) = self.runtime.pull(&spec.image, &Default::default()).await {
            self.report(TaskState::Rejected, "image pull failed", &e.to_string(), None);
            return false;
        }
        let pulled = t0.elapsed();
        self.resolve_check(task).await;
        if self.stop_requested() {
            self.report(TaskState::Shutdown, "shut down before it started", "", None);
            return false;
        }
        // The container names its namespace by path and is made while the network loop makes
        // the namespace; only its start needs the namespace.
        if let Some(net) = self.net.as_ref() {
            spec.netns = Some(net.path.clone());
            if let Some(dir) = net.etc.clone() {
                match crate::network::write_etc(&dir, &spec.hostname, task, &spec.mounts) {
                    Ok(m) => spec.mounts.extend(m),
                    Err(e) => {
                        self.report(TaskState::Rejected, "network setup failed", &e, None);
                        return false;
                    }
                }
            }
        }
        if attempted_before {
            // A container left over from an earlier attempt of this very task is replaced.
            let _ = self.runtime.remove(&id).await;
        }
        if let Err(e) = self.runtime.create(&spec).await {
            self.report(TaskState::Rejected, "container create failed", &e.to_string(), None);
            return false;
        }
        if self.left_node() {
            // The agent's clean-up may have run before this container existed.
            self.discard(&id).await;
            return false;
        }
        if let Some(net) = self.net.as_mut() {
            if let Err(e) = crate::network::wait_ready(&mut net.ready, &id, NETWORK_WAIT).await {
                let _ = self.runtime.remove(&id).await;
                self.report(TaskState::Rejected, "network setup failed", &e, None);
                return false;
            }
            if self.left_node() {
                self.discard(&id).await;
                return false;
            }
            if self.stop_requested() {
                let _ = self.runtime.remove(&id).await;
                self.report(TaskState::Shutdown, "shut down before it started", "", None);
                return false;
            }
        }
        let created = t0.elapsed();
        self.report(TaskState::Ready, "ready", "", None);
        // A stop-first update creates the new task with desired state READY: it waits here,
        // pulled and created, until the task it replaces has stopped.
        if !self.wait_for_start().await {
            return false;
        }
        if self.stop_requested() {
            let _ = self.runtime.remove(&id).await;
            self.report(TaskState::Shutdown, "shut down before it started", "", None);
            return false;
        }
        self.report(TaskState::Starting, "starting", "", None);
        let started = self.runtime.start(&id).await;
        tracing::debug!(task_id = %id, ?pulled, ?created, total = ?t0.elapsed(), "task started");
        if started.is_ok() && self.left_node() {
            self.discard(&id).await;
            return false;
        }
        match started {
            Ok(pid) => {
                let c = ContainerStatus { container_id: id.clone(), pid: i64::from(pid), exit_code: 0 };
                // Reported with its first RUNNING: the task is not up before its first check.
                if crate::health::probe_of(self.check.as_ref()).is_some() {
                    self.health = Some(crate::health::starting(now_ms()));
                }
                self.report(TaskState::Running, "started", "", Some(c));
                true
            }
            Err(e) => {
                self.report(TaskState::Failed, "start failed", &e.to_string(), None);
                false
            }
        }
    }

    /// Works out the task's health check: its spec's, completed from its image's `HEALTHCHECK`.
    async fn resolve_check(&mut self, task: &Task) {
        let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
        let own = c.and_then(|c| c.healthcheck.as_ref());
        let off = own.is_some_and(|h| h.test.first().is_some_and(|t| t == "NONE"));
        let image = match c {
            Some(c) if !off => self.runtime.image_healthcheck(&c.image).await.unwrap_or_else(|e| {
                tracing::warn!(image = %c.image, error = %e, "cannot read the image's health check");
                None
            }),
            _ => None,
        };
        self.check = crate::health::merge(own, image.as_ref());
    }

    /// Waits until the task's desired state is `RUNNING` (true) or past it (also true: the
    /// caller sees the stop); false when the agent shuts down first or the task left the node.
    async fn wait_for_start(&mut self) -> bool {
        loop {
            if self.task.borrow().desired_state >= TaskState::Running as i32 {
                return true;
            }
            tokio::select! {
                changed = self.task.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = self.cancel.cancelled() => return false,
            }
        }
    }

    fn stop_requested(&self) -> bool {
        wants_stop(&self.task.borrow()) || self.left_node()
    }

    /// Whether the task left this node: the agent dropped its side of the task's channel (an
    /// agent that shuts down keeps it: its containers stay for the next agent to adopt).
    fn left_node(&self) -> bool {
        self.task.has_changed().is_err()
    }

    /// Stops and removes the container of a task that left the node while this controller was
    /// still creating or starting it: the agent's own clean-up ran before the container existed,
    /// so nobody else would.
    async fn discard(&self, id: &str) {
        tracing::debug!(task_id = %id, "the task left this node while its container was made; removing it");
        let _ = self.runtime.stop(id, 9, Duration::ZERO).await;
        if let Err(e) = self.runtime.remove(id).await {
            tracing::warn!(task_id = %id, error = %e, "removing the container of a task that left failed");
        }
    }

    /// Stops the container with `sig` (killed after `grace`) and reports the task FAILED.
    async fn stop_failed(&mut self, id: &str, sig: i32, grace: Duration, message: &str, err: &str) {
        let mut cs = self.last.container.clone().unwrap_or_default();
        match self.stop_container(id, sig, grace).await {
            Stopped::Exited(code) => cs.exit_code = code,
            Stopped::Gone => {}
            Stopped::Cancelled => return,
        }
        self.report(TaskState::Failed, message, err, Some(cs));
    }

    /// Stops the container, trying again (after [`STOP_RETRY_FIRST`], doubling up to
    /// [`STOP_RETRY_MAX`]) for as long as the runtime fails to: a task is reported stopped only
    /// once its process is gone, since the managers start its replacement then. While it tries,
    /// the task stays RUNNING with the failure in its status for `service ps` to show.
    async fn stop_container(&mut self, id: &str, sig: i32, grace: Duration) -> Stopped {
        let mut delay = STOP_RETRY_FIRST;
        loop {
            let err = match stop_outcome(self.runtime.stop(id, sig, grace).await) {
                Ok(stopped) => return stopped,
                Err(e) => e,
            };
            tracing::warn!(task_id = %id, error = %err, retry_ms = delay.as_millis() as u64, "stopping the container failed; trying again");
            self.report(TaskState::Running, "stopping", &format!("stop failed, trying again: {err}"), None);
            tokio::select! {
                _ = self.cancel.cancelled() => return Stopped::Cancelled,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(STOP_RETRY_MAX);
        }
    }

    fn finish(&mut self, code: i32, message: &str) {
        let mut c = self.last.container.clone().unwrap_or_default();
        c.exit_code = code;
        if code == 0 {
            self.report(TaskState::Complete, message, "", Some(c));
        } else {
            self.report(TaskState::Failed, message, &format!("task: non-zero exit ({code})"), Some(c));
        }
    }

    /// Waits for the container to exit, or stops it when asked to; runs its health check, and
    /// stops and fails it once unhealthy.
    async fn supervise(&mut self, id: &str, task: &Task) {
        let probe = crate::health::probe_of(self.check.as_ref());
        let started = std::time::Instant::now();
        let started_ms = now_ms();
        if probe.is_some() && self.health.is_none() {
            self.health = Some(crate::health::starting(started_ms));
            self.report(TaskState::Running, "started, health: starting", "", None);
        }
        let due = |h: &Option<shoal_api::v1::Health>| match (&probe, h) {
            (Some(p), Some(h)) => tokio::time::Instant::now() + crate::health::next_delay(h, p, started.elapsed()),
            _ => tokio::time::Instant::now() + Duration::from_secs(3600),
        };
        let mut next_check = due(&self.health);
        let stop_after_ms = task.spec.as_ref().map_or(0, |s| s.stop_on_disconnect_ms);
        let runtime = self.runtime.clone();
        let wait_id = id.to_string();
        // Dropped (so no longer waited on) when this returns.
        let wait = async move { runtime.wait(&wait_id).await };
        tokio::pin!(wait);
        loop {
            let cut_off_stop = crate::disconnect::stop_at(*self.out_of_touch.borrow(), stop_after_ms);
            if self.stop_requested() {
                let t = self.task.borrow().clone();
                // Out of every VIP and name first, then the signal: no new connection reaches a
                // process that is going away.
                if let Some(net) = self.net.as_mut().filter(|_| !t.networks.is_empty()) {
                    let wait = net.drained.wait_for(|d| d.contains(id));
                    if tokio::time::timeout(DRAIN_WAIT, wait).await.is_err() {
                        tracing::warn!(task_id = %id, "not every node confirmed the task out of its VIPs in time; stopping it");
                    }
                }
                // And out of this node's own published ports (its network loop takes a task
                // that is to stop out of them at once).
                if let Some(net) = self.net.as_mut() {
                    let wait = net.published.wait_for(|p| !p.contains(id));
                    if tokio::time::timeout(DRAIN_WAIT, wait).await.is_err() {
                        tracing::warn!(task_id = %id, "the task's published ports were not withdrawn in time; stopping it");
                    }
                }
                let (sig, grace) = stop_settings(&t);
                match self.stop_container(id, sig, grace).await {
                    Stopped::Exited(code) => {
                        let mut c = self.last.container.clone().unwrap_or_default();
                        c.exit_code = code;
                        self.report(TaskState::Shutdown, "shut down", "", Some(c));
                    }
                    Stopped::Gone => self.report(TaskState::Shutdown, "shut down", "", None),
                    Stopped::Cancelled => {}
                }
                return;
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                r = &mut wait => {
                    match r {
                        Ok(exit) => self.finish(exit.code, "exited"),
                        Err(e) => self.report(TaskState::Failed, "lost track of the container", &e.to_string(), None),
                    }
                    let _ = task;
                    return;
                }
                r = self.task.changed() => if r.is_err() { return },
                r = self.out_of_touch.changed() => if r.is_err() { return },
                _ = sleep_until_std(cut_off_stop), if cut_off_stop.is_some() => {
                    let after = Duration::from_millis(stop_after_ms.max(0) as u64);
                    tracing::warn!(task_id = %id, after_s = after.as_secs(), "out of touch with the managers for the task's --stop-on-disconnect: stopping it");
                    let (sig, grace) = stop_settings(task);
                    let err = format!(
                        "task: stopped after {} s out of touch with the managers (--stop-on-disconnect)",
                        after.as_secs()
                    );
                    self.stop_failed(id, sig, grace, "stopped: node out of touch with the managers", &err).await;
                    return;
                }
                _ = tokio::time::sleep_until(next_check), if probe.is_some() => {
                    let Some(p) = probe.as_ref() else { continue };
                    let result = tokio::select! {
                        r = crate::health::check(self.runtime.as_ref(), id, p) => r,
                        // Asked to stop (or told something else): looked at again above.
                        r = self.task.changed() => { if r.is_err() { return } continue }
                        _ = self.cancel.cancelled() => return,
                    };
                    let before = self.health.clone().unwrap_or_else(|| crate::health::starting(started_ms));
                    let after = crate::health::record(&before, p, result, started_ms);
                    let changed = after.status != before.status;
                    self.health = Some(after.clone());
                    next_check = due(&self.health);
                    if after.status() == shoal_api::v1::health::Status::Unhealthy {
                        let why = crate::health::last_output(&after);
                        let (_, grace) = stop_settings(task);
                        let err = format!("task: unhealthy container: {why}");
                        self.stop_failed(id, 15, grace, "unhealthy container", &err).await;
                        return;
                    }
                    if changed {
                        let word = crate::health::status_name(after.status());
                        self.report(TaskState::Running, &format!("started, health: {word}"), "", None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Readiness;
    use crate::state::TaskDb;
    use shoal_api::v1::{ContainerSpec as ApiContainer, Meta};
    use shoal_runtime::fake::FakeRuntime;

    fn task(desired: TaskState) -> Task {
        Task {
            meta: Some(Meta { id: "t1".into(), ..Default::default() }),
            desired_state: desired as i32,
            spec: Some(shoal_api::v1::TaskSpec {
                container: Some(ApiContainer { image: "img".into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A controller running task `t` over `runtime`, its reports in a task database.
    struct Run {
        _dir: tempfile::TempDir,
        db: TaskDb,
        task: watch::Sender<Task>,
        touch: watch::Sender<Option<std::time::Instant>>,
        cancel: CancellationToken,
        handle: tokio::task::JoinHandle<()>,
    }

    impl Run {
        fn start(t: Task, runtime: Arc<FakeRuntime>) -> Run {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = TaskDb::open(dir.path()).expect("db");
            let (task, rx) = watch::channel(t);
            let (touch, out_of_touch) = watch::channel(None);
            let reporter = Reporter::recording(db.clone());
            let tools = Tools { runtime, reporter, files: Err("no files".into()), out_of_touch };
            let cancel = CancellationToken::new();
            let handle =
                tokio::spawn(Controller::new(rx, tools, None, TaskStatus::default(), cancel.clone(), None).run());
            Run { _dir: dir, db, task, touch, cancel, handle }
        }

        fn status(&self) -> TaskStatus {
            self.db.status("t1").ok().flatten().unwrap_or_default()
        }

        async fn until_state(&self, s: TaskState) {
            until(&format!("{s:?}"), || self.status().state == s as i32).await;
        }

        async fn stop(self) {
            self.cancel.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.handle).await.expect("ends").expect("controller");
        }
    }

    /// A task created with desired state READY (a stop-first update's new task) is pulled and
    /// created, and starts only once its desired state is RUNNING.
    #[tokio::test]
    async fn a_ready_task_waits_for_its_start() {
        let runtime = Arc::new(FakeRuntime::default());
        let run = Run::start(task(TaskState::Ready), runtime.clone());
        run.until_state(TaskState::Ready).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(run.status().state, TaskState::Ready as i32, "not started while desired READY");
        assert!(!runtime.calls().iter().any(|c| c.starts_with("start")), "{:?}", runtime.calls());
        run.task.send_replace(task(TaskState::Running));
        run.until_state(TaskState::Running).await;
        assert!(runtime.calls().contains(&"start t1".to_string()), "{:?}", runtime.calls());
        run.stop().await;
    }

    /// A task that leaves the node while its image is pulled (the agent drops its channel and
    /// cleans up at once, before any container exists) leaves no container behind: the
    /// controller removes what it created after the clean-up ran.
    #[tokio::test]
    async fn a_task_that_left_during_its_pull_leaves_no_container() {
        let runtime = Arc::new(FakeRuntime::default());
        runtime.hold_pulls();
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TaskDb::open(dir.path()).expect("db");
        let (task_tx, rx) = watch::channel(task(TaskState::Running));
        let (_touch, out_of_touch) = watch::channel(None);
        let tools = Tools {
            runtime: runtime.clone(),
            reporter: Reporter::recording(db),
            files: Err("no files".into()),
            out_of_touch,
        };
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(Controller::new(rx, tools, None, TaskStatus::default(), cancel.clone(), None).run());
        until("the pull", || runtime.calls().iter().any(|c| c.starts_with("pull"))).await;
        // What the agent's `remove` does: drop the channel, cancel, stop and remove (nothing yet).
        drop(task_tx);
        cancel.cancel();
        let _ = runtime.stop("t1", 15, Duration::from_millis(10)).await;
        let _ = runtime.remove("t1").await;
        runtime.release_pulls();
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("ends").expect("controller");
        assert!(runtime.running().is_empty(), "{:?}", runtime.calls());
        assert!(!runtime.calls().iter().any(|c| c.starts_with("start")), "{:?}", runtime.calls());
        let created = runtime.calls().iter().any(|c| c.starts_with("create"));
        let removed_after = runtime.calls().iter().rposition(|c| c.starts_with("remove"))
            > runtime.calls().iter().rposition(|c| c.starts_with("create"));
        assert!(!created || removed_after, "a created container is removed again: {:?}", runtime.calls());
    }

    /// A task whose image declares a health check runs it: its first RUNNING report already
    /// says "starting", so it is not up before a check passed; `NONE` in the spec turns it off.
    #[tokio::test]
    async fn the_image_health_check_applies_unless_the_spec_turns_it_off() {
        for (own, checked) in [(None, true), (Some(vec!["NONE".to_string()]), false)] {
            let runtime = Arc::new(FakeRuntime::default());
            let hc = shoal_api::v1::HealthConfig {
                test: vec!["CMD".into(), "true".into()],
                interval_ms: 3_600_000,
                ..Default::default()
            };
            runtime.set_image_healthcheck("img", hc);
            let mut t = task(TaskState::Running);
            if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
                c.healthcheck = own.map(|test| shoal_api::v1::HealthConfig { test, ..Default::default() });
            }
            let run = Run::start(t, runtime);
            run.until_state(TaskState::Running).await;
            let health = run.status().health.map(|h| h.status());
            assert_eq!(health, checked.then_some(shoal_api::v1::health::Status::Starting));
            run.stop().await;
        }
    }

    /// Told to stop while waiting, it removes the container it made and never starts it.
    #[tokio::test]
    async fn a_ready_task_told_to_stop_never_starts() {
        let runtime = Arc::new(FakeRuntime::default());
        let run = Run::start(task(TaskState::Ready), runtime.clone());
        run.until_state(TaskState::Ready).await;
        run.task.send_replace(task(TaskState::Shutdown));
        run.until_state(TaskState::Shutdown).await;
        let calls = runtime.calls();
        assert!(calls.contains(&"remove t1".to_string()) && !calls.iter().any(|c| c.starts_with("start")), "{calls:?}");
        run.stop().await;
    }

    /// `--stop-on-disconnect`: out of touch with the managers for its setting, the task is
    /// stopped and fails saying why; without the setting it keeps running however long.
    #[tokio::test]
    async fn a_task_stops_once_out_of_touch_for_its_setting_and_only_then() {
        for stop_after_ms in [0, 1_000] {
            let runtime = Arc::new(FakeRuntime::default());
            let mut t = task(TaskState::Running);
            if let Some(s) = t.spec.as_mut() {
                s.stop_on_disconnect_ms = stop_after_ms;
            }
            let run = Run::start(t, runtime.clone());
            run.until_state(TaskState::Running).await;
            // Lost touch 800 ms ago: the deadline is 200 ms away.
            let lost = std::time::Instant::now() - Duration::from_millis(800);
            run.touch.send_replace(Some(lost));
            tokio::time::sleep(Duration::from_millis(600)).await;
            let st = run.status();
            if stop_after_ms == 0 {
                assert_eq!(st.state, TaskState::Running as i32, "{st:?}");
            } else {
                assert_eq!(st.state, TaskState::Failed as i32, "{st:?}");
                assert!(st.err.contains("out of touch with the managers (--stop-on-disconnect)"), "{st:?}");
                assert!(runtime.calls().iter().any(|c| c.starts_with("stop t1")), "{:?}", runtime.calls());
            }
            run.stop().await;
        }
    }

    /// With overlay networking, the container is made while the network loop makes its
    /// namespace (it names the namespace by path) and starts only once the loop reports the
    /// namespace ready; a namespace that cannot be made rejects the task and removes the
    /// container.
    #[tokio::test]
    async fn the_container_is_made_before_its_namespace_is_ready_and_started_after() {
        for fails in [false, true] {
            let runtime = Arc::new(FakeRuntime::default());
            let dir = tempfile::tempdir().expect("tempdir");
            let db = TaskDb::open(dir.path()).expect("db");
            let (_task_tx, rx) = watch::channel(task(TaskState::Running));
            let (_touch, out_of_touch) = watch::channel(None);
            let (ready_tx, ready) = watch::channel(std::collections::BTreeMap::new());
            let net = NetWait {
                ready,
                path: dir.path().join("ns-t1"),
                etc: None,
                drained: watch::channel(Default::default()).1,
                published: watch::channel(Default::default()).1,
            };
            let tools = Tools {
                runtime: runtime.clone(),
                reporter: Reporter::recording(db.clone()),
                files: Err("no files".into()),
                out_of_touch,
            };
            let cancel = CancellationToken::new();
            let handle =
                tokio::spawn(Controller::new(rx, tools, None, TaskStatus::default(), cancel.clone(), Some(net)).run());
            until("the create", || runtime.calls().contains(&"create t1".to_string())).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!runtime.calls().iter().any(|c| c.starts_with("start")), "{:?}", runtime.calls());
            let status = || db.status("t1").ok().flatten().unwrap_or_default();
            assert_eq!(status().state, TaskState::Preparing as i32, "not READY before its network");
            let r = if fails { Readiness::Failed("no address".into()) } else { Readiness::Ready };
            ready_tx.send_replace([("t1".to_string(), r)].into());
            let end = if fails { TaskState::Rejected } else { TaskState::Running };
            until(&format!("{end:?}"), || status().state == end as i32).await;
            let calls = runtime.calls();
            if fails {
                assert!(status().err.contains("no address"), "{:?}", status());
                assert!(calls.contains(&"remove t1".to_string()), "{calls:?}");
                assert!(!calls.iter().any(|c| c.starts_with("start")), "{calls:?}");
            } else {
                assert!(calls.contains(&"start t1".to_string()), "{calls:?}");
            }
            cancel.cancel();
            tokio::time::timeout(Duration::from_secs(5), handle).await.expect("ends").expect("controller");
        }
    }

    /// A stop the runtime fails is tried again; the task stays RUNNING (saying why) until its
    /// process is gone, and only then is it reported SHUTDOWN: the managers start a
    /// replacement on that report, so a task reported stopped never still runs.
    #[tokio::test]
    async fn a_failed_stop_is_tried_again_and_the_task_is_not_reported_stopped_meanwhile() {
        let runtime = Arc::new(FakeRuntime::default());
        runtime.fail_stops(2, "connection refused");
        let run = Run::start(task(TaskState::Running), runtime.clone());
        run.until_state(TaskState::Running).await;
        run.task.send_replace(task(TaskState::Shutdown));
        until("the first failed stop", || run.status().err.contains("stop failed")).await;
        let st = run.status();
        assert_eq!(st.state, TaskState::Running as i32, "{st:?}");
        assert!(st.err.contains("connection refused"), "{st:?}");
        assert_eq!(runtime.running(), vec!["t1".to_string()]);
        run.until_state(TaskState::Shutdown).await;
        let stops = runtime.calls().iter().filter(|c| c.starts_with("stop t1")).count();
        assert_eq!(stops, 3, "{:?}", runtime.calls());
        assert!(runtime.running().is_empty());
        let st = run.status();
        assert_eq!((st.err.as_str(), st.container.map(|c| c.exit_code)), ("", Some(128 + 15)));
        run.stop().await;
    }

    /// The runtime's answers to a stop: an exit or a container already gone is stopped; any
    /// other failure is tried again.
    #[test]
    fn what_a_stop_answer_means() {
        use shoal_runtime::{Exit, RuntimeError};
        assert_eq!(stop_outcome(Ok(Exit { code: 143 })), Ok(Stopped::Exited(143)));
        assert_eq!(stop_outcome(Err(RuntimeError::NotFound("t1".into()))), Ok(Stopped::Gone));
        let e = stop_outcome(Err(RuntimeError::Containerd("unavailable".into())));
        assert_eq!(e, Err("containerd: unavailable".to_string()));
    }

    /// Back in touch before the deadline: it keeps running.
    #[tokio::test]
    async fn back_in_touch_before_the_deadline_the_task_keeps_running() {
        let runtime = Arc::new(FakeRuntime::default());
        let mut t = task(TaskState::Running);
        if let Some(s) = t.spec.as_mut() {
            s.stop_on_disconnect_ms = 1_000;
        }
        let run = Run::start(t, runtime.clone());
        run.until_state(TaskState::Running).await;
        run.touch.send_replace(Some(std::time::Instant::now()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.touch.send_replace(None);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(run.status().state, TaskState::Running as i32, "{:?}", run.status());
        assert!(!runtime.calls().iter().any(|c| c.starts_with("stop")), "{:?}", runtime.calls());
        run.stop().await;
    }
}
