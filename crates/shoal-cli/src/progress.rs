//! Waiting for a service to converge, as `docker service create` does without `--detach`:
//! shows how many tasks run and the state of each slot, until every desired task has been
//! running for a short monitoring window, or a task fails and the user should know why.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_api::names;
use shoal_api::v1::{control_client::ControlClient, GetServiceRequest, ListTasksRequest, TaskState};
use tonic::transport::Channel;

/// How long all tasks must stay running before the service counts as converged.
const MONITOR: Duration = Duration::from_secs(2);

/// Polls until converged; prints a line whenever the picture changes.
pub async fn wait_converged(c: &mut ControlClient<Channel>, service: &str) -> Result<(), tonic::Status> {
    let mut last = String::new();
    let mut stable_since: Option<Instant> = None;
    loop {
        let view = c.get_service(GetServiceRequest { service: service.to_string() }).await?.into_inner();
        let svc = view.service.unwrap_or_default();
        let id = svc.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let tasks = c.list_tasks(ListTasksRequest { service: id, node: String::new() }).await?.into_inner().tasks;
        // The newest task of each slot (or node, for global services) is the one that counts.
        let mut current: BTreeMap<String, &shoal_api::v1::Task> = BTreeMap::new();
        for t in tasks.iter().filter(|t| t.desired_state <= TaskState::Running as i32) {
            let key = if t.slot > 0 { format!("{:>4}", t.slot) } else { t.node_id.clone() };
            let newer = current.get(&key).is_none_or(|cur| {
                cur.meta.as_ref().map_or(0, |m| m.created_at_ms) < t.meta.as_ref().map_or(0, |m| m.created_at_ms)
            });
            if newer {
                current.insert(key, t);
            }
        }
        let desired = view.desired_tasks as usize;
        let running =
            current.values().filter(|t| t.status.as_ref().is_some_and(|s| s.state() == TaskState::Running)).count();
        let mut lines = vec![format!("overall progress: {running} out of {desired} tasks")];
        for (key, t) in &current {
            let st = t.status.clone().unwrap_or_default();
            let detail = if !st.err.is_empty() {
                st.err.clone()
            } else if st.state() == TaskState::Pending {
                st.message.clone()
            } else {
                String::new()
            };
            lines.push(
                format!("{}/{desired}: {:<10} {detail}", key.trim(), names::task_state(st.state()))
                    .trim_end()
                    .to_string(),
            );
        }
        let picture = lines.join("\n");
        if picture != last {
            outln!("{picture}");
            last = picture;
        }
        if running == desired && current.len() == desired {
            let since = *stable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MONITOR {
                outln!("verify: Service converged");
                return Ok(());
            }
        } else {
            stable_since = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows a rolling update (or rollback) of `service` until it completed, paused or rolled
/// back, showing how many tasks run the new spec; a service whose change started no update is
/// waited for as after `create`. A pause or an automatic rollback is an error with the reason.
pub async fn wait_updated(c: &mut ControlClient<Channel>, service: &str) -> Result<(), tonic::Status> {
    use shoal_api::v1::update_status::State;
    let first = c.get_service(GetServiceRequest { service: service.to_string() }).await?.into_inner();
    let started = first.service.as_ref().and_then(|s| s.update_status.as_ref()).map(|u| u.state());
    let manual_rollback = started == Some(State::RollbackStarted);
    if !matches!(started, Some(State::Updating | State::RollbackStarted)) {
        return wait_converged(c, service).await;
    }
    let mut last = String::new();
    loop {
        let view = c.get_service(GetServiceRequest { service: service.to_string() }).await?.into_inner();
        let svc = view.service.unwrap_or_default();
        let status = svc.update_status.clone().unwrap_or_default();
        let id = svc.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let tasks = c.list_tasks(ListTasksRequest { service: id, node: String::new() }).await?.into_inner().tasks;
        let template = svc.spec.as_ref().and_then(|s| s.task_template.as_ref());
        let desired = view.desired_tasks as usize;
        let updated = tasks
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running as i32 && t.spec.as_ref() == template)
            .filter(|t| t.status.as_ref().is_some_and(|s| s.state() == TaskState::Running))
            .count();
        let verb =
            if matches!(status.state(), State::RollbackStarted | State::RollbackPaused | State::RollbackCompleted) {
                "rolled back"
            } else {
                "updated"
            };
        let picture = format!("overall progress: {updated} out of {desired} tasks {verb} ({})", status.message);
        if picture != last {
            outln!("{picture}");
            last = picture;
        }
        match status.state() {
            State::Completed => {
                outln!("verify: Service converged");
                return Ok(());
            }
            State::RollbackCompleted if manual_rollback => {
                outln!("verify: Service rolled back");
                return Ok(());
            }
            State::RollbackCompleted => {
                return Err(tonic::Status::aborted(format!("{} (see `shoal service ps {service}`)", status.message)));
            }
            State::Paused | State::RollbackPaused => {
                return Err(tonic::Status::aborted(format!(
                    "{} (see `shoal service ps {service}`; the next `shoal service update {service}` resumes it)",
                    status.message
                )));
            }
            State::Updating | State::RollbackStarted | State::Unknown => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows a job until every task of its current spec completed, showing how many did; an
/// error when nothing runs any more and the job is not done (its restart policy gave up).
pub async fn wait_job(c: &mut ControlClient<Channel>, service: &str) -> Result<(), tonic::Status> {
    let mut last = String::new();
    let mut idle_since: Option<Instant> = None;
    loop {
        let view = c.get_service(GetServiceRequest { service: service.to_string() }).await?.into_inner();
        let (done, total, running) = (view.completed_tasks, view.desired_tasks, view.running_tasks);
        let picture = format!("job progress: {done} out of {total} completed, {running} running");
        if picture != last {
            outln!("{picture}");
            last = picture;
        }
        if total > 0 && done >= total {
            outln!("verify: Job complete");
            return Ok(());
        }
        if running == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            // A restart may be waiting out its delay: give it time before giving up.
            if since.elapsed() > Duration::from_secs(30) {
                return Err(tonic::Status::aborted(format!(
                    "job {service} stopped with {done} of {total} completed (see `shoal service ps {service}`)"
                )));
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
