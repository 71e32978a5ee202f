//! The node's session with the leader: a heartbeat every period (also from managers, so every
//! node's liveness is judged the same way), following redirects to the current leader, and
//! handing each answer to the role transitions (promotion starts Raft, demotion stops and wipes
//! it, removal resets the node). After a failed heartbeat the next manager is tried within a
//! few hundred milliseconds, not a period later ([`next_beat`]): a node finds the new leader
//! soon after the old one is lost, however long the period a large cluster set.

use std::time::Duration;

use shoal_api::v1::{HeartbeatRequest, HeartbeatResponse};

use crate::error::ApiError;
use crate::local::Role;
use crate::managers::member_addr;
use crate::node::Node;

/// What the session does with each answer of the leader (the role transitions, kept out of
/// this module so the heartbeat protocol does not depend on them).
pub(crate) type OnAnswer =
    fn(Node, HeartbeatResponse) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>;

/// Starts the session loop as the node's "session" worker (through `roles::ensure_session`,
/// once per cluster membership; it ends when the node leaves).
pub(crate) fn spawn(node: Node, on_answer: OnAnswer) {
    let workers = node.workers.clone();
    workers.spawn("session", move |shutdown| async move {
        run(node, on_answer, shutdown).await;
        Ok::<(), String>(())
    });
}

async fn run(node: Node, on_answer: OnAnswer, shutdown: tokio_util::sync::CancellationToken) {
    {
        let mut period = Duration::from_millis(shoal_api::defaults::HEARTBEAT_PERIOD_MS);
        let mut next_manager = 0usize;
        let mut redirect: Option<String> = None;
        let mut last_error_logged = false;
        // Heartbeats failed in a row.
        let mut failures = 0u32;
        // Spreads the retries of thousands of nodes that lost the same leader.
        let jitter = Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), 0..RETRY_JITTER_MS));
        // What the leader last heard of this node's description: it goes along only when it
        // changed (or every REFRESH beats), so thousands of nodes send small heartbeats.
        let mut described: Option<(shoal_api::v1::NodeDescription, u32)> = None;
        loop {
            if node.identity.local().role == Role::Uninitialized {
                node.session_running.store(false, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            let target = redirect.take().or_else(|| pick_target(&node, &mut next_manager));
            let desc = node.identity.description();
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
                    failures = 0;
                    node.managers.set_leader_hint(&addr);
                    if resp.period_ms > 0 {
                        period = Duration::from_millis(resp.period_ms);
                    }
                    if let Some(grace) = contact_grace(&resp) {
                        node.managers.set_contact_grace(grace);
                    }
                    if let Err(e) = on_answer(node.clone(), resp).await {
                        tracing::warn!(error = %e, "applying the leader's answer");
                    }
                }
                Err(e) => {
                    if !last_error_logged {
                        tracing::warn!(error = %e, "heartbeat failed; trying other managers");
                        last_error_logged = true;
                    }
                    next_manager = next_manager.wrapping_add(1);
                    failures = failures.saturating_add(1);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(next_beat(period, failures, jitter)) => {}
            }
        }
    }
}

fn pick_target(node: &Node, next: &mut usize) -> Option<String> {
    if let Some(rt) = node.managers.raft() {
        let m = rt.metrics();
        if let Some(addr) = m.current_leader.and_then(|l| member_addr(&m, l)) {
            return Some(addr);
        }
    }
    let peers = node.identity.local().managers;
    if peers.is_empty() {
        return None;
    }
    let p = &peers[*next % peers.len()];
    Some(p.addr.clone())
}

/// Heartbeats between full descriptions.
const REFRESH: u32 = 30;

/// The first pause after a failed heartbeat; it doubles with each failure in a row.
const FIRST_RETRY_MS: u64 = 250;
/// The most a node's retries are shifted by, so that nodes that lost the same leader do not
/// all knock at once.
const RETRY_JITTER_MS: u64 = 250;

/// How long to wait before the next heartbeat: the period after an answer; after `failures`
/// failed heartbeats in a row, 250 ms doubling with each (plus the node's `jitter`), never
/// longer than the period. Pure.
pub fn next_beat(period: Duration, failures: u32, jitter: Duration) -> Duration {
    if failures == 0 {
        return period;
    }
    let backoff = Duration::from_millis(FIRST_RETRY_MS.saturating_mul(1u64 << failures.saturating_sub(1).min(16)));
    (backoff + jitter).min(period)
}

async fn beat(
    node: &Node,
    addr: &str,
    period: Duration,
    description: Option<shoal_api::v1::NodeDescription>,
) -> Result<HeartbeatResponse, String> {
    let local = node.identity.local();
    let mut client = node.dialer.membership_client(addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(HeartbeatRequest {
        node_id: local.node_id,
        addr: node.identity.config().advertise_addr.clone(),
        raft_running: node.managers.raft().is_some(),
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

/// How long the leader lets this node stay silent, as its answer says: the period it set times
/// the missed beats it tolerates (None: the answer sets no period).
fn contact_grace(resp: &HeartbeatResponse) -> Option<Duration> {
    let beats = resp
        .settings
        .as_ref()
        .map(|s| s.heartbeat_grace_periods)
        .filter(|g| *g > 0)
        .unwrap_or(shoal_api::defaults::HEARTBEAT_GRACE_PERIODS);
    (resp.period_ms > 0).then(|| Duration::from_millis(resp.period_ms) * beats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_heartbeat_is_retried_soon_and_then_less_often_up_to_the_period() {
        let period = Duration::from_secs(5);
        let j = Duration::from_millis(100);
        let ms = |f| next_beat(period, f, j).as_millis();
        assert_eq!(ms(0), 5_000, "after an answer: the period");
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5)], [350, 600, 1_100, 2_100, 4_100]);
        assert_eq!([ms(6), ms(40)], [5_000, 5_000], "never longer than the period");
        assert_eq!(next_beat(Duration::from_millis(300), 1, j).as_millis(), 300, "nor in a small one");
    }

    #[test]
    fn the_grace_follows_the_period_and_the_beats_the_leader_sets() {
        let answer = |period_ms, beats| HeartbeatResponse {
            period_ms,
            settings: Some(shoal_api::v1::ClusterSettings { heartbeat_grace_periods: beats, ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(contact_grace(&answer(5_000, 3)), Some(Duration::from_secs(15)), "a large cluster's period");
        assert_eq!(contact_grace(&answer(1_000, 5)), Some(Duration::from_secs(5)));
        assert_eq!(contact_grace(&answer(1_000, 0)), Some(Duration::from_secs(3)), "unset beats: the default");
        assert_eq!(contact_grace(&answer(0, 3)), None, "a redirect sets no period");
    }
}
