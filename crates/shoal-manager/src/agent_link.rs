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

    fn last_contact(&self) -> Option<std::time::Instant> {
        self.managers.last_answer()
    }

    fn contact_grace(&self) -> std::time::Duration {
        self.managers.contact_grace().unwrap_or(shoal_agent::disconnect::THRESHOLD)
    }
}

/// Prepares the agent for `node` with `runtime` (once per cluster membership): what it holds,
/// and its work for the node's supervisor to run.
pub fn start_agent(
    node: &Node,
    runtime: Arc<dyn shoal_runtime::ContainerRuntime>,
) -> Result<(tokio::sync::watch::Receiver<shoal_agent::AgentStatus>, shoal_agent::AgentRun), String> {
    let config = node.identity.config();
    let data_dir = config.data_dir.join("agent");
    let executor = shoal_net::netlink::Netlink::new(data_dir.join("netns")).map_err(|e| e.to_string())?;
    // VXLAN leaves from the advertised address; a loopback one (a one-machine cluster) has no
    // peers to reach, and its MTU says nothing about a real underlay.
    let local = shoal_agent::network::Resolver::default()
        .resolve(crate::netview::host_of(&config.advertise_addr))
        .filter(|a| !a.is_loopback() && !a.is_unspecified());
    let cfg = shoal_agent::AgentConfig {
        node_id: node.identity.local().node_id,
        data_dir,
        network: Some(shoal_agent::NetworkConfig {
            executor: Arc::new(executor),
            local,
            dns: true,
            dns_ttl: config.dns_ttl,
        }),
    };
    let leader = NodeLeader { managers: node.managers.clone(), dialer: node.dialer.clone() };
    shoal_agent::start(cfg, runtime, Arc::new(leader)).map_err(|e| e.to_string())
}
