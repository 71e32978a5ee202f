//! Rolling updates and rollbacks of replicated services, level-triggered like the rest: every
//! decision is read from the store and the time, nothing is remembered between passes.
//!
//! A task is *up to date* when it is what the service would create now (its task spec, its
//! host-mode ports, whether it joins the ingress network); only slots whose task is not are
//! replaced, so an update changes nothing else. The control API starts an update (state
//! `UPDATING`) when a spec change reaches the tasks, and a rollback (`ROLLBACK_STARTED`, the
//! previous spec back in place) when asked; this module moves it on:
//! - at most `parallelism` slots are in flight at once (0: all): a slot is in flight from the
//!   moment its new task is created until it has been running for `delay`;
//! - `stop-first` retires the old task as the new one is created with desired state `READY`:
//!   placed, pulled and created meanwhile, it starts once the old one has stopped (left every
//!   VIP, then its stop signal and grace period), so the two never run at once; `start-first`
//!   keeps the old one until the new one runs;
//! - a new task that ends (other than being shut down, or its node lost) during the update is a
//!   failure; more failures than `max_failure_ratio` of the replicas trigger the failure action:
//!   `pause` (`PAUSED`, resumed by the next `service update`), `rollback` (the previous spec back,
//!   `ROLLBACK_STARTED`, then moved on with the rollback config), or `continue`. A failing
//!   rollback pauses (`ROLLBACK_PAUSED`);
//! - the update is `COMPLETED` (`ROLLBACK_COMPLETED`) once every slot runs an up-to-date task and
//!   the last one has been running for `monitor` (5 s unless set).
//!
//! Failures are counted over the whole update, not per task's own monitor window as Swarm does:
//! a new task that fails at any time before the update completes counts.

use shoal_api::v1::{
    port_config::PublishMode, update_config::FailureAction, update_status::State, PortConfig, Service, Task, TaskSpec,
    TaskState, UpdateConfig, UpdateStatus,
};
use shoal_scheduler::task;

use crate::clock::Clock;
use crate::work::{Id, Tasks};
use shoal_store::Store;

/// How long a new task must run before an update counts it done, unless the config says.
pub const DEFAULT_MONITOR_MS: i64 = 5_000;

/// The host-mode ports a task of a service with `spec` publishes.
pub(crate) fn host_ports(spec: Option<&shoal_api::v1::ServiceSpec>) -> Vec<PortConfig> {
    spec.and_then(|s| s.endpoint_spec.as_ref())
        .map(|e| {
            e.ports.iter().filter(|p| p.publish_mode() == PublishMode::Host && p.published_port > 0).cloned().collect()
        })
        .unwrap_or_default()
}

/// Whether going from spec `old` to `new` changes what the service's tasks are made of (their
/// spec, host-mode ports, joining the ingress network): then running tasks are out of date.
pub fn spec_reaches_tasks(old: &shoal_api::v1::ServiceSpec, new: &shoal_api::v1::ServiceSpec) -> bool {
    old.task_template != new.task_template
        || host_ports(Some(old)) != host_ports(Some(new))
        || old.joins_ingress() != new.joins_ingress()
}

/// The ingress network's id, when a task of a service with `spec` joins it.
pub(crate) fn ingress_of<'s>(store: &'s Store, spec: Option<&shoal_api::v1::ServiceSpec>) -> Option<&'s str> {
    spec.filter(|s| s.joins_ingress())?;
    store.ingress_network()?.meta.as_ref().map(|m| m.id.as_str())
}

/// What a task of the service would be made of now.
pub(crate) struct Want<'a> {
    template: Option<&'a TaskSpec>,
    host_ports: Vec<PortConfig>,
    ingress: Option<&'a str>,
}

impl<'a> Want<'a> {
    pub(crate) fn of(store: &'a Store, service: &'a Service) -> Want<'a> {
        let spec = service.spec.as_ref();
        Want {
            template: spec.and_then(|s| s.task_template.as_ref()),
            host_ports: host_ports(spec),
            ingress: ingress_of(store, spec),
        }
    }

    /// Whether `t` is as the service would create it now.
    pub(crate) fn up_to_date(&self, t: &Task) -> bool {
        let joined = self.ingress.is_some_and(|id| t.networks.iter().any(|a| a.network_id == id));
        t.spec.as_ref() == self.template && t.host_ports == self.host_ports && joined == self.ingress.is_some()
    }
}

/// A rolling update (or rollback) in progress.
#[derive(Debug, Clone)]
pub(crate) struct Rolling {
    pub(crate) rollback: bool,
    pub(crate) config: UpdateConfig,
    pub(crate) started_at_ms: i64,
}

impl Rolling {
    /// The update the service is in, if it is moving (not paused, not done).
    pub(crate) fn of(service: &Service) -> Option<Rolling> {
        let status = service.update_status.as_ref()?;
        let spec = service.spec.as_ref();
        let (rollback, config) = match status.state() {
            State::Updating => (false, spec.and_then(|s| s.update_config)),
            State::RollbackStarted => (true, spec.and_then(|s| s.rollback_config)),
            _ => return None,
        };
        Some(Rolling {
            rollback,
            config: config.unwrap_or(UpdateConfig { parallelism: 1, ..Default::default() }),
            started_at_ms: status.started_at_ms,
        })
    }

    /// How long a new task must have run before its slot is no longer in flight: the minimum
    /// healthy time, then the delay.
    pub(crate) fn settle_ms(&self) -> i64 {
        self.config.min_healthy_ms.max(0).saturating_add(self.config.delay_ms.max(0))
    }

    /// Whether the new task `t`, not running yet, is past its startup deadline now.
    pub(crate) fn late(&self, t: &Task, clock: &Clock) -> bool {
        let created = t.meta.as_ref().map_or(clock.now(), |m| m.created_at_ms);
        self.config.startup_deadline_ms > 0
            && created >= self.started_at_ms
            && running_since(t).is_none()
            && task::is_runnable(t)
            && clock.reached(created.saturating_add(self.config.startup_deadline_ms).saturating_add(1))
    }

    pub(crate) fn monitor_ms(&self) -> i64 {
        self.config.monitor_ms.unwrap_or(DEFAULT_MONITOR_MS).max(0)
    }

    /// How many more slots may start now, with `in_flight` under way.
    pub(crate) fn budget(&self, in_flight: usize) -> usize {
        match usize::try_from(self.config.parallelism).unwrap_or(usize::MAX) {
            0 => usize::MAX,
            p => p.saturating_sub(in_flight),
        }
    }

    pub(crate) fn start_first(&self) -> bool {
        self.config.order() == shoal_api::v1::update_config::Order::StartFirst
    }
}

/// Whether `t`, an up-to-date task of the update, ended in a way that counts against it: it
/// stopped on its own or could not start (not shut down by the cluster, not lost with its node).
pub(crate) fn failed(t: &Task, rolling: &Rolling) -> bool {
    let state = task::observed(t);
    let created = t.meta.as_ref().map_or(0, |m| m.created_at_ms);
    created >= rolling.started_at_ms
        && state > TaskState::Running as i32
        && state != TaskState::Shutdown as i32
        && state != TaskState::Orphaned as i32
        && state != TaskState::Remove as i32
}

/// What a failed task tells: `task web.3 failed: exit status 1`.
pub(crate) fn describe_failure(t: &Task) -> String {
    let name = t.annotations.as_ref().map_or("", |a| a.name.as_str());
    let state = shoal_api::names::task_state(TaskState::try_from(task::observed(t)).unwrap_or(TaskState::Failed));
    let why =
        t.status.as_ref().map(|s| if s.err.is_empty() { s.message.as_str() } else { s.err.as_str() }).unwrap_or("");
    if why.is_empty() {
        format!("task {name} {state}")
    } else {
        format!("task {name} {state}: {why}")
    }
}

/// The op writing the service (its update status), with the version read.
pub(crate) fn service_op(s: Service) -> shoal_api::v1::Op {
    shoal_api::v1::Op {
        kind: Some(shoal_api::v1::op::Kind::Update(shoal_api::v1::Object {
            kind: Some(shoal_api::v1::object::Kind::Service(s)),
        })),
    }
}

/// Since when the task has been up: running, and healthy when it has a health check.
pub(crate) fn running_since(t: &Task) -> Option<i64> {
    t.up_since()
}

/// What became of an update after a pass.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Nothing to write.
    Same,
    /// The update's new status (and, for a rollback, the specs swapped).
    Status { status: UpdateStatus, swap_specs: bool },
}

/// Where an update stands after a pass's own changes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// New tasks that failed (see [`failed`]), and why the first did.
    pub(crate) failures: usize,
    pub(crate) first_failure: Option<String>,
    /// The slots the service wants.
    pub(crate) replicas: usize,
    /// Every slot runs an up-to-date task and nothing else.
    pub(crate) converged: bool,
    /// When the last of them started running.
    pub(crate) last_started_ms: i64,
}

/// The transition an update makes now, given its progress.
pub(crate) fn judge(service: &Service, rolling: &Rolling, p: &Progress, clock: &Clock) -> Outcome {
    let now_ms = clock.now();
    let ratio = if p.replicas == 0 { 1.0 } else { p.failures as f64 / p.replicas as f64 };
    if p.failures > 0 && ratio > f64::from(rolling.config.max_failure_ratio) {
        let why = p.first_failure.as_deref().unwrap_or("a new task failed");
        let status = |state: State, message: String| UpdateStatus {
            state: state as i32,
            started_at_ms: if state == State::RollbackStarted { now_ms } else { rolling.started_at_ms },
            completed_at_ms: 0,
            message,
        };
        if rolling.rollback {
            return Outcome::Status {
                status: status(State::RollbackPaused, format!("rollback paused: {why}")),
                swap_specs: false,
            };
        }
        match rolling.config.failure_action() {
            FailureAction::Continue => {}
            FailureAction::Pause => {
                return Outcome::Status {
                    status: status(State::Paused, format!("update paused: {why}")),
                    swap_specs: false,
                };
            }
            FailureAction::Rollback if service.previous_spec.is_some() => {
                return Outcome::Status {
                    status: status(State::RollbackStarted, format!("update rolled back: {why}")),
                    swap_specs: true,
                };
            }
            FailureAction::Rollback => {
                return Outcome::Status {
                    status: status(State::Paused, format!("update paused (no previous spec to roll back to): {why}")),
                    swap_specs: false,
                };
            }
        }
    }
    if p.converged && clock.reached(p.last_started_ms.saturating_add(rolling.monitor_ms())) {
        // An automatic rollback keeps saying why it happened.
        let cause =
            service.update_status.as_ref().map(|s| s.message.as_str()).filter(|m| m.starts_with("update rolled back"));
        let (state, message) = match (rolling.rollback, cause) {
            (true, Some(cause)) => (State::RollbackCompleted, format!("rollback completed ({cause})")),
            (true, None) => (State::RollbackCompleted, "rollback completed".to_string()),
            (false, _) => (State::Completed, "update completed".to_string()),
        };
        return Outcome::Status {
            status: UpdateStatus {
                state: state as i32,
                started_at_ms: rolling.started_at_ms,
                completed_at_ms: now_ms,
                message,
            },
            swap_specs: false,
        };
    }
    Outcome::Same
}

/// Whether `t` was told to stop and has not yet: it still runs (or may) on a node that is not
/// down. A group's new task waits for it (stop-first).
pub(crate) fn stopping(store: &Store, t: &Task) -> bool {
    !task::is_wanted(t)
        && !task::is_terminal(t)
        && !t.node_id.is_empty()
        && store.node(&t.node_id).is_some_and(|n| !crate::nodes::is_down(n))
}

/// A group's new task, made while another task of the group is still `stopping`, waits
/// (desired `READY`): placed and prepared meanwhile, it starts once that one has stopped (see
/// `settle`). A group never runs two tasks at once, whatever calls for the new one: an update, a
/// task lost with its node, a restart.
pub(crate) fn waiting_for_stop(mut t: Task, stopping: bool) -> Task {
    if stopping && t.desired_state > TaskState::Ready as i32 {
        t.desired_state = TaskState::Ready as i32;
    }
    t
}

/// Where one group stands (a replicated slot, or a global service's node) once settled.
pub(crate) enum Group<'s> {
    /// It runs an up-to-date task, since then (`None`: not yet running; an old task beside it,
    /// start-first, serves meanwhile).
    Fresh(Option<i64>),
    /// Its task is not up to date; whether that task runs.
    Outdated { old: Id<'s>, runs: bool },
}

/// Keeps the right runnable tasks of a group and shuts the others down: an up-to-date task when
/// there is one (and, until it runs, the best old one beside it), else the best old one. The
/// kept task, if created waiting (desired `READY`), starts once no task of the group is
/// `stopping` any more.
pub(crate) fn settle<'s>(
    tasks: &mut Tasks<'s>,
    want: &Want<'_>,
    runnable: &[Id<'s>],
    stopping: bool,
) -> Option<Group<'s>> {
    let fresh: Vec<Id<'s>> =
        runnable.iter().copied().filter(|i| tasks.get(i).is_some_and(|t| want.up_to_date(t))).collect();
    let keep = tasks.best(&fresh);
    let kept = keep.or_else(|| tasks.best(runnable));
    if let Some(k) = kept.filter(|_| !stopping) {
        tasks.start(k);
    }
    match keep {
        Some(keep) => match tasks.get(keep).and_then(running_since) {
            Some(since) => {
                tasks.shut_down_all(runnable, Some(keep));
                Some(Group::Fresh(Some(since)))
            }
            None => {
                let old: Vec<Id<'s>> = runnable.iter().copied().filter(|i| !fresh.contains(i)).collect();
                let old_keep = tasks.best(&old);
                for &tid in runnable {
                    if tid != keep && Some(tid) != old_keep {
                        tasks.shut_down(tid);
                    }
                }
                Some(Group::Fresh(None))
            }
        },
        None => {
            let keep = kept?;
            tasks.shut_down_all(runnable, Some(keep));
            let runs = tasks.get(keep).and_then(running_since).is_some();
            Some(Group::Outdated { old: keep, runs })
        }
    }
}

/// The tally of one pass over a service's groups, and what it leads to.
pub(crate) struct Round<'s, K> {
    rolling: Option<Rolling>,
    outdated: Vec<(K, Id<'s>, bool)>,
    in_flight: usize,
    started: Vec<i64>,
    all_fresh_running: bool,
    /// Groups counted (the replicas, or the nodes with a task).
    groups: usize,
}

impl<'s, K: Ord + Clone> Round<'s, K> {
    pub(crate) fn new(service: &Service) -> Round<'s, K> {
        Round {
            rolling: Rolling::of(service),
            outdated: Vec::new(),
            in_flight: 0,
            started: Vec::new(),
            all_fresh_running: true,
            groups: 0,
        }
    }

    /// Counts a settled group.
    pub(crate) fn group(&mut self, key: K, g: Group<'s>, clock: &Clock) {
        self.groups += 1;
        match g {
            Group::Fresh(Some(since)) => {
                self.started.push(since);
                if self.rolling.as_ref().is_some_and(|r| !clock.reached(since.saturating_add(r.settle_ms()))) {
                    self.in_flight += 1;
                }
            }
            Group::Fresh(None) => {
                self.in_flight += 1;
                self.all_fresh_running = false;
            }
            Group::Outdated { old, runs } => {
                self.outdated.push((key, old, runs));
                self.all_fresh_running = false;
            }
        }
    }

    /// A group that runs nothing now (being created, restarted or replaced).
    pub(crate) fn idle(&mut self) {
        self.groups += 1;
        self.all_fresh_running = false;
    }

    /// A group left as it is (a paused node's), counted among the groups.
    pub(crate) fn keep(&mut self) {
        self.groups += 1;
    }

    /// Moves the update on: judges it, starts the next batch (`create` makes a group's new
    /// task), and writes the service's new update status.
    pub(crate) fn finish(
        mut self,
        service: &Service,
        want: &Want<'_>,
        tasks: &mut Tasks<'s>,
        clock: &Clock,
        out: &mut Vec<shoal_api::v1::Op>,
        mut create: impl FnMut(&K) -> Task,
    ) {
        let Some(r) = self.rolling.take() else { return };
        let mut progress = Progress {
            replicas: self.groups,
            converged: self.all_fresh_running && self.outdated.is_empty(),
            last_started_ms: self.started.iter().max().copied().unwrap_or(0),
            ..Progress::default()
        };
        for t in tasks.iter().filter(|t| want.up_to_date(t)) {
            let why = if failed(t, &r) {
                describe_failure(t)
            } else if r.late(t, clock) {
                let name = t.annotations.as_ref().map_or("", |a| a.name.as_str());
                let status = t.status.as_ref().map(|s| s.message.as_str()).unwrap_or("");
                format!(
                    "task {name} not running within the startup deadline of {}: {status}",
                    shoal_api::units::format_duration_ms(r.config.startup_deadline_ms)
                )
            } else {
                continue;
            };
            progress.failures += 1;
            if progress.first_failure.is_none() {
                progress.first_failure = Some(why);
            }
        }
        let outcome = judge(service, &r, &progress, clock);
        if outcome == Outcome::Same {
            // The next batch: groups whose task does not run first, then in order.
            self.outdated.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
            for (key, old, _) in self.outdated.into_iter().take(r.budget(self.in_flight)) {
                let mut new = create(&key);
                if !r.start_first() {
                    tasks.shut_down(old);
                    // Starts once the old task has stopped (see `settle`), unless that never
                    // reached a node.
                    if tasks.get(old).is_some_and(|t| !task::is_terminal(t)) {
                        new.desired_state = TaskState::Ready as i32;
                    }
                }
                tasks.create(new);
            }
        }
        if let Outcome::Status { status, swap_specs } = outcome {
            let mut next = service.clone();
            if let (true, Some(previous)) = (swap_specs, next.previous_spec.clone()) {
                next.replace_spec(previous, clock.now());
            }
            next.update_status = Some(status);
            out.push(service_op(next));
        }
    }
}

/// What updating `current` to `next` would do now (`service update --dry-run`): the running
/// tasks replaced, in how many batches, and the tasks a replica change adds or removes. Pure.
pub fn plan_update(store: &Store, current: &Service, next: &shoal_api::v1::ServiceSpec) -> shoal_api::v1::UpdatePlan {
    let mut after = current.clone();
    after.spec = Some(next.clone());
    let want = Want::of(store, &after);
    let id = current.meta.as_ref().map_or("", |m| m.id.as_str());
    let mut runnable: Vec<&Task> = store.tasks_by_service(id).filter(|t| task::is_runnable(t)).collect();
    runnable.sort_by_key(|t| (t.slot, t.node_id.clone()));
    let config = next.update_config.unwrap_or(UpdateConfig { parallelism: 1, ..Default::default() });
    let mut plan = shoal_api::v1::UpdatePlan {
        parallelism: config.parallelism,
        order: if config.order() == shoal_api::v1::update_config::Order::StartFirst {
            "start-first"
        } else {
            "stop-first"
        }
        .into(),
        ..Default::default()
    };
    let replicas = |s: Option<&shoal_api::v1::ServiceSpec>| match s.and_then(|s| s.mode.as_ref()) {
        Some(shoal_api::v1::service_spec::Mode::Replicated(r)) => Some(r.replicas),
        _ => None,
    };
    let live = runnable.len() as u64;
    let mut keep = live;
    if let Some(n) = replicas(Some(next)) {
        plan.added = n.saturating_sub(live);
        plan.removed = live.saturating_sub(n);
        keep = live.min(n);
    }
    for t in runnable.iter().take(usize::try_from(keep).unwrap_or(usize::MAX)) {
        if want.up_to_date(t) {
            plan.unchanged += 1;
        } else {
            plan.replaced.push(shoal_api::v1::PlannedReplacement {
                task_id: crate::work::id(t).to_owned(),
                name: t.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                node_id: t.node_id.clone(),
            });
        }
    }
    let n = plan.replaced.len() as u64;
    plan.batches = match (n, config.parallelism) {
        (0, _) => 0,
        (_, 0) => 1,
        (n, p) => n.div_ceil(p),
    };
    plan.starts_update = n > 0;
    plan
}
