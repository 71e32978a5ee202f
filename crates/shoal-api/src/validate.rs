//! Validation of user-supplied specs, run by the manager that receives a request before anything
//! is proposed. Every error names the field and says why, so the CLI can print it as one line.

use std::collections::HashSet;

use crate::v1::{
    mount, service_spec::Mode, ClusterSettings, ContainerSpec, EndpointSpec, HealthConfig, Mount, NodeSpec, Placement,
    ResourceRequirements, RestartPolicy, ServiceSpec, TaskSpec, UpdateConfig,
};

/// A spec that cannot be accepted: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {field}: {reason}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `task_template.container.image`.
    pub field: String,
    /// What is wrong with it, and what would be accepted.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), reason: reason.into() }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

/// Largest replica count a service may ask for.
pub const MAX_REPLICAS: u64 = 100_000;

/// Names of services, networks, secrets and configs: a DNS label (they become DNS names).
pub fn validate_name(field: &str, name: &str) -> Result {
    if name.is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if name.len() > 63 {
        return Err(err(field, format!("{name:?} is longer than 63 characters")));
    }
    let bytes = name.as_bytes();
    let ok_first = bytes[0].is_ascii_alphanumeric();
    let ok_rest = bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !ok_first || !ok_rest {
        return Err(err(
            field,
            format!("{name:?} must start with a letter or digit and contain only letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

fn validate_labels(field: &str, labels: &std::collections::BTreeMap<String, String>) -> Result {
    for k in labels.keys() {
        if k.is_empty() || k.chars().any(char::is_whitespace) {
            return Err(err(field, format!("label key {k:?} must be non-empty and contain no spaces")));
        }
    }
    Ok(())
}

fn non_negative(field: &str, v: i64) -> Result {
    if v < 0 {
        return Err(err(field, format!("must not be negative (got {v})")));
    }
    Ok(())
}

/// A network spec, as received by `CreateNetwork` (addresses are checked by the allocator).
pub fn validate_network_spec(spec: &crate::v1::NetworkSpec) -> Result {
    let ann = spec.annotations.as_ref().ok_or_else(|| err("name", "must be set"))?;
    validate_name("name", &ann.name)?;
    validate_labels("labels", &ann.labels)?;
    if !spec.driver.is_empty() && spec.driver != "overlay" {
        return Err(err("driver", format!("{:?} is not supported: use overlay", spec.driver)));
    }
    if spec.ingress && (spec.internal || spec.attachable) {
        return Err(err(
            "ingress",
            "the ingress network carries published ports only: it cannot be --internal or --attachable",
        ));
    }
    if !spec.gateway.is_empty() && spec.subnet.is_empty() {
        return Err(err("gateway", "needs --subnet"));
    }
    for (k, v) in &spec.options {
        match k.as_str() {
            "mtu" => match v.parse::<u32>() {
                Ok(m) if (1280..=9000).contains(&m) => {}
                _ => return Err(err("opt mtu", format!("{v:?} must be a number from 1280 to 9000"))),
            },
            other => return Err(err("opt", format!("unknown option {other:?} (known: mtu)"))),
        }
    }
    Ok(())
}

/// A whole service spec, as received by `CreateService` / `UpdateService`.
pub fn validate_service_spec(spec: &ServiceSpec) -> Result {
    let ann = spec.annotations.as_ref().ok_or_else(|| err("name", "must be set"))?;
    validate_name("name", &ann.name)?;
    validate_labels("labels", &ann.labels)?;
    match &spec.mode {
        None => return Err(err("mode", "must be one of replicated, global, replicated-job, global-job")),
        Some(Mode::Replicated(r)) if r.replicas > MAX_REPLICAS => {
            return Err(err("replicas", format!("{} is more than the limit of {MAX_REPLICAS}", r.replicas)))
        }
        Some(Mode::ReplicatedJob(j)) if j.total_completions > MAX_REPLICAS || j.max_concurrent > MAX_REPLICAS => {
            return Err(err("replicas", format!("more than the limit of {MAX_REPLICAS}")))
        }
        Some(_) => {}
    }
    let tt = spec.task_template.as_ref().ok_or_else(|| err("task_template", "must be set"))?;
    validate_task_spec(tt)?;
    if matches!(spec.mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_))) {
        for (field, set) in
            [("update_config", spec.update_config.is_some()), ("rollback_config", spec.rollback_config.is_some())]
        {
            if set {
                return Err(err(
                    field,
                    "does not apply to a job: a job runs to completion, and a spec change runs it again",
                ));
            }
        }
    }
    if let Some(u) = &spec.update_config {
        validate_update_config("update_config", u)?;
    }
    if let Some(u) = &spec.rollback_config {
        validate_update_config("rollback_config", u)?;
    }
    if let Some(e) = &spec.endpoint_spec {
        validate_endpoint(e)?;
        // A new task could not bind a host-mode port its old one holds on the same node.
        let host_port = e
            .ports
            .iter()
            .find(|p| p.publish_mode() == crate::v1::port_config::PublishMode::Host && p.published_port != 0);
        for (field, u) in [("update_config", &spec.update_config), ("rollback_config", &spec.rollback_config)] {
            if let (Some(p), Some(u)) = (host_port, u) {
                if u.order() == crate::v1::update_config::Order::StartFirst {
                    return Err(err(
                        format!("{field}.order"),
                        format!(
                            "start-first cannot replace a task publishing host-mode port {}: the new task could not \
                             bind it beside the old one on its node; use stop-first",
                            p.published_port
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_task_spec(t: &TaskSpec) -> Result {
    let c = t.container.as_ref().ok_or_else(|| err("task_template.container", "must be set"))?;
    validate_container(c)?;
    if let Some(r) = &t.resources {
        validate_resources(r)?;
    }
    if let Some(r) = &t.restart_policy {
        validate_restart(r)?;
    }
    if let Some(p) = &t.placement {
        validate_placement(p)?;
    }
    non_negative("stop_on_disconnect", t.stop_on_disconnect_ms)?;
    if (1..1_000).contains(&t.stop_on_disconnect_ms) {
        return Err(err(
            "stop_on_disconnect",
            format!("must be 0 (keep running) or at least 1s (got {}ms): a node's touch with the managers is judged by 1 s heartbeats", t.stop_on_disconnect_ms),
        ));
    }
    let mut seen = HashSet::new();
    for n in &t.networks {
        if n.target.is_empty() {
            return Err(err("networks", "a network attachment must name its network"));
        }
        if !seen.insert(&n.target) {
            return Err(err("networks", format!("network {:?} is attached twice", n.target)));
        }
    }
    Ok(())
}

fn validate_container(c: &ContainerSpec) -> Result {
    if c.image.trim().is_empty() {
        return Err(err("image", "must be set"));
    }
    if c.image.chars().any(char::is_whitespace) || c.image.len() > 512 {
        return Err(err("image", format!("{:?} is not a valid image reference", c.image)));
    }
    for e in &c.env {
        let key = e.split('=').next().unwrap_or("");
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(err("env", format!("{e:?} must be KEY=VALUE with a non-empty key without spaces")));
        }
    }
    validate_labels("container_labels", &c.labels)?;
    let mut targets = HashSet::new();
    for m in &c.mounts {
        validate_mount(m)?;
        if !targets.insert(m.target.as_str()) {
            return Err(err("mounts", format!("two mounts target {:?}", m.target)));
        }
    }
    if !c.stop_signal.is_empty() && parse_signal(&c.stop_signal).is_none() {
        return Err(err(
            "stop_signal",
            format!("{:?} is not a signal name (e.g. SIGTERM) or number 1-64", c.stop_signal),
        ));
    }
    if let Some(g) = c.stop_grace_period_ms {
        non_negative("stop_grace_period", g)?;
    }
    if let Some(h) = &c.healthcheck {
        validate_health(h)?;
    }
    let mut files = HashSet::new();
    for s in &c.secrets {
        if s.secret_name.is_empty() && s.secret_id.is_empty() {
            return Err(err("secrets", "a secret reference must name its secret"));
        }
        let file = s.target.as_ref().map(|t| t.name.as_str()).filter(|n| !n.is_empty()).unwrap_or(&s.secret_name);
        if !files.insert(("secret", file.to_string())) {
            return Err(err("secrets", format!("two secrets use the file {file:?}")));
        }
    }
    for s in &c.configs {
        if s.config_name.is_empty() && s.config_id.is_empty() {
            return Err(err("configs", "a config reference must name its config"));
        }
        let file = s.target.as_ref().map(|t| t.name.as_str()).filter(|n| !n.is_empty()).unwrap_or(&s.config_name);
        if !files.insert(("config", file.to_string())) {
            return Err(err("configs", format!("two configs use the file {file:?}")));
        }
    }
    Ok(())
}

/// Parses `SIGTERM`, `TERM` or `15` into a signal number.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    let n = match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "WINCH" => 28,
        "PWR" => 30,
        "SYS" => 31,
        _ => return None,
    };
    Some(n)
}

fn validate_mount(m: &Mount) -> Result {
    if !m.target.starts_with('/') {
        return Err(err("mounts", format!("target {:?} must be an absolute path", m.target)));
    }
    match m.r#type() {
        mount::Type::Bind => {
            if !m.source.starts_with('/') {
                return Err(err("mounts", format!("bind source {:?} must be an absolute path on the host", m.source)));
            }
        }
        mount::Type::Volume => {
            if !m.source.is_empty() {
                validate_name("mounts.source", &m.source)?;
            }
        }
        mount::Type::Tmpfs => {
            if !m.source.is_empty() {
                return Err(err("mounts", "a tmpfs mount takes no source"));
            }
            if let Some(t) = &m.tmpfs_options {
                non_negative("mounts.tmpfs_size", t.size_bytes)?;
            }
        }
    }
    Ok(())
}

fn validate_health(h: &HealthConfig) -> Result {
    if let Some(first) = h.test.first() {
        match first.as_str() {
            "NONE" => {}
            "CMD" | "CMD-SHELL" if h.test.len() > 1 => {}
            "CMD" | "CMD-SHELL" => return Err(err("healthcheck.test", "needs a command after CMD / CMD-SHELL")),
            other => {
                return Err(err("healthcheck.test", format!("must start with NONE, CMD or CMD-SHELL, not {other:?}")))
            }
        }
    }
    for (f, v) in [
        ("healthcheck.interval", h.interval_ms),
        ("healthcheck.timeout", h.timeout_ms),
        ("healthcheck.start_period", h.start_period_ms),
        ("healthcheck.start_interval", h.start_interval_ms),
    ] {
        non_negative(f, v)?;
    }
    Ok(())
}

fn validate_resources(r: &ResourceRequirements) -> Result {
    for (name, res) in [("limits", &r.limits), ("reservations", &r.reservations)] {
        if let Some(res) = res {
            non_negative(&format!("resources.{name}.cpus"), res.nano_cpus)?;
            non_negative(&format!("resources.{name}.memory"), res.memory_bytes)?;
            non_negative(&format!("resources.{name}.pids"), res.pids)?;
        }
    }
    if let (Some(l), Some(res)) = (&r.limits, &r.reservations) {
        if l.memory_bytes > 0 && res.memory_bytes > l.memory_bytes {
            return Err(err("resources.reservations.memory", "must not exceed the memory limit"));
        }
        if l.nano_cpus > 0 && res.nano_cpus > l.nano_cpus {
            return Err(err("resources.reservations.cpus", "must not exceed the cpu limit"));
        }
    }
    Ok(())
}

fn validate_restart(r: &RestartPolicy) -> Result {
    if let Some(d) = r.delay_ms {
        non_negative("restart_policy.delay", d)?;
    }
    non_negative("restart_policy.window", r.window_ms)
}

fn validate_update_config(field: &str, u: &UpdateConfig) -> Result {
    non_negative(&format!("{field}.delay"), u.delay_ms)?;
    non_negative(&format!("{field}.startup_deadline"), u.startup_deadline_ms)?;
    non_negative(&format!("{field}.min_healthy"), u.min_healthy_ms)?;
    if let Some(m) = u.monitor_ms {
        non_negative(&format!("{field}.monitor"), m)?;
    }
    if !(0.0..=1.0).contains(&u.max_failure_ratio) {
        return Err(err(
            format!("{field}.max_failure_ratio"),
            format!("{} must be between 0 and 1", u.max_failure_ratio),
        ));
    }
    Ok(())
}

fn validate_endpoint(e: &EndpointSpec) -> Result {
    let mut published = HashSet::new();
    for p in &e.ports {
        if p.target_port == 0 || p.target_port > 65535 {
            return Err(err("ports", format!("target port {} must be 1-65535", p.target_port)));
        }
        if p.published_port > 65535 {
            return Err(err("ports", format!("published port {} must be 0-65535", p.published_port)));
        }
        if p.published_port != 0 && !published.insert((p.published_port, p.protocol)) {
            return Err(err("ports", format!("published port {} is used twice", p.published_port)));
        }
    }
    if e.mode() == crate::v1::endpoint_spec::Mode::Dnsrr
        && e.ports.iter().any(|p| p.publish_mode() == crate::v1::port_config::PublishMode::Ingress)
    {
        return Err(err("endpoint_mode", "dnsrr cannot publish ports in ingress mode; use mode=host"));
    }
    if let Some(p) = e.ports.iter().find(|p| {
        p.publish_mode() == crate::v1::port_config::PublishMode::Host
            && p.traffic() == crate::v1::port_config::Traffic::Local
    }) {
        return Err(err(
            "ports",
            format!(
                "traffic=local applies to ingress mode (a host-mode port only ever reaches its own node's task); \
                 drop it from --publish published={},target={},mode=host",
                p.published_port, p.target_port
            ),
        ));
    }
    if let Some(p) = e.ports.iter().find(|p| p.protocol() == crate::v1::port_config::Protocol::Sctp) {
        return Err(err("ports", format!("port {}: only tcp and udp can be published", p.target_port)));
    }
    Ok(())
}

/// The operator of a placement constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// A parsed placement constraint such as `node.labels.zone==a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// `node.id`, `node.hostname`, `node.role`, `node.platform.os`, `node.platform.arch` or
    /// `node.labels.<key>`.
    pub key: String,
    /// Equality or inequality.
    pub op: ConstraintOp,
    /// The value compared with.
    pub value: String,
}

/// Parses a constraint expression; keys and operators as in Docker Swarm.
pub fn parse_constraint(expr: &str) -> Result<Constraint> {
    let field = "constraint";
    let (key, op, value) = if let Some((k, v)) = expr.split_once("==") {
        (k, ConstraintOp::Eq, v)
    } else if let Some((k, v)) = expr.split_once("!=") {
        (k, ConstraintOp::Ne, v)
    } else {
        return Err(err(field, format!("{expr:?} must be KEY==VALUE or KEY!=VALUE")));
    };
    let (key, value) = (key.trim(), value.trim());
    let known = matches!(key, "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch")
        || key.strip_prefix("node.labels.").is_some_and(|l| !l.is_empty());
    if !known {
        return Err(err(
            field,
            format!("unknown key {key:?} in {expr:?}; use node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<key>"),
        ));
    }
    if value.is_empty() {
        return Err(err(field, format!("{expr:?} has no value")));
    }
    if key == "node.role" && value != "manager" && value != "worker" {
        return Err(err(field, format!("node.role must be manager or worker, not {value:?}")));
    }
    Ok(Constraint { key: key.to_string(), op, value: value.to_string() })
}

fn validate_placement(p: &Placement) -> Result {
    for c in &p.constraints {
        parse_constraint(c)?;
    }
    for pref in &p.preferences {
        if pref.spread.strip_prefix("node.labels.").is_none_or(str::is_empty) {
            return Err(err(
                "placement_pref",
                format!("spread={:?} must name a node label: spread=node.labels.<key>", pref.spread),
            ));
        }
    }
    Ok(())
}

/// A node spec as received by `UpdateNode`.
pub fn validate_node_spec(spec: &NodeSpec) -> Result {
    if let Some(a) = &spec.annotations {
        validate_labels("labels", &a.labels)?;
    }
    Ok(())
}

/// Cluster settings after defaults were filled in: each must be in a range that keeps the
/// cluster working.
pub fn validate_settings(s: &ClusterSettings) -> Result {
    if !(10..=10_000).contains(&s.raft_heartbeat_ms) {
        return Err(err("raft_heartbeat", "must be between 10 ms and 10 s"));
    }
    if s.election_timeout_ms < 3 * s.raft_heartbeat_ms || s.election_timeout_ms > 60_000 {
        return Err(err("election_timeout", "must be at least 3 raft heartbeats and at most 60 s"));
    }
    if s.snapshot_interval_entries < 10 {
        return Err(err("snapshot_interval", "must be at least 10 entries"));
    }
    if !(100..=60_000).contains(&s.heartbeat_period_ms) {
        return Err(err("heartbeat_period", "must be between 100 ms and 60 s"));
    }
    if !(1..=100).contains(&s.heartbeat_grace_periods) {
        return Err(err("heartbeat_grace_periods", "must be between 1 and 100"));
    }
    if s.task_history_limit > 1000 {
        return Err(err("task_history_limit", "must be at most 1000"));
    }
    if !(60..=10 * 365 * 24 * 3600).contains(&s.node_cert_validity_s) {
        return Err(err("cert_expiry", "must be between 1 minute and 10 years"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Annotations, ReplicatedService};

    fn spec(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            annotations: Some(Annotations { name: name.into(), ..Default::default() }),
            task_template: Some(TaskSpec {
                container: Some(ContainerSpec { image: image.into(), ..Default::default() }),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 3 })),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(validate_service_spec(&spec("web", "registry:5000/busybox:1")), Ok(()));
    }

    #[test]
    fn a_job_has_no_update_or_rollback_config() {
        let mut job = spec("batch", "img");
        job.mode = Some(Mode::ReplicatedJob(crate::v1::ReplicatedJob { max_concurrent: 1, total_completions: 3 }));
        assert_eq!(validate_service_spec(&job), Ok(()));
        job.update_config = Some(UpdateConfig { parallelism: 1, ..Default::default() });
        let e = validate_service_spec(&job).expect_err("refused");
        assert_eq!(e.field, "update_config");
        assert!(e.reason.contains("does not apply to a job"), "{e:?}");
        job.update_config = None;
        job.mode = Some(Mode::GlobalJob(crate::v1::GlobalJob {}));
        job.rollback_config = Some(UpdateConfig::default());
        assert_eq!(validate_service_spec(&job).expect_err("refused").field, "rollback_config");
    }

    #[test]
    fn stop_on_disconnect_is_off_or_at_least_a_second() {
        let with = |ms| {
            let mut s = spec("web", "img");
            if let Some(t) = s.task_template.as_mut() {
                t.stop_on_disconnect_ms = ms;
            }
            validate_service_spec(&s)
        };
        assert_eq!(with(0), Ok(()));
        assert_eq!(with(30_000), Ok(()));
        for bad in [-1, 1, 999] {
            assert_eq!(with(bad).expect_err("refused").field, "stop_on_disconnect", "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(ServiceSpec, &str)> = vec![
            (spec("", "img"), "name"),
            (spec("we b", "img"), "name"),
            (spec(&"x".repeat(64), "img"), "name"),
            (spec("web", ""), "image"),
            (spec("web", "a b"), "image"),
            (
                {
                    let mut s = spec("web", "img");
                    s.mode = None;
                    s
                },
                "mode",
            ),
            (
                {
                    let mut s = spec("web", "img");
                    s.mode = Some(Mode::Replicated(ReplicatedService { replicas: MAX_REPLICAS + 1 }));
                    s
                },
                "replicas",
            ),
            (
                {
                    let mut s = spec("web", "img");
                    if let Some(c) = s.task_template.as_mut().and_then(|t| t.container.as_mut()) {
                        c.env.push("=x".into());
                    }
                    s
                },
                "env",
            ),
            (
                {
                    let mut s = spec("web", "img");
                    if let Some(c) = s.task_template.as_mut().and_then(|t| t.container.as_mut()) {
                        c.stop_signal = "SIGNOPE".into();
                    }
                    s
                },
                "stop_signal",
            ),
            (
                {
                    let mut s = spec("web", "img");
                    if let Some(t) = s.task_template.as_mut() {
                        t.placement =
                            Some(Placement { constraints: vec!["node.color==red".into()], ..Default::default() });
                    }
                    s
                },
                "constraint",
            ),
        ];
        for (s, field) in cases {
            let e = validate_service_spec(&s).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn ports_publish_in_both_modes_and_local_traffic_only_in_ingress_mode() {
        use crate::v1::{port_config::PublishMode, EndpointSpec, PortConfig};
        let with = |mode: PublishMode| {
            let mut s = spec("web", "img");
            s.endpoint_spec = Some(EndpointSpec {
                ports: vec![PortConfig {
                    published_port: 8080,
                    target_port: 80,
                    publish_mode: mode as i32,
                    ..Default::default()
                }],
                ..Default::default()
            });
            s
        };
        assert!(validate_service_spec(&with(PublishMode::Host)).is_ok());
        assert!(validate_service_spec(&with(PublishMode::Ingress)).is_ok());
        let local = |mode| {
            let mut s = with(mode);
            if let Some(p) = s.endpoint_spec.as_mut().and_then(|e| e.ports.first_mut()) {
                p.traffic = crate::v1::port_config::Traffic::Local as i32;
            }
            s
        };
        assert!(validate_service_spec(&local(PublishMode::Ingress)).is_ok());
        let mut start_first = with(PublishMode::Host);
        start_first.update_config = Some(crate::v1::UpdateConfig {
            order: crate::v1::update_config::Order::StartFirst as i32,
            ..Default::default()
        });
        let e = validate_service_spec(&start_first).expect_err("refused");
        assert_eq!(e.field, "update_config.order");
        assert!(e.to_string().contains("use stop-first"), "{e}");
        start_first.endpoint_spec = Some(EndpointSpec::default());
        assert!(validate_service_spec(&start_first).is_ok(), "fine without host-mode ports");
        let e = validate_service_spec(&local(PublishMode::Host)).expect_err("refused").to_string();
        assert!(e.contains("traffic=local applies to ingress mode"), "{e}");
    }

    #[test]
    fn constraints_parse() {
        assert_eq!(
            parse_constraint("node.labels.zone != a").map(|c| (c.key, c.op, c.value)),
            Ok(("node.labels.zone".to_string(), ConstraintOp::Ne, "a".to_string()))
        );
        assert!(parse_constraint("node.role==boss").is_err());
        assert!(parse_constraint("node.role").is_err());
        assert!(parse_constraint("node.labels.==x").is_err());
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGFOO"), None);
    }

    #[test]
    fn settings_ranges() {
        let ok = crate::defaults::cluster_settings();
        assert_eq!(validate_settings(&ok), Ok(()));
        let bad = ClusterSettings { election_timeout_ms: 100, ..ok };
        assert_eq!(validate_settings(&bad).map_err(|e| e.field), Err("election_timeout".to_string()));
    }
}
