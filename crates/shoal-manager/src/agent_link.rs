//! Wires the node's agent: how it finds the leader, and when it runs (whenever the node is part
//! of a cluster and a container runtime is configured).

use std::sync::Arc;

use tonic::transport::Channel;

use crate::dialer::Dialer;
use crate::managers::Managers;
use crate::node::Node;

/// The agent's view of the leader: the Raft leader on a manager, else the manager whose
/// heartbeat answer was not a redirect.
pub struct NodeLeader {
    managers: Managers,
    dialer: Dialer,
}

#[tonic::async_trait]
impl shoal_agent::Leader for NodeLeader {
    async fn channel(&self) -> Result<Channel, String> {
        let addr = self.managers.leader_addr().ok_or_else(|| "no leader known yet".to_string())?;
        self.dialer.channel(&addr).map_err(|e| e.to_string())
    }
}

/// Prepares the agent for `node` with `runtime` (once per cluster membership): what it holds,
/// and its work for the node's supervisor to run.
pub fn start_agent(
    node: &Node,
    runtime: Arc<dyn shoal_runtime::ContainerRuntime>,
) -> Result<(tokio::sync::watch::Receiver<shoal_agent::AgentStatus>, shoal_agent::AgentRun), String> {
    let cfg = shoal_agent::AgentConfig {
        node_id: node.identity.local().node_id,
        data_dir: node.identity.config().data_dir.join("agent"),
    };
    let leader = NodeLeader { managers: node.managers.clone(), dialer: node.dialer.clone() };
    shoal_agent::start(cfg, runtime, Arc::new(leader)).map_err(|e| e.to_string())
}
