//! Where a task may run, judged from the node alone: readiness and availability, placement
//! constraints, supported platforms; plus the parsed placement of a task spec (constraints,
//! platforms, max replicas per node, spread preferences).
//!
//! These are the node filters that do not depend on other tasks, shared with the orchestrator
//! (global services run on every node that passes them). Filters that depend on what already
//! runs on a node (resources, host ports, max replicas per node) live in the scheduler's pipeline.
//! Nothing here reads anything but the node and the spec.

use shoal_api::names;
use shoal_api::v1::Node;
use shoal_api::v1::{NodeAvailability, NodeState, Platform, TaskSpec};
use shoal_api::validate::{parse_constraint, Constraint, ConstraintOp, ValidationError};

/// A placement that cannot be evaluated. Specs are validated before they are stored, so this
/// only shows up for specs written around validation; the task then fits no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A constraint expression does not parse.
    #[error("invalid placement constraint {expr:?}")]
    Constraint {
        /// The expression as stored.
        expr: String,
        /// Why it does not parse.
        #[source]
        source: ValidationError,
    },
    /// A spread preference names something other than a node label.
    #[error("invalid placement preference spread={0:?}: use spread=node.labels.<key>")]
    Preference(String),
}

/// The parsed placement of a task spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Every one must hold on the node.
    pub constraints: Vec<Constraint>,
    /// When not empty, the node's platform must match one of them.
    pub platforms: Vec<Platform>,
    /// 0: unlimited.
    pub max_replicas_per_node: u64,
    /// Node label keys to spread over, outermost first (`node.labels.` stripped).
    pub spread_labels: Vec<String>,
}

impl Placement {
    /// Parses the placement of `spec` (none: no restrictions).
    pub fn of(spec: Option<&TaskSpec>) -> Result<Self, PlacementError> {
        let Some(p) = spec.and_then(|s| s.placement.as_ref()) else {
            return Ok(Placement::default());
        };
        let constraints = p
            .constraints
            .iter()
            .map(|expr| {
                parse_constraint(expr).map_err(|source| PlacementError::Constraint { expr: expr.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        let spread_labels = p
            .preferences
            .iter()
            .map(|pref| match pref.spread.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => Ok(key.to_owned()),
                _ => Err(PlacementError::Preference(pref.spread.clone())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Placement {
            constraints,
            platforms: p.platforms.clone(),
            max_replicas_per_node: p.max_replicas_per_node,
            spread_labels,
        })
    }

    /// The first constraint `node` does not satisfy, with its index.
    pub fn unmet_constraint(&self, node: &Node) -> Option<(usize, &Constraint)> {
        self.constraints.iter().enumerate().find(|(_, c)| !constraint_matches(c, node))
    }

    /// Whether `node`'s platform is one the spec supports (any, when it lists none).
    pub fn supports_platform(&self, node: &Node) -> bool {
        self.platforms.is_empty() || self.platforms.iter().any(|p| platform_matches(p, node))
    }

    /// Whether `node` satisfies every constraint and the platform list. Says nothing about
    /// readiness or what already runs there.
    pub fn admits(&self, node: &Node) -> bool {
        self.unmet_constraint(node).is_none() && self.supports_platform(node)
    }
}

/// Whether new tasks may be placed on `node`: it is `READY` and its availability is `ACTIVE`
/// (`PAUSE` keeps what runs there but takes nothing new; `DRAIN` moves everything away).
pub fn node_accepts_new_tasks(node: &Node) -> bool {
    node_ready_and_active(node) && node_runs_tasks(node)
}

/// Whether `node` can run containers at all (it reports a working container runtime).
pub fn node_runs_tasks(node: &Node) -> bool {
    node.description.as_ref().is_none_or(|d| d.runtime_unavailable.is_empty())
}

/// Whether `node` is `READY` with availability `ACTIVE`.
pub fn node_ready_and_active(node: &Node) -> bool {
    let ready = node.status.as_ref().is_some_and(|s| s.state == NodeState::Ready as i32);
    let active = node.spec.as_ref().map_or(NodeAvailability::Active as i32, |s| s.availability)
        == NodeAvailability::Active as i32;
    ready && active
}

/// The value of label `key` of `node` (`spec.annotations.labels`, set by operators).
pub fn node_label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.spec.as_ref().and_then(|s| s.annotations.as_ref()).and_then(|a| a.labels.get(key)).map(String::as_str)
}

/// The value a constraint key reads on `node`, `None` when the node has none (a missing label).
fn attribute<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    let description = node.description.as_ref();
    let platform = description.and_then(|d| d.platform.as_ref());
    match key {
        "node.id" => node.meta.as_ref().map(|m| m.id.as_str()),
        "node.hostname" => description.map(|d| d.hostname.as_str()),
        "node.role" => Some(names::node_role(node.role())),
        "node.platform.os" => platform.map(|p| p.os.as_str()),
        "node.platform.arch" => platform.map(|p| p.architecture.as_str()),
        other => other.strip_prefix("node.labels.").and_then(|label| node_label(node, label)),
    }
}

/// Whether `node` satisfies `c`. Values compare ASCII case-insensitively, as in Swarm; a
/// missing attribute (label) fails `==` and satisfies `!=`.
pub fn constraint_matches(c: &Constraint, node: &Node) -> bool {
    let equal = attribute(node, &c.key).is_some_and(|v| v.eq_ignore_ascii_case(&c.value));
    match c.op {
        ConstraintOp::Eq => equal,
        ConstraintOp::Ne => !equal,
    }
}

/// How a constraint reads in messages: `node.labels.zone==a`.
pub fn constraint_text(c: &Constraint) -> String {
    let op = match c.op {
        ConstraintOp::Eq => "==",
        ConstraintOp::Ne => "!=",
    };
    format!("{}{op}{}", c.key, c.value)
}

/// Architecture names as Go and OCI images spell them, so `x86_64` matches `amd64`.
fn normal_arch(arch: &str) -> String {
    let lower = arch.to_ascii_lowercase();
    match lower.as_str() {
        "x86_64" | "x86-64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        _ => lower,
    }
}

/// Whether `node` runs platform `want`. An empty field of `want` matches anything; a node that
/// does not report the field does not match a requested value.
fn platform_matches(want: &Platform, node: &Node) -> bool {
    let have = node.description.as_ref().and_then(|d| d.platform.clone()).unwrap_or_default();
    let os_ok = want.os.is_empty() || want.os.eq_ignore_ascii_case(&have.os);
    let arch_ok = want.architecture.is_empty()
        || (!have.architecture.is_empty() && normal_arch(&want.architecture) == normal_arch(&have.architecture));
    os_ok && arch_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{Annotations, Meta, NodeDescription, NodeRole, NodeSpec, NodeStatus, PlacementPreference};

    fn node() -> Node {
        Node {
            meta: Some(Meta { id: "n1".into(), ..Meta::default() }),
            spec: Some(NodeSpec {
                annotations: Some(Annotations {
                    name: String::new(),
                    labels: [("zone".to_owned(), "a".to_owned())].into(),
                }),
                ..NodeSpec::default()
            }),
            description: Some(NodeDescription {
                hostname: "Host-1".into(),
                platform: Some(Platform { os: "linux".into(), architecture: "x86_64".into() }),
                ..NodeDescription::default()
            }),
            status: Some(NodeStatus { state: NodeState::Ready as i32, ..NodeStatus::default() }),
            role: NodeRole::Manager as i32,
            ..Node::default()
        }
    }

    fn matches(expr: &str) -> bool {
        let c = parse_constraint(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        constraint_matches(&c, &node())
    }

    #[test]
    fn constraints_read_every_key() {
        let cases = [
            ("node.id==n1", true),
            ("node.id==n2", false),
            ("node.hostname==host-1", true),
            ("node.hostname!=host-1", false),
            ("node.role==manager", true),
            ("node.role==worker", false),
            ("node.platform.os==linux", true),
            ("node.platform.arch==x86_64", true),
            ("node.platform.arch==arm64", false),
            ("node.labels.zone==a", true),
            ("node.labels.zone==b", false),
            ("node.labels.zone!=b", true),
            ("node.labels.disk==ssd", false),
            ("node.labels.disk!=ssd", true),
        ];
        for (expr, want) in cases {
            assert_eq!(matches(expr), want, "{expr}");
        }
    }

    #[test]
    fn platforms_match_with_wildcards_and_aliases() {
        let p = |os: &str, arch: &str| Placement {
            platforms: vec![Platform { os: os.into(), architecture: arch.into() }],
            ..Placement::default()
        };
        let n = node();
        assert!(p("linux", "amd64").supports_platform(&n));
        assert!(p("", "").supports_platform(&n));
        assert!(p("linux", "").supports_platform(&n));
        assert!(!p("windows", "").supports_platform(&n));
        assert!(!p("linux", "arm64").supports_platform(&n));
        assert!(Placement::default().supports_platform(&n));
        let bare = Node::default();
        assert!(!p("linux", "").supports_platform(&bare));
    }

    #[test]
    fn readiness_and_availability_gate_new_tasks() {
        let mut n = node();
        assert!(node_accepts_new_tasks(&n));
        for avail in [NodeAvailability::Pause, NodeAvailability::Drain] {
            n.spec.get_or_insert_with(NodeSpec::default).availability = avail as i32;
            assert!(!node_accepts_new_tasks(&n), "{avail:?}");
        }
        let mut n = node();
        for state in [NodeState::Down, NodeState::Unknown, NodeState::Disconnected] {
            n.status.get_or_insert_with(NodeStatus::default).state = state as i32;
            assert!(!node_accepts_new_tasks(&n), "{state:?}");
        }
    }

    #[test]
    fn bad_placements_are_errors() {
        let spec = |constraint: &str, spread: &str| TaskSpec {
            placement: Some(shoal_api::v1::Placement {
                constraints: vec![constraint.into()],
                preferences: vec![PlacementPreference { spread: spread.into() }],
                ..shoal_api::v1::Placement::default()
            }),
            ..TaskSpec::default()
        };
        assert!(matches!(
            Placement::of(Some(&spec("node.color==red", "node.labels.zone"))),
            Err(PlacementError::Constraint { .. })
        ));
        assert_eq!(
            Placement::of(Some(&spec("node.role==worker", "node.zone"))),
            Err(PlacementError::Preference("node.zone".into()))
        );
        let ok = Placement::of(Some(&spec("node.role==worker", "node.labels.zone")));
        assert_eq!(ok.map(|p| p.spread_labels), Ok(vec!["zone".to_owned()]));
    }
}
