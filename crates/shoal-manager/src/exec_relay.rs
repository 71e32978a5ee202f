//! `Control.ExecTask`: finds the task's running container and relays the exec stream to its
//! node's agent over mTLS (only managers may call `Agent`; only operators `Control`).

use shoal_api::v1::{agent_client::AgentClient, exec_input, ExecInput, ExecOutput, ExecStart, TaskState};
use shoal_store::Store;
use tonic::Status;

use crate::node::Node;

/// Where an exec goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The task.
    pub task_id: String,
    /// Its node.
    pub node_id: String,
    /// The node's address.
    pub addr: String,
}

/// The running task `query` names: a task name (`web.3`: the one of that name that runs), an
/// id or an id prefix. Pure.
pub fn target(store: &Store, query: &str) -> Result<Target, Status> {
    let running = |t: &shoal_api::v1::Task| {
        t.desired_state == TaskState::Running as i32
            && t.status.as_ref().is_some_and(|s| s.state == TaskState::Running as i32)
    };
    let by_name = store.tasks().find(|t| running(t) && t.annotations.as_ref().is_some_and(|a| a.name == query));
    let task = match by_name {
        Some(t) => t,
        None => store.lookup_task(query).map_err(|e| Status::not_found(e.to_string()))?,
    };
    if !running(task) {
        let state = task.status.as_ref().map_or(0, |s| s.state);
        let state = TaskState::try_from(state).map_or("unknown".to_string(), |s| format!("{s:?}").to_lowercase());
        return Err(Status::failed_precondition(format!("task {query} is not running (it is {state})")));
    }
    let node = store
        .node(&task.node_id)
        .ok_or_else(|| Status::failed_precondition(format!("the node of task {query} is gone")))?;
    Ok(Target {
        task_id: task.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        node_id: task.node_id.clone(),
        addr: node.status.as_ref().map(|s| s.addr.clone()).unwrap_or_default(),
    })
}

/// The output stream of an exec relayed to `t`'s node; `input` (after its start message) is
/// forwarded to the node until it ends.
pub async fn relay(
    node: &Node,
    t: Target,
    mut start: ExecStart,
    mut input: tonic::Streaming<ExecInput>,
) -> Result<tonic::Streaming<ExecOutput>, Status> {
    let channel = node
        .dialer
        .node_channel(&t.addr, &t.node_id)
        .map_err(|e| Status::unavailable(format!("cannot reach the task's node: {e}")))?;
    start.task = t.task_id.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(16);
    let first = ExecInput { input: Some(exec_input::Input::Start(start)) };
    tx.send(first).await.map_err(|_| Status::internal("exec relay"))?;
    // The client's input, forwarded while both ends are there; it ends with either.
    node.workers.spawn(format!("exec {}", t.task_id), move |stop| async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok::<(), String>(()),
                _ = tx.closed() => return Ok(()),
                m = input.message() => match m {
                    Ok(Some(m)) => if tx.send(m).await.is_err() { return Ok(()) },
                    Ok(None) | Err(_) => return Ok(()),
                },
            }
        }
    });
    let mut client = AgentClient::new(channel);
    Ok(client.exec(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{object, Annotations, Command, Meta, Node, NodeStatus, Object, Task, TaskStatus};

    fn put(store: &mut Store, kind: object::Kind) {
        let cmd = Command { now_ms: 1, ops: vec![crate::writer::upsert_op(Object { kind: Some(kind) })] };
        let (r, _) = store.apply(store.version() + 1, &cmd);
        assert!(r.error.is_empty(), "{r:?}");
    }

    fn task(id: &str, name: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            annotations: Some(Annotations { name: name.into(), ..Default::default() }),
            node_id: "n1".into(),
            desired_state: desired as i32,
            status: Some(TaskStatus { state: state as i32, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_name_means_its_running_task_and_a_stopped_task_says_so() {
        let mut store = Store::new();
        put(
            &mut store,
            object::Kind::Node(Node {
                meta: Some(Meta { id: "n1".into(), ..Default::default() }),
                status: Some(NodeStatus { addr: "10.0.0.1:4242".into(), ..Default::default() }),
                ..Default::default()
            }),
        );
        put(&mut store, object::Kind::Task(task("old", "web.3", TaskState::Failed, TaskState::Shutdown)));
        put(&mut store, object::Kind::Task(task("new", "web.3", TaskState::Running, TaskState::Running)));
        let t = target(&store, "web.3").expect("the running one");
        assert_eq!((t.task_id.as_str(), t.addr.as_str()), ("new", "10.0.0.1:4242"));
        let e = target(&store, "old").expect_err("not running");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("is not running (it is failed)"), "{}", e.message());
        assert_eq!(target(&store, "web.9").expect_err("none").code(), tonic::Code::NotFound);
    }
}
