//! The scheduler's tests: data-driven cases (`store -> plan`) for every filter, the reasons and
//! the spread strategy, and property tests over random clusters (no over-commit, constraints and
//! limits hold, a plan is stable once applied).

mod cases;
mod props;

use shoal_api::v1::op;

use crate::Plan;

/// One line per decision: `t1 -> n2` for an assignment, `t3: <reason>` for a task left pending.
fn lines(plan: &Plan) -> Vec<String> {
    let assigned = plan.assignments.iter().map(|o| match &o.kind {
        Some(op::Kind::AssignTask(a)) => format!("{} -> {}", a.task_id, a.node_id),
        _ => "unexpected op".to_owned(),
    });
    let pending = plan.unschedulable.iter().map(|u| format!("{}: {}", u.task_id, u.reason));
    assigned.chain(pending).collect()
}
