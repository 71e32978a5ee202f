//! Batches task status changes and sends them to the leader's dispatcher.
//!
//! The latest status per task wins; a batch is flushed every 50 ms. A status is persisted
//! locally before it is sent, and re-sent until the leader accepts it, so neither an agent
//! restart nor a leader change loses a transition: a starting reporter first sends the last
//! persisted status of every task it knows (one persisted just before the agent stopped may
//! never have gone; the leader drops what it already has).

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
    let persisted = unsent(&db);
    let flusher = async move {
        let mut pending = persisted;
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

/// The last persisted status of every task the agent knows: what may not have reached the
/// leader before the agent stopped.
fn unsent(db: &TaskDb) -> BTreeMap<String, TaskStatus> {
    let tasks = db.tasks().unwrap_or_default();
    tasks
        .iter()
        .filter_map(|t| {
            let id = t.meta.as_ref().map(|m| m.id.clone())?;
            let status = db.status(&id).ok().flatten()?;
            Some((id, status))
        })
        .collect()
}

async fn send(node_id: &str, leader: &dyn Leader, updates: Vec<TaskStatusUpdate>) -> Result<(), String> {
    let channel = leader.channel().await?;
    let mut client = DispatcherClient::new(channel);
    let mut req = tonic::Request::new(UpdateTaskStatusRequest { node_id: node_id.to_string(), updates });
    req.set_timeout(Duration::from_secs(5));
    client.update_task_status(req).await.map(|_| ()).map_err(|s| s.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::dispatcher_server::{Dispatcher, DispatcherServer};
    use shoal_api::v1::{
        AckNetworkViewRequest, AckNetworkViewResponse, AssignmentsMessage, AssignmentsRequest, Meta, Task, TaskState,
        UpdateTaskStatusResponse,
    };
    use tonic::{Request, Response, Status};

    /// A dispatcher that records the status reports it gets.
    #[derive(Clone, Default)]
    struct Recording(Arc<std::sync::Mutex<Vec<TaskStatusUpdate>>>);

    #[tonic::async_trait]
    impl Dispatcher for Recording {
        type AssignmentsStream = tokio_stream::wrappers::ReceiverStream<Result<AssignmentsMessage, Status>>;
        async fn assignments(
            &self,
            _: Request<AssignmentsRequest>,
        ) -> Result<Response<Self::AssignmentsStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn update_task_status(
            &self,
            req: Request<UpdateTaskStatusRequest>,
        ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
            self.0.lock().expect("lock").extend(req.into_inner().updates);
            Ok(Response::new(UpdateTaskStatusResponse {}))
        }
        async fn ack_network_view(
            &self,
            _: Request<AckNetworkViewRequest>,
        ) -> Result<Response<AckNetworkViewResponse>, Status> {
            Ok(Response::new(AckNetworkViewResponse {}))
        }
    }

    struct At(String);

    #[tonic::async_trait]
    impl Leader for At {
        async fn channel(&self) -> Result<tonic::transport::Channel, String> {
            tonic::transport::Endpoint::from_shared(self.0.clone()).map_err(|e| e.to_string()).map(|e| e.connect_lazy())
        }
    }

    /// A status persisted just before the agent stopped (a task it shut down while the leader
    /// was away) reaches the leader from the next agent, which has nothing new to say of it.
    #[tokio::test]
    async fn a_status_persisted_before_a_restart_is_sent_by_the_next_reporter() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Recording::default();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DispatcherServer::new(seen.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let db = TaskDb::open(dir.path()).expect("db");
        let task = Task { meta: Some(Meta { id: "t1".into(), ..Default::default() }), ..Default::default() };
        db.put_task(&task).expect("task");
        let shut = TaskStatus { state: TaskState::Shutdown as i32, message: "shut down".into(), ..Default::default() };
        db.put_status("t1", &shut).expect("status");
        let cancel = CancellationToken::new();
        let (_reporter, flusher) = new("n1".into(), db, Arc::new(At(format!("http://{addr}"))), cancel.clone());
        let run = tokio::spawn(flusher);
        let mut got = Vec::new();
        for _ in 0..200 {
            got = seen.0.lock().expect("lock").clone();
            if !got.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].task_id.as_str(), got[0].status.as_ref().map(|s| s.state)), ("t1", Some(shut.state)));
        cancel.cancel();
        let _ = run.await;
        server.abort();
    }
}
