//! What a node must know of the overlays its tasks use: the networks, and every task address
//! on them with the underlay address of its node. Pure functions of the store.

use std::collections::{BTreeMap, BTreeSet};

use shoal_api::v1::{Endpoint, IngressPort, Network, ServiceVip, Task, TaskState};

/// VXLAN's port when the cluster sets none (IANA's).
pub const DEFAULT_DATA_PATH_PORT: u32 = 4789;

/// The host part of a `host:port` address (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// What every node's view holds of ingress publishing: the same for all, so read once per
/// batch of changes, not once per node.
#[derive(Debug, Clone, Default)]
pub struct Ingress {
    /// The ingress network's id, while a service publishes a port through it.
    pub network_id: Option<String>,
    /// Every port published in ingress mode.
    pub ports: Vec<IngressPort>,
    /// Each node's own address on the ingress network (while it is in use): where the ports it
    /// forwards reply to.
    pub nodes: Vec<Endpoint>,
}

/// Reads [`Ingress`] from the store.
pub fn ingress(store: &shoal_store::Store) -> Ingress {
    let ports = ingress_ports(store);
    let network_id = store
        .ingress_network()
        .filter(|_| store.services().any(|s| s.spec.as_ref().is_some_and(|s| s.joins_ingress())))
        .and_then(|n| n.meta.as_ref())
        .map(|m| m.id.clone());
    let nodes = match &network_id {
        Some(ingress) => store
            .nodes()
            .filter(|n| !n.ingress_address.is_empty())
            .map(|n| Endpoint {
                network_id: ingress.clone(),
                node_id: n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                node_addr: n.status.as_ref().map(|s| host_of(&s.addr).to_string()).unwrap_or_default(),
                address: n.ingress_address.clone(),
                ..Default::default()
            })
            .collect(),
        None => Vec::new(),
    };
    Ingress { network_id, ports, nodes }
}

/// Networks `tasks` attach to, by id, and the ingress network when a service publishes
/// through it (every node forwards its ports).
pub fn network_ids<'a>(ingress: &Ingress, tasks: impl Iterator<Item = &'a Task>) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> = tasks.flat_map(|t| t.networks.iter().map(|a| a.network_id.clone())).collect();
    if let Some(id) = &ingress.network_id {
        ids.insert(id.clone());
    }
    ids
}

/// Every port published in ingress mode, in order.
fn ingress_ports(store: &shoal_store::Store) -> Vec<IngressPort> {
    let mut out: Vec<IngressPort> = store
        .services()
        .flat_map(|s| {
            let id = s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
            s.spec.iter().flat_map(|sp| sp.ingress_ports()).filter(|p| p.published_port != 0).map(move |p| {
                IngressPort {
                    service_id: id.clone(),
                    protocol: p.protocol,
                    published_port: p.published_port,
                    target_port: p.target_port,
                    local: p.traffic() == shoal_api::v1::port_config::Traffic::Local,
                }
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.protocol, a.published_port, &a.service_id).cmp(&(b.protocol, b.published_port, &b.service_id))
    });
    out
}

/// Whether a task's address belongs in the forwarding entries: it is on a node and its
/// container may run (placed, not ended).
fn reachable(t: &Task) -> bool {
    let observed = t.status.as_ref().map_or(0, |s| s.state);
    !t.node_id.is_empty() && observed >= TaskState::Assigned as i32 && observed < TaskState::Complete as i32
}

/// Whether name lookups and VIPs lead to the task: it runs (healthy, when it has a health
/// check) and is meant to.
fn serving(t: &Task) -> bool {
    t.up_since().is_some() && t.desired_state == TaskState::Running as i32
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
    /// Every port published in ingress mode.
    pub ingress_ports: Vec<IngressPort>,
}

/// The networks with ids in `ids`, every reachable task address on them and the services'
/// VIPs, ordered so equal views compare (and hash) equal.
pub fn view(store: &shoal_store::Store, ids: &BTreeSet<String>, ingress: &Ingress) -> View {
    let ingress_ports = ingress.ports.clone();
    if ids.is_empty() {
        return View { ingress_ports, ..View::default() };
    }
    let networks: Vec<Network> = ids.iter().filter_map(|id| store.network(id).cloned()).collect();
    let ingress_id = ingress.network_id.as_ref().filter(|id| ids.contains(*id));
    let names_one = |spec: Option<&shoal_api::v1::ServiceSpec>| {
        spec.is_some_and(|s| {
            (ingress_id.is_some() && s.joins_ingress())
                || s.task_template.as_ref().is_some_and(|t| t.networks.iter().any(|n| ids.contains(&n.target)))
        })
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
    if ingress_id.is_some() {
        endpoints.extend(ingress.nodes.iter().cloned());
    }
    endpoints.sort_by(|a, b| (&a.network_id, &a.address, &a.task_id).cmp(&(&b.network_id, &b.address, &b.task_id)));
    vips.sort_by(|a, b| (&a.network_id, &a.address).cmp(&(&b.network_id, &b.address)));
    View { networks, endpoints, vips, ingress_ports }
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
    for x in &v.ingress_ports {
        x.encode_to_vec().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_sees_the_ingress_network_its_ports_and_every_node_on_it_while_a_service_publishes() {
        use shoal_api::v1::{
            port_config::{PublishMode, Traffic},
            EndpointSpec, Meta, NetworkAttachment, NetworkSpec, NodeStatus, PortConfig, TaskState,
        };
        use shoal_scheduler::testing::{node, replicated, task, TaskExt, World};
        let mut w = World::new();
        w.add(Network {
            meta: Some(Meta { id: "ing".into(), ..Default::default() }),
            spec: Some(NetworkSpec {
                annotations: Some(shoal_api::v1::Annotations { name: "ingress".into(), ..Default::default() }),
                ingress: true,
                ..Default::default()
            }),
            subnet: "10.255.0.0/16".into(),
            gateway: "10.255.0.1".into(),
            vni: 4096,
        });
        for (id, a) in [("n1", "10.255.0.2/16"), ("n2", "10.255.0.3/16")] {
            let mut n = node(id);
            n.ingress_address = a.into();
            n.status =
                Some(NodeStatus { addr: format!("192.168.0.{}:4242", &id[1..]), ..n.status.unwrap_or_default() });
            w.add(n);
        }
        let idle = w.store.clone();
        assert!(ingress(&idle).network_id.is_none(), "nothing publishes yet");
        let mut web = replicated("web", 1);
        if let Some(s) = web.spec.as_mut() {
            s.endpoint_spec = Some(EndpointSpec {
                ports: vec![
                    PortConfig {
                        target_port: 80,
                        published_port: 8080,
                        publish_mode: PublishMode::Ingress as i32,
                        ..Default::default()
                    },
                    PortConfig {
                        target_port: 81,
                        published_port: 8081,
                        publish_mode: PublishMode::Ingress as i32,
                        traffic: Traffic::Local as i32,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            });
        }
        w.add(web.clone());
        let mut t = task("t1", &web, 1).on("n2").state(TaskState::Running, 0);
        t.networks =
            vec![NetworkAttachment { network_id: "ing".into(), address: "10.255.0.4/16".into(), aliases: vec![] }];
        w.add(t);
        let ing = ingress(&w.store);
        assert_eq!(ing.network_id.as_deref(), Some("ing"));
        assert_eq!(
            ing.ports.iter().map(|p| (p.published_port, p.local)).collect::<Vec<_>>(),
            [(8080, false), (8081, true)]
        );
        // n1 runs nothing, yet it forwards the ports.
        let ids = network_ids(&ing, std::iter::empty());
        let v = view(&w.store, &ids, &ing);
        assert_eq!(v.networks.len(), 1);
        let eps: Vec<(&str, &str, &str, bool)> = v
            .endpoints
            .iter()
            .map(|e| (e.node_id.as_str(), e.task_id.as_str(), e.address.as_str(), e.serving))
            .collect();
        assert_eq!(
            eps,
            [
                ("n1", "", "10.255.0.2/16", false),
                ("n2", "", "10.255.0.3/16", false),
                ("n2", "t1", "10.255.0.4/16", true)
            ]
        );
        assert_eq!(v.endpoints[0].node_addr, "192.168.0.1");
        assert_ne!(
            digest(&v, 4789),
            digest(&view(&idle, &network_ids(&ingress(&idle), std::iter::empty()), &ingress(&idle)), 4789)
        );
    }

    #[test]
    fn hosts_come_out_of_addresses() {
        assert_eq!(host_of("10.0.0.1:4242"), "10.0.0.1");
        assert_eq!(host_of("[fd00::1]:4242"), "fd00::1");
        assert_eq!(host_of("node1.example:4242"), "node1.example");
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
    }
}
