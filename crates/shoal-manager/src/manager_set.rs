//! Which nodes are Raft members: the leader moves the membership one step at a time towards
//! the nodes' desired roles (a node that should be a manager joins as a learner, then becomes a
//! voter; a demoted, departed or removed one leaves), and records in each node object the role
//! it actually has.
//!
//! Pure: [`next_step`] reads the membership, the nodes and what the leader heard, and returns
//! the one step to take; the leader's membership loop executes it and asks again.

use std::collections::{BTreeSet, HashMap};

use shoal_api::v1::{Node, NodeRole};

use crate::liveness::Seen;

/// The next change to the Raft membership or to the nodes' recorded roles.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Everything is as it should be.
    Nothing,
    /// Record `role` in the node object (the voters are the managers).
    RecordRole { node: Box<Node>, role: NodeRole },
    /// Add this node as a learner at `addr`, then make it a voter.
    AddManager { node_id: String, raft_id: u64, addr: String },
    /// Take this voter out (never the last one).
    RemoveVoter(u64),
    /// Take these learners out.
    RemoveLearners(BTreeSet<u64>),
}

fn desired(n: &Node) -> NodeRole {
    n.spec.as_ref().map(|s| s.desired_role()).unwrap_or(NodeRole::Worker)
}

/// The next step, given the current `voters` and `learners` (no change in flight), the stored
/// `nodes` and what the leader heard from them. Order: record roles first (so `node ls` says
/// the truth), then add one wanted manager that runs Raft, then remove one unwanted voter, then
/// stale learners.
pub fn next_step(
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    nodes: &[&Node],
    seen: &HashMap<String, Seen>,
) -> Step {
    for n in nodes.iter().copied() {
        let is_voter = n.raft_id != 0 && voters.contains(&n.raft_id);
        let want = if is_voter { NodeRole::Manager } else { NodeRole::Worker };
        if n.role() != want {
            return Step::RecordRole { node: Box::new(n.clone()), role: want };
        }
    }
    for n in nodes.iter().copied() {
        let id = n.meta.as_ref().map_or("", |m| m.id.as_str());
        if desired(n) != NodeRole::Manager || n.raft_id == 0 || voters.contains(&n.raft_id) {
            continue;
        }
        let Some(s) = seen.get(id) else { continue };
        if s.raft_running && !s.addr.is_empty() {
            return Step::AddManager { node_id: id.to_owned(), raft_id: n.raft_id, addr: s.addr.clone() };
        }
    }
    let by_raft: HashMap<u64, &Node> = nodes.iter().filter(|n| n.raft_id != 0).map(|n| (n.raft_id, *n)).collect();
    let unwanted = |rid: &u64| by_raft.get(rid).is_none_or(|n| desired(n) == NodeRole::Worker);
    if let Some(rid) = voters.iter().find(|r| unwanted(r)) {
        if voters.len() > 1 {
            return Step::RemoveVoter(*rid);
        }
    }
    let stale: BTreeSet<u64> = learners.iter().filter(|r| unwanted(r)).copied().collect();
    if !stale.is_empty() {
        return Step::RemoveLearners(stale);
    }
    Step::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{Meta, NodeSpec};
    use std::time::Duration;
    use tokio::time::Instant;

    fn node(id: &str, raft_id: u64, desired: NodeRole, role: NodeRole) -> Node {
        Node {
            meta: Some(Meta { id: id.into(), ..Meta::default() }),
            spec: Some(NodeSpec { desired_role: desired as i32, ..NodeSpec::default() }),
            role: role as i32,
            raft_id,
            ..Node::default()
        }
    }

    fn seen(raft_running: bool) -> Seen {
        Seen {
            at: Instant::now(),
            addr: "10.0.0.9:4242".into(),
            raft_running,
            description: None,
            grace: Duration::ZERO,
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    use NodeRole::{Manager as M, Worker as W};

    #[test]
    fn steps_in_order() {
        let quiet = HashMap::new();
        // The recorded role follows the membership first.
        let nodes = [node("a", 1, M, M), node("b", 2, M, W)];
        assert!(matches!(
            next_step(&set(&[1, 2]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &quiet),
            Step::RecordRole { role: NodeRole::Manager, .. }
        ));
        // A node that wants to be a manager joins once it runs Raft and was heard.
        let nodes = [node("a", 1, M, M), node("c", 3, M, W)];
        assert_eq!(next_step(&set(&[1]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &quiet), Step::Nothing);
        let not_yet = HashMap::from([("c".to_string(), seen(false))]);
        assert_eq!(next_step(&set(&[1]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &not_yet), Step::Nothing);
        let ready = HashMap::from([("c".to_string(), seen(true))]);
        assert_eq!(
            next_step(&set(&[1]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &ready),
            Step::AddManager { node_id: "c".into(), raft_id: 3, addr: "10.0.0.9:4242".into() }
        );
        // A demoted voter leaves; an unknown one too; never the last voter.
        let nodes = [node("a", 1, M, M), node("b", 2, W, M)];
        assert_eq!(
            next_step(&set(&[1, 2]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &quiet),
            Step::RemoveVoter(2)
        );
        let nodes = [node("a", 1, M, M)];
        assert_eq!(
            next_step(&set(&[1, 7]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &quiet),
            Step::RemoveVoter(7)
        );
        let nodes = [node("a", 1, W, M)];
        assert_eq!(next_step(&set(&[1]), &set(&[]), &nodes.iter().collect::<Vec<_>>(), &quiet), Step::Nothing);
        // Learners nobody wants go.
        let nodes = [node("a", 1, M, M), node("w", 5, W, W)];
        assert_eq!(
            next_step(&set(&[1]), &set(&[5, 6]), &nodes.iter().collect::<Vec<_>>(), &quiet),
            Step::RemoveLearners(set(&[5, 6]))
        );
        // A wanted learner is being added: left alone.
        let nodes = [node("a", 1, M, M), node("c", 3, M, W)];
        assert_eq!(next_step(&set(&[1]), &set(&[3]), &nodes.iter().collect::<Vec<_>>(), &quiet), Step::Nothing);
    }
}
