//! What a node must know of the overlays its tasks use: the networks, and every task address
//! on them with the underlay address of its node. Pure functions of the store.

use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{Endpoint, Network, ServiceVip, Task, TaskState};

/// VXLAN's port when the cluster sets none (IANA's).
pub const DEFAULT_DATA_PATH_PORT: u32 = 4789;

/// The host part of a `host:port` address (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Networks `tasks` attach to, by id.
pub fn network_ids<'a>(tasks: impl Iterator<Item = &'a Task>) -> BTreeSet<String> {
    tasks.flat_map(|t| t.networks.iter().map(|a| a.network_id.clone())).collect()
}

/// Whether a task's address belongs in the forwarding entries: it is on a node and its
/// container may run (placed, not ended).
fn reachable(t: &Task) -> bool {
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    !t.node_id.is_empty() && observed >= TaskState::Assigned as i32 && observed < TaskState::Complete as i32
}

/// Whether name lookups answer with the task: it runs and is meant to.
fn serving(t: &Task) -> bool {
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    observed == TaskState::Running as i32 && t.desired_state == TaskState::Running as i32
}

/// What a node knows of its tasks' networks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The networks.
    pub networks: Vec<Network>,
    /// Every reachable task address on them.
    pub endpoints: Vec<Endpoint>,
    /// The services' virtual IPs on them.
    pub vips: Vec<ServiceVip>,
}

/// The networks with ids in `ids`, every reachable task address on them and the services'
/// VIPs, ordered so equal views compare (and hash) equal.
pub fn view(store: &shoal_store::Store, ids: &BTreeSet<String>) -> View {
    if ids.is_empty() {
        return View::default();
    }
    let networks: Vec<Network> = ids.iter().filter_map(|id| store.network(id).cloned()).collect();
    let names_one = |spec: Option<&shoal_api::v1::ServiceSpec>| {
        spec.and_then(|s| s.task_template.as_ref()).is_some_and(|t| t.networks.iter().any(|n| ids.contains(&n.target)))
    };
    // The previous spec too: its tasks may still run with their addresses.
    let services = store.services().filter(|s| names_one(s.spec.as_ref()) || names_one(s.previous_spec.as_ref()));
    let mut node_addrs: BTreeMap<&str, String> = BTreeMap::new();
    let mut endpoints = Vec::new();
    let mut vips = Vec::new();
    for s in services {
        let (sid, sname) = (
            s.meta.as_ref().map(|m| m.id.as_str()).unwrap_or(""),
            s.spec.as_ref().and_then(|s| s.annotations.as_ref()).map_or("", |a| a.name.as_str()),
        );
        for v in s.virtual_ips.iter().filter(|v| ids.contains(&v.network_id)) {
            vips.push(ServiceVip {
                network_id: v.network_id.clone(),
                service_id: sid.to_string(),
                service_name: sname.to_string(),
                address: v.address.clone(),
            });
        }
        for t in store.tasks_by_service(sid).filter(|t| reachable(t)) {
            let node_addr = node_addrs
                .entry(t.node_id.as_str())
                .or_insert_with(|| {
                    store
                        .node(&t.node_id)
                        .and_then(|n| n.status.as_ref())
                        .map(|s| host_of(&s.addr).to_string())
                        .unwrap_or_default()
                })
                .clone();
            for a in t.networks.iter().filter(|a| ids.contains(&a.network_id) && !a.address.is_empty()) {
                endpoints.push(Endpoint {
                    network_id: a.network_id.clone(),
                    task_id: t.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                    node_id: t.node_id.clone(),
                    node_addr: node_addr.clone(),
                    address: a.address.clone(),
                    service_id: sid.to_string(),
                    service_name: sname.to_string(),
                    task_name: t.annotations.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                    aliases: a.aliases.clone(),
                    serving: serving(t),
                });
            }
        }
    }
    endpoints.sort_by(|a, b| (&a.network_id, &a.address, &a.task_id).cmp(&(&b.network_id, &b.address, &b.task_id)));
    vips.sort_by(|a, b| (&a.network_id, &a.address).cmp(&(&b.network_id, &b.address)));
    View { networks, endpoints, vips }
}

/// A digest of a view, to tell whether it changed since it was sent.
pub fn digest(v: &View, port: u32) -> u64 {
    use prost::Message;
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    port.hash(&mut h);
    for n in &v.networks {
        n.encode_to_vec().hash(&mut h);
    }
    for e in &v.endpoints {
        e.encode_to_vec().hash(&mut h);
    }
    for x in &v.vips {
        x.encode_to_vec().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_out_of_addresses() {
        assert_eq!(host_of("10.0.0.1:4242"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:4242"), "fd00::1");
        assert_eq!(host_of("node1.example:4242"), "node1.example");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
