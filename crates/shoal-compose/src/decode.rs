//! Typed reading of a merged, interpolated stack file into the project: services (as shoal
//! service specs that still name networks, secrets and configs by their names in the file) and
//! the top-level networks, volumes, secrets and configs. Unknown keys and wrong types are errors
//! with their file, line and column; keys Swarm ignores are collected as warnings.

use std::collections::BTreeMap;

use shoal_api::units::{parse_bytes, parse_duration_ms, parse_nano_cpus};
use shoal_api::v1::{
    mount, port_config, restart_policy, service_spec::Mode, update_config, Annotations, ConfigReference, ContainerSpec,
    EndpointSpec, FileTarget, HealthConfig, Mount, NetworkAttachmentConfig, Placement, PlacementPreference, PortConfig,
    ReplicatedService, ResourceRequirements, Resources, RestartPolicy, SecretReference, ServiceSpec, TaskSpec,
    UpdateConfig,
};

use crate::yaml::{Node, Pos, Value};

/// An error in a stack file, with its place.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub pos: Pos,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

impl std::error::Error for Error {}

pub(crate) type Res<T> = Result<T, Error>;

/// Reads the file an `env_file` entry (the node) names into `KEY=VALUE` pairs.
pub type EnvFiles<'a> = &'a dyn Fn(&Node, &str) -> Res<Vec<(String, String)>>;

pub(crate) fn err<T>(n: &Node, message: impl Into<String>) -> Res<T> {
    Err(Error { pos: n.pos.clone(), message: message.into() })
}

/// How a service waits for one it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Created first (`service_started`, the default): its tasks run.
    Started,
    /// Its tasks are healthy (`service_healthy`).
    Healthy,
    /// It ran to completion (`service_completed_successfully`, for jobs).
    Completed,
}

/// A service of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    pub pos: Pos,
    /// The spec, named as in the file (the stack prefix comes later), networks, secrets and
    /// configs referred to by their names in the file.
    pub spec: ServiceSpec,
    pub depends_on: Vec<(String, Condition, Pos)>,
    /// Named volumes it mounts (their names in the file).
    pub volumes: Vec<String>,
}

/// A network of the file's top level.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkDef {
    pub pos: Pos,
    /// Its name in the cluster when set (`name:`, or an external network's).
    pub name: Option<String>,
    pub external: bool,
    pub driver: String,
    pub attachable: bool,
    pub internal: bool,
    pub subnet: String,
    pub gateway: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// A named volume of the file's top level.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeDef {
    pub pos: Pos,
    pub name: Option<String>,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
}

/// A secret or config of the file's top level: from a file, or external.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FileDef {
    pub pos: Pos,
    pub name: Option<String>,
    pub external: bool,
    /// The file, as written (relative to the stack file's directory).
    pub file: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Everything the file describes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Project {
    pub services: BTreeMap<String, ServiceDef>,
    pub networks: BTreeMap<String, NetworkDef>,
    pub volumes: BTreeMap<String, VolumeDef>,
    pub secrets: BTreeMap<String, FileDef>,
    pub configs: BTreeMap<String, FileDef>,
}

/// Keys of a service that Swarm ignores: warned about, not refused.
pub const IGNORED_SERVICE_KEYS: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "cgroupns_mode",
    "container_name",
    "cpu_shares",
    "cpu_quota",
    "cpuset",
    "devices",
    "dns",
    "dns_search",
    "domainname",
    "expose",
    "external_links",
    "extra_hosts",
    "ipc",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "memswap_limit",
    "network_mode",
    "oom_score_adj",
    "pid",
    "platform",
    "privileged",
    "profiles",
    "pull_policy",
    "restart",
    "security_opt",
    "shm_size",
    "stdin_open",
    "sysctls",
    "ulimits",
    "userns_mode",
];

/// Reads keys and values of a mapping node, refusing anything else.
pub(crate) fn entries<'a>(n: &'a Node, what: &str) -> Res<Vec<(&'a str, &'a Node)>> {
    match &n.value {
        Value::Map(e) => e
            .iter()
            .map(|(k, v)| match k.as_str() {
                Some(s) => Ok((s, v)),
                None => err(k, format!("a key of {what} must be a single value, not {}", k.kind())),
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => err(n, format!("{what} must be a mapping, not {}", n.kind())),
    }
}

fn items<'a>(n: &'a Node, what: &str) -> Res<&'a [Node]> {
    match &n.value {
        Value::Seq(v) => Ok(v),
        Value::Null => Ok(&[]),
        _ => err(n, format!("{what} must be a list, not {}", n.kind())),
    }
}

fn string(n: &Node, what: &str) -> Res<String> {
    match &n.value {
        Value::Scalar(s, _) => Ok(s.clone()),
        _ => err(n, format!("{what} must be a single value, not {}", n.kind())),
    }
}

fn boolean(n: &Node, what: &str) -> Res<bool> {
    match n.as_str() {
        Some("true" | "True" | "TRUE") => Ok(true),
        Some("false" | "False" | "FALSE") => Ok(false),
        _ => err(n, format!("{what} must be true or false")),
    }
}

fn number<T: std::str::FromStr>(n: &Node, what: &str) -> Res<T> {
    match n.as_str().map(str::parse::<T>) {
        Some(Ok(v)) => Ok(v),
        _ => err(n, format!("{what} must be a whole number")),
    }
}

fn duration(n: &Node, what: &str) -> Res<i64> {
    parse_duration_ms(&string(n, what)?).or_else(|e| err(n, format!("{what}: {e}")))
}

fn bytes(n: &Node, what: &str) -> Res<i64> {
    let v = parse_bytes(&string(n, what)?).or_else(|e| err(n, format!("{what}: {e}")))?;
    Ok(i64::try_from(v).unwrap_or(i64::MAX))
}

fn octal(n: &Node, what: &str) -> Res<u32> {
    // A plain YAML number such as 0440 is written octal by habit; 0o440 too.
    let s = string(n, what)?;
    let digits = s.strip_prefix("0o").unwrap_or(&s);
    u32::from_str_radix(digits, 8).or_else(|_| err(n, format!("{what} must be an octal mode such as 0440")))
}

/// A string, or a list of strings (`command: echo hi` is split as a shell would, without
/// expansions).
fn words(n: &Node, what: &str) -> Res<Vec<String>> {
    match &n.value {
        Value::Scalar(s, _) => split_words(s).or_else(|e| err(n, format!("{what}: {e}"))),
        Value::Seq(v) => v.iter().map(|i| string(i, what)).collect(),
        Value::Null => Ok(Vec::new()),
        Value::Map(_) => err(n, format!("{what} must be a string or a list, not a mapping")),
    }
}

/// Splits a command line into words: blanks separate, quotes group, a backslash escapes.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed ' in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err(format!("a trailing \\ in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed \" in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(format!("a trailing \\ in {s:?}")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `KEY: value` mappings or `KEY=value` lists (environment, labels). A key without a value is
/// `None`.
pub(crate) fn key_values(n: &Node, what: &str) -> Res<Vec<(String, Option<String>)>> {
    match &n.value {
        Value::Map(_) => entries(n, what)?
            .into_iter()
            .map(|(k, v)| match &v.value {
                Value::Null => Ok((k.to_string(), None)),
                _ => Ok((k.to_string(), Some(string(v, &format!("{what}.{k}"))?))),
            })
            .collect(),
        Value::Seq(v) => v
            .iter()
            .map(|i| {
                let s = string(i, what)?;
                Ok(match s.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s, None),
                })
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        Value::Scalar(..) => err(n, format!("{what} must be a mapping or a list of KEY=VALUE")),
    }
}

fn labels(n: &Node, what: &str) -> Res<BTreeMap<String, String>> {
    Ok(key_values(n, what)?.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect())
}

/// Reads the project out of a merged file. `env_file` reads an `env_file` entry (relative to
/// the stack file) into `KEY=VALUE` pairs; `environment` looks up a variable given without a
/// value; `warn` receives each ignored key once per service.
pub fn project(
    root: &Node,
    env_file: EnvFiles<'_>,
    environment: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(&Pos, String),
) -> Res<Project> {
    let mut p = Project::default();
    for (k, v) in entries(root, "the file")? {
        match k {
            "version" | "name" => {}
            "services" => {
                for (name, s) in entries(v, "services")? {
                    check_name(s, name, "service")?;
                    p.services.insert(name.to_string(), service(name, s, env_file, environment, warn)?);
                }
            }
            "networks" => {
                for (name, n) in entries(v, "networks")? {
                    p.networks.insert(name.to_string(), network(name, n)?);
                }
            }
            "volumes" => {
                for (name, n) in entries(v, "volumes")? {
                    p.volumes.insert(name.to_string(), volume(name, n)?);
                }
            }
            "secrets" | "configs" => {
                for (name, n) in entries(v, k)? {
                    let def = file_def(name, n, &k[..k.len() - 1])?;
                    if k == "secrets" {
                        p.secrets.insert(name.to_string(), def);
                    } else {
                        p.configs.insert(name.to_string(), def);
                    }
                }
            }
            k if k.starts_with("x-") => {}
            other => {
                return err(v, format!("unknown top-level key {other:?} (known: version, services, networks, volumes, secrets, configs, x-*)"))
            }
        }
    }
    for (name, s) in &p.services {
        for (dep, _, pos) in &s.depends_on {
            if !p.services.contains_key(dep) {
                return Err(Error {
                    pos: pos.clone(),
                    message: format!("service {name:?} depends on {dep:?}, which the file does not define"),
                });
            }
        }
    }
    Ok(p)
}

fn check_name(n: &Node, name: &str, what: &str) -> Res<()> {
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return err(
            n,
            format!(
                "{what} name {name:?} must start with a letter or digit and hold only letters, digits, '-' and '_'"
            ),
        );
    }
    Ok(())
}

fn external(n: &Node, what: &str) -> Res<(bool, Option<String>)> {
    match &n.value {
        // The old form `external: {name: x}`.
        Value::Map(_) => {
            let mut name = None;
            for (k, v) in entries(n, what)? {
                match k {
                    "name" => name = Some(string(v, &format!("{what}.name"))?),
                    other => return err(v, format!("unknown key {other:?} in {what}")),
                }
            }
            Ok((true, name))
        }
        _ => Ok((boolean(n, what)?, None)),
    }
}

fn network(name: &str, n: &Node) -> Res<NetworkDef> {
    let mut d = NetworkDef { pos: n.pos.clone(), driver: "overlay".into(), ..Default::default() };
    let what = format!("network {name:?}");
    for (k, v) in entries(n, &what)? {
        match k {
            "name" => d.name = Some(string(v, "name")?),
            "external" => {
                (d.external, d.name) = match external(v, "external")? {
                    (e, Some(n)) => (e, Some(n)),
                    (e, None) => (e, d.name.take()),
                }
            }
            "driver" => {
                d.driver = string(v, "driver")?;
                if d.driver != "overlay" {
                    return err(v, format!("{what}: driver {:?} is not supported (overlay only)", d.driver));
                }
            }
            "driver_opts" => d.options = labels(v, "driver_opts")?,
            "attachable" => d.attachable = boolean(v, "attachable")?,
            "internal" => d.internal = boolean(v, "internal")?,
            "labels" => d.labels = labels(v, "labels")?,
            "ipam" => {
                for (ik, iv) in entries(v, "ipam")? {
                    match ik {
                        "driver" => {}
                        "config" => {
                            let configs = items(iv, "ipam.config")?;
                            if configs.len() > 1 {
                                return err(iv, format!("{what}: one ipam config (subnet) at most"));
                            }
                            for c in configs {
                                for (ck, cv) in entries(c, "ipam.config")? {
                                    match ck {
                                        "subnet" => d.subnet = string(cv, "subnet")?,
                                        "gateway" => d.gateway = string(cv, "gateway")?,
                                        "ip_range" | "aux_addresses" => {}
                                        other => {
                                            return err(cv, format!("unknown key {other:?} in {what}'s ipam config"))
                                        }
                                    }
                                }
                            }
                        }
                        other => return err(iv, format!("unknown key {other:?} in {what}'s ipam")),
                    }
                }
            }
            k if k.starts_with("x-") => {}
            other => return err(v, format!("unknown key {other:?} in {what}")),
        }
    }
    Ok(d)
}

fn volume(name: &str, n: &Node) -> Res<VolumeDef> {
    let mut d = VolumeDef { pos: n.pos.clone(), ..Default::default() };
    let what = format!("volume {name:?}");
    for (k, v) in entries(n, &what)? {
        match k {
            "name" => d.name = Some(string(v, "name")?),
            "external" => {
                let (e, n) = external(v, "external")?;
                d.external = e;
                if n.is_some() {
                    d.name = n;
                }
            }
            "driver" => {
                let driver = string(v, "driver")?;
                if driver != "local" {
                    return err(v, format!("{what}: driver {driver:?} is not supported (local only)"));
                }
            }
            "driver_opts" => {}
            "labels" => d.labels = labels(v, "labels")?,
            k if k.starts_with("x-") => {}
            other => return err(v, format!("unknown key {other:?} in {what}")),
        }
    }
    Ok(d)
}

fn file_def(name: &str, n: &Node, kind: &str) -> Res<FileDef> {
    let mut d = FileDef { pos: n.pos.clone(), ..Default::default() };
    let what = format!("{kind} {name:?}");
    for (k, v) in entries(n, &what)? {
        match k {
            "name" => d.name = Some(string(v, "name")?),
            "file" => d.file = Some(string(v, "file")?),
            "external" => {
                let (e, n) = external(v, "external")?;
                d.external = e;
                if n.is_some() {
                    d.name = n;
                }
            }
            "labels" => d.labels = labels(v, "labels")?,
            "environment" | "content" | "template_driver" | "driver" | "driver_opts" => {
                return err(v, format!("{what}: {k:?} is not supported: use file or external"))
            }
            k if k.starts_with("x-") => {}
            other => return err(v, format!("unknown key {other:?} in {what}")),
        }
    }
    if d.external == d.file.is_some() {
        return err(n, format!("{what} needs either file or external: true"));
    }
    Ok(d)
}

fn service(
    name: &str,
    n: &Node,
    env_file: EnvFiles<'_>,
    environment: &dyn Fn(&str) -> Option<String>,
    warn: &mut dyn FnMut(&Pos, String),
) -> Res<ServiceDef> {
    let what = format!("service {name:?}");
    let mut c = ContainerSpec::default();
    let mut tt = TaskSpec::default();
    let mut spec = ServiceSpec {
        annotations: Some(Annotations { name: name.to_string(), labels: BTreeMap::new() }),
        mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
        ..Default::default()
    };
    let mut def =
        ServiceDef { pos: n.pos.clone(), spec: ServiceSpec::default(), depends_on: Vec::new(), volumes: Vec::new() };
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    let mut file_env: Vec<(String, String)> = Vec::new();
    let mut ignored: Vec<&str> = Vec::new();
    for (k, v) in entries(n, &what)? {
        match k {
            "image" => c.image = string(v, "image")?,
            "command" => c.args = words(v, "command")?,
            "entrypoint" => c.command = words(v, "entrypoint")?,
            "environment" => env.extend(key_values(v, "environment")?),
            "env_file" => {
                let files: Vec<&Node> = match &v.value {
                    Value::Seq(list) => list.iter().collect(),
                    _ => vec![v],
                };
                for f in files {
                    // The long form: {path: ..., required: false}.
                    let (path, required) = match &f.value {
                        Value::Map(_) => {
                            let path = f.get("path").map(|p| string(p, "env_file.path")).transpose()?;
                            let required = f.get("required").map(|r| boolean(r, "env_file.required")).transpose()?;
                            (path.unwrap_or_default(), required.unwrap_or(true))
                        }
                        _ => (string(f, "env_file")?, true),
                    };
                    match env_file(f, &path) {
                        Ok(pairs) => file_env.extend(pairs),
                        Err(_) if !required => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            "labels" => c.labels = labels(v, "labels")?,
            "ports" => {
                for p in items(v, "ports")? {
                    spec.endpoint_spec.get_or_insert_with(EndpointSpec::default).ports.extend(ports(p)?);
                }
            }
            "networks" => tt.networks = service_networks(v)?,
            "volumes" => {
                for m in items(v, "volumes")? {
                    let m = mount_of(m)?;
                    if m.r#type() == mount::Type::Volume && !m.source.is_empty() {
                        def.volumes.push(m.source.clone());
                    }
                    c.mounts.retain(|x| x.target != m.target);
                    c.mounts.push(m);
                }
            }
            "tmpfs" => {
                let list = match &v.value {
                    Value::Seq(l) => l.iter().map(|i| string(i, "tmpfs")).collect::<Res<Vec<_>>>()?,
                    _ => vec![string(v, "tmpfs")?],
                };
                for target in list {
                    c.mounts.push(Mount { r#type: mount::Type::Tmpfs as i32, target, ..Default::default() });
                }
            }
            "secrets" => {
                for s in items(v, "secrets")? {
                    let (source, target) = file_ref(s, "secret", |src| src.to_string())?;
                    c.secrets.retain(|x| x.target.as_ref().map(|t| &t.name) != Some(&target.name));
                    c.secrets.push(SecretReference {
                        secret_id: String::new(),
                        secret_name: source,
                        target: Some(target),
                    });
                }
            }
            "configs" => {
                for s in items(v, "configs")? {
                    let (source, target) = file_ref(s, "config", |src| format!("/{src}"))?;
                    c.configs.retain(|x| x.target.as_ref().map(|t| &t.name) != Some(&target.name));
                    c.configs.push(ConfigReference {
                        config_id: String::new(),
                        config_name: source,
                        target: Some(target),
                    });
                }
            }
            "healthcheck" => c.healthcheck = Some(healthcheck(v)?),
            "stop_grace_period" => c.stop_grace_period_ms = Some(duration(v, "stop_grace_period")?),
            "stop_signal" => c.stop_signal = string(v, "stop_signal")?,
            "init" => c.init = boolean(v, "init")?,
            "user" => c.user = string(v, "user")?,
            "working_dir" => c.dir = string(v, "working_dir")?,
            "hostname" => c.hostname = string(v, "hostname")?,
            "read_only" => c.read_only = boolean(v, "read_only")?,
            "tty" => c.tty = boolean(v, "tty")?,
            "group_add" => {
                c.groups = items(v, "group_add")?.iter().map(|g| string(g, "group_add")).collect::<Res<_>>()?
            }
            "depends_on" => def.depends_on = depends_on(v)?,
            "deploy" => deploy(v, &mut spec, &mut tt)?,
            k if k.starts_with("x-") => {}
            k if IGNORED_SERVICE_KEYS.contains(&k) => ignored.push(k),
            other => return err(v, format!("unknown key {other:?} in {what}")),
        }
    }
    if !ignored.is_empty() {
        warn(&n.pos, format!("{what}: ignoring {} (not supported by swarm-style stacks)", ignored.join(", ")));
    }
    if c.image.is_empty() {
        return err(n, format!("{what} has no image"));
    }
    // The env files first, then `environment` over them; a key without a value takes the
    // deploying shell's (and is left out when that has none).
    let mut merged: Vec<(String, String)> = file_env;
    for (k, v) in env {
        let v = match v {
            Some(v) => Some(v),
            None => environment(&k),
        };
        merged.retain(|(x, _)| *x != k);
        if let Some(v) = v {
            merged.push((k, v));
        }
    }
    c.env = merged.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(e) = spec.endpoint_spec.as_mut() {
        // A later file's port over an earlier one's (same published port and protocol).
        let mut seen: Vec<PortConfig> = Vec::new();
        for p in e.ports.drain(..).rev() {
            if p.published_port == 0
                || !seen.iter().any(|s| s.published_port == p.published_port && s.protocol == p.protocol)
            {
                seen.push(p);
            }
        }
        seen.reverse();
        e.ports = seen;
    }
    tt.container = Some(c);
    spec.task_template = Some(tt);
    def.spec = spec;
    Ok(def)
}

fn ports(n: &Node) -> Res<Vec<PortConfig>> {
    match &n.value {
        Value::Map(_) => {
            let mut p = PortConfig::default();
            for (k, v) in entries(n, "a port")? {
                match k {
                    "target" => p.target_port = number(v, "target")?,
                    "published" => p.published_port = number(v, "published")?,
                    "protocol" => {
                        p.protocol = match string(v, "protocol")?.as_str() {
                            "tcp" => port_config::Protocol::Tcp,
                            "udp" => port_config::Protocol::Udp,
                            "sctp" => port_config::Protocol::Sctp,
                            other => return err(v, format!("protocol {other:?} must be tcp, udp or sctp")),
                        } as i32
                    }
                    "mode" => {
                        p.publish_mode = match string(v, "mode")?.as_str() {
                            "ingress" => port_config::PublishMode::Ingress,
                            "host" => port_config::PublishMode::Host,
                            other => return err(v, format!("port mode {other:?} must be ingress or host")),
                        } as i32
                    }
                    "name" => p.name = string(v, "name")?,
                    "app_protocol" | "host_ip" => {}
                    other => return err(v, format!("unknown key {other:?} in a port")),
                }
            }
            if p.target_port == 0 {
                return err(n, "a port needs its target");
            }
            Ok(vec![p])
        }
        _ => short_ports(n),
    }
}

/// `80`, `8080:80`, `8080:80/udp`, `127.0.0.1:8080:80` (the address is ignored), ranges
/// `8080-8081:80-81`.
fn short_ports(n: &Node) -> Res<Vec<PortConfig>> {
    let s = string(n, "a port")?;
    let bad = || format!("port {s:?}: use TARGET, PUBLISHED:TARGET or PUBLISHED:TARGET/udp (ranges as A-B)");
    let (spec, proto) = s.split_once('/').unwrap_or((&s, "tcp"));
    let protocol = match proto {
        "tcp" => port_config::Protocol::Tcp,
        "udp" => port_config::Protocol::Udp,
        "sctp" => port_config::Protocol::Sctp,
        _ => return err(n, bad()),
    } as i32;
    let parts: Vec<&str> = spec.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [t] => (None, *t),
        [p, t] => (Some(*p), *t),
        [_, p, t] => (Some(*p), *t),
        _ => return err(n, bad()),
    };
    let range = |r: &str| -> Option<(u32, u32)> {
        match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|v| (v, v)),
        }
    };
    let (t0, t1) = range(target)
        .filter(|(a, b)| a <= b && *a > 0 && *b <= 65535)
        .ok_or_else(|| Error { pos: n.pos.clone(), message: bad() })?;
    let (p0, p1) = match published.filter(|p| !p.is_empty()) {
        Some(p) => range(p)
            .filter(|(a, b)| a <= b && *b <= 65535)
            .ok_or_else(|| Error { pos: n.pos.clone(), message: bad() })?,
        None => (0, 0),
    };
    if published.is_some_and(|p| !p.is_empty()) && p1 - p0 != t1 - t0 {
        return err(n, format!("port {s:?}: the published and target ranges differ in length"));
    }
    Ok((0..=t1 - t0)
        .map(|i| PortConfig {
            protocol,
            target_port: t0 + i,
            published_port: if p0 == 0 { 0 } else { p0 + i },
            ..Default::default()
        })
        .collect())
}

fn service_networks(n: &Node) -> Res<Vec<NetworkAttachmentConfig>> {
    match &n.value {
        Value::Seq(v) => v
            .iter()
            .map(|i| Ok(NetworkAttachmentConfig { target: string(i, "a network")?, aliases: Vec::new() }))
            .collect(),
        Value::Map(_) => entries(n, "networks")?
            .into_iter()
            .map(|(name, v)| {
                let mut a = NetworkAttachmentConfig { target: name.to_string(), aliases: Vec::new() };
                for (k, x) in entries(v, &format!("network {name:?}"))? {
                    match k {
                        "aliases" => {
                            a.aliases =
                                items(x, "aliases")?.iter().map(|i| string(i, "an alias")).collect::<Res<_>>()?
                        }
                        "ipv4_address" | "ipv6_address" | "priority" | "link_local_ips" | "driver_opts" => {}
                        other => return err(x, format!("unknown key {other:?} in network {name:?} of a service")),
                    }
                }
                Ok(a)
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        Value::Scalar(..) => err(n, "networks must be a list or a mapping"),
    }
}

/// `name:/path[:ro]`, `/host:/path`, `/path` (anonymous), or the long form.
fn mount_of(n: &Node) -> Res<Mount> {
    let mut m = Mount::default();
    match &n.value {
        Value::Map(_) => {
            let mut kind = None;
            for (k, v) in entries(n, "a volume")? {
                match k {
                    "type" => kind = Some((string(v, "type")?, v)),
                    "source" => m.source = string(v, "source")?,
                    "target" => m.target = string(v, "target")?,
                    "read_only" => m.read_only = boolean(v, "read_only")?,
                    "volume" => {
                        for (vk, vv) in entries(v, "volume")? {
                            match vk {
                                "nocopy" => {
                                    m.volume_options.get_or_insert_with(Default::default).no_copy =
                                        boolean(vv, "nocopy")?
                                }
                                "subpath" => return err(vv, "volume subpath is not supported"),
                                other => return err(vv, format!("unknown key {other:?} in volume options")),
                            }
                        }
                    }
                    "bind" => {
                        for (bk, bv) in entries(v, "bind")? {
                            match bk {
                                "propagation" => {
                                    m.bind_options =
                                        Some(mount::BindOptions { propagation: string(bv, "propagation")? })
                                }
                                "create_host_path" | "selinux" => {}
                                other => return err(bv, format!("unknown key {other:?} in bind options")),
                            }
                        }
                    }
                    "tmpfs" => {
                        for (tk, tv) in entries(v, "tmpfs")? {
                            let o = m.tmpfs_options.get_or_insert_with(Default::default);
                            match tk {
                                "size" => o.size_bytes = bytes(tv, "size")?,
                                "mode" => o.mode = octal(tv, "mode")?,
                                other => return err(tv, format!("unknown key {other:?} in tmpfs options")),
                            }
                        }
                    }
                    "consistency" => {}
                    other => return err(v, format!("unknown key {other:?} in a volume")),
                }
            }
            m.r#type = match kind {
                Some((t, _)) if t == "volume" => mount::Type::Volume,
                Some((t, _)) if t == "bind" => mount::Type::Bind,
                Some((t, _)) if t == "tmpfs" => mount::Type::Tmpfs,
                Some((t, v)) => return err(v, format!("volume type {t:?} must be volume, bind or tmpfs")),
                None => return err(n, "a volume in the long form needs its type"),
            } as i32;
        }
        _ => {
            let s = string(n, "a volume")?;
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, opts) = match parts.as_slice() {
                [t] => ("", *t, ""),
                [s, t] => (*s, *t, ""),
                [s, t, o] => (*s, *t, *o),
                _ => return err(n, format!("volume {s:?}: use [SOURCE:]TARGET[:ro]")),
            };
            m.source = source.to_string();
            m.target = target.to_string();
            m.read_only = opts.split(',').any(|o| o == "ro");
            let bind = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
            m.r#type = if bind { mount::Type::Bind } else { mount::Type::Volume } as i32;
        }
    }
    if m.target.is_empty() || !m.target.starts_with('/') {
        return err(n, format!("a volume's target must be an absolute path, not {:?}", m.target));
    }
    if m.r#type() == mount::Type::Bind && !m.source.starts_with('/') {
        return err(n, format!("bind source {:?} must be an absolute path on the node", m.source));
    }
    Ok(m)
}

/// A secret or config of a service: `name` or `{source, target, uid, gid, mode}`.
fn file_ref(n: &Node, kind: &str, default_target: impl Fn(&str) -> String) -> Res<(String, FileTarget)> {
    // Swarm's default for both.
    let mode = 0o444;
    match &n.value {
        Value::Map(_) => {
            let mut source = String::new();
            let mut t = FileTarget { name: String::new(), uid: "0".into(), gid: "0".into(), mode };
            for (k, v) in entries(n, kind)? {
                match k {
                    "source" => source = string(v, "source")?,
                    "target" => t.name = string(v, "target")?,
                    "uid" => t.uid = string(v, "uid")?,
                    "gid" => t.gid = string(v, "gid")?,
                    "mode" => t.mode = octal(v, "mode")?,
                    other => return err(v, format!("unknown key {other:?} in a {kind}")),
                }
            }
            if source.is_empty() {
                return err(n, format!("a {kind} needs its source"));
            }
            if t.name.is_empty() {
                t.name = default_target(&source);
            }
            Ok((source, t))
        }
        _ => {
            let source = string(n, kind)?;
            Ok((source.clone(), FileTarget { name: default_target(&source), uid: "0".into(), gid: "0".into(), mode }))
        }
    }
}

fn healthcheck(n: &Node) -> Res<HealthConfig> {
    let mut h = HealthConfig::default();
    for (k, v) in entries(n, "healthcheck")? {
        match k {
            "test" => {
                h.test = match &v.value {
                    Value::Scalar(s, _) => vec!["CMD-SHELL".into(), s.clone()],
                    _ => items(v, "test")?.iter().map(|i| string(i, "test")).collect::<Res<_>>()?,
                };
                if h.test.first().is_some_and(|t| !matches!(t.as_str(), "CMD" | "CMD-SHELL" | "NONE")) {
                    return err(v, "healthcheck test must be a string, or a list starting with CMD, CMD-SHELL or NONE");
                }
            }
            "disable" => {
                if boolean(v, "disable")? {
                    h.test = vec!["NONE".into()];
                }
            }
            "interval" => h.interval_ms = duration(v, "interval")?,
            "timeout" => h.timeout_ms = duration(v, "timeout")?,
            "retries" => h.retries = number(v, "retries")?,
            "start_period" => h.start_period_ms = duration(v, "start_period")?,
            "start_interval" => h.start_interval_ms = duration(v, "start_interval")?,
            other => return err(v, format!("unknown key {other:?} in healthcheck")),
        }
    }
    Ok(h)
}

fn depends_on(n: &Node) -> Res<Vec<(String, Condition, Pos)>> {
    match &n.value {
        Value::Seq(v) => v.iter().map(|i| Ok((string(i, "depends_on")?, Condition::Started, i.pos.clone()))).collect(),
        Value::Map(_) => entries(n, "depends_on")?
            .into_iter()
            .map(|(name, v)| {
                let mut cond = Condition::Started;
                for (k, x) in entries(v, &format!("depends_on {name:?}"))? {
                    match k {
                        "condition" => {
                            cond = match string(x, "condition")?.as_str() {
                                "service_started" => Condition::Started,
                                "service_healthy" => Condition::Healthy,
                                "service_completed_successfully" => Condition::Completed,
                                other => return err(x, format!("condition {other:?} must be service_started, service_healthy or service_completed_successfully")),
                            }
                        }
                        "restart" | "required" => {}
                        other => return err(x, format!("unknown key {other:?} in depends_on {name:?}")),
                    }
                }
                Ok((name.to_string(), cond, v.pos.clone()))
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        Value::Scalar(..) => err(n, "depends_on must be a list or a mapping"),
    }
}

fn deploy(n: &Node, spec: &mut ServiceSpec, tt: &mut TaskSpec) -> Res<()> {
    let mut mode = "replicated".to_string();
    let mut mode_node = n;
    let mut replicas: Option<u64> = None;
    for (k, v) in entries(n, "deploy")? {
        match k {
            "mode" => {
                mode = string(v, "mode")?;
                mode_node = v;
            }
            "replicas" => replicas = Some(number(v, "replicas")?),
            "labels" => {
                if let Some(a) = spec.annotations.as_mut() {
                    a.labels = labels(v, "deploy.labels")?;
                }
            }
            "endpoint_mode" => {
                spec.endpoint_spec.get_or_insert_with(EndpointSpec::default).mode =
                    match string(v, "endpoint_mode")?.as_str() {
                        "vip" => shoal_api::v1::endpoint_spec::Mode::Vip,
                        "dnsrr" => shoal_api::v1::endpoint_spec::Mode::Dnsrr,
                        other => return err(v, format!("endpoint_mode {other:?} must be vip or dnsrr")),
                    } as i32
            }
            "placement" => {
                let p = tt.placement.get_or_insert_with(Placement::default);
                for (pk, pv) in entries(v, "placement")? {
                    match pk {
                        "constraints" => {
                            p.constraints = items(pv, "constraints")?
                                .iter()
                                .map(|c| string(c, "a constraint"))
                                .collect::<Res<_>>()?
                        }
                        "preferences" => {
                            for pref in items(pv, "preferences")? {
                                for (rk, rv) in entries(pref, "a preference")? {
                                    match rk {
                                        "spread" => {
                                            p.preferences.push(PlacementPreference { spread: string(rv, "spread")? })
                                        }
                                        other => {
                                            return err(
                                                rv,
                                                format!("unknown placement preference {other:?} (spread only)"),
                                            )
                                        }
                                    }
                                }
                            }
                        }
                        "max_replicas_per_node" => p.max_replicas_per_node = number(pv, "max_replicas_per_node")?,
                        other => return err(pv, format!("unknown key {other:?} in placement")),
                    }
                }
            }
            "resources" => {
                let r = tt.resources.get_or_insert_with(ResourceRequirements::default);
                for (rk, rv) in entries(v, "resources")? {
                    let res = match rk {
                        "limits" => r.limits.get_or_insert_with(Resources::default),
                        "reservations" => r.reservations.get_or_insert_with(Resources::default),
                        other => return err(rv, format!("unknown key {other:?} in resources (limits, reservations)")),
                    };
                    for (xk, xv) in entries(rv, rk)? {
                        match xk {
                            "cpus" => res.nano_cpus = parse_nano_cpus(&string(xv, "cpus")?).or_else(|e| err(xv, e))?,
                            "memory" => res.memory_bytes = bytes(xv, "memory")?,
                            "pids" => res.pids = number(xv, "pids")?,
                            "generic_resources" | "devices" => return err(xv, format!("{xk} is not supported")),
                            other => return err(xv, format!("unknown key {other:?} in {rk}")),
                        }
                    }
                }
            }
            "restart_policy" => {
                let r = tt.restart_policy.get_or_insert_with(RestartPolicy::default);
                for (rk, rv) in entries(v, "restart_policy")? {
                    match rk {
                        "condition" => {
                            r.condition = match string(rv, "condition")?.as_str() {
                                "any" => restart_policy::Condition::Any,
                                "none" | "no" => restart_policy::Condition::None,
                                "on-failure" => restart_policy::Condition::OnFailure,
                                other => {
                                    return err(
                                        rv,
                                        format!("restart condition {other:?} must be none, on-failure or any"),
                                    )
                                }
                            } as i32
                        }
                        "delay" => r.delay_ms = Some(duration(rv, "delay")?),
                        "max_attempts" => r.max_attempts = number(rv, "max_attempts")?,
                        "window" => r.window_ms = duration(rv, "window")?,
                        other => return err(rv, format!("unknown key {other:?} in restart_policy")),
                    }
                }
            }
            "update_config" => spec.update_config = Some(update(v, "update_config")?),
            "rollback_config" => spec.rollback_config = Some(update(v, "rollback_config")?),
            "resources_reservations" | "x-" => {}
            k if k.starts_with("x-") => {}
            other => return err(v, format!("unknown key {other:?} in deploy")),
        }
    }
    spec.mode = Some(match mode.as_str() {
        "replicated" => Mode::Replicated(ReplicatedService { replicas: replicas.unwrap_or(1) }),
        "global" => Mode::Global(shoal_api::v1::GlobalService {}),
        "replicated-job" => {
            let n = replicas.unwrap_or(1);
            Mode::ReplicatedJob(shoal_api::v1::ReplicatedJob { max_concurrent: n, total_completions: n })
        }
        "global-job" => Mode::GlobalJob(shoal_api::v1::GlobalJob {}),
        other => {
            return err(
                mode_node,
                format!("deploy mode {other:?} must be replicated, global, replicated-job or global-job"),
            )
        }
    });
    if matches!(spec.mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_)))
        && (spec.update_config.is_some() || spec.rollback_config.is_some())
    {
        return err(
            n,
            format!("deploy mode {mode}: a job takes no update_config or rollback_config (a redeploy runs it again)"),
        );
    }
    if matches!(spec.mode, Some(Mode::Global(_) | Mode::GlobalJob(_))) && replicas.is_some() {
        return err(n, format!("deploy mode {mode} takes no replicas"));
    }
    Ok(())
}

fn update(n: &Node, what: &str) -> Res<UpdateConfig> {
    let mut u = UpdateConfig { parallelism: 1, ..Default::default() };
    for (k, v) in entries(n, what)? {
        match k {
            "parallelism" => u.parallelism = number(v, "parallelism")?,
            "delay" => u.delay_ms = duration(v, "delay")?,
            "failure_action" => {
                u.failure_action = match string(v, "failure_action")?.as_str() {
                    "pause" => update_config::FailureAction::Pause,
                    "continue" => update_config::FailureAction::Continue,
                    "rollback" => update_config::FailureAction::Rollback,
                    other => return err(v, format!("failure_action {other:?} must be pause, continue or rollback")),
                } as i32
            }
            "monitor" => u.monitor_ms = Some(duration(v, "monitor")?),
            "max_failure_ratio" => {
                u.max_failure_ratio = match v.as_str().map(str::parse::<f32>) {
                    Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
                    _ => return err(v, "max_failure_ratio must be a number from 0 to 1"),
                }
            }
            "order" => {
                u.order = match string(v, "order")?.as_str() {
                    "stop-first" => update_config::Order::StopFirst,
                    "start-first" => update_config::Order::StartFirst,
                    other => return err(v, format!("order {other:?} must be stop-first or start-first")),
                } as i32
            }
            "x-startup_deadline" | "x-startup-deadline" => u.startup_deadline_ms = duration(v, "x-startup_deadline")?,
            "x-min_healthy" | "x-min-healthy" => u.min_healthy_ms = duration(v, "x-min_healthy")?,
            other => return err(v, format!("unknown key {other:?} in {what}")),
        }
    }
    Ok(u)
}
