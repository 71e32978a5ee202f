//! Leader-only loops, started when this manager becomes leader and cancelled when it stops
//! being one: node liveness (heartbeats -> READY/DOWN) and Raft membership reconciliation
//! (nodes whose desired role is manager become voters; demoted or removed ones leave).
//!
//! Both are level-triggered: each tick compares the store with what should be and proposes the
//! difference, so a lost proposal or a leader change just means the next tick does it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use shoal_api::v1;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::manager_set::Step;
use crate::managers::RaftRuntime;
use crate::node::Node;
use crate::util::now_ms;
use crate::writer::update_op;

/// Watches leadership (the node's "leadership" worker, one per Raft instance) and runs the
/// leader loops as workers of a leader term while this node leads; the term's workers stop
/// (and are waited for) as soon as it stops leading.
pub(crate) fn spawn_supervisor(node: Node, rt: Arc<RaftRuntime>) {
    let workers = node.workers.clone();
    workers.spawn("leadership", move |shutdown| async move {
        watch_leadership(node, rt, shutdown).await;
        Ok::<(), String>(())
    });
}

async fn watch_leadership(node: Node, rt: Arc<RaftRuntime>, shutdown: CancellationToken) {
    let mut metrics = rt.raft.metrics();
    let mut term: Option<crate::workers::Workers> = None;
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            m.state == ServerState::Leader && m.running_state.is_ok()
        };
        match (leading, &term) {
            (true, None) => {
                node.heard.reset();
                tracing::info!("became leader: starting leader loops");
                let w = node.workers.child("leader");
                let (proposer, queue) = crate::proposer::Proposer::new();
                let raft = rt.raft.clone();
                w.spawn("proposer", move |stop| async move {
                    crate::proposer::run(raft, queue, stop).await;
                    Ok::<(), String>(())
                });
                rt.set_proposer(Some(proposer));
                let (n, r) = (node.clone(), rt.clone());
                w.spawn("liveness", move |stop| async move {
                    liveness_loop(n, r, stop).await;
                    Ok::<(), String>(())
                });
                let (n, r) = (node.clone(), rt.clone());
                w.spawn("membership", move |stop| async move {
                    membership_loop(n, r, stop).await;
                    Ok::<(), String>(())
                });
                let (n, r) = (node.clone(), rt.clone());
                w.spawn("orchestrator", move |stop| async move {
                    orchestrate_loop(n, r, stop).await;
                    Ok::<(), String>(())
                });
                let (hub_tx, hub_rx) = tokio::sync::mpsc::channel(256);
                let r = rt.clone();
                w.spawn("dispatcher", move |stop| async move {
                    crate::dispatcher::run_hub(r, hub_rx, stop).await;
                    Ok::<(), String>(())
                });
                let (status_tx, status_rx) = tokio::sync::mpsc::channel(1024);
                node.links.set(Some(hub_tx), Some(status_tx));
                let n = node.clone();
                w.spawn("status batcher", move |stop| async move {
                    crate::dispatcher::run_status_batcher(n.writer, status_rx, stop).await;
                    Ok::<(), String>(())
                });
                term = Some(w);
            }
            (false, Some(_)) => {
                tracing::info!("no longer leader: stopping leader loops");
                node.links.set(None, None);
                rt.set_proposer(None);
                if let Some(w) = term.take() {
                    w.stop().await;
                }
            }
            _ => {}
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = metrics.changed() => if r.is_err() { break },
        }
    }
    node.links.set(None, None);
    rt.set_proposer(None);
    if let Some(w) = term {
        w.stop().await;
    }
}

fn settings(rt: &RaftRuntime) -> v1::ClusterSettings {
    rt.store
        .read(|s| s.cluster().and_then(|c| c.settings))
        .map(shoal_api::defaults::fill_settings)
        .unwrap_or_else(shoal_api::defaults::cluster_settings)
}

/// Marks nodes READY when they heartbeat and DOWN when they miss `grace` periods. A new leader
/// first waits one grace window: it has not heard anyone yet, and that is not their fault; so
/// does a leader whose loop ran later than a heartbeat period (see `liveness`).
async fn liveness_loop(node: Node, rt: Arc<RaftRuntime>, token: CancellationToken) {
    loop {
        let s = settings(&rt);
        let nodes = rt.store.read(|st| st.node_count());
        let (period, grace) = crate::liveness::timing(&s, nodes);
        let due = Instant::now() + period / 4;
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let late = Instant::now().saturating_duration_since(due);
        if late > period {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "the leader fell behind by more than a heartbeat period: no node is marked down for a grace period"
            );
            node.heard.hold(Instant::now());
        }
        let since = node.heard.since();
        let ops = rt.store.read(|st| {
            let seen = node.heard.seen();
            crate::liveness::decide(st.nodes(), &seen, Instant::now(), since, grace, now_ms())
        });
        // All changes in one command; if a concurrent `node update` made one stale, the store
        // refuses the command, and then each goes alone so the others still land (the stale one
        // is retried at the next tick).
        if ops.len() > 1 {
            match node.writer.propose(ops.clone()).await {
                Err(crate::error::ApiError::Apply { .. }) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "node status updates not applied");
                    continue;
                }
                Ok(_) => continue,
            }
        }
        for op in ops {
            if let Err(e) = node.writer.propose(vec![op]).await {
                tracing::debug!(error = %e, "node status update not applied");
            }
        }
    }
}

/// Largest number of ops proposed in one command (keeps log entries small); a group of ops
/// that must commit together is never split, even when it is larger.
const MAX_OPS_PER_COMMAND: usize = 256;

/// How often the orchestrator and placement look at everything, as a safety net under the
/// passes that changes and wake-ups drive (see `agenda`).
const FULL_PASS: Duration = Duration::from_secs(10);

/// How long a new leader's first pass waits for this node to apply its log (past it, the pass
/// runs anyway: a stuck apply must not stop the orchestrator).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// Proposes groups of ops, packed into commands of at most [`MAX_OPS_PER_COMMAND`] ops without
/// splitting a group. Returns whether every command applied; one refused (a concurrent change
/// made one of its versions stale) or lost is for a later pass to recompute.
async fn propose_units(node: &Node, units: Vec<Vec<v1::Op>>, what: &str) -> bool {
    use futures::StreamExt;
    let mut batches: Vec<Vec<v1::Op>> = Vec::new();
    let mut batch: Vec<v1::Op> = Vec::new();
    for unit in units {
        if !batch.is_empty() && batch.len() + unit.len() > MAX_OPS_PER_COMMAND {
            batches.push(std::mem::take(&mut batch));
        }
        batch.extend(unit);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    // Groups are independent, so their commands need no order: several in flight at once share
    // the leader's fsyncs and replication round trips.
    futures::stream::iter(batches)
        .map(|b| propose_batch(node, b, what))
        .buffer_unordered(COMMANDS_IN_FLIGHT)
        .fold(true, |all, ok| async move { all && ok })
        .await
}

/// Commands one pass keeps in flight.
const COMMANDS_IN_FLIGHT: usize = 8;

async fn propose_batch(node: &Node, ops: Vec<v1::Op>, what: &str) -> bool {
    match node.writer.propose(ops).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, what, "proposal not applied; retried");
            false
        }
    }
}

/// Runs the orchestrator, then placement (the allocator, the scheduler), proposing what they
/// decide, as the agenda says: over the services applied changes touched or whose time-based
/// decision came due, placement after changes that may let a pending task be placed, and
/// everything when a term starts, every [`FULL_PASS`], or when the change stream cannot say
/// what changed.
async fn orchestrate_loop(node: Node, rt: Arc<RaftRuntime>, token: CancellationToken) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut changes = rt.store.events();
    // The term's first pass waits until this node applied what its log held when the term
    // began (what the last leader committed in its last moments): a pass over a store behind
    // its own log decides from old states, and a full pass holds the store's lock that those
    // applies, and so the term's first client writes, wait for.
    if let Some(index) = rt.metrics().last_log_index {
        let t0 = Instant::now();
        let wait = rt.raft.wait(Some(CATCH_UP_WAIT));
        let caught_up = wait.applied_index_at_least(Some(index), "leader catch-up");
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            r = caught_up => match r {
                Ok(_) => tracing::debug!(index, ms = t0.elapsed().as_millis() as u64, "applied the log before the term's first pass"),
                Err(e) => tracing::warn!(index, error = %e, "the term's first pass runs before this node applied its log"),
            },
        }
    }
    let mut agenda = crate::agenda::Agenda::new();
    let mut full_at = Instant::now() + FULL_PASS;
    loop {
        // Everything that arrived so far goes into one pass.
        loop {
            match changes.try_recv() {
                Ok(change) => note(&mut agenda, &rt, &change),
                Err(TryRecvError::Lagged(_)) => agenda.everything(),
                Err(_) => break,
            }
        }
        if Instant::now() >= full_at {
            agenda.everything();
            full_at = Instant::now() + FULL_PASS;
        }
        if let Some(work) = agenda.take(now_ms()) {
            let outcome = run_pass(&node, &rt, &work).await;
            agenda.done(now_ms(), &work.scope, outcome);
        }
        let until = match agenda.next_at() {
            Some(at) => full_at.min(Instant::now() + Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0))),
            None => full_at,
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            r = changes.recv() => match r {
                Ok(change) => note(&mut agenda, &rt, &change),
                Err(RecvError::Lagged(_)) => agenda.everything(),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Records on the agenda what `change` touched.
fn note(agenda: &mut crate::agenda::Agenda, rt: &RaftRuntime, change: &shoal_raft::Change) {
    match change {
        shoal_raft::Change::Applied(events) => {
            let scope = rt.store.read(|s| shoal_orchestrator::affected(s, events));
            agenda.changed(scope, shoal_scheduler::may_place(events));
        }
        shoal_raft::Change::Replaced => agenda.everything(),
    }
}

/// One orchestrator pass over the work's scope, then, if due, the allocator's and one
/// scheduler pass.
async fn run_pass(node: &Node, rt: &RaftRuntime, work: &crate::agenda::Work) -> crate::agenda::Outcome {
    let now = now_ms();
    let t0 = std::time::Instant::now();
    let (units, wake) = rt.store.read(|s| {
        let pass = shoal_orchestrator::pass(s, now, &work.scope, &mut crate::util::new_id);
        (shoal_orchestrator::units(s, pass.ops), pass.wake)
    });
    let decided = t0.elapsed();
    let mut outcome = crate::agenda::Outcome { wake, ..Default::default() };
    if !units.is_empty() {
        let n = units.len();
        outcome.reconcile_failed = !propose_units(node, units, "orchestrator").await;
        tracing::debug!(
            groups = n,
            decide_ms = decided.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "orchestrator pass"
        );
    }
    if work.place {
        outcome.place_failed = !place(node, rt, now).await;
    }
    outcome
}

/// The allocator's pass, then the scheduler's; whether all they proposed applied.
async fn place(node: &Node, rt: &RaftRuntime, now: i64) -> bool {
    let mut ok = true;
    // Addresses before placement: a task is placed only once it has one on each network.
    let addresses = rt.store.read(shoal_ipam::plan_addresses);
    if !addresses.ops.is_empty() {
        let n = addresses.ops.len();
        ok &= propose_units(node, addresses.ops.into_iter().map(|op| vec![op]).collect(), "allocator").await;
        tracing::debug!(updates = n, "allocator pass");
    }
    // Nothing to place is cheap to see: unassigned tasks have an index of their own.
    if rt.store.read(|s| !s.unassigned_tasks().any(shoal_scheduler::task::is_schedulable)) {
        return ok;
    }
    let (assignments, reasons) = rt.store.read(|s| {
        let plan = shoal_scheduler::schedule(s, now);
        let reasons = shoal_scheduler::unschedulable_updates(s, &plan.unschedulable);
        (plan.assignments, reasons)
    });
    if !assignments.is_empty() {
        let (n, t1) = (assignments.len(), std::time::Instant::now());
        ok &= propose_units(node, assignments.into_iter().map(|op| vec![op]).collect(), "scheduler").await;
        tracing::debug!(assignments = n, propose_ms = t1.elapsed().as_millis() as u64, "scheduler pass");
    }
    if !reasons.is_empty() {
        ok &= propose_units(node, reasons.into_iter().map(|op| vec![op]).collect(), "scheduler reasons").await;
    }
    ok
}

/// Reconciles Raft membership with the nodes' desired roles.
async fn membership_loop(node: Node, rt: Arc<RaftRuntime>, token: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if let Err(e) = reconcile_membership(&node, &rt).await {
            tracing::warn!(error = %e, "membership reconciliation");
        }
    }
}

async fn reconcile_membership(node: &Node, rt: &RaftRuntime) -> Result<(), crate::error::ApiError> {
    let m = rt.metrics();
    if m.state != ServerState::Leader {
        return Ok(());
    }
    let membership = m.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(()); // a change is in flight
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    let step = rt.store.read(|s| {
        let seen = node.heard.seen();
        let nodes: Vec<&v1::Node> = s.nodes().collect();
        crate::manager_set::next_step(&voters, &learners, &nodes, &seen)
    });
    let failed = |what: &'static str| move |e| crate::error::ApiError::internal(what, e);
    match step {
        Step::Nothing => {}
        Step::RecordRole { node: mut n, role } => {
            n.role = role as i32;
            node.writer.propose(vec![update_op((*n).into())]).await?;
        }
        Step::AddManager { node_id, raft_id, addr } => {
            tracing::info!(%node_id, raft_id, %addr, "adding manager: learner first");
            rt.raft.add_learner(raft_id, BasicNode::new(addr), true).await.map_err(failed("add learner"))?;
            let mut next = voters.clone();
            next.insert(raft_id);
            rt.raft.change_membership(next, false).await.map_err(failed("promote learner to voter"))?;
            tracing::info!(%node_id, raft_id, "manager added as voter");
        }
        Step::RemoveVoter(rid) => {
            let mut next = voters.clone();
            next.remove(&rid);
            tracing::info!(raft_id = rid, "removing manager from raft membership");
            rt.raft.change_membership(next, false).await.map_err(failed("remove voter"))?;
        }
        Step::RemoveLearners(stale) => {
            rt.raft
                .change_membership(ChangeMembers::RemoveNodes(stale), false)
                .await
                .map_err(failed("remove learner"))?;
        }
    }
    Ok(())
}
