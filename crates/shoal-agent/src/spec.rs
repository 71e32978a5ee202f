//! Turning a task's container spec into the runtime's [`ContainerSpec`]. Pure.

use shoal_api::v1::{mount, Task};
use shoal_runtime::{ContainerSpec, MountSpec};

/// Label carrying the task's service id on its container.
pub const SERVICE_LABEL: &str = "shoal.service.id";
/// Label carrying the task's slot.
pub const SLOT_LABEL: &str = "shoal.task.slot";

/// Where `--init` puts the init in the container (Docker's path).
pub const INIT_PATH: &str = "/sbin/docker-init";

/// Static inits the node may have, first found wins (Debian's `tini` package).
pub const INIT_CANDIDATES: &[&str] = &["/usr/bin/tini-static", "/usr/libexec/docker/docker-init"];

/// The runtime spec of `task`, or why it cannot run; `init` is the node's static init binary,
/// if it has one.
pub fn runtime_spec(task: &Task, init: Option<&std::path::Path>) -> Result<ContainerSpec, String> {
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
        .collect::<Vec<_>>();
    let mut mounts = mounts;
    let init = if c.init {
        let host = init.ok_or("--init needs a static init on the node: install Debian's tini package (tini-static)")?;
        mounts.push(MountSpec::Bind { source: host.to_path_buf(), target: INIT_PATH.into(), read_only: true });
        Some(INIT_PATH.to_string())
    } else {
        None
    };
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
        init,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{ContainerSpec as Cs, TaskSpec};

    #[test]
    fn init_mounts_the_nodes_static_init_and_runs_under_it() {
        let task = |init: bool| Task {
            spec: Some(TaskSpec {
                container: Some(Cs { image: "i".into(), init, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tini = std::path::Path::new("/usr/bin/tini-static");
        let s = runtime_spec(&task(true), Some(tini)).expect("spec");
        assert_eq!(s.init.as_deref(), Some(INIT_PATH));
        assert!(s.mounts.contains(&MountSpec::Bind { source: tini.into(), target: INIT_PATH.into(), read_only: true }));
        let e = runtime_spec(&task(true), None).expect_err("no init on the node");
        assert!(e.contains("tini"), "{e}");
        let s = runtime_spec(&task(false), None).expect("spec");
        assert_eq!((s.init, s.mounts.len()), (None, 0));
    }
}
