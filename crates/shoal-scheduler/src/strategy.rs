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
//!
//! [`Spread`] keeps the candidates of one group of identical tasks ordered, and is told when a
//! node's load changes, so picking does not look at every node again.

use std::collections::{BTreeMap, BTreeSet};

use crate::filter::Request;
use crate::nodes::NodeInfo;
use crate::placement::node_label;

/// The candidate nodes for one service's tasks, in spread order.
pub(crate) struct Spread<'n> {
    service: String,
    /// Per node: its label value at each preference level (empty without preferences).
    paths: Vec<Vec<Option<&'n str>>>,
    /// Tasks of the service under each label path prefix, over every node.
    groups: BTreeMap<Vec<Option<&'n str>>, u64>,
    /// Candidates by (tasks of the service, tasks, node id, index).
    order: BTreeSet<(u64, u64, &'n str, usize)>,
    /// The counts each candidate is filed under in `order`, by index.
    filed: BTreeMap<usize, (u64, u64)>,
}

impl<'n> Spread<'n> {
    /// The spread state of `nodes` for `req`'s service, with no candidates yet.
    pub(crate) fn new(nodes: &[NodeInfo<'n>], req: &Request<'_>) -> Self {
        let service = req.task.service_id.clone();
        let labels = &req.placement.spread_labels;
        let paths: Vec<Vec<Option<&'n str>>> =
            nodes.iter().map(|n| labels.iter().map(|k| node_label(n.node, k)).collect()).collect();
        let mut groups = BTreeMap::new();
        for (info, path) in nodes.iter().zip(&paths) {
            let count = info.service_tasks(&service);
            for depth in 1..=path.len() {
                *groups.entry(path[..depth].to_vec()).or_default() += count;
            }
        }
        Spread { service, paths, groups, order: BTreeSet::new(), filed: BTreeMap::new() }
    }

    /// Adds node `i` as a candidate, filed under its current load.
    pub(crate) fn insert(&mut self, nodes: &[NodeInfo<'n>], i: usize) {
        let info = &nodes[i];
        let key = (info.service_tasks(&self.service), info.tasks);
        self.order.insert((key.0, key.1, info.id, i));
        self.filed.insert(i, key);
    }

    /// Takes node `i` out of the candidates (it is about to change, or no longer fits).
    pub(crate) fn remove(&mut self, nodes: &[NodeInfo<'n>], i: usize) {
        if let Some((svc, tasks)) = self.filed.remove(&i) {
            self.order.remove(&(svc, tasks, nodes[i].id, i));
        }
    }

    /// The best candidate, if any.
    pub(crate) fn best(&self) -> Option<usize> {
        if self.paths.first().is_none_or(|p| p.is_empty()) {
            return self.order.first().map(|&(_, _, _, i)| i);
        }
        self.order
            .iter()
            .min_by_key(|&&(svc, tasks, id, i)| {
                let path = &self.paths[i];
                let counts: Vec<u64> =
                    (1..=path.len()).map(|d| self.groups.get(&path[..d]).copied().unwrap_or(0)).collect();
                (counts, svc, tasks, id, i)
            })
            .map(|&(_, _, _, i)| i)
    }

    /// Records that one task of the service was placed on node `i` (between `remove` and
    /// `insert`), for the label groups.
    pub(crate) fn placed(&mut self, i: usize) {
        let path = &self.paths[i];
        for d in 1..=path.len() {
            *self.groups.entry(path[..d].to_vec()).or_default() += 1;
        }
    }
}
