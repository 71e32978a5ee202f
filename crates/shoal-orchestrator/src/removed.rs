//! Tasks whose service no longer exists: they are shut down, and deleted once terminal.
//!
//! A task that never reached a node, or whose node is lost, is deleted at once: no agent will
//! ever report it terminal. Every other task gets desired `SHUTDOWN` and stays until its agent
//! reports it stopped, so what still runs stays visible (and its resources counted).

use shoal_api::v1::{Op, Task};
use shoal_scheduler::task;

use crate::work::Tasks;
use crate::{nodes, Ctx};

/// Shuts down and deletes `orphans`, tasks of removed services.
pub(crate) fn reconcile<'s>(ctx: &Ctx<'s>, orphans: impl Iterator<Item = &'s Task>, out: &mut Vec<Op>) {
    let store = ctx.store;
    let mut tasks = Tasks::new(store, ctx.clock.now(), orphans);
    for tid in tasks.ids() {
        let Some(t) = tasks.get(tid) else { continue };
        // No agent will ever report on a task that never reached a node or whose node is lost.
        let unreachable = t.node_id.is_empty() || nodes::lost(store, &t.node_id).is_some();
        let done = task::is_terminal(t) || unreachable;
        if done {
            tasks.delete(tid);
        } else if task::is_wanted(t) {
            tasks.shut_down(tid);
        }
    }
    tasks.into_ops(out);
}
