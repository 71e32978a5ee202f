//! Turning `service create` / `service update` flags into a `ServiceSpec`, with the flag names
//! and value formats of `docker service create|update`.

use std::collections::BTreeMap;

use clap::Args;
use shoal_api::names;
use shoal_api::v1::{
    self, mount, port_config, service_spec::Mode, Annotations, ConfigReference, ContainerSpec, EndpointSpec,
    FileTarget, HealthConfig, Mount, NetworkAttachmentConfig, Placement, PlacementPreference, PortConfig,
    ReplicatedService, ResourceRequirements, Resources, RestartPolicy, SecretReference, ServiceSpec, TaskSpec,
    UpdateConfig,
};

use shoal_api::units::{parse_bytes, parse_duration_ms, parse_nano_cpus};

type Res<T> = Result<T, String>;

/// Flags that set a value, shared by create and update.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonFlags {
    /// Number of tasks (replicated services).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    pub workdir: Option<String>,
    /// Username or UID[:GID].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Overrides the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Signal to stop the container.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Time to wait before force-killing a container (e.g. 10s).
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    /// Stop the tasks on a node out of touch with the managers for this long (e.g. 30s; 0: keep
    /// them running, the default).
    #[arg(long, value_name = "DURATION")]
    pub stop_on_disconnect: Option<String>,
    /// Restart when: none, on-failure, any.
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (e.g. 5s).
    #[arg(long)]
    pub restart_delay: Option<String>,
    /// Maximum number of restarts before giving up (0: unlimited).
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy.
    #[arg(long)]
    pub restart_window: Option<String>,
    /// CPU limit (e.g. 0.5).
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Memory limit (e.g. 512m).
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// Maximum number of processes (0: unlimited).
    #[arg(long)]
    pub limit_pids: Option<i64>,
    /// CPUs reserved for each task.
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    /// Memory reserved for each task.
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// Maximum tasks per node (0: unlimited).
    #[arg(long)]
    pub max_replicas_per_node: Option<u64>,
    /// Endpoint mode: vip or dnsrr.
    #[arg(long)]
    pub endpoint_mode: Option<String>,
    /// Job tasks run at once (replicated-job; default 1, 0: all).
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Tasks updated at once (0: all).
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Delay between updates.
    #[arg(long)]
    pub update_delay: Option<String>,
    /// Action on update failure: pause, continue, rollback.
    #[arg(long)]
    pub update_failure_action: Option<String>,
    /// Time to monitor each updated task for failure.
    #[arg(long)]
    pub update_monitor: Option<String>,
    /// Failure rate tolerated during an update (0-1).
    #[arg(long)]
    pub update_max_failure_ratio: Option<f32>,
    /// Update order: start-first or stop-first.
    #[arg(long)]
    pub update_order: Option<String>,
    /// A new task not running within this long counts as failed (0: no deadline).
    #[arg(long)]
    pub update_startup_deadline: Option<String>,
    /// How long a new task must run before the next batch starts.
    #[arg(long)]
    pub update_min_healthy: Option<String>,
    /// Tasks rolled back at once (0: all).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks.
    #[arg(long)]
    pub rollback_delay: Option<String>,
    /// Action on rollback failure: pause, continue.
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    /// Time to monitor each rolled back task for failure.
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    /// Failure rate tolerated during a rollback (0-1).
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f32>,
    /// Rollback order: start-first or stop-first.
    #[arg(long)]
    pub rollback_order: Option<String>,
    /// Command to run to check health (run with sh -c).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks.
    #[arg(long)]
    pub health_interval: Option<String>,
    /// Maximum time a health check may take.
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Consecutive failures before unhealthy.
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Start period during which failures do not count.
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// Time between checks during the start period (5s unless set).
    #[arg(long)]
    pub health_start_interval: Option<String>,
    /// Disable any container-specified healthcheck.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub read_only: Option<bool>,
    /// Run an init inside the container that forwards signals and reaps processes.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub init: Option<bool>,
    /// Allocate a pseudo-TTY.
    #[arg(long, short = 't', num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tty: Option<bool>,
}

fn kv(s: &str) -> Res<(String, String)> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err(format!("invalid {s:?}: expected KEY=VALUE"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `KEY=VALUE` labels into a map.
pub fn labels(items: &[String]) -> Res<BTreeMap<String, String>> {
    items.iter().map(|s| kv(s)).collect()
}

fn csv_fields(s: &str) -> Res<Vec<(String, String)>> {
    s.split(',').filter(|f| !f.is_empty()).map(kv).collect()
}

/// Parses `--mount type=bind,source=/a,target=/b[,readonly]`.
pub fn parse_mount(s: &str) -> Res<Mount> {
    let mut m = Mount::default();
    for (k, v) in csv_fields(s)? {
        match k.as_str() {
            "type" => {
                let t = match v.as_str() {
                    "bind" => mount::Type::Bind,
                    "volume" => mount::Type::Volume,
                    "tmpfs" => mount::Type::Tmpfs,
                    _ => return Err(format!("mount {s:?}: type must be bind, volume or tmpfs")),
                };
                m.r#type = t as i32;
            }
            "source" | "src" => m.source = v,
            "target" | "destination" | "dst" => m.target = v,
            "readonly" | "ro" => m.read_only = v.is_empty() || v == "true" || v == "1",
            "volume-nocopy" => {
                m.volume_options.get_or_insert_with(Default::default).no_copy = v.is_empty() || v == "true"
            }
            "bind-propagation" => m.bind_options = Some(mount::BindOptions { propagation: v }),
            "tmpfs-size" => {
                m.tmpfs_options.get_or_insert_with(Default::default).size_bytes = bytes_i64(parse_bytes(&v)?)
            }
            "tmpfs-mode" => {
                m.tmpfs_options.get_or_insert_with(Default::default).mode =
                    u32::from_str_radix(&v, 8).map_err(|_| format!("mount {s:?}: tmpfs-mode must be octal"))?
            }
            _ => return Err(format!("mount {s:?}: unknown field {k:?}")),
        }
    }
    if m.target.is_empty() {
        return Err(format!("mount {s:?}: target is required"));
    }
    Ok(m)
}

/// Parses `--publish 8080:80[/udp]` or
/// `published=8080,target=80,protocol=udp,mode=ingress|host,traffic=cluster|local`.
pub fn parse_port(s: &str) -> Res<PortConfig> {
    let bad = || {
        format!(
            "invalid port {s:?}: use PUBLISHED:TARGET[/PROTO] or published=P,target=T,protocol=tcp,mode=ingress|host"
        )
    };
    let mut p = PortConfig::default();
    if s.contains('=') {
        for (k, v) in csv_fields(s)? {
            match k.as_str() {
                "published" => p.published_port = v.parse().map_err(|_| bad())?,
                "target" => p.target_port = v.parse().map_err(|_| bad())?,
                "protocol" => p.protocol = names::parse_protocol(&v).ok_or_else(bad)? as i32,
                "mode" => {
                    p.publish_mode = match v.as_str() {
                        "ingress" => port_config::PublishMode::Ingress,
                        "host" => port_config::PublishMode::Host,
                        _ => return Err(bad()),
                    } as i32
                }
                "traffic" => {
                    p.traffic = match v.as_str() {
                        "cluster" => port_config::Traffic::Cluster,
                        "local" => port_config::Traffic::Local,
                        _ => return Err(format!("invalid port {s:?}: traffic must be cluster or local")),
                    } as i32
                }
                _ => return Err(bad()),
            }
        }
    } else {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        p.protocol = names::parse_protocol(proto).ok_or_else(bad)? as i32;
        match ports.split_once(':') {
            Some((pub_, tgt)) => {
                p.published_port = pub_.parse().map_err(|_| bad())?;
                p.target_port = tgt.parse().map_err(|_| bad())?;
            }
            None => p.target_port = ports.parse().map_err(|_| bad())?,
        }
    }
    if p.target_port == 0 {
        return Err(bad());
    }
    Ok(p)
}

fn file_target(fields: &[(String, String)], default_name: &str) -> Res<FileTarget> {
    let mut t = FileTarget { name: default_name.to_string(), uid: "0".into(), gid: "0".into(), mode: 0o444 };
    for (k, v) in fields {
        match k.as_str() {
            "source" | "src" => {}
            "target" => t.name = v.clone(),
            "uid" => t.uid = v.clone(),
            "gid" => t.gid = v.clone(),
            "mode" => t.mode = u32::from_str_radix(v, 8).map_err(|_| format!("mode {v:?} must be octal"))?,
            _ => return Err(format!("unknown field {k:?}")),
        }
    }
    Ok(t)
}

fn source_and_fields(s: &str) -> Res<(String, Vec<(String, String)>)> {
    if !s.contains('=') {
        return Ok((s.to_string(), Vec::new()));
    }
    let fields = csv_fields(s)?;
    let src = fields
        .iter()
        .find(|(k, _)| k == "source" || k == "src")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("{s:?}: source is required"))?;
    Ok((src, fields))
}

/// Parses `--secret NAME` or `source=NAME,target=FILE,uid=0,gid=0,mode=0400`.
pub fn parse_secret(s: &str) -> Res<SecretReference> {
    let (src, fields) = source_and_fields(s)?;
    Ok(SecretReference {
        secret_id: String::new(),
        secret_name: src.clone(),
        target: Some(file_target(&fields, &src)?),
    })
}

/// Parses `--config NAME` or `source=NAME,target=/path,...`.
pub fn parse_config(s: &str) -> Res<ConfigReference> {
    let (src, fields) = source_and_fields(s)?;
    Ok(ConfigReference {
        config_id: String::new(),
        config_name: src.clone(),
        target: Some(file_target(&fields, &format!("/{src}"))?),
    })
}

fn parse_update(
    base: &mut UpdateConfig,
    parallelism: Option<u64>,
    delay: &Option<String>,
    action: &Option<String>,
    monitor: &Option<String>,
    ratio: Option<f32>,
    order: &Option<String>,
) -> Res<()> {
    if let Some(p) = parallelism {
        base.parallelism = p;
    }
    if let Some(d) = delay {
        base.delay_ms = parse_duration_ms(d)?;
    }
    if let Some(a) = action {
        base.failure_action = names::parse_failure_action(a)
            .ok_or_else(|| format!("failure action {a:?} must be pause, continue or rollback"))?
            as i32;
    }
    if let Some(m) = monitor {
        base.monitor_ms = Some(parse_duration_ms(m)?);
    }
    if let Some(r) = ratio {
        base.max_failure_ratio = r;
    }
    if let Some(o) = order {
        base.order = names::parse_update_order(o)
            .ok_or_else(|| format!("order {o:?} must be start-first or stop-first"))? as i32;
    }
    Ok(())
}

/// Applies the value-setting flags onto a spec (create starts from a default spec).
pub fn apply_common(spec: &mut ServiceSpec, f: &CommonFlags) -> Res<()> {
    if let Some(r) = f.replicas {
        match spec.mode.as_mut() {
            Some(Mode::Replicated(m)) => m.replicas = r,
            Some(Mode::ReplicatedJob(j)) => j.total_completions = r,
            None => spec.mode = Some(Mode::Replicated(ReplicatedService { replicas: r })),
            Some(_) => return Err("--replicas applies only to replicated services".into()),
        }
    }
    if let Some(n) = f.max_concurrent {
        match spec.mode.as_mut() {
            Some(Mode::ReplicatedJob(j)) => j.max_concurrent = n,
            _ => return Err("--max-concurrent applies only to replicated jobs (--mode replicated-job)".into()),
        }
    }
    let tt = spec.task_template.get_or_insert_with(TaskSpec::default);
    if let Some(v) = &f.stop_on_disconnect {
        tt.stop_on_disconnect_ms = parse_duration_ms(v)?;
    }
    let c = tt.container.get_or_insert_with(ContainerSpec::default);
    if let Some(v) = &f.workdir {
        c.dir = v.clone();
    }
    if let Some(v) = &f.user {
        c.user = v.clone();
    }
    if let Some(v) = &f.hostname {
        c.hostname = v.clone();
    }
    if let Some(v) = &f.entrypoint {
        c.command = v.split_whitespace().map(str::to_string).collect();
    }
    if let Some(v) = &f.stop_signal {
        c.stop_signal = v.clone();
    }
    if let Some(v) = &f.stop_grace_period {
        c.stop_grace_period_ms = Some(parse_duration_ms(v)?);
    }
    if let Some(v) = f.read_only {
        c.read_only = v;
    }
    if let Some(v) = f.init {
        c.init = v;
    }
    if let Some(v) = f.tty {
        c.tty = v;
    }
    if f.no_healthcheck {
        c.healthcheck = Some(HealthConfig { test: vec!["NONE".into()], ..Default::default() });
    }
    if f.health_cmd.is_some()
        || f.health_interval.is_some()
        || f.health_timeout.is_some()
        || f.health_retries.is_some()
        || f.health_start_period.is_some()
        || f.health_start_interval.is_some()
    {
        if f.no_healthcheck {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        let h = c.healthcheck.get_or_insert_with(HealthConfig::default);
        if let Some(cmd) = &f.health_cmd {
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        if let Some(v) = &f.health_interval {
            h.interval_ms = parse_duration_ms(v)?;
        }
        if let Some(v) = &f.health_timeout {
            h.timeout_ms = parse_duration_ms(v)?;
        }
        if let Some(v) = f.health_retries {
            h.retries = v;
        }
        if let Some(v) = &f.health_start_period {
            h.start_period_ms = parse_duration_ms(v)?;
        }
        if let Some(v) = &f.health_start_interval {
            h.start_interval_ms = parse_duration_ms(v)?;
        }
    }
    if f.restart_condition.is_some()
        || f.restart_delay.is_some()
        || f.restart_max_attempts.is_some()
        || f.restart_window.is_some()
    {
        let r = tt.restart_policy.get_or_insert_with(RestartPolicy::default);
        if let Some(v) = &f.restart_condition {
            r.condition = names::parse_restart_condition(v)
                .ok_or_else(|| format!("restart condition {v:?} must be none, on-failure or any"))?
                as i32;
        }
        if let Some(v) = &f.restart_delay {
            r.delay_ms = Some(parse_duration_ms(v)?);
        }
        if let Some(v) = f.restart_max_attempts {
            r.max_attempts = v;
        }
        if let Some(v) = &f.restart_window {
            r.window_ms = parse_duration_ms(v)?;
        }
    }
    let res = tt.resources.get_or_insert_with(ResourceRequirements::default);
    if f.limit_cpu.is_some() || f.limit_memory.is_some() || f.limit_pids.is_some() {
        let l = res.limits.get_or_insert_with(Resources::default);
        if let Some(v) = &f.limit_cpu {
            l.nano_cpus = parse_nano_cpus(v)?;
        }
        if let Some(v) = &f.limit_memory {
            l.memory_bytes = bytes_i64(parse_bytes(v)?);
        }
        if let Some(v) = f.limit_pids {
            l.pids = v;
        }
    }
    if f.reserve_cpu.is_some() || f.reserve_memory.is_some() {
        let r = res.reservations.get_or_insert_with(Resources::default);
        if let Some(v) = &f.reserve_cpu {
            r.nano_cpus = parse_nano_cpus(v)?;
        }
        if let Some(v) = &f.reserve_memory {
            r.memory_bytes = bytes_i64(parse_bytes(v)?);
        }
    }
    if res.limits.is_none() && res.reservations.is_none() {
        tt.resources = None;
    }
    if let Some(v) = f.max_replicas_per_node {
        tt.placement.get_or_insert_with(Placement::default).max_replicas_per_node = v;
    }
    if let Some(v) = &f.endpoint_mode {
        spec.endpoint_spec.get_or_insert_with(EndpointSpec::default).mode =
            names::parse_endpoint_mode(v).ok_or_else(|| format!("endpoint mode {v:?} must be vip or dnsrr"))? as i32;
    }
    let update_flags = f.update_parallelism.is_some()
        || f.update_delay.is_some()
        || f.update_failure_action.is_some()
        || f.update_monitor.is_some()
        || f.update_max_failure_ratio.is_some()
        || f.update_order.is_some()
        || f.update_startup_deadline.is_some()
        || f.update_min_healthy.is_some();
    let rollback_flags = f.rollback_parallelism.is_some()
        || f.rollback_delay.is_some()
        || f.rollback_failure_action.is_some()
        || f.rollback_monitor.is_some()
        || f.rollback_max_failure_ratio.is_some()
        || f.rollback_order.is_some();
    if (update_flags || rollback_flags) && is_job(spec) {
        return Err("--update-* and --rollback-* do not apply to a job: it runs to completion, and `service \
                    update` runs it again with the new spec"
            .into());
    }
    if update_flags {
        let u = spec.update_config.get_or_insert_with(default_update_config);
        if let Some(d) = &f.update_startup_deadline {
            u.startup_deadline_ms = parse_duration_ms(d)?;
        }
        if let Some(d) = &f.update_min_healthy {
            u.min_healthy_ms = parse_duration_ms(d)?;
        }
        parse_update(
            u,
            f.update_parallelism,
            &f.update_delay,
            &f.update_failure_action,
            &f.update_monitor,
            f.update_max_failure_ratio,
            &f.update_order,
        )?;
    }
    if rollback_flags {
        let u = spec.rollback_config.get_or_insert_with(default_update_config);
        parse_update(
            u,
            f.rollback_parallelism,
            &f.rollback_delay,
            &f.rollback_failure_action,
            &f.rollback_monitor,
            f.rollback_max_failure_ratio,
            &f.rollback_order,
        )?;
    }
    Ok(())
}

/// Whether the spec is of a job (replicated or global).
fn is_job(spec: &ServiceSpec) -> bool {
    matches!(spec.mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_)))
}

/// Docker's update defaults: one task at a time, pause on failure.
pub fn default_update_config() -> UpdateConfig {
    UpdateConfig { parallelism: 1, ..Default::default() }
}

/// The spec `service create` starts from.
pub fn base_spec(name: String, mode: &str, image: String, args: Vec<String>) -> Res<ServiceSpec> {
    let mode = match mode {
        "replicated" => Mode::Replicated(ReplicatedService { replicas: 1 }),
        "global" => Mode::Global(v1::GlobalService {}),
        "replicated-job" => Mode::ReplicatedJob(v1::ReplicatedJob { max_concurrent: 1, total_completions: 1 }),
        "global-job" => Mode::GlobalJob(v1::GlobalJob {}),
        other => return Err(format!("mode {other:?} must be replicated, global, replicated-job or global-job")),
    };
    // A job has no update or rollback settings: a spec change runs it again.
    let (update_config, rollback_config) = match mode {
        Mode::ReplicatedJob(_) | Mode::GlobalJob(_) => (None, None),
        _ => (Some(default_update_config()), Some(default_update_config())),
    };
    Ok(ServiceSpec {
        annotations: Some(Annotations { name, labels: BTreeMap::new() }),
        task_template: Some(TaskSpec {
            container: Some(ContainerSpec { image, args, ..Default::default() }),
            ..Default::default()
        }),
        mode: Some(mode),
        update_config,
        rollback_config,
        ..Default::default()
    })
}

/// Lists set on create.
#[derive(Debug, Default)]
pub struct Lists {
    pub env: Vec<String>,
    pub labels: Vec<String>,
    pub container_labels: Vec<String>,
    pub constraints: Vec<String>,
    pub placement_prefs: Vec<String>,
    pub mounts: Vec<String>,
    pub publish: Vec<String>,
    pub networks: Vec<String>,
    pub secrets: Vec<String>,
    pub configs: Vec<String>,
    pub groups: Vec<String>,
}

fn parse_pref(s: &str) -> Res<PlacementPreference> {
    match s.split_once('=') {
        Some(("spread", v)) => Ok(PlacementPreference { spread: v.to_string() }),
        _ => Err(format!("placement preference {s:?} must be spread=node.labels.<key>")),
    }
}

/// Adds list values (create) onto a spec.
pub fn add_lists(spec: &mut ServiceSpec, l: &Lists) -> Res<()> {
    if let Some(a) = spec.annotations.as_mut() {
        a.labels.extend(labels(&l.labels)?);
    }
    let tt = spec.task_template.get_or_insert_with(TaskSpec::default);
    let c = tt.container.get_or_insert_with(ContainerSpec::default);
    c.env.extend(l.env.iter().cloned());
    c.labels.extend(labels(&l.container_labels)?);
    c.groups.extend(l.groups.iter().cloned());
    for m in &l.mounts {
        c.mounts.push(parse_mount(m)?);
    }
    for s in &l.secrets {
        c.secrets.push(parse_secret(s)?);
    }
    for s in &l.configs {
        c.configs.push(parse_config(s)?);
    }
    if !l.constraints.is_empty() || !l.placement_prefs.is_empty() {
        let p = tt.placement.get_or_insert_with(Placement::default);
        p.constraints.extend(l.constraints.iter().cloned());
        for pref in &l.placement_prefs {
            p.preferences.push(parse_pref(pref)?);
        }
    }
    for n in &l.networks {
        tt.networks.push(parse_network(n)?);
    }
    if !l.publish.is_empty() {
        let e = spec.endpoint_spec.get_or_insert_with(EndpointSpec::default);
        for p in &l.publish {
            e.ports.push(parse_port(p)?);
        }
    }
    Ok(())
}

/// Parses `--network NAME` or `--network name=NAME,alias=A[,alias=B]`.
pub fn parse_network(s: &str) -> Res<NetworkAttachmentConfig> {
    if !s.contains('=') {
        return Ok(NetworkAttachmentConfig { target: s.to_string(), aliases: Vec::new() });
    }
    let mut n = NetworkAttachmentConfig::default();
    for (k, v) in csv_fields(s)? {
        match k.as_str() {
            "name" | "target" => n.target = v,
            "alias" => n.aliases.push(v),
            other => return Err(format!("--network {s:?}: unknown field {other:?} (known: name, alias)")),
        }
    }
    if n.target.is_empty() {
        return Err(format!("--network {s:?}: name=NETWORK is missing"));
    }
    Ok(n)
}

/// Removes list values (update's `--*-rm` flags): env and labels by key, constraints by
/// expression, mounts by target, ports by published port, networks/secrets/configs by name.
pub fn remove_lists(spec: &mut ServiceSpec, l: &Lists) -> Res<()> {
    if let Some(a) = spec.annotations.as_mut() {
        for k in &l.labels {
            a.labels.remove(k);
        }
    }
    let tt = spec.task_template.get_or_insert_with(TaskSpec::default);
    let c = tt.container.get_or_insert_with(ContainerSpec::default);
    c.env.retain(|e| !l.env.iter().any(|k| e.split('=').next() == Some(k.as_str())));
    for k in &l.container_labels {
        c.labels.remove(k);
    }
    c.groups.retain(|g| !l.groups.contains(g));
    c.mounts.retain(|m| !l.mounts.contains(&m.target));
    c.secrets.retain(|s| !l.secrets.contains(&s.secret_name));
    c.configs.retain(|s| !l.configs.contains(&s.config_name));
    if let Some(p) = tt.placement.as_mut() {
        p.constraints.retain(|x| !l.constraints.contains(x));
        for pref in &l.placement_prefs {
            let pref = parse_pref(pref)?;
            p.preferences.retain(|x| x.spread != pref.spread);
        }
    }
    tt.networks.retain(|n| !l.networks.contains(&n.target));
    if let Some(e) = spec.endpoint_spec.as_mut() {
        for p in &l.publish {
            let port: u32 = p
                .split(':')
                .next()
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| format!("--publish-rm {p:?}: give the published port"))?;
            e.ports.retain(|x| x.published_port != port);
        }
    }
    // Env additions replace an existing value of the same key.
    Ok(())
}

/// Adds env entries, replacing earlier values of the same key (update's `--env-add`).
pub fn upsert_env(env: &mut Vec<String>, adds: &[String]) {
    for a in adds {
        let key = a.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(a.clone());
    }
}

/// A parsed size as the i64 the specs carry (sizes are bounded well below i64::MAX).
fn bytes_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_in_both_forms() {
        let n = parse_network("front").expect("plain");
        assert_eq!((n.target.as_str(), n.aliases.len()), ("front", 0));
        let n = parse_network("name=front,alias=web,alias=www").expect("long");
        assert_eq!((n.target.as_str(), n.aliases.clone()), ("front", vec!["web".to_string(), "www".to_string()]));
        assert!(parse_network("alias=web").expect_err("no name").contains("name=NETWORK is missing"));
        assert!(parse_network("name=front,mtu=9").expect_err("unknown field").contains("unknown field \"mtu\""));
    }

    #[test]
    fn mounts_ports_secrets_parse() {
        let m = parse_mount("type=bind,source=/a,target=/b,readonly").expect("mount");
        assert_eq!(
            (m.r#type(), m.source.as_str(), m.target.as_str(), m.read_only),
            (mount::Type::Bind, "/a", "/b", true)
        );
        assert!(parse_mount("type=nfs,target=/x").is_err());
        let p = parse_port("8080:80/udp").expect("port");
        assert_eq!((p.published_port, p.target_port, p.protocol()), (8080, 80, port_config::Protocol::Udp));
        let p = parse_port("published=80,target=8000,mode=host").expect("port");
        assert_eq!(p.publish_mode(), port_config::PublishMode::Host);
        assert!(parse_port("x:y").is_err());
        let s = parse_secret("source=db,target=pw,mode=0400").expect("secret");
        assert_eq!(
            (s.secret_name.as_str(), s.target.as_ref().map(|t| (t.name.as_str(), t.mode))),
            ("db", Some(("pw", 0o400)))
        );
    }

    #[test]
    fn common_flags_set_fields() {
        let mut spec = base_spec("web".into(), "replicated", "img".into(), vec![]).expect("spec");
        let f = CommonFlags {
            replicas: Some(4),
            restart_condition: Some("on-failure".into()),
            limit_memory: Some("64m".into()),
            update_order: Some("start-first".into()),
            ..Default::default()
        };
        apply_common(&mut spec, &f).expect("apply");
        assert!(matches!(spec.mode, Some(Mode::Replicated(ReplicatedService { replicas: 4 }))));
        let tt = spec.task_template.as_ref().expect("tt");
        assert_eq!(tt.restart_policy.as_ref().map(|r| r.condition()), Some(v1::restart_policy::Condition::OnFailure));
        assert_eq!(tt.resources.as_ref().and_then(|r| r.limits.as_ref()).map(|l| l.memory_bytes), Some(64 << 20));
        assert_eq!(spec.update_config.as_ref().map(|u| u.order()), Some(v1::update_config::Order::StartFirst));
        let bad = CommonFlags { restart_condition: Some("sometimes".into()), ..Default::default() };
        assert!(apply_common(&mut spec, &bad).is_err());
    }

    #[test]
    fn a_job_takes_no_update_settings() {
        let mut job = base_spec("batch".into(), "replicated-job", "img".into(), vec![]).expect("spec");
        assert_eq!((job.update_config, job.rollback_config), (None, None));
        for f in [
            CommonFlags { update_parallelism: Some(2), ..Default::default() },
            CommonFlags { rollback_order: Some("start-first".into()), ..Default::default() },
        ] {
            let e = apply_common(&mut job, &f).expect_err("refused");
            assert!(e.contains("do not apply to a job"), "{e}");
        }
    }

    #[test]
    fn env_add_replaces_same_key() {
        let mut env = vec!["A=1".to_string(), "B=2".to_string()];
        upsert_env(&mut env, &["A=3".to_string()]);
        assert_eq!(env, vec!["B=2".to_string(), "A=3".to_string()]);
    }
}
