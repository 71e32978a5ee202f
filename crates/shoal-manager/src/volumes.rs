//! `Control.ListVolumes` / `RemoveVolume`: named local volumes live on the nodes, so the manager
//! asks each node's agent (over mTLS, bounded in time) and adds what only the store knows: the
//! node's hostname and the tasks that mount the volume. A volume a task that is not done mounts
//! on that node is never removed.

use std::time::Duration;

use shoal_api::v1::{agent_client::AgentClient, ListVolumesRequest, RemoveVolumeRequest, Volume};
use shoal_store::Store;

use crate::error::ApiError;
use crate::node::Node;

/// How long a node has to answer.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub node_id: String,
    pub hostname: String,
    pub addr: String,
}

/// The nodes to ask: the one `query` names, or every node that is up. Pure.
pub fn nodes_to_ask(store: &Store, query: &str) -> Result<Vec<Asked>, ApiError> {
    let of = |n: &shoal_api::v1::Node| Asked {
        node_id: n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        hostname: n.description.as_ref().map(|d| d.hostname.clone()).unwrap_or_default(),
        addr: n.status.as_ref().map(|s| s.addr.clone()).unwrap_or_default(),
    };
    if !query.is_empty() {
        let n = store.lookup_node(query)?;
        return Ok(vec![of(n)]);
    }
    let up = |n: &&shoal_api::v1::Node| {
        n.status.as_ref().is_some_and(|s| s.state != shoal_api::v1::NodeState::Down as i32 && !s.addr.is_empty())
    };
    Ok(store.nodes().filter(up).map(of).collect())
}

/// The names of the tasks on `node_id` that are not done and mount volume `name`. Pure.
pub fn users(store: &Store, node_id: &str, name: &str) -> Vec<String> {
    let mut out: Vec<String> = store
        .tasks_by_node(node_id)
        .filter(|t| t.status.as_ref().map_or(0, |s| s.state) < shoal_api::v1::TaskState::Complete as i32)
        .filter(|t| {
            t.spec.as_ref().and_then(|s| s.container.as_ref()).is_some_and(|c| {
                c.mounts.iter().any(|m| m.r#type() == shoal_api::v1::mount::Type::Volume && m.source == name)
            })
        })
        .map(|t| t.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default())
        .collect();
    out.sort();
    out
}

/// Asks `nodes` for their volumes: the volumes (with node and users filled in) and the
/// hostnames of the nodes that did not answer.
pub async fn list(
    node: &Node,
    store_users: impl Fn(&str, &str) -> Vec<String>,
    nodes: Vec<Asked>,
) -> (Vec<Volume>, Vec<String>) {
    let asks = nodes.into_iter().map(|a| async move {
        let got = async {
            let channel = node.dialer.node_channel(&a.addr, &a.node_id).map_err(|e| e.to_string())?;
            let r = tokio::time::timeout(
                NODE_TIMEOUT,
                AgentClient::new(channel).list_volumes(ListVolumesRequest::default()),
            )
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| s.message().to_string())?;
            Ok::<_, String>(r.into_inner().volumes)
        }
        .await;
        (a, got)
    });
    let mut volumes = Vec::new();
    let mut unreachable = Vec::new();
    for (a, got) in futures::future::join_all(asks).await {
        match got {
            Ok(list) => volumes.extend(list.into_iter().map(|mut v| {
                v.used_by = store_users(&a.node_id, &v.name);
                v.node_id = a.node_id.clone();
                v.node = a.hostname.clone();
                v
            })),
            Err(e) => {
                tracing::debug!(node = %a.hostname, error = %e, "a node did not list its volumes");
                unreachable.push(a.hostname);
            }
        }
    }
    volumes.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
    (volumes, unreachable)
}

/// Deletes volume `name` on the node `a`.
pub async fn remove(node: &Node, a: &Asked, name: &str) -> Result<(), tonic::Status> {
    let channel =
        node.dialer.node_channel(&a.addr, &a.node_id).map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let req = RemoveVolumeRequest { volume: name.to_string(), node: String::new() };
    tokio::time::timeout(NODE_TIMEOUT, AgentClient::new(channel).remove_volume(req))
        .await
        .map_err(|_| tonic::Status::unavailable(format!("node {} did not answer in time", a.hostname)))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{
        mount, object, Annotations, Command, ContainerSpec, Meta, Mount, Node as ApiNode, NodeDescription, NodeState,
        NodeStatus, Object, Task, TaskSpec, TaskState, TaskStatus,
    };

    fn put(store: &mut Store, kind: object::Kind) {
        let cmd = Command { now_ms: 1, ops: vec![crate::writer::upsert_op(Object { kind: Some(kind) })] };
        let (r, _) = store.apply(store.version() + 1, &cmd);
        assert!(r.error.is_empty(), "{r:?}");
    }

    fn node(id: &str, host: &str, state: NodeState) -> object::Kind {
        object::Kind::Node(ApiNode {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            description: Some(NodeDescription { hostname: host.into(), ..Default::default() }),
            status: Some(NodeStatus { state: state as i32, addr: format!("{host}:4242"), ..Default::default() }),
            ..Default::default()
        })
    }

    fn task(id: &str, name: &str, node: &str, state: TaskState, volume: &str) -> object::Kind {
        object::Kind::Task(Task {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            annotations: Some(Annotations { name: name.into(), ..Default::default() }),
            node_id: node.into(),
            status: Some(TaskStatus { state: state as i32, ..Default::default() }),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    mounts: vec![Mount {
                        r#type: mount::Type::Volume as i32,
                        source: volume.into(),
                        target: "/data".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn the_nodes_asked_and_the_users_of_a_volume() {
        let mut store = Store::new();
        put(&mut store, node("n1", "host1", NodeState::Ready));
        put(&mut store, node("n2", "host2", NodeState::Down));
        put(&mut store, task("t1", "db.1", "n1", TaskState::Running, "data"));
        put(&mut store, task("t2", "db.2", "n1", TaskState::Failed, "data"));
        put(&mut store, task("t3", "cache.1", "n1", TaskState::Preparing, "data"));
        put(&mut store, task("t4", "other.1", "n1", TaskState::Running, "other"));
        put(&mut store, task("t5", "db.3", "n2", TaskState::Running, "data"));
        let asked = nodes_to_ask(&store, "").expect("nodes");
        assert_eq!(asked.iter().map(|a| a.hostname.as_str()).collect::<Vec<_>>(), ["host1"], "not the down node");
        assert_eq!(nodes_to_ask(&store, "host2").expect("named").len(), 1, "a named node is asked even when down");
        assert!(nodes_to_ask(&store, "host9").is_err());
        assert_eq!(users(&store, "n1", "data"), ["cache.1", "db.1"], "not done, on that node, mounting it");
        assert!(users(&store, "n1", "nothing").is_empty());
    }
}
