//! Batches task status changes and sends them to the leader's dispatcher.
//!
//! The latest status per task wins; a batch is flushed every 50 ms. A status is persisted
//! locally before it is sent, and re-sent until the leader accepts it, so neither an agent
//! restart nor a leader change loses a transition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::v1::{dispatcher_client::DispatcherClient, TaskStatus, TaskStatusUpdate, UpdateTaskStatusRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state::TaskDb;
use crate::Leader;

/// Sends status changes to the reporter.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<(String, TaskStatus)>,
    db: TaskDb,
}

impl Reporter {
    /// A reporter that only records (for unit tests).
    #[cfg(test)]
    pub(crate) fn recording(db: TaskDb) -> Reporter {
        let (tx, _) = mpsc::unbounded_channel();
        Reporter { tx, db }
    }

    /// Records and queues a status change.
    pub fn report(&self, task_id: &str, status: TaskStatus) {
        if let Err(e) = self.db.put_status(task_id, &status) {
            tracing::error!(task_id, error = %e, "cannot persist task status");
        }
        let _ = self.tx.send((task_id.to_string(), status));
    }
}

/// The reporter handle, and the flusher for the agent to run (it ends with `cancel`).
pub fn new(
    node_id: String,
    db: TaskDb,
    leader: Arc<dyn Leader>,
    cancel: CancellationToken,
) -> (Reporter, impl std::future::Future<Output = ()> + Send + 'static) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, TaskStatus)>();
    let flusher = async move {
        let mut pending: BTreeMap<String, TaskStatus> = BTreeMap::new();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m {
                    Some((id, s)) => { pending.insert(id, s); }
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)), if !pending.is_empty() => {
                    let updates: Vec<TaskStatusUpdate> = pending
                        .iter()
                        .map(|(id, s)| TaskStatusUpdate { task_id: id.clone(), status: Some(s.clone()) })
                        .collect();
                    match send(&node_id, &*leader, updates).await {
                        Ok(()) => pending.clear(),
                        Err(e) => {
                            tracing::debug!(error = %e, "status report failed; will retry");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            while let Ok((id, s)) = rx.try_recv() {
                pending.insert(id, s);
            }
        }
    };
    (Reporter { tx, db }, flusher)
}

async fn send(node_id: &str, leader: &dyn Leader, updates: Vec<TaskStatusUpdate>) -> Result<(), String> {
    let channel = leader.channel().await?;
    let mut client = DispatcherClient::new(channel);
    let mut req = tonic::Request::new(UpdateTaskStatusRequest { node_id: node_id.to_string(), updates });
    req.set_timeout(Duration::from_secs(5));
    client.update_task_status(req).await.map(|_| ()).map_err(|s| s.message().to_string())
}
