//! The working copy of the tasks one reconcile step looks at (those of one service, or of the
//! removed services), the edits made to them, and the ops those edits become.
//!
//! Every decision of a step reads the working copy, so a later decision sees an earlier one
//! (history pruning sees the task a restart just shut down), and each task yields at most one op
//! carrying the version read from the store: two updates of one task in one command would
//! conflict. Nothing here decides anything; it records and emits.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{object, op, Object, ObjectKind, ObjectRef, Op, Task, TaskState, TaskStatus};
use shoal_scheduler::task;
use shoal_store::Store;

/// Message of a task shut down before it reached a node (no agent will ever report on it).
pub const NEVER_SCHEDULED_MESSAGE: &str = "shut down before it was scheduled";

/// The id of a task ("" without meta).
pub(crate) fn id(t: &Task) -> &str {
    t.meta.as_ref().map_or("", |m| m.id.as_str())
}

/// Edited copies of a set of stored tasks, plus the tasks to create. A task is copied only when
/// it is edited: a pass over a large service that changes little copies little.
#[derive(Debug)]
pub(crate) struct Tasks<'s> {
    store: &'s Store,
    now_ms: i64,
    items: BTreeMap<&'s str, Cow<'s, Task>>,
    deleted: BTreeSet<String>,
    created: Vec<Task>,
}

impl<'s> Tasks<'s> {
    /// A working copy of `tasks` (tasks without an id cannot be written and are left out).
    pub(crate) fn new(store: &'s Store, now_ms: i64, tasks: impl Iterator<Item = &'s Task>) -> Self {
        let items = tasks.filter(|t| !id(t).is_empty()).map(|t| (id(t), Cow::Borrowed(t))).collect();
        Tasks { store, now_ms, items, deleted: BTreeSet::new(), created: Vec::new() }
    }

    /// The tasks not deleted, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Task> + '_ {
        self.items.iter().filter(|(id, _)| !self.deleted.contains(**id)).map(|(_, t)| t.as_ref())
    }

    /// The ids of the tasks not deleted, sorted.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.iter().map(|t| id(t).to_owned()).collect()
    }

    /// The task `id`, unless deleted.
    pub(crate) fn get(&self, id: &str) -> Option<&Task> {
        self.items.get(id).filter(|_| !self.deleted.contains(id)).map(|t| t.as_ref())
    }

    fn edit(&mut self, id: &str, f: impl FnOnce(&mut Task, i64)) {
        let now = self.now_ms;
        if let Some(t) = self.items.get_mut(id) {
            f(t.to_mut(), now);
        }
    }

    /// Sets the desired state to `SHUTDOWN` (never lowering it). A task that never reached a
    /// node has no agent to stop it, so its status becomes `SHUTDOWN` right away.
    pub(crate) fn shut_down(&mut self, id: &str) {
        self.edit(id, |t, now| {
            t.desired_state = t.desired_state.max(TaskState::Shutdown as i32);
            if t.node_id.is_empty() && !task::is_terminal(t) {
                t.status = Some(TaskStatus {
                    state: TaskState::Shutdown as i32,
                    timestamp_ms: now,
                    message: NEVER_SCHEDULED_MESSAGE.to_owned(),
                    ..TaskStatus::default()
                });
            }
        });
    }

    /// Lets a task created with desired state `READY` (a stop-first update's) start.
    pub(crate) fn start(&mut self, id: &str) {
        self.edit(id, |t, _| {
            if t.desired_state < TaskState::Running as i32 {
                t.desired_state = TaskState::Running as i32;
            }
        });
    }

    /// Gives every task that is no longer wanted and never reached a node its final status
    /// (whoever shut it down: no agent will).
    pub(crate) fn settle_unassigned(&mut self) {
        let unassigned: Vec<String> = self
            .iter()
            .filter(|t| t.node_id.is_empty() && !task::is_wanted(t) && !task::is_terminal(t))
            .map(|t| id(t).to_owned())
            .collect();
        for tid in unassigned {
            self.shut_down(&tid);
        }
    }

    /// Of the tasks `ids`, the runnable one to keep when there are several: the furthest along,
    /// then one with a node, then the newest.
    pub(crate) fn best(&self, ids: &[String]) -> Option<String> {
        ids.iter()
            .filter_map(|i| self.get(i))
            .max_by_key(|t| {
                let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
                (task::observed(t), !t.node_id.is_empty(), created, id(t))
            })
            .map(|t| id(t).to_owned())
    }

    /// Of the tasks `ids`, the one whose status changed last (then the newest, then by id).
    pub(crate) fn latest(&self, ids: &[String]) -> Option<String> {
        ids.iter()
            .filter_map(|i| self.get(i))
            .max_by_key(|t| {
                let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
                (task::status_timestamp(t), created, id(t))
            })
            .map(|t| id(t).to_owned())
    }

    /// Shuts down every wanted task of `ids` except `keep`.
    pub(crate) fn shut_down_all(&mut self, ids: &[String], keep: Option<&str>) {
        for tid in ids {
            let wanted = self.get(tid).is_some_and(task::is_wanted);
            if wanted && Some(tid.as_str()) != keep {
                self.shut_down(tid);
            }
        }
    }

    /// Marks the task `ORPHANED` (its node is gone: nobody will report on it) and shuts it down.
    pub(crate) fn orphan(&mut self, id: &str, message: &str) {
        self.edit(id, |t, now| {
            t.desired_state = t.desired_state.max(TaskState::Shutdown as i32);
            t.status = Some(TaskStatus {
                state: TaskState::Orphaned as i32,
                timestamp_ms: now,
                message: message.to_owned(),
                ..TaskStatus::default()
            });
        });
    }

    /// Deletes the task.
    pub(crate) fn delete(&mut self, id: &str) {
        if self.items.contains_key(id) {
            self.deleted.insert(id.to_owned());
        }
    }

    /// Adds a task to create.
    pub(crate) fn create(&mut self, t: Task) {
        self.created.push(t);
    }

    /// The ops that turn the store's tasks into the working copy: updates (by id) of the tasks
    /// that changed, with the version read; then creates, in the order made; then deletes (by
    /// id), with the version read.
    pub(crate) fn into_ops(self, out: &mut Vec<Op>) {
        for (id, t) in &self.items {
            // Only an edited copy can differ from the store, and it may still equal it.
            if let Cow::Owned(t) = t {
                if !self.deleted.contains(*id) && self.store.task(id) != Some(t) {
                    out.push(Op { kind: Some(op::Kind::Update(task_object(t.clone()))) });
                }
            }
        }
        out.extend(self.created.into_iter().map(|t| Op { kind: Some(op::Kind::Create(task_object(t))) }));
        for id in &self.deleted {
            let version = self.items.get(id.as_str()).and_then(|t| t.meta.as_ref()).map_or(0, |m| m.version);
            out.push(Op {
                kind: Some(op::Kind::Delete(ObjectRef { kind: ObjectKind::Task as i32, id: id.clone(), version })),
            });
        }
    }
}

fn task_object(t: Task) -> Object {
    Object { kind: Some(object::Kind::Task(t)) }
}
