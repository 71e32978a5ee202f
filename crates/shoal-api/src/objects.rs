//! Uniform access to the replicated objects: kind, id, meta and name of an [`Object`].

use crate::v1::{object::Kind, Meta, Object, ObjectKind};

impl Object {
    /// The object's kind (unspecified when the oneof is unset).
    pub fn object_kind(&self) -> ObjectKind {
        match &self.kind {
            None => ObjectKind::Unspecified,
            Some(Kind::Cluster(_)) => ObjectKind::Cluster,
            Some(Kind::Node(_)) => ObjectKind::Node,
            Some(Kind::Service(_)) => ObjectKind::Service,
            Some(Kind::Task(_)) => ObjectKind::Task,
            Some(Kind::Network(_)) => ObjectKind::Network,
            Some(Kind::Secret(_)) => ObjectKind::Secret,
            Some(Kind::Config(_)) => ObjectKind::Config,
        }
    }

    /// The object's meta, if the object and its meta are set.
    pub fn meta(&self) -> Option<&Meta> {
        match self.kind.as_ref()? {
            Kind::Cluster(o) => o.meta.as_ref(),
            Kind::Node(o) => o.meta.as_ref(),
            Kind::Service(o) => o.meta.as_ref(),
            Kind::Task(o) => o.meta.as_ref(),
            Kind::Network(o) => o.meta.as_ref(),
            Kind::Secret(o) => o.meta.as_ref(),
            Kind::Config(o) => o.meta.as_ref(),
        }
    }

    /// The object's id ("" when unset).
    pub fn id(&self) -> &str {
        self.meta().map(|m| m.id.as_str()).unwrap_or("")
    }
}

impl From<crate::v1::Service> for Object {
    fn from(o: crate::v1::Service) -> Self {
        Object { kind: Some(Kind::Service(o)) }
    }
}
impl From<crate::v1::Node> for Object {
    fn from(o: crate::v1::Node) -> Self {
        Object { kind: Some(Kind::Node(o)) }
    }
}
impl From<crate::v1::Task> for Object {
    fn from(o: crate::v1::Task) -> Self {
        Object { kind: Some(Kind::Task(o)) }
    }
}
impl From<crate::v1::Cluster> for Object {
    fn from(o: crate::v1::Cluster) -> Self {
        Object { kind: Some(Kind::Cluster(o)) }
    }
}
impl From<crate::v1::Network> for Object {
    fn from(o: crate::v1::Network) -> Self {
        Object { kind: Some(Kind::Network(o)) }
    }
}
impl From<crate::v1::Secret> for Object {
    fn from(o: crate::v1::Secret) -> Self {
        Object { kind: Some(Kind::Secret(o)) }
    }
}
impl From<crate::v1::Config> for Object {
    fn from(o: crate::v1::Config) -> Self {
        Object { kind: Some(Kind::Config(o)) }
    }
}

/// Name of an object kind as users read it in messages (`service`, `node`, ...).
pub fn kind_name(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Unspecified => "object",
        ObjectKind::Cluster => "cluster",
        ObjectKind::Node => "node",
        ObjectKind::Service => "service",
        ObjectKind::Task => "task",
        ObjectKind::Network => "network",
        ObjectKind::Secret => "secret",
        ObjectKind::Config => "config",
    }
}

impl crate::v1::Task {
    /// Whether the task has its address on every network of its spec (the allocator gives
    /// them before the task is placed or started).
    pub fn networks_attached(&self) -> bool {
        // An attachment without an address (the ingress network's, asked for by the
        // orchestrator) waits for the allocator too.
        self.networks.iter().all(|a| !a.address.is_empty())
            && self.spec.as_ref().is_none_or(|s| {
                s.networks
                    .iter()
                    .all(|n| self.networks.iter().any(|a| a.network_id == n.target && !a.address.is_empty()))
            })
    }
}

impl crate::v1::Task {
    /// Whether the task has a health check: its spec has one (`CMD ...` or `CMD-SHELL ...`), or
    /// its agent reports a health (the image's `HEALTHCHECK`). It then counts as up (for VIPs,
    /// DNS and updates) only once healthy.
    pub fn has_health_check(&self) -> bool {
        let own = self.spec.as_ref().and_then(|s| s.container.as_ref()).and_then(|c| c.healthcheck.as_ref());
        own.is_some_and(
            |h| matches!(h.test.split_first(), Some((k, rest)) if (k == "CMD" || k == "CMD-SHELL") && !rest.is_empty()),
        ) || self.status.as_ref().is_some_and(|s| s.health.is_some())
    }

    /// Since when the task has been up: running, and healthy when it has a health check.
    pub fn up_since(&self) -> Option<i64> {
        let s = self.status.as_ref()?;
        if s.state() != crate::v1::TaskState::Running {
            return None;
        }
        if !self.has_health_check() {
            return Some(s.timestamp_ms);
        }
        s.health.as_ref().filter(|h| h.status() == crate::v1::health::Status::Healthy).map(|h| h.since_ms)
    }
}

/// Specs a service keeps: the current one and the 9 before it.
pub const SPEC_HISTORY: usize = 10;

impl crate::v1::Service {
    /// Puts `new` in place of the current spec at `now_ms`: the current one becomes the
    /// previous spec and the newest entry of the history (the oldest beyond [`SPEC_HISTORY`]
    /// go), and the revision number grows by one.
    pub fn replace_spec(&mut self, new: crate::v1::ServiceSpec, now_ms: i64) {
        let revision = self.spec_revision.max(1);
        if let Some(old) = self.spec.take() {
            self.history.push(crate::v1::SpecRevision { revision, replaced_at_ms: now_ms, spec: Some(old.clone()) });
            let extra = self.history.len().saturating_sub(SPEC_HISTORY - 1);
            self.history.drain(..extra);
            self.previous_spec = Some(old);
        }
        self.spec = Some(new);
        self.spec_revision = revision + 1;
    }

    /// The spec of revision `n`, if the service still keeps it.
    pub fn spec_at(&self, n: u64) -> Option<&crate::v1::ServiceSpec> {
        if n == self.spec_revision.max(1) {
            return self.spec.as_ref();
        }
        self.history.iter().find(|r| r.revision == n).and_then(|r| r.spec.as_ref())
    }
}

impl crate::v1::ServiceSpec {
    /// The ports the service publishes in ingress mode (every node accepts on them).
    pub fn ingress_ports(&self) -> impl Iterator<Item = &crate::v1::PortConfig> {
        self.endpoint_spec
            .iter()
            .flat_map(|e| e.ports.iter())
            .filter(|p| p.publish_mode() == crate::v1::port_config::PublishMode::Ingress)
    }

    /// Whether the service's tasks join the ingress network: it publishes a port in ingress
    /// mode that any node forwards to any of its tasks (`traffic=cluster`).
    pub fn joins_ingress(&self) -> bool {
        self.ingress_ports().any(|p| p.traffic() == crate::v1::port_config::Traffic::Cluster)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_service_keeps_its_last_10_specs_numbered() {
        let spec = |image: &str| crate::v1::ServiceSpec {
            task_template: Some(crate::v1::TaskSpec {
                container: Some(crate::v1::ContainerSpec { image: image.into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let image = |s: Option<&crate::v1::ServiceSpec>| {
            s.and_then(|s| s.task_template.as_ref()).and_then(|t| t.container.as_ref()).map(|c| c.image.clone())
        };
        let mut s = crate::v1::Service { spec: Some(spec("v1")), spec_revision: 1, ..Default::default() };
        for i in 2..=12 {
            s.replace_spec(spec(&format!("v{i}")), i);
        }
        assert_eq!(s.spec_revision, 12);
        assert_eq!(s.history.len(), 9, "with the current one, 10");
        assert_eq!(s.history.first().map(|r| r.revision), Some(3));
        assert_eq!(image(s.spec_at(3)).as_deref(), Some("v3"));
        assert_eq!(image(s.spec_at(12)).as_deref(), Some("v12"));
        assert_eq!(image(s.previous_spec.as_ref()).as_deref(), Some("v11"));
        assert!(s.spec_at(2).is_none(), "gone");
        assert_eq!(s.history.last().map(|r| r.replaced_at_ms), Some(12));
    }

    use crate::v1::{health, ContainerSpec, Health, HealthConfig, Task, TaskSpec, TaskState, TaskStatus};

    #[test]
    fn a_task_with_a_health_check_is_up_only_once_healthy() {
        let task = |test: Vec<&str>, health: Option<Health>| Task {
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    healthcheck: Some(HealthConfig {
                        test: test.into_iter().map(String::from).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                timestamp_ms: 10,
                health,
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = |s: health::Status| Some(Health { status: s as i32, since_ms: 20, ..Default::default() });
        assert_eq!(task(vec!["NONE"], None).up_since(), Some(10), "no check: up once running");
        assert_eq!(task(vec!["CMD", "true"], None).up_since(), None, "not reported healthy yet");
        assert_eq!(task(vec!["CMD-SHELL", "true"], h(health::Status::Starting)).up_since(), None);
        assert_eq!(task(vec!["CMD-SHELL", "true"], h(health::Status::Healthy)).up_since(), Some(20));
        assert_eq!(task(vec!["CMD", "true"], h(health::Status::Unhealthy)).up_since(), None);
    }
}
