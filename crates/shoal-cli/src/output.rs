//! Output: tables for people, JSON for scripts. The JSON row shapes of `node ls`,
//! `service ls` and `service ps` are a contract (field names stay stable); `inspect` prints the
//! whole object in protobuf's canonical JSON mapping.

use serde_json::{json, Value};
use shoal_api::names;
use shoal_api::v1::{service_spec::Mode, Cluster, Network, NodeRole, NodeView, Service, ServiceView, Task};

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON on one document.
    Json,
}

/// Prints pretty JSON.
pub fn print_json(v: &Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into()));
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{:<w$}   ", cell, w = widths[i]));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `node ls --format json` row.
pub fn node_row(v: &NodeView) -> Value {
    let n = v.node.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let spec = n.spec.clone().unwrap_or_default();
    json!({
        "id": n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        "hostname": n.description.as_ref().map(|d| d.hostname.clone()).unwrap_or_default(),
        "role": names::node_role(n.role()),
        "status": names::node_state(status.state()),
        "availability": names::availability(spec.availability()),
        "manager_status": if n.role() == NodeRole::Manager && !v.manager_status.is_empty() { Value::from(v.manager_status.clone()) } else { Value::Null },
        "addr": status.addr,
    })
}

fn mode_name(s: &Service) -> &'static str {
    match s.spec.as_ref().and_then(|sp| sp.mode.as_ref()) {
        Some(Mode::Replicated(_)) => "replicated",
        Some(Mode::Global(_)) => "global",
        Some(Mode::ReplicatedJob(_)) => "replicated-job",
        Some(Mode::GlobalJob(_)) => "global-job",
        None => "",
    }
}

/// A service's published ports as `docker service ls` shows them: `*:8080->80/tcp`.
pub fn ports_column(spec: &shoal_api::v1::ServiceSpec) -> String {
    use shoal_api::v1::port_config::Protocol;
    let ports = spec.endpoint_spec.as_ref().map(|e| e.ports.as_slice()).unwrap_or_default();
    ports
        .iter()
        .filter(|p| p.published_port > 0)
        .map(|p| {
            let proto = match p.protocol() {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            };
            format!("*:{}->{}/{proto}", p.published_port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `service ls --format json` row.
pub fn service_row(v: &ServiceView) -> Value {
    let s = v.service.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    json!({
        "id": s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        "name": spec.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
        "mode": mode_name(&s),
        "replicas": v.desired_tasks,
        "running": v.running_tasks,
        "completed": v.completed_tasks,
        "image": spec.task_template.as_ref().and_then(|t| t.container.as_ref()).map(|c| c.image.clone()).unwrap_or_default(),
        "ports": ports_column(&spec),
        "update_state": s.update_status.as_ref().map_or("", |u| names::update_state(u.state())),
        "update_message": s.update_status.as_ref().map(|u| u.message.clone()).unwrap_or_default(),
    })
}

/// `service ps --format json` row (plus `node`, the hostname, for the table).
pub fn task_row(service_name: &str, t: &Task, node_hostname: &str) -> Value {
    let status = t.status.clone().unwrap_or_default();
    let name = if t.slot > 0 { format!("{service_name}.{}", t.slot) } else { format!("{service_name}.{}", t.node_id) };
    json!({
        "id": t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        "name": name,
        "slot": t.slot,
        "node_id": t.node_id,
        "node": node_hostname,
        "desired_state": names::task_state(t.desired_state()),
        "state": names::task_state(status.state()),
        // With a health check, while it runs: starting, healthy or unhealthy.
        "health": status.health.as_ref().filter(|_| status.state() == shoal_api::v1::TaskState::Running).map(|h| match h.status() {
            shoal_api::v1::health::Status::None => "",
            shoal_api::v1::health::Status::Starting => "starting",
            shoal_api::v1::health::Status::Healthy => "healthy",
            shoal_api::v1::health::Status::Unhealthy => "unhealthy",
        }).unwrap_or(""),
        // A task waiting for a node says why in its status message (as `docker service ps`).
        "error": if status.err.is_empty() && status.state() == shoal_api::v1::TaskState::Pending { status.message } else { status.err },
        // Its address on each network, and its container's process while it runs.
        "networks": t.networks.iter().map(|a| json!({"network_id": a.network_id, "address": a.address, "aliases": a.aliases})).collect::<Vec<_>>(),
        "pid": status.container.as_ref().map_or(0, |c| c.pid),
    })
}

/// `service inspect --format table`.
pub fn service_pretty(s: &Service) {
    let row = service_row(&ServiceView { service: Some(s.clone()), ..Default::default() });
    outln!("ID:       {}", row["id"].as_str().unwrap_or(""));
    outln!("Name:     {}", row["name"].as_str().unwrap_or(""));
    outln!("Mode:     {}", row["mode"].as_str().unwrap_or(""));
    if let Some(Mode::Replicated(r)) = s.spec.as_ref().and_then(|sp| sp.mode.as_ref()) {
        outln!(" Replicas: {}", r.replicas);
    }
    outln!("Image:    {}", row["image"].as_str().unwrap_or(""));
    if let Some(c) = s.spec.as_ref().and_then(|sp| sp.task_template.as_ref()).and_then(|t| t.container.as_ref()) {
        if !c.args.is_empty() {
            outln!("Args:     {}", c.args.join(" "));
        }
        if !c.env.is_empty() {
            outln!("Env:      {}", c.env.join(" "));
        }
    }
    let ports = s.spec.as_ref().map(ports_column).unwrap_or_default();
    if !ports.is_empty() {
        outln!("Ports:    {ports}");
    }
    for v in &s.virtual_ips {
        outln!("VIP:      {} (network {})", v.address, v.network_id);
    }
    if let Some(u) = &s.update_status {
        outln!("Update:   {} ({})", names::update_state(u.state()), u.message);
    }
    outln!("Version:  {}", s.meta.as_ref().map(|m| m.version).unwrap_or(0));
    outln!();
}

/// `node inspect --format table`.
pub fn node_pretty(v: &NodeView) {
    let row = node_row(v);
    for k in ["id", "hostname", "role", "status", "availability", "manager_status", "addr"] {
        let val = match &row[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        outln!("{:<15} {}", format!("{k}:"), val);
    }
    outln!();
}

/// `cluster inspect --format table`.
pub fn cluster_pretty(c: &Cluster) {
    let s = c.settings.unwrap_or_default();
    outln!("ID:                 {}", c.meta.as_ref().map(|m| m.id.as_str()).unwrap_or(""));
    outln!("Name:               {}", c.name);
    let d = |ms: u64| shoal_api::units::format_duration_ms(ms as i64);
    outln!("Heartbeat period:   {} (down after {} missed)", d(s.heartbeat_period_ms), s.heartbeat_grace_periods);
    outln!("Raft:               heartbeat {}, election timeout {}", d(s.raft_heartbeat_ms), d(s.election_timeout_ms));
    outln!("Snapshots:          every {} entries, {} entries kept", s.snapshot_interval_entries, s.log_entries_kept);
    outln!("Task history limit: {}", s.task_history_limit);
    outln!("Node certificates:  valid {}", d(s.node_cert_validity_s * 1000));
    if let Some(ca) = &c.root_ca {
        let digest = shoal_client::pki::cert_der_from_pem(&ca.cert_pem).ok().map(|d| shoal_client::pki::ca_digest(&d));
        outln!("CA digest:          {}", digest.unwrap_or_default());
    }
}

/// A network's name.
pub fn network_name(n: &Network) -> &str {
    n.spec.as_ref().and_then(|s| s.annotations.as_ref()).map_or("", |a| a.name.as_str())
}

/// The `network ls` columns of `n`.
pub fn network_row(n: &Network) -> Vec<String> {
    let spec = n.spec.clone().unwrap_or_default();
    let mut name = network_name(n).to_string();
    if spec.internal {
        name.push_str(" (internal)");
    }
    vec![
        n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        name,
        spec.driver,
        n.subnet.clone(),
        n.gateway.clone(),
        n.vni.to_string(),
        "swarm".to_string(),
    ]
}

/// A row of `service history`.
pub fn revision_row(
    revision: u64,
    spec: Option<&shoal_api::v1::ServiceSpec>,
    replaced_at_ms: Option<i64>,
    current: bool,
) -> Value {
    let replicas = match spec.and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => r.replicas.to_string(),
        Some(Mode::Global(_)) => "global".into(),
        _ => String::new(),
    };
    json!({
        "revision": revision,
        "image": spec.and_then(|s| s.task_template.as_ref()).and_then(|t| t.container.as_ref()).map(|c| c.image.clone()).unwrap_or_default(),
        "replicas": replicas,
        "replaced_at": replaced_at_ms
            .map(|ms| shoal_api::timefmt::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)))
            .unwrap_or_default(),
        "current": current,
        "spec": spec.map(|s| serde_json::to_value(s).unwrap_or_default()),
    })
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn ports_show_as_docker_shows_them() {
        use shoal_api::v1::{port_config::Protocol, EndpointSpec, PortConfig, ServiceSpec};
        let spec = ServiceSpec {
            endpoint_spec: Some(EndpointSpec {
                ports: vec![
                    PortConfig { published_port: 8080, target_port: 80, ..Default::default() },
                    PortConfig {
                        published_port: 53,
                        target_port: 5353,
                        protocol: Protocol::Udp as i32,
                        ..Default::default()
                    },
                    PortConfig { published_port: 0, target_port: 9, ..Default::default() },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(ports_column(&spec), "*:8080->80/tcp, *:53->5353/udp");
        assert_eq!(ports_column(&ServiceSpec::default()), "");
    }
}
