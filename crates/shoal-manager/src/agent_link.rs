//! Wires the node's agent: how it finds the leader, and when it runs (whenever the node is part
//! of a cluster and a container runtime is configured).

use std::sync::Arc;

use tonic::transport::Channel;

use crate::node::{member_addr, Node};

/// The agent's view of the leader: the Raft leader on a manager, else the manager whose
/// heartbeat answer was not a redirect.
pub struct NodeLeader(pub Node);

#[tonic::async_trait]
impl shoal_agent::Leader for NodeLeader {
    async fn channel(&self) -> Result<Channel, String> {
        let node = &self.0;
        let addr = match node.raft() {
            Some(rt) => {
                let m = rt.metrics();
                m.current_leader.and_then(|l| member_addr(&m, l))
            }
            None => node.leader_hint(),
        };
        let addr = addr.ok_or_else(|| "no leader known yet".to_string())?;
        node.channel(&addr).map_err(|e| e.to_string())
    }
}

/// Prepares the agent for `node` with `runtime` (once per cluster membership): what it holds,
/// and its work for the node's supervisor to run.
pub fn start_agent(
    node: &Node,
    runtime: Arc<dyn shoal_runtime::ContainerRuntime>,
) -> Result<(tokio::sync::watch::Receiver<shoal_agent::AgentStatus>, shoal_agent::AgentRun), String> {
    let cfg =
        shoal_agent::AgentConfig { node_id: node.local().node_id, data_dir: node.config().data_dir.join("agent") };
    shoal_agent::start(cfg, runtime, Arc::new(NodeLeader(node.clone()))).map_err(|e| e.to_string())
}
