//! `shoal-bench schedule`: one pass of the pure scheduler over a large cluster, in process.
//!
//! 5,000 nodes in 4 zones with 16 cpus and 64 GiB each; 100,000 pending tasks of 10 services,
//! each task reserving 0.1 cpu and 256 MiB and constrained away from one zone (so resources,
//! a constraint and the spread all take part). Prints the time of `schedule()` and checks the
//! plan placed every task (a benchmark that placed nothing would be fast and wrong).

use std::time::Instant;

use anyhow::{bail, Result};
use shoal_api::v1::*;
use shoal_store::Store;

const GIB: i64 = 1 << 30;
const CPU: i64 = 1_000_000_000;

fn meta(id: &str) -> Option<Meta> {
    Some(Meta { id: id.to_owned(), ..Meta::default() })
}

fn node(i: usize) -> Node {
    let zone = ["a", "b", "c", "d"][i % 4];
    Node {
        meta: meta(&format!("n{i:05}")),
        spec: Some(NodeSpec {
            annotations: Some(Annotations {
                name: String::new(),
                labels: [("zone".to_owned(), zone.to_owned())].into(),
            }),
            ..NodeSpec::default()
        }),
        description: Some(NodeDescription {
            hostname: format!("host{i}"),
            platform: Some(Platform { os: "linux".into(), architecture: "amd64".into() }),
            resources: Some(Resources { nano_cpus: 16 * CPU, memory_bytes: 64 * GIB, pids: 0 }),
            ..NodeDescription::default()
        }),
        status: Some(NodeStatus { state: NodeState::Ready as i32, ..NodeStatus::default() }),
        role: NodeRole::Worker as i32,
        raft_id: 0,
        ingress_address: String::new(),
    }
}

fn service(i: usize, replicas: u64) -> Service {
    Service {
        meta: meta(&format!("s{i:02}")),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations { name: format!("svc{i}"), ..Annotations::default() }),
            task_template: Some(TaskSpec {
                container: Some(ContainerSpec { image: "bench:1".into(), ..ContainerSpec::default() }),
                placement: Some(Placement { constraints: vec!["node.labels.zone!=d".into()], ..Placement::default() }),
                resources: Some(ResourceRequirements {
                    reservations: Some(Resources { nano_cpus: CPU / 10, memory_bytes: GIB / 4, pids: 0 }),
                    limits: None,
                }),
                ..TaskSpec::default()
            }),
            mode: Some(service_spec::Mode::Replicated(ReplicatedService { replicas })),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn task(s: &Service, slot: u64) -> Task {
    let id = s.meta.as_ref().map_or("", |m| m.id.as_str());
    Task {
        meta: meta(&format!("{id}-t{slot:06}")),
        service_id: id.to_owned(),
        slot,
        spec: s.spec.as_ref().and_then(|sp| sp.task_template.clone()),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus { state: TaskState::Pending as i32, ..TaskStatus::default() }),
        ..Task::default()
    }
}

fn create(o: impl Into<Object>) -> Op {
    Op { kind: Some(op::Kind::Create(o.into())) }
}

/// Runs the benchmark: `nodes` nodes, `tasks` tasks over 10 services.
pub fn run(nodes: usize, tasks: usize) -> Result<()> {
    let services = 10usize;
    let mut store = Store::new();
    let mut version = 0;
    let mut apply = |store: &mut Store, ops: Vec<Op>| -> Result<()> {
        version += 1;
        let (r, _) = store.apply(version, &Command { now_ms: 1, ops });
        if !r.error.is_empty() {
            bail!("building the store: {}", r.error);
        }
        Ok(())
    };
    for chunk in (0..nodes).collect::<Vec<_>>().chunks(1000) {
        apply(&mut store, chunk.iter().map(|&i| create(node(i))).collect())?;
    }
    let per = (tasks / services) as u64;
    for i in 0..services {
        let s = service(i, per);
        apply(&mut store, vec![create(s.clone())])?;
        for chunk in (1..=per).collect::<Vec<_>>().chunks(5000) {
            apply(&mut store, chunk.iter().map(|&slot| create(task(&s, slot))).collect())?;
        }
    }
    let t0 = Instant::now();
    let plan = shoal_scheduler::schedule(&store, 2);
    let took = t0.elapsed();
    if plan.assignments.len() != services * per as usize || !plan.unschedulable.is_empty() {
        bail!(
            "the plan placed {} of {} tasks ({} unschedulable: {:?})",
            plan.assignments.len(),
            services * per as usize,
            plan.unschedulable.len(),
            plan.unschedulable.first()
        );
    }
    let n = plan.assignments.len();
    println!("schedule {n} tasks on {nodes} nodes: {:.3} s", took.as_secs_f64());
    println!("schedule tasks/s: {:.0}", n as f64 / took.as_secs_f64());
    println!("schedule anchor: SwarmKit's scheduler benchmark, 100000 tasks on 1000 nodes: 22.6 s; target <= 1 s");

    // The orchestrator over the same cluster once every task runs: the leader's full pass (its
    // safety net) and the pass over one service that changed.
    apply(&mut store, plan.assignments)?;
    let running: Vec<Op> = store
        .tasks()
        .map(|t| {
            let mut t = t.clone();
            t.status = Some(TaskStatus { state: TaskState::Running as i32, timestamp_ms: 3, ..TaskStatus::default() });
            Op { kind: Some(op::Kind::Update(t.into())) }
        })
        .collect();
    for chunk in running.chunks(5000) {
        apply(&mut store, chunk.to_vec())?;
    }
    let mut ids = 0u64;
    let mut new_id = || {
        ids += 1;
        format!("new{ids}")
    };
    // The median of a few runs of each.
    let mut timed = |scope: &shoal_orchestrator::Scope, runs: usize| -> Result<f64> {
        let mut took = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let pass = shoal_orchestrator::pass(&store, 4, scope, &mut new_id);
            took.push(t0.elapsed().as_secs_f64() * 1000.0);
            if !pass.ops.is_empty() {
                bail!("the orchestrator found work in a converged cluster: {} ops", pass.ops.len());
            }
        }
        took.sort_by(f64::total_cmp);
        Ok(took[took.len() / 2])
    };
    let full = timed(&shoal_orchestrator::Scope::All, 3)?;
    let one = timed(&shoal_orchestrator::Scope::Services(["s00".to_owned()].into()), 5)?;
    println!("orchestrate full pass over {n} running tasks: {full:.0} ms");
    println!("orchestrate pass over one service of {per} tasks: {one:.1} ms");
    Ok(())
}
