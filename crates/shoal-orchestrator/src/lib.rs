//! shoal's orchestrator: decides which tasks should exist for the services in the store.
//!
//! [`reconcile`] compares services with their tasks and returns the ops that close the gap:
//! create tasks for missing replicas (replicated services) or for eligible nodes without one
//! (global services), shut down tasks that are no longer wanted (scale-down, drained or lost
//! nodes, removed services), replace tasks that ended according to the restart policy, and
//! delete task history beyond the cluster's `task_history_limit`. It is level-triggered: it reads
//! only the current store, and once its ops are applied a second call at the same `now_ms`
//! returns nothing. The caller (the leader's loop) re-runs it on store events and periodically,
//! which is how restart delays elapse.
//!
//! Decisions a reviewer should know:
//! - Replicated slots are numbered loosely, as in Swarm: scale-down removes slots without a
//!   running task first, then slots on the nodes holding the most tasks of the service (higher
//!   slot numbers first among equals); scale-up fills the lowest free slot numbers (module
//!   `replicated`).
//! - Tasks on a node that is `DOWN` or removed become `ORPHANED` and are replaced at once; tasks
//!   on a drained node, or on a node that no longer satisfies the task's own constraints, get
//!   desired `SHUTDOWN` (the agent stops them) and are replaced at once. Neither waits for the
//!   restart delay nor counts as a restart attempt. `PAUSE` changes nothing for running tasks.
//! - A task that ended while wanted keeps desired `RUNNING` until its replacement is created, in
//!   the same command (module `restart`: policy, delay, attempt counting). The service's
//!   *current* restart policy applies (so a user can stop a crash loop by updating it), and the
//!   replacement is made from the current task template. `on-failure` restarts anything but
//!   `COMPLETE`. Attempts are the slot's tasks that ended `COMPLETE`/`FAILED`/`REJECTED` within
//!   the window; history pruning keeps those beyond the history limit while they still count.
//! - Tasks of a removed service get desired `SHUTDOWN` (not `REMOVE`: the agent contract stays
//!   "stop what is not wanted") and are deleted once terminal; tasks that never reached a node,
//!   or whose node is lost, are deleted at once since no agent will report on them.
//! - Rolling updates and rollbacks (module `update`): only slots (nodes, for global services)
//!   whose task differs from what the service would create now are replaced, a batch at a time.
//! - Jobs (module `jobs`): replicated jobs run their completions at most `max_concurrent` at a
//!   time, global jobs once per eligible node; a failed task is replaced under the restart
//!   policy, a completed one never; a spec change runs the job again.
//! - Out of scope for now, deliberately: global tasks are created
//!   `ASSIGNED` to their node without the scheduler's resource and host-port checks.
//!
//! Architecture Invariant: pure and deterministic. No I/O, no clock, no randomness, no async
//! runtime: time comes in as `now_ms` and ids from `new_id`, and the same store, time and ids
//! give the same ops. It never assigns replicated tasks to nodes (the scheduler does) and never
//! proposes anything itself.

mod clock;
mod global;
mod history;
mod jobs;
mod nodes;
mod removed;
mod replicated;
mod restart;
mod update;
mod work;

#[cfg(test)]
mod tests;

use shoal_api::defaults::fill_settings;
use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{
    object, op, service_spec::Mode, Annotations, Event, Meta, Op, Service, Task, TaskState, TaskStatus,
};
use shoal_store::Store;

pub use nodes::{NODE_DOWN_MESSAGE, NODE_REMOVED_MESSAGE};
pub use restart::DEFAULT_RESTART_DELAY_MS;
pub use update::{plan_update, spec_reaches_tasks, DEFAULT_MONITOR_MS};
pub use work::NEVER_SCHEDULED_MESSAGE;

/// Status message of a replicated task the orchestrator created (it waits for the scheduler).
pub const CREATED_MESSAGE: &str = "created";
/// Status message of a global task the orchestrator created on its node.
pub const GLOBAL_ASSIGNED_MESSAGE: &str = "assigned to its node (global service)";

/// The ops that bring the tasks of `store` in line with its services at `now_ms`; `new_id` makes
/// the id of every task created. Updates carry the version read; each task gets at most one op.
///
/// Ops come per service (by id), then for the tasks of removed services; within each: updates
/// by task id, creates, deletes by task id.
pub fn reconcile(store: &Store, now_ms: i64, new_id: &mut dyn FnMut() -> String) -> Vec<Op> {
    reconcile_scope(store, now_ms, &Scope::All, new_id)
}

/// What a pass decided: its ops, and when it must look at a service again although nothing
/// changes in the store.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    /// As [`reconcile_scope`] returns them.
    pub ops: Vec<Op>,
    /// For each service of the scope with a time-based decision ahead (a restart delay, an
    /// attempt leaving the restart window, an update's settle, startup or monitor period), the
    /// earliest time (ms, the clock `now_ms` comes from) at which a pass may decide otherwise.
    /// Before then, and without a change in the store, a pass over it decides the same as this
    /// one; a service not listed needs a pass only after a change.
    pub wake: BTreeMap<String, i64>,
}

/// Which services a pass looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every service, and every task of a removed service.
    All,
    /// These service ids: existing services are reconciled, ids of removed services get their
    /// remaining tasks cleaned up. See [`affected`] for what a batch of changes touches.
    Services(BTreeSet<String>),
}

/// [`reconcile`] restricted to `scope`: for the services in it, exactly the ops a full pass
/// would make for them (a full pass is the union over all services).
pub fn reconcile_scope(store: &Store, now_ms: i64, scope: &Scope, new_id: &mut dyn FnMut() -> String) -> Vec<Op> {
    pass(store, now_ms, scope, new_id).ops
}

/// [`reconcile_scope`], with when to look again at the services of `scope` ([`Pass::wake`]).
pub fn pass(store: &Store, now_ms: i64, scope: &Scope, new_id: &mut dyn FnMut() -> String) -> Pass {
    let settings = fill_settings(store.cluster().and_then(|c| c.settings).unwrap_or_default());
    let clock = clock::Clock::new(now_ms);
    let mut ctx = Ctx {
        store,
        clock: &clock,
        new_id,
        history_limit: usize::try_from(settings.task_history_limit).unwrap_or(usize::MAX),
    };
    let mut ops = Vec::new();
    let mut wake = BTreeMap::new();
    let mut one = |ctx: &mut Ctx<'_>, service: &Service, ops: &mut Vec<Op>| {
        match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
            Some(Mode::Replicated(r)) => replicated::reconcile(ctx, service, r.replicas, ops),
            Some(Mode::Global(_)) => global::reconcile(ctx, service, ops),
            Some(Mode::ReplicatedJob(j)) => jobs::replicated(ctx, service, j, ops),
            Some(Mode::GlobalJob(_)) => jobs::global(ctx, service, ops),
            // A service without a mode is invalid: left alone.
            None => {}
        }
        if let Some(at) = ctx.clock.take_wake() {
            wake.insert(service.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(), at);
        }
    };
    match scope {
        Scope::All => {
            for service in store.services() {
                one(&mut ctx, service, &mut ops);
            }
            removed::reconcile(&ctx, store.tasks().filter(|t| store.service(&t.service_id).is_none()), &mut ops);
        }
        Scope::Services(ids) => {
            for id in ids {
                match store.service(id) {
                    Some(service) => one(&mut ctx, service, &mut ops),
                    None => removed::reconcile(&ctx, store.tasks_by_service(id), &mut ops),
                }
            }
        }
    }
    Pass { ops, wake }
}

/// The services a batch of applied changes (`events`, as the store returned them) may have
/// given the orchestrator work on, judged against `store` after the changes: the service of
/// every task that is terminal after the change (task states only move forward, so no other
/// task change can, but for a service in a rolling update: any change of its tasks), every changed service, and for a changed node every service with a task
/// on it plus every global service. A change of the cluster object (settings such as the
/// history limit) touches everything: [`Scope::All`].
pub fn affected(store: &Store, events: &[Event]) -> Scope {
    let mut ids = BTreeSet::new();
    let mut globals_added = false;
    for e in events {
        match e.object.as_ref().and_then(|o| o.kind.as_ref()) {
            // Only a task that ended gives the orchestrator work (restart policy, history);
            // its other changes are its own writes, assignments and progress reports.
            Some(object::Kind::Task(t)) if shoal_scheduler::task::is_terminal(t) => {
                ids.insert(t.service_id.clone());
            }
            // A rolling update moves on as its new tasks start running.
            Some(object::Kind::Task(t)) if store.service(&t.service_id).and_then(update::Rolling::of).is_some() => {
                ids.insert(t.service_id.clone());
            }
            Some(object::Kind::Service(s)) => {
                ids.insert(s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default());
            }
            Some(object::Kind::Node(n)) => {
                let node_id = n.meta.as_ref().map_or("", |m| m.id.as_str());
                ids.extend(store.tasks_by_node(node_id).map(|t| t.service_id.clone()));
                if !globals_added {
                    globals_added = true;
                    ids.extend(
                        store
                            .services()
                            .filter(|s| {
                                matches!(
                                    s.spec.as_ref().and_then(|sp| sp.mode.as_ref()),
                                    Some(Mode::Global(_) | Mode::GlobalJob(_))
                                )
                            })
                            .filter_map(|s| s.meta.as_ref().map(|m| m.id.clone())),
                    );
                }
            }
            Some(object::Kind::Cluster(_)) => return Scope::All,
            _ => {}
        }
    }
    ids.remove("");
    Scope::Services(ids)
}

/// Splits `ops` (as a pass returned them, referring to tasks of `store`) into the groups that
/// must commit together: the ops on one slot of a service (one node for a global service, the
/// tasks of a removed service by their slot too), in the order they first appear. A restart's
/// retired task and its replacement are one group; different slots are independent, so a
/// caller may propose groups in separate commands without splitting what belongs together.
pub fn units(store: &Store, ops: Vec<Op>) -> Vec<Vec<Op>> {
    let mut order: Vec<(String, u64, String)> = Vec::new();
    let mut groups: BTreeMap<(String, u64, String), Vec<Op>> = BTreeMap::new();
    for op in ops {
        let task = match op.kind.as_ref() {
            Some(op::Kind::Create(o) | op::Kind::Update(o) | op::Kind::Upsert(o)) => match o.kind.as_ref() {
                Some(object::Kind::Task(t)) => Some(t),
                _ => None,
            },
            Some(op::Kind::Delete(r)) => store.task(&r.id),
            _ => None,
        };
        let key = match task {
            Some(t) if t.slot == 0 => (t.service_id.clone(), 0, t.node_id.clone()),
            Some(t) => (t.service_id.clone(), t.slot, String::new()),
            // Not a task op: a group of its own.
            None => (String::new(), order.len() as u64, format!("#{}", order.len())),
        };
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(op);
    }
    order.into_iter().filter_map(|k| groups.remove(&k)).collect()
}

/// What every reconcile step needs.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a Store,
    /// The present, and the deadlines found ahead of it.
    pub(crate) clock: &'a clock::Clock,
    pub(crate) new_id: &'a mut dyn FnMut() -> String,
    /// Terminated tasks kept per slot (per node for global services).
    pub(crate) history_limit: usize,
}

impl<'a> Ctx<'a> {
    /// What a reconciler of `service` starts from: a working copy of its tasks, those of lost
    /// nodes orphaned (their ids returned), and its restart policy.
    pub(crate) fn begin(
        &self,
        service: &Service,
    ) -> (work::Tasks<'a>, shoal_api::v1::RestartPolicy, BTreeSet<work::Id<'a>>) {
        let store = self.store;
        let service_id = service.meta.as_ref().map_or("", |m| m.id.as_str());
        let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
        let policy = restart::policy(template.and_then(|t| t.restart_policy.as_ref()));
        let mut tasks = work::Tasks::new(store, self.clock.now(), store.tasks_by_service(service_id));
        let orphaned = nodes::orphan_lost(&mut tasks, store);
        (tasks, policy, orphaned)
    }

    /// A new task of `service` in `slot`: the service's task template and version, desired
    /// `RUNNING`, named `<service>.<slot>`; with `node_id` (global services) it is created
    /// `ASSIGNED` there and named `<service>.<node_id>`, else `PENDING` for the scheduler.
    pub(crate) fn new_task(&mut self, service: &Service, slot: u64, node_id: &str) -> Task {
        let spec = service.spec.as_ref();
        let name = spec.and_then(|s| s.annotations.as_ref()).map_or("", |a| a.name.as_str());
        let meta = service.meta.as_ref();
        let (state, message, suffix) = if node_id.is_empty() {
            (TaskState::Pending, CREATED_MESSAGE, slot.to_string())
        } else {
            (TaskState::Assigned, GLOBAL_ASSIGNED_MESSAGE, node_id.to_owned())
        };
        Task {
            meta: Some(Meta { id: (self.new_id)(), ..Meta::default() }),
            service_id: meta.map_or("", |m| m.id.as_str()).to_owned(),
            slot,
            node_id: node_id.to_owned(),
            spec: spec.and_then(|s| s.task_template.clone()),
            spec_version: meta.map_or(0, |m| m.version),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                timestamp_ms: self.clock.now(),
                message: message.to_owned(),
                ..TaskStatus::default()
            }),
            annotations: Some(Annotations { name: format!("{name}.{suffix}"), ..Annotations::default() }),
            // A service publishing through the ingress network joins it; the allocator gives
            // the address.
            networks: update::ingress_of(self.store, spec)
                .map(|id| vec![shoal_api::v1::NetworkAttachment { network_id: id.to_owned(), ..Default::default() }])
                .unwrap_or_default(),
            host_ports: update::host_ports(spec),
        }
    }
}
