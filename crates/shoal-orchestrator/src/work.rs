//! The working copy of the tasks one reconcile step looks at (those of one service, or of the
//! removed services), the edits made to them, and the ops those edits become.
//!
//! Every decision of a step reads the working copy, so a later decision sees an earlier one
//! (history pruning sees the task a restart just shut down), and each task yields at most one op
//! carrying the version read from the store: two updates of one task in one command would
//! conflict. Nothing here decides anything; it records and emits.

use std::borrow::Cow;
use std::collections::HashMap;

use shoal_api::v1::{object, op, Object, ObjectKind, ObjectRef, Op, Task, TaskState, TaskStatus};
use shoal_scheduler::task;
use shoal_store::Store;

/// Message of a task shut down before it reached a node (no agent will ever report on it).
pub const NEVER_SCHEDULED_MESSAGE: &str = "shut down before it was scheduled";

/// The id of a task ("" without meta).
pub(crate) fn id(t: &Task) -> &str {
    t.meta.as_ref().map_or("", |m| m.id.as_str())
}

/// The id of a stored task, borrowed from the store: ids are handed around a pass without
/// copying, and a working copy can be edited while they are held.
pub(crate) type Id<'s> = &'s str;

/// Edited copies of a set of stored tasks, plus the tasks to create. A task is copied only when
/// it is edited: a pass over a large service that changes little copies little.
#[derive(Debug)]
pub(crate) struct Tasks<'s> {
    store: &'s Store,
    now_ms: i64,
    /// By id, ascending.
    items: Vec<Item<'s>>,
    /// Position in `items` by id (a fast hash: ids are not chosen by an adversary here, they
    /// come from the store).
    index: HashMap<Id<'s>, usize, foldhash::fast::FixedState>,
    created: Vec<Task>,
}

#[derive(Debug)]
struct Item<'s> {
    id: Id<'s>,
    task: Cow<'s, Task>,
    deleted: bool,
}

impl<'s> Tasks<'s> {
    /// A working copy of `tasks` (tasks without an id cannot be written and are left out).
    pub(crate) fn new(store: &'s Store, now_ms: i64, tasks: impl Iterator<Item = &'s Task>) -> Self {
        let mut items: Vec<Item<'s>> = tasks
            .filter(|t| !id(t).is_empty())
            .map(|t| Item { id: id(t), task: Cow::Borrowed(t), deleted: false })
            .collect();
        if !items.is_sorted_by(|a, b| a.id <= b.id) {
            items.sort_unstable_by(|a, b| a.id.cmp(b.id));
        }
        items.dedup_by(|a, b| a.id == b.id);
        let index = items.iter().enumerate().map(|(i, it)| (it.id, i)).collect();
        Tasks { store, now_ms, items, index, created: Vec::new() }
    }

    /// The tasks not deleted, by id, with their ids.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (Id<'s>, &Task)> + '_ {
        self.items.iter().filter(|it| !it.deleted).map(|it| (it.id, it.task.as_ref()))
    }

    /// The tasks not deleted, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Task> + '_ {
        self.entries().map(|(_, t)| t)
    }

    /// The ids of the tasks not deleted, sorted.
    pub(crate) fn ids(&self) -> Vec<Id<'s>> {
        self.entries().map(|(i, _)| i).collect()
    }

    /// The task `id`, unless deleted.
    pub(crate) fn get(&self, id: &str) -> Option<&Task> {
        let it = &self.items[*self.index.get(id)?];
        (!it.deleted).then_some(it.task.as_ref())
    }

    /// Edits the task `id` when `changes` says the edit would change it: a task is copied only
    /// then.
    fn edit(&mut self, id: &str, changes: impl FnOnce(&Task) -> bool, f: impl FnOnce(&mut Task, i64)) {
        let now = self.now_ms;
        if let Some(&i) = self.index.get(id) {
            if changes(&self.items[i].task) {
                f(self.items[i].task.to_mut(), now);
            }
        }
    }

    /// Sets the desired state to `SHUTDOWN` (never lowering it). A task that never reached a
    /// node has no agent to stop it, so its status becomes `SHUTDOWN` right away.
    pub(crate) fn shut_down(&mut self, id: &str) {
        let changes =
            |t: &Task| t.desired_state < TaskState::Shutdown as i32 || (t.node_id.is_empty() && !task::is_terminal(t));
        self.edit(id, changes, |t, now| {
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
        self.edit(
            id,
            |t| t.desired_state < TaskState::Running as i32,
            |t, _| {
                if t.desired_state < TaskState::Running as i32 {
                    t.desired_state = TaskState::Running as i32;
                }
            },
        );
    }

    /// Gives every task that is no longer wanted and never reached a node its final status
    /// (whoever shut it down: no agent will).
    pub(crate) fn settle_unassigned(&mut self) {
        let unassigned: Vec<Id<'s>> = self
            .entries()
            .filter(|(_, t)| t.node_id.is_empty() && !task::is_wanted(t) && !task::is_terminal(t))
            .map(|(i, _)| i)
            .collect();
        for tid in unassigned {
            self.shut_down(tid);
        }
    }

    /// Of the tasks `ids`, the runnable one to keep when there are several: the furthest along,
    /// then one with a node, then the newest.
    pub(crate) fn best(&self, ids: &[Id<'s>]) -> Option<Id<'s>> {
        ids.iter()
            .filter_map(|&i| Some((i, self.get(i)?)))
            .max_by_key(|(i, t)| {
                let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
                (task::observed(t), !t.node_id.is_empty(), created, *i)
            })
            .map(|(i, _)| i)
    }

    /// Of the tasks `ids`, the one whose status changed last (then the newest, then by id).
    pub(crate) fn latest(&self, ids: &[Id<'s>]) -> Option<Id<'s>> {
        ids.iter()
            .filter_map(|&i| Some((i, self.get(i)?)))
            .max_by_key(|(i, t)| {
                let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
                (task::status_timestamp(t), created, *i)
            })
            .map(|(i, _)| i)
    }

    /// Shuts down every wanted task of `ids` except `keep`.
    pub(crate) fn shut_down_all(&mut self, ids: &[Id<'s>], keep: Option<&str>) {
        for &tid in ids {
            let wanted = self.get(tid).is_some_and(task::is_wanted);
            if wanted && Some(tid) != keep {
                self.shut_down(tid);
            }
        }
    }

    /// Marks the task `ORPHANED` (its node is gone: nobody will report on it) and shuts it down.
    pub(crate) fn orphan(&mut self, id: &str, message: &str) {
        self.edit(
            id,
            |_| true,
            |t, now| {
                t.desired_state = t.desired_state.max(TaskState::Shutdown as i32);
                t.status = Some(TaskStatus {
                    state: TaskState::Orphaned as i32,
                    timestamp_ms: now,
                    message: message.to_owned(),
                    ..TaskStatus::default()
                });
            },
        );
    }

    /// Deletes the task.
    pub(crate) fn delete(&mut self, id: &str) {
        if let Some(&i) = self.index.get(id) {
            self.items[i].deleted = true;
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
        let mut deleted = Vec::new();
        for it in self.items {
            if it.deleted {
                let version = it.task.meta.as_ref().map_or(0, |m| m.version);
                deleted.push((it.id, version));
                continue;
            }
            // Only an edited copy can differ from the store, and it may still equal it.
            if let Cow::Owned(t) = it.task {
                if self.store.task(it.id) != Some(&t) {
                    out.push(Op { kind: Some(op::Kind::Update(task_object(t))) });
                }
            }
        }
        out.extend(self.created.into_iter().map(|t| Op { kind: Some(op::Kind::Create(task_object(t))) }));
        for (id, version) in deleted {
            out.push(Op {
                kind: Some(op::Kind::Delete(ObjectRef { kind: ObjectKind::Task as i32, id: id.to_owned(), version })),
            });
        }
    }
}

fn task_object(t: Task) -> Object {
    Object { kind: Some(object::Kind::Task(t)) }
}
