//! Turning a task's container spec into the runtime's [`ContainerSpec`]. Pure.

use shoal_api::v1::{mount, Task};
use shoal_runtime::{ContainerSpec, MountSpec};

/// Label carrying the task's service id on its container.
pub const SERVICE_LABEL: &str = "shoal.service.id";
/// Label carrying the task's slot.
pub const SLOT_LABEL: &str = "shoal.task.slot";

/// The runtime spec of `task`, or why it cannot run.
pub fn runtime_spec(task: &Task) -> Result<ContainerSpec, String> {
    let id = task.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
    let c = task.spec.as_ref().and_then(|s| s.container.as_ref()).ok_or("task has no container spec")?;
    let limits = task.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.limits).unwrap_or_default();
    let mut labels = c.labels.clone();
    labels.insert(SERVICE_LABEL.into(), task.service_id.clone());
    labels.insert(SLOT_LABEL.into(), task.slot.to_string());
    let mounts = c
        .mounts
        .iter()
        .map(|m| match m.r#type() {
            mount::Type::Bind => {
                MountSpec::Bind { source: m.source.clone().into(), target: m.target.clone(), read_only: m.read_only }
            }
            mount::Type::Volume => MountSpec::Volume {
                // An anonymous volume belongs to this task alone.
                name: if m.source.is_empty() {
                    format!("anon-{id}-{}", m.target.replace('/', "_"))
                } else {
                    m.source.clone()
                },
                target: m.target.clone(),
                read_only: m.read_only,
            },
            mount::Type::Tmpfs => MountSpec::Tmpfs {
                target: m.target.clone(),
                size_bytes: m.tmpfs_options.as_ref().map_or(0, |t| t.size_bytes),
                mode: m.tmpfs_options.as_ref().map_or(0, |t| t.mode),
            },
        })
        .collect();
    Ok(ContainerSpec {
        id,
        image: c.image.clone(),
        entrypoint: c.command.clone(),
        args: c.args.clone(),
        env: c.env.clone(),
        workdir: c.dir.clone(),
        user: c.user.clone(),
        hostname: if c.hostname.is_empty() {
            task.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default()
        } else {
            c.hostname.clone()
        },
        labels,
        mounts,
        read_only: c.read_only,
        nano_cpus: limits.nano_cpus,
        memory_bytes: limits.memory_bytes,
        pids: limits.pids,
        netns: None,
    })
}
