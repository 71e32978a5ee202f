//! Choosing among the nodes that passed every filter: spread.
//!
//! With placement preferences (`spread=node.labels.zone`, possibly nested), nodes are first
//! grouped by the label's value (nodes without the label form a group of their own) and the
//! group holding the fewest non-terminal tasks of the service wins, level by level, so tasks
//! balance across label values however many nodes each value has. Within the chosen group: the
//! node with the fewest tasks of the service, then the fewest tasks in total, then the smallest
//! node id, so the choice is deterministic.
//!
//! Group counts cover every node of the cluster, not only the feasible ones: a full zone still
//! counts as holding its tasks. The strategy never rejects a node; the filters do that.

use std::collections::BTreeMap;

use crate::filter::Request;
use crate::nodes::NodeInfo;
use crate::placement::node_label;

/// The best of `feasible` (indexes into `nodes`) for `req`; `None` when `feasible` is empty.
pub(crate) fn pick(nodes: &[NodeInfo<'_>], feasible: &[usize], req: &Request<'_>) -> Option<usize> {
    let service = req.task.service_id.as_str();
    let labels = &req.placement.spread_labels;
    let paths: Vec<Vec<Option<&str>>> =
        nodes.iter().map(|n| labels.iter().map(|k| node_label(n.node, k)).collect()).collect();
    let mut groups: BTreeMap<&[Option<&str>], u64> = BTreeMap::new();
    for (info, path) in nodes.iter().zip(&paths) {
        let count = info.service_tasks(service);
        for depth in 1..=path.len() {
            *groups.entry(&path[..depth]).or_default() += count;
        }
    }
    feasible.iter().copied().min_by_key(|&i| {
        let path = &paths[i];
        let group_counts: Vec<u64> =
            (1..=path.len()).map(|depth| groups.get(&path[..depth]).copied().unwrap_or(0)).collect();
        let info = &nodes[i];
        (group_counts, info.service_tasks(service), info.tasks, info.id)
    })
}
