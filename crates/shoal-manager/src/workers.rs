//! The one contract for background work: every loop a node runs is a named worker started by a
//! [`Workers`] supervisor, which owns it (a `JoinSet`), stops it (a `CancellationToken` the
//! worker watches), and can say what runs (`shoal info` lists the workers and their state).
//!
//! Supervisors form a tree that follows the cancellation tree: the node's supervisor holds the
//! node-long workers (session, certificate renewal, runtime probe, leadership watch, agent); a
//! leader term is a child supervisor whose workers (proposer, liveness, membership, orchestrator,
//! dispatcher hub, status batcher) all stop when the term ends. Nothing here decides what runs.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a worker is doing, as `shoal info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Running.
    Running,
    /// Ended on its own or because it was stopped.
    Done,
    /// Ended with an error (the message) or a panic.
    Failed(String),
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerState::Running => f.write_str("running"),
            WorkerState::Done => f.write_str("done"),
            WorkerState::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

struct Inner {
    name: String,
    token: CancellationToken,
    set: Mutex<JoinSet<()>>,
    states: Mutex<BTreeMap<u64, (String, WorkerState)>>,
    next: AtomicU64,
    children: Mutex<Vec<Workers>>,
}

/// A supervisor: starts named workers, stops them, lists them. Cheap to clone.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("name", &self.inner.name).finish()
    }
}

impl Workers {
    /// A supervisor whose workers stop when `token` is cancelled (or [`Workers::stop`] is called).
    pub fn new(name: &str, token: CancellationToken) -> Self {
        Workers {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                token,
                set: Mutex::new(JoinSet::new()),
                states: Mutex::new(BTreeMap::new()),
                next: AtomicU64::new(0),
                children: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A child supervisor (a leader term): its workers stop with it, or with this one.
    pub fn child(&self, name: &str) -> Workers {
        let child = Workers::new(&format!("{}/{name}", self.inner.name), self.inner.token.child_token());
        let mut children = self.inner.children.lock().unwrap_or_else(|p| p.into_inner());
        children.retain(|c| !c.inner.token.is_cancelled());
        children.push(child.clone());
        child
    }

    /// The token the workers watch.
    pub fn token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// Starts worker `name`: `work` gets the supervisor's token and must return soon after it
    /// is cancelled. A worker that returns an error or panics is recorded as failed.
    pub fn spawn<F, Fut, E>(&self, name: impl Into<String>, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let name = name.into();
        if self.inner.token.is_cancelled() {
            tracing::debug!(worker = %name, "not started: its supervisor has stopped");
            return;
        }
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let fut = work(self.inner.token.clone());
        self.states().insert(id, (name.clone(), WorkerState::Running));
        let inner = Arc::downgrade(&self.inner);
        let mut set = self.inner.set.lock().unwrap_or_else(|p| p.into_inner());
        // Finished workers are reaped here, so the set does not grow with short-lived ones.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let end = match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(())) => WorkerState::Done,
                Ok(Err(e)) => WorkerState::Failed(e.to_string()),
                Err(_) => WorkerState::Failed("panicked".to_owned()),
            };
            if let WorkerState::Failed(why) = &end {
                tracing::error!(worker = %name, error = %why, "a background worker failed");
            }
            if let Some(inner) = inner.upgrade() {
                let mut states = inner.states.lock().unwrap_or_else(|p| p.into_inner());
                match end {
                    // Workers that ended well are forgotten; failures stay visible.
                    WorkerState::Done => {
                        states.remove(&id);
                    }
                    other => {
                        states.insert(id, (name, other));
                    }
                }
            }
        });
    }

    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (String, WorkerState)>> {
        self.inner.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every worker of this supervisor and its live children: (name, state), by start order.
    pub fn list(&self) -> Vec<(String, WorkerState)> {
        let mut out: Vec<(String, WorkerState)> =
            self.states().values().map(|(n, s)| (format!("{}/{n}", self.inner.name), s.clone())).collect();
        let children: Vec<Workers> = self.inner.children.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for c in children.iter().filter(|c| !c.inner.token.is_cancelled()) {
            out.extend(c.list());
        }
        out
    }

    /// Cancels every worker and waits until all have returned.
    pub async fn stop(&self) {
        self.inner.token.cancel();
        let children: Vec<Workers> =
            std::mem::take(&mut *self.inner.children.lock().unwrap_or_else(|p| p.into_inner()));
        for c in children {
            Box::pin(c.stop()).await;
        }
        let mut set = std::mem::take(&mut *self.inner.set.lock().unwrap_or_else(|p| p.into_inner()));
        while set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn workers_are_listed_stopped_and_their_failures_kept() {
        let w = Workers::new("node", CancellationToken::new());
        w.spawn("loop", |stop| async move {
            stop.cancelled().await;
            Ok::<(), String>(())
        });
        w.spawn("broken", |_| async { Err::<(), _>("disk on fire".to_owned()) });
        let term = w.child("leader");
        term.spawn("orchestrator", |stop| async move {
            stop.cancelled().await;
            Ok::<(), String>(())
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !w.list().iter().any(|(_, s)| matches!(s, WorkerState::Failed(_))) {
            assert!(tokio::time::Instant::now() < deadline, "the failure was not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let names: Vec<String> = w.list().into_iter().map(|(n, s)| format!("{n} {s}")).collect();
        assert_eq!(
            names,
            ["node/loop running", "node/broken failed: disk on fire", "node/leader/orchestrator running"]
        );
        // Ending the term stops its workers and takes them off the list.
        term.stop().await;
        assert_eq!(w.list().len(), 2);
        // Stopping the node stops everything, and nothing new starts.
        tokio::time::timeout(Duration::from_secs(5), w.stop()).await.expect("every worker returned");
        w.spawn("late", |_| async { Ok::<(), String>(()) });
        assert!(w.list().iter().all(|(n, _)| n != "node/late"));
    }
}
