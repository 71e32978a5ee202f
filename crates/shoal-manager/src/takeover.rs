//! Standing for election as soon as the leader's process is known to be gone, instead of
//! waiting out openraft's timers.
//!
//! A follower of openraft 0.9 campaigns only after the leader's lease (the longest election
//! timeout) *and* one more election timeout have passed since the leader's last AppendEntries,
//! and after an election in which it saw a longer log, it waits twice the longest timeout more;
//! with the defaults a leader's death costs 1.25-1.5 s before anyone stands, and up to 3 s after
//! an earlier failover. Voters refuse any candidate while their own lease of the leader runs
//! (750 ms by default), so nothing can be faster than that lease; this worker gets close to it:
//!
//! 1. After three silent heartbeat intervals it connects to the leader's address. A refused
//!    connection (the process is gone) or none within two intervals (the host is gone or cut
//!    off) is evidence; a busy leader still completes the TCP handshake (the kernel does it),
//!    so a slow leader is never deposed by this path.
//! 2. It asks the other voters for their last log id ([`Standing`]). Only the voter every other
//!    would grant (the longest log; the lowest raft id among equals) stands, so two followers
//!    never split the vote, and only when it and the voters that answered are a majority.
//! 3. It stands when every lease has run out: the latest last contact with the leader among
//!    itself and the voters that answered (each says how long ago it heard the leader), plus
//!    the lease, plus a margin.
//!
//! Raft's safety does not depend on any of this: a candidate wins only with a quorum's votes.
//! When this path does not apply (a leader that answers, a vote refused), openraft's own timer
//! stays in charge.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use shoal_api::v1::PingRequest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::managers::{member_addr, RaftRuntime};
use crate::node::Node;

/// How long after the last lease ran out the chosen voter stands (timers and the vote's trip).
pub const MARGIN: Duration = Duration::from_millis(50);

/// A voter's claim to be elected: its raft id and last log id as (term, index), and when it
/// last heard the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The voter's raft id.
    pub raft_id: u64,
    /// (term, index) of its last log entry; (0, 0) for an empty log.
    pub last_log: (u64, u64),
    /// When the leader last reached it (on this node's clock).
    pub contact: Instant,
}

/// What the follower does about a leader known to be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing: another voter stands, or no majority answered; openraft's timer stays in charge.
    Wait,
    /// Stand for election at this instant.
    StandAt(Instant),
}

/// Whether a leader silent for `silence` is worth looking at: three heartbeat intervals.
pub fn silent(silence: Duration, heartbeat: Duration) -> bool {
    silence >= heartbeat * 3
}

/// Whether every voter in `others` would grant `me` its vote on logs: `me`'s last log is the
/// greatest, and among equal logs its raft id is the lowest (so exactly one voter qualifies).
pub fn first_in_line(me: Standing, others: &[Standing]) -> bool {
    others.iter().all(|o| me.last_log > o.last_log || (me.last_log == o.last_log && me.raft_id < o.raft_id))
}

/// The plan of voter `me` once the leader is gone: `others` are the voters that answered
/// (neither `me` nor the leader), `voters` how many the membership has, `lease` how long a
/// voter honours its leader after the leader's last message.
pub fn plan(me: Standing, others: &[Standing], voters: usize, lease: Duration) -> Plan {
    let answered = 1 + others.len();
    if answered * 2 <= voters || !first_in_line(me, others) {
        return Plan::Wait;
    }
    let latest = others.iter().map(|o| o.contact).fold(me.contact, Instant::max);
    Plan::StandAt(latest + lease + MARGIN)
}

/// Runs while `rt` is this node's Raft instance: see the module documentation.
pub(crate) async fn run(node: Node, rt: Arc<RaftRuntime>, stop: CancellationToken) {
    let contact = node.managers.leader_contact();
    // The silence already looked at (its last contact), so each is looked at once.
    let mut looked_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rt.heartbeat) => {}
        }
        if !node.managers.raft().is_some_and(|r| Arc::ptr_eq(&r, &rt)) {
            return;
        }
        let m = rt.metrics();
        let leader = match m.current_leader {
            Some(l) if m.state == ServerState::Follower && l != m.id => l,
            _ => {
                looked_at = None;
                continue;
            }
        };
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        if !voters.contains(&m.id) {
            continue;
        }
        let last = Instant::from_std(rt.honours_leader_since(&contact));
        if !silent(last.elapsed(), rt.heartbeat) || looked_at == Some(last) {
            continue;
        }
        looked_at = Some(last);
        let Some(addr) = member_addr(&m, leader) else { continue };
        if !gone(&addr, rt.heartbeat * 2).await {
            tracing::debug!(
                leader,
                silent_ms = last.elapsed().as_millis() as u64,
                "the leader is silent but its address answers"
            );
            continue;
        }
        let others: Vec<(u64, String)> = voters
            .iter()
            .filter(|v| **v != m.id && **v != leader)
            .filter_map(|v| member_addr(&m, *v).map(|a| (*v, a)))
            .collect();
        // Until half the lease has passed the answers still come in time.
        let standings = standings(&node, &others, rt.leader_lease / 2).await;
        let me = Standing { raft_id: m.id, last_log: rt.last_log(), contact: last };
        let Plan::StandAt(at) = plan(me, &standings, voters.len(), rt.leader_lease) else {
            tracing::debug!(leader, ?standings, "the leader is gone; another voter stands");
            continue;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
        }
        let m = rt.metrics();
        let heard_since = contact.last().map(Instant::from_std).is_some_and(|t| t > last);
        if heard_since || m.state != ServerState::Follower || m.current_leader != Some(leader) {
            continue;
        }
        tracing::info!(leader, %addr, "the leader's process is gone: standing for election now");
        if let Err(e) = rt.raft.trigger().elect().await {
            tracing::warn!(error = %e, "could not stand for election");
        }
    }
}

/// Whether nothing listens on `addr` any more: the connection is refused, fails otherwise, or
/// is not made within `within`.
async fn gone(addr: &str, within: Duration) -> bool {
    !matches!(tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// The standings of the voters in `others` that answer within `within`.
async fn standings(node: &Node, others: &[(u64, String)], within: Duration) -> Vec<Standing> {
    let asks = others.iter().map(|(id, addr)| async move {
        let mut c = node.dialer.membership_client(addr).ok()?;
        let mut req = tonic::Request::new(PingRequest {});
        req.set_timeout(within);
        let r = tokio::time::timeout(within, c.ping(req)).await.ok()?.ok()?.into_inner();
        // Counted from the answer, not the question: never earlier than the voter's contact.
        let contact = Instant::now().checked_sub(Duration::from_millis(r.leader_silence_ms))?;
        (r.raft_id == *id).then_some(Standing { raft_id: *id, last_log: (r.last_log_term, r.last_log_index), contact })
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(raft_id: u64, term: u64, index: u64) -> Standing {
        Standing { raft_id, last_log: (term, index), contact: T0.with(|t| *t) }
    }

    thread_local! {
        static T0: Instant = Instant::now();
    }

    #[test]
    fn silence_of_three_heartbeats_is_worth_a_look() {
        let hb = Duration::from_millis(100);
        assert!(!silent(Duration::from_millis(299), hb));
        assert!(silent(Duration::from_millis(300), hb));
    }

    #[test]
    fn exactly_one_voter_is_first_in_line() {
        // Logs decide, term before index; equal logs go to the lowest id.
        let voters = [s(7, 3, 10), s(2, 3, 9), s(5, 2, 40), s(9, 3, 10)];
        let first: Vec<u64> = voters
            .iter()
            .filter(|me| {
                let others: Vec<Standing> = voters.iter().filter(|o| o.raft_id != me.raft_id).copied().collect();
                first_in_line(**me, &others)
            })
            .map(|v| v.raft_id)
            .collect();
        assert_eq!(first, vec![7]);
        // Alone, a voter is first.
        assert!(first_in_line(s(1, 0, 0), &[]));
    }

    #[test]
    fn the_first_in_line_stands_when_every_lease_ran_out() {
        let t = T0.with(|t| *t);
        let lease = Duration::from_millis(750);
        // 3 voters, the leader gone, the other survivor answered with a shorter log.
        assert_eq!(plan(s(1, 4, 20), &[s(2, 4, 19)], 3, lease), Plan::StandAt(t + lease + MARGIN));
        // The other heard the leader 80 ms later (a catch-up append): its lease is waited for.
        let late = Standing { contact: t + Duration::from_millis(80), ..s(2, 4, 19) };
        assert_eq!(plan(s(1, 4, 20), &[late], 3, lease), Plan::StandAt(t + Duration::from_millis(80) + lease + MARGIN));
        // The other has the longer log: it stands, not this one.
        assert_eq!(plan(s(1, 4, 19), &[s(2, 4, 20)], 3, lease), Plan::Wait);
        // Nobody answered: 1 of 3 is no majority; openraft's timer decides.
        assert_eq!(plan(s(1, 4, 20), &[], 3, lease), Plan::Wait);
        // 5 voters: itself and 2 others are a majority, itself and 1 are not.
        assert_eq!(plan(s(1, 4, 20), &[s(2, 4, 20), s(3, 4, 1)], 5, lease), Plan::StandAt(t + lease + MARGIN));
        assert_eq!(plan(s(1, 4, 20), &[s(2, 4, 20)], 5, lease), Plan::Wait);
        // 2 voters (one gone): alone is no majority.
        assert_eq!(plan(s(1, 4, 20), &[], 2, lease), Plan::Wait);
    }
}
