//! Uniform access to the seven stored kinds, and the indexed [`Table`] that holds each of them.
//!
//! A table keeps its secondary indexes (unique names, and the task indexes) consistent on every
//! [`Table::put`] and [`Table::take`]. Nothing else may insert into or remove from `items`, or the
//! indexes drift from the objects. A table does not check rules (free names, versions): callers
//! in `apply` and `snapshot` do that before they `put`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use shoal_api::v1::{object, Cluster, Config, Meta, Network, Node, Object, ObjectKind, Secret, Service, Task};

/// A kind the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
}

impl Tag {
    /// The tag of a wire kind; `None` for unspecified or unknown values.
    pub(crate) fn from_wire(kind: i32) -> Option<Tag> {
        match ObjectKind::try_from(kind).ok()? {
            ObjectKind::Unspecified => None,
            ObjectKind::Cluster => Some(Tag::Cluster),
            ObjectKind::Node => Some(Tag::Node),
            ObjectKind::Service => Some(Tag::Service),
            ObjectKind::Task => Some(Tag::Task),
            ObjectKind::Network => Some(Tag::Network),
            ObjectKind::Secret => Some(Tag::Secret),
            ObjectKind::Config => Some(Tag::Config),
        }
    }

    /// The kind as users read it in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tag::Cluster => "cluster",
            Tag::Node => "node",
            Tag::Service => "service",
            Tag::Task => "task",
            Tag::Network => "network",
            Tag::Secret => "secret",
            Tag::Config => "config",
        }
    }
}

/// The previous state of one object, kept by the undo log of a command being applied (boxed:
/// services are large and most entries are small).
#[derive(Debug)]
pub(crate) enum Prev {
    Cluster(Option<Box<Cluster>>),
    Node(Option<Box<Node>>),
    Service(Option<Box<Service>>),
    Task(Option<Box<Task>>),
    Network(Option<Box<Network>>),
    Secret(Option<Box<Secret>>),
    Config(Option<Box<Config>>),
}

/// What the store needs to know about each stored message type.
pub(crate) trait Record: Clone + Debug + PartialEq {
    /// Which kind this is.
    const TAG: Tag;
    /// Whether `name()` must be unique among objects of this kind (and is indexed).
    const NAMED: bool = false;
    /// Further indexes kept by the table (only tasks have some).
    type Extra: Clone + Debug + Default + PartialEq;

    fn meta(&self) -> Option<&Meta>;
    fn meta_mut(&mut self) -> &mut Meta;
    /// The name users refer to the object by: the unique name of named kinds, the hostname of a
    /// node, "" for kinds without one.
    fn name(&self) -> &str {
        ""
    }
    fn into_object(self) -> Object;
    fn into_prev(prev: Option<Self>) -> Prev;

    /// Adds `rec` (stored under `id`) to the extra indexes.
    fn index(_extra: &mut Self::Extra, _id: &str, _rec: &Self) {}
    /// Removes `rec` (stored under `id`) from the extra indexes.
    fn unindex(_extra: &mut Self::Extra, _id: &str, _rec: &Self) {}
    /// Moves `id` in the extra indexes from where `old` had it to where `new` has it.
    fn reindex(extra: &mut Self::Extra, id: &str, old: &Self, new: &Self) {
        Self::unindex(extra, id, old);
        Self::index(extra, id, new);
    }

    fn id(&self) -> &str {
        self.meta().map_or("", |m| m.id.as_str())
    }
    fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }
    /// How messages refer to the object: its name when it has one, else its id.
    fn label(&self) -> &str {
        match self.name() {
            "" => self.id(),
            name => name,
        }
    }
}

macro_rules! record {
    ($ty:ident, named: $named:expr, name: |$s:ident| $name:expr) => {
        impl Record for $ty {
            const TAG: Tag = Tag::$ty;
            const NAMED: bool = $named;
            type Extra = ();

            fn meta(&self) -> Option<&Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut Meta {
                self.meta.get_or_insert_with(Meta::default)
            }
            fn name(&self) -> &str {
                let $s = self;
                $name
            }
            fn into_object(self) -> Object {
                Object { kind: Some(object::Kind::$ty(self)) }
            }
            fn into_prev(prev: Option<Self>) -> Prev {
                Prev::$ty(prev.map(Box::new))
            }
        }
    };
}

/// The unique name of a named kind: its `spec.annotations.name`.
macro_rules! spec_name {
    ($s:ident) => {
        $s.spec.as_ref().and_then(|spec| spec.annotations.as_ref()).map_or("", |a| a.name.as_str())
    };
}

record!(Cluster, named: false, name: |c| c.name.as_str());
record!(Node, named: false, name: |n| n.description.as_ref().map_or("", |d| d.hostname.as_str()));
record!(Service, named: true, name: |s| spec_name!(s));
record!(Network, named: true, name: |s| spec_name!(s));
record!(Secret, named: true, name: |s| spec_name!(s));
record!(Config, named: true, name: |s| spec_name!(s));

/// Secondary indexes over tasks. Sets are never left empty, so two tables holding the same tasks
/// have equal indexes whatever the history.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TaskIndex {
    /// service id -> task ids.
    pub(crate) by_service: BTreeMap<String, BTreeSet<String>>,
    /// node id -> task ids; tasks without a node are under "" (see `Store::unassigned_tasks`).
    pub(crate) by_node: BTreeMap<String, BTreeSet<String>>,
    /// (service id, slot) -> task ids.
    pub(crate) by_slot: BTreeMap<(String, u64), BTreeSet<String>>,
    /// service id -> tasks desired `RUNNING`, and of those the ones observed `RUNNING` (for
    /// `service ls` without walking the tasks). Services with none are absent.
    pub(crate) counts: BTreeMap<String, TaskCounts>,
}

/// How many of a service's tasks are wanted, and running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Desired state `RUNNING` (or `READY`: about to start).
    pub desired: u64,
    /// Desired `RUNNING` and observed `RUNNING`.
    pub running: u64,
}

fn counted(t: &Task) -> (u64, u64) {
    // A stop-first update's new task (desired READY) counts: it holds its slot.
    use shoal_api::v1::TaskState;
    let desired = (TaskState::Ready as i32..=TaskState::Running as i32).contains(&t.desired_state);
    let running = desired && t.status.as_ref().is_some_and(|s| s.state == shoal_api::v1::TaskState::Running as i32);
    (u64::from(desired), u64::from(running))
}

fn add<K: Ord>(map: &mut BTreeMap<K, BTreeSet<String>>, key: K, id: &str) {
    map.entry(key).or_default().insert(id.to_owned());
}

fn remove<K: Ord>(map: &mut BTreeMap<K, BTreeSet<String>>, key: &K, id: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl Record for Task {
    const TAG: Tag = Tag::Task;
    type Extra = TaskIndex;

    fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }
    fn meta_mut(&mut self) -> &mut Meta {
        self.meta.get_or_insert_with(Meta::default)
    }
    fn into_object(self) -> Object {
        Object { kind: Some(object::Kind::Task(self)) }
    }
    fn into_prev(prev: Option<Self>) -> Prev {
        Prev::Task(prev.map(Box::new))
    }

    fn index(extra: &mut TaskIndex, id: &str, t: &Task) {
        add(&mut extra.by_service, t.service_id.clone(), id);
        add(&mut extra.by_node, t.node_id.clone(), id);
        add(&mut extra.by_slot, (t.service_id.clone(), t.slot), id);
        count_in(extra, t);
    }

    fn unindex(extra: &mut TaskIndex, id: &str, t: &Task) {
        remove(&mut extra.by_service, &t.service_id, id);
        remove(&mut extra.by_node, &t.node_id, id);
        remove(&mut extra.by_slot, &(t.service_id.clone(), t.slot), id);
        count_out(extra, t);
    }

    /// Most writes of a task (its status, its desired state) leave its service, node and slot
    /// as they were, and an assignment changes only its node: only what changed moves.
    fn reindex(extra: &mut TaskIndex, id: &str, old: &Task, new: &Task) {
        let service_moved = old.service_id != new.service_id;
        if service_moved {
            remove(&mut extra.by_service, &old.service_id, id);
            add(&mut extra.by_service, new.service_id.clone(), id);
        }
        if old.node_id != new.node_id {
            remove(&mut extra.by_node, &old.node_id, id);
            add(&mut extra.by_node, new.node_id.clone(), id);
        }
        if service_moved || old.slot != new.slot {
            remove(&mut extra.by_slot, &(old.service_id.clone(), old.slot), id);
            add(&mut extra.by_slot, (new.service_id.clone(), new.slot), id);
        }
        if service_moved || counted(old) != counted(new) {
            count_out(extra, old);
            count_in(extra, new);
        }
    }
}

fn count_in(extra: &mut TaskIndex, t: &Task) {
    let (desired, running) = counted(t);
    if desired > 0 {
        let c = extra.counts.entry(t.service_id.clone()).or_default();
        c.desired += desired;
        c.running += running;
    }
}

fn count_out(extra: &mut TaskIndex, t: &Task) {
    let (desired, running) = counted(t);
    if desired > 0 {
        if let Some(c) = extra.counts.get_mut(&t.service_id) {
            c.desired = c.desired.saturating_sub(desired);
            c.running = c.running.saturating_sub(running);
            if c.desired == 0 {
                extra.counts.remove(&t.service_id);
            }
        }
    }
}

/// All objects of one kind by id, with their indexes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Table<T: Record> {
    pub(crate) items: BTreeMap<String, T>,
    /// name -> id, for named kinds only.
    pub(crate) names: BTreeMap<String, String>,
    pub(crate) extra: T::Extra,
}

impl<T: Record> Default for Table<T> {
    fn default() -> Self {
        Table { items: BTreeMap::new(), names: BTreeMap::new(), extra: T::Extra::default() }
    }
}

impl<T: Record> Table<T> {
    pub(crate) fn get(&self, id: &str) -> Option<&T> {
        self.items.get(id)
    }

    /// The id of the object holding `name` (named kinds only).
    pub(crate) fn id_by_name(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<&T> {
        self.id_by_name(name).and_then(|id| self.items.get(id))
    }

    /// Stores `rec` under its id, replacing (and returning) what was there. The caller has made
    /// sure that a named record's name is free or already its own.
    pub(crate) fn put(&mut self, rec: T) -> Option<T> {
        if let Some(stored) = self.items.get_mut(rec.id()) {
            // Replaced in place: one search of the table, and the indexes moved only as far as
            // the record changed.
            let id = rec.id();
            if T::NAMED {
                if stored.name() != rec.name() && self.names.get(stored.name()).is_some_and(|owner| owner == id) {
                    self.names.remove(stored.name());
                }
                self.names.insert(rec.name().to_owned(), id.to_owned());
            }
            T::reindex(&mut self.extra, id, stored, &rec);
            return Some(std::mem::replace(stored, rec));
        }
        let id = rec.id().to_owned();
        if T::NAMED {
            self.names.insert(rec.name().to_owned(), id.clone());
        }
        T::index(&mut self.extra, &id, &rec);
        self.items.insert(id, rec);
        None
    }

    /// Removes and returns the object stored under `id`.
    pub(crate) fn take(&mut self, id: &str) -> Option<T> {
        let prev = self.items.remove(id)?;
        if T::NAMED && self.names.get(prev.name()).is_some_and(|owner| owner == id) {
            self.names.remove(prev.name());
        }
        T::unindex(&mut self.extra, id, &prev);
        Some(prev)
    }

    /// Puts back a previous state: `prev` under `id`, or nothing.
    pub(crate) fn restore(&mut self, id: &str, prev: Option<Box<T>>) {
        match prev {
            Some(rec) => {
                self.put(*rec);
            }
            None => {
                self.take(id);
            }
        }
    }
}
