//! The node's session with the leader: a heartbeat every period (also from managers, so every
//! node's liveness is judged the same way), following redirects to the current leader, and
//! applying the role the cluster wants this node to have (promotion starts Raft, demotion stops
//! and wipes it, removal resets the node).

use std::time::Duration;

use shoal_api::v1::{HeartbeatRequest, HeartbeatResponse};

use crate::local::{Peer, Role};
use crate::node::{member_addr, Node};

/// Starts the session loop as the node's "session" worker (through [`Node::ensure_session`],
/// once per cluster membership; it ends when the node leaves).
pub(crate) fn spawn(node: Node) {
    let workers = node.inner.workers.clone();
    workers.spawn("session", move |shutdown| async move {
        run(node, shutdown).await;
        Ok::<(), String>(())
    });
}

async fn run(node: Node, shutdown: tokio_util::sync::CancellationToken) {
    {
        let mut period = Duration::from_millis(shoal_api::defaults::HEARTBEAT_PERIOD_MS);
        let mut next_manager = 0usize;
        let mut redirect: Option<String> = None;
        let mut last_error_logged = false;
        // What the leader last heard of this node's description: it goes along only when it
        // changed (or every REFRESH beats), so thousands of nodes send small heartbeats.
        let mut described: Option<(shoal_api::v1::NodeDescription, u32)> = None;
        loop {
            if node.local().role == Role::Uninitialized {
                node.inner.session_running.store(false, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            let target = redirect.take().or_else(|| pick_target(&node, &mut next_manager));
            let desc = node.description();
            let send_desc = match &described {
                Some((d, n)) => *d != desc || *n >= REFRESH,
                None => true,
            };
            let outcome = match target {
                Some(addr) => beat(&node, &addr, period, send_desc.then(|| desc.clone())).await.map(|r| (addr, r)),
                None => Err("no manager address known".to_string()),
            };
            match (&outcome, send_desc) {
                (Ok((_, r)), true) if r.leader_addr.is_empty() => described = Some((desc, 0)),
                (Ok(_), false) => {
                    if let Some((_, n)) = described.as_mut() {
                        *n += 1;
                    }
                }
                // A redirect or a failure: tell the next manager everything.
                _ => described = None,
            }
            match outcome {
                Ok((_, resp)) if !resp.leader_addr.is_empty() => {
                    redirect = Some(resp.leader_addr.clone());
                    continue;
                }
                Ok((addr, resp)) => {
                    last_error_logged = false;
                    node.set_leader_hint(&addr);
                    if resp.period_ms > 0 {
                        period = Duration::from_millis(resp.period_ms);
                    }
                    if let Err(e) = apply_response(&node, resp).await {
                        tracing::warn!(error = %e, "applying the leader's answer");
                    }
                }
                Err(e) => {
                    if !last_error_logged {
                        tracing::warn!(error = %e, "heartbeat failed; trying other managers");
                        last_error_logged = true;
                    }
                    next_manager = next_manager.wrapping_add(1);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }
}

fn pick_target(node: &Node, next: &mut usize) -> Option<String> {
    if let Some(rt) = node.raft() {
        let m = rt.metrics();
        if let Some(addr) = m.current_leader.and_then(|l| member_addr(&m, l)) {
            return Some(addr);
        }
    }
    let peers = node.local().managers;
    if peers.is_empty() {
        return None;
    }
    let p = &peers[*next % peers.len()];
    Some(p.addr.clone())
}

/// Heartbeats between full descriptions.
const REFRESH: u32 = 30;

async fn beat(
    node: &Node,
    addr: &str,
    period: Duration,
    description: Option<shoal_api::v1::NodeDescription>,
) -> Result<HeartbeatResponse, String> {
    let local = node.local();
    let mut client = node.membership_client(addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(HeartbeatRequest {
        node_id: local.node_id,
        addr: node.config().advertise_addr.clone(),
        raft_running: node.raft().is_some(),
        description,
        cluster_id: local.cluster_id,
    });
    req.set_timeout(period.max(Duration::from_millis(500)));
    match client.heartbeat(req).await {
        Ok(r) => Ok(r.into_inner()),
        // The managers refuse a removed node's certificate: that is how it learns of it.
        Err(s) if crate::error::is_node_removed(&s) => Ok(HeartbeatResponse { removed: true, ..Default::default() }),
        Err(s) => Err(format!("{addr}: {}", s.message())),
    }
}

async fn apply_response(node: &Node, resp: HeartbeatResponse) -> Result<(), crate::error::ApiError> {
    if resp.removed {
        tracing::error!("this node was removed from the cluster; it now stands alone (join again to come back)");
        return crate::roles::reset_to_standalone(node).await;
    }
    let managers: Vec<Peer> = resp
        .managers
        .iter()
        .map(|m| Peer { node_id: m.node_id.clone(), raft_id: m.raft_id, addr: m.addr.clone() })
        .filter(|p| !p.addr.is_empty())
        .collect();
    let settings = resp.settings;
    node.update_local(|l| {
        if !managers.is_empty() {
            l.managers = managers;
        }
        if settings.is_some() {
            l.settings = settings;
        }
    })?;
    crate::roles::follow_desired_role(node, resp.desired_role(), resp.raft_member).await
}
