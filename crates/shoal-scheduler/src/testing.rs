//! Test support, behind the `testing` feature (and always in this crate's own tests): a store
//! driven through real commands, builders for nodes, services and tasks with readable defaults,
//! and one-line summaries of ops for data-driven tests (`input store -> expected ops`).
//!
//! It panics on misuse (a command the store refuses, an unknown id) because a test should stop
//! right there. Never enable it outside tests.

use std::collections::BTreeMap;

use shoal_api::names;
use shoal_api::v1::{
    object, op, port_config, restart_policy, service_spec, Annotations, Cluster, Command, CommandResult, ContainerSpec,
    EndpointSpec, GlobalService, Meta, Node, NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState,
    NodeStatus, Object, ObjectKind, ObjectRef, Op, Placement, PlacementPreference, Platform, PortConfig, ReplicatedJob,
    ReplicatedService, ResourceRequirements, Resources, RestartPolicy, Service, ServiceSpec, Task, TaskSpec, TaskState,
    TaskStatus,
};
use shoal_store::Store;

/// One GiB, for memory amounts.
pub const GIB: i64 = 1 << 30;
/// One cpu, in nano cpus.
pub const CPU: i64 = 1_000_000_000;

/// A store and the Raft index of the next command, driven only through [`Store::apply`].
#[derive(Debug, Clone)]
pub struct World {
    /// The store as the commands left it.
    pub store: Store,
    /// `now_ms` of the commands this world applies.
    pub now_ms: i64,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// A store holding a cluster object with the default settings.
    pub fn new() -> Self {
        let mut w = World { store: Store::new(), now_ms: 1_000 };
        w.add(Cluster {
            meta: Some(meta("cluster")),
            name: "default".to_owned(),
            settings: Some(shoal_api::defaults::cluster_settings()),
            ..Cluster::default()
        });
        w
    }

    /// Applies `ops` as the next command and returns the result, refused or not.
    pub fn try_apply(&mut self, ops: Vec<Op>) -> CommandResult {
        let cmd = Command { now_ms: self.now_ms, ops };
        self.store.apply(self.store.version() + 1, &cmd).0
    }

    /// Applies `ops` as the next command; panics when the store refuses it.
    pub fn apply(&mut self, ops: Vec<Op>) {
        let summary = describe(&ops);
        let result = self.try_apply(ops);
        assert!(
            result.error.is_empty(),
            "command refused ({}): {}\nops: {summary:#?}",
            shoal_api::names::refusal(result.refusal()),
            result.error
        );
    }

    /// Creates `obj`.
    pub fn add(&mut self, obj: impl Into<Object>) {
        self.apply(vec![create(obj)]);
    }

    /// Creates every one of `objs` in one command.
    pub fn add_all<O: Into<Object>>(&mut self, objs: impl IntoIterator<Item = O>) {
        self.apply(objs.into_iter().map(create).collect());
    }

    /// Updates node `id` with `f` (at the version read).
    pub fn edit_node(&mut self, id: &str, f: impl FnOnce(&mut Node)) {
        let mut n = self.store.node(id).cloned().unwrap_or_else(|| panic!("no node {id}"));
        f(&mut n);
        self.apply(vec![update(n)]);
    }

    /// Updates service `id` with `f` (at the version read).
    pub fn edit_service(&mut self, id: &str, f: impl FnOnce(&mut Service)) {
        let mut s = self.store.service(id).cloned().unwrap_or_else(|| panic!("no service {id}"));
        f(&mut s);
        self.apply(vec![update(s)]);
    }

    /// Updates task `id` with `f` (at the version read).
    pub fn edit_task(&mut self, id: &str, f: impl FnOnce(&mut Task)) {
        let mut t = self.store.task(id).cloned().unwrap_or_else(|| panic!("no task {id}"));
        f(&mut t);
        self.apply(vec![update(t)]);
    }

    /// Updates the cluster object with `f`.
    pub fn edit_cluster(&mut self, f: impl FnOnce(&mut Cluster)) {
        let mut c = self.store.cluster().cloned().unwrap_or_else(|| panic!("no cluster"));
        f(&mut c);
        self.apply(vec![update(c)]);
    }

    /// Deletes the object of `kind` with id `id`.
    pub fn remove(&mut self, kind: ObjectKind, id: &str) {
        self.apply(vec![Op {
            kind: Some(op::Kind::Delete(ObjectRef { kind: kind as i32, id: id.to_owned(), version: 0 })),
        }]);
    }
}

fn meta(id: &str) -> Meta {
    Meta { id: id.to_owned(), ..Meta::default() }
}

/// A create op.
pub fn create(obj: impl Into<Object>) -> Op {
    Op { kind: Some(op::Kind::Create(obj.into())) }
}

/// An update op (carrying whatever version `obj` holds).
pub fn update(obj: impl Into<Object>) -> Op {
    Op { kind: Some(op::Kind::Update(obj.into())) }
}

/// A worker named `id` (hostname too): `READY`, `ACTIVE`, linux/amd64, 4 cpus and 4 GiB.
pub fn node(id: &str) -> Node {
    Node {
        meta: Some(meta(id)),
        spec: Some(NodeSpec { annotations: Some(Annotations::default()), ..NodeSpec::default() }),
        description: Some(NodeDescription {
            hostname: id.to_owned(),
            platform: Some(Platform { os: "linux".to_owned(), architecture: "amd64".to_owned() }),
            resources: Some(Resources { nano_cpus: 4 * CPU, memory_bytes: 4 * GIB, pids: 0 }),
            version: String::new(),
            runtime_unavailable: String::new(),
            host_networks: Vec::new(),
        }),
        status: Some(NodeStatus { state: NodeState::Ready as i32, ..NodeStatus::default() }),
        role: NodeRole::Worker as i32,
        raft_id: 0,
        ingress_address: String::new(),
    }
}

/// Builder-style changes to a [`node`].
pub trait NodeExt: Sized {
    /// Sets the node's state (`READY`, `DOWN`, ...).
    fn state(self, s: NodeState) -> Self;
    /// Sets the availability (`ACTIVE`, `PAUSE`, `DRAIN`).
    fn availability(self, a: NodeAvailability) -> Self;
    /// Adds an operator label.
    fn label(self, key: &str, value: &str) -> Self;
    /// Sets the reported resources.
    fn resources(self, nano_cpus: i64, memory_bytes: i64) -> Self;
    /// Sets the current role.
    fn role(self, r: NodeRole) -> Self;
    /// Sets the reported platform.
    fn platform(self, os: &str, arch: &str) -> Self;
    /// Marks the node as unable to run tasks, for `reason`.
    fn no_runtime(self, reason: &str) -> Self;
}

impl NodeExt for Node {
    fn state(mut self, s: NodeState) -> Self {
        self.status.get_or_insert_with(NodeStatus::default).state = s as i32;
        self
    }
    fn availability(mut self, a: NodeAvailability) -> Self {
        self.spec.get_or_insert_with(NodeSpec::default).availability = a as i32;
        self
    }
    fn label(mut self, key: &str, value: &str) -> Self {
        let spec = self.spec.get_or_insert_with(NodeSpec::default);
        let ann = spec.annotations.get_or_insert_with(Annotations::default);
        ann.labels.insert(key.to_owned(), value.to_owned());
        self
    }
    fn resources(mut self, nano_cpus: i64, memory_bytes: i64) -> Self {
        let d = self.description.get_or_insert_with(NodeDescription::default);
        d.resources = Some(Resources { nano_cpus, memory_bytes, pids: 0 });
        self
    }
    fn role(mut self, r: NodeRole) -> Self {
        self.role = r as i32;
        self
    }
    fn platform(mut self, os: &str, arch: &str) -> Self {
        let d = self.description.get_or_insert_with(NodeDescription::default);
        d.platform = Some(Platform { os: os.to_owned(), architecture: arch.to_owned() });
        self
    }
    fn no_runtime(mut self, reason: &str) -> Self {
        self.description.get_or_insert_with(NodeDescription::default).runtime_unavailable = reason.to_owned();
        self
    }
}

fn service(id: &str, mode: service_spec::Mode) -> Service {
    Service {
        meta: Some(meta(id)),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations { name: id.to_owned(), labels: BTreeMap::new() }),
            task_template: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "registry:5000/busybox:1".to_owned(),
                    ..ContainerSpec::default()
                }),
                ..TaskSpec::default()
            }),
            mode: Some(mode),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A replicated service whose id and name are both `id`.
pub fn replicated(id: &str, replicas: u64) -> Service {
    service(id, service_spec::Mode::Replicated(ReplicatedService { replicas }))
}

/// A global service whose id and name are both `id`.
pub fn global(id: &str) -> Service {
    service(id, service_spec::Mode::Global(GlobalService {}))
}

/// A replicated job whose id and name are both `id`.
pub fn replicated_job(id: &str, total: u64) -> Service {
    service(id, service_spec::Mode::ReplicatedJob(ReplicatedJob { max_concurrent: total, total_completions: total }))
}

/// Builder-style changes to a service's spec.
pub trait ServiceExt: Sized {
    /// The task template, for changes the other methods do not cover.
    fn template(&mut self) -> &mut TaskSpec;
    /// Sets the replica count (replicated services).
    fn replicas(self, n: u64) -> Self;
    /// Adds a placement constraint.
    fn constraint(self, expr: &str) -> Self;
    /// Adds a spread preference over node label `label`.
    fn spread(self, label: &str) -> Self;
    /// Sets max replicas per node.
    fn max_per_node(self, n: u64) -> Self;
    /// Adds a supported platform.
    fn platform(self, os: &str, arch: &str) -> Self;
    /// Sets the reservations of every task.
    fn reserve(self, nano_cpus: i64, memory_bytes: i64) -> Self;
    /// Publishes `port`/tcp in host mode.
    fn host_port(self, port: u32) -> Self;
    /// Sets the restart policy.
    fn restart(
        self,
        condition: restart_policy::Condition,
        delay_ms: Option<i64>,
        max_attempts: u64,
        window_ms: i64,
    ) -> Self;
}

impl ServiceExt for Service {
    fn template(&mut self) -> &mut TaskSpec {
        self.spec.get_or_insert_with(ServiceSpec::default).task_template.get_or_insert_with(TaskSpec::default)
    }
    fn replicas(mut self, n: u64) -> Self {
        self.spec.get_or_insert_with(ServiceSpec::default).mode =
            Some(service_spec::Mode::Replicated(ReplicatedService { replicas: n }));
        self
    }
    fn constraint(mut self, expr: &str) -> Self {
        let p = self.template().placement.get_or_insert_with(Placement::default);
        p.constraints.push(expr.to_owned());
        self
    }
    fn spread(mut self, label: &str) -> Self {
        let p = self.template().placement.get_or_insert_with(Placement::default);
        p.preferences.push(PlacementPreference { spread: format!("node.labels.{label}") });
        self
    }
    fn max_per_node(mut self, n: u64) -> Self {
        let p = self.template().placement.get_or_insert_with(Placement::default);
        p.max_replicas_per_node = n;
        self
    }
    fn platform(mut self, os: &str, arch: &str) -> Self {
        let p = self.template().placement.get_or_insert_with(Placement::default);
        p.platforms.push(Platform { os: os.to_owned(), architecture: arch.to_owned() });
        self
    }
    fn reserve(mut self, nano_cpus: i64, memory_bytes: i64) -> Self {
        self.template().resources = Some(ResourceRequirements {
            limits: None,
            reservations: Some(Resources { nano_cpus, memory_bytes, pids: 0 }),
        });
        self
    }
    fn host_port(mut self, port: u32) -> Self {
        let spec = self.spec.get_or_insert_with(ServiceSpec::default);
        let e = spec.endpoint_spec.get_or_insert_with(EndpointSpec::default);
        e.ports.push(PortConfig {
            name: String::new(),
            protocol: port_config::Protocol::Tcp as i32,
            target_port: port,
            published_port: port,
            publish_mode: port_config::PublishMode::Host as i32,
            traffic: port_config::Traffic::Cluster as i32,
        });
        self
    }
    fn restart(
        mut self,
        condition: restart_policy::Condition,
        delay_ms: Option<i64>,
        max_attempts: u64,
        window_ms: i64,
    ) -> Self {
        self.template().restart_policy =
            Some(RestartPolicy { condition: condition as i32, delay_ms, max_attempts, window_ms });
        self
    }
}

/// A task of `service` in `slot` (0 for global), named like the orchestrator names them, with the
/// service's template: desired `RUNNING`, `PENDING` since time 0, no node.
pub fn task(id: &str, service: &Service, slot: u64) -> Task {
    let name = service.spec.as_ref().and_then(|s| s.annotations.as_ref()).map_or("", |a| a.name.as_str());
    Task {
        meta: Some(meta(id)),
        service_id: service.meta.as_ref().map_or("", |m| m.id.as_str()).to_owned(),
        slot,
        node_id: String::new(),
        spec: service.spec.as_ref().and_then(|s| s.task_template.clone()),
        spec_version: service.meta.as_ref().map_or(0, |m| m.version),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus { state: TaskState::Pending as i32, ..TaskStatus::default() }),
        annotations: Some(Annotations { name: format!("{name}.{slot}"), labels: BTreeMap::new() }),
        networks: Vec::new(),
        host_ports: Vec::new(),
    }
}

/// Builder-style changes to a [`task`].
pub trait TaskExt: Sized {
    /// Puts the task on node `node_id` (and names it after the node when its slot is 0).
    fn on(self, node_id: &str) -> Self;
    /// Sets the observed state and when it was reached.
    fn state(self, s: TaskState, timestamp_ms: i64) -> Self;
    /// Sets the desired state.
    fn desired(self, s: TaskState) -> Self;
}

impl TaskExt for Task {
    fn on(mut self, node_id: &str) -> Self {
        self.node_id = node_id.to_owned();
        if self.slot == 0 {
            if let Some(a) = self.annotations.as_mut() {
                if let Some((service, _)) = a.name.rsplit_once('.') {
                    a.name = format!("{service}.{node_id}");
                }
            }
        }
        self
    }
    fn state(mut self, s: TaskState, timestamp_ms: i64) -> Self {
        let status = self.status.get_or_insert_with(TaskStatus::default);
        status.state = s as i32;
        status.timestamp_ms = timestamp_ms;
        self
    }
    fn desired(mut self, s: TaskState) -> Self {
        self.desired_state = s as i32;
        self
    }
}

/// The lower-case name of a task state number (the number itself when unknown).
pub fn state_name(n: i32) -> String {
    TaskState::try_from(n).map_or_else(|_| n.to_string(), |s| names::task_state(s).to_owned())
}

fn describe_task(t: &Task) -> String {
    let node = if t.node_id.is_empty() { "-" } else { t.node_id.as_str() };
    let state = state_name(t.status.as_ref().map_or(0, |s| s.state));
    format!("node={node} desired={} state={state}", state_name(t.desired_state))
}

/// One line per op, for data-driven tests:
/// - `create web.3 node=- desired=running state=pending` (tasks are shown by name),
/// - `update t1 node=n1 desired=shutdown state=orphaned` (by id),
/// - `delete task t1`;
///
/// other objects are shown as `create service web`, `update node n1`.
pub fn describe(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|o| match &o.kind {
            Some(op::Kind::Create(obj)) => match &obj.kind {
                Some(object::Kind::Task(t)) => {
                    let name = t.annotations.as_ref().map_or("", |a| a.name.as_str());
                    format!("create {name} {}", describe_task(t))
                }
                _ => format!("create {}", describe_object(obj)),
            },
            Some(op::Kind::Update(obj)) => match &obj.kind {
                Some(object::Kind::Task(t)) => format!("update {} {}", obj.id(), describe_task(t)),
                _ => format!("update {}", describe_object(obj)),
            },
            Some(op::Kind::Upsert(obj)) => format!("upsert {}", describe_object(obj)),
            Some(op::Kind::AssignTask(a)) => {
                let state = a.status.as_ref().map_or(0, |s| s.state);
                format!("assign {} node={} state={}", a.task_id, a.node_id, state_name(state))
            }
            Some(op::Kind::Delete(r)) => {
                let kind = ObjectKind::try_from(r.kind).unwrap_or(ObjectKind::Unspecified);
                format!("delete {} {}", shoal_api::objects::kind_name(kind), r.id)
            }
            None => "empty op".to_owned(),
            // Kinds this crate never emits (e.g. agents' status reports) are shown raw, so new
            // op kinds do not break the tests of other crates.
            #[allow(unreachable_patterns)]
            Some(other) => format!("{other:?}"),
        })
        .collect()
}

fn describe_object(obj: &Object) -> String {
    format!("{} {}", shoal_api::objects::kind_name(obj.object_kind()), obj.id())
}
