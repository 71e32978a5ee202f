//! A project as a stack: its objects named as Swarm names them, and what a deploy does to the
//! cluster.
//!
//! - Services, networks, secrets, configs and named volumes are `<stack>_<name>` (a `name:`
//!   in the file, or an external object, keeps its own name) and carry the label
//!   `com.docker.stack.namespace=<stack>`.
//! - A service that names no network joins `<stack>_default`; on each of its networks the
//!   service's name in the file is an alias, so `db` resolves inside the stack.
//! - A secret or config from a file is named `<stack>_<name>-<first 8 hex of its sha256>`: a
//!   changed file is a new object, the services using it change, and their rolling update moves
//!   them over; its file in the task keeps the plain name.
//! - Services are ordered so that each comes after the ones it depends on.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use shoal_api::v1::{Annotations, ConfigSpec, NetworkAttachmentConfig, NetworkSpec, SecretSpec, ServiceSpec};

use crate::decode::{Condition, Error, Project};
use crate::yaml::Pos;

/// The label tools filter a stack's objects on.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// A service of the stack, with the services it waits for (their full names).
#[derive(Debug, Clone, PartialEq)]
pub struct StackService {
    pub spec: ServiceSpec,
    pub depends_on: Vec<(String, Condition)>,
}

/// Everything a stack should have in the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    pub stack: String,
    pub networks: Vec<NetworkSpec>,
    pub secrets: Vec<SecretSpec>,
    pub configs: Vec<ConfigSpec>,
    /// Dependencies first.
    pub services: Vec<StackService>,
    /// Networks, secrets and configs the file declares external: they must exist.
    pub external_networks: Vec<String>,
    pub external_secrets: Vec<String>,
    pub external_configs: Vec<String>,
}

fn labeled(stack: &str, name: String, mut labels: BTreeMap<String, String>) -> Option<Annotations> {
    labels.insert(NAMESPACE_LABEL.into(), stack.into());
    Some(Annotations { name, labels })
}

/// The stack name is refused unless it makes valid object names.
pub fn check_stack_name(stack: &str) -> Result<(), String> {
    let first_ok = stack.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !stack.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!(
            "stack name {stack:?} must start with a letter or digit and hold only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// The project as stack `stack`. `read` reads a secret's or config's file (named as in the
/// stack file).
pub fn desired(
    project: &Project,
    stack: &str,
    read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Desired, Error> {
    let mut d = Desired { stack: stack.to_string(), ..Default::default() };
    let full = |name: &str| format!("{stack}_{name}");
    let at = |pos: &Pos, message: String| Error { pos: pos.clone(), message };

    let mut network_names: BTreeMap<&str, String> = BTreeMap::new();
    for (key, n) in &project.networks {
        let name = n.name.clone().unwrap_or_else(|| full(key));
        if n.external {
            d.external_networks.push(name.clone());
        } else {
            d.networks.push(NetworkSpec {
                annotations: labeled(stack, name.clone(), n.labels.clone()),
                driver: n.driver.clone(),
                internal: n.internal,
                attachable: n.attachable,
                ingress: false,
                subnet: n.subnet.clone(),
                gateway: n.gateway.clone(),
                options: n.options.clone(),
            });
        }
        network_names.insert(key, name);
    }
    // A secret or config: from a file (versioned by content; its data), or external.
    let versioned = |kind: &str, key: &str, f: &crate::decode::FileDef| -> Result<(String, Option<Vec<u8>>), Error> {
        match (&f.file, f.external) {
            (Some(file), false) => {
                let data = read(file).map_err(|e| at(&f.pos, format!("{kind} {key:?}: file {file:?}: {e}")))?;
                let name = format!("{}-{}", f.name.clone().unwrap_or_else(|| full(key)), short_hash(&data));
                Ok((name, Some(data)))
            }
            _ => Ok((f.name.clone().unwrap_or_else(|| key.to_string()), None)),
        }
    };
    let mut secret_names: BTreeMap<&str, String> = BTreeMap::new();
    for (key, s) in &project.secrets {
        let (name, data) = versioned("secret", key, s)?;
        match data {
            Some(data) => {
                d.secrets.push(SecretSpec { annotations: labeled(stack, name.clone(), s.labels.clone()), data })
            }
            None => d.external_secrets.push(name.clone()),
        }
        secret_names.insert(key, name);
    }
    let mut config_names: BTreeMap<&str, String> = BTreeMap::new();
    for (key, c) in &project.configs {
        let (name, data) = versioned("config", key, c)?;
        match data {
            Some(data) => {
                d.configs.push(ConfigSpec { annotations: labeled(stack, name.clone(), c.labels.clone()), data })
            }
            None => d.external_configs.push(name.clone()),
        }
        config_names.insert(key, name);
    }

    let mut needs_default = false;
    let mut services: BTreeMap<String, StackService> = BTreeMap::new();
    for (key, s) in &project.services {
        let mut spec = s.spec.clone();
        spec.annotations = labeled(stack, full(key), spec.annotations.map(|a| a.labels).unwrap_or_default());
        let tt = spec.task_template.get_or_insert_with(Default::default);
        if tt.networks.is_empty() {
            needs_default = true;
            tt.networks.push(NetworkAttachmentConfig { target: "default".into(), aliases: Vec::new() });
        }
        for n in &mut tt.networks {
            let name = match network_names.get(n.target.as_str()) {
                Some(name) => name.clone(),
                None if n.target == "default" => full("default"),
                None => {
                    return Err(at(
                        &s.pos,
                        format!(
                            "service {key:?} joins network {:?}, which the file does not define under networks",
                            n.target
                        ),
                    ))
                }
            };
            n.target = name;
            if !n.aliases.contains(key) {
                n.aliases.insert(0, key.clone());
            }
        }
        let c = tt.container.get_or_insert_with(Default::default);
        c.labels.insert(NAMESPACE_LABEL.into(), stack.into());
        for r in &mut c.secrets {
            r.secret_name = secret_names.get(r.secret_name.as_str()).cloned().ok_or_else(|| {
                at(
                    &s.pos,
                    format!(
                        "service {key:?} uses secret {:?}, which the file does not define under secrets",
                        r.secret_name
                    ),
                )
            })?;
        }
        for r in &mut c.configs {
            r.config_name = config_names.get(r.config_name.as_str()).cloned().ok_or_else(|| {
                at(
                    &s.pos,
                    format!(
                        "service {key:?} uses config {:?}, which the file does not define under configs",
                        r.config_name
                    ),
                )
            })?;
        }
        for m in &mut c.mounts {
            if m.r#type() == shoal_api::v1::mount::Type::Volume && !m.source.is_empty() {
                m.source = match project.volumes.get(&m.source) {
                    Some(v) if v.external => v.name.clone().unwrap_or_else(|| m.source.clone()),
                    Some(v) => v.name.clone().unwrap_or_else(|| full(&m.source)),
                    None => {
                        return Err(at(
                            &s.pos,
                            format!(
                                "service {key:?} mounts volume {:?}, which the file does not define under volumes",
                                m.source
                            ),
                        ))
                    }
                };
            }
        }
        let depends_on = s.depends_on.iter().map(|(dep, cond, _)| (full(dep), *cond)).collect();
        services.insert(full(key), StackService { spec, depends_on });
    }
    if needs_default && !network_names.contains_key("default") {
        d.networks.push(NetworkSpec {
            annotations: labeled(stack, full("default"), BTreeMap::new()),
            driver: "overlay".into(),
            ..Default::default()
        });
    }
    d.services = ordered(services, project)?;
    Ok(d)
}

fn short_hash(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Services with each after the ones it depends on (by name otherwise); a cycle is refused.
fn ordered(mut services: BTreeMap<String, StackService>, project: &Project) -> Result<Vec<StackService>, Error> {
    let mut out = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    while !services.is_empty() {
        let ready: Vec<String> = services
            .iter()
            .filter(|(_, s)| s.depends_on.iter().all(|(d, _)| placed.contains(d)))
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            let names: Vec<&str> = services.keys().map(String::as_str).collect();
            let pos = project.services.values().next().map(|s| s.pos.clone()).unwrap_or_default();
            return Err(Error { pos, message: format!("depends_on makes a cycle among {}", names.join(", ")) });
        }
        for n in ready {
            if let Some(s) = services.remove(&n) {
                out.push(s);
                placed.insert(n);
            }
        }
    }
    Ok(out)
}

/// A stack's object as the cluster holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub name: String,
    /// Services only: the spec as stored, made comparable (see [`comparable`]).
    pub spec: Option<ServiceSpec>,
}

/// What the cluster holds of the stack (objects with its namespace label).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Current {
    pub services: Vec<Held>,
    pub networks: Vec<String>,
    pub secrets: Vec<String>,
    pub configs: Vec<String>,
}

/// One step of a deploy.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    CreateNetwork(NetworkSpec),
    CreateSecret(SecretSpec),
    CreateConfig(ConfigSpec),
    CreateService(ServiceSpec),
    UpdateService(ServiceSpec),
    RemoveService(String),
    RemoveSecret(String),
    RemoveConfig(String),
    RemoveNetwork(String),
}

impl Step {
    /// What the step does, for a person: `create service app_web`.
    pub fn describe(&self) -> String {
        match self {
            Step::CreateNetwork(s) => format!("create network {}", name(&s.annotations)),
            Step::CreateSecret(s) => format!("create secret {}", name(&s.annotations)),
            Step::CreateConfig(s) => format!("create config {}", name(&s.annotations)),
            Step::CreateService(s) => format!("create service {}", name(&s.annotations)),
            Step::UpdateService(s) => format!("update service {}", name(&s.annotations)),
            Step::RemoveService(n) => format!("remove service {n}"),
            Step::RemoveSecret(n) => format!("remove secret {n}"),
            Step::RemoveConfig(n) => format!("remove config {n}"),
            Step::RemoveNetwork(n) => format!("remove network {n}"),
        }
    }
}

fn name(a: &Option<Annotations>) -> &str {
    a.as_ref().map_or("", |a| a.name.as_str())
}

/// A stored service spec as the stack file would write it: networks by name (`network_name`
/// maps an id to its name), secret and config ids cleared, and a port published without a
/// number in `desired` taking the number the cluster gave it, so an unchanged file compares
/// equal.
pub fn comparable(
    stored: &ServiceSpec,
    desired: &ServiceSpec,
    network_name: &dyn Fn(&str) -> Option<String>,
) -> ServiceSpec {
    let mut s = stored.clone();
    if let Some(tt) = s.task_template.as_mut() {
        for n in &mut tt.networks {
            if let Some(name) = network_name(&n.target) {
                n.target = name;
            }
        }
        if let Some(c) = tt.container.as_mut() {
            for r in &mut c.secrets {
                r.secret_id.clear();
            }
            for r in &mut c.configs {
                r.config_id.clear();
            }
        }
    }
    let wanted = desired.endpoint_spec.as_ref().map(|e| e.ports.as_slice()).unwrap_or_default();
    if let Some(e) = s.endpoint_spec.as_mut() {
        for p in &mut e.ports {
            let unnumbered = wanted.iter().any(|w| {
                w.published_port == 0
                    && w.target_port == p.target_port
                    && w.protocol == p.protocol
                    && w.publish_mode == p.publish_mode
            });
            if unnumbered {
                p.published_port = 0;
            }
        }
    }
    s
}

/// The steps that make the cluster hold `desired`: what is missing is created, a service whose
/// spec differs is updated (nothing else is touched), and with `prune` what the stack holds
/// but the file no longer names is removed (services first, then secrets, configs, networks).
/// Secrets and configs of an older content are removed once nothing in the stack uses them,
/// with or without `prune`.
pub fn plan(desired: &Desired, current: &Current, prune: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    for n in &desired.networks {
        if !current.networks.iter().any(|c| c == name(&n.annotations)) {
            steps.push(Step::CreateNetwork(n.clone()));
        }
    }
    for s in &desired.secrets {
        if !current.secrets.iter().any(|c| c == name(&s.annotations)) {
            steps.push(Step::CreateSecret(s.clone()));
        }
    }
    for c in &desired.configs {
        if !current.configs.iter().any(|x| x == name(&c.annotations)) {
            steps.push(Step::CreateConfig(c.clone()));
        }
    }
    for s in &desired.services {
        match current.services.iter().find(|h| h.name == name(&s.spec.annotations)) {
            None => steps.push(Step::CreateService(s.spec.clone())),
            Some(h) if h.spec.as_ref() != Some(&s.spec) => steps.push(Step::UpdateService(s.spec.clone())),
            Some(_) => {}
        }
    }
    let wanted_services: BTreeSet<&str> = desired.services.iter().map(|s| name(&s.spec.annotations)).collect();
    let removed_services: Vec<&Held> =
        current.services.iter().filter(|h| prune && !wanted_services.contains(h.name.as_str())).collect();
    for h in &removed_services {
        steps.push(Step::RemoveService(h.name.clone()));
    }
    // A stale version of a file's secret or config: same stack, named `<base>-<hash>` for a
    // base the file still uses with another hash.
    let stale = |held: &str, wanted: &[&str]| -> bool {
        if wanted.contains(&held) {
            return false;
        }
        let base = |n: &str| n.rsplit_once('-').map(|(b, _)| b.to_string());
        prune || wanted.iter().any(|w| base(w).is_some() && base(w) == base(held))
    };
    let wanted: Vec<&str> = desired.secrets.iter().map(|s| name(&s.annotations)).collect();
    for s in &current.secrets {
        if stale(s, &wanted) {
            steps.push(Step::RemoveSecret(s.clone()));
        }
    }
    let wanted: Vec<&str> = desired.configs.iter().map(|s| name(&s.annotations)).collect();
    for c in &current.configs {
        if stale(c, &wanted) {
            steps.push(Step::RemoveConfig(c.clone()));
        }
    }
    if prune {
        let wanted: Vec<&str> = desired.networks.iter().map(|n| name(&n.annotations)).collect();
        for n in &current.networks {
            if !wanted.contains(&n.as_str()) {
                steps.push(Step::RemoveNetwork(n.clone()));
            }
        }
    }
    steps
}
