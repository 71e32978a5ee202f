//! The words users see for enum values (`running`, `manager`, `drain`), both ways.
//!
//! These strings are part of the output contract (`--format json`, tables) and of the CLI flags:
//! keep them stable.

use crate::v1::{
    endpoint_spec, port_config, restart_policy, update_config, NodeAvailability, NodeRole, NodeState, Refusal,
    TaskState,
};

/// Short name of a store refusal (`conflict`, `not_found`, `exists`, `invalid`; `""` for none).
pub fn refusal(r: Refusal) -> &'static str {
    match r {
        Refusal::None => "",
        Refusal::Conflict => "conflict",
        Refusal::NotFound => "not_found",
        Refusal::Exists => "exists",
        Refusal::Invalid => "invalid",
    }
}

/// Lower-case name of a task state (`running`, `failed`, ...).
pub fn task_state(s: TaskState) -> &'static str {
    match s {
        TaskState::New => "new",
        TaskState::Pending => "pending",
        TaskState::Assigned => "assigned",
        TaskState::Accepted => "accepted",
        TaskState::Preparing => "preparing",
        TaskState::Ready => "ready",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Complete => "complete",
        TaskState::Shutdown => "shutdown",
        TaskState::Failed => "failed",
        TaskState::Rejected => "rejected",
        TaskState::Remove => "remove",
        TaskState::Orphaned => "orphaned",
    }
}

/// `manager` or `worker`.
pub fn node_role(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Worker => "worker",
        NodeRole::Manager => "manager",
    }
}

/// Parses `manager` / `worker`.
pub fn parse_node_role(s: &str) -> Option<NodeRole> {
    match s {
        "worker" => Some(NodeRole::Worker),
        "manager" => Some(NodeRole::Manager),
        _ => None,
    }
}

/// `active`, `pause` or `drain`.
pub fn availability(a: NodeAvailability) -> &'static str {
    match a {
        NodeAvailability::Active => "active",
        NodeAvailability::Pause => "pause",
        NodeAvailability::Drain => "drain",
    }
}

/// Parses `active` / `pause` / `drain`.
pub fn parse_availability(s: &str) -> Option<NodeAvailability> {
    match s {
        "active" => Some(NodeAvailability::Active),
        "pause" => Some(NodeAvailability::Pause),
        "drain" => Some(NodeAvailability::Drain),
        _ => None,
    }
}

/// `ready`, `down`, `unknown` or `disconnected`.
pub fn node_state(s: NodeState) -> &'static str {
    match s {
        NodeState::Unknown => "unknown",
        NodeState::Down => "down",
        NodeState::Ready => "ready",
        NodeState::Disconnected => "disconnected",
    }
}

/// Parses a restart condition as `docker service create --restart-condition` takes it.
pub fn parse_restart_condition(s: &str) -> Option<restart_policy::Condition> {
    match s {
        "any" => Some(restart_policy::Condition::Any),
        "none" => Some(restart_policy::Condition::None),
        "on-failure" => Some(restart_policy::Condition::OnFailure),
        _ => None,
    }
}

/// Name of a restart condition.
pub fn restart_condition(c: restart_policy::Condition) -> &'static str {
    match c {
        restart_policy::Condition::Any => "any",
        restart_policy::Condition::None => "none",
        restart_policy::Condition::OnFailure => "on-failure",
    }
}

/// Parses `pause` / `continue` / `rollback`.
pub fn parse_failure_action(s: &str) -> Option<update_config::FailureAction> {
    match s {
        "pause" => Some(update_config::FailureAction::Pause),
        "continue" => Some(update_config::FailureAction::Continue),
        "rollback" => Some(update_config::FailureAction::Rollback),
        _ => None,
    }
}

/// Parses `stop-first` / `start-first`.
pub fn parse_update_order(s: &str) -> Option<update_config::Order> {
    match s {
        "stop-first" => Some(update_config::Order::StopFirst),
        "start-first" => Some(update_config::Order::StartFirst),
        _ => None,
    }
}

/// Parses `vip` / `dnsrr`.
pub fn parse_endpoint_mode(s: &str) -> Option<endpoint_spec::Mode> {
    match s {
        "vip" => Some(endpoint_spec::Mode::Vip),
        "dnsrr" => Some(endpoint_spec::Mode::Dnsrr),
        _ => None,
    }
}

/// Parses `tcp` / `udp` / `sctp`.
pub fn parse_protocol(s: &str) -> Option<port_config::Protocol> {
    match s {
        "tcp" => Some(port_config::Protocol::Tcp),
        "udp" => Some(port_config::Protocol::Udp),
        "sctp" => Some(port_config::Protocol::Sctp),
        _ => None,
    }
}

/// Name of a port protocol.
pub fn protocol(p: port_config::Protocol) -> &'static str {
    match p {
        port_config::Protocol::Tcp => "tcp",
        port_config::Protocol::Udp => "udp",
        port_config::Protocol::Sctp => "sctp",
    }
}

/// Name of an update state, as `service ls` and `service inspect` show it ("" when none).
pub fn update_state(s: crate::v1::update_status::State) -> &'static str {
    use crate::v1::update_status::State;
    match s {
        State::Unknown => "",
        State::Updating => "updating",
        State::Paused => "paused",
        State::Completed => "completed",
        State::RollbackStarted => "rollback_started",
        State::RollbackPaused => "rollback_paused",
        State::RollbackCompleted => "rollback_completed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_inverts_name() {
        for r in [NodeRole::Worker, NodeRole::Manager] {
            assert_eq!(parse_node_role(node_role(r)), Some(r));
        }
        for a in [NodeAvailability::Active, NodeAvailability::Pause, NodeAvailability::Drain] {
            assert_eq!(parse_availability(availability(a)), Some(a));
        }
        for c in [restart_policy::Condition::Any, restart_policy::Condition::None, restart_policy::Condition::OnFailure]
        {
            assert_eq!(parse_restart_condition(restart_condition(c)), Some(c));
        }
        assert_eq!(parse_node_role("boss"), None);
    }
}
