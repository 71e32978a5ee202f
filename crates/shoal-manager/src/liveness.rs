//! Node liveness: a node is READY while its heartbeats arrive and DOWN once none came for the
//! grace period (heartbeat period x missed beats). A new leader has heard nobody yet, and with
//! thousands of nodes reconnecting it hears them over seconds: it marks nobody down until a
//! grace period has passed since its term began and since the last node it heard for the first
//! time (`quiet_since`).
//!
//! The heartbeat period grows with the cluster ([`period_ms`]) so the leader answers at most
//! [`MAX_HEARTBEATS_PER_SEC`]: the configured period holds up to a thousand nodes, and beyond
//! that failure detection slows in proportion rather than the leader drowning in heartbeats.
//! Each node is judged by the grace it was given with its last answer, so a period that shrinks
//! never marks down a node still on the longer one.
//!
//! A leader too busy to hear heartbeats on time cannot tell a silent node from its own backlog:
//! when its liveness loop runs later than a heartbeat period, it judges nobody for a grace
//! period ([`Heard::hold`]), as a new leader does.
//!
//! Pure: [`decide`] reads the nodes, what the leader heard and the time, and returns the node
//! updates; the leader's liveness loop proposes them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use shoal_api::v1::{ClusterSettings, Node, NodeDescription, NodeState, Op};
use tokio::time::Instant;

/// Status message of a node marked down.
pub const HEARTBEAT_FAILURE: &str = "heartbeat failure";

/// What the leader last heard from a node.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When.
    pub at: Instant,
    /// The node's address.
    pub addr: String,
    /// The node runs Raft (ready to be added to the membership).
    pub raft_running: bool,
    /// What it said about itself; `None`: unchanged since it last said.
    pub description: Option<NodeDescription>,
    /// How long it may stay silent: the grace of the period it was told in the answer.
    pub grace: Duration,
}

/// Most heartbeats a leader answers per second, whatever the cluster's size.
pub const MAX_HEARTBEATS_PER_SEC: u64 = 1_000;

/// The heartbeat period nodes are told: the configured one, or longer in a cluster of `nodes`
/// nodes so that all of them together stay within [`MAX_HEARTBEATS_PER_SEC`].
pub fn period_ms(configured_ms: u64, nodes: usize) -> u64 {
    configured_ms.max((nodes as u64).saturating_mul(1_000) / MAX_HEARTBEATS_PER_SEC)
}

/// The heartbeat period of a cluster of `nodes` nodes with `settings`, and the grace a node
/// gets (the period times the missed beats tolerated): what the leader tells nodes and judges
/// them by, computed in one place so the two agree.
pub fn timing(settings: &ClusterSettings, nodes: usize) -> (Duration, Duration) {
    let period = Duration::from_millis(period_ms(settings.heartbeat_period_ms, nodes));
    (period, period * settings.heartbeat_grace_periods)
}

/// What the leader heard in its current term: the last heartbeat of each node, and when it
/// last heard a node for the first time (the window [`decide`] waits out before judging).
#[derive(Default)]
pub struct Heard {
    seen: Mutex<HashMap<String, Seen>>,
    since: Mutex<Option<Instant>>,
}

impl Heard {
    /// Records a heartbeat; one without a description keeps the last one heard.
    pub fn record(&self, node_id: &str, mut seen: Seen) {
        let mut all = self.seen();
        if !all.contains_key(node_id) {
            // A node heard for the first time this term: the leader is still catching up with
            // reconnecting nodes, so nobody is judged before a grace period after the last one.
            *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen.at);
        }
        if seen.description.is_none() {
            seen.description = all.get(node_id).and_then(|s| s.description.clone());
        }
        all.insert(node_id.to_string(), seen);
    }

    /// Starts a new term: nobody heard yet.
    pub fn reset(&self) {
        self.seen().clear();
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Judges nobody for a grace period from `at` (the leader fell behind: see the module doc).
    pub fn hold(&self, at: Instant) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        *since = Some(since.map_or(at, |s| s.max(at)));
    }

    /// The term's start, or its last first contact, whichever is later.
    pub fn since(&self) -> Instant {
        self.since.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(Instant::now)
    }

    /// The heartbeats heard, by node id.
    pub fn seen(&self) -> MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The updates that bring `nodes` in line with what was heard (`seen`, by node id) at `now`:
/// heard within `grace` (or the longer grace the node was given) -> READY (with the address and
/// description heard); not heard for that long, once `quiet_since` (the term's start, the last
/// first contact in it, or the last hold, whichever is later) is older than `grace` -> DOWN.
/// Only nodes whose
/// status or description changes get an update (stamped `now_ms`), carrying the version read.
pub fn decide<'a>(
    nodes: impl Iterator<Item = &'a Node>,
    seen: &HashMap<String, Seen>,
    now: Instant,
    quiet_since: Instant,
    grace: Duration,
    now_ms: i64,
) -> Vec<Op> {
    let in_grace = now.duration_since(quiet_since) < grace;
    let mut ops = Vec::new();
    for n in nodes {
        let id = n.meta.as_ref().map_or("", |m| m.id.as_str());
        let heard = seen.get(id).filter(|s| now.duration_since(s.at) < grace.max(s.grace));
        let status = n.status.clone().unwrap_or_default();
        let mut next_status = status.clone();
        let mut next_description = n.description.as_ref();
        if let Some(s) = heard {
            next_status.state = NodeState::Ready as i32;
            next_status.message.clear();
            if !s.addr.is_empty() {
                next_status.addr = s.addr.clone();
            }
            if let Some(d) = &s.description {
                next_description = Some(d);
            }
        } else if !in_grace {
            next_status.state = NodeState::Down as i32;
            next_status.message = HEARTBEAT_FAILURE.into();
        }
        let changed = (next_status.state, &next_status.addr, &next_status.message)
            != (status.state, &status.addr, &status.message)
            || next_description != n.description.as_ref();
        if changed {
            let mut next = n.clone();
            next_status.timestamp_ms = now_ms;
            next.status = Some(next_status);
            next.description = next_description.cloned();
            ops.push(crate::writer::update_op(next.into()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{object, op, Meta, NodeStatus};

    fn node(id: &str, state: NodeState) -> Node {
        Node {
            meta: Some(Meta { id: id.into(), version: 7, ..Meta::default() }),
            status: Some(NodeStatus {
                state: state as i32,
                addr: "a:1".into(),
                message: if state == NodeState::Down { HEARTBEAT_FAILURE.into() } else { String::new() },
                ..NodeStatus::default()
            }),
            description: Some(NodeDescription { hostname: id.into(), ..NodeDescription::default() }),
            ..Node::default()
        }
    }

    fn heard(at: Instant, desc: Option<&str>) -> Seen {
        Seen {
            at,
            addr: "a:1".into(),
            raft_running: false,
            description: desc.map(|h| NodeDescription { hostname: h.into(), ..NodeDescription::default() }),
            grace: Duration::ZERO,
        }
    }

    /// `id state` per update.
    fn summary(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| match &o.kind {
                Some(op::Kind::Update(obj)) => match &obj.kind {
                    Some(object::Kind::Node(n)) => {
                        let st = n.status.clone().unwrap_or_default();
                        let host = n.description.as_ref().map_or("", |d| d.hostname.as_str());
                        format!("{} {:?} {} v{}", obj.id(), st.state(), host, n.meta.as_ref().map_or(0, |m| m.version))
                    }
                    _ => "not a node".into(),
                },
                _ => "not an update".into(),
            })
            .collect()
    }

    #[test]
    fn nodes_follow_their_heartbeats() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(3);
        let now = t0 + Duration::from_secs(10);
        let nodes = [
            node("fresh", NodeState::Unknown), // heard just now: ready
            node("steady", NodeState::Ready),  // heard, already ready: nothing
            node("silent", NodeState::Ready),  // not heard for 4 s: down
            node("never", NodeState::Unknown), // never heard: down
            node("gone", NodeState::Down),     // still not heard: nothing
            node("renamed", NodeState::Ready), // heard with a new description: updated
        ];
        let seen = HashMap::from([
            ("fresh".to_string(), heard(now - Duration::from_millis(10), None)),
            ("steady".to_string(), heard(now - Duration::from_secs(1), None)),
            ("silent".to_string(), heard(now - Duration::from_secs(4), None)),
            ("renamed".to_string(), heard(now, Some("new-name"))),
        ]);
        let ops = decide(nodes.iter(), &seen, now, t0, grace, 99);
        assert_eq!(
            summary(&ops),
            ["fresh Ready fresh v7", "silent Down silent v7", "never Down never v7", "renamed Ready new-name v7"]
        );
        // Once applied, nothing more.
        let after: Vec<Node> = ops
            .iter()
            .filter_map(|o| match &o.kind {
                Some(op::Kind::Update(obj)) => match &obj.kind {
                    Some(object::Kind::Node(n)) => Some(n.clone()),
                    _ => None,
                },
                _ => None,
            })
            .chain([node("steady", NodeState::Ready), node("gone", NodeState::Down)])
            .collect();
        assert!(decide(after.iter(), &seen, now, t0, grace, 100).is_empty());
    }

    #[test]
    fn a_new_leader_marks_nobody_down_for_one_grace_window() {
        let now = Instant::now();
        let grace = Duration::from_secs(3);
        let nodes = [node("n1", NodeState::Ready)];
        let quiet = HashMap::new();
        assert!(decide(nodes.iter(), &quiet, now, now - Duration::from_secs(2), grace, 1).is_empty());
        assert_eq!(summary(&decide(nodes.iter(), &quiet, now, now - grace, grace, 1)), ["n1 Down n1 v7"]);
    }

    #[test]
    fn first_contacts_keep_the_leader_from_judging_while_nodes_reconnect() {
        let seen = |at| Seen { at, addr: String::new(), raft_running: false, description: None, grace: Duration::ZERO };
        let heard = Heard::default();
        heard.reset();
        let start = heard.since();
        let later = start + Duration::from_secs(5);
        heard.record("a", seen(later));
        assert_eq!(heard.since(), later, "a node heard for the first time this term moves the window");
        heard.record("a", seen(later + Duration::from_secs(1)));
        assert_eq!(heard.since(), later, "a node heard again does not");
        heard.reset();
        assert!(heard.since() < later, "a new term starts over");
        let held = heard.since() + Duration::from_secs(9);
        heard.hold(held);
        assert_eq!(heard.since(), held, "a hold moves the window");
        heard.hold(held - Duration::from_secs(1));
        assert_eq!(heard.since(), held, "never back");
    }

    #[test]
    fn the_period_grows_with_the_cluster_beyond_a_thousand_heartbeats_a_second() {
        assert_eq!(period_ms(1_000, 3), 1_000);
        assert_eq!(period_ms(1_000, 1_000), 1_000);
        assert_eq!(period_ms(1_000, 5_000), 5_000);
        assert_eq!(period_ms(10_000, 5_000), 10_000, "a longer configured period stays");
    }

    #[test]
    fn a_node_is_judged_by_the_grace_it_was_given() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(60);
        let nodes = [node("long", NodeState::Ready), node("short", NodeState::Ready)];
        let mut long = heard(now - Duration::from_secs(10), None);
        long.grace = Duration::from_secs(15); // told 5 s periods when the cluster was larger
        let seen = HashMap::from([
            ("long".to_string(), long),
            ("short".to_string(), heard(now - Duration::from_secs(10), None)),
        ]);
        assert_eq!(summary(&decide(nodes.iter(), &seen, now, t0, Duration::from_secs(3), 1)), ["short Down short v7"]);
    }
}
