//! What the state of a task's node means for the task: lost (the node is `DOWN` or was removed:
//! its tasks are `ORPHANED`, nobody will report on them) or drained (its tasks are shut down and
//! replaced elsewhere). `PAUSE` and not-yet-ready states (`UNKNOWN`, `DISCONNECTED`) leave
//! running tasks alone: a node is only given up once the leader has declared it down.
//!
//! Reads nodes; edits only the working copy it is handed.

use std::collections::BTreeSet;

use shoal_api::v1::{Node, NodeAvailability, NodeState};
use shoal_scheduler::task;
use shoal_store::Store;

use crate::work::{Id, Tasks};

/// Status message of a task orphaned because its node is down.
pub const NODE_DOWN_MESSAGE: &str = "node is down";
/// Status message of a task orphaned because its node was removed.
pub const NODE_REMOVED_MESSAGE: &str = "node was removed";

/// Why tasks on `node_id` are lost, if they are: the node is `DOWN`, or gone from the store.
/// A task without a node has nothing to lose.
pub(crate) fn lost(store: &Store, node_id: &str) -> Option<&'static str> {
    if node_id.is_empty() {
        return None;
    }
    match store.node(node_id) {
        None => Some(NODE_REMOVED_MESSAGE),
        Some(n) if is_down(n) => Some(NODE_DOWN_MESSAGE),
        Some(_) => None,
    }
}

/// Whether the leader has declared `node` down.
pub(crate) fn is_down(node: &Node) -> bool {
    node.status.as_ref().is_some_and(|s| s.state == NodeState::Down as i32)
}

/// Whether an operator drained `node`.
pub(crate) fn is_drained(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|s| s.availability == NodeAvailability::Drain as i32)
}

/// Orphans every non-terminal task of `tasks` that sits on a lost node, and returns the ids of
/// those that were still wanted (their slots need a replacement now).
pub(crate) fn orphan_lost<'s>(tasks: &mut Tasks<'s>, store: &Store) -> BTreeSet<Id<'s>> {
    let lost: Vec<(Id<'s>, &'static str, bool)> = tasks
        .entries()
        .filter(|(_, t)| !task::is_terminal(t))
        .filter_map(|(i, t)| lost(store, &t.node_id).map(|why| (i, why, task::is_wanted(t))))
        .collect();
    let mut evicted = BTreeSet::new();
    for (tid, why, wanted) in lost {
        tasks.orphan(tid, why);
        if wanted {
            evicted.insert(tid);
        }
    }
    evicted
}
