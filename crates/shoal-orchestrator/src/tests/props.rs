//! Property tests over random clusters: nodes of every state and availability, replicated,
//! global and job services with random restart policies and constraints, and random tasks (any
//! state, desired state, slot and node, including removed nodes and removed services).
//!
//! - the ops of a pass apply without conflict, and a second pass at the same time is quiet;
//! - with a restart policy that always restarts at once (and no status from the future), one pass of the orchestrator, then the
//!   scheduler, leaves every replicated service with exactly `replicas` runnable tasks in
//!   distinct slots and every global service with one runnable task on each eligible node and
//!   none on drained, down or removed nodes; and the orchestrator then has nothing more to do.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shoal_api::v1::{
    restart_policy::Condition, service_spec::Mode, ClusterSettings, NodeAvailability as Avail, NodeState, Service,
    TaskState,
};
use shoal_scheduler::placement::{node_accepts_new_tasks, Placement};
use shoal_scheduler::testing::*;
use shoal_scheduler::{schedule, task as task_state};

use super::{new_ids, new_ids_for};
use crate::reconcile;

#[derive(Debug, Clone)]
struct NodeModel {
    state: NodeState,
    avail: Avail,
    zone_a: bool,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Replicated(u64),
    Global,
    Job,
}

#[derive(Debug, Clone)]
struct ServiceModel {
    kind: Kind,
    zone_a_only: bool,
    condition: Condition,
    delay_ms: Option<i64>,
    max_attempts: u64,
    window_ms: i64,
}

#[derive(Debug, Clone)]
struct TaskModel {
    /// Index into the services; past the end: a removed service.
    service: usize,
    slot: u64,
    /// Index into the nodes; past the end: a removed node; `None`: unassigned.
    node: Option<usize>,
    state: i32,
    desired: TaskState,
    timestamp_ms: i64,
}

fn node_model() -> impl Strategy<Value = NodeModel> {
    (
        prop::sample::select(vec![NodeState::Ready, NodeState::Ready, NodeState::Down, NodeState::Unknown]),
        prop::sample::select(vec![Avail::Active, Avail::Active, Avail::Pause, Avail::Drain]),
        any::<bool>(),
    )
        .prop_map(|(state, avail, zone_a)| NodeModel { state, avail, zone_a })
}

fn service_model() -> impl Strategy<Value = ServiceModel> {
    (
        prop_oneof![
            3 => (0..5u64).prop_map(Kind::Replicated),
            1 => Just(Kind::Global),
            1 => Just(Kind::Job),
        ],
        prop::bool::weighted(0.3),
        prop::sample::select(vec![Condition::Any, Condition::OnFailure, Condition::None]),
        prop::sample::select(vec![None, Some(0), Some(3_000)]),
        0..3u64,
        prop::sample::select(vec![0, 5_000]),
    )
        .prop_map(|(kind, zone_a_only, condition, delay_ms, max_attempts, window_ms)| ServiceModel {
            kind,
            zone_a_only,
            condition,
            delay_ms,
            max_attempts,
            window_ms,
        })
}

fn task_model() -> impl Strategy<Value = TaskModel> {
    (
        0..5usize,
        0..6u64,
        prop::option::weighted(0.8, 0..7usize),
        0..14i32,
        prop::sample::select(vec![TaskState::Running, TaskState::Running, TaskState::Shutdown, TaskState::Remove]),
        0..20_000i64,
    )
        .prop_map(|(service, slot, node, state, desired, timestamp_ms)| TaskModel {
            service,
            slot,
            node,
            state,
            desired,
            timestamp_ms,
        })
}

#[derive(Debug, Clone)]
struct Cluster {
    nodes: Vec<NodeModel>,
    services: Vec<ServiceModel>,
    tasks: Vec<TaskModel>,
    history_limit: u32,
    now: i64,
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(node_model(), 0..6),
        prop::collection::vec(service_model(), 1..5),
        prop::collection::vec(task_model(), 0..24),
        0..4u32,
        0..30_000i64,
    )
        .prop_map(|(nodes, services, tasks, history_limit, now)| Cluster {
            nodes,
            services,
            tasks,
            history_limit,
            now,
        })
}

fn service_id(i: usize) -> String {
    format!("s{i}")
}

fn build(c: &Cluster) -> World {
    let mut w = World::new();
    w.edit_cluster(|cl| {
        cl.settings = Some(ClusterSettings { task_history_limit: c.history_limit, ..cl.settings.unwrap_or_default() });
    });
    for (i, n) in c.nodes.iter().enumerate() {
        let mut built = node(&format!("n{i}")).state(n.state).availability(n.avail);
        if n.zone_a {
            built = built.label("zone", "a");
        }
        w.add(built);
    }
    for (i, m) in c.services.iter().enumerate() {
        let id = service_id(i);
        let mut s = match m.kind {
            Kind::Replicated(r) => replicated(&id, r),
            Kind::Global => global(&id),
            Kind::Job => replicated_job(&id, 2),
        };
        s = s.restart(m.condition, m.delay_ms, m.max_attempts, m.window_ms);
        if m.zone_a_only {
            s = s.constraint("node.labels.zone==a");
        }
        w.add(s);
    }
    // Tasks of removed services are built from a stand-in service of that id.
    for (i, t) in c.tasks.iter().enumerate() {
        let s =
            w.store.service(&service_id(t.service)).cloned().unwrap_or_else(|| replicated(&service_id(t.service), 1));
        let mut built = task(&format!("t{i}"), &s, t.slot).desired(t.desired);
        if let Some(n) = t.node {
            built = built.on(&format!("n{n}"));
        }
        let status = built.status.get_or_insert_with(Default::default);
        status.state = t.state;
        status.timestamp_ms = t.timestamp_ms;
        w.add(built);
    }
    w
}

/// Applies one reconcile pass, asserting that the store accepts it.
fn reconcile_and_apply(w: &mut World, now: i64) {
    let ops = reconcile(&w.store, now, &mut new_ids_for(w));
    let summary = describe(&ops);
    let result = w.try_apply(ops);
    assert!(result.error.is_empty(), "refused: {} {summary:#?}", result.error);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn reconcile_is_idempotent_once_applied(c in cluster()) {
        let mut w = build(&c);
        w.now_ms = c.now;
        reconcile_and_apply(&mut w, c.now);
        let again = reconcile(&w.store, c.now, &mut new_ids());
        prop_assert!(again.is_empty(), "second pass: {:#?}", describe(&again));
    }

    #[test]
    fn reconcile_then_schedule_converges(mut c in cluster()) {
        for s in &mut c.services {
            s.condition = Condition::Any;
            s.delay_ms = Some(0);
            s.max_attempts = 0;
        }
        // Status timestamps are before now (agents' clocks are not ahead of the leader's).
        c.now += 20_000;
        let mut w = build(&c);
        w.now_ms = c.now;
        reconcile_and_apply(&mut w, c.now);
        let plan = schedule(&w.store, c.now);
        w.apply(plan.assignments);

        for (i, m) in c.services.iter().enumerate() {
            let id = service_id(i);
            let runnable: Vec<_> = w
                .store
                .tasks_by_service(&id)
                .filter(|t| task_state::is_runnable(t))
                .collect();
            match m.kind {
                Kind::Replicated(r) => {
                    let slots: BTreeSet<u64> = runnable.iter().map(|t| t.slot).collect();
                    prop_assert_eq!(runnable.len() as u64, r, "{}: {:?}", id, runnable);
                    prop_assert_eq!(slots.len(), runnable.len());
                    prop_assert!(!slots.contains(&0));
                }
                Kind::Global => check_global(&w, &id, &runnable)?,
                Kind::Job => {}
            }
        }
        let again = reconcile(&w.store, c.now, &mut new_ids());
        prop_assert!(again.is_empty(), "after scheduling: {:#?}", describe(&again));
    }
}

fn check_global(w: &World, id: &str, runnable: &[&shoal_api::v1::Task]) -> Result<(), TestCaseError> {
    let service: &Service = w.store.service(id).expect("service");
    let Some(Mode::Global(_)) = service.spec.as_ref().and_then(|s| s.mode.as_ref()) else {
        return Err(TestCaseError::fail("not global"));
    };
    let placement =
        Placement::of(service.spec.as_ref().and_then(|s| s.task_template.as_ref())).expect("valid placement");
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for t in runnable {
        prop_assert_eq!(t.slot, 0);
        *per_node.entry(t.node_id.as_str()).or_default() += 1;
    }
    for (node_id, count) in &per_node {
        prop_assert_eq!(*count, 1, "{} tasks on {}", count, node_id);
        let node = w.store.node(node_id);
        prop_assert!(node.is_some(), "task on removed node {}", node_id);
        let node = node.expect("checked");
        let state = node.status.as_ref().map_or(0, |s| s.state);
        let avail = node.spec.as_ref().map_or(0, |s| s.availability);
        prop_assert!(state != NodeState::Down as i32, "task on down node {}", node_id);
        prop_assert!(avail != Avail::Drain as i32, "task on drained node {}", node_id);
        prop_assert!(placement.admits(node), "task on {} outside the constraint", node_id);
    }
    for node in w.store.nodes() {
        let node_id = node.meta.as_ref().map_or("", |m| m.id.as_str());
        if node_accepts_new_tasks(node) && placement.admits(node) {
            prop_assert!(per_node.contains_key(node_id), "eligible {} has no task", node_id);
        }
    }
    Ok(())
}

/// A change made to a cluster after the orchestrator converged it.
#[derive(Debug, Clone)]
enum Change {
    /// A task (by index among the stored tasks) reports a new state.
    TaskState(usize, i32),
    /// A node (by index) changes state.
    NodeState(usize, NodeState),
    /// A node (by index) changes availability.
    NodeAvailability(usize, Avail),
    /// A service (by index) gets a new replica count.
    Scale(usize, u64),
    /// A service (by index) is removed.
    RemoveService(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..30usize, 0..14i32).prop_map(|(i, s)| Change::TaskState(i, s)),
        (0..6usize, prop::sample::select(vec![NodeState::Ready, NodeState::Down, NodeState::Unknown]))
            .prop_map(|(i, s)| Change::NodeState(i, s)),
        (0..6usize, prop::sample::select(vec![Avail::Active, Avail::Pause, Avail::Drain]))
            .prop_map(|(i, a)| Change::NodeAvailability(i, a)),
        (0..5usize, 0..6u64).prop_map(|(i, r)| Change::Scale(i, r)),
        (0..5usize).prop_map(Change::RemoveService),
    ]
}

/// The ops of `change` against `w`'s store (none when the index points nowhere).
fn change_ops(w: &World, c: &Change) -> Vec<shoal_api::v1::Op> {
    use shoal_api::v1::{ObjectKind, ObjectRef};
    let nth_task = |i: usize| w.store.tasks().nth(i).cloned();
    let nth_node = |i: usize| w.store.nodes().nth(i).cloned();
    let nth_service = |i: usize| w.store.services().nth(i).cloned();
    match c {
        // Task states only move forward (the store refuses anything else from agents).
        Change::TaskState(i, s) => nth_task(*i)
            .filter(|t| task_state::observed(t) < *s)
            .into_iter()
            .map(|mut t| {
                t.status.get_or_insert_with(Default::default).state = *s;
                update(t)
            })
            .collect(),
        Change::NodeState(i, s) => nth_node(*i).into_iter().map(|n| update(n.state(*s))).collect(),
        Change::NodeAvailability(i, a) => nth_node(*i).into_iter().map(|n| update(n.availability(*a))).collect(),
        Change::Scale(i, r) => nth_service(*i)
            .filter(|s| matches!(s.spec.as_ref().and_then(|sp| sp.mode.as_ref()), Some(Mode::Replicated(_))))
            .into_iter()
            .map(|s| update(s.replicas(*r)))
            .collect(),
        Change::RemoveService(i) => nth_service(*i)
            .into_iter()
            .map(|s| shoal_api::v1::Op {
                kind: Some(shoal_api::v1::op::Kind::Delete(ObjectRef {
                    kind: ObjectKind::Service as i32,
                    id: s.meta.map(|m| m.id).unwrap_or_default(),
                    version: 0,
                })),
            })
            .collect(),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

proptest! {
    // Many generated changes touch nothing (a task state that is already past): they are
    // rejected, and the default cap of 1,024 rejects ends a run of 512 cases now and then.
    #![proptest_config(ProptestConfig { cases: 512, max_global_rejects: 16_384, ..ProptestConfig::default() })]

    /// Passing every service id (existing or only left in tasks) is the full pass.
    #[test]
    fn a_scope_of_every_service_is_the_full_pass(c in cluster()) {
        let w = build(&c);
        let mut ids: BTreeSet<String> = w.store.services().filter_map(|s| s.meta.as_ref().map(|m| m.id.clone())).collect();
        ids.extend(w.store.tasks().map(|t| t.service_id.clone()));
        let full = sorted(describe(&reconcile(&w.store, c.now, &mut new_ids())));
        let scoped = sorted(describe(&crate::reconcile_scope(&w.store, c.now, &crate::Scope::Services(ids), &mut new_ids())));
        prop_assert_eq!(full, scoped);
    }

    /// Incremental passes miss nothing: once the orchestrator converged a cluster, after any
    /// change the services that change affects hold all the work a full pass finds.
    #[test]
    fn after_a_change_the_affected_services_hold_all_the_work(c in cluster(), ch in change()) {
        let mut w = build(&c);
        w.now_ms = c.now;
        reconcile_and_apply(&mut w, c.now);
        let ops = change_ops(&w, &ch);
        prop_assume!(!ops.is_empty());
        let version = w.store.version() + 1;
        let (result, events) = w.store.apply(version, &shoal_api::v1::Command { now_ms: c.now, ops });
        prop_assume!(result.error.is_empty());
        let scope = crate::affected(&w.store, &events);
        let full = sorted(describe(&reconcile(&w.store, c.now, &mut new_ids())));
        let scoped = sorted(describe(&crate::reconcile_scope(&w.store, c.now, &scope, &mut new_ids())));
        prop_assert_eq!(full, scoped, "change {:?}, scope {:?}", ch, scope);
    }

    /// A service's wake-up is the first moment a pass may find work again without a change:
    /// once a pass's ops applied, passes over the unchanged store stay quiet at any time before
    /// it (a random one, and the last millisecond), and far in the future for a service
    /// without one. (A pass with ops is followed by their change, or retried: only a quiet one
    /// waits for time.)
    #[test]
    fn a_quiet_service_stays_quiet_until_its_wake(c in cluster(), frac in 0.0..1.0f64) {
        let mut w = build(&c);
        w.now_ms = c.now;
        reconcile_and_apply(&mut w, c.now);
        let now = crate::pass(&w.store, c.now, &crate::Scope::All, &mut new_ids());
        prop_assert!(now.ops.is_empty(), "not quiet once applied: {:?}", describe(&now.ops));
        for s in w.store.services() {
            let id = s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
            let scope = crate::Scope::Services([id.clone()].into());
            let later = match now.wake.get(&id) {
                Some(&wake) => {
                    prop_assert!(wake > c.now, "{}: wake {} is not ahead of {}", id, wake, c.now);
                    vec![c.now + ((wake - 1 - c.now) as f64 * frac) as i64, wake - 1]
                }
                None => vec![c.now + 1_000_000_000],
            };
            for t in later {
                let ops = describe(&crate::reconcile_scope(&w.store, t, &scope, &mut new_ids()));
                prop_assert!(ops.is_empty(), "{} at {} (now {}, wake {:?}): {:?}", id, t, c.now, now.wake.get(&id), ops);
            }
        }
    }

    /// Every op lands in exactly one unit, in order within its unit, and a task's retirement
    /// and its replacement share one.
    #[test]
    fn units_partition_the_ops_and_keep_slots_together(c in cluster()) {
        let w = build(&c);
        let ops = reconcile(&w.store, c.now, &mut new_ids());
        let flat = describe(&ops);
        let groups = crate::units(&w.store, ops);
        let mut regrouped: Vec<String> = groups.iter().flat_map(|g| describe(g)).collect();
        prop_assert_eq!(sorted(regrouped.clone()), sorted(flat.clone()));
        regrouped.dedup();
        for g in &groups {
            let creates = g.iter().filter(|o| matches!(o.kind, Some(shoal_api::v1::op::Kind::Create(_)))).count();
            prop_assert!(creates <= 1, "one slot gets at most one new task per pass: {:?}", describe(g));
        }
    }
}
