//! Applying a committed [`Command`]: its ops in order, all or none.
//!
//! Each op that changes the store first records the previous state of the object it touches in
//! an undo log; when a later op fails, the log is replayed backwards through the same indexed
//! `put`/`take`, so objects and indexes are exactly as before. Nothing here may panic, read a
//! clock or depend on anything but the store and the command: every manager must reach the same
//! state from the same log.

use shoal_api::v1::{
    object, op, Command, CommandResult, Event, EventAction, Object, ObjectRef, Refusal as Kind, Task, TaskAssignment,
    TaskStatusUpdate,
};

use crate::record::{Prev, Record, Table, Tag};
use crate::Store;

/// Why an op was refused; becomes `CommandResult.refusal` and `.error`.
#[derive(Debug)]
struct Refusal {
    kind: Kind,
    message: String,
}

fn refuse(kind: Kind, message: String) -> Refusal {
    Refusal { kind, message }
}

fn invalid(message: String) -> Refusal {
    refuse(Kind::Invalid, message)
}

fn exists(message: String) -> Refusal {
    refuse(Kind::Exists, message)
}

fn not_found<T: Record>(id: &str) -> Refusal {
    refuse(Kind::NotFound, format!("{} \"{id}\" not found", T::TAG.name()))
}

fn conflict<T: Record>(stored: &T, read: u64) -> Refusal {
    refuse(
        Kind::Conflict,
        format!(
            "{} \"{}\" changed since it was read (version {read}, now {}): read it again and retry",
            T::TAG.name(),
            stored.label(),
            stored.version()
        ),
    )
}

/// How an object op treats an existing object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update,
    Upsert,
}

/// One undo entry: the state of `id` before an op changed it.
struct Undo {
    id: String,
    prev: Prev,
}

/// What a successful op did.
struct Done {
    action: EventAction,
    /// The object after the change, or before it for a delete.
    object: Object,
    deleted: bool,
    undo: Undo,
}

impl Store {
    /// Applies one committed command at Raft log index `version`.
    ///
    /// Atomic: when an op fails, the store is left exactly as before, the result carries `error`
    /// and `refusal` (conflict, not found, exists or invalid) and no events are
    /// returned. On success every created or updated object gets `meta.version = version` and
    /// `meta.updated_at_ms = cmd.now_ms`; created ones also get `meta.created_at_ms = cmd.now_ms`
    /// (updates keep the stored one). `result.objects` holds the stored objects in op order
    /// (deletes and tasks omitted: the leader's loops write tasks by the thousand, on every
    /// manager, and nobody waits for them back) and there is one event per op. [`Store::version`] becomes `version`
    /// even when the command fails: it was still applied as a log entry. Never panics.
    pub fn apply(&mut self, version: u64, cmd: &Command) -> (CommandResult, Vec<Event>) {
        self.version = version;
        let mut undo = Vec::with_capacity(cmd.ops.len());
        let mut objects = Vec::with_capacity(cmd.ops.len());
        let mut events = Vec::with_capacity(cmd.ops.len());
        for op in &cmd.ops {
            match self.apply_op(op, version, cmd.now_ms) {
                Ok(done) => {
                    undo.push(done.undo);
                    if !done.deleted && !matches!(done.object.kind, Some(object::Kind::Task(_))) {
                        objects.push(done.object.clone());
                    }
                    events.push(Event { action: done.action.into(), object: Some(done.object), version });
                }
                Err(refusal) => {
                    self.roll_back(undo);
                    let result = CommandResult {
                        error: refusal.message,
                        refusal: refusal.kind as i32,
                        objects: Vec::new(),
                        version,
                    };
                    return (result, Vec::new());
                }
            }
        }
        let result = CommandResult { error: String::new(), refusal: Kind::None as i32, objects, version };
        (result, events)
    }

    fn apply_op(&mut self, op: &shoal_api::v1::Op, version: u64, now_ms: i64) -> Result<Done, Refusal> {
        let Some(kind) = &op.kind else {
            return Err(invalid("empty op: it has no create, update, delete or upsert".to_owned()));
        };
        let stamp = Stamp { version, now_ms };
        match kind {
            op::Kind::Create(o) => self.write(o, Mode::Create, stamp),
            op::Kind::Update(o) => self.write(o, Mode::Update, stamp),
            op::Kind::Upsert(o) => self.write(o, Mode::Upsert, stamp),
            op::Kind::Delete(r) => self.delete(r),
            op::Kind::SetTaskStatus(u) => self.set_task_status(u, stamp),
            op::Kind::AssignTask(a) => self.assign_task(a, stamp),
        }
    }

    fn write(&mut self, o: &Object, mode: Mode, stamp: Stamp) -> Result<Done, Refusal> {
        let Some(kind) = &o.kind else {
            return Err(invalid(
                "object has no kind (cluster, node, service, task, network, secret or config)".to_owned(),
            ));
        };
        match kind {
            object::Kind::Cluster(c) => {
                // There is one cluster; a second one, whatever its id, is refused.
                if mode != Mode::Update {
                    if let Some(other) = self.clusters.items.keys().find(|id| **id != Record::id(c)) {
                        return Err(exists(format!("cluster \"{other}\" already exists: there is only one cluster")));
                    }
                }
                write_in(&mut self.clusters, c.clone(), mode, stamp)
            }
            object::Kind::Node(n) => write_in(&mut self.nodes, n.clone(), mode, stamp),
            object::Kind::Service(s) => {
                self.check_published_ports(s)?;
                write_in(&mut self.services, s.clone(), mode, stamp)
            }
            object::Kind::Task(t) => write_in(&mut self.tasks, t.clone(), mode, stamp),
            object::Kind::Network(n) => {
                self.check_network_space(n)?;
                write_in(&mut self.networks, n.clone(), mode, stamp)
            }
            object::Kind::Secret(s) => write_in(&mut self.secrets, s.clone(), mode, stamp),
            object::Kind::Config(c) => write_in(&mut self.configs, c.clone(), mode, stamp),
        }
    }

    /// No two networks share a VXLAN id or an address: a network whose VNI or subnet another
    /// one has is refused (two creates that picked the same free space at once: the second
    /// picks again).
    fn check_network_space(&self, n: &shoal_api::v1::Network) -> Result<(), Refusal> {
        let id = Record::id(n);
        let range = ipv4_range(&n.subnet);
        let ingress = n.spec.as_ref().is_some_and(|s| s.ingress);
        for other in self.networks.items.values().filter(|o| Record::id(*o) != id) {
            let name = other.spec.as_ref().and_then(|s| s.annotations.as_ref()).map_or("", |a| a.name.as_str());
            if ingress && other.spec.as_ref().is_some_and(|s| s.ingress) {
                return Err(exists(format!("network {name:?} is already the cluster's ingress network: there is one")));
            }
            if n.vni != 0 && other.vni == n.vni {
                return Err(exists(format!("network {name:?} already has VXLAN id {}", n.vni)));
            }
            if let (Some((a0, a1)), Some((b0, b1))) = (range, ipv4_range(&other.subnet)) {
                if a0 <= b1 && b0 <= a1 {
                    return Err(exists(format!("subnet {} overlaps network {name:?} ({})", n.subnet, other.subnet)));
                }
            }
        }
        Ok(())
    }

    /// No port is published twice where one would hide the other: a port published in ingress
    /// mode is taken on every node, so no other service may publish it in either mode (two
    /// host-mode ports may share a number: the scheduler keeps them on different nodes).
    /// Checked here, where two creates at once are ordered, as well as by the control API.
    fn check_published_ports(&self, s: &shoal_api::v1::Service) -> Result<(), Refusal> {
        use shoal_api::v1::port_config::PublishMode;
        let ports = |s: &shoal_api::v1::Service| -> Vec<(i32, u32, bool)> {
            s.spec
                .as_ref()
                .and_then(|sp| sp.endpoint_spec.as_ref())
                .map(|e| {
                    e.ports
                        .iter()
                        .filter(|p| p.published_port != 0)
                        .map(|p| (p.protocol, p.published_port, p.publish_mode() == PublishMode::Ingress))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mine = ports(s);
        if mine.is_empty() {
            return Ok(());
        }
        let id = Record::id(s);
        for other in self.services.items.values().filter(|o| Record::id(*o) != id) {
            for (proto, port, ingress) in ports(other) {
                if let Some(&(_, _, my_ingress)) = mine.iter().find(|(p, n, _)| *p == proto && *n == port) {
                    if ingress || my_ingress {
                        let name = Record::name(other);
                        let proto = shoal_api::v1::port_config::Protocol::try_from(proto).map_or("tcp", |p| {
                            if p == shoal_api::v1::port_config::Protocol::Udp {
                                "udp"
                            } else {
                                "tcp"
                            }
                        });
                        let how = if ingress { "on every node (ingress mode)" } else { "in host mode" };
                        return Err(exists(format!(
                            "port {port}/{proto} is already published {how} by service \"{name}\": choose another published port, or remove it from that service first"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn delete(&mut self, r: &ObjectRef) -> Result<Done, Refusal> {
        let Some(tag) = Tag::from_wire(r.kind) else {
            return Err(invalid(format!("cannot delete an object of unknown kind {}", r.kind)));
        };
        match tag {
            Tag::Cluster => delete_in(&mut self.clusters, r),
            Tag::Node => delete_in(&mut self.nodes, r),
            Tag::Service => delete_in(&mut self.services, r),
            Tag::Task => delete_in(&mut self.tasks, r),
            Tag::Network => delete_in(&mut self.networks, r),
            Tag::Secret => delete_in(&mut self.secrets, r),
            Tag::Config => delete_in(&mut self.configs, r),
        }
    }

    /// Replaces only the status of a task; its state may not move backwards.
    fn set_task_status(&mut self, u: &TaskStatusUpdate, stamp: Stamp) -> Result<Done, Refusal> {
        let Some(cur) = self.tasks.get(&u.task_id) else {
            return Err(not_found::<Task>(&u.task_id));
        };
        let Some(status) = &u.status else {
            return Err(invalid(format!("status update for task \"{}\" carries no status", u.task_id)));
        };
        let from = cur.status.as_ref().map_or(0, |s| s.state);
        if status.state < from {
            return Err(invalid(format!(
                "task \"{}\" cannot move from state {} back to {}",
                u.task_id, from, status.state
            )));
        }
        let mut next = cur.clone();
        next.status = Some(status.clone());
        write_in(&mut self.tasks, next, Mode::Upsert, stamp)
    }

    fn assign_task(&mut self, a: &TaskAssignment, stamp: Stamp) -> Result<Done, Refusal> {
        let Some(cur) = self.tasks.get(&a.task_id) else {
            return Err(not_found::<Task>(&a.task_id));
        };
        if cur.version() != a.version {
            return Err(conflict(cur, a.version));
        }
        if !cur.node_id.is_empty() {
            return Err(invalid(format!("task \"{}\" is already on node {}", a.task_id, cur.node_id)));
        }
        if a.node_id.is_empty() {
            return Err(invalid(format!("assignment of task \"{}\" names no node", a.task_id)));
        }
        let mut next = cur.clone();
        next.node_id = a.node_id.clone();
        next.status = a.status.clone();
        write_in(&mut self.tasks, next, Mode::Upsert, stamp)
    }

    /// Undoes the ops of a failed command, last first.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for Undo { id, prev } in undo.into_iter().rev() {
            match prev {
                Prev::Cluster(p) => self.clusters.restore(&id, p),
                Prev::Node(p) => self.nodes.restore(&id, p),
                Prev::Service(p) => self.services.restore(&id, p),
                Prev::Task(p) => self.tasks.restore(&id, p),
                Prev::Network(p) => self.networks.restore(&id, p),
                Prev::Secret(p) => self.secrets.restore(&id, p),
                Prev::Config(p) => self.configs.restore(&id, p),
            }
        }
    }
}

/// The log index and proposer time a command is applied with.
#[derive(Clone, Copy)]
struct Stamp {
    version: u64,
    now_ms: i64,
}

/// Creates, updates or upserts `rec` in `table`.
fn write_in<T: Record>(table: &mut Table<T>, mut rec: T, mode: Mode, stamp: Stamp) -> Result<Done, Refusal> {
    let kind = T::TAG.name();
    let id = rec.id().to_owned();
    if id.is_empty() {
        return Err(invalid(format!("{kind} has an empty id")));
    }
    if T::NAMED && rec.name().is_empty() {
        return Err(invalid(format!("{kind} \"{id}\" has an empty name")));
    }
    let stored = table.get(&id);
    match (mode, stored) {
        (Mode::Create, Some(_)) => return Err(exists(format!("{kind} \"{id}\" already exists"))),
        (Mode::Update, None) => return Err(not_found::<T>(&id)),
        (Mode::Update, Some(cur)) if cur.version() != rec.version() => return Err(conflict(cur, rec.version())),
        _ => {}
    }
    if T::NAMED {
        if let Some(owner) = table.id_by_name(rec.name()).filter(|owner| *owner != id) {
            return Err(exists(format!(
                "{kind} name \"{}\" is already used by {kind} \"{owner}\": choose another name",
                rec.name()
            )));
        }
    }
    let (action, created_at_ms) = match stored {
        Some(cur) => (EventAction::Update, cur.meta().map_or(stamp.now_ms, |m| m.created_at_ms)),
        None => (EventAction::Create, stamp.now_ms),
    };
    let meta = rec.meta_mut();
    meta.version = stamp.version;
    meta.created_at_ms = created_at_ms;
    meta.updated_at_ms = stamp.now_ms;
    let prev = table.put(rec.clone());
    Ok(Done { action, object: rec.into_object(), deleted: false, undo: Undo { id, prev: T::into_prev(prev) } })
}

/// Deletes the object `r` names from `table`.
fn delete_in<T: Record>(table: &mut Table<T>, r: &ObjectRef) -> Result<Done, Refusal> {
    if r.id.is_empty() {
        return Err(invalid(format!("cannot delete a {} with an empty id", T::TAG.name())));
    }
    let Some(cur) = table.get(&r.id) else {
        return Err(not_found::<T>(&r.id));
    };
    if r.version != 0 && r.version != cur.version() {
        return Err(conflict(cur, r.version));
    }
    let Some(prev) = table.take(&r.id) else {
        return Err(not_found::<T>(&r.id));
    };
    Ok(Done {
        action: EventAction::Delete,
        object: prev.clone().into_object(),
        deleted: true,
        undo: Undo { id: r.id.clone(), prev: T::into_prev(Some(prev)) },
    })
}

/// The first and last address of an IPv4 network in CIDR notation (`None`: not one).
fn ipv4_range(cidr: &str) -> Option<(u32, u32)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr = u32::from(addr.parse::<std::net::Ipv4Addr>().ok()?);
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let host = if len == 0 { u32::MAX } else { (1u32 << (32 - len)).wrapping_sub(1) };
    Some((addr & !host, addr | host))
}

#[cfg(test)]
mod status_tests {
    use shoal_api::v1::{op, Command, Meta, Object, Op, Task, TaskAssignment, TaskState, TaskStatus, TaskStatusUpdate};

    use crate::Store;

    fn task(id: &str) -> Object {
        Task {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            desired_state: TaskState::Running as i32,
            ..Default::default()
        }
        .into()
    }

    fn status(id: &str, state: TaskState) -> Op {
        Op {
            kind: Some(op::Kind::SetTaskStatus(TaskStatusUpdate {
                task_id: id.into(),
                status: Some(TaskStatus { state: state as i32, message: "m".into(), ..Default::default() }),
            })),
        }
    }

    #[test]
    fn status_moves_forward_only_and_keeps_the_rest_of_the_task() {
        let mut s = Store::new();
        let (r, _) = s.apply(1, &Command { now_ms: 1, ops: vec![Op { kind: Some(op::Kind::Create(task("t1"))) }] });
        assert!(r.error.is_empty(), "{}", r.error);
        let (r, ev) = s.apply(2, &Command { now_ms: 2, ops: vec![status("t1", TaskState::Running)] });
        assert!(r.error.is_empty(), "{}", r.error);
        assert_eq!(ev.len(), 1);
        let t = s.task("t1").cloned().unwrap_or_default();
        assert_eq!(t.status.as_ref().map(|s| s.state()), Some(TaskState::Running));
        assert_eq!(t.desired_state(), TaskState::Running);
        assert_eq!(t.meta.as_ref().map(|m| m.version), Some(2));

        let (r, ev) = s.apply(3, &Command { now_ms: 3, ops: vec![status("t1", TaskState::Starting)] });
        assert_eq!(r.refusal(), shoal_api::v1::Refusal::Invalid, "{}", r.error);
        assert!(ev.is_empty());
        let (r, _) = s.apply(4, &Command { now_ms: 4, ops: vec![status("nope", TaskState::Running)] });
        assert_eq!(r.refusal(), shoal_api::v1::Refusal::NotFound);
    }

    /// A command's result gives back the objects it stored, tasks left out (every manager
    /// writes them by the thousand and nobody waits for them back); its events carry them all.
    #[test]
    fn the_result_gives_back_stored_objects_but_tasks() {
        let mut s = Store::new();
        let config = Object {
            kind: Some(shoal_api::v1::object::Kind::Config(shoal_api::v1::Config {
                meta: Some(Meta { id: "c1".into(), ..Default::default() }),
                spec: Some(shoal_api::v1::ConfigSpec {
                    annotations: Some(shoal_api::v1::Annotations { name: "app".into(), ..Default::default() }),
                    ..Default::default()
                }),
            })),
        };
        let ops = vec![
            Op { kind: Some(op::Kind::Create(task("t1"))) },
            Op { kind: Some(op::Kind::Create(config)) },
            status("t1", TaskState::Running),
        ];
        let (r, ev) = s.apply(1, &Command { now_ms: 1, ops });
        assert!(r.error.is_empty(), "{}", r.error);
        assert_eq!(ev.len(), 3);
        let ids: Vec<&str> = r
            .objects
            .iter()
            .filter_map(|o| match &o.kind {
                Some(shoal_api::v1::object::Kind::Config(c)) => c.meta.as_ref().map(|m| m.id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!((r.objects.len(), ids), (1, vec!["c1"]));
    }

    #[test]
    fn an_assignment_sets_node_and_status_once_and_checks_the_version() {
        let assign = |version: u64, node: &str| Op {
            kind: Some(op::Kind::AssignTask(TaskAssignment {
                task_id: "t1".into(),
                version,
                node_id: node.into(),
                status: Some(TaskStatus { state: TaskState::Assigned as i32, ..Default::default() }),
            })),
        };
        let mut s = Store::new();
        let (r, _) = s.apply(1, &Command { now_ms: 1, ops: vec![Op { kind: Some(op::Kind::Create(task("t1"))) }] });
        assert!(r.error.is_empty(), "{}", r.error);
        let (r, _) = s.apply(2, &Command { now_ms: 2, ops: vec![assign(7, "n1")] });
        assert_eq!(r.refusal(), shoal_api::v1::Refusal::Conflict, "a stale version: {}", r.error);
        let (r, ev) = s.apply(3, &Command { now_ms: 3, ops: vec![assign(1, "n1")] });
        assert!(r.error.is_empty(), "{}", r.error);
        assert_eq!(ev.len(), 1, "one event, with the whole task");
        let t = s.task("t1").cloned().unwrap_or_default();
        assert_eq!((t.node_id.as_str(), t.status.as_ref().map(|s| s.state())), ("n1", Some(TaskState::Assigned)));
        assert_eq!(s.tasks_by_node("n1").count(), 1, "indexed under its node");
        assert_eq!(s.unassigned_tasks().count(), 0);
        let (r, _) = s.apply(4, &Command { now_ms: 4, ops: vec![assign(3, "n2")] });
        assert_eq!(r.refusal(), shoal_api::v1::Refusal::Invalid, "never moved to another node: {}", r.error);
        let (r, _) = s.apply(
            5,
            &Command {
                now_ms: 5,
                ops: vec![Op {
                    kind: Some(op::Kind::AssignTask(TaskAssignment { task_id: "nope".into(), ..Default::default() })),
                }],
            },
        );
        assert_eq!(r.refusal(), shoal_api::v1::Refusal::NotFound);
    }
}

#[cfg(test)]
mod port_tests {
    use shoal_api::v1::port_config::{Protocol, PublishMode};
    use shoal_api::v1::{
        op, Annotations, Command, EndpointSpec, Meta, Object, Op, PortConfig, Refusal, Service, ServiceSpec,
    };

    use crate::Store;

    fn svc(id: &str, ports: &[(u32, Protocol, PublishMode)]) -> Op {
        let s = Service {
            meta: Some(Meta { id: id.into(), ..Default::default() }),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations { name: format!("{id}-name"), ..Default::default() }),
                endpoint_spec: Some(EndpointSpec {
                    ports: ports
                        .iter()
                        .map(|(n, p, m)| PortConfig {
                            protocol: *p as i32,
                            target_port: 80,
                            published_port: *n,
                            publish_mode: *m as i32,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Op { kind: Some(op::Kind::Upsert(Object::from(s))) }
    }

    #[test]
    fn a_port_published_in_ingress_mode_is_taken_on_every_node() {
        use {Protocol::*, PublishMode::*};
        let mut s = Store::new();
        let mut version = 0;
        let mut apply = |op: Op| {
            version += 1;
            s.apply(version, &Command { now_ms: 1, ops: vec![op] }).0
        };
        assert!(apply(svc("a", &[(8080, Tcp, Ingress)])).error.is_empty());
        let r = apply(svc("b", &[(8080, Tcp, Ingress)]));
        assert_eq!(r.refusal(), Refusal::Exists);
        assert!(
            r.error.contains("port 8080/tcp is already published on every node (ingress mode) by service \"a-name\""),
            "{}",
            r.error
        );
        let r = apply(svc("b", &[(8080, Tcp, Host)]));
        assert_eq!(r.refusal(), Refusal::Exists, "a host-mode port is hidden by an ingress one: {}", r.error);
        assert!(apply(svc("b", &[(8080, Udp, Ingress)])).error.is_empty(), "another protocol is another port");
        assert!(apply(svc("c", &[(9090, Tcp, Host)])).error.is_empty());
        assert!(apply(svc("d", &[(9090, Tcp, Host)])).error.is_empty(), "host-mode ports may share a number");
        let r = apply(svc("e", &[(9090, Tcp, Ingress)]));
        assert!(r.error.contains("already published in host mode by service"), "{}", r.error);
        assert!(apply(svc("a", &[(8080, Tcp, Ingress), (8081, Tcp, Ingress)])).error.is_empty(), "its own port");
    }
}
