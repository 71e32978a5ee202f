//! The agent's janitor: a container of this node that no recorded task accounts for is
//! stopped and removed, at start and then every [`SWEEP_EVERY`].
//!
//! The task database is the agent's claim on containers: a task is recorded before its
//! controller makes anything and forgotten only once the clean-up after its departure ran. A
//! container outside it is one that clean-up could not remove (containerd refused, its shim
//! died), or one a restarted agent inherited without a record. Either way nobody else would
//! ever remove it, and it would keep running past its service.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::ContainerRuntime;
use tokio_util::sync::CancellationToken;

use crate::state::TaskDb;

/// How often the running agent looks for containers no task accounts for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The ids among `listed` that no id of `known` accounts for, in the order listed.
pub fn orphans<'a>(listed: impl IntoIterator<Item = &'a str>, known: &HashSet<String>) -> Vec<String> {
    listed.into_iter().filter(|id| !known.contains(*id)).map(str::to_string).collect()
}

/// Kills and removes the container `id`, saying so.
pub async fn discard(runtime: &dyn ContainerRuntime, id: &str) {
    tracing::warn!(container = %id, "removing a container no assignment accounts for");
    let _ = runtime.stop(id, 9, Duration::from_secs(1)).await;
    if let Err(e) = runtime.remove(id).await {
        tracing::warn!(container = %id, error = %e, "removing a container no assignment accounts for failed; trying again later");
    }
}

/// One look: the runtime's containers first, the recorded tasks after. In that order, a task
/// recorded after the listing cannot make its new container look unaccounted for (it was not
/// listed), and a container listed while its task was still recorded is left for the next look.
/// Returns the ids it removed.
pub async fn sweep(runtime: &dyn ContainerRuntime, db: &TaskDb) -> Result<Vec<String>, String> {
    let listed = runtime.list().await.map_err(|e| e.to_string())?;
    let known = db.task_ids().map_err(|e| e.to_string())?;
    let gone = orphans(listed.iter().map(|c| c.id.as_str()), &known);
    for id in &gone {
        discard(runtime, id).await;
    }
    Ok(gone)
}

/// Sweeps every [`SWEEP_EVERY`] until `cancel`.
pub async fn run(runtime: Arc<dyn ContainerRuntime>, db: TaskDb, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        if let Err(e) = sweep(runtime.as_ref(), &db).await {
            tracing::debug!(error = %e, "cannot look for containers no assignment accounts for");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{Meta, Task};
    use shoal_runtime::fake::FakeRuntime;
    use shoal_runtime::ContainerSpec;

    #[test]
    fn orphans_are_the_listed_ids_nobody_records() {
        let known: HashSet<String> = ["a".to_string(), "c".to_string()].into();
        assert_eq!(orphans(["a", "b", "c", "d"], &known), vec!["b".to_string(), "d".to_string()]);
        assert!(orphans(["a", "c"], &known).is_empty());
        assert_eq!(orphans(["x"], &HashSet::new()), vec!["x".to_string()]);
    }

    #[tokio::test]
    async fn a_sweep_removes_only_what_no_task_accounts_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TaskDb::open(dir.path()).expect("db");
        let runtime = FakeRuntime::default();
        let task = |id: &str| Task { meta: Some(Meta { id: id.into(), ..Default::default() }), ..Default::default() };
        db.put_task(&task("kept")).expect("put");
        for id in ["kept", "left"] {
            runtime.create(&ContainerSpec { id: id.into(), ..Default::default() }).await.expect("create");
            runtime.start(id).await.expect("start");
        }
        assert_eq!(sweep(&runtime, &db).await.expect("sweep"), vec!["left".to_string()]);
        assert_eq!(runtime.running(), vec!["kept".to_string()]);
        let left: Vec<String> = runtime.list().await.expect("list").into_iter().map(|c| c.id).collect();
        assert_eq!(left, vec!["kept".to_string()]);
        // Once its task is forgotten, its container goes too.
        db.remove("kept").expect("remove");
        assert_eq!(sweep(&runtime, &db).await.expect("sweep"), vec!["kept".to_string()]);
        assert!(runtime.list().await.expect("list").is_empty());
    }
}
