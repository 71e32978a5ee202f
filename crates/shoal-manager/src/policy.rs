//! The control API's rules about what a request may do to the cluster, beyond the shape of a
//! spec (shoal-api validates that) and version conflicts (shoal-store refuses those): the last
//! manager stays, a node is removed only when it is down and no longer a manager, a secret or
//! config in use stays, secret and config data has a size.
//!
//! Pure: each check reads the objects it is given and answers; the handlers execute.

use shoal_api::v1::{Node, NodeRole, NodeSpec, NodeState, ServiceSpec, UpdateStatus};

/// Largest secret or config (as Docker).
pub const MAX_DATA_BYTES: usize = 500 * 1024;

/// Why the control API refuses a request. The message is what the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Demoting the only manager would leave no one to decide anything.
    #[error("cannot demote the last manager of the cluster")]
    LastManager,
    /// Only a node that answers heartbeats can become a manager.
    #[error("cannot promote a node that is not ready: bring it up first")]
    PromoteNotReady,
    /// A manager must become a worker before it can be removed.
    #[error("node {0} is a manager: demote it first (`shoal node demote {0}`)")]
    RemoveManager(String),
    /// Demoted, but still a Raft voter until the leader has taken it out.
    #[error(
        "node {0} is being demoted: the managers are still taking it out of the raft membership; retry in a moment"
    )]
    RemoveDemoting(String),
    /// A node that is up is removed only on purpose.
    #[error("node {0} is not down: stop it or run `shoal cluster leave` there first, or remove it with --force")]
    RemoveLiveNode(String),
    /// Services still use the secret or config.
    #[error("{kind} {name:?} is in use by service(s) {users}: remove it from them first")]
    InUse {
        /// `secret` or `config`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The services, comma separated.
        users: String,
    },
    /// Services are attached to the network, or tasks still stopping hold addresses on it.
    #[error("network {name:?} is in use by {users}: remove it from them first (`shoal service update --network-rm {name} SERVICE`)")]
    NetworkInUse {
        /// Its name.
        name: String,
        /// What uses it.
        users: String,
    },
    /// Secret or config without data.
    #[error("{kind} {name:?} is empty: give it some data")]
    EmptyData {
        /// `secret` or `config`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Secret or config over the size limit.
    #[error("{kind} {name:?} is {size} bytes; the limit is {MAX_DATA_BYTES} bytes")]
    TooLarge {
        /// `secret` or `config`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Its size.
        size: usize,
    },
}

fn desired_role(n: &Node) -> NodeRole {
    n.spec.as_ref().map(|s| s.desired_role()).unwrap_or(NodeRole::Worker)
}

fn hostname(n: &Node) -> String {
    n.description.as_ref().map(|d| d.hostname.clone()).unwrap_or_default()
}

/// Whether `node` may take `spec`, with `managers` nodes currently meant to be managers.
pub fn node_update(node: &Node, spec: &NodeSpec, managers: usize) -> Result<(), PolicyError> {
    let (old, new) = (desired_role(node), spec.desired_role());
    if old == NodeRole::Manager && new == NodeRole::Worker && managers <= 1 {
        return Err(PolicyError::LastManager);
    }
    if old == NodeRole::Worker && new == NodeRole::Manager {
        let ready = node.status.as_ref().is_some_and(|s| s.state() == NodeState::Ready);
        if !ready {
            return Err(PolicyError::PromoteNotReady);
        }
    }
    Ok(())
}

/// Whether `node` may be removed (`force`: even while it is up).
pub fn node_removal(node: &Node, force: bool) -> Result<(), PolicyError> {
    if desired_role(node) == NodeRole::Manager {
        return Err(PolicyError::RemoveManager(hostname(node)));
    }
    if node.role() == NodeRole::Manager {
        return Err(PolicyError::RemoveDemoting(hostname(node)));
    }
    let down = node.status.as_ref().is_some_and(|s| s.state() != NodeState::Ready);
    if !down && !force {
        return Err(PolicyError::RemoveLiveNode(hostname(node)));
    }
    Ok(())
}

/// Whether a secret or config used by `users` may be removed.
pub fn data_removal(kind: &'static str, name: &str, users: &[String]) -> Result<(), PolicyError> {
    if users.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::InUse { kind, name: name.to_owned(), users: users.join(", ") })
    }
}

/// Whether a network may be removed: no service is attached to it and no task that has not
/// ended holds an address on it.
pub fn network_removal(name: &str, services: &[String], live_tasks: usize) -> Result<(), PolicyError> {
    let users = if !services.is_empty() {
        format!("service(s) {}", services.join(", "))
    } else if live_tasks > 0 {
        format!("{live_tasks} task(s) that are still stopping")
    } else {
        return Ok(());
    };
    Err(PolicyError::NetworkInUse { name: name.to_owned(), users })
}

/// The update status a service gets when its spec goes from `old` to `new`: a rollback asked
/// for starts one; a change that reaches the tasks (their spec, host-mode ports, whether they
/// join the ingress network) starts an update, as does any update of a paused one (it resumes);
/// anything else (a scale, a new update config) leaves the status as it is.
pub fn update_status(
    old: &ServiceSpec,
    new: &ServiceSpec,
    current: Option<&UpdateStatus>,
    rollback: bool,
    now_ms: i64,
) -> Option<UpdateStatus> {
    use shoal_api::v1::update_status::State;
    let start = |state: State, message: &str| {
        Some(UpdateStatus { state: state as i32, started_at_ms: now_ms, completed_at_ms: 0, message: message.into() })
    };
    // A job takes no rolling update: a change runs it again.
    if matches!(
        new.mode,
        Some(shoal_api::v1::service_spec::Mode::ReplicatedJob(_) | shoal_api::v1::service_spec::Mode::GlobalJob(_))
    ) {
        return None;
    }
    if rollback {
        return start(State::RollbackStarted, "manually requested rollback");
    }
    let reaches_tasks = shoal_orchestrator::spec_reaches_tasks(old, new);
    let paused = current.is_some_and(|s| matches!(s.state(), State::Paused | State::RollbackPaused));
    if reaches_tasks || paused {
        return start(State::Updating, "update in progress");
    }
    current.cloned()
}

/// Whether `data` may be a secret's or config's content.
pub fn data_size(kind: &'static str, name: &str, data: &[u8]) -> Result<(), PolicyError> {
    if data.is_empty() {
        return Err(PolicyError::EmptyData { kind, name: name.to_owned() });
    }
    if data.len() > MAX_DATA_BYTES {
        return Err(PolicyError::TooLarge { kind, name: name.to_owned(), size: data.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::v1::{NodeDescription, NodeStatus};

    fn node(desired: NodeRole, role: NodeRole, state: NodeState) -> Node {
        Node {
            spec: Some(NodeSpec { desired_role: desired as i32, ..NodeSpec::default() }),
            description: Some(NodeDescription { hostname: "h1".into(), ..NodeDescription::default() }),
            status: Some(NodeStatus { state: state as i32, ..NodeStatus::default() }),
            role: role as i32,
            ..Node::default()
        }
    }

    fn spec(role: NodeRole) -> NodeSpec {
        NodeSpec { desired_role: role as i32, ..NodeSpec::default() }
    }

    #[test]
    fn node_updates() {
        use NodeRole::*;
        use NodeState::*;
        let cases = [
            (node(Manager, Manager, Ready), Worker, 1, Err(PolicyError::LastManager)),
            (node(Manager, Manager, Ready), Worker, 2, Ok(())),
            (node(Manager, Manager, Down), Manager, 1, Ok(())),
            (node(Worker, Worker, Down), Manager, 3, Err(PolicyError::PromoteNotReady)),
            (node(Worker, Worker, Unknown), Manager, 3, Err(PolicyError::PromoteNotReady)),
            (node(Worker, Worker, Ready), Manager, 3, Ok(())),
            (node(Worker, Worker, Down), Worker, 0, Ok(())),
        ];
        for (n, to, managers, want) in cases {
            assert_eq!(node_update(&n, &spec(to), managers), want, "{n:?} -> {to:?} with {managers} managers");
        }
    }

    #[test]
    fn node_removals() {
        use NodeRole::*;
        use NodeState::*;
        let cases = [
            (node(Manager, Manager, Down), false, Err(PolicyError::RemoveManager("h1".into()))),
            (node(Worker, Manager, Down), true, Err(PolicyError::RemoveDemoting("h1".into()))),
            (node(Manager, Worker, Down), true, Err(PolicyError::RemoveManager("h1".into()))),
            (node(Worker, Worker, Ready), false, Err(PolicyError::RemoveLiveNode("h1".into()))),
            (node(Worker, Worker, Ready), true, Ok(())),
            (node(Worker, Worker, Down), false, Ok(())),
            (node(Worker, Worker, Unknown), false, Ok(())),
        ];
        for (n, force, want) in cases {
            assert_eq!(node_removal(&n, force), want, "{n:?} force={force}");
        }
    }

    #[test]
    fn data_rules_and_their_words() {
        assert_eq!(data_removal("secret", "db", &[]), Ok(()));
        let e = data_removal("secret", "db", &["web".into(), "api".into()]).expect_err("in use");
        assert_eq!(e.to_string(), "secret \"db\" is in use by service(s) web, api: remove it from them first");
        assert_eq!(data_size("config", "c", b"x"), Ok(()));
        assert_eq!(
            data_size("config", "c", b"").map_err(|e| e.to_string()),
            Err("config \"c\" is empty: give it some data".into())
        );
        let big = vec![0u8; MAX_DATA_BYTES + 1];
        assert!(data_size("secret", "s", &big).expect_err("big").to_string().contains("the limit is 512000 bytes"));
        assert_eq!(data_size("secret", "s", &big[1..]), Ok(()));
    }

    #[test]
    fn a_network_in_use_is_kept_and_the_error_names_the_users() {
        assert_eq!(network_removal("net", &[], 0), Ok(()));
        assert_eq!(
            network_removal("net", &["web".into(), "api".into()], 3).map_err(|e| e.to_string()),
            Err("network \"net\" is in use by service(s) web, api: remove it from them first (`shoal service update --network-rm net SERVICE`)".into())
        );
        assert!(network_removal("net", &[], 2)
            .expect_err("in use")
            .to_string()
            .contains("2 task(s) that are still stopping"));
    }

    #[test]
    fn an_update_starts_when_the_change_reaches_the_tasks_or_resumes_a_paused_one() {
        use shoal_api::v1::{update_status::State, ContainerSpec, ReplicatedService, TaskSpec};
        let spec = |image: &str, replicas: u64| ServiceSpec {
            task_template: Some(TaskSpec {
                container: Some(ContainerSpec { image: image.into(), ..Default::default() }),
                ..Default::default()
            }),
            mode: Some(shoal_api::v1::service_spec::Mode::Replicated(ReplicatedService { replicas })),
            ..Default::default()
        };
        let state = |s: Option<UpdateStatus>| s.map(|s| (s.state(), s.started_at_ms));
        assert_eq!(state(update_status(&spec("a", 1), &spec("b", 1), None, false, 7)), Some((State::Updating, 7)));
        assert_eq!(state(update_status(&spec("a", 1), &spec("a", 5), None, false, 7)), None, "a scale is no update");
        let done = UpdateStatus { state: State::Completed as i32, started_at_ms: 1, ..Default::default() };
        assert_eq!(
            state(update_status(&spec("a", 1), &spec("a", 5), Some(&done), false, 7)),
            Some((State::Completed, 1))
        );
        let paused = UpdateStatus { state: State::Paused as i32, started_at_ms: 1, ..Default::default() };
        assert_eq!(
            state(update_status(&spec("a", 1), &spec("a", 1), Some(&paused), false, 7)),
            Some((State::Updating, 7)),
            "any update resumes a paused one"
        );
        assert_eq!(
            state(update_status(&spec("a", 1), &spec("z", 1), Some(&paused), true, 9)),
            Some((State::RollbackStarted, 9))
        );
    }
}
